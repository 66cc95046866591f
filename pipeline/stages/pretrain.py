"""Stage ``pretrain@<source>``: a backbone for transfer learning, pretrained offline (``pretrain.<source>``).

Sources (``python -m pipeline pretrain <source>``):

* ``houses_rooms``: room-type classification (bathroom, bedroom, frontal,
  kitchen) of every house photo the validate stage accepted
  (``data/validated/houses/manifest.parquet``, label = the room), split by
  house (``val_fraction`` of the houses, seeded; houses that share a photo
  stay together), so its val accuracy is measured on houses it never saw.
* ``pets_unlabeled``: self-supervised SimCLR (:mod:`pipeline.training.ssl`)
  on the accepted pet photos in none of the prepare stage's train / val /
  test splits (``data/prepared/pets/index.parquet``), by path and by content;
  their labels are never read. Its quality figures: a kNN and a linear probe
  on its features, fitted on the labeled train split and scored on val.

Neither sees a photo the models are validated or tested on: ``pets_unlabeled``
takes no photo of any split (by content too), ``houses_rooms`` leaves out every
photo whose bytes equal a val or test house's
(:func:`pipeline.data.manifest.without_held_out`). Photos are decoded with
:func:`pipeline.data.images.load` at ``pretrain.image_size``, by default the
pets image size (``prepare.pets.image_size``), so the backbone fits the pets
models unchanged (transfer variants working at a smaller ``image_size`` need
the same here).

Writes ``models/pretrain/<source>/``: ``backbone.keras`` (image, 0-255
pixels -> pooled features; its ``Normalization`` holds the per-channel
mean/variance of the pretraining photos as constants; reloads with
``safe_mode=True``), ``summary.json`` (the quality figures, epochs, counts)
and ``history.csv``; timings go to its MLflow run (experiment ``pretrain``,
tagged with the backbone file's md5), not into these hashed outputs. The
train stage loads it through :func:`pipeline.models.backbones.load_backbone`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config, files, paths, runs, tracking
from pipeline.config import HOUSE_ROOMS, PRETRAIN_SOURCES, Params
from pipeline.data import images, shards
from pipeline.data.manifest import room_photos, unlabeled_photos, without_held_out
from pipeline.data.splits import split_by_house
from pipeline.errors import PipelineError
from pipeline.models.backbones import BACKBONE_FILE
from pipeline.training import checkpoint

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
DATASET = {"houses_rooms": "houses", "pets_unlabeled": "pets"}  # the dataset each source reads (dvc.yaml's items)


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline pretrain <source>``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=PRETRAIN_SOURCES)
    source = parser.parse_args(argv).source
    tracking.check()  # an unreachable store fails now, not after the imports and the data
    params = config.load()
    dataset = DATASET[source]
    manifest_path = paths.validated(dataset) / "manifest.parquet"
    index_path = paths.prepared(dataset) / "index.parquet"
    for path, stage in ((manifest_path, "validate"), (index_path, "prepare")):
        if not path.exists():
            raise PipelineError(f"{path}: not found; run the {stage} stage for {dataset} first")
    manifest, index = pd.read_parquet(manifest_path), pd.read_parquet(index_path)
    size = params.pretrain.image_size or params.prepare.pets.image_size
    stage = f"pretrain@{source}"
    tags = {
        **tracking.git_tags(),
        "dvc.stage": stage,
        "dataset": dataset,
        "pretrain.source": source,
        "data.profile": params.data.profile,
        "data.manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
    }
    pretrain = rooms if source == "houses_rooms" else unlabeled
    pretrain(params, manifest, index, size, stage, tags, [manifest_path, index_path])


def rooms(
    params: Params, manifest: pd.DataFrame, index: pd.DataFrame, size: int, stage: str, tags: dict, inputs: list[Path]
) -> None:
    """``houses_rooms``: room types of the house photos, validated on houses it never saw."""
    from pipeline.training.loop import fit_backbone

    cfg = params.pretrain.houses_rooms
    photos = without_held_out(room_photos(manifest), manifest, index, "houses_rooms")
    is_val = split_by_house(photos, cfg.val_fraction, cfg.seed)
    pixels, decode_seconds = _decode(paths.raw("houses"), photos.path.tolist(), size)
    labels = photos.label.map(HOUSE_ROOMS.index).to_numpy(np.int64)
    data = {"train": (pixels[~is_val], labels[~is_val]), "val": (pixels[is_val], labels[is_val])}
    log.info(
        "pretrain houses_rooms: %d photos of %d houses (%d val photos of unseen houses) at %d px",
        len(photos),
        photos.house_id.nunique(),
        int(is_val.sum()),
        size,
    )
    run_params = {"task": "room type (" + ", ".join(HOUSE_ROOMS) + ")", "image_size": size, **cfg.model_dump()}
    with _run(stage, tags, run_params, inputs) as (run_id, saved, resume):
        backbone, history, seconds = fit_backbone(cfg, data, size, run_id, saved, resume)
        val_counts = np.bincount(data["val"][1], minlength=len(HOUSE_ROOMS))
        summary = {
            "task": "room_type",
            "classes": list(HOUSE_ROOMS),
            "val_accuracy": float(history["val_accuracy"][-1]),
            "train_accuracy": float(history["accuracy"][-1]),
            "chance_accuracy": float(val_counts.max() / val_counts.sum()),  # always guessing the commonest val room
            "train_photos": int((~is_val).sum()),
            "val_photos": int(is_val.sum()),
            "train_houses": int(photos.house_id[~is_val].nunique()),
            "val_houses": int(photos.house_id[is_val].nunique()),
        }
        save_and_log(stage, run_id, backbone, history, summary, {"seconds": seconds, "decode_seconds": decode_seconds})


def unlabeled(
    params: Params, manifest: pd.DataFrame, index: pd.DataFrame, size: int, stage: str, tags: dict, inputs: list[Path]
) -> None:
    """``pets_unlabeled``: SimCLR on the pet photos of no split; probed on the labeled train -> val splits."""
    from pipeline.training import ssl

    cfg = params.pretrain.pets_unlabeled
    photos = unlabeled_photos(manifest, index)  # in no split: held-out photos included, by content
    if len(photos) < 2:
        raise PipelineError(
            f"pretrain.pets_unlabeled: {len(photos)} accepted pet photos are in no split; prepare.pets.split"
            " must leave some out (fractions summing below 1, or counts per class below the class sizes)"
        )
    pixels, decode_seconds = _decode(paths.raw("pets"), photos.path.tolist(), size)
    log.info("pretrain pets_unlabeled: %d unlabeled photos at %d px (views at %d px)", len(photos), size, cfg.train_size or size)
    prepared = paths.prepared("pets")
    probe_data = {split: _labeled(prepared, split, size) for split in ("train", "val")}
    run_params = {"task": "SimCLR (unlabeled pets)", "image_size": size, "unlabeled_photos": len(photos), **cfg.model_dump()}
    with _run(stage, tags, run_params, inputs) as (run_id, saved, resume):
        backbone, history, seconds = ssl.fit_simclr(cfg, pixels, size, run_id, saved, resume)
        began = time.perf_counter()
        scores = ssl.probe(backbone, probe_data["train"], probe_data["val"], cfg.knn)
        val_labels = probe_data["val"][1]
        summary = {
            "task": "simclr",
            **scores,
            "chance_accuracy": float(np.bincount(val_labels).max() / len(val_labels)),
            "pretext_loss": float(history["loss"][-1]),
            "knn_k": cfg.knn,
            "unlabeled_photos": len(photos),
            "probe_train_photos": len(probe_data["train"][1]),
            "probe_val_photos": len(val_labels),
            "train_size": cfg.train_size or size,
        }
        timings = {"seconds": seconds, "decode_seconds": decode_seconds, "probe_seconds": time.perf_counter() - began}
        save_and_log(stage, run_id, backbone, history, summary, timings)


def _decode(root: Path, rels: list[str], size: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    return images.load_many(root, rels, size), time.perf_counter() - start


def _labeled(prepared: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A prepared split's images at ``size`` px (resized as the models resize them) and labels."""
    index, pixels = shards.load_split(prepared, split)
    if pixels.shape[1] != size:
        from pipeline.models.wrap import resize_images

        pixels = resize_images(pixels, size)
    return pixels, index.label_index.to_numpy(np.int64)


def _run(stage: str, tags: dict, run_params: dict[str, Any], inputs: list[Path]):  # noqa: ANN202
    """The stage's resumable MLflow run (:func:`pipeline.runs.resumable`), keyed by its config and inputs."""
    key = checkpoint.run_key(run_params, inputs)
    return runs.resumable(paths.checkpoints(stage), key, stage, tracking.PRETRAIN_EXPERIMENT, tags, run_params)


def save_and_log(
    stage: str,
    run_id: str,
    backbone: Any,
    history: dict[str, list[float]],
    summary: dict[str, Any],
    timings: dict[str, float],
) -> None:
    """Write ``models/pretrain/<source>/`` and log its files and figures into the run (which stays open)."""
    summary = {
        **summary,
        "epochs": len(history["loss"]),
        "image_size": int(backbone.inputs[0].shape[1]),
        "feature_dim": int(backbone.outputs[0].shape[-1]),
        "parameters": int(backbone.count_params()),
    }
    source = stage.split("@")[1]
    out = paths.pretrain(source)
    with files.atomic_dir(out) as tmp:
        files.save_keras(backbone, tmp / BACKBONE_FILE)
        files.write_json(tmp / SUMMARY_FILE, summary)
        pd.DataFrame(history).rename_axis("epoch").reset_index().to_csv(tmp / "history.csv", index=False)
    tracking.tag_model(run_id, out / BACKBONE_FILE)
    for name, folder in ((SUMMARY_FILE, "summary"), ("history.csv", "history"), (BACKBONE_FILE, "model")):
        tracking.log_artifact(run_id, out / name, folder)
    figures = {k: v for k, v in summary.items() if k.endswith("accuracy") or k in ("parameters", "pretext_loss")}
    tracking.log_metrics(run_id, {**figures, **timings})
    files.write_json(paths.pretrain_log(source), {"run_id": run_id, "tracking_uri": tracking.tracking_uri(), **timings})
    log.info(
        "%s: %s after %d epochs, %.1f s -> %s",
        stage,
        ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if k.endswith("accuracy")),
        summary["epochs"],
        timings["seconds"],
        out / BACKBONE_FILE,
    )
