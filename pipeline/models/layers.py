"""Building blocks shared by the model families (built-in Keras layers only).

Everything here returns plain Keras layers or tensors, so every model reloads
with ``keras.models.load_model(path, safe_mode=True)``: no ``Lambda`` layers.
"""

from __future__ import annotations

import math

import keras

from pipeline.models.registry import ModelSpec

IMAGE = "image"  # the input name of every image model
CHANNELS = 3


# Keras' default momentum 0.99 needs thousands of steps before the moving
# statistics used at inference match the data; 0.9 settles within a few
# hundred, so short runs (the demo profile, a few epochs) evaluate sensibly.
BN_MOMENTUM = 0.9


def batch_norm(name: str | None = None) -> keras.layers.BatchNormalization:
    """The BatchNormalization every model uses (see :data:`BN_MOMENTUM`)."""
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


def units(n: int, width: float) -> int:
    """``n`` channels (or hidden units) scaled by ``width``: rounded, at least 1."""
    return max(1, round(n * width))


def image_normalization(spec: ModelSpec, name: str = "normalize") -> keras.layers.Normalization:
    """Per-channel standardization of raw 0-255 pixels with the fitted statistics (never ``adapt``)."""
    return keras.layers.Normalization(mean=list(spec.image_mean), variance=list(spec.image_variance), name=name)


def image_input(spec: ModelSpec) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The ``"image"`` input (raw pixels, float32) and its normalized tensor."""
    image = keras.Input(shape=(spec.image_size, spec.image_size, CHANNELS), dtype="float32", name=IMAGE)
    return image, image_normalization(spec)(image)


def halvings(image_size: int, wanted: int, min_size: int) -> int:
    """How many of ``wanted`` stride-2 reductions fit before the map gets smaller than ``min_size``."""
    fit = int(math.floor(math.log2(max(image_size, 1) / min_size))) if image_size >= min_size else 0
    return max(0, min(wanted, fit))


def stride_plan(image_size: int, slots: int, min_size: int) -> list[int]:
    """Strides (1 or 2) for ``slots`` downsampling places, from input to output.

    The full-size architecture halves the map at every slot; a small input keeps
    the early slots at stride 1 (resolution is scarce there) so the last map is
    at least ``min_size`` pixels wide.
    """
    keep = halvings(image_size, slots, min_size)
    return [1] * (slots - keep) + [2] * keep


def conv(
    x: keras.KerasTensor,
    filters: int,
    kernel: int,
    *,
    strides: int = 1,
    batchnorm: bool = False,
    activation: str = "relu",
    name: str | None = None,
) -> keras.KerasTensor:
    """Conv2D (padding ``same``) -> optional BatchNormalization -> activation."""
    x = keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=not batchnorm, name=name and f"{name}_conv"
    )(x)
    if batchnorm:
        x = batch_norm(name and f"{name}_bn")(x)
    if activation:
        x = keras.layers.Activation(activation, name=name and f"{name}_{activation}")(x)
    return x


def max_pool(x: keras.KerasTensor, strides: int, pool: int = 3, name: str | None = None) -> keras.KerasTensor:
    """Overlapping max-pooling (``same``) that downsamples; no layer at all when ``strides`` is 1."""
    if strides == 1:
        return x
    return keras.layers.MaxPooling2D(pool, strides=strides, padding="same", name=name)(x)


def dropout(x: keras.KerasTensor, rate: float, name: str | None = None) -> keras.KerasTensor:
    """Dropout when ``rate`` > 0, else ``x`` unchanged (no layer)."""
    return keras.layers.Dropout(rate, name=name)(x) if rate > 0 else x


def dense_head(x: keras.KerasTensor, hidden: list[int], spec: ModelSpec, activation: str = "relu") -> keras.KerasTensor:
    """Flattened features -> hidden Dense layers, each followed by ``spec.dropout`` (AlexNet/VGG style)."""
    for i, n in enumerate(hidden, start=1):
        x = keras.layers.Dense(units(n, spec.width), activation=activation, name=f"fc{i}")(x)
        x = dropout(x, spec.dropout, name=f"fc{i}_dropout")
    return x


def binary_output(x: keras.KerasTensor, name: str = "prediction") -> keras.KerasTensor:
    """One sigmoid unit: the probability of the positive class, shape (batch, 1)."""
    return keras.layers.Dense(1, activation="sigmoid", name=name)(x)


def price_output(x: keras.KerasTensor, spec: ModelSpec) -> keras.KerasTensor:
    """One linear unit scaled by ``spec.target_scale``, so the model outputs prices directly."""
    x = keras.layers.Dense(1, activation="linear", name="regression")(x)
    return keras.layers.Rescaling(spec.target_scale, name="price")(x)
