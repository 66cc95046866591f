"""``python -m pipeline predict``: serving a trained variant on new files.

Tiny variants are trained once on a copy of the shared demo project (prepared
shards, stats and the raw files). The parity tests predict the *original* raw
files of the test split through ``predict`` and compare with what the
``evaluate`` stage computed from the prepared shards: equal to 1e-5 means the
serving preprocessing is the training preprocessing. A negative control in each
shows the comparison would catch a preprocessing difference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import __main__ as cli_main
from pipeline import predict
from pipeline.data import shards
from pipeline.data.images import load, montage
from pipeline.errors import PipelineError
from pipeline.models import registry
from pipeline.training import inputs
from tests.pipeline_project import REPO, trained_project

TINY = {
    "tiny_pets": {
        "dataset": "pets",
        "model": "cnn_functional",
        "augment": "none",
        "width": 0.25,
        "train": {"epochs": 1, "batch_size": 64},
    },
    "tiny_seq": {
        "dataset": "pets",
        "model": "cnn_sequential",
        "augment": "none",
        "width": 0.25,
        "train": {"epochs": 1, "batch_size": 64},
    },
    "tiny_houses": {"dataset": "houses", "model": "mixed_inputs", "augment": "none", "train": {"epochs": 1, "batch_size": 16}},
}
HOUSES_DIR = Path("data/raw/houses/Houses-dataset-master/Houses Dataset")
TOL = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parts = ("data/prepared", "data/stats", "data/raw/pets", "data/raw/houses")
    return trained_project(tmp_path_factory, "predict", parts, {"variants": TINY}, [("train", [name]) for name in TINY])


@pytest.fixture
def project(trained: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(trained)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained}/mlflow.db")
    return trained


def evaluated(
    root: Path, variant: str, dataset: str, splits: tuple[str, ...] = ("test",)
) -> tuple[pd.DataFrame, np.ndarray, object]:
    """(rows, model outputs, model) as ``pipeline.stages.evaluate`` computes them from the prepared shards of ``splits``."""
    import keras

    model = keras.models.load_model(root / "models" / variant / "model.keras", safe_mode=True)
    loaded = [shards.load_split(root / "data/prepared" / dataset, split) for split in splits]
    index = pd.concat([rows for rows, _ in loaded], ignore_index=True)
    images = np.concatenate([arrays for _, arrays in loaded])
    names = registry.get(TINY[variant]["model"]).inputs
    y = inputs.targets(shards.meta(root / "data/prepared" / dataset), index)
    ds = inputs.make_dataset(
        inputs.model_inputs(names, index, images), y, 64, None, as_dict=not isinstance(model, keras.Sequential)
    )
    return index, model.predict(ds, verbose=0).reshape(-1).astype(np.float64), model


def run_json(tmp_path: Path, variant: str, *paths: str | Path) -> dict:
    out = tmp_path / f"{variant}.json"
    predict.main(["--variant", variant, "--format", "json", "--output", str(out), *map(str, paths)])
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- train/serve parity


@pytest.mark.parametrize("variant", ["tiny_pets", "tiny_seq"])
def test_pets_raw_files_predict_as_evaluate_did(project: Path, tmp_path: Path, variant: str) -> None:
    """The test split's original files through ``predict`` == ``evaluate`` on the prepared shards."""
    index, expected, model = evaluated(project, variant, "pets")
    raw = [project / "data/raw/pets" / p for p in index.path]  # the original files
    doc = run_json(tmp_path, variant, *raw)
    assert doc["errors"] == 0 and doc["predicted"] == len(index) >= 40
    assert [r["path"] for r in doc["results"]] == list(map(str, raw))
    served = np.array([r["probabilities"]["Dog"] for r in doc["results"]])
    np.testing.assert_allclose(served, expected, atol=TOL, rtol=0)
    assert all(abs(r["probabilities"]["Cat"] + r["probabilities"]["Dog"] - 1) < 1e-12 for r in doc["results"])
    assert [r["predicted"] for r in doc["results"]] == ["Dog" if p >= 0.5 else "Cat" for p in served]

    # Negative control: the same files resized another way move the outputs by far more than TOL.
    import keras

    padded = np.stack([load(p, 96, "pad") for p in raw]).astype(np.float32)
    ds = inputs.make_dataset(
        {"image": padded}, np.zeros((len(raw), 1)), 64, None, as_dict=not isinstance(model, keras.Sequential)
    )
    assert np.abs(model.predict(ds, verbose=0).reshape(-1) - served).max() > 100 * TOL


def test_pets_odd_files_of_every_split_convert_as_in_prepare(project: Path, tmp_path: Path) -> None:
    """Every accepted photo, including the demo's PNG behind .jpg, CMYK and grayscale files, predicts as prepare's
    conversion of it does: its shard, or (photos in no split) :func:`pipeline.data.images.load`."""
    from PIL import Image

    index, in_splits, model = evaluated(project, "tiny_pets", "pets", ("train", "val", "test"))
    # the demo's oddities that the split leaves to pretrain.pets_unlabeled, as prepare would convert them
    oddities = {"PetImages/Cat/20001.jpg", "PetImages/Dog/20006.jpg", "PetImages/Cat/20007.jpg"}
    rest = sorted(oddities - set(index.path))
    meta = shards.meta(project / "data/prepared/pets")
    expected = in_splits
    if rest:
        pixels = np.stack([load(project / "data/raw/pets" / p, meta["image_size"], meta["resize"]) for p in rest])
        expected = np.concatenate([in_splits, model.predict({"image": pixels.astype(np.float32)}, verbose=0).ravel()])
    raw = [project / "data/raw/pets" / p for p in [*index.path, *rest]]
    kinds = set()
    for path in raw:
        with Image.open(path) as im:
            kinds |= {im.format, im.mode}
    assert {"JPEG", "PNG", "RGB", "L", "CMYK"} <= kinds
    served = np.array([r["probabilities"]["Dog"] for r in run_json(tmp_path, "tiny_pets", *raw)["results"]])
    np.testing.assert_allclose(served, expected, atol=TOL, rtol=0)


def test_houses_raw_lines_and_photos_predict_as_evaluate_did(project: Path, tmp_path: Path) -> None:
    """The raw HousesInfo.txt + photos through ``predict`` == ``evaluate`` on the prepared montages and tabular."""
    index, expected, model = evaluated(project, "tiny_houses", "houses")
    doc = run_json(tmp_path, "tiny_houses", project / HOUSES_DIR / "HousesInfo.txt")
    assert doc["errors"] == 0 and doc["predicted"] == 160  # every house, including zip codes prepare dropped
    by_id = {r["house_id"]: r for r in doc["results"]}
    served = np.array([by_id[h]["predicted_price"] for h in index.house_id])
    np.testing.assert_allclose(served, expected, rtol=TOL)
    actual = index.price.to_numpy()
    np.testing.assert_array_equal([by_id[h]["price"] for h in index.house_id], actual)
    np.testing.assert_allclose([by_id[h]["ape"] for h in index.house_id], np.abs(served - actual) / actual * 100)

    # Negative control: tiling the same photos in another order changes the prices by far more than TOL.
    swapped = np.stack(
        [montage([load(project / "data/raw/houses" / p, 32) for p in reversed(ps.split(";"))]) for ps in index.photos]
    )
    x = inputs.model_inputs(("tabular", "zipcode", "image"), index, swapped)
    p = model.predict(inputs.make_dataset(x, np.zeros((len(index), 1)), 64, None), verbose=0).reshape(-1)
    assert np.abs(p - served).max() / np.abs(served).mean() > 100 * TOL


# --------------------------------------------------------------------------- pets inputs and errors


def test_folder_expanded_corrupt_files_reported(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    (folder / "nested").mkdir(parents=True)
    cat, dog = project / "data/raw/pets/PetImages/Cat/0.jpg", project / "data/raw/pets/PetImages/Dog/1.jpg"
    shutil.copy(cat, folder / "cat.jpg")
    shutil.copy(dog, folder / "nested" / "dog.photo")  # any extension: decoded by content
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not a picture\n")
    doc = run_json(tmp_path, "tiny_pets", folder, tmp_path / "missing.jpg")
    rows = {Path(r["path"]).name: r for r in doc["results"]}
    assert set(rows) == {"cat.jpg", "dog.photo", "empty.jpg", "notes.txt", "missing.jpg"}
    assert doc["predicted"] == 2 and doc["errors"] == 3
    assert rows["empty.jpg"]["error"] == "empty file (0 bytes)"
    assert rows["notes.txt"]["error"].startswith("not an image")
    assert rows["missing.jpg"]["error"] == "no such file or folder"
    assert rows["cat.jpg"]["error"] is None and rows["cat.jpg"]["predicted"] in ("Cat", "Dog")
    # the copies predict exactly like the originals
    originals = {Path(r["path"]).name: r for r in run_json(tmp_path, "tiny_pets", cat, dog)["results"]}
    assert rows["cat.jpg"]["probabilities"] == originals["0.jpg"]["probabilities"]
    assert rows["dog.photo"]["probabilities"] == originals["1.jpg"]["probabilities"]


def test_nothing_predicted_fails_after_writing_the_errors(project: Path, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    out = tmp_path / "out.txt"
    with pytest.raises(PipelineError, match="no input could be predicted"):
        predict.main(["--variant", "tiny_pets", "--output", str(out), str(tmp_path / "a.jpg")])
    assert "empty file (0 bytes)" in out.read_text()
    # through the CLI entry point: exit 1
    assert cli_main.main(["predict", "--variant", "tiny_pets", "--output", str(out), str(tmp_path / "a.jpg")]) == 1


def test_unknown_variant_names_the_trained_ones(project: Path) -> None:
    with pytest.raises(
        PipelineError, match=r"--variant 'nope': not a trained variant; trained: tiny_houses, tiny_pets, tiny_seq$"
    ):
        predict.main(["--variant", "nope", "x.jpg"])


def test_table_output_aligned(project: Path, capsys: pytest.CaptureFixture) -> None:
    predict.main(["--variant", "tiny_pets", "data/raw/pets/PetImages/Dog/1.jpg", "data/raw/pets/PetImages/Cat/Thumbs.db"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["path", "predicted", "p(Cat)", "p(Dog)", "error"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[0] == "data/raw/pets/PetImages/Dog/1.jpg" and float(lines[2].split()[3]) > 0
    assert "not an image" in lines[3]
    column = lines[0].index("predicted")
    assert lines[2][column:].split()[0] in ("Cat", "Dog") and lines[3][column] == "-"  # aligned columns


# --------------------------------------------------------------------------- houses inputs and errors


def test_houses_per_house_errors(project: Path, tmp_path: Path) -> None:
    src = project / HOUSES_DIR
    for house in (1, 2, 3):
        for photo in src.glob(f"{house}_*.jpg"):
            shutil.copy(photo, tmp_path / photo.name)
    (tmp_path / "2_kitchen.jpg").unlink()
    (tmp_path / "3_frontal.jpg").write_bytes(b"")
    lines = (src / "HousesInfo.txt").read_text().splitlines()[:3]
    first = lines[0].split()
    info = "\n".join([" ".join(first[:4]), *lines[1:], "", "4 two 1500 92276", "1 2"]) + "\n"  # house 1 without a price
    (tmp_path / "HousesInfo.txt").write_text(info)
    doc = run_json(tmp_path, "tiny_houses", tmp_path)  # a folder: its HousesInfo.txt
    rows = {r["house_id"]: r for r in doc["results"]}
    assert set(rows) == {1, 2, 3, 5, 6}  # line 4 is blank; line N is house N
    assert (
        rows[1]["error"] is None
        and isinstance(rows[1]["predicted_price"], float)
        and rows[1]["price"] is None
        and rows[1]["ape"] is None
    )
    assert rows[2]["error"] == "missing photo 2_kitchen.jpg"
    assert rows[3]["error"] == "3_frontal.jpg: empty file (0 bytes)"
    assert "must be numbers" in rows[5]["error"] and "expected 4 or 5 fields" in rows[6]["error"]
    # the same house line as in the dataset gives the same price as there
    full = {r["house_id"]: r for r in run_json(tmp_path, "tiny_houses", src / "HousesInfo.txt")["results"]}
    assert rows[1]["predicted_price"] == pytest.approx(full[1]["predicted_price"], rel=TOL)


def test_parse_house() -> None:
    from pipeline.data.formats import parse_house

    assert parse_house("3 2.5 1800 92276", price_required=False) == {
        "bedrooms": 3.0,
        "bathrooms": 2.5,
        "area": 1800.0,
        "zipcode": "92276",
        "price": None,
    }
    assert parse_house("3 2.5 1800 92276 500000", price_required=False)["price"] == 500000.0
    for bad in ("3 2.5 1800", "3 2.5 nan 92276", "a b c d"):
        with pytest.raises(ValueError):
            parse_house(bad, price_required=False)
    with pytest.raises(ValueError, match=r"expected 5 fields \(bedrooms bathrooms area zipcode price\), got 4"):
        parse_house("3 2.5 1800 92276", price_required=True)


def test_resize_mode_comes_from_the_prepared_meta() -> None:
    config = {"name": "v", "dataset": "pets", "task": "binary_classification", "image_size": 96}
    assert predict.preprocessing(config, {"image_size": 96, "resize": "crop"}) == (96, "crop")
    assert predict.preprocessing({**config, "resize": "pad"}, None) == (96, "pad")
    with pytest.raises(PipelineError, match="image_size 128 differs from the 96 px"):
        predict.preprocessing(config, {"image_size": 128, "resize": "squash"})
    with pytest.raises(PipelineError, match="meta.json: not found"):
        predict.preprocessing(config, None)


def test_format_table() -> None:
    text = predict.format_table(["name", "n"], [["a", "1,234"], ["bbb", "5"], ["c", "-"]])
    assert text.splitlines() == ["name      n", "----  -----", "a     1,234", "bbb       5", "c         -"]


# --------------------------------------------------------------------------- the command line


def test_cli_prints_a_table(project: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "pipeline", "predict", "--variant", "tiny_houses", str(HOUSES_DIR), "nowhere.txt"]
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["file", "house", "predicted", "actual", "APE", "%", "error"]
    assert len(lines) == 2 + 160 + 1
    assert lines[-1].startswith("nowhere.txt") and lines[-1].endswith("no such file or folder")
    assert "tiny_houses: 160 houses predicted, 1 errors" in result.stderr


# --------------------------------------------------------------------------- hostile inputs: bounded memory, clean rows

MB = 2**20
# TensorFlow and a tiny model take ~0.7 GB here; one decoded 13000² RGBA image with its RGB conversion would take 2 GB
REFUSED_BOUND_MB = 1024
BIG = 6300  # 6300² = 39.7 MP, under validate.max_pixels (40 MP): decoded, 476 MB each (peak_bytes), one at a time


def strict_json(text: str) -> dict:
    """``json.loads`` that refuses NaN and ±Infinity (Python's parser accepts them; JSON does not)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# The command runs under a small Python that reports its child's peak RSS: measured from pytest itself, the
# child's ru_maxrss would include pytest's own memory, which the fork (before exec) counts as the child's.
_PEAK_OF_CHILD = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(rc)"
)


def predict_peak(root: Path, out: Path, *paths: Path) -> tuple[int, dict, str]:
    """Run ``python -m pipeline predict --variant tiny_pets --format json`` in a subprocess: (peak RSS in MB, output, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "pipeline", "predict", "--variant", "tiny_pets", "--format", "json", "--output", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_CHILD, *command, *map(str, paths)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return int(result.stdout.split()[-1]), strict_json(out.read_text()), result.stderr


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bombs/``: four 13000² RGBA PNGs (657 KB each, 169 MP: over max_pixels); ``big/``: four 6300² RGBA PNGs."""
    from tests.hostile import blank_png

    root = tmp_path_factory.mktemp("hostile")
    for name, side in (("bombs", 13000), ("big", BIG)):
        (root / name).mkdir()
        first = blank_png(root / name / "0.png", side, side)
        for k in (1, 2, 3):
            shutil.copy(first, root / name / f"{k}.png")
    return root


def test_images_over_max_pixels_refused_from_the_header_in_bounded_memory(project: Path, hostile: Path, tmp_path: Path) -> None:
    """Before: the four 13000² PNGs were decoded, 3.9 GB peak RSS (8 of them on 2 threads: 6.8 GB); now ~0.7 GB."""
    cat = project / "data/raw/pets/PetImages/Cat/0.jpg"
    peak, doc, stderr = predict_peak(project, tmp_path / "out.json", hostile / "bombs", cat)
    rows = {Path(r["path"]).name: r for r in doc["results"]}
    assert doc["predicted"] == 1 and rows["0.jpg"]["error"] is None
    for k in range(4):
        assert rows[f"{k}.png"]["error"] == (
            "too large: 13000x13000 = 169000000 pixels exceeds max_pixels=40000000 (validate.max_pixels)"
        )
    assert "DecompressionBombWarning" not in stderr  # refused by our cap, not half-warned by Pillow's
    assert peak < REFUSED_BOUND_MB, f"peak RSS {peak} MB"


def test_large_allowed_images_decode_one_budget_at_a_time(project: Path, hostile: Path, tmp_path: Path) -> None:
    """Four 476 MB decodes on all threads (8 jobs: the pool is used) add one decode's memory, not one per thread."""
    from PIL import Image

    from pipeline.data.images import DECODE_BUDGET, peak_bytes

    with Image.open(hostile / "big/0.png") as im:
        one = peak_bytes(im)
    assert DECODE_BUDGET < 2 * one  # two cannot share the budget: they must decode one after the other
    small = sorted((project / "data/raw/pets/PetImages/Cat").glob("*.jpg"))[:4]
    base, _, _ = predict_peak(project, tmp_path / "base.json", *small)
    peak, doc, _ = predict_peak(project, tmp_path / "big.json", hostile / "big", *small)
    assert doc["predicted"] == 8 and doc["errors"] == 0
    assert peak - base < one / MB + 128, f"peak RSS {peak} MB, {base} MB without the large images"


def test_houses_out_of_range_attributes_are_row_errors_and_json_is_strict(project: Path, tmp_path: Path) -> None:
    """``-3 1e300 -5 ABCDE`` was predicted as -inf (written as -Infinity); now a row error, the others predicted."""
    src = project / HOUSES_DIR
    for house in (1, 2, 3):
        for photo in src.glob(f"{house}_*.jpg"):
            shutil.copy(photo, tmp_path / photo.name)
    good = (src / "HousesInfo.txt").read_text().splitlines()[0]
    (tmp_path / "HousesInfo.txt").write_text(f"{good}\n-3 1e300 -5 ABCDE\n3 2 1e400 92276\n")
    out = tmp_path / "out.json"
    predict.main(["--variant", "tiny_houses", "--format", "json", "--output", str(out), str(tmp_path)])
    doc = strict_json(out.read_text())
    rows = {r["house_id"]: r for r in doc["results"]}
    assert doc["predicted"] == 1 and rows[1]["error"] is None and isinstance(rows[1]["predicted_price"], float)
    assert rows[2]["predicted_price"] is None and rows[2]["error"] == (
        "bedrooms -3 outside [1, 20]; bathrooms 1e+300 outside [0.5, 20]; area -5 outside [100, 50000] (validate.houses)"
    )
    assert rows[3]["error"] == "not a finite number in '3 2 1e400 92276'"


def test_a_non_finite_model_output_is_a_row_error(tmp_path: Path) -> None:
    """A model that overflows on valid inputs: the row says so, the JSON stays JSON."""
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(1e38))])
    served = predict.Served("overflow", model, ("tabular",), "regression", None, 64, "squash")
    (tmp_path / "HousesInfo.txt").write_text("3 2 1800 92276 500000\n")
    limits = predict.Limits(40_000_000, {"bedrooms": (1, 20), "bathrooms": (0.5, 20), "area": (100, 50000)})
    (row,) = predict.predict_houses(served, [str(tmp_path)], limits)
    assert row["predicted_price"] is None and row["ape"] is None and row["error"] == "the model's output is inf, not a price"
    assert strict_json(predict.render(served, [row], "json"))["errors"] == 1


def test_render_writes_strict_json() -> None:
    served = predict.Served("v", None, ("tabular",), "regression", None, 64, "squash")
    rows = [{"source": "a", "predicted_price": float("-inf"), "ape": float("nan"), "nested": [1.5, float("inf")], "error": None}]
    doc = strict_json(predict.render(served, rows, "json"))
    assert doc["results"] == [{"source": "a", "predicted_price": None, "ape": None, "nested": [1.5, None], "error": None}]
