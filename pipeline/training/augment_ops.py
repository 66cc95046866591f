"""Training-time image augmentation as pure TensorFlow ops, driven by a :class:`Policy`.

The seed augmented with Keras' ``ImageDataGenerator`` (rotation 40, shifts
0.2, shear 0.2, zoom 0.2, horizontal flip); AlexNet added "fancy PCA" colour
noise along the train split's RGB eigenvectors. :func:`build` turns a policy
into one function that works on a single image ``(H, W, 3)`` or a batch
``(B, H, W, 3)`` of float32 0-255 pixels, eagerly or inside
``tf.data.Dataset.map`` (graph mode), so augmentation runs in the input
pipeline's worker threads instead of Python.

Order of the ops: flip, crop, one projective transform (rotation, shear, zoom,
translation), brightness, contrast, saturation, PCA colour, clip to [0, 255].
Speed (``benchmarks/input_pipeline.py``): the transform is one XLA-compiled
bilinear warp per batch (the sampling of ImageProjectiveTransformV3, ~6x
faster on CPU); a flip followed by the transform is folded into its matrix;
the clip runs only after a colour op (resampling 0-255 pixels stays in range).

Randomness and determinism
--------------------------
Every random draw is a *stateless* op (``tf.random.stateless_*``) whose seed
is a ``[2]`` int tensor. Where that seed comes from:

* By default, each call of the returned function takes a fresh seed from its
  own ``tf.random.Generator.from_seed(seed)`` (a counter-based Philox stream).
  Called eagerly, the n-th call of a function built with a given ``seed``
  gets the same seed in any process, so eager results are reproducible;
  two functions built with the same seed produce the same sequence.
* Inside ``Dataset.map(..., num_parallel_calls=AUTOTUNE)`` the calls run in
  parallel threads and take seeds from the shared generator in scheduling
  order: every call still gets a distinct seed (the draw is atomic), but
  *which element* gets which seed can change from run to run. Epochs differ
  from each other (as they should); runs are not bit-identical.
  Under ``tf.config.experimental.enable_op_determinism()`` tf.data sees the
  generator's stateful op and runs that map *sequentially*: reproducible,
  but one thread.
* For a pipeline that is both parallel and bit-reproducible, pass an explicit
  per-element seed from a seeded dataset, new each epoch::

      seeds = tf.data.Dataset.random(seed, rerandomize_each_iteration=True).batch(2)
      ds = tf.data.Dataset.zip(seeds, ds).map(
          lambda s, xy: (fn(xy[0], seed=s), xy[1]), num_parallel_calls=tf.data.AUTOTUNE)

  The result then depends only on the seed, the epoch and the images, never
  on thread order (the map function holds no state).

TensorFlow is imported inside the functions: this module is imported by the
stages that train, but importing it must not cost a TensorFlow start-up.
:class:`Policy` (from :mod:`pipeline.config`, where params are parsed) is the
schema of ``augment.policies.<name>``: the fill modes and ranges live there only.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import Policy  # the schema of a policy in params; used here as the ops' settings

if TYPE_CHECKING:  # keep TensorFlow out of the import of this module
    import tensorflow as tf


Augment = Callable[..., "tf.Tensor"]


# Seed slots, one per random draw, so that switching one op on or off does not
# change the draws of the others.
_FLIP, _CROP_Y, _CROP_X, _ANGLE, _SHEAR, _ZOOM_X, _ZOOM_Y, _SHIFT_X, _SHIFT_Y, _BRIGHT, _CONTRAST, _SATUR, _PCA = range(13)
_SLOTS = 13


def build(
    policy: Policy,
    eigenvalues: Sequence[float] | np.ndarray | None,
    eigenvectors: Sequence[Sequence[float]] | np.ndarray | None,
    seed: int,
) -> Augment:
    """A function ``augment(images, seed=None) -> images`` applying ``policy``.

    ``images``: float32 0-255 pixels, ``(H, W, 3)`` or ``(B, H, W, 3)`` (rank
    known statically); the result has the same shape, dtype float32, values
    in [0, 255]. ``eigenvalues`` (3,) / ``eigenvectors`` (3, 3, columns) are
    the stats stage's ``pca_eigenvalues`` / ``pca_eigenvectors`` (0-1 pixel
    covariance); they may be None when ``policy.pca_color`` is 0. ``seed``
    seeds the generator of per-call seeds; the optional ``seed`` argument of
    the returned function (a ``[2]`` int tensor) overrides it for one call
    (see the module docstring).
    """
    import tensorflow as tf

    if policy.identity:

        def identity(images: Any, seed: Any = None) -> tf.Tensor:
            return tf.cast(images, tf.float32)  # a no-op on float32 tensors

        return identity

    pca = _pca_basis(eigenvalues, eigenvectors) if policy.pca_color else None
    generator = tf.random.Generator.from_seed(seed)

    def augment(images: Any, seed: Any = None) -> tf.Tensor:
        x = tf.cast(images, tf.float32)
        if x.shape.rank not in (3, 4):
            raise ValueError(f"augment expects (H, W, 3) or (B, H, W, 3) images, got shape {x.shape}")
        single = x.shape.rank == 3
        if single:
            x = x[tf.newaxis]
        base = generator.make_seeds(1)[:, 0] if seed is None else tf.cast(tf.reshape(seed, [2]), tf.int64)
        seeds = tf.random.experimental.stateless_split(base, num=_SLOTS)
        y = _apply(policy, pca, x, seeds)
        y.set_shape(x.shape)  # crop_and_resize / the transform lose static H, W in graph mode; Keras wants them
        return y[0] if single else y

    return augment


def _pca_basis(eigenvalues: Any, eigenvectors: Any) -> np.ndarray:
    """``eigenvectors * eigenvalues``: column j is eigenvector j scaled by eigenvalue j (3x3 float32)."""
    if eigenvalues is None or eigenvectors is None:
        raise ValueError("augment pca_color needs the train split's pca_eigenvalues and pca_eigenvectors")
    values = np.asarray(eigenvalues, np.float64)
    vectors = np.asarray(eigenvectors, np.float64)
    if values.shape != (3,) or vectors.shape != (3, 3):
        raise ValueError(f"PCA eigenvalues must be (3,) and eigenvectors (3, 3), got {values.shape} and {vectors.shape}")
    return (vectors * values[np.newaxis, :]).astype(np.float32)


def _apply(policy: Policy, pca: np.ndarray | None, x: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
    """Every enabled op on the batch ``x`` (B, H, W, 3), with per-image draws from ``seeds``."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    # With a projective transform (and no crop in between), the flip is folded into its matrix:
    # the same sampling points, one resampling pass less.
    fold_flip = policy.flip and policy.geometric and not policy.cropping
    if policy.flip and not fold_flip:
        x = _flip(x, seeds[_FLIP])
    if policy.cropping:
        x = _crop(x, policy.crop, seeds)
    if policy.geometric:
        x = _transform(x, policy, seeds, _flips(n, seeds[_FLIP]) if fold_flip else None)
    if policy.brightness:
        x = x * _factor(n, policy.brightness, seeds[_BRIGHT])[:, None, None, None]
    if policy.contrast:
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)  # per image and channel, as adjust_contrast
        x = (x - mean) * _factor(n, policy.contrast, seeds[_CONTRAST])[:, None, None, None] + mean
    if policy.saturation:
        x = _saturate(x, _factor(n, policy.saturation, seeds[_SATUR]))
    if pca is not None:
        alpha = tf.random.stateless_normal([n, 3], seeds[_PCA], stddev=policy.pca_color)
        # AlexNet: add [p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T to every pixel; 0-1 units, so * 255
        shift = tf.linalg.matmul(alpha, tf.constant(pca), transpose_b=True) * 255.0
        x = x + shift[:, None, None, :]
    if not (policy.color or pca is not None):
        return x  # flip, crop and the transform only interpolate 0-255 pixels: already in range
    return tf.clip_by_value(x, 0.0, 255.0)


def _factor(n: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    """``n`` factors uniform in ``[1 - strength, 1 + strength]``."""
    import tensorflow as tf

    return tf.random.stateless_uniform([n], seed, 1.0 - strength, 1.0 + strength)


def _flip(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirror each image left-right with probability 1/2 (exactly, no resampling)."""
    import tensorflow as tf

    return tf.where(_flips(tf.shape(x)[0], seed)[:, None, None, None], tf.image.flip_left_right(x), x)


def _flips(n: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Which of the ``n`` images are mirrored (bool, probability 1/2 each)."""
    import tensorflow as tf

    return tf.random.stateless_uniform([n], seed) < 0.5


def _crop(x: tf.Tensor, keep: float, seeds: tf.Tensor) -> tf.Tensor:
    """A random window of ``keep`` times each side per image, bilinearly resized back to (H, W)."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    top = tf.random.stateless_uniform([n], seeds[_CROP_Y], 0.0, 1.0 - keep)
    left = tf.random.stateless_uniform([n], seeds[_CROP_X], 0.0, 1.0 - keep)
    boxes = tf.stack([top, left, top + keep, left + keep], axis=1)  # normalized y1, x1, y2, x2
    return tf.image.crop_and_resize(x, boxes, tf.range(n), tf.shape(x)[1:3], method="bilinear")


def _transform(x: tf.Tensor, policy: Policy, seeds: tf.Tensor, flips: tf.Tensor | None = None) -> tf.Tensor:
    """Rotation, shear, zoom and translation as ONE projective transform per image (one resampling).

    ImageProjectiveTransformV3 maps each *output* pixel (x, y) to the *input*
    point it samples, as ImageDataGenerator's affine matrix does:
    ``input = c + R S Z (output - c) + t`` with c the image centre, so
    rotation, shear and zoom pivot on the centre rather than the corner.
    ``flips`` (bool per image) mirrors the input first, folded into the
    matrix: sampling the mirrored image at p is sampling the image at
    ``c + D (p - c)``, D = diag(-1, 1), so A becomes D A and t becomes D t.
    """
    import tensorflow as tf

    n = tf.shape(x)[0]
    height = tf.cast(tf.shape(x)[1], tf.float32)
    width = tf.cast(tf.shape(x)[2], tf.float32)
    zeros, ones = tf.zeros([n]), tf.ones([n])

    def uniform(slot: int, bound: float) -> tf.Tensor:
        return tf.random.stateless_uniform([n], seeds[slot], -bound, bound) if bound else zeros

    angle = uniform(_ANGLE, math.radians(policy.rotation))
    shear = uniform(_SHEAR, policy.shear)
    zoom_x = ones + uniform(_ZOOM_X, policy.zoom)
    zoom_y = ones + uniform(_ZOOM_Y, policy.zoom)
    shift_x = uniform(_SHIFT_X, policy.translation) * width
    shift_y = uniform(_SHIFT_Y, policy.translation) * height

    # A = R(angle) @ [[1, shear], [0, 1]] @ diag(zoom_x, zoom_y), written out per image
    cos, sin = tf.cos(angle), tf.sin(angle)
    mirror = ones if flips is None else tf.where(flips, -ones, ones)
    a00, a01 = mirror * cos * zoom_x, mirror * (cos * shear - sin) * zoom_y
    shift_x = mirror * shift_x
    a10, a11 = sin * zoom_x, (sin * shear + cos) * zoom_y
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    b0 = cx + shift_x - a00 * cx - a01 * cy
    b1 = cy + shift_y - a10 * cx - a11 * cy
    return _compiled_warp(policy.fill_mode)(x, tf.stack([a00, a01, b0, a10, a11, b1], axis=1))


@functools.cache
def _compiled_warp(fill_mode: str) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """:func:`affine_warp` for ``fill_mode``, compiled with XLA (one function per mode, built once).

    XLA fuses the coordinate maths, the four gathers and the blend into one
    pass: about 6x faster on CPU than ImageProjectiveTransformV3's kernel, which
    redoes the coordinate maths for every channel. Deterministic, and usable
    inside ``Dataset.map`` under op determinism.
    """
    import tensorflow as tf

    return tf.function(functools.partial(affine_warp, fill_mode=fill_mode), jit_compile=True)


def affine_warp(images: tf.Tensor, matrices: tf.Tensor, fill_mode: str) -> tf.Tensor:
    """``ImageProjectiveTransformV3`` (bilinear, fill value 0) for affine ``matrices``, in plain TensorFlow ops.

    ``images`` (B, H, W, C) float32; ``matrices`` (B, 6): output pixel (x, y)
    samples the input at ``(m0 x + m1 y + m2, m3 x + m4 y + m5)``. Out-of-image
    points are mapped back as the kernel's ``fill_mode`` does (nearest: clamp;
    reflect; wrap; constant: none), then the four neighbours are blended, a
    neighbour outside the image reading 0. Equal to the kernel up to float
    rounding (the tests compare them).
    """
    import tensorflow as tf

    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    rows, cols = tf.meshgrid(tf.range(tf.cast(h, tf.float32)), tf.range(tf.cast(w, tf.float32)), indexing="ij")
    m = matrices[:, :, tf.newaxis, tf.newaxis]
    x = _map_coordinate(m[:, 0] * cols + m[:, 1] * rows + m[:, 2], w, fill_mode)
    y = _map_coordinate(m[:, 3] * cols + m[:, 4] * rows + m[:, 5], h, fill_mode)
    x0, y0 = tf.floor(x), tf.floor(y)
    fx, fy = (x - x0)[..., tf.newaxis], (y - y0)[..., tf.newaxis]
    flat = tf.reshape(images, [-1, shape[3]])
    first = (tf.range(n) * h * w)[:, tf.newaxis, tf.newaxis]

    def read(yi: tf.Tensor, xi: tf.Tensor) -> tf.Tensor:
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        pixels = tf.gather(flat, first + tf.clip_by_value(yi, 0, h - 1) * w + tf.clip_by_value(xi, 0, w - 1))
        return tf.where(inside[..., tf.newaxis], pixels, 0.0)

    xi, yi = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    top = (1.0 - fx) * read(yi, xi) + fx * read(yi, xi + 1)
    bottom = (1.0 - fx) * read(yi + 1, xi) + fx * read(yi + 1, xi + 1)
    return (1.0 - fy) * top + fy * bottom


def _map_coordinate(c: tf.Tensor, size: tf.Tensor, fill_mode: str) -> tf.Tensor:
    """TensorFlow's ``MapCoordinate<fill_mode>`` (image_ops.h), vectorised: where an out-of-image point samples."""
    import tensorflow as tf

    if fill_mode == "constant":
        return c
    n = tf.cast(size, tf.float32)
    if fill_mode == "reflect":  # [abcd] -> [dcba|abcd|dcba]
        below = c + 2 * n * tf.floor(-c / (2 * n))
        below = tf.where(below < -n, below + 2 * n, -below - 1)
        above = c - 2 * n * tf.floor(c / (2 * n))
        above = tf.where(above >= n, 2 * n - above - 1, above)
    elif fill_mode == "wrap":  # [abcd] -> [abcd|abcd|abcd]
        below = c + n * (tf.floor(-c / (n - 1)) + 1)
        above = c - n * tf.floor(c / (n - 1))
    else:  # nearest: the clamp below
        below, above = c, c
    c = tf.where(c < 0, below, tf.where(c > n - 1, above, c))
    return tf.where(n <= 1, tf.zeros_like(c), tf.clip_by_value(c, 0.0, n - 1))


def _saturate(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """tf.image.adjust_saturation with a per-image factor: scale S in HSV (0-1 scale), clip S to [0, 1]."""
    import tensorflow as tf

    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x / 255.0, 0.0, 1.0))  # HSV needs 0-1 RGB
    h, s, v = tf.unstack(hsv, axis=-1)
    s = tf.clip_by_value(s * factor[:, None, None], 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)) * 255.0


def preview_grid(images: np.ndarray, augment_fn: Augment, per_image: int, path: Path, title: str) -> None:
    """Save a PNG grid: one row per image, the original then ``per_image`` augmented versions.

    ``images`` is uint8 ``(N, H, W, 3)``. Each row is one batched call of
    ``augment_fn`` on ``per_image`` copies of the image, so the copies show
    the spread of the random transforms.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend, thread-safe

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"preview_grid expects (N, H, W, 3) images with N >= 1, got shape {images.shape}")
    if per_image < 1:
        raise ValueError(f"preview_grid per_image must be >= 1, got {per_image}")
    rows, cols = len(images), per_image + 1
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows + 0.5), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, image in enumerate(images):
        copies = np.repeat(image[np.newaxis].astype(np.float32), per_image, axis=0)
        augmented = np.asarray(augment_fn(copies))
        for c, shown in enumerate([image, *augmented]):
            ax = axes[r, c]
            ax.imshow(np.clip(np.rint(shown), 0, 255).astype(np.uint8))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=8)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # never leave a half-written PNG behind
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


# --- MixUp / CutMix: batch-level, label-mixing augmentation (train params mixup / cutmix) ---------


def mix_batch(
    images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, mixup: float = 0.0, cutmix: float = 0.0
) -> tuple[tf.Tensor, tf.Tensor]:
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with the batch reversed.

    ``mixup`` / ``cutmix`` are the Beta(alpha, alpha) concentrations, 0 = off;
    with both on, each batch takes one of them (probability 1/2, as in timm).
    Image ``i`` is mixed with image ``n - 1 - i``: MixUp blends the pixels
    with a weight ``lam`` per image, CutMix pastes a box of the partner
    covering about ``1 - lam`` of the area; the labels (``[n, 1]``, 0/1 or
    soft) are mixed in the same proportion (CutMix: the box's exact area
    after clipping at the border). Stateless: the result depends only on
    ``seed`` (a ``[2]`` int tensor) and the inputs.
    """
    import tensorflow as tf

    x, y = tf.cast(images, tf.float32), tf.cast(labels, tf.float32)
    if not (mixup or cutmix):
        return x, y
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 7)
    n, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    x_partner, y_partner = tf.reverse(x, [0]), tf.reverse(y, [0])

    def beta(alpha: float, s1: tf.Tensor, s2: tf.Tensor) -> tf.Tensor:
        a, b = tf.random.stateless_gamma([n], s1, alpha), tf.random.stateless_gamma([n], s2, alpha)
        return a / tf.maximum(a + b, 1e-12)

    def blend() -> tuple[tf.Tensor, tf.Tensor]:
        lam = beta(mixup, seeds[0], seeds[1])
        return lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x_partner, lam

    def paste() -> tuple[tf.Tensor, tf.Tensor]:
        side = tf.sqrt(1.0 - beta(cutmix, seeds[2], seeds[3]))  # the box's side as a fraction of the image's
        hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
        cy = tf.random.stateless_uniform([n], seeds[4], 0.0, hf)
        cx = tf.random.stateless_uniform([n], seeds[5], 0.0, wf)
        rows, cols = tf.range(hf)[None, :], tf.range(wf)[None, :]
        in_rows = tf.abs(rows + 0.5 - cy[:, None]) < (side * hf / 2)[:, None]  # [n, h]
        in_cols = tf.abs(cols + 0.5 - cx[:, None]) < (side * wf / 2)[:, None]  # [n, w]
        box = tf.logical_and(in_rows[:, :, None], in_cols[:, None, :])[..., None]  # [n, h, w, 1]
        lam = 1.0 - tf.reduce_mean(tf.cast(box, tf.float32), axis=[1, 2, 3])
        return tf.where(box, x_partner, x), lam

    if mixup and cutmix:
        use_mixup = tf.random.stateless_uniform([], seeds[6]) < 0.5
        mixed, lam = tf.cond(use_mixup, blend, paste)
    else:
        mixed, lam = blend() if mixup else paste()
    return mixed, lam[:, None] * y + (1 - lam[:, None]) * y_partner
