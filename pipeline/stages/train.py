"""Stage ``train@<variant>``: fit one registered model on its dataset's train split.

Reads the prepared shards, the train-split statistics (normalization, class
weights, PCA colour eigenvectors) and the variant's augmentation policy
(params ``augment.policies.<name>``); writes ``models/<variant>/model.keras``
(reloads with ``safe_mode=True``; the same weights give the same bytes), the
resolved config, and the per-epoch history ``reports/train/<variant>.csv``.
Logs params, per-epoch metrics, class weights, timings and artifacts into the
variant's MLflow run, tagged with the model file's md5 so that ``evaluate``
finds it; the run id and timings also go to ``logs/train/<variant>.json``
(not a DVC output: they differ from run to run).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config, files, paths, runs, tracking
from pipeline.config import AugmentPolicy, Variant
from pipeline.data import shards
from pipeline.errors import PipelineError
from pipeline.training import checkpoint
from pipeline.training.inputs import make_dataset, model_inputs
from pipeline.training.loop import class_weight, fit

log = logging.getLogger(__name__)


def mlflow_example(model: Any, names: tuple[str, ...], prepared: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The first validation row as the model's named inputs, and the model's output on it (the MLflow model's signature)."""
    import keras

    index, images = shards.load_split(prepared, "val", limit=1)
    x = model_inputs(names, index, images)
    ds = make_dataset(x, np.zeros((1, 1), np.float32), 1, None, as_dict=not isinstance(model, keras.Sequential))
    return x, model.predict(ds, verbose=0)


def resolved(variant: Variant, policy: AugmentPolicy | None) -> dict[str, Any]:
    """Everything that defines the variant's training, as plain data (saved and logged)."""
    out = variant.model_dump()
    if policy is not None:
        out["augment_policy"] = policy.model_dump()
    return out


def log_augmentation(run_id: str, policy: AugmentPolicy, prepared: Path, stats: dict[str, Any]) -> None:
    """The policy (JSON) and a preview of it on four train images, as artifacts of the run (not DVC outputs)."""
    from pipeline.training import augment_ops

    _, images = shards.load_split(prepared, "train", limit=4)
    image = stats["image"]
    fn = augment_ops.build(policy, image["pca_eigenvalues"], image["pca_eigenvectors"], policy.seed)
    with tempfile.TemporaryDirectory() as tmp:
        files.write_json(Path(tmp) / "policy.json", policy.model_dump())
        augment_ops.preview_grid(images, fn, 5, Path(tmp) / "preview.png", title=f"augmentation (seed {policy.seed})")
        tracking.log_artifact(run_id, Path(tmp), "augmentation")


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline train <variant>``."""
    import argparse

    params = config.load()
    parser = argparse.ArgumentParser(prog="python -m pipeline train", description=__doc__)
    parser.add_argument("variant", choices=list(params.variants))
    variant = params.variants[parser.parse_args(argv).variant]
    tracking.check()  # an unreachable store fails now, not after the imports and the data
    prepared = paths.prepared(variant.dataset)
    meta = shards.meta(prepared)
    stats_path = paths.stats(variant.dataset)
    if not stats_path.exists():
        raise PipelineError(f"{stats_path}: not found; run the stats stage first")
    stats = json.loads(stats_path.read_text())
    policy = params.augment.policies.get(variant.augment)  # None: "none"
    run_config = resolved(variant, policy)
    from pipeline.models import registry

    if registry.get(variant.model).needs_backbone:  # --- transfer learning
        run_config["transfer"] = variant.transfer.model_dump()
    stage = f"train@{variant.name}"
    tags = {
        **tracking.git_tags(),
        "dvc.stage": stage,
        "data.hash": tracking.data_hash(Path("dvc.lock"), variant.dataset),
        "dataset": variant.dataset,
        "data.profile": params.data.profile,
    }
    inputs = [stats_path, prepared, *([paths.pretrain(variant.transfer.source)] if "transfer" in run_config else [])]
    key = checkpoint.run_key(run_config, inputs)
    with runs.resumable(paths.checkpoints(stage), key, variant.name, variant.dataset, tags, run_config) as (
        run_id,
        saved,
        resume,
    ):
        model, history, seconds, seen = fit(variant, meta, stats, prepared, policy, run_id, saved, resume)
        save_and_log(variant, run_id, run_config, meta, stats, stats_path, policy, prepared, (model, history, seconds, seen))


def save_and_log(
    variant: Variant,
    run_id: str,
    run_config: dict[str, Any],
    meta: dict[str, Any],
    stats: dict[str, Any],
    stats_path: Path,
    policy: AugmentPolicy | None,
    prepared: Path,
    trained: tuple[Any, dict[str, list[float]], float, int],
) -> None:
    """Write the model folder, the history and the timings, and log them into the run (which stays open)."""
    from pipeline.models import registry

    model, history, seconds, seen = trained
    out = paths.model(variant.name)
    weights = class_weight(variant.train, stats)
    by_label = {stats["classes"][i]: w for i, w in weights.items()} if weights else {}
    with files.atomic_dir(out) as tmp:
        files.save_keras(model, tmp / "model.keras")
        files.write_json(
            tmp / "config.json",
            {
                **run_config,
                "task": meta["task"],
                "classes": meta.get("classes"),
                "image_size": meta["image_size"],
                "resize": meta.get("resize", "squash"),
                "parameters": model.count_params(),
            },
        )
        files.write_json(tmp / "class_weight.json", by_label)
    tracking.tag_model(run_id, out / "model.keras")
    timings = {"train_seconds": seconds, "images_seen": seen, "images_per_s": seen / seconds, "epochs": len(history["loss"])}
    files.write_json(paths.train_log(variant.name), {"run_id": run_id, "tracking_uri": tracking.tracking_uri(), **timings})
    history_csv = paths.history(variant.name)
    history_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(history).rename_axis("epoch").reset_index().to_csv(history_csv, index=False)
    if by_label:
        tracking.log_params(run_id, {f"class_weight.{label}": w for label, w in by_label.items()})
    artifacts = (
        (stats_path, "stats"),
        (out / "class_weight.json", "stats"),
        (out / "config.json", "config"),
        (history_csv, "history"),
    )
    for path, folder in artifacts:
        tracking.log_artifact(run_id, path, folder)
    if policy is not None:
        log_augmentation(run_id, policy, prepared, stats)
    tracking.log_metrics(run_id, {"train_seconds": seconds, "images_per_s": seen / seconds, "parameters": model.count_params()})
    # the MLflow model in the run's model/ folder: model.keras with a signature and an input example
    # (its metadata: the resolved config, so `predict --model models:/...` knows the inputs and classes)
    example = mlflow_example(model, registry.get(variant.model).inputs, prepared)
    tracking.log_model(run_id, model, *example, metadata=json.loads((out / "config.json").read_text()))
    log.info(
        "%s: %d epochs, %.1f s, %.0f images/s, final %s",
        variant.name,
        len(history["loss"]),
        seconds,
        seen / seconds,
        {k: round(v[-1], 4) for k, v in history.items()},
    )
