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


def epoch_plan(n: int, batch_size: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ``epoch``'s order of the ``n`` examples and one stateless seed pair per batch.

    A function of (seed, epoch) alone, never of how many epochs this process
    has run: a training resumed at epoch k sees the order and augmentation
    draws an uninterrupted one saw (tf.data's reshuffling seed streams restart
    with the process).
    """
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n), rng.integers(0, 2**62, size=(-(-n // batch_size), 2))


def epoch_batches(x: dict[str, np.ndarray], y: np.ndarray, batch_size: int, seed: int, epochs: range):  # noqa: ANN201
    """``(seed pair, (x batch, y batch))`` for each batch of each epoch in ``epochs``, in :func:`epoch_plan`'s order."""
    import tensorflow as tf

    plans = [epoch_plan(len(y), batch_size, seed, e) for e in epochs]
    orders = np.array([order for order, _ in plans], np.int64).reshape(len(plans), len(y))
    seeds = np.array([s for _, s in plans], np.int64).reshape(len(plans), -(-len(y) // batch_size), 2)
    # captured as tensors (by reference), not as graph constants: the arrays can be large
    data = tf.nest.map_structure(tf.convert_to_tensor, (x, y))

    def one_epoch(order, batch_seeds):  # noqa: ANN001, ANN202
        return tf.data.Dataset.zip(
            tf.data.Dataset.from_tensor_slices(batch_seeds), tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        )

    ds = tf.data.Dataset.from_tensor_slices((orders, seeds)).flat_map(one_epoch)
    return ds.map(
        lambda s, idx: (s, tf.nest.map_structure(lambda t: tf.gather(t, idx), data)), num_parallel_calls=tf.data.AUTOTUNE
    )


def make_dataset(
    x: dict[str, np.ndarray],
    y: np.ndarray,
    batch_size: int,
    seed: int | None,
    augment: Any = None,
    as_dict: bool = True,
    mix: tuple[float, float] = (0.0, 0.0),
    epochs: range = range(1),
):  # noqa: ANN201
    """A ``tf.data`` pipeline: shuffle (when ``seed`` is given), batch, augment images in parallel, prefetch.

    With a ``seed`` (training) it holds every batch of the ``epochs``, each
    epoch shuffled and augmented as :func:`epoch_plan` says; pass Keras
    ``steps_per_epoch``. ``mix`` = (mixup, cutmix) alphas:
    :func:`pipeline.training.augment_ops.mix_batch` after ``augment``, on the
    images and labels. Also the evaluation and serving input (no ``seed``:
    one pass in order): Keras cannot take NumPy string arrays (the zip codes)
    in ``predict``, tf.data can.
    """
    import tensorflow as tf

    if seed is None:
        return _finish(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size), x, as_dict)
    ds = epoch_batches(x, y, batch_size, seed, epochs)
    if augment is not None or any(mix):
        from pipeline.training.augment_ops import mix_batch

        def apply(s, xy):  # noqa: ANN001, ANN202
            images, labels = xy[0]["image"], xy[1]
            if augment is not None:
                images = augment(images, seed=s)
            if any(mix):
                images, labels = mix_batch(images, labels, s + 1, *mix)  # its own draws, not the augmentation's
            return {**xy[0], "image": images}, labels

        ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda s, xy: xy)
    return _finish(ds, x, as_dict)


def _finish(ds, x: dict[str, np.ndarray], as_dict: bool):  # noqa: ANN001, ANN202
    """The batches as they are, or (keras.Sequential takes its one input as a tensor, not a dict) that input; prefetched."""
    import tensorflow as tf

    if not as_dict:
        (only,) = x
        ds = ds.map(lambda xb, yb: (xb[only], yb))
    return ds.prefetch(tf.data.AUTOTUNE)
