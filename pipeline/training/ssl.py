"""Self-supervised pretraining: SimCLR's contrastive views, its NT-Xent loss, and the probes of a backbone's features.

SimCLR (Chen et al. 2020) trains an encoder so that two random views of one
photo map close together and away from the other photos of the batch. Views
(:func:`views`): a random resized crop (area ``min_scale``..1 of the photo,
aspect 3/4..4/3) with a horizontal flip, colour jitter (brightness,
contrast, saturation ``0.8 * jitter``, hue ``0.2 * jitter``) with
probability 0.8, greyscale with probability 0.2, as in the paper's CIFAR
recipe (no blur at these sizes). The whole batch is transformed by
vectorised ops (one ``crop_and_resize`` for every crop and flip), each draw a
stateless function of the batch's seed pair, so a resumed run sees the views
an uninterrupted one saw.

The training model (:func:`simclr_model`) takes the two views as two inputs
through one shared backbone and a projection head (Dense-BN-relu-Dense) and
outputs both projections side by side; :func:`nt_xent` is its Keras loss, so
the standard ``fit`` (with the project's checkpoints and epoch logging) trains
it. The projection head is dropped after pretraining, as in the paper: the
backbone's pooled features transfer better than the projections.

Two published variants are knobs of ``pretrain.pets_unlabeled`` (measured in
``experiments/ssl_recipe/``, neither better at equal CPU time there): ``loss:
dcl``, the decoupled contrastive loss (Yeh et al. 2022), and multi-crop
(Caron et al. 2020): ``small_crops`` more views of ``small_size`` px from
smaller crops, each contrasted with both views.

:func:`probe` measures what the backbone learnt on labeled photos it never
trained on: the accuracy of a k-nearest-neighbour classifier (cosine, on
L2-normalised features) and of a logistic-regression linear probe, fitted on
one labeled split and scored on another.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import UnlabeledPretrain
from pipeline.training.checkpoint import State
from pipeline.training.inputs import epoch_batches
from pipeline.training.loop import Phase, channel_stats, warmup_cosine

if TYPE_CHECKING:  # keep TensorFlow out of this module's import
    import tensorflow as tf

VIEWS = ("view1", "view2")


def views(
    images: tf.Tensor, seed: tf.Tensor, size: int, min_scale: float, jitter: float, grey: float = 0.2, max_scale: float = 1.0
) -> tf.Tensor:
    """One random SimCLR view of each of ``images`` (``[B, H, W, 3]`` float 0-255) at ``size`` px, float 0-255.

    The crop covers ``min_scale``..``max_scale`` of the photo's area.

    ``seed`` is a ``[2]`` int tensor: the same seed gives the same views, eagerly or inside ``tf.data``.
    """
    import tensorflow as tf

    x = tf.cast(images, tf.float32)
    n = tf.shape(x)[0]
    s = tf.random.experimental.stateless_split(tf.cast(tf.reshape(seed, [2]), tf.int64), num=11)

    def uniform(i: int, low: float = 0.0, high: float = 1.0, shape: Any = None) -> tf.Tensor:
        return tf.random.stateless_uniform([n] if shape is None else shape, s[i], low, high)

    area = uniform(0, min_scale, max_scale)
    ratio = tf.exp(uniform(1, math.log(3 / 4), math.log(4 / 3)))
    h = tf.minimum(tf.sqrt(area / ratio), 1.0)
    w = tf.minimum(tf.sqrt(area * ratio), 1.0)
    y0, x0 = uniform(2) * (1 - h), uniform(3) * (1 - w)
    flip = uniform(4) < 0.5
    left, right = tf.where(flip, x0 + w, x0), tf.where(flip, x0, x0 + w)  # a box from right to left mirrors the crop
    boxes = tf.stack([y0, left, y0 + h, right], axis=1)
    x = tf.image.crop_and_resize(x, boxes, tf.range(n), [size, size]) / 255.0

    def per_image(i: int, low: float, high: float) -> tf.Tensor:
        return uniform(i, low, high, shape=[n, 1, 1, 1])

    strength = 0.8 * jitter
    y = x * per_image(5, 1 - strength, 1 + strength)  # brightness
    mean = tf.reduce_mean(_grey(y), axis=[1, 2, 3], keepdims=True)
    y = (y - mean) * per_image(6, 1 - strength, 1 + strength) + mean  # contrast
    g = _grey(y)
    y = g + (y - g) * per_image(7, 1 - strength, 1 + strength)  # saturation
    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(y, 0.0, 1.0))
    hue = tf.math.floormod(hsv[..., :1] + per_image(8, -0.2 * jitter, 0.2 * jitter), 1.0)
    y = tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1))
    x = tf.where(per_image(9, 0, 1) < 0.8, y, x)
    x = tf.where(per_image(10, 0, 1) < grey, tf.tile(_grey(x), [1, 1, 1, 3]), x)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def _grey(x: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf

    return tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def view_names(small_crops: int = 0) -> tuple[str, ...]:
    """The training model's inputs: the two views, then ``small_crops`` small ones (``small1``...)."""
    return VIEWS + tuple(f"small{i}" for i in range(1, small_crops + 1))


def view_pairs(size: int, min_scale: float, jitter: float, small: tuple[int, int, float] = (0, 0, 0.0)) -> Callable[..., Any]:
    """``(seed, (images, y)) -> ({view1, view2, small...}, y)`` for :func:`pipeline.training.inputs.epoch_batches`' batches.

    ``small`` = (count, px, smallest area): the multi-crop views (Caron et al. 2020), cropped from
    ``smallest area``..``min_scale`` of the photo, the areas the two views' crops start from.
    """
    count, small_size, small_min = small

    def pair(seed: tf.Tensor, batch: tuple[dict[str, tf.Tensor], tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        images = batch[0]["image"]
        out = {name: views(images, seed + k, size, min_scale, jitter) for k, name in enumerate(VIEWS)}
        for k, name in enumerate(view_names(count)[len(VIEWS) :], start=len(VIEWS)):
            out[name] = views(images, seed + k, small_size, small_min, jitter, max_scale=min_scale)
        return out, batch[1]

    return pair


def nt_xent(temperature: float, decoupled: bool = False, views: int = 2) -> Callable[[Any, Any], Any]:
    """SimCLR's loss on ``y_pred`` = the views' projections side by side ``[B, views * d]``; ``y_true`` is ignored.

    For a pair of views, each of the 2B projections must pick its partner among the
    other 2B - 1 by cosine similarity / ``temperature``; the pair's per-photo loss is
    the mean of its two cross-entropies. ``decoupled`` drops the partner from the
    softmax's denominator (DCL, Yeh et al. 2022): the positive no longer damps the
    gradient of the negatives, which matters most at small batches and short
    schedules. Views beyond the first two (multi-crop) are paired with each of
    those two, never with each other; the loss is the mean over the pairs.
    """
    import tensorflow as tf

    pairs = [(0, 1)] + [(g, j) for j in range(2, views) for g in (0, 1)]

    def pair_loss(z1: tf.Tensor, z2: tf.Tensor) -> tf.Tensor:
        z = tf.concat([z1, z2], axis=0)
        n = tf.shape(z1)[0]
        logits = tf.matmul(z, z, transpose_b=True) / temperature - 1e9 * tf.eye(2 * n)
        partners = tf.concat([tf.range(n, 2 * n), tf.range(n)], axis=0)
        if decoupled:
            positive = tf.gather(logits, partners, axis=1, batch_dims=1)
            per_view = tf.reduce_logsumexp(logits - 1e9 * tf.one_hot(partners, 2 * n), axis=1) - positive
        else:
            per_view = tf.nn.sparse_softmax_cross_entropy_with_logits(partners, logits)
        return (per_view[:n] + per_view[n:]) / 2

    def loss(y_true: Any, y_pred: tf.Tensor) -> tf.Tensor:
        z = tf.math.l2_normalize(tf.reshape(y_pred, [tf.shape(y_pred)[0], views, -1]), axis=-1)
        return tf.add_n([pair_loss(z[:, a], z[:, b]) for a, b in pairs]) / len(pairs)

    return loss


def simclr_model(backbone: Any, projection_dim: int, size: int = 0, small: tuple[int, int] = (0, 0)) -> Any:
    """The views -> the shared ``backbone`` -> a projection head -> all projections ``[B, views * projection_dim]``.

    The two views are ``size`` px (0: the backbone's input size); ``small`` = (count, px) adds the
    multi-crop inputs, for which the backbone must take any size (input ``[None, None, 3]``).
    """
    import keras

    size = size or backbone.inputs[0].shape[1]
    dim = backbone.outputs[0].shape[-1]
    head = keras.Sequential(
        [
            keras.Input((dim,)),
            keras.layers.Dense(dim, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(projection_dim),
        ],
        name="projection",
    )
    count, small_size = small
    names = view_names(count)
    inputs = [keras.Input((size, size, 3) if name in VIEWS else (small_size, small_size, 3), name=name) for name in names]
    out = keras.layers.Concatenate(name="projections")([head(backbone(v)) for v in inputs])
    return keras.Model(dict(zip(names, inputs)), out, name="simclr")


def probe(backbone: Any, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], k: int) -> dict[str, float]:
    """``knn_accuracy`` (k nearest by cosine) and ``linear_probe_accuracy`` of the features, fitted on ``train``."""

    def embed(images: np.ndarray) -> np.ndarray:
        return backbone.predict(images.astype(np.float32), batch_size=128, verbose=0)

    (x_train, y_train), (x_test, y_test) = train, test
    return feature_probes((embed(x_train), y_train), (embed(x_test), y_test), k)


def feature_probes(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], k: int) -> dict[str, float]:
    """:func:`probe` on features already computed: ``(features [n, d], labels)`` for each side, L2-normalised here."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def l2(f: np.ndarray) -> np.ndarray:
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    (f_train, y_train), (f_test, y_test) = (l2(train[0]), train[1]), (l2(test[0]), test[1])
    knn = KNeighborsClassifier(n_neighbors=min(k, len(y_train)), metric="cosine").fit(f_train, y_train)
    linear = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(f_train, y_train)
    return {
        "knn_accuracy": float(np.mean(knn.predict(f_test) == y_test)),
        "linear_probe_accuracy": float(np.mean(linear.predict(f_test) == y_test)),
    }


def fit_simclr(
    cfg: UnlabeledPretrain,
    pixels: np.ndarray,
    image_size: int,
    run_id: str | None,
    checkpoints: Path | None = None,
    resume: State | None = None,
) -> tuple[Any, dict[str, list[float]], float]:
    """SimCLR on ``pixels`` (``[n, image_size, image_size, 3]`` 0-255); return (backbone, history dict, seconds).

    The encoder trains on ``cfg.train_size`` px views (0: ``image_size``) and is returned as a backbone
    for ``image_size`` px photos with the same weights and the same halvings (its convolutions do not
    depend on the size). AdamW with ``cfg.warmup`` epochs of linear ramp, then cosine decay to 0; each
    epoch's order and views are functions of (seed, epoch) (:func:`pipeline.training.inputs.epoch_plan`).
    ``checkpoints`` and ``resume`` as for :func:`pipeline.training.loop.fit`.
    """
    import keras
    import tensorflow as tf

    from pipeline.models.transfer import ENCODERS

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    mean, variance = channel_stats(pixels)
    build = ENCODERS[cfg.encoder]
    knobs = {"width": cfg.width, "plan_size": image_size, **({"extra": cfg.extra} if cfg.encoder == "resnet" else {})}
    train_size = cfg.train_size or image_size
    small = (cfg.small_crops, cfg.small_size, cfg.small_min_scale)
    encoder = build(None if cfg.small_crops else train_size, mean, variance, **knobs)  # multi-crop: any size
    model = simclr_model(encoder, cfg.projection_dim, train_size, small[:2])
    batch_size = min(cfg.batch_size, len(pixels))
    steps = -(-len(pixels) // batch_size)
    lr = warmup_cosine(cfg.learning_rate, cfg.epochs, cfg.warmup, steps)
    loss = nt_xent(cfg.temperature, cfg.loss == "dcl", 2 + cfg.small_crops)
    model.compile(keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay), loss)
    pairs = view_pairs(train_size, cfg.min_scale, cfg.jitter, small)
    unlabeled = np.zeros(len(pixels), np.float32)  # Keras wants targets; the loss ignores them

    def data(epochs: range):  # noqa: ANN202
        ds = epoch_batches({"image": pixels}, unlabeled, batch_size, cfg.seed, epochs)
        return ds.map(pairs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    state = Phase(data, steps, {}, checkpoints=checkpoints, run_id=run_id).fit(
        model, resume or State(run_id, "fit", 0, {}, 0.0), cfg.epochs
    )
    backbone = build(image_size, mean, variance, **knobs)
    backbone.set_weights(encoder.get_weights())
    return backbone, state.history, state.seconds
