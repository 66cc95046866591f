"""Stage ``pretrain``: a backbone for transfer learning, pretrained offline on the house photos.

Source task: room-type classification (bathroom, bedroom, frontal, kitchen)
of every photo the validate stage accepted in
``data/validated/houses/manifest.parquet`` (label = the room, path relative
to ``data/raw/houses``), decoded with :func:`pipeline.images.load` at
``pretrain.image_size``, by default the pets image size
(``prepare.pets.image_size``), so the backbone fits the pets models unchanged
(transfer variants working at a smaller ``image_size`` need the same here).
The photos are split by house (``pretrain.val_fraction`` of the houses, seeded; houses that share a photo stay together), so the val
accuracy is measured on houses the backbone never saw.

Writes ``models/pretrain/``: ``backbone.keras`` (image, 0-255 pixels ->
pooled features; its ``Normalization`` holds the per-channel mean/variance
of the training photos as constants; reloads with ``safe_mode=True``),
``summary.json`` (val accuracy, chance level, epochs, seconds, classes,
counts), ``history.csv`` and the MLflow run id (experiment ``pretrain``).

:func:`load_backbone` is what the train stage calls for the
``needs_backbone`` variants: this stage's backbone (``transfer.backbone:
pretrain``), or ``keras.applications.<transfer.application>`` with ImageNet
weights (``imagenet``) or a local weights file (``file``). It never falls back
to random weights: weights that cannot be had raise a :class:`PipelineError`
naming the key.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config, files, images, paths, tracking
from pipeline.config import HOUSE_ROOMS, PretrainConfig, TransferConfig
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

EXPERIMENT = "pretrain"  # the MLflow experiment (one run per pretraining)
BACKBONE_FILE = "backbone.keras"
SUMMARY_FILE = "summary.json"

# How each keras.applications backbone scales its 0-255 input (keras.applications.<family>.preprocess_input):
# tf: to [-1, 1]; torch: ImageNet mean/std; caffe: RGB->BGR minus the ImageNet mean; none: inside the model.
PREPROCESSING: dict[str, str] = {
    "MobileNet": "tf", "MobileNetV2": "tf", "MobileNetV3Small": "none", "MobileNetV3Large": "none",
    "EfficientNetB0": "none", "EfficientNetB1": "none", "EfficientNetB2": "none", "EfficientNetB3": "none",
    "EfficientNetV2B0": "none", "EfficientNetV2B1": "none", "EfficientNetV2B2": "none", "EfficientNetV2B3": "none",
    "ResNet50": "caffe", "ResNet50V2": "tf", "VGG16": "caffe", "VGG19": "caffe", "Xception": "tf",
    "DenseNet121": "torch", "ConvNeXtTiny": "none",
}


# --- the source data -----------------------------------------------------------------------------


def room_photos(manifest: pd.DataFrame) -> pd.DataFrame:
    """The accepted house photos: path, house_id, room label, sha256 (in manifest order)."""
    ok = manifest[(manifest.status == "accepted") & manifest.label.isin(HOUSE_ROOMS)]
    if ok.empty:
        raise PipelineError("data/validated/houses/manifest.parquet: no accepted house photos to pretrain on")
    missing = sorted(set(HOUSE_ROOMS) - set(ok.label))
    if missing:
        raise PipelineError(f"data/validated/houses/manifest.parquet: no accepted {', '.join(missing)} photos")
    return ok[["path", "house_id", "label", "sha256"]].reset_index(drop=True)


def house_groups(photos: pd.DataFrame) -> pd.Series:
    """A group id per photo: houses that share a photo (identical bytes) form one group."""
    parent: dict[int, int] = {}

    def find(h: int) -> int:
        while parent.setdefault(h, h) != h:
            parent[h] = parent[parent[h]]
            h = parent[h]
        return h

    for houses in photos.groupby("sha256").house_id.unique():
        first, *rest = (int(h) for h in houses)
        for h in rest:
            parent[find(h)] = find(first)
    return photos.house_id.map(lambda h: find(int(h)))


def split_by_house(photos: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the val photos: whole houses (groups), about ``val_fraction`` of them, seeded."""
    groups = house_groups(photos)
    ids = np.array(sorted(groups.unique()))
    order = np.random.default_rng(seed).permutation(ids)
    sizes = photos.groupby(groups).house_id.nunique()
    target = max(1, round(val_fraction * photos.house_id.nunique()))
    val, count = set(), 0
    for g in order:
        if count >= target:
            break
        val.add(g)
        count += sizes[g]
    if len(val) == len(ids):
        raise PipelineError(f"pretrain.val_fraction: {val_fraction} leaves no house to train on")
    return groups.isin(val).to_numpy()


def decode(root: Path, rels: list[str], size: int) -> np.ndarray:
    """``images.load`` of every photo, ``[n, size, size, 3]`` uint8, on all cores (Pillow decodes without the GIL)."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(lambda rel: images.load(root / rel, size), rels)))


def channel_stats(pixels: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and variance of 0-255 pixels ``[n, h, w, 3]``."""
    flat = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64)
    return flat.mean(axis=0).tolist(), flat.var(axis=0).tolist()


# --- pretraining ---------------------------------------------------------------------------------


def fit_backbone(cfg: PretrainConfig, data: dict[str, tuple[np.ndarray, np.ndarray]], image_size: int, run_id: str | None):  # noqa: ANN201
    """Train backbone + 4-way softmax on ``data["train"]``; return (backbone, history dict, seconds).

    Adam with a cosine learning-rate decay to 0 over the run, so the last
    epoch's val accuracy (the one reported) is not a noisy snapshot. The training model adds a random horizontal flip in front of the backbone
    (not part of the saved backbone).
    """
    import keras
    import tensorflow as tf

    from pipeline.models import transfer
    from pipeline.train import make_dataset

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    (x_train, y_train), (x_val, y_val) = data["train"], data["val"]
    mean, variance = channel_stats(x_train)
    backbone = transfer.conv_backbone(image_size, mean, variance, width=cfg.width)
    image = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    x = keras.layers.RandomFlip("horizontal", seed=cfg.seed, name="flip")(image)
    x = backbone(x)
    model = keras.Model(image, keras.layers.Dense(len(HOUSE_ROOMS), activation="softmax", name="room")(x), name="pretrain")
    steps = cfg.epochs * -(-len(y_train) // cfg.batch_size)
    lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps)  # settles by the last epoch
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    train_ds = make_dataset({"image": x_train}, y_train, cfg.batch_size, cfg.seed, as_dict=False)
    val_ds = make_dataset({"image": x_val}, y_val, 64, None, as_dict=False)
    callbacks: list = [keras.callbacks.TerminateOnNaN()]
    if run_id:
        callbacks.append(tracking.epoch_logger(run_id))
    start = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, shuffle=False, verbose=2)
    return backbone, history.history, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline pretrain``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline pretrain", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    params = config.load()
    cfg = params.pretrain
    size = cfg.image_size or params.prepare.pets.image_size
    manifest_path = paths.validated("houses") / "manifest.parquet"
    if not manifest_path.exists():
        raise PipelineError(f"{manifest_path}: not found; run the validate stage for houses first")
    photos = room_photos(pd.read_parquet(manifest_path))
    is_val = split_by_house(photos, cfg.val_fraction, cfg.seed)
    start = time.perf_counter()
    pixels = decode(paths.raw("houses"), photos.path.tolist(), size)
    decode_seconds = time.perf_counter() - start
    labels = photos.label.map(HOUSE_ROOMS.index).to_numpy(np.int64)
    data = {"train": (pixels[~is_val], labels[~is_val]), "val": (pixels[is_val], labels[is_val])}
    log.info("pretrain: %d photos of %d houses (%d val photos of unseen houses) at %d px, decoded in %.1f s",
             len(photos), photos.house_id.nunique(), int(is_val.sum()), size, decode_seconds)
    run_params = {"task": "room type (" + ", ".join(HOUSE_ROOMS) + ")", "image_size": size, **vars(cfg)}
    tags = {**tracking.git_tags(), "dvc.stage": "pretrain", "dataset": "houses", "data.profile": params.data.profile,
            "data.manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest()}
    run_id = tracking.start("backbone", EXPERIMENT, tags, run_params)
    try:
        backbone, history, seconds = fit_backbone(cfg, data, size, run_id)
    except BaseException:
        tracking.finish(run_id, "FAILED")
        raise
    val_counts = np.bincount(data["val"][1], minlength=len(HOUSE_ROOMS))
    summary = {
        "task": "room_type",
        "classes": list(HOUSE_ROOMS),
        "val_accuracy": float(history["val_accuracy"][-1]),
        "train_accuracy": float(history["accuracy"][-1]),
        "chance_accuracy": float(val_counts.max() / val_counts.sum()),  # always guessing the commonest val room
        "epochs": len(history["loss"]),
        "seconds": seconds,
        "decode_seconds": decode_seconds,
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
        backbone.save(tmp / BACKBONE_FILE)
        files.write_json(tmp / SUMMARY_FILE, summary)
        pd.DataFrame(history).rename_axis("epoch").reset_index().to_csv(tmp / "history.csv", index=False)
        tracking.save_run_id(tmp, run_id)
    for name, folder in ((SUMMARY_FILE, "summary"), ("history.csv", "history"), (BACKBONE_FILE, "model")):
        tracking.log_artifact(run_id, out / name, folder)
    tracking.log_metrics(run_id, {k: summary[k] for k in ("val_accuracy", "train_accuracy", "chance_accuracy", "seconds", "parameters")})
    tracking.finish(run_id)
    log.info("pretrain: val accuracy %.3f (chance %.3f) after %d epochs, %.1f s -> %s",
             summary["val_accuracy"], summary["chance_accuracy"], summary["epochs"], seconds, out / BACKBONE_FILE)


# --- loading a backbone (the train stage) --------------------------------------------------------


def load_backbone(cfg: TransferConfig, image_size: int, folder: Path = paths.PRETRAIN) -> Any:
    """The backbone ``transfer.backbone`` names, as a ``keras.Model`` image (0-255) -> features, for ``image_size`` px."""
    import keras

    if cfg.backbone == "pretrain":
        path = folder / BACKBONE_FILE
        if not path.exists():
            raise PipelineError(f"{path}: not found; run the pretrain stage first (transfer.backbone: pretrain)")
        backbone = keras.models.load_model(path, safe_mode=True)
        got = tuple(backbone.inputs[0].shape[1:3])
        if got != (image_size, image_size):
            raise PipelineError(f"transfer.backbone: {path} was pretrained on {got[0]} px images, the model works at {image_size} px; set pretrain.image_size to the variant's image_size and rerun the pretrain stage")
        return backbone
    weights = cfg.weights
    if weights is not None and not Path(weights).is_file():
        raise PipelineError(f"transfer.weights: {weights} not found (transfer.backbone: {cfg.backbone}); give an existing local file")
    if cfg.backbone == "file" and Path(str(weights)).suffix == ".keras":
        backbone = keras.models.load_model(weights, safe_mode=True)
        if len(backbone.inputs) != 1 or tuple(backbone.inputs[0].shape[1:]) != (image_size, image_size, 3):
            raise PipelineError(f"transfer.weights: {weights} is not a backbone for {image_size} px RGB images (inputs {[tuple(t.shape) for t in backbone.inputs]})")
        return backbone
    key = "transfer.weights" if weights is not None else "transfer.backbone"
    try:
        return application_backbone(cfg.application, image_size, weights or "imagenet")
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed download or a weights file of another architecture
        source = f"the weights file {weights}" if weights else "the ImageNet weights (download or ~/.keras/models cache)"
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PipelineError(
            f"{key}: keras.applications.{cfg.application} could not load {source}: {type(exc).__name__}: {reason}. "
            "Offline, set transfer.weights to a local weights file or use transfer.backbone: pretrain"
        ) from None


def application_backbone(name: str, image_size: int, weights: str) -> Any:
    """``keras.applications.<name>(include_top=False, pooling="avg")`` behind its input scaling, named ``"backbone"``."""
    import keras

    from pipeline.models.transfer import BACKBONE

    if name not in PREPROCESSING:
        raise PipelineError(f"transfer.application: {name!r} is not one of {', '.join(PREPROCESSING)}")
    app = getattr(keras.applications, name)(include_top=False, weights=weights, input_shape=(image_size, image_size, 3), pooling="avg")
    image = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    mode, x = PREPROCESSING[name], image
    if mode == "tf":
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    elif mode == "torch":
        mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
        x = keras.layers.Normalization(mean=mean.tolist(), variance=(std**2).tolist(), name="preprocess")(x)
    elif mode == "caffe":  # RGB -> BGR and minus the ImageNet mean, as a fixed 1x1 convolution
        layer = keras.layers.Conv2D(3, 1, trainable=False, name="preprocess")
        x = layer(x)
        layer.set_weights([np.eye(3)[::-1].reshape(1, 1, 3, 3), -np.array([103.939, 116.779, 123.68])])
    return keras.Model(image, app(x), name=BACKBONE)
