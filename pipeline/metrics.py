"""What each task reports and which way each metric is better: the leaderboard and the review read this one table."""

from __future__ import annotations

# The sense of each metric: which way is better.
HIGHER = ("accuracy", "precision", "recall", "f1", "roc_auc", "knn_accuracy")
LOWER = ("mape", "ape_mean", "ape_std", "mae", "rmse", "loss")
FASTER = ("images_per_s",)  # neutral for quality; higher is faster
# everything else (parameters, epochs, examples, images_seen, knn_k, ...) is neutral: up/down

# Per task: its key metric (ranks the leaderboard), then the columns shown.
TASKS: dict[str, tuple[str, list[str]]] = {
    "binary_classification": ("accuracy", ["accuracy", "precision", "recall", "f1", "roc_auc"]),
    "regression": ("mape", ["mape", "ape_std", "mae", "rmse"]),
}


def sense(metric: str) -> str:
    """``higher`` / ``lower`` (is better), ``faster`` (higher is faster) or ``neutral``."""
    if metric in HIGHER:
        return "higher"
    if metric in LOWER:
        return "lower"
    if metric in FASTER:
        return "faster"
    return "neutral"
