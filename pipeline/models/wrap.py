"""What :func:`pipeline.models.registry.build` puts around an image model: input resizing and test-time flipping.

Both live in the saved model, so ``evaluate``, ``predict``, the MLflow model
and a served model all see the same thing.

* **Resizing** (variant key ``image_size``): the model works at its own
  resolution (``spec.image_size``) on images prepared at a larger one
  (``spec.input_size``, ``prepare.<dataset>.image_size``): an antialiased
  bilinear ``Resizing`` in front. One prepared dataset then serves models of
  several resolutions.
* **Test-time flipping** (variant key ``tta: flip``): at inference
  :class:`FlipStack` stacks the batch with its left-right mirror and
  :class:`PairMean` averages the two halves of the output; in training
  (``fit``) both pass their input through, so training is unchanged. The
  wrapped model sees a batch twice as large, which BatchNormalization in
  inference mode does not notice.
"""

from __future__ import annotations

import keras
import numpy as np

from pipeline.models.layers import CHANNELS, IMAGE
from pipeline.models.registry import ModelSpec

RESIZE = "resize"  # the name of the resizing layer in front of a model working below the prepared size


@keras.saving.register_keras_serializable(package="pipeline")
class FlipStack(keras.layers.Layer):
    """Inference: ``[x; mirror(x)]`` along the batch axis (images ``[batch, h, w, c]``); training: ``x``."""

    def call(self, x, training=None):  # noqa: ANN001, ANN201
        if training:
            return x
        return keras.ops.concatenate([x, keras.ops.flip(x, axis=2)], axis=0)


@keras.saving.register_keras_serializable(package="pipeline")
class PairMean(keras.layers.Layer):
    """Inference: the mean of the first and second half of the batch (undoes :class:`FlipStack`); training: ``y``."""

    def call(self, y, training=None):  # noqa: ANN001, ANN201
        if training:
            return y
        first, second = keras.ops.split(y, 2, axis=0)
        return (first + second) / 2


def needed(spec: ModelSpec) -> bool:
    """Whether ``spec`` asks for a wrapper (a resize or test-time flipping)."""
    return spec.tta != "none" or spec.input_size not in (0, spec.image_size)


def image_model(model: keras.Model, spec: ModelSpec) -> keras.Model:
    """``model`` (built at ``spec.image_size``, one image input) taking ``spec.input_size`` images, with ``spec.tta``."""
    size = spec.input_size or spec.image_size
    image = keras.Input(shape=(size, size, CHANNELS), dtype="float32", name=IMAGE)
    x = FlipStack(name="flip_stack")(image) if spec.tta == "flip" else image
    if size != spec.image_size:
        x = _resizer(spec.image_size, name=RESIZE)(x)
    # the project's models take {"image": x}; a Sequential model takes the tensor itself
    y = model(x if isinstance(model, keras.Sequential) else {IMAGE: x})
    if spec.tta == "flip":
        y = PairMean(name="flip_mean")(y)
    return keras.Model({IMAGE: image}, y, name=model.name)


def _resizer(size: int, name: str | None = None) -> keras.layers.Resizing:
    return keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True, name=name)


def resize_images(pixels: np.ndarray, size: int, batch_size: int = 256) -> np.ndarray:
    """``pixels`` ``[n, h, w, 3]`` at ``size`` px as a model's ``resize`` layer resizes them (float32)."""
    layer = _resizer(size)
    batches = (pixels[i : i + batch_size].astype(np.float32) for i in range(0, len(pixels), batch_size))
    parts = [keras.ops.convert_to_numpy(layer(batch)) for batch in batches]
    return np.concatenate(parts) if parts else np.zeros((0, size, size, pixels.shape[-1]), np.float32)
