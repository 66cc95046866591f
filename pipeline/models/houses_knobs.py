"""The ``extra`` knobs of the house price families (:mod:`pipeline.models.houses`), without Keras.

Every default is the seed's model; what each knob does is in :mod:`pipeline.models.houses`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import StrictBool

from pipeline.schema import Section, Units, integer, number

TARGETS = ("scaled", "log")
PHOTO_HEADS = ("flatten", "average")


class TabularKnobs(Section):
    """``mlp_tabular``: the house attributes and zip codes."""

    target: Literal[TARGETS] = "scaled"
    log_tabular: StrictBool = False
    hidden: Units = (8, 4)  # [] feeds the features straight to the output unit


class PhotoKnobs(Section):
    """``cnn_montage``: the 2x2 montage of the photos."""

    target: Literal[TARGETS] = "scaled"
    photo_pool: integer(1) = 1
    photo_filters: Units = (16, 32, 64)
    photo_head: Literal[PHOTO_HEADS] = "flatten"
    branch_dropout: number(0, 0.95) = 0.5  # 0 removes the layer


class MixedKnobs(TabularKnobs, PhotoKnobs):
    """``mixed_inputs``: both branches."""

    combined: integer(0) = 4  # 0: one output unit per branch, added


KNOBS: dict[str, type[Section]] = {"mlp_tabular": TabularKnobs, "cnn_montage": PhotoKnobs, "mixed_inputs": MixedKnobs}
