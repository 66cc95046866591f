"""Stage ``train@<variant>``: fit one registered model on its dataset's train split.

Reads the prepared shards, the train-split statistics (normalization, class
weights, PCA colour eigenvectors) and the augmentation policy; writes
``models/<variant>/model.keras`` (reloads with ``safe_mode=True``), the
resolved config, and the per-epoch history ``reports/train/<variant>.csv``. Logs
params, per-epoch metrics, class weights and artifacts into the variant's
MLflow run, whose id ``evaluate`` picks up from ``models/<variant>/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config, files, paths, shards, tracking
from pipeline.config import HOUSE_CONTINUOUS, TrainConfig, TransferConfig, Variant
from pipeline.errors import PipelineError
from pipeline.models.registry import ModelSpec

log = logging.getLogger(__name__)



def model_spec(variant: Variant, meta: dict[str, Any], stats: dict[str, Any]) -> ModelSpec:
    """The builder's input: sizes and knobs from params, fitted statistics from the stats artifact."""
    image = stats["image"]
    prepared = meta["image_size"]
    size = variant.image_size or prepared
    if not 8 <= size <= prepared:
        raise PipelineError(f"variants.{variant.name}.image_size: {size} px; the model resizes the prepared {prepared} px images down, to at least 8 px (0 = {prepared})")
    spec: dict[str, Any] = dict(
        image_size=size,
        input_size=prepared,
        image_mean=tuple(image["mean"]),
        image_variance=tuple(image["variance"]),
        dropout=variant.dropout,
        batchnorm=variant.batchnorm,
        width=variant.width,
        extra=dict(variant.extra),
        tta=variant.tta,
    )
    if "tabular" in stats:
        cols = stats["tabular"]["columns"]
        spec.update(
            tabular_mean=tuple(cols[c]["mean"] for c in HOUSE_CONTINUOUS),
            tabular_variance=tuple(cols[c]["std"] ** 2 for c in HOUSE_CONTINUOUS),
            zipcodes=tuple(stats["tabular"]["zipcodes"]),
            target_scale=cols["price"]["max"],  # the seed scales prices by the largest train price
            target_mean=cols["price"]["mean"],  # where a log-price output starts (houses extra target: log)
        )
    return ModelSpec(**spec)


def model_inputs(names: tuple[str, ...], index: pd.DataFrame, images: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays each named model input takes: raw pixels, raw house attributes, zip codes as strings."""
    available = {
        "image": lambda: images.astype(np.float32),
        "tabular": lambda: index[list(HOUSE_CONTINUOUS)].to_numpy(np.float32),
        "zipcode": lambda: index.zipcode.astype(str).to_numpy().reshape(-1, 1),
    }
    return {n: available[n]() for n in names}


def targets(meta: dict[str, Any], index: pd.DataFrame) -> np.ndarray:
    """Labels (0/1) for classification, prices for regression, shape ``[n, 1]`` float32."""
    column = "label_index" if meta["task"] == "binary_classification" else "price"
    return index[column].to_numpy(np.float32).reshape(-1, 1)


def class_weight(cfg: TrainConfig, stats: dict[str, Any]) -> dict[int, float] | None:
    """Keras ``class_weight``: ``balanced`` or ``inverse`` (the seed's) from the train-split stats, explicit, or None."""
    if cfg.class_weight == "none" or "class_weights" not in stats:
        return None
    if isinstance(cfg.class_weight, dict):
        weights = cfg.class_weight
        if set(weights) != set(stats["classes"]):
            raise PipelineError(f"train.class_weight: give a weight for each class {stats['classes']}, got {sorted(weights)}")
    else:
        weights = stats["class_weights"][cfg.class_weight]
    return {i: float(weights[c]) for i, c in enumerate(stats["classes"])}


def make_dataset(x: dict[str, np.ndarray], y: np.ndarray, batch_size: int, seed: int | None, augment: Any = None, as_dict: bool = True, mix: tuple[float, float] = (0.0, 0.0)):  # noqa: ANN201
    """A ``tf.data`` pipeline: shuffle (when ``seed`` is given), batch, augment images in parallel, prefetch.

    ``mix`` = (mixup, cutmix) alphas: :func:`pipeline.augmentation.mix_batch`
    after ``augment``, on the images and labels. Also the evaluation and
    serving input: Keras cannot take NumPy string arrays (the zip codes) in
    ``predict``, tf.data can.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if seed is not None:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None or any(mix):
        from pipeline.augmentation import mix_batch

        def apply(s, xy):  # noqa: ANN001, ANN202
            images, labels = xy[0]["image"], xy[1]
            if augment is not None:
                images = augment(images, seed=s)
            if any(mix):
                images, labels = mix_batch(images, labels, s + 1, *mix)  # its own draws, not the augmentation's
            return {**xy[0], "image": images}, labels

        # One explicit stateless seed per batch, new each epoch: the map stays
        # parallel and the run stays reproducible under op determinism.
        seeds = tf.data.Dataset.random(seed or 0, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(seeds, ds).map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    if not as_dict:  # keras.Sequential takes its one input as a tensor, not a dict
        (only,) = x
        ds = ds.map(lambda xb, yb: (xb[only], yb))
    return ds.prefetch(tf.data.AUTOTUNE)


def mlflow_example(model: Any, names: tuple[str, ...], prepared: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The first validation row as the model's named inputs, and the model's output on it (the MLflow model's signature)."""
    import keras

    index, images = shards.load_split(prepared, "val")
    x = model_inputs(names, index.iloc[:1], images[:1])
    ds = make_dataset(x, np.zeros((1, 1), np.float32), 1, None, as_dict=not isinstance(model, keras.Sequential))
    return x, model.predict(ds, verbose=0)


def learning_rate(cfg: TrainConfig, steps_per_epoch: int):  # noqa: ANN201
    """The learning rate: a number (``constant``) or a Keras schedule over optimizer steps."""
    import keras

    schedules = keras.optimizers.schedules
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup * steps_per_epoch
    if warmup:  # a linear ramp from 0, then the cosine (alpha 1 holds a constant rate instead); config allows only these two
        alpha = 1.0 if cfg.schedule == "constant" else 0.0
        return schedules.CosineDecay(0.0, decay_steps=max(total - warmup, 1), alpha=alpha, warmup_target=cfg.learning_rate, warmup_steps=warmup)
    if cfg.schedule == "inverse_time":  # the seed's Adam(lr, decay)
        return schedules.InverseTimeDecay(cfg.learning_rate, decay_steps=1, decay_rate=cfg.decay)
    if cfg.schedule == "step":
        return schedules.ExponentialDecay(cfg.learning_rate, steps_per_epoch, cfg.decay or 0.5, staircase=True)
    if cfg.schedule == "cosine":
        return schedules.CosineDecay(cfg.learning_rate, decay_steps=max(total, 1))
    return cfg.learning_rate


def optimizer(cfg: TrainConfig, steps_per_epoch: int):  # noqa: ANN201
    """The optimizer with its learning rate (:func:`learning_rate`)."""
    import keras

    lr = learning_rate(cfg, steps_per_epoch)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    return keras.optimizers.RMSprop(lr)


def loss_and_metrics(task: str, cfg: TrainConfig) -> tuple[Any, list]:
    """Loss from params (``auto``: binary cross-entropy / MAPE as in the seed) and the metrics shown per epoch."""
    import keras

    name = cfg.loss if cfg.loss != "auto" else ("binary_crossentropy" if task == "binary_classification" else "mape")
    if task == "binary_classification":
        if name != "binary_crossentropy":
            raise PipelineError(f"train.loss: {name!r} does not fit a classification variant; use binary_crossentropy or auto")
        return keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing), ["accuracy", keras.metrics.AUC(name="auc")]
    if name == "binary_crossentropy":
        raise PipelineError("train.loss: binary_crossentropy does not fit a regression variant; use mse, mae, mape or auto")
    losses = {"mse": keras.losses.MeanSquaredError(), "mae": keras.losses.MeanAbsoluteError(), "mape": keras.losses.MeanAbsolutePercentageError()}
    return losses[name], [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.MeanAbsolutePercentageError(name="mape")]


def fit(variant: Variant, meta: dict[str, Any], stats: dict[str, Any], prepared: Path, policy: dict[str, Any], run_id: str | None, transfer: TransferConfig | None = None):  # noqa: ANN201
    """Build, compile and fit the variant; return (model, history dict, seconds, images seen).

    ``policy`` is the augment stage's ``policy.json`` (``seed`` and ``policy``),
    applied to the train split only when the variant has ``augment: true``.
    ``transfer`` (params ``transfer``; default: the pretrain stage's backbone)
    picks the backbone of the models that need one.
    """
    import keras
    import tensorflow as tf

    from pipeline.models import registry

    try:
        entry = registry.get(variant.model)
    except KeyError as exc:
        raise PipelineError(f"variants.{variant.name}.model: {exc.args[0]}") from None
    if entry.task != meta["task"]:
        raise PipelineError(f"variants.{variant.name}: model {variant.model!r} is for {entry.task}, dataset {variant.dataset!r} is {meta['task']}")
    cfg = variant.train
    mix = (cfg.mixup, cfg.cutmix)
    if any(mix) and entry.inputs != ("image",):
        raise PipelineError(f"variants.{variant.name}.train: mixup / cutmix mix the images and labels of image-only models; {variant.model!r} takes {', '.join(entry.inputs)}")
    from pipeline.models.transfer import finetune_plan  # --- transfer learning: an optional second phase

    plan = finetune_plan(variant.model, variant.extra, cfg.learning_rate, f"variants.{variant.name}.extra")
    if plan and cfg.warmup >= plan[0]:  # each phase ramps up again
        raise PipelineError(f"variants.{variant.name}.train.warmup: {cfg.warmup} epochs of warmup leave none of the {plan[0]} fine-tuning epochs at the learning rate")
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    train_idx, train_img = shards.load_split(prepared, "train")
    val_idx, val_img = shards.load_split(prepared, "val")
    augment = None
    if variant.augment and "image" in entry.inputs:
        from pipeline import augmentation

        img = stats["image"]
        augment = augmentation.build(augmentation.Policy(**policy["policy"]), img["pca_eigenvalues"], img["pca_eigenvectors"], policy["seed"])
    spec = model_spec(variant, meta, stats)
    if entry.needs_backbone:  # --- transfer learning: the pretrained backbone goes into the spec
        from pipeline.pretrain import load_backbone

        spec = dataclasses.replace(spec, backbone=load_backbone(transfer or TransferConfig("pretrain", "MobileNetV2", None), spec.image_size))
    try:
        model = registry.build(variant.model, spec)
    except ValueError as exc:  # a builder's own check of its knobs (extra, image_size, tta)
        raise PipelineError(f"variants.{variant.name}: {exc}") from None
    as_dict = not isinstance(model, keras.Sequential)
    train_ds = make_dataset(model_inputs(entry.inputs, train_idx, train_img), targets(meta, train_idx), cfg.batch_size, cfg.seed, augment, as_dict, mix)
    val_ds = make_dataset(model_inputs(entry.inputs, val_idx, val_img), targets(meta, val_idx), cfg.batch_size, None, as_dict=as_dict)
    loss, metrics = loss_and_metrics(entry.task, cfg)
    model.compile(optimizer=optimizer(cfg, math.ceil(len(train_idx) / cfg.batch_size)), loss=loss, metrics=metrics)
    callbacks: list = [keras.callbacks.TerminateOnNaN()]
    if cfg.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(patience=cfg.early_stopping, restore_best_weights=True))
    if run_id:
        callbacks.append(tracking.epoch_logger(run_id))
    start = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, class_weight=class_weight(cfg, stats), callbacks=callbacks, shuffle=False, verbose=2).history
    if plan:  # variant extra finetune_epochs, see pipeline/models/transfer.py
        fit_args = dict(x=train_ds, validation_data=val_ds, class_weight=class_weight(cfg, stats), callbacks=callbacks, shuffle=False, verbose=2)
        history = finetune(model, plan, cfg, entry.task, history, math.ceil(len(train_idx) / cfg.batch_size), fit_args)
    seconds = time.perf_counter() - start
    epochs_run = len(history["loss"])
    return model, history, seconds, epochs_run * len(train_idx)


def finetune(model: Any, plan: tuple[int, float, str], cfg: TrainConfig, task: str, first: dict[str, list], steps_per_epoch: int, fit_args: dict[str, Any]) -> dict[str, list]:
    """Transfer learning's second phase: unfreeze (``plan`` = epochs, learning rate, which part), recompile, fit on.

    Epoch numbers continue after the first phase (``initial_epoch``), so the
    MLflow steps and the history CSV run on; returns both phases' history merged.
    """
    from pipeline.models.transfer import unfreeze

    epochs, learning_rate, which = plan
    trained = unfreeze(model, which)
    log.info("fine-tuning %s of the backbone (%s) for %d epochs at learning rate %g", which, ", ".join(trained), epochs, learning_rate)
    phase = dataclasses.replace(cfg, epochs=epochs, learning_rate=learning_rate)
    loss, metrics = loss_and_metrics(task, phase)
    model.compile(optimizer=optimizer(phase, steps_per_epoch), loss=loss, metrics=metrics)
    done = len(first["loss"])
    second = model.fit(initial_epoch=done, epochs=done + epochs, **fit_args).history
    return {k: [*v, *second.get(k, [])] for k, v in first.items()}


def resolved(variant: Variant, policy: dict[str, Any]) -> dict[str, Any]:
    """Everything that defines the variant's training, as plain data (saved and logged)."""
    out = dataclasses.asdict(variant)
    if variant.augment:
        out["augment_policy"] = dict(policy["policy"], seed=policy["seed"])
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline train <variant>``."""
    import argparse

    params = config.load()
    parser = argparse.ArgumentParser(prog="python -m pipeline train", description=__doc__)
    parser.add_argument("variant", choices=list(params.variants))
    variant = params.variants[parser.parse_args(argv).variant]
    prepared = paths.prepared(variant.dataset)
    meta = shards.meta(prepared)
    stats_path = paths.stats(variant.dataset)
    if not stats_path.exists():
        raise PipelineError(f"{stats_path}: not found; run the stats stage first")
    stats = json.loads(stats_path.read_text())
    policy = json.loads(paths.POLICY.read_text()) if variant.augment else {}
    run_config = resolved(variant, policy)
    from pipeline.models import registry

    if variant.model in registry.names() and registry.get(variant.model).needs_backbone:  # --- transfer learning
        run_config["transfer"] = dataclasses.asdict(params.transfer)
    tags = {**tracking.git_tags(), "dvc.stage": f"train@{variant.name}", "data.hash": tracking.data_hash(Path("dvc.lock"), variant.dataset), "dataset": variant.dataset, "data.profile": params.data.profile}
    run_id = tracking.start(variant.name, variant.dataset, tags, run_config)
    try:
        model, history, seconds, seen = fit(variant, meta, stats, prepared, policy, run_id, params.transfer)
    except BaseException:
        tracking.finish(run_id, "FAILED")
        raise
    out = paths.model(variant.name)
    weights = class_weight(variant.train, stats)
    by_label = {stats["classes"][i]: w for i, w in weights.items()} if weights else {}
    with files.atomic_dir(out) as tmp:
        model.save(tmp / "model.keras")
        files.write_json(tmp / "config.json", {**run_config, "task": meta["task"], "classes": meta.get("classes"), "image_size": meta["image_size"], "resize": meta.get("resize", "squash"), "parameters": model.count_params()})
        files.write_json(tmp / "train_summary.json", {"train_seconds": seconds, "images_seen": seen, "images_per_s": seen / seconds, "epochs": len(history["loss"])})
        files.write_json(tmp / "class_weight.json", by_label)
        tracking.save_run_id(tmp, run_id)
    tracking.tag_model(run_id, out / "model.keras")
    history_csv = paths.history(variant.name)
    history_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(history).rename_axis("epoch").reset_index().to_csv(history_csv, index=False)
    if by_label:
        tracking.log_params(run_id, {f"class_weight.{label}": w for label, w in by_label.items()})
    artifacts = ((stats_path, "stats"), (out / "class_weight.json", "stats"), (out / "config.json", "config"), (history_csv, "history"))
    if variant.augment:
        artifacts += ((paths.POLICY, "augmentation"), (paths.AUGMENTATION / "pets.png", "augmentation"))
    for path, folder in artifacts:
        tracking.log_artifact(run_id, path, folder)
    tracking.log_metrics(run_id, {"train_seconds": seconds, "images_per_s": seen / seconds, "parameters": model.count_params()})
    # the MLflow model in the run's model/ folder: model.keras with a signature and an input example
    tracking.log_model(run_id, model, *mlflow_example(model, registry.get(variant.model).inputs, prepared))
    tracking.finish(run_id)
    log.info("%s: %d epochs, %.1f s, %.0f images/s, final %s", variant.name, len(history["loss"]), seconds, seen / seconds, {k: round(v[-1], 4) for k, v in history.items()})
