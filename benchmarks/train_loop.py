"""The train stage's loop vs a bare ``model.fit``: images/s of the same model, batch and data.

Writes a throw-away prepared dataset (uint8 shards, index, meta, as the
prepare stage does; random pixels, balanced labels) and measures, side by
side in this run, alternating (so that other load on the machine hits both
alike), each from a freshly built model:

* the stage: ``pipeline.stages.train.fit`` of the ``cnn_functional`` variant (the
  seed CNN) with its tf.data input, class weights, callbacks, op determinism,
  MLflow per-epoch logging into a temporary sqlite store and a checkpoint
  after every epoch (model, optimizer and seed states: what a resume needs);
* the same without the checkpoints, which prices resumability;
* bare: the same model and compile (``pipeline.stages.train`` optimizer, loss,
  metrics) on in-memory NumPy arrays, ``model.fit(x, y, validation_data=...)``,
  no callbacks, no determinism.

images/s = training images x epochs / seconds in ``model.fit`` (validation and
the first epoch's tracing included in both). Also times one MLflow per-epoch
``log_metrics`` call. Writes ``reports/benchmarks/train_loop.json``.
Usage: ``python -m benchmarks.train_loop [--image-size N] [--epochs N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import REPO, quiet_env, write_figures
from pipeline.training import inputs, loop

TRAIN, VAL, VARIANT = 512, 128, "cnn_functional"


def write_prepared(root: Path, size: int) -> Path:
    """A prepared pets dataset of TRAIN + VAL random images under ``root/prepared``."""
    from pipeline.stages.prepare import write_shards

    out = root / "prepared"
    out.mkdir(parents=True)
    n = TRAIN + VAL
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    index = pd.DataFrame(
        {
            "path": [f"img{i}.jpg" for i in range(n)],
            "label": np.where(labels, "Dog", "Cat"),
            "label_index": labels,
            "split": ["train"] * TRAIN + ["val"] * VAL,
        }
    )
    arrays = list(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    write_shards(out, index, arrays, 1024).to_parquet(out / "index.parquet")
    (out / "meta.json").write_text(
        json.dumps({"task": "binary_classification", "image_size": size, "resize": "squash", "classes": ["Cat", "Dog"]})
    )
    return out


def stats() -> dict[str, Any]:
    """The stats artifact's fields that ``fit`` reads (identity PCA: augmentation is off for this variant)."""
    image = {"mean": [127.5] * 3, "variance": [5418.75] * 3, "pca_eigenvalues": [1.0] * 3, "pca_eigenvectors": np.eye(3).tolist()}
    return {
        "image": image,
        "classes": ["Cat", "Dog"],
        "class_weights": {"balanced": {"Cat": 1.0, "Dog": 1.0}, "inverse": {"Cat": 2.0, "Dog": 2.0}},
    }


def variant(epochs: int) -> Any:
    """The ``cnn_functional`` variant from params.yaml, with ``epochs``."""
    from pipeline import config

    v = config.load(REPO / "params.yaml").variants[VARIANT]
    return v.model_copy(update={"augment": "none", "train": v.train.model_copy(update={"epochs": epochs, "early_stopping": 0})})


def stage_rate(v: Any, prepared: Path, checkpoints: Path | None) -> float:
    """images/s of ``pipeline.stages.train.fit`` with an MLflow run, as the train stage calls it (``checkpoints``: where)."""
    import shutil

    from pipeline import tracking
    from pipeline.data import shards

    run_id = tracking.start(v.name, v.dataset, {"benchmark": "train_loop"}, {"variant": v.name})
    with contextlib.redirect_stdout(io.StringIO()):  # fit's verbose=2 epoch lines
        _, _, seconds, seen = loop.fit(v, shards.meta(prepared), stats(), prepared, None, run_id, checkpoints=checkpoints)
    tracking.finish(run_id)
    if checkpoints is not None:
        shutil.rmtree(checkpoints)  # as the stage does on success; the next run starts from scratch
    return seen / seconds


def bare_rate(v: Any, prepared: Path) -> float:
    """images/s of a bare ``model.fit`` on in-memory arrays: same model, compile, batch and epochs."""
    import keras
    from tensorflow.python.framework import config as tf_config

    from pipeline.data import shards
    from pipeline.models import registry

    tf_config.disable_op_determinism()  # fit() switched it on for the whole process
    keras.utils.set_random_seed(v.train.seed)
    (train_idx, train_img), (val_idx, val_img) = (shards.load_split(prepared, s) for s in ("train", "val"))
    meta = shards.meta(prepared)
    model = registry.build(VARIANT, loop.model_spec(v, meta, stats()))
    loss, metrics = loop.loss_and_metrics(meta["task"], v.train)
    model.compile(optimizer=loop.optimizer(v.train, -(-TRAIN // v.train.batch_size)), loss=loss, metrics=metrics)
    x, y = {"image": train_img.astype(np.float32)}, inputs.targets(meta, train_idx)
    val = ({"image": val_img.astype(np.float32)}, inputs.targets(meta, val_idx))
    start = time.perf_counter()
    model.fit(x, y, batch_size=v.train.batch_size, epochs=v.train.epochs, validation_data=val, verbose=0)
    return TRAIN * v.train.epochs / (time.perf_counter() - start)


def log_metrics_s(repeats: int = 5) -> float:
    """Median seconds of one per-epoch ``tracking.log_metrics`` call (6 metrics) into the store."""
    from pipeline import tracking

    run_id = tracking.start("log-timing", "pets", {}, {})
    times = []
    for step in range(repeats):
        start = time.perf_counter()
        tracking.log_metrics(run_id, {f"m{i}": float(i) for i in range(6)}, step=step)
        times.append(time.perf_counter() - start)
    tracking.finish(run_id)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, help="pixels (default: params prepare.pets.image_size)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the best counts")
    args = parser.parse_args()
    quiet_env()
    from pipeline import config

    size = args.image_size or config.load(REPO / "params.yaml").prepare.pets.image_size
    v = variant(args.epochs)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        prepared = write_prepared(Path(tmp), size)
        bare, stage, unsaved = [], [], []
        for _ in range(args.repeats):
            bare.append(bare_rate(v, prepared))
            stage.append(stage_rate(v, prepared, Path(tmp) / "checkpoints"))
            unsaved.append(stage_rate(v, prepared, None))
            print(
                f"  bare model.fit {bare[-1]:7.1f} img/s   train.fit {stage[-1]:7.1f} img/s"
                f"   train.fit without checkpoints {unsaved[-1]:7.1f} img/s",
                flush=True,
            )
        log_s = log_metrics_s()
    write_figures(
        "train_loop",
        {
            "train_throughput_ratio_vs_bare_fit": round(max(stage) / max(bare), 3),
            "checkpoint_throughput_ratio": round(max(stage) / max(unsaved), 3),
            "train_fit_images_per_s": round(max(stage), 1),
            "bare_fit_images_per_s": round(max(bare), 1),
            "runs_images_per_s": {
                "bare": [round(r, 1) for r in bare],
                "train.fit": [round(r, 1) for r in stage],
                "train.fit without checkpoints": [round(r, 1) for r in unsaved],
            },
            "mlflow_log_metrics_s": round(log_s, 4),
            "image_size": size,
            "batch_size": v.train.batch_size,
            "train_images": TRAIN,
            "val_images": VAL,
            "epochs": args.epochs,
        },
    )


if __name__ == "__main__":
    main()
