"""The ``extra`` knobs of the pets families (:mod:`pipeline.models.pets`), without Keras: config checks them before TensorFlow.

Each builder reads its knobs through its schema here (``Schema.model_validate(spec.extra)``), so
the defaults live in one place; ``spec.extra`` itself stays what the variant wrote.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from pipeline.schema import Section, Text, Units, integer, number

RESNET_STEMS = ("single", "deep")


class NoKnobs(Section):
    """A family without knobs of its own."""


class SeedCNNKnobs(Section):
    """The seed CNN, any of its three APIs."""

    padding: Literal["same", "valid"] = "same"  # "valid" is the book's exact model (needs >= 46 px images)


class AugmentedCNNKnobs(SeedCNNKnobs):
    dropout: number(0, 0.95) = 0.5  # the rate after Flatten when the variant's own dropout is 0


class LeNet5Knobs(Section):
    activation: Text = "relu"  # LeNet's own was "tanh"


class AlexNetKnobs(Section):
    """AlexNet, ZFNet: the two hidden Dense layers' units (the original's 4096 is sized for 224 px ImageNet)."""

    dense_units: integer(1) = 512


class VGGKnobs(AlexNetKnobs):
    filters: Units = (64, 128, 256, 512, 512)  # per block; with ``convs`` (2, 2, 3, 3, 3): VGG-16
    convs: Units = (2, 2, 3, 3, 3)

    @model_validator(mode="after")
    def _blocks(self) -> VGGKnobs:
        if len(self.filters) != len(self.convs):
            raise ValueError(f"filters {list(self.filters)} and convs {list(self.convs)} differ in length")
        return self


class InceptionKnobs(Section):
    stages: integer(1, 3) = 3  # of pets.INCEPTION_STAGES: 1 = only 3a-3b, 2 = up to 4e, 3 = up to 5b


class ResNetKnobs(Section):
    filters: Units = (64, 128, 256, 512)  # per stage; with ``blocks`` (3, 4, 6, 3): ResNet-34
    blocks: Units = (2, 2, 2, 2)
    min_map: integer(1) = 4  # the smallest last map before a halving is dropped
    stem: Literal[RESNET_STEMS] = "single"  # one 7x7 conv, or "deep": three 3x3 convs (ResNet-C)

    @model_validator(mode="after")
    def _stages(self) -> ResNetKnobs:
        if len(self.filters) != len(self.blocks):
            raise ValueError(f"filters {list(self.filters)} and blocks {list(self.blocks)} differ in length")
        return self


KNOBS: dict[str, type[Section]] = {
    "cnn_sequential": SeedCNNKnobs,
    "cnn_functional": SeedCNNKnobs,
    "cnn_subclassed": SeedCNNKnobs,
    "cnn_augmented": AugmentedCNNKnobs,
    "lenet5": LeNet5Knobs,
    "alexnet": AlexNetKnobs,
    "zfnet": AlexNetKnobs,
    "vgg": VGGKnobs,
    "nin": NoKnobs,
    "inception": InceptionKnobs,
    "resnet": ResNetKnobs,
}
