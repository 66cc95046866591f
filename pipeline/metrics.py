"""What each task reports: its key metric, which way is better, the leaderboard's columns (one table for all)."""

from __future__ import annotations

# Per task: (key metric, True when higher is better), then the columns shown.
TASKS: dict[str, tuple[str, bool, list[str]]] = {
    "binary_classification": ("accuracy", True, ["accuracy", "precision", "recall", "f1", "roc_auc"]),
    "regression": ("mape", False, ["mape", "ape_std", "mae", "rmse"]),
}
