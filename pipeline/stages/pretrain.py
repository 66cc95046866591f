"""Stage ``pretrain``: a backbone for transfer learning, pretrained offline on the house photos.

Source task: room-type classification (bathroom, bedroom, frontal, kitchen)
of every photo the validate stage accepted in
``data/validated/houses/manifest.parquet`` (label = the room, path relative
to ``data/raw/houses``), decoded with :func:`pipeline.data.images.load` at
``pretrain.image_size``, by default the pets image size
(``prepare.pets.image_size``), so the backbone fits the pets models unchanged
(transfer variants working at a smaller ``image_size`` need the same here).
The photos are split by house (``pretrain.val_fraction`` of the houses,
seeded; houses that share a photo stay together), so the val accuracy is
measured on houses the backbone never saw.

Writes ``models/pretrain/``: ``backbone.keras`` (image, 0-255 pixels ->
pooled features; its ``Normalization`` holds the per-channel mean/variance
of the training photos as constants; reloads with ``safe_mode=True``),
``summary.json`` (val accuracy, chance level, epochs, classes, counts) and
``history.csv``; timings go to its MLflow run (experiment ``pretrain``,
tagged with the backbone file's md5), not into these hashed outputs. The
train stage loads it through :func:`pipeline.models.backbones.load_backbone`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config, files, paths, runs, tracking
from pipeline.config import HOUSE_ROOMS
from pipeline.data import images
from pipeline.data.manifest import room_photos
from pipeline.data.splits import split_by_house
from pipeline.errors import PipelineError
from pipeline.models.backbones import BACKBONE_FILE
from pipeline.training import checkpoint
from pipeline.training.loop import fit_backbone

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline pretrain``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline pretrain", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    tracking.check()  # an unreachable store fails now, not after the imports and the data
    params = config.load()
    cfg = params.pretrain
    size = cfg.image_size or params.prepare.pets.image_size
    manifest_path = paths.validated("houses") / "manifest.parquet"
    if not manifest_path.exists():
        raise PipelineError(f"{manifest_path}: not found; run the validate stage for houses first")
    photos = room_photos(pd.read_parquet(manifest_path))
    is_val = split_by_house(photos, cfg.val_fraction, cfg.seed)
    start = time.perf_counter()
    pixels = images.load_many(paths.raw("houses"), photos.path.tolist(), size)
    decode_seconds = time.perf_counter() - start
    labels = photos.label.map(HOUSE_ROOMS.index).to_numpy(np.int64)
    data = {"train": (pixels[~is_val], labels[~is_val]), "val": (pixels[is_val], labels[is_val])}
    log.info(
        "pretrain: %d photos of %d houses (%d val photos of unseen houses) at %d px, decoded in %.1f s",
        len(photos),
        photos.house_id.nunique(),
        int(is_val.sum()),
        size,
        decode_seconds,
    )
    run_params = {"task": "room type (" + ", ".join(HOUSE_ROOMS) + ")", "image_size": size, **cfg.model_dump()}
    stage = "pretrain"
    tags = {
        **tracking.git_tags(),
        "dvc.stage": stage,
        "dataset": "houses",
        "data.profile": params.data.profile,
        "data.manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
    }
    key = checkpoint.run_key(run_params, [manifest_path])
    experiment = tracking.PRETRAIN_EXPERIMENT
    with runs.resumable(paths.checkpoints(stage), key, "backbone", experiment, tags, run_params) as (run_id, saved, resume):
        backbone, history, seconds = fit_backbone(cfg, data, size, run_id, saved, resume)
        save_and_log(run_id, backbone, history, seconds, decode_seconds, is_val, photos, data, size)


def save_and_log(
    run_id: str,
    backbone: Any,
    history: dict[str, list[float]],
    seconds: float,
    decode_seconds: float,
    is_val: np.ndarray,
    photos: pd.DataFrame,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    size: int,
) -> None:
    """Write ``models/pretrain/`` and log its files and scores into the run (which stays open)."""
    val_counts = np.bincount(data["val"][1], minlength=len(HOUSE_ROOMS))
    summary = {
        "task": "room_type",
        "classes": list(HOUSE_ROOMS),
        "val_accuracy": float(history["val_accuracy"][-1]),
        "train_accuracy": float(history["accuracy"][-1]),
        "chance_accuracy": float(val_counts.max() / val_counts.sum()),  # always guessing the commonest val room
        "epochs": len(history["loss"]),
        "image_size": size,
        "feature_dim": int(backbone.outputs[0].shape[-1]),
        "parameters": int(backbone.count_params()),
        "train_photos": int((~is_val).sum()),
        "val_photos": int(is_val.sum()),
        "train_houses": int(photos.house_id[~is_val].nunique()),
        "val_houses": int(photos.house_id[is_val].nunique()),
    }
    out = paths.PRETRAIN
    with files.atomic_dir(out) as tmp:
        files.save_keras(backbone, tmp / BACKBONE_FILE)
        files.write_json(tmp / SUMMARY_FILE, summary)
        pd.DataFrame(history).rename_axis("epoch").reset_index().to_csv(tmp / "history.csv", index=False)
    tracking.tag_model(run_id, out / BACKBONE_FILE)
    for name, folder in ((SUMMARY_FILE, "summary"), ("history.csv", "history"), (BACKBONE_FILE, "model")):
        tracking.log_artifact(run_id, out / name, folder)
    scores = {k: summary[k] for k in ("val_accuracy", "train_accuracy", "chance_accuracy", "parameters")}
    tracking.log_metrics(run_id, {**scores, "seconds": seconds, "decode_seconds": decode_seconds})
    log.info(
        "pretrain: val accuracy %.3f (chance %.3f) after %d epochs, %.1f s -> %s",
        summary["val_accuracy"],
        summary["chance_accuracy"],
        summary["epochs"],
        seconds,
        out / BACKBONE_FILE,
    )
