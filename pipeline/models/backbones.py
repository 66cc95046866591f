"""Transfer learning's backbones: the table of ``keras.applications`` backbones and loading the one params name.

:func:`load_backbone` returns the pretrain stage's backbone (``transfer.backbone:
pretrain``), or ``keras.applications.<transfer.application>`` with ImageNet
weights (``imagenet``) or a local weights file (``file``). It never falls back
to random weights: weights that cannot be had raise a :class:`PipelineError`
naming the key. Keras is imported only inside the functions, so
:mod:`pipeline.config` can take the table from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline import paths
from pipeline.errors import PipelineError

BACKBONE_FILE = "backbone.keras"


# How each keras.applications backbone scales its 0-255 input (keras.applications.<family>.preprocess_input):
# tf: to [-1, 1]; torch: ImageNet mean/std; caffe: RGB->BGR minus the ImageNet mean; none: inside the model.
PREPROCESSING: dict[str, str] = {
    "MobileNet": "tf",
    "MobileNetV2": "tf",
    "MobileNetV3Small": "none",
    "MobileNetV3Large": "none",
    "EfficientNetB0": "none",
    "EfficientNetB1": "none",
    "EfficientNetB2": "none",
    "EfficientNetB3": "none",
    "EfficientNetV2B0": "none",
    "EfficientNetV2B1": "none",
    "EfficientNetV2B2": "none",
    "EfficientNetV2B3": "none",
    "ResNet50": "caffe",
    "ResNet50V2": "tf",
    "VGG16": "caffe",
    "VGG19": "caffe",
    "Xception": "tf",
    "DenseNet121": "torch",
    "ConvNeXtTiny": "none",
}


class BackboneChoice(Protocol):
    """What ``transfer`` says (:class:`pipeline.config.TransferConfig`; not imported: config takes the table from here)."""

    backbone: str  # pretrain | imagenet | file
    source: str  # pretrain: models/pretrain/<source>
    application: str
    weights: str | None


def load_backbone(cfg: BackboneChoice, image_size: int, folder: Path = paths.PRETRAIN) -> Any:
    """The backbone ``transfer.backbone`` names, as a ``keras.Model`` image (0-255) -> features, for ``image_size`` px."""
    import keras

    if cfg.backbone == "pretrain":
        path = folder / cfg.source / BACKBONE_FILE
        if not path.exists():
            raise PipelineError(
                f"{path}: not found; run the pretrain@{cfg.source} stage first"
                f" (transfer.backbone: pretrain, source: {cfg.source})"
            )
        backbone = keras.models.load_model(path, safe_mode=True)
        got = tuple(backbone.inputs[0].shape[1:3])
        if got != (image_size, image_size):
            raise PipelineError(
                f"transfer.backbone: {path} was pretrained on {got[0]} px images, the model works at {image_size} px;"
                f" set pretrain.image_size to the variant's image_size and rerun the pretrain@{cfg.source} stage"
            )
        return backbone
    weights = cfg.weights
    if weights is not None and not Path(weights).is_file():
        raise PipelineError(
            f"transfer.weights: {weights} not found (transfer.backbone: {cfg.backbone}); give an existing local file"
        )
    if cfg.backbone == "file" and Path(str(weights)).suffix == ".keras":
        backbone = keras.models.load_model(weights, safe_mode=True)
        if len(backbone.inputs) != 1 or tuple(backbone.inputs[0].shape[1:]) != (image_size, image_size, 3):
            raise PipelineError(
                f"transfer.weights: {weights} is not a backbone for {image_size} px RGB images"
                f" (inputs {[tuple(t.shape) for t in backbone.inputs]})"
            )
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
    app = getattr(keras.applications, name)(
        include_top=False, weights=weights, input_shape=(image_size, image_size, 3), pooling="avg"
    )
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
