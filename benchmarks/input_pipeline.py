"""Training input pipeline vs the seed's ``ImageDataGenerator``, on the same 2,000 real photos at 150 px.

Takes the first 1,000 Cat and 1,000 Dog photos that Pillow decodes from
``../shared/datasets/kagglecatsanddogs-180px.zip`` into a temporary folder and
measures, side by side in this run (epochs alternating, so that other load
on the machine hits both alike), after a warm-up epoch:

* the seed: ``ImageDataGenerator(rescale=1/255, rotation 40, shifts 0.2,
  shear 0.2, zoom 0.2, horizontal flip).flow_from_directory(target_size=(150,
  150), batch_size=32, class_mode="binary")``;
* the project: photos decoded and resized once into uint8 arrays as the
  prepare stage does (timed apart: a one-time cost, cached by DVC), then
  ``pipeline.stages.train.make_dataset`` with ``pipeline.training.augment_ops.build`` of the
  seed's policy, under op determinism as the train stage runs it.

Both without augmentation too (context). Writes ``reports/benchmarks/input_pipeline.json``.
Usage: ``python -m benchmarks.input_pipeline [--epochs N]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import extract_pets, quiet_env, write_figures

SIZE, BATCH, PER_CLASS = 150, 32, 1000
SEED_AUGMENT = dict(
    rotation_range=40, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2, zoom_range=0.2, horizontal_flip=True
)


def seed_batches(folder: Path, augment: bool) -> Iterator:
    """The seed's endless generator of (images / 255, labels) batches."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    gen = ImageDataGenerator(rescale=1 / 255, **(SEED_AUGMENT if augment else {}))
    return gen.flow_from_directory(str(folder), target_size=(SIZE, SIZE), batch_size=BATCH, class_mode="binary", seed=0)


def decode(photos: dict[str, list[Path]]) -> tuple[np.ndarray, np.ndarray, float]:
    """(uint8 images, 0/1 labels, seconds): the prepare stage's decode + squash-resize, in parallel."""
    from pipeline.stages.prepare import _decode_all, _load_pet

    jobs = [(p, SIZE, "squash") for label in ("Cat", "Dog") for p in photos[label]]
    start = time.perf_counter()
    images = np.stack(_decode_all(_load_pet, jobs, os.cpu_count() or 1))
    seconds = time.perf_counter() - start
    labels = np.array([0.0] * len(photos["Cat"]) + [1.0] * len(photos["Dog"]), np.float32).reshape(-1, 1)
    return images, labels, seconds


def project_batches(images: np.ndarray, labels: np.ndarray, augment: bool) -> Iterator:
    """The train stage's input: ``make_dataset`` over the arrays (float32 as ``model_inputs`` gives)."""
    from pipeline.training import augment_ops
    from pipeline.training.inputs import make_dataset

    policy = augment_ops.Policy(flip=True, rotation=40.0, translation=0.2, shear=0.2, zoom=0.2, fill_mode="nearest")
    fn = augment_ops.build(policy, None, None, 7) if augment else None
    return iter(make_dataset({"image": images.astype(np.float32)}, labels, BATCH, 42, fn))


def timed_epoch(batches: Iterator, n_batches: int) -> tuple[float, int]:
    """(seconds, images) to draw ``n_batches`` batches (one epoch's worth)."""
    images = 0
    start = time.perf_counter()
    for _ in range(n_batches):
        images += len(next(batches)[1])
    return time.perf_counter() - start, images


def compare(makers: dict[str, Callable[[], Iterator]], n_images: int, epochs: int) -> dict[str, float]:
    """images/s of each pipeline: a warm-up epoch each (tracing, XLA compilation), then ``epochs`` rounds of one epoch each.

    Every epoch draws from a fresh iterator, dropped right after: a live
    tf.data iterator keeps filling its buffers in the background, which would
    steal time from the other pipeline's epoch and start its own ahead.
    """
    n_batches = -(-n_images // BATCH)
    seconds, images = dict.fromkeys(makers, 0.0), dict.fromkeys(makers, 0)
    for round_ in range(epochs + 1):
        for name, make in makers.items():
            it = make()
            s, n = timed_epoch(it, n_batches)
            del it
            gc.collect()
            if round_:  # round 0 is the warm-up
                seconds[name] += s
                images[name] += n
    return {name: images[name] / seconds[name] for name in makers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline (default 3)")
    args = parser.parse_args()
    quiet_env()
    import keras
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        folder = Path(tmp)
        photos = extract_pets(folder, PER_CLASS)
        images, labels, decode_s = decode(photos)
        keras.utils.set_random_seed(42)
        tf.config.experimental.enable_op_determinism()  # as the train stage (ImageDataGenerator is NumPy: unaffected)
        rates = compare(
            {
                "seed": lambda: seed_batches(folder, True),
                "project": lambda: project_batches(images, labels, True),
                "seed_no_augment": lambda: seed_batches(folder, False),
                "project_no_augment": lambda: project_batches(images, labels, False),
            },
            len(images),
            args.epochs,
        )
    write_figures(
        "input_pipeline",
        {
            "input_pipeline_speedup_vs_imagedatagenerator": round(rates["project"] / rates["seed"], 2),
            "project_images_per_s": round(rates["project"], 1),
            "imagedatagenerator_images_per_s": round(rates["seed"], 1),
            "project_no_augment_images_per_s": round(rates["project_no_augment"], 1),
            "imagedatagenerator_no_augment_images_per_s": round(rates["seed_no_augment"], 1),
            "photos": len(images),
            "image_size": SIZE,
            "batch_size": BATCH,
            "timed_epochs": args.epochs,
            "prepare_decode_s": round(decode_s, 2),
            "prepare_decode_images_per_s": round(len(images) / decode_s, 1),
        },
    )


if __name__ == "__main__":
    main()
