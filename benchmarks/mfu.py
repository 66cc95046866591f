"""Model FLOP utilisation of the seed CNN (``cnn_functional``) training at 150 px, per runtime configuration.

Configurations: op determinism on/off, XLA ``jit_compile``, batch size, data
layout (channels_first), a fused Adam update, TensorFlow thread pools,
oneDNN on/off. Thread pools and oneDNN are fixed at TensorFlow's start-up, so
each process (a *group*) has its own; inside a group the configurations take
turns, in a fresh seeded order each round, after a matmul peak measurement,
the best of each counting. Other load on the machine comes in slow spells of
seconds: short timings, several rounds and the shuffled order give every
configuration its turns outside them. Every group also runs the train stage's
configuration (``train.py now``), the baseline to compare with.

* matmul peak: best GFLOP/s of fp32 2048^2 and 4096^2 square matmuls (2 n^3 FLOPs);
* training: the train stage's compile (optimizer, loss, accuracy + AUC from
  ``pipeline.stages.train``) fitting in-memory batches after a warm-up (tracing and
  XLA compilation excluded).

FLOPs are counted from the built model: forward = 2 x MACs of every Conv2D and
Dense; a training step = forward + weight gradients (2 x MACs) + input
gradients (2 x MACs) for every layer but the first (the image needs no
gradient); pooling, ReLU, normalization, loss and optimizer are not counted.
MFU = training FLOPs x images/s / the best matmul peak of the whole run;
the headline ``mfu`` is the train stage's configuration, ``mfu_best`` the best one.
Writes ``reports/benchmarks/mfu.json``.
Usage: ``python -m benchmarks.mfu [--steps N] [--rounds N]``; ``--worker JSON`` is internal.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import REPO, quiet_env, write_figures
from pipeline.training import loop

SIZE = 150
FLOP_COUNTING = (
    "per image: forward = 2 x MACs of every Conv2D and Dense (same padding, 150 px); training step = forward"
    " + weight gradients (2 x MACs) + input gradients (2 x MACs, all layers but the first conv);"
    " pooling, ReLU, normalization, loss and optimizer not counted. MFU = that x images/s / best matmul GFLOP/s of the run"
)
BASE: dict[str, Any] = {
    "name": "train.py now: determinism, no XLA, batch 32, channels_last",
    "determinism": True,
    "jit": False,
    "batch": 32,
    "layout": "channels_last",
    "fused_adam": False,
}
# group (threads / environment of one process) -> the configurations compared in it, as changes to BASE
GROUPS: list[dict[str, Any]] = [
    {
        "name": "default threads",
        "configs": [
            {"name": "no determinism", "determinism": False},
            {"name": "XLA (jit_compile=True; Keras drops it under determinism)", "determinism": False, "jit": True},
            {"name": "batch 64", "batch": 64},
            {"name": "batch 128", "batch": 128},
            {"name": "batch 256", "batch": 256},
            {"name": "XLA, batch 128", "determinism": False, "jit": True, "batch": 128},
            {"name": "channels_first", "layout": "channels_first"},
            {"name": "fused Adam (ResourceApplyAdam)", "fused_adam": True},
            {"name": "fused Adam, batch 256", "fused_adam": True, "batch": 256},
            {"name": "train.py now, again (the noise between identical configurations)"},
        ],
    },
    {"name": "threads intra 2 / inter 1", "intra": 2, "inter": 1, "configs": []},
    {"name": "oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)", "env": {"TF_ENABLE_ONEDNN_OPTS": "0"}, "configs": []},
]


def layer_macs(model: Any) -> list[tuple[str, int]]:
    """(layer name, multiply-accumulates per image) of every Conv2D and Dense, in model order."""
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            shape = layer.output.shape
            kh, kw, cin, _ = layer.kernel.shape
            out.append((layer.name, shape[1] * shape[2] * shape[3] * kh * kw * cin))  # output elements x kernel MACs
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            out.append((layer.name, cin * cout))
    return out


def train_flops(macs: list[tuple[str, int]]) -> tuple[int, int]:
    """(forward FLOPs, training-step FLOPs) per image; see the module docstring."""
    total = sum(m for _, m in macs)
    return 2 * total, 2 * total + 2 * total + 2 * (total - macs[0][1])


def matmul_peak(tf: Any) -> float:
    """Best fp32 GFLOP/s of square matmuls (2 n^3 FLOPs each) in this process."""
    best = 0.0
    for n, reps in ((2048, 3), (4096, 2)):
        a, b = tf.random.uniform([n, n]), tf.random.uniform([n, n])
        mm = tf.function(lambda p, q: tf.reduce_sum(tf.linalg.matmul(p, q)))
        mm(a, b).numpy()
        for _ in range(reps):
            start = time.perf_counter()
            mm(a, b).numpy()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def fused_adam(adam: Any) -> Any:
    """``adam`` (a Keras Adam) applying each update as TensorFlow's one fused kernel, ``ResourceApplyAdam``.

    Keras' Adam runs about ten elementwise ops per variable, each a pass over
    the 5.3M weights of the seed CNN's dense layer. The kernel's rule is the
    same, but it forms ``1 - beta`` in float32 where Keras rounds the Python
    ``1 - beta``, so weights drift apart in the last bits: measured here as a
    configuration, not used by the train stage (every result would move).
    """
    import keras
    import tensorflow as tf

    if not isinstance(adam, keras.optimizers.Adam):
        raise TypeError(f"fused_adam needs an Adam optimizer, got {type(adam).__name__}")

    class FusedAdam(keras.optimizers.Adam):
        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
                super().update_step(gradient, variable, learning_rate)
                return
            dtype, i = variable.dtype, self._get_variable_index(variable)
            step = tf.cast(self.iterations + 1, dtype)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=self._momentums[i].value.handle,
                v=self._velocities[i].value.handle,
                beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
                beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
                lr=tf.cast(learning_rate, dtype),
                beta1=tf.cast(self.beta_1, dtype),
                beta2=tf.cast(self.beta_2, dtype),
                epsilon=tf.cast(self.epsilon, dtype),
                grad=tf.cast(gradient, dtype),
            )

    return FusedAdam.from_config(adam.get_config())


def build_model(cfg: dict[str, Any]) -> Any:
    """The seed CNN at 150 px in ``cfg``'s layout, compiled as the train stage compiles it (Adam, BCE, accuracy + AUC).

    ``fused_adam`` swaps the optimizer for :func:`fused_adam` of it.

    channels_last is ``cnn_functional`` itself; channels_first is the same
    layers built under that image data format, minus the (per-channel, last
    axis) Normalization layer.
    """
    import keras

    from pipeline import config
    from pipeline.models import pets, registry

    train_cfg = config.load(REPO / "params.yaml").variants["cnn_functional"].train
    if cfg["layout"] == "channels_last":
        model = registry.build("cnn_functional", registry.ModelSpec(image_size=SIZE))
    else:
        keras.config.set_image_data_format("channels_first")
        try:
            x = image = keras.Input(shape=(3, SIZE, SIZE), name="image")
            for layer in pets.seed_cnn_layers(SIZE, (127.5,) * 3, (5418.75,) * 3)[1:]:
                x = layer(x)
            model = keras.Model({"image": image}, x)
        finally:
            keras.config.set_image_data_format("channels_last")
    loss, metrics = loop.loss_and_metrics("binary_classification", train_cfg)
    optimizer = loop.optimizer(train_cfg, 10)
    if cfg["fused_adam"]:
        optimizer = fused_adam(optimizer)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=cfg["jit"])
    return model


def batches(batch: int, layout: str) -> Any:
    """An endless in-memory dataset of random 150 px images and 0/1 labels (4 distinct batches)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    shape = (batch * 4, SIZE, SIZE, 3) if layout == "channels_last" else (batch * 4, 3, SIZE, SIZE)
    x = rng.uniform(0, 255, shape).astype(np.float32)
    y = rng.integers(0, 2, (batch * 4, 1)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(({"image": x}, y)).batch(batch).cache().repeat().prefetch(2)


def set_determinism(on: bool) -> None:
    """Op determinism on or off for the whole process (the train stage switches it on)."""
    from tensorflow.python.framework import config as tf_config

    (tf_config.enable_op_determinism if on else tf_config.disable_op_determinism)()


def prepared(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """(compiled model, data) for ``cfg``, warmed up (traced / XLA-compiled); compiled under its determinism."""
    set_determinism(cfg["determinism"])
    model, data = build_model(cfg), batches(cfg["batch"], cfg["layout"])
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    return model, data


def worker(group: dict[str, Any], steps: int, rounds: int) -> list[dict[str, Any]]:
    """The group's configurations, each round the matmul peak then each of them in a shuffled order; their figures."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(42)  # as the train stage does (determinism needs a seed)
    tf.config.threading.set_intra_op_parallelism_threads(group.get("intra", 0))
    tf.config.threading.set_inter_op_parallelism_threads(group.get("inter", 0))
    configs = [BASE] + [{**BASE, **c} for c in group["configs"]]
    ready = [prepared(cfg) for cfg in configs]
    peak, rates = 0.0, [0.0] * len(configs)
    rng = random.Random(0)
    for _ in range(rounds):
        peak = max(peak, matmul_peak(tf))
        for i in rng.sample(range(len(configs)), len(configs)):
            cfg, (model, data) = configs[i], ready[i]
            set_determinism(cfg["determinism"])
            n = max(1, steps * 32 // cfg["batch"])
            start = time.perf_counter()
            model.fit(data, steps_per_epoch=n, epochs=1, verbose=0)
            rates[i] = max(rates[i], n * cfg["batch"] / (time.perf_counter() - start))
    return [result(cfg, model, rate, peak, group) for cfg, (model, _), rate in zip(configs, ready, rates)]


def result(cfg: dict[str, Any], model: Any, rate: float, peak: float, group: dict[str, Any]) -> dict[str, Any]:
    """One configuration's figures (``mfu`` is filled in later, against the run's best peak)."""
    forward, step = train_flops(layer_macs(model))
    return {
        **cfg,
        "name": cfg["name"] if cfg is not BASE else f"{cfg['name']}, {group['name']}",
        "group": group["name"],
        "jit_effective": bool(model.jit_compile),
        "images_per_s": round(rate, 2),
        "train_gflops": round(rate * step / 1e9, 2),
        "group_matmul_gflops": round(peak, 1),
        "mfu_vs_group_peak": round(rate * step / 1e9 / peak, 3),
        "forward_gflop_per_image": round(forward / 1e9, 4),
        "train_gflop_per_image": round(step / 1e9, 4),
    }


def run_group(group: dict[str, Any], steps: int, rounds: int) -> list[dict[str, Any]]:
    """``worker`` in a fresh process (its threads and environment); its last stdout line is the JSON."""
    cmd = [sys.executable, "-m", "benchmarks.mfu", "--worker", json.dumps(group), "--steps", str(steps), "--rounds", str(rounds)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **group.get("env", {})})
    if done.returncode:
        sys.exit(f"group {group['name']!r} failed:\n{done.stderr[-3000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for r in results:
        print(
            f"  {r['name']:82s} {r['images_per_s']:6.1f} img/s {r['train_gflops']:6.1f} GFLOP/s"
            f"  (matmul {r['group_matmul_gflops']:6.1f})",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help="training steps of 32 images per timing (default 3)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per group, the best counts (default 6)")
    args = parser.parse_args()
    quiet_env()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.steps, args.rounds)))
        return
    results = [r for group in GROUPS for r in run_group(group, args.steps, args.rounds)]
    peak = max(r["group_matmul_gflops"] for r in results)
    for r in results:
        r["mfu"] = round(r["train_gflops"] / peak, 3)
    best, now = max(results, key=lambda r: r["mfu"]), results[0]
    print(f"  matmul peak of the run: {peak} GFLOP/s; MFU per configuration:")
    for r in results:
        print(f"    {r['mfu']:.3f}  {r['name']}")
    write_figures(
        "mfu",
        {
            "mfu": now["mfu"],
            "mfu_config": now["name"],
            "mfu_best": best["mfu"],
            "mfu_best_config": best["name"],
            "images_per_s": now["images_per_s"],
            "matmul_peak_gflops": peak,
            "train_gflop_per_image": now["train_gflop_per_image"],
            "forward_gflop_per_image": now["forward_gflop_per_image"],
            "image_size": SIZE,
        },
        details={"flop_counting": FLOP_COUNTING, "configs": results},
    )


if __name__ == "__main__":
    main()
