"""The report stage's pure functions on hand-made metrics."""

from __future__ import annotations

import math

from pipeline.metrics import TASKS, sense
from pipeline.stages.report import leaderboard, scalars

METRICS = {
    "a": {"task": "binary_classification", "dataset": "pets", "accuracy": 0.8, "roc_auc": math.nan, "parameters": 10},
    "b": {"task": "binary_classification", "dataset": "pets", "accuracy": 0.9, "parameters": 20},
    "m": {"task": "regression", "dataset": "houses", "mape": 30.0, "mae": 1000.0},
    "n": {"task": "regression", "dataset": "houses", "mape": 20.0, "mae": 2000.0},
}


def test_leaderboard_ranks_by_the_metric_sense() -> None:
    md = leaderboard(METRICS)
    assert md.index("| 1 | b |") < md.index("| 2 | a |")  # accuracy: higher first
    assert md.index("| 1 | n |") < md.index("| 2 | m |")  # MAPE: lower first
    assert "n/a" in md  # a NaN AUC is shown, not hidden


def test_scalars_keep_numbers_only() -> None:
    out = scalars({"a": {"task": "x", "accuracy": 0.5, "flag": True, "confusion_matrix": {"matrix": [[1]]}}})
    assert out == {"a": {"accuracy": 0.5}}


def test_every_key_metric_has_a_better_direction() -> None:
    # the leaderboard ranks by the key metric's sense: a neutral one would rank silently lowest-first
    assert {key: sense(key) for key, _ in TASKS.values()} == {"accuracy": "higher", "mape": "lower"}
