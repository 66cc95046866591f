"""Issue 16: does a different read-out of the frozen pets_unlabeled backbone make better features?

Probes the backbone that ``make results`` pretrained (results/workspace) on the labeled val split, with the
pipeline's 20-NN (cosine) and a logistic-regression probe fitted on train: the global average of the last stage
(what transfer_features uses), stages 3 + 4, stage 3 alone, stage 4 pooled 2x2, and the mirror-averaged
features, each at 128, 96 and 64 px (FixRes: the views were 64 px crops). Usage:
``PYTHONPATH=. python experiments/ssl_recipe/features.py [SIZE ...]``. Prints one line per read-out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.data import shards
from pipeline.models import transfer
from pipeline.training.ssl import feature_probes

WS = Path("results/workspace")
RESNET = {"min_map": 3, "blocks": [1, 1, 1, 1], "stem": "deep"}  # the resnet variant in results.yaml
STAGES = ("stage3_block1_out", "stage4_block1_out")


def score(name: str, train: np.ndarray, val: np.ndarray, y_train: np.ndarray, y_val: np.ndarray) -> None:
    p = feature_probes((train, y_train), (val, y_val), 20)
    knn, linear = p["knn_accuracy"], p["linear_probe_accuracy"]
    print(f"{name:28s} dims {train.shape[1]:5d}  kNN {knn:.3f}  linear {linear:.3f}", flush=True)


def at_size(backbone: keras.Model, size: int) -> keras.Model:
    """The backbone's weights in a network for ``size`` px (halvings still planned for 128 px)."""
    norm = backbone.get_layer("normalize").get_config()
    model = transfer.resnet_backbone(size, norm["mean"], norm["variance"], width=0.5, extra=RESNET, plan_size=128)
    model.set_weights(backbone.get_weights())
    return model


def main() -> None:
    backbone = keras.models.load_model(WS / "models/pretrain/pets_unlabeled/backbone.keras", safe_mode=True)
    (train, x_train), (val, x_val) = (shards.load_split(WS / "data/prepared/pets", s) for s in ("train", "val"))
    y_train, y_val = train.label_index.to_numpy(), val.label_index.to_numpy()
    for size in [int(s) for s in sys.argv[1:]] or [128, 96, 64]:
        model = backbone if size == x_train.shape[1] else at_size(backbone, size)
        maps = keras.Model(model.inputs, [model.get_layer(name).output for name in STAGES])

        def read(x: np.ndarray, flip: bool = False, size: int = size, maps: keras.Model = maps) -> list[np.ndarray]:
            x = tf.image.resize(x.astype(np.float32), [size, size], antialias=True).numpy()
            return maps.predict(x[:, :, ::-1] if flip else x, batch_size=128, verbose=0)

        (s3_train, s4_train), (s3_val, s4_val) = read(x_train), read(x_val)
        (_, f4_train), (_, f4_val) = read(x_train, flip=True), read(x_val, flip=True)

        def gap(a: np.ndarray) -> np.ndarray:
            return a.mean(axis=(1, 2))

        def pool2(a: np.ndarray) -> np.ndarray:
            k = a.shape[1] // 2
            return tf.nn.avg_pool2d(a, k, k, "VALID").numpy().reshape(len(a), -1)

        both = np.concatenate([gap(s3_train), gap(s4_train)], 1), np.concatenate([gap(s3_val), gap(s4_val)], 1)
        score(f"{size} px, stage 4 (the pipeline's)", gap(s4_train), gap(s4_val), y_train, y_val)
        score(f"{size} px, stages 3 + 4", *both, y_train, y_val)
        score(f"{size} px, stage 3", gap(s3_train), gap(s3_val), y_train, y_val)
        score(f"{size} px, stage 4 pooled 2x2", pool2(s4_train), pool2(s4_val), y_train, y_val)
        flipped = (gap(s4_train) + gap(f4_train)) / 2, (gap(s4_val) + gap(f4_val)) / 2
        score(f"{size} px, stage 4 + mirror", *flipped, y_train, y_val)


if __name__ == "__main__":
    main()
