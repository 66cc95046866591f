"""Planning probe for issue 16: SimCLR training images/s (two views per image) of candidate encoders on this CPU.

Usage: ``PYTHONPATH=. python experiments/ssl_budget/probe.py SIZE BATCH WIDTH conv|resnet`` (see README.md).
Random pixels: throughput does not depend on the content.
"""

from __future__ import annotations

import sys
import time

import keras
import numpy as np
import tensorflow as tf

PHOTOS, BUDGET_S, STEPS, TEMPERATURE = 6000, 1800, 12, 0.2


def encoder(kind: str, size: int, width: float) -> keras.Model:
    """The pretrain stage's conv backbone, or the ``resnet`` variant's network up to its pooled features."""
    if kind == "conv":
        from pipeline.models import transfer

        return transfer.conv_backbone(size, (127.0,) * 3, (4000.0,) * 3, width=width)
    from pipeline.models import registry
    from pipeline.models.registry import ModelSpec

    spec = ModelSpec(
        image_size=size,
        input_size=size,
        image_mean=(127.0,) * 3,
        image_variance=(4000.0,) * 3,
        dropout=0.0,
        batchnorm=True,
        width=width,
        extra={},
        tta=False,
    )
    inner = registry.build("resnet", spec).layers[-1]
    pooled = [layer for layer in inner.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)][-1]
    return keras.Model(inner.inputs, pooled.output)


def main() -> None:
    size, batch, width, kind = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    keras.utils.set_random_seed(0)
    enc = encoder(kind, size, width)
    head = keras.Sequential([keras.layers.Dense(256, activation="relu"), keras.layers.Dense(64)])
    opt = keras.optimizers.Adam(1e-3)
    pixels = np.random.default_rng(0).integers(0, 256, (batch, size + 16, size + 16, 3)).astype("float32")
    images = tf.constant(pixels)

    def view(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        x = tf.image.stateless_random_crop(x, (batch, size, size, 3), seed)
        x = tf.image.stateless_random_flip_left_right(x, seed + 1)
        return tf.clip_by_value(tf.image.stateless_random_brightness(x, 40.0, seed + 2), 0, 255)

    @tf.function
    def step(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            z = tf.concat([tf.math.l2_normalize(head(enc(view(x, s), training=True)), -1) for s in (seed, seed + 7)], 0)
            logits = tf.matmul(z, z, transpose_b=True) / TEMPERATURE - 1e9 * tf.eye(2 * batch)
            labels = tf.concat([tf.range(batch, 2 * batch), tf.range(batch)], 0)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        weights = enc.trainable_variables + head.trainable_variables
        opt.apply_gradients(zip(tape.gradient(loss, weights), weights))
        return loss

    for i in range(3):  # tracing and warm-up
        step(images, tf.constant([i, 0]))
    started = time.perf_counter()
    for i in range(STEPS):
        step(images, tf.constant([i + 10, 0])).numpy()
    rate = STEPS * batch / (time.perf_counter() - started)
    print(
        f"{kind} {size}px width {width} batch {batch}: {enc.count_params()} params, dim {enc.outputs[0].shape[-1]}: "
        f"{rate:.0f} images/s (2 views each) -> {rate * BUDGET_S / PHOTOS:.0f} epochs of {PHOTOS} in 30 min"
    )


if __name__ == "__main__":
    main()
