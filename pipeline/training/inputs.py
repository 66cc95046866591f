"""Model inputs and targets from the prepared shards, and the ``tf.data`` pipeline that feeds them.

Used by train, evaluate, predict and pretrain alike, so a saved model sees the
same inputs in training, evaluation and serving.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import HOUSE_CONTINUOUS


def model_inputs(names: tuple[str, ...], index: pd.DataFrame, images: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays each named model input takes: raw pixels, raw house attributes, zip codes as strings."""
    available = {
        "image": lambda: images.astype(np.float32),
        "tabular": lambda: index[list(HOUSE_CONTINUOUS)].to_numpy(np.float32),
        "zipcode": lambda: index.zipcode.astype(str).to_numpy().reshape(-1, 1),
    }
    return {n: available[n]() for n in names}


def targets(meta: dict[str, Any], index: pd.DataFrame) -> np.ndarray:
    """Labels (0/1) for classification, prices for regression, shape ``[n, 1]`` float32."""
    column = "label_index" if meta["task"] == "binary_classification" else "price"
    return index[column].to_numpy(np.float32).reshape(-1, 1)


def make_dataset(
    x: dict[str, np.ndarray],
    y: np.ndarray,
    batch_size: int,
    seed: int | None,
    augment: Any = None,
    as_dict: bool = True,
    mix: tuple[float, float] = (0.0, 0.0),
):  # noqa: ANN201
    """A ``tf.data`` pipeline: shuffle (when ``seed`` is given), batch, augment images in parallel, prefetch.

    ``mix`` = (mixup, cutmix) alphas: :func:`pipeline.training.augment_ops.mix_batch`
    after ``augment``, on the images and labels. Also the evaluation and
    serving input: Keras cannot take NumPy string arrays (the zip codes) in
    ``predict``, tf.data can.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if seed is not None:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None or any(mix):
        from pipeline.training.augment_ops import mix_batch

        def apply(s, xy):  # noqa: ANN001, ANN202
            images, labels = xy[0]["image"], xy[1]
            if augment is not None:
                images = augment(images, seed=s)
            if any(mix):
                images, labels = mix_batch(images, labels, s + 1, *mix)  # its own draws, not the augmentation's
            return {**xy[0], "image": images}, labels

        # One explicit stateless seed per batch, new each epoch: the map stays
        # parallel and the run stays reproducible under op determinism.
        seeds = tf.data.Dataset.random(seed or 0, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(seeds, ds).map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    if not as_dict:  # keras.Sequential takes its one input as a tensor, not a dict
        (only,) = x
        ds = ds.map(lambda xb, yb: (xb[only], yb))
    return ds.prefetch(tf.data.AUTOTUNE)
