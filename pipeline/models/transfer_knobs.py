"""The ``extra`` knobs of the transfer learning families (:mod:`pipeline.models.transfer`), without Keras.

The train stage reads the fine-tuning phase from them, the evaluate stage the kNN's k.
"""

from __future__ import annotations

from typing import Literal

from pipeline.schema import Section, integer, number

UNFREEZE = ("top", "all", "all_batchnorm")


class TransferKnobs(Section):
    """``transfer_scratch``; the others change defaults only."""

    dense_units: integer(1) = 128  # the head's hidden layer, scaled by the variant's width
    knn: integer(0) = 0  # k of the seed's kNN on the backbone's features (0 = off)
    finetune_epochs: integer(0, 10000) = 0  # a second phase with the backbone (partly) unfrozen; 0 = none
    finetune_learning_rate: number(1e-8, 10) | None = None  # None: the train learning rate / 10
    unfreeze: Literal[UNFREEZE] = "top"  # the top block, or all of it (BatchNorm frozen), or all with BatchNorm


class FeaturesKnobs(TransferKnobs):
    knn: integer(0) = 5


class FinetuneKnobs(FeaturesKnobs):
    finetune_epochs: integer(0, 10000) = 2


KNOBS: dict[str, type[TransferKnobs]] = {
    "transfer_features": FeaturesKnobs,
    "transfer_finetune": FinetuneKnobs,
    "transfer_scratch": TransferKnobs,
}
