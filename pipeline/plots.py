"""The evaluation's plots: the tables behind DVC's plot templates, and PNGs for the review and MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def plot_data(task: str, y: np.ndarray, p: np.ndarray, index: pd.DataFrame, classes: list[str] | None) -> dict[str, pd.DataFrame]:
    """The CSV tables behind the DVC plots, by kind: ``confusion`` and ``roc``, or ``scatter`` (predicted vs actual)."""
    if task == "binary_classification":
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(y, p) if len(np.unique(y)) == 2 else (np.array([0, 1]), np.array([0, 1]), None)
        assert classes is not None
        predictions = pd.DataFrame(
            {
                "path": index.path,
                "actual": [classes[int(v)] for v in y],
                "predicted": [classes[int(v >= 0.5)] for v in p],
                "probability": p,
            }
        )
        return {"confusion": predictions, "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr})}
    return {"scatter": pd.DataFrame({"house_id": index.house_id, "actual": y, "predicted": p})}


def draw(task: str, tables: dict[str, pd.DataFrame], result: dict[str, Any], out: Path, title: str) -> list[Path]:
    """PNG plots: confusion matrix and ROC curve, or predicted vs actual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if task == "binary_classification":
        cm = np.array(result["confusion_matrix"]["matrix"])
        labels = result["confusion_matrix"]["labels"]
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=labels,
            yticklabels=labels,
            xlabel="predicted",
            ylabel="actual",
            title=f"{title}: confusion",
        )
        written.append(_save(fig, out / "confusion_matrix.png"))
        fig, ax = plt.subplots(figsize=(4, 4))
        roc = tables["roc"]
        ax.plot(roc.fpr, roc.tpr, label=f"AUC {result['roc_auc']:.3f}")
        ax.plot([0, 1], [0, 1], "k:")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: ROC")
        ax.legend()
        written.append(_save(fig, out / "roc.png"))
    else:
        pred = tables["scatter"]
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(pred.actual, pred.predicted, s=8)
        lim = [0, float(max(pred.actual.max(), pred.predicted.max()))]
        ax.plot(lim, lim, "k:")
        ax.set(xlabel="actual price", ylabel="predicted price", title=f"{title}: MAPE {result['mape']:.1f} %")
        written.append(_save(fig, out / "predicted_vs_actual.png"))
    plt.close("all")
    return written


def draw_history(history: pd.DataFrame, path: Path, title: str) -> Path:
    """Training curves: every ``<metric>`` next to its ``val_<metric>``, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in history.columns if c != "epoch" and not c.startswith("val_") and f"val_{c}" in history]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(history.epoch, history[name], label="train")
        ax.plot(history.epoch, history[f"val_{name}"], label="val")
        ax.set(xlabel="epoch", title=name)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path
