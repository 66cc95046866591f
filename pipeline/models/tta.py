"""Test-time augmentation inside the model: ``tta: flip`` averages the prediction on an image and its mirror.

It lives in the saved model, so ``evaluate``, ``predict``, the MLflow model
and a served model all give the same figure. Two registered layers wrap the
built model (:func:`flip_average`): in training (``fit``) both pass their
input through, so training is unchanged; at inference :class:`FlipStack`
stacks the batch with its left-right mirror and :class:`PairMean` averages
the two halves of the output. The wrapped model sees a batch twice as large,
which BatchNormalization in inference mode does not notice.
"""

from __future__ import annotations

import keras

from pipeline.models.layers import IMAGE


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


def flip_average(model: keras.Model, image_size: int, channels: int = 3) -> keras.Model:
    """``model`` (images ``[image_size, image_size, channels]``, its only input) averaged over the image and its mirror."""
    image = keras.Input(shape=(image_size, image_size, channels), dtype="float32", name=IMAGE)
    stacked = FlipStack(name="flip_stack")(image)
    # the project's models take {"image": x}; a Sequential model takes the tensor itself
    y = model(stacked if isinstance(model, keras.Sequential) else {IMAGE: stacked})
    return keras.Model({IMAGE: image}, PairMean(name="flip_mean")(y), name=model.name)
