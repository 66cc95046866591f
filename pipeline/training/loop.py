"""The fit loop: a registered model built from params and fitted statistics, compiled and fitted.

Optimizer, learning-rate schedule, loss and metrics come from the variant's
``train`` params; class weights and normalization from the train split's
statistics; transfer learning's fine-tuning phase follows the first fit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import tracking
from pipeline.config import HOUSE_CONTINUOUS, HOUSE_ROOMS, AugmentPolicy, RoomsPretrain, TrainConfig, Variant
from pipeline.data import shards
from pipeline.errors import PipelineError
from pipeline.models.registry import ModelSpec
from pipeline.training import checkpoint
from pipeline.training.checkpoint import State
from pipeline.training.inputs import make_dataset, model_inputs, targets

log = logging.getLogger(__name__)


def model_spec(variant: Variant, meta: dict[str, Any], stats: dict[str, Any]) -> ModelSpec:
    """The builder's input: sizes and knobs from params, fitted statistics from the stats artifact."""
    image = stats["image"]
    prepared = meta["image_size"]
    size = variant.image_size or prepared
    if not 8 <= size <= prepared:
        raise PipelineError(
            f"variants.{variant.name}.image_size: {size} px; the model resizes the prepared {prepared} px images down,"
            f" to at least 8 px (0 = {prepared})"
        )
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


def learning_rate(cfg: TrainConfig, steps_per_epoch: int):  # noqa: ANN201
    """The learning rate: a number (``constant``) or a Keras schedule over optimizer steps."""
    import keras

    schedules = keras.optimizers.schedules
    if cfg.warmup:  # the cosine after the ramp (alpha 1 holds a constant rate instead); config allows only these two
        alpha = 1.0 if cfg.schedule == "constant" else 0.0
        return warmup_cosine(cfg.learning_rate, cfg.epochs, cfg.warmup, steps_per_epoch, alpha)
    if cfg.schedule == "inverse_time":  # the seed's Adam(lr, decay)
        return schedules.InverseTimeDecay(cfg.learning_rate, decay_steps=1, decay_rate=cfg.decay)
    if cfg.schedule == "step":
        return schedules.ExponentialDecay(cfg.learning_rate, steps_per_epoch, cfg.decay or 0.5, staircase=True)
    if cfg.schedule == "cosine":
        return warmup_cosine(cfg.learning_rate, cfg.epochs, 0, steps_per_epoch)
    return cfg.learning_rate


def warmup_cosine(peak: float, epochs: int, warmup: int, steps_per_epoch: int, alpha: float = 0.0):  # noqa: ANN201
    """A linear ramp from 0 to ``peak`` over ``warmup`` epochs, then cosine decay to ``alpha * peak`` at ``epochs``."""
    import keras

    total, ramp = epochs * steps_per_epoch, warmup * steps_per_epoch
    if not ramp:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=max(total, 1), alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(total - ramp, 1), alpha=alpha, warmup_target=peak, warmup_steps=ramp
    )


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
    losses = {
        "mse": keras.losses.MeanSquaredError(),
        "mae": keras.losses.MeanAbsoluteError(),
        "mape": keras.losses.MeanAbsolutePercentageError(),
    }
    return losses[name], [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.MeanAbsolutePercentageError(name="mape")]


def fit(
    variant: Variant,
    meta: dict[str, Any],
    stats: dict[str, Any],
    prepared: Path,
    policy: AugmentPolicy | None,
    run_id: str | None,
    checkpoints: Path | None = None,
    resume: State | None = None,
):  # noqa: ANN201
    """Build, compile and fit the variant; return (model, history dict, seconds, images seen).

    ``policy`` is the variant's augmentation policy (None: ``augment: none``),
    applied to the train split only.
    The variant's ``transfer`` picks the backbone of the models that need one. ``checkpoints``: the
    folder of a checkpoint after each epoch (None: none); ``resume``: the
    checkpoint to go on from (:func:`pipeline.training.checkpoint.load`).
    """
    import keras
    import tensorflow as tf

    from pipeline.models import registry

    entry = registry.get(variant.model)  # a registered name: config checked it
    if entry.task != meta["task"]:
        raise PipelineError(
            f"variants.{variant.name}: model {variant.model!r} is for {entry.task}, dataset {variant.dataset!r} is {meta['task']}"
        )
    cfg = variant.train
    mix = (cfg.mixup, cfg.cutmix)
    if any(mix) and entry.inputs != ("image",):
        raise PipelineError(
            f"variants.{variant.name}.train: mixup / cutmix mix the images and labels of image-only models;"
            f" {variant.model!r} takes {', '.join(entry.inputs)}"
        )
    from pipeline.models.transfer import finetune_plan  # --- transfer learning: an optional second phase

    plan = finetune_plan(variant.model, variant.extra, cfg.learning_rate)
    if plan and cfg.warmup >= plan[0]:  # each phase ramps up again
        raise PipelineError(
            f"variants.{variant.name}.train.warmup: {cfg.warmup} epochs of warmup leave none of the {plan[0]}"
            " fine-tuning epochs at the learning rate"
        )
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    train_idx, train_img = shards.load_split(prepared, "train")
    val_idx, val_img = shards.load_split(prepared, "val")
    augment = None
    if policy is not None and "image" in entry.inputs:
        from pipeline.training import augment_ops

        img = stats["image"]
        augment = augment_ops.build(policy, img["pca_eigenvalues"], img["pca_eigenvectors"], policy.seed)
    spec = model_spec(variant, meta, stats)
    if entry.needs_backbone:  # --- transfer learning: the pretrained backbone goes into the spec
        from pipeline.models.backbones import load_backbone

        spec = dataclasses.replace(spec, backbone=load_backbone(variant.transfer, spec.image_size))
    try:
        model = registry.build(variant.model, spec)
    except ValueError as exc:  # a builder's check of its knobs against the model (image_size, tta)
        raise PipelineError(f"variants.{variant.name}: {exc}") from None
    as_dict = not isinstance(model, keras.Sequential)
    x_train, y_train = model_inputs(entry.inputs, train_idx, train_img), targets(meta, train_idx)

    def train_ds(epochs: range):  # noqa: ANN202
        return make_dataset(x_train, y_train, cfg.batch_size, cfg.seed, augment, as_dict, mix, epochs)

    val_ds = make_dataset(
        model_inputs(entry.inputs, val_idx, val_img), targets(meta, val_idx), cfg.batch_size, None, as_dict=as_dict
    )
    steps = math.ceil(len(train_idx) / cfg.batch_size)
    loss, metrics = loss_and_metrics(entry.task, cfg)
    model.compile(optimizer=optimizer(cfg, steps), loss=loss, metrics=metrics)
    early = keras.callbacks.EarlyStopping(patience=cfg.early_stopping, restore_best_weights=True) if cfg.early_stopping else None
    run = Phase(train_ds, steps, dict(validation_data=val_ds, class_weight=class_weight(cfg, stats)), early, checkpoints, run_id)
    state = resume or State(run_id, "fit", 0, {}, 0.0)
    if state.phase == "fit":
        state = run.fit(model, state, cfg.epochs)
    if plan:  # variant extra finetune_epochs, see pipeline/models/transfer.py
        state = finetune(model, plan, cfg, entry.task, state, run)
    return model, state.history, state.seconds, len(state.history["loss"]) * len(train_idx)


@dataclasses.dataclass
class Phase:
    """How one phase of training runs: its data, callbacks and checkpoints (shared by both phases of a transfer variant)."""

    data: Callable[[range], Any]  # the train batches of these epochs (inputs.make_dataset)
    steps: int  # batches per epoch
    fit_args: dict[str, Any]  # validation_data, class_weight
    early: Any = None  # a Keras EarlyStopping, or None
    checkpoints: Path | None = None  # where each epoch's checkpoint goes (None: nowhere)
    run_id: str | None = None  # the MLflow run each epoch's metrics go to

    def fit(self, model: Any, start: State, epochs: int) -> State:
        """Fit the compiled ``model`` from ``start`` (restored if it holds weights) up to epoch ``epochs``; return where it ends.

        A phase that had ended (``done``) is only restored; one that early
        stopping had ended runs no epoch, so that early stopping still
        restores its best weights.
        """
        import keras

        best = checkpoint.restore(model, self.checkpoints, start) if start.weights and self.checkpoints else None
        if start.done:
            return start
        if start.weights:
            log.info("resuming %s at epoch %d from %s", start.phase, start.epoch + 1, self.checkpoints)
        last = start.epoch if start.stopped else epochs
        callbacks: list = [keras.callbacks.TerminateOnNaN()]
        if self.early is not None:
            callbacks.append(self.early)
        if self.checkpoints is not None:  # before the epoch logger: see checkpoint.callback
            callbacks.append(
                checkpoint.callback(self.checkpoints, dataclasses.replace(start, run_id=self.run_id), self.early, best)
            )
        if self.run_id:
            callbacks.append(tracking.epoch_logger(self.run_id))
        began = time.perf_counter()
        new = model.fit(
            self.data(range(start.epoch, last)),
            initial_epoch=start.epoch,
            epochs=last,
            steps_per_epoch=self.steps,
            callbacks=callbacks,
            shuffle=False,
            verbose=2,
            **self.fit_args,
        ).history
        history = {k: [*start.history.get(k, []), *new.get(k, [])] for k in dict.fromkeys([*start.history, *new])}
        end = start.epoch + len(new.get("loss", []))  # early stopping may end the phase before ``last``
        seconds = start.seconds + time.perf_counter() - began
        return State(self.run_id, start.phase, end, history, seconds, start=start.start, done=True)


def finetune(model: Any, plan: tuple[int, float, str], cfg: TrainConfig, task: str, first: State, run: Phase) -> State:
    """Transfer learning's second phase: unfreeze (``plan`` = epochs, learning rate, which part), recompile, fit on.

    Epoch numbers continue after the first phase (``first``: where it ended,
    or where a resumed second phase stands), so the MLflow steps and the
    history CSV run on; returns where both phases end, history merged.
    """
    from pipeline.models.transfer import unfreeze

    epochs, learning_rate, which = plan
    trained = unfreeze(model, which)
    log.info(
        "fine-tuning %s of the backbone (%s) for %d epochs at learning rate %g", which, ", ".join(trained), epochs, learning_rate
    )
    phase = cfg.model_copy(update={"epochs": epochs, "learning_rate": learning_rate})
    loss, metrics = loss_and_metrics(task, phase)
    model.compile(optimizer=optimizer(phase, run.steps), loss=loss, metrics=metrics)
    if first.phase == "fit":  # the second phase starts
        first = State(run.run_id, "finetune", first.epoch, first.history, first.seconds, start=first.epoch)
    return run.fit(model, first, first.start + epochs)


def channel_stats(pixels: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and variance of 0-255 pixels ``[n, h, w, 3]``."""
    flat = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64)
    return flat.mean(axis=0).tolist(), flat.var(axis=0).tolist()


def fit_backbone(
    cfg: RoomsPretrain,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    image_size: int,
    run_id: str | None,
    checkpoints: Path | None = None,
    resume: State | None = None,
):  # noqa: ANN201
    """Train backbone + 4-way softmax on ``data["train"]``; return (backbone, history dict, seconds).

    Adam with a cosine learning-rate decay to 0 over the run, so the last
    epoch's val accuracy (the one reported) is not a noisy snapshot. The
    training model adds a random horizontal flip in front of the backbone (not
    part of the saved backbone). ``checkpoints`` and ``resume`` as for :func:`fit`.
    """
    import keras
    import tensorflow as tf

    from pipeline.models import transfer

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    (x_train, y_train), (x_val, y_val) = data["train"], data["val"]
    mean, variance = channel_stats(x_train)
    backbone = transfer.conv_backbone(image_size, mean, variance, width=cfg.width)
    image = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    x = keras.layers.RandomFlip("horizontal", seed=cfg.seed, name="flip")(image)
    x = backbone(x)
    model = keras.Model(image, keras.layers.Dense(len(HOUSE_ROOMS), activation="softmax", name="room")(x), name="pretrain")
    per_epoch = -(-len(y_train) // cfg.batch_size)
    # settles by the last epoch
    lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=cfg.epochs * per_epoch)
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])

    def train_ds(epochs: range):  # noqa: ANN202
        return make_dataset({"image": x_train}, y_train, cfg.batch_size, cfg.seed, as_dict=False, epochs=epochs)

    val_ds = make_dataset({"image": x_val}, y_val, 64, None, as_dict=False)
    run = Phase(train_ds, per_epoch, dict(validation_data=val_ds), checkpoints=checkpoints, run_id=run_id)
    state = run.fit(model, resume or State(run_id, "fit", 0, {}, 0.0), cfg.epochs)
    return backbone, state.history, state.seconds
