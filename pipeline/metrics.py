"""What each task reports and which way each metric is better: the leaderboard and the review read this one table."""

from __future__ import annotations

from typing import Any

import numpy as np

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


def classification_metrics(y: np.ndarray, p: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Metrics of probabilities ``p`` of class 1 against labels ``y`` (threshold 0.5)."""
    from sklearn import metrics as m

    pred = (p >= 0.5).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "accuracy": float(m.accuracy_score(y, pred)),
        "precision": float(m.precision_score(y, pred, zero_division=0)),
        "recall": float(m.recall_score(y, pred, zero_division=0)),
        "f1": float(m.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(m.roc_auc_score(y, p)) if both else float("nan"),
        "confusion_matrix": {"labels": classes, "matrix": m.confusion_matrix(y, pred, labels=[0, 1]).tolist()},
        "examples": int(len(y)),
    }


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE, MAPE and the seed's mean/std of the absolute percentage error."""
    ape = np.abs(p - y) / np.abs(y) * 100
    return {
        "mae": float(np.mean(np.abs(p - y))),
        "rmse": float(np.sqrt(np.mean((p - y) ** 2))),
        "mape": float(np.mean(ape)),
        "ape_mean": float(np.mean(ape)),
        "ape_std": float(np.std(ape)),
        "examples": int(len(y)),
    }
