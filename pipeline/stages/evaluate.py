"""Stage ``evaluate``: every trained variant on its dataset's test split, in one process.

One process for all variants pays TensorFlow's import once instead of once per
variant. Per variant it writes ``reports/metrics/<variant>.json`` (DVC
metrics), ``reports/plots/<kind>/<variant>.csv`` (the data behind DVC's plot
templates) and ``reports/plots/images/<variant>/*.png``, and logs them into
the variant's MLflow run.

Classification: accuracy, precision, recall, F1, ROC AUC, confusion matrix,
ROC curve. Regression: MAE, RMSE, MAPE, and the mean and std of the absolute
percentage error (the seed's report), predicted-vs-actual plot. Transfer
variants add ``knn_accuracy``: the seed's k-nearest-neighbour classifier on
the backbone's features (train split -> test split; variant extra ``knn``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config, files, paths, tracking
from pipeline.data import shards
from pipeline.errors import PipelineError
from pipeline.metrics import TASKS, sense

log = logging.getLogger(__name__)


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


def evaluate(variant: str, dataset: str) -> dict[str, Any]:
    """Evaluate ``models/<variant>/model.keras`` on the test split; write metrics and plots; return the metrics."""
    import keras

    from pipeline.models import registry
    from pipeline.training.inputs import make_dataset, model_inputs, targets

    folder = paths.model(variant)
    if not (folder / "model.keras").exists():
        raise PipelineError(f"{folder / 'model.keras'}: not found; run train@{variant} first")
    prepared = paths.prepared(dataset)
    meta = shards.meta(prepared)
    index, images = shards.load_split(prepared, "test")
    # registry.get first: it imports the model families, whose registered layers (houses' Log, SeedCNN) load_model needs
    trained_config = json.loads((folder / "config.json").read_text())
    names = registry.get(trained_config["model"]).inputs
    model = keras.models.load_model(folder / "model.keras", safe_mode=True)
    y = targets(meta, index)
    x = make_dataset(model_inputs(names, index, images), y, 64, None, as_dict=not isinstance(model, keras.Sequential))
    p = model.predict(x, verbose=0).reshape(-1).astype(np.float64)
    y = y.reshape(-1).astype(np.float64)
    task = meta["task"]
    result = classification_metrics(y, p, meta["classes"]) if task == "binary_classification" else regression_metrics(y, p)
    history = pd.read_csv(paths.history(variant))
    # no timings here: DVC metrics stay equal when the inputs are (train logs them in MLflow)
    result.update(variant=variant, dataset=dataset, task=task, parameters=int(model.count_params()), epochs=len(history))
    if registry.get(trained_config["model"]).needs_backbone:  # --- transfer learning: the seed's kNN on the deep features
        from pipeline.models import transfer

        k = transfer.knn_k(trained_config["model"], trained_config.get("extra", {}))
        if k:
            train_index, train_images = shards.load_split(prepared, "train")
            result.update(
                knn_accuracy=transfer.knn_accuracy(model, k, (train_images, targets(meta, train_index)), (images, y)), knn_k=k
            )
    tables = plot_data(task, y, p, index, meta.get("classes"))
    tables["history"] = history  # beside the other plot data, for dvc.yaml
    for kind, table in tables.items():
        paths.plot_data(kind, variant).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(paths.plot_data(kind, variant), index=False)
    out = paths.plot_images(variant)
    out.mkdir(parents=True, exist_ok=True)
    pngs = draw(task, tables, result, out, variant)
    pngs.append(draw_history(tables["history"], out / "training_curves.png", f"{variant}: training curves"))
    files.write_json(paths.metrics(variant), result)
    tags = {**tracking.git_tags(), "data.hash": tracking.data_hash(Path("dvc.lock"), dataset), "dataset": dataset}
    run_id = tracking.model_run(folder, variant, dataset, tags)
    scalars = {f"test_{k}": v for k, v in result.items() if isinstance(v, float) and np.isfinite(v)}
    tracking.log_metrics(run_id, scalars)
    key = TASKS[task][0]  # the leaderboard's key metric: a column of the experiment's runs table in the UI
    tracking.set_runs_view(run_id, f"test_{key}", sense(key) == "higher")
    tracking.log_artifact(run_id, paths.metrics(variant), "metrics")
    for png in pngs:
        tracking.log_artifact(run_id, png, "plots")
    log.info("%s: %s", variant, {k: round(v, 4) for k, v in scalars.items()})
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline evaluate [VARIANT ...]`` (default: every variant in params.yaml)."""
    params = config.load()
    parser = argparse.ArgumentParser(prog="python -m pipeline evaluate", description=__doc__)
    parser.add_argument("variants", nargs="*", metavar="VARIANT")
    chosen = parser.parse_args(argv).variants or list(params.variants)
    unknown = [v for v in chosen if v not in params.variants]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r} (choose from {', '.join(params.variants)})")
    for name in chosen:
        evaluate(name, params.variants[name].dataset)
