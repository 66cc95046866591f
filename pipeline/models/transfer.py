"""Transfer learning: a pretrained backbone (``ModelSpec.backbone``) with a small classifier head.

A *backbone* is a ``keras.Model`` named ``"backbone"`` from the ``"image"``
input (raw 0-255 pixels, float32, ``[size, size, 3]``) to a pooled feature
vector ``[batch, d]``. It carries its own preprocessing: an offline
backbone of a ``pretrain@<source>`` stage (:func:`conv_backbone`,
:func:`resnet_backbone`) starts with a
``Normalization`` holding the statistics of its pretraining photos, a
``keras.applications`` backbone with that application's input scaling (see
:mod:`pipeline.stages.pretrain`). The pets statistics are not applied on top: a
pretrained network sees its inputs scaled as in pretraining.

Layer names follow the Keras applications' convention ``block<N>...``
(``block4_conv``, ``block_16_expand``, ``block7a_project_bn``,
``conv5_block3_out``): the *top block* is every layer from the first layer
of the last numbered block to the output (for the applications this takes in
the layers after it too, e.g. MobileNetV2's ``Conv_1``).

The builders never read files: the train stage loads the backbone and puts it
into the spec (:func:`pipeline.models.backbones.load_backbone`); the builder copies
it (fresh layers, same weights), so the spec's model is never changed.

* ``transfer_features``: the backbone frozen (``trainable=False``) + Dense
  head + sigmoid; the seed's kNN on the deep features is reported by
  ``evaluate`` (variant extra ``knn``: k, 5; 0 = off).
* ``transfer_finetune``: the same model; after the head is fitted, the train
  stage calls :func:`unfreeze` (the top block or all of it, BatchNormalization
  kept frozen; or, ``all_batchnorm``, all of it with its BatchNormalization
  re-estimated on the new photos) and fits ``finetune_epochs`` more with
  ``finetune_learning_rate`` (see :func:`finetune_plan`).
* ``transfer_scratch``: the control: the same architecture with fresh
  weights, all of it trained (what the pretraining is worth).

Under Keras 3 a Functional model passes the outer ``training`` flag on to
nested models during ``fit``, and ``BatchNormalization.trainable = False``
keeps a layer in inference mode (moving statistics used and never updated,
gamma/beta fixed). The backbone is therefore called without a fixed
``training`` flag: frozen, its BatchNormalization runs in inference mode;
unfrozen by ``all_batchnorm``, it normalizes with batch statistics and
updates its moving ones. ``top`` and ``all`` keep it frozen (the Keras
fine-tuning recipe for a backbone pretrained on much more data). A backbone
pretrained on another domain or task with little data (``houses_rooms``:
about 1,500 house photos; ``pets_unlabeled``: SimCLR's augmented views) carries
statistics that do not fit the new photos.

Extra: ``dense_units`` (128) of the head's hidden layer (scaled by
``spec.width``); ``spec.dropout`` follows it. The knobs' schemas and
defaults: :mod:`pipeline.models.transfer_knobs`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from pipeline.models import registry, wrap
from pipeline.models.layers import CHANNELS, IMAGE, binary_output, conv, dense_head, max_pool, stride_plan, units
from pipeline.models.registry import ModelSpec, register
from pipeline.models.transfer_knobs import UNFREEZE, TransferKnobs

TASK = "binary_classification"
BACKBONE = "backbone"  # the name of the nested backbone model inside every transfer model
BACKBONE_FILTERS = (32, 64, 128, 256)  # conv_backbone: one block per entry; scaled by width
_BLOCK = re.compile(r"(.*?block_?\d+[a-z]?)(?:_|$)")


# --- the offline backbone ------------------------------------------------------------------------


def conv_backbone(
    image_size: int,
    image_mean: tuple[float, ...],
    image_variance: tuple[float, ...],
    width: float = 1.0,
    filters: tuple[int, ...] = BACKBONE_FILTERS,
    plan_size: int = 0,
) -> keras.Model:
    """The seed CNN's conv stack with BatchNormalization and global average pooling: image -> features.

    Blocks ``block1..blockN``: 3x3 conv -> BN -> relu, each but the last
    followed by a stride-2 max-pool; the first conv strides 2 as well (a
    full-resolution BatchNorm triples the CPU time). Small images skip the
    earliest halvings so the last map stays >= 4 px (planned for ``plan_size``
    px, 0: ``image_size``: the same network for smaller training views). The last block is the
    *top block* that ``transfer_finetune`` unfreezes. The ``Normalization``
    takes the given statistics as constants (never ``adapt``).
    """
    image = keras.Input(shape=(image_size, image_size, CHANNELS), dtype="float32", name=IMAGE)
    x = keras.layers.Normalization(mean=list(image_mean), variance=list(image_variance), name="normalize")(image)
    strides = stride_plan(plan_size or image_size, len(filters), min_size=4)  # the stem conv, then each pool
    for b, f in enumerate(filters, start=1):
        x = conv(x, units(int(f), width), 3, strides=strides[0] if b == 1 else 1, batchnorm=True, name=f"block{b}")
        if b < len(filters):
            x = max_pool(x, strides[b], name=f"block{b}_pool")
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(image, x, name=BACKBONE)


def resnet_backbone(
    image_size: int,
    image_mean: tuple[float, ...],
    image_variance: tuple[float, ...],
    width: float = 1.0,
    extra: Mapping[str, Any] | None = None,
    plan_size: int = 0,
) -> keras.Model:
    """The ``resnet`` variant's network (its knobs ``extra``) up to its global average: image -> features.

    Its top block is the last residual block; halvings as for :func:`conv_backbone`.
    """
    from pipeline.models.pets import resnet_features
    from pipeline.models.pets_knobs import ResNetKnobs

    image = keras.Input(shape=(image_size, image_size, CHANNELS), dtype="float32", name=IMAGE)
    x = keras.layers.Normalization(mean=list(image_mean), variance=list(image_variance), name="normalize")(image)
    x = resnet_features(x, ResNetKnobs.model_validate(dict(extra or {})), width, plan_size or image_size)
    return keras.Model(image, x, name=BACKBONE)


ENCODERS = {"conv": conv_backbone, "resnet": resnet_backbone}  # pretrain.pets_unlabeled.encoder


def copy_backbone(backbone: keras.Model) -> keras.Model:
    """Fresh layers with the same architecture and weights (moving statistics included), named ``"backbone"``."""
    clone = keras.models.clone_model(backbone)
    clone.set_weights(backbone.get_weights())
    (inputs,), (outputs,) = clone.inputs, clone.outputs  # one image in, one feature vector out
    return keras.Model(inputs, outputs, name=BACKBONE)


# --- the two variants ----------------------------------------------------------------------------


def _check_backbone(spec: ModelSpec, name: str) -> None:
    if spec.backbone is None:
        raise ValueError(f"{name}: needs ModelSpec.backbone (a keras.Model image -> features); the train stage loads it")
    expected = (spec.image_size, spec.image_size, CHANNELS)
    got = tuple(spec.backbone.inputs[0].shape[1:])
    if got != expected:
        raise ValueError(f"{name}: the backbone takes {got} images, the data has {expected}")


def _head(base: keras.Model, spec: ModelSpec, name: str) -> keras.Model:
    """``base`` (image -> features) + Dense(``dense_units`` x width, relu) + [Dropout] + sigmoid."""
    image = keras.Input(shape=(spec.image_size, spec.image_size, CHANNELS), dtype="float32", name=IMAGE)
    x = base(image)  # no fixed training flag: see the module docstring
    x = dense_head(x, [registry.knobs(name, spec.extra).dense_units], spec)
    return keras.Model({IMAGE: image}, binary_output(x), name=name)


def _transfer(spec: ModelSpec, name: str) -> keras.Model:
    _check_backbone(spec, name)
    base = copy_backbone(spec.backbone)
    base.trainable = False
    return _head(base, spec, name)


@register("transfer_features", TASK, needs_backbone=True)
def transfer_features(spec: ModelSpec) -> keras.Model:
    """Frozen pretrained backbone -> Dense(``dense_units`` x width, relu) -> [Dropout] -> sigmoid."""
    return _transfer(spec, "transfer_features")


@register("transfer_finetune", TASK, needs_backbone=True)
def transfer_finetune(spec: ModelSpec) -> keras.Model:
    """The same model as ``transfer_features``; the train stage fine-tunes its top block in a second phase."""
    return _transfer(spec, "transfer_finetune")


@register("transfer_scratch", TASK, needs_backbone=True)
def transfer_scratch(spec: ModelSpec) -> keras.Model:
    """The control of transfer learning: the transfer models' architecture, freshly initialised, all of it trained.

    The backbone is cloned without its weights (``keras.models.clone_model``
    initialises new ones), so it is the same architecture as the pretrained
    one whatever ``transfer.backbone`` picks; its input scaling layer keeps
    its fixed statistics, which are not learned.
    """
    _check_backbone(spec, "transfer_scratch")
    clone = keras.models.clone_model(spec.backbone)
    (inputs,), (outputs,) = clone.inputs, clone.outputs
    return _head(keras.Model(inputs, outputs, name=BACKBONE), spec, "transfer_scratch")


# --- fine-tuning ---------------------------------------------------------------------------------


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested ``"backbone"`` model of a transfer model (also inside a :mod:`pipeline.models.wrap` wrapper)."""
    found = _find(model, BACKBONE)
    if found is None:
        raise ValueError(f"model {model.name!r} has no nested {BACKBONE!r} model (not a transfer model)")
    return found


def _find(model: keras.Model, name: str) -> keras.Model | None:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if layer.name == name:
                return layer
            if (found := _find(layer, name)) is not None:
                return found
    return None


def leaves(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers of a (nested) model in order, nested models replaced by their own layers."""
    if not isinstance(layer, keras.Model):
        return [layer]
    return [leaf for sub in layer.layers for leaf in leaves(sub)]


def block_id(name: str) -> str | None:
    """The block of a layer name: ``block4`` of ``block4_conv``, ``block_16`` of ``block_16_expand``,
    ``conv5_block3`` of ``conv5_block3_out``."""
    m = _BLOCK.match(name)
    return m[1] if m else None


def top_block(backbone: keras.Model) -> list[keras.layers.Layer]:
    """The layers from the first layer of the last numbered block to the output."""
    layers = leaves(backbone)
    ids = [block_id(layer.name) for layer in layers]
    named = [i for i in ids if i is not None]
    if not named:
        raise ValueError(f"backbone {backbone.name!r} has no layers named block<N>...: cannot find its top block")
    return layers[ids.index(named[-1]) :]


def unfreeze(model: keras.Model, which: str = "top") -> list[str]:
    """Make the backbone's top block (``"top"``) or all of it (``"all"``) trainable, BatchNormalization frozen;
    or all of it with its BatchNormalization (``"all_batchnorm"``).

    Everything else of the backbone is frozen; the head is untouched. Returns
    the names of the backbone layers whose weights now train. Recompile the
    model afterwards.
    """
    if which not in UNFREEZE:
        raise ValueError(f"unfreeze: {which!r} is not one of {', '.join(UNFREEZE)}")
    base = backbone_of(model)
    chosen = {id(layer) for layer in (top_block(base) if which == "top" else leaves(base))}
    base.trainable = True  # propagates to every nested layer; then each leaf is set below
    trained = []
    for layer in leaves(base):
        layer.trainable = (
            id(layer) in chosen
            and (which == "all_batchnorm" or not isinstance(layer, keras.layers.BatchNormalization))
            and not layer.name.startswith("preprocess")  # fixed input scaling of an application backbone
        )
        if layer.trainable and layer.weights:
            trained.append(layer.name)
    return trained


def unfreeze_top(model: keras.Model) -> list[str]:
    """:func:`unfreeze` of the top block (the ``transfer_finetune`` convention)."""
    return unfreeze(model, "top")


def finetune_plan(model_name: str, extra: Mapping[str, Any], learning_rate: float) -> tuple[int, float, str] | None:
    """The second training phase from a variant's (checked) extra: ``(epochs, learning_rate, unfreeze)``, or None.

    Knobs of the transfer models: ``finetune_epochs`` (``transfer_finetune``: 2; others: 0 = no second
    phase), ``finetune_learning_rate`` (the train learning rate / 10), ``unfreeze`` (``top``, ``all``
    or ``all_batchnorm``). Other models have no second phase.
    """
    knobs = registry.knobs(model_name, extra)
    if not (isinstance(knobs, TransferKnobs) and knobs.finetune_epochs):
        return None
    lr = knobs.finetune_learning_rate if knobs.finetune_learning_rate is not None else learning_rate / 10
    return knobs.finetune_epochs, lr, knobs.unfreeze


# --- the seed's kNN on deep features -------------------------------------------------------------


def knn_k(model_name: str, extra: Mapping[str, Any]) -> int:
    """k of the kNN on the backbone's features from the variant's (checked) extra ``knn``; 0 = off."""
    knobs = registry.knobs(model_name, extra)
    return knobs.knn if isinstance(knobs, TransferKnobs) else 0


def features(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The backbone's pooled features of raw 0-255 ``images``, as the model feeds it: through the model's ``resize``
    layer when it works below the images' size (:mod:`pipeline.models.wrap`)."""
    feed = backbone_of(model)
    resize = next((layer for layer in model.layers if layer.name == wrap.RESIZE), None)
    if resize is not None:
        feed = keras.Sequential([keras.Input(images.shape[1:]), resize, feed])
    return feed.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)


def knn_accuracy(model: keras.Model, k: int, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """Accuracy on ``test`` of a k-nearest-neighbour classifier fitted on the ``train`` (images, labels) features."""
    from sklearn.neighbors import KNeighborsClassifier

    (x_train, y_train), (x_test, y_test) = train, test
    knn = KNeighborsClassifier(n_neighbors=min(k, len(y_train)))
    knn.fit(features(model, x_train), np.ravel(y_train))
    return float(np.mean(knn.predict(features(model, x_test)) == np.ravel(y_test)))
