"""Command ``predict``: run a trained variant on new files.

``python -m pipeline predict (--variant NAME | --model URI) [--format table|json] [--output FILE] PATH...``

``--variant`` loads ``models/<NAME>/model.keras``; ``--model`` an MLflow model
the train stage logged, e.g. ``models:/pets@champion`` (the dataset's best,
:mod:`pipeline.stages.register`), ``models:/pets.lenet5/3`` or
``runs:/<run id>/model``, from the tracking store (``MLFLOW_TRACKING_URI`` or
the project's ``mlflow.db``).

* pets (classification): each PATH is an image file or a folder (searched
  recursively, every file whatever its extension). Every file is decoded with
  the training preprocessing (:func:`pipeline.data.images.load` at the prepared
  data's ``image_size`` and ``resize`` mode); the output gives the predicted
  class and the probability of each class.
* houses (regression): each PATH is a ``HousesInfo.txt``-style file (lines
  ``bedrooms bathrooms area zipcode [price]``, line N = house N) beside the
  photos ``N_{bathroom,bedroom,frontal,kitchen}.jpg``, or the folder holding
  ``HousesInfo.txt``. Houses are built as the prepare stage builds them (2x2
  montage of the four photos); the output gives the predicted price, and the
  absolute percentage error where the line has a price.

A file or house that cannot be read gets an error in its row and the others
are still predicted; the command fails (exit 1) only when nothing could be
predicted. Output: an aligned table on stdout (default) or JSON, optionally
written to ``--output``.

Hostile input is held to the limits the validate stage applies to the
training data (``params.yaml``, section ``validate``): an image whose header
says it has more than ``max_pixels`` pixels is refused before it is decoded;
the images decoded at the same time share a memory budget
(:data:`pipeline.data.images.DECODE_BUDGET`; one image larger than the
budget is decoded alone); a house whose bedrooms, bathrooms or area fall
outside ``validate.houses`` is a row error, as is a model output that is not a
finite number. The JSON holds no NaN or Infinity.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline import config, files, paths
from pipeline.config import HOUSE_CONTINUOUS
from pipeline.data import shards
from pipeline.data.formats import HOUSES_INFO, house_photos, parse_house
from pipeline.data.images import (
    DECODE_BUDGET,
    ImageTooLarge,
    MemoryBudget,
    load,
    montage,
    return_freed_images_to_the_os,
)
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

CHUNK = 512  # examples decoded and predicted at a time (bounds memory on large folders)


@dataclass(frozen=True)
class Limits:
    """What predict accepts: the limits validate applies to the training data (params ``validate``)."""

    max_pixels: int  # an image over this many pixels (from its header) is refused before decoding
    ranges: dict[str, tuple[float, float]]  # house attribute -> [min, max]; outside is a row error
    decode_budget: int = DECODE_BUDGET  # bytes that concurrent decodes may hold together


def limits_from(params: config.Params) -> Limits:
    """:class:`Limits` from the validated params."""
    checks = params.validate.houses
    return Limits(params.validate.max_pixels, {c: tuple(getattr(checks, c)) for c in HOUSE_CONTINUOUS})


@dataclass(frozen=True)
class Served:
    """A loaded variant and how to build its inputs."""

    name: str
    model: Any  # keras.Model
    inputs: tuple[str, ...]  # registry entry: the named inputs the model takes
    task: str
    classes: list[str] | None
    image_size: int  # the model's image side (pets: the image; houses: the 2x2 montage)
    resize: str  # pets: squash | crop | pad, as the training data was prepared


# --------------------------------------------------------------------------- the variant


def trained_variants(models: Path = Path("models")) -> list[str]:
    """Folders under ``models/`` that hold a ``model.keras``, sorted; not hidden ones (a killed write's ``.<variant>.tmp*``)."""
    if not models.is_dir():
        return []
    return sorted(p.name for p in models.iterdir() if not p.name.startswith(".") and (p / "model.keras").is_file())


def preprocessing(config: dict[str, Any], meta: dict[str, Any] | None) -> tuple[int, str]:
    """(image_size, resize mode) the variant was trained with: from its config, else the prepared data's meta.

    ``meta`` must describe the same image size as the model: if the data was
    prepared again at another size, the resize mode of the training data is
    unknown, and guessing would silently change every prediction.
    """
    size = int(config["image_size"])
    if config.get("task") == "regression":
        return size, "squash"  # prepare tiles the house photos with the default squash resize
    if "resize" in config:
        return size, str(config["resize"])
    if meta is None:
        raise PipelineError(
            f"{paths.prepared(config['dataset'])}/meta.json: not found; it holds the resize mode the variant was trained with"
        )
    if int(meta["image_size"]) != size:
        raise PipelineError(
            f"{paths.prepared(config['dataset'])}/meta.json: image_size {meta['image_size']} differs from the "
            f"{size} px variant {config['name']!r} was trained on; run prepare with its settings or retrain it"
        )
    return size, str(meta.get("resize", "squash"))


def load_variant(name: str, models: Path = Path("models")) -> Served:
    """Load ``models/<name>/model.keras`` (``safe_mode=True``) and what its inputs need."""
    choices = trained_variants(models)
    if name not in choices:
        listed = ", ".join(choices) if choices else f"none (no {models}/<variant>/model.keras; run the train stage first)"
        raise PipelineError(f"--variant {name!r}: not a trained variant; trained: {listed}")
    from pipeline.models import registry

    folder = models / name
    config = json.loads((folder / "config.json").read_text())
    try:
        entry = registry.get(config["model"])
    except KeyError as exc:
        raise PipelineError(f"{folder / 'config.json'}: {exc.args[0]}") from None
    meta_path = paths.prepared(config["dataset"]) / "meta.json"
    meta = shards.meta(paths.prepared(config["dataset"])) if meta_path.exists() else None
    size, resize = preprocessing(config, meta)
    model = registry.load_trained(folder / "model.keras")
    return Served(name, model, tuple(entry.inputs), config["task"], config.get("classes"), size, resize)


def load_registered(uri: str) -> Served:
    """Load the MLflow model at ``uri`` (``models:/<name>@<alias>``, ``runs:/...``) and what its inputs need.

    The variant's config comes from the model's metadata (train logs it
    there), else from the ``config/config.json`` of the run that logged it.
    """
    from pipeline import serving, tracking

    mlflow = tracking._mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        local = Path(mlflow.artifacts.download_artifacts(uri))
        conf = Model.load(str(local / "MLmodel"))
        config = dict(conf.metadata or {})
        if "model" not in config:  # logged before the model carried its config
            config = json.loads(Path(mlflow.artifacts.download_artifacts(f"runs:/{conf.run_id}/config/config.json")).read_text())
        loaded = serving.load(local)
    except (MlflowException, OSError, ValueError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise PipelineError(f"--model {uri}: cannot load it from {mlflow.get_tracking_uri()}: {why}") from None
    from pipeline.models import registry

    try:
        entry = registry.get(config["model"])
    except KeyError as exc:
        raise PipelineError(f"--model {uri}: its config names {exc.args[0]}") from None
    size, resize = preprocessing(config, None)
    log.info("%s: variant %s (run %s)", uri, config.get("name"), conf.run_id)
    name = str(config.get("name", uri))
    return Served(name, loaded.model, tuple(entry.inputs), config["task"], config.get("classes"), size, resize)


# --------------------------------------------------------------------------- pets: files


def collect_files(args: list[str]) -> list[tuple[str, Path | None, str | None]]:
    """Expand PATH arguments: (shown path, file, error); folders recursively, missing paths as errors."""
    out: list[tuple[str, Path | None, str | None]] = []
    seen: set[Path] = set()
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            if not found:
                out.append((arg, None, "folder holds no files"))
        elif path.is_file():
            found = [path]
        else:
            out.append((arg, None, "no such file or folder"))
            continue
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append((str(p), p, None))
    return out


def read_image(path: Path, size: int, resize: str, max_pixels: int, budget: MemoryBudget) -> tuple[np.ndarray | None, str | None]:
    """The training preprocessing of one file: (uint8 [size, size, 3] array, None) or (None, why not).

    An image over ``max_pixels`` is refused from its header; the decode of
    the others waits for room in ``budget``.
    """
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        return load(path, size, resize, max_pixels, budget), None
    except ImageTooLarge as exc:
        return None, f"{exc} (validate.max_pixels)"
    except Image.DecompressionBombError as exc:  # over Pillow's own cap, refused while opening
        return None, f"too large: {exc}"
    except UnidentifiedImageError:
        return None, "not an image (unrecognised format)"
    except Exception as exc:  # truncated/corrupt data, unreadable file: this file only
        return None, f"cannot decode: {exc}"


def _decode(jobs: list[Any], fn: Any) -> list[Any]:
    """``fn`` over ``jobs`` on a few threads (Pillow releases the GIL while decoding); order kept.

    Threads bound the CPU; memory is bounded by the :class:`MemoryBudget` that ``fn`` decodes under.
    """
    if len(jobs) < 8:
        return [fn(j) for j in jobs]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, jobs))


# --------------------------------------------------------------------------- houses: info files


def houses_info(arg: str) -> Path:
    """The info file a houses PATH names (a folder means its ``HousesInfo.txt``)."""
    path = Path(arg)
    return path / HOUSES_INFO if path.is_dir() else path


def existing_photos(folder: Path, house_id: int) -> list[Path]:
    """House ``house_id``'s photos in ``folder`` (montage order); FileNotFoundError names the missing ones."""
    photos = house_photos(folder, house_id)
    missing = [p.name for p in photos if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing photo{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return photos


def read_montage(
    photos: list[Path], photo_size: int, max_pixels: int, budget: MemoryBudget
) -> tuple[np.ndarray | None, str | None]:
    """The 2x2 montage of a house's four photos, each decoded as in prepare; or (None, why not)."""
    tiles = []
    for photo in photos:
        tile, error = read_image(photo, photo_size, "squash", max_pixels, budget)
        if error:
            return None, f"{photo.name}: {error}"
        tiles.append(tile)
    return montage(tiles), None


def out_of_range(house: dict[str, Any], ranges: dict[str, tuple[float, float]]) -> str | None:
    """Why ``house``'s attributes are outside ``ranges`` (the training data's limits), or None.

    A model extrapolates without a warning: ``-3 1e300 -5`` gave ``-inf``.
    """
    bad = [f"{k} {house[k]:g} outside [{lo:g}, {hi:g}]" for k, (lo, hi) in ranges.items() if not lo <= house[k] <= hi]
    return f"{'; '.join(bad)} (validate.houses)" if bad else None


def collect_houses(args: list[str], needs_photos: bool, ranges: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    """One row per house line (or per unreadable info file): source, house_id, attributes, photos or error.

    A line that does not parse or whose attributes are outside ``ranges`` is a row error.
    """
    rows: list[dict[str, Any]] = []
    for arg in args:
        info = houses_info(arg)
        try:
            lines = info.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = "no such file or folder" if isinstance(exc, FileNotFoundError) else f"cannot read: {exc}"
            rows.append({"source": str(info), "house_id": None, "error": reason})
            continue
        before = len(rows)
        for house_id, line in enumerate(lines, start=1):  # line N = house N, blank lines included
            if not line.strip():
                continue
            row: dict[str, Any] = {"source": str(info), "house_id": house_id, "error": None}
            try:
                row.update(parse_house(line, price_required=False))
                if reason := out_of_range(row, ranges):
                    raise ValueError(reason)
                if needs_photos:
                    row["photos"] = existing_photos(info.parent, house_id)
            except (ValueError, FileNotFoundError) as exc:
                row["error"] = str(exc)
            rows.append(row)
        if len(rows) == before:
            rows.append({"source": str(info), "house_id": None, "error": "no house lines"})
    return rows


# --------------------------------------------------------------------------- prediction


def predict_arrays(
    model: Any, inputs: tuple[str, ...], table: pd.DataFrame, images: np.ndarray | None, batch_size: int = 64
) -> np.ndarray:
    """The model's output ``[n]`` for ``n`` examples, fed exactly as evaluation feeds the test split.

    ``table`` holds the house attributes (``bedrooms``, ``bathrooms``, ``area``,
    ``zipcode``) when the model takes them; ``images`` the uint8 images or montages.
    """
    import keras

    from pipeline.training.inputs import make_dataset, model_inputs

    n = len(table) if images is None else len(images)
    x = model_inputs(inputs, table, images)  # only the inputs this model takes
    ds = make_dataset(x, np.zeros((n, 1), np.float32), batch_size, None, as_dict=not isinstance(model, keras.Sequential))
    return model.predict(ds, verbose=0).reshape(-1).astype(np.float64)


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def predict_pets(served: Served, args: list[str], limits: Limits, batch_size: int = 64) -> list[dict[str, Any]]:
    """One row per file: path, predicted class, probability of each class, or error."""
    if not (served.classes and len(served.classes) == 2):
        raise PipelineError(
            f"models/{served.name}/config.json: expected 2 classes for a binary classifier, got {served.classes!r}"
        )
    neg, pos = served.classes
    entries = collect_files(args)
    rows = [{"path": shown, "predicted": None, "probabilities": None, "error": error} for shown, _, error in entries]
    todo = [i for i, (_, file, error) in enumerate(entries) if error is None]
    budget = MemoryBudget(limits.decode_budget)
    for part in _chunks(len(todo)):
        ids = todo[part]
        decoded = _decode(
            [entries[i][1] for i in ids], lambda p: read_image(p, served.image_size, served.resize, limits.max_pixels, budget)
        )
        ok = []
        for i, (image, error) in zip(ids, decoded):
            if error:
                rows[i]["error"] = error
            else:
                ok.append((i, image))
        if ok:
            p = predict_arrays(served.model, served.inputs, pd.DataFrame(), np.stack([im for _, im in ok]), batch_size)
            for (i, _), prob in zip(ok, p):
                if not math.isfinite(prob):  # a broken model: an error, never a class picked from NaN
                    rows[i]["error"] = f"the model's output is {prob}, not a probability"
                    continue
                rows[i].update(predicted=pos if prob >= 0.5 else neg, probabilities={neg: 1.0 - float(prob), pos: float(prob)})
        log.info("%d/%d files processed", part.stop, len(todo))
    return rows


def predict_houses(served: Served, args: list[str], limits: Limits, batch_size: int = 64) -> list[dict[str, Any]]:
    """One row per house: source file, house id, predicted price, actual price and APE when given, or error."""
    needs_photos = "image" in served.inputs
    houses = collect_houses(args, needs_photos, limits.ranges)
    rows = [
        {
            "source": h["source"],
            "house_id": h["house_id"],
            "predicted_price": None,
            "price": h.get("price"),
            "ape": None,
            "error": h["error"],
        }
        for h in houses
    ]
    todo = [i for i, h in enumerate(houses) if h["error"] is None]
    photo_size = served.image_size // 2
    budget = MemoryBudget(limits.decode_budget)
    for part in _chunks(len(todo)):
        ids = todo[part]
        montages: list[np.ndarray | None] = [None] * len(ids)
        if needs_photos:
            decoded = _decode(
                [houses[i]["photos"] for i in ids], lambda ps: read_montage(ps, photo_size, limits.max_pixels, budget)
            )
            for k, (i, (image, error)) in enumerate(zip(ids, decoded)):
                rows[i]["error"], montages[k] = error, image
        ok = [k for k, i in enumerate(ids) if rows[i]["error"] is None]
        if ok:
            table = pd.DataFrame([{c: houses[ids[k]][c] for c in (*HOUSE_CONTINUOUS, "zipcode")} for k in ok])
            images = np.stack([montages[k] for k in ok]) if needs_photos else None
            for k, price in zip(ok, predict_arrays(served.model, served.inputs, table, images, batch_size)):
                row = rows[ids[k]]
                if not math.isfinite(price):  # in-range inputs, yet no number: say so instead of printing inf
                    row["error"] = f"the model's output is {price}, not a price"
                    continue
                row["predicted_price"] = float(price)
                if row["price"] is not None and row["price"] != 0:
                    row["ape"] = abs(float(price) - row["price"]) / abs(row["price"]) * 100
        log.info("%d/%d houses processed", part.stop, len(todo))
    return rows


# --------------------------------------------------------------------------- output


def table_rows(task: str, classes: list[str] | None, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The header and text cells of the table view of ``rows``."""
    if task == "binary_classification":
        assert classes is not None
        header = ["path", "predicted", *(f"p({c})" for c in classes), "error"]
        cells = [
            [
                r["path"],
                r["predicted"] or "-",
                *(f"{r['probabilities'][c]:.4f}" if r["probabilities"] else "-" for c in classes),
                r["error"] or "",
            ]
            for r in rows
        ]
        return header, cells
    header = ["file", "house", "predicted", "actual", "APE %", "error"]
    cells = [
        [
            r["source"],
            "-" if r["house_id"] is None else str(r["house_id"]),
            "-" if r["predicted_price"] is None else f"{r['predicted_price']:,.0f}",
            "-" if r["price"] is None else f"{r['price']:,.0f}",
            "-" if r["ape"] is None else f"{r['ape']:.1f}",
            r["error"] or "",
        ]
        for r in rows
    ]
    return header, cells


def format_table(header: list[str], cells: list[list[str]]) -> str:
    """A plain aligned text table; columns whose cells are all numbers (or ``-``) are right-aligned."""
    widths = [max([len(h), *(len(row[j]) for row in cells)]) for j, h in enumerate(header)]

    def numeric(j: int) -> bool:
        values = [row[j] for row in cells if row[j] != "-"]
        return bool(values) and all(v.lstrip("-").replace(",", "").replace(".", "", 1).isdigit() for v in values)

    right = [numeric(j) for j in range(len(header))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in cells)]) + "\n"


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, in nested dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def render(served: Served, rows: list[dict[str, Any]], fmt: str) -> str:
    """The output text: the table, or JSON with the variant, counts and one object per row.

    The JSON is strict (RFC 8259): a number that is not finite is written as ``null``, never ``NaN``/``Infinity``.
    """
    if fmt == "json":
        doc = {
            "variant": served.name,
            "task": served.task,
            "classes": served.classes,
            "predicted": sum(r["error"] is None for r in rows),
            "errors": sum(r["error"] is not None for r in rows),
            "results": rows,
        }
        return json.dumps(finite(doc), indent=2, allow_nan=False) + "\n"
    return format_table(*table_rows(served.task, served.classes, rows))


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline predict (--variant NAME | --model URI) [--format table|json] [--output FILE] PATH...``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", help="a trained variant (a folder under models/ with model.keras)")
    which.add_argument("--model", metavar="URI", help="an MLflow model the train stage logged, e.g. models:/pets@champion")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--output", type=Path, help="write the output to this file instead of stdout")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("paths", nargs="+", metavar="PATH")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    limits = limits_from(config.load())
    # Pillow warns from 89 MP; validate.max_pixels is the cap here, and a refused image is an error row already
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return_freed_images_to_the_os()  # else each decode thread keeps the largest image it decoded
    served = load_registered(args.model) if args.model else load_variant(args.variant)
    run = predict_pets if served.task == "binary_classification" else predict_houses
    rows = run(served, args.paths, limits, args.batch_size)
    text = render(served, rows, args.format)
    if args.output:
        files.write_text(args.output, text)
        log.info("written to %s", args.output)
    else:
        print(text, end="")
    done = sum(r["error"] is None for r in rows)
    what = "files" if served.task == "binary_classification" else "houses"
    log.info("%s: %d %s predicted, %d errors", served.name, done, what, len(rows) - done)
    if not done:
        raise PipelineError(f"no input could be predicted ({len(rows)} {what} or paths, all with errors)")
