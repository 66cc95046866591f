"""Issue 16's recipe probe: SimCLR on the unlabeled pets of the results workspace, kNN / linear probe as it trains.

Usage: ``PYTHONPATH=. python experiments/ssl_recipe/search.py ENCODER WIDTH TRAIN_PX EPOCHS [key=value ...]``
(ENCODER conv | resnet: the resnet variant's results.yaml network; keys: batch, lr, temperature, min_scale, jitter,
probe_every, wd, eval_px). The schedule is the pipeline's: warmup, then cosine decay to 0 at EPOCHS. Needs ``make results``
to have validated and prepared the pets in results/workspace. Prints one line per probe.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline.data import images as imaging
from pipeline.data import shards
from pipeline.models import transfer
from pipeline.training import ssl
from pipeline.training.inputs import epoch_batches
from pipeline.training.loop import channel_stats

WS = Path("results/workspace")
RESNET = {"min_map": 3, "blocks": [1, 1, 1, 1], "stem": "deep"}  # the resnet variant in results.yaml


def unlabeled(size: int) -> np.ndarray:
    cache = Path(f"/tmp/unlabeled-{size}.npy")
    if cache.exists():
        return np.load(cache)
    manifest = pd.read_parquet(WS / "data/validated/pets/manifest.parquet")
    index = pd.read_parquet(WS / "data/prepared/pets/index.parquet")
    ok = manifest[(manifest.status == "accepted") & ~manifest.sha256.isin(index.sha256)]
    pixels = imaging.load_many(WS / "data/raw/pets", ok.path.tolist(), size)
    np.save(cache, pixels)
    return pixels


def labeled(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    part, x = shards.load_split(WS / "data/prepared/pets", split)
    x = tf.image.resize(x.astype(np.float32), [size, size], antialias=True).numpy()
    return x, part.label_index.to_numpy()


def main() -> None:
    kind, width, px, total = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    opts = dict(batch=256, lr=2e-3, temperature=0.2, min_scale=0.2, jitter=0.5, probe_every=10, wd=1e-4, eval_px=96, warmup=5)
    opts.update({k: float(v) for k, v in (a.split("=") for a in sys.argv[5:])})
    keras.utils.set_random_seed(0)
    x = unlabeled(px + px // 4)  # crops come from slightly larger photos
    mean, var = channel_stats(x[:2000])
    eval_px = int(opts["eval_px"])
    knobs = dict(width=width, plan_size=eval_px, **({"extra": RESNET} if kind == "resnet" else {}))

    def build(size: int) -> keras.Model:
        return transfer.ENCODERS[kind](size, mean, var, **knobs)

    enc = build(px)
    model = ssl.simclr_model(enc, 128)
    batch = int(opts["batch"])
    steps = len(x) // batch
    warm = int(opts["warmup"])
    lr = keras.optimizers.schedules.CosineDecay(
        0.0, max(total - warm, 1) * steps, warmup_target=opts["lr"], warmup_steps=warm * steps
    )
    model.compile(keras.optimizers.AdamW(lr, weight_decay=opts["wd"]), ssl.nt_xent(opts["temperature"]))
    pairs = ssl.view_pairs(px, opts["min_scale"], opts["jitter"])

    def data(epochs: range):  # noqa: ANN202
        ds = epoch_batches({"image": x}, np.zeros(len(x), np.float32), batch, 0, epochs)
        return ds.map(pairs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(4)

    train, val = labeled("train", eval_px), labeled("val", eval_px)
    print(f"{kind} w{width} {px}px {opts} unlabeled {len(x)} enc params {enc.count_params()}", flush=True)
    began, epoch = time.perf_counter(), 0
    every = int(opts["probe_every"])
    if opts.get("probe_init"):
        print(f"epoch 0 {ssl.probe(build(eval_px), train, val, 20)}", flush=True)
    while epoch < total:
        h = model.fit(
            data(range(epoch, epoch + every)), steps_per_epoch=steps, epochs=epoch + every, initial_epoch=epoch, verbose=0
        ).history
        epoch += every
        eval_enc = build(eval_px)
        eval_enc.set_weights(enc.get_weights())
        p = ssl.probe(eval_enc, train, val, 20)
        print(f"epoch {epoch} loss {h['loss'][-1]:.3f} {time.perf_counter() - began:.0f}s {p}", flush=True)


if __name__ == "__main__":
    main()
