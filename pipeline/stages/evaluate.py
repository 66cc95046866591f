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
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config, files, paths, tracking
from pipeline.data import shards
from pipeline.errors import PipelineError
from pipeline.metrics import TASKS, classification_metrics, regression_metrics, sense
from pipeline.plots import draw, draw_history, plot_data

log = logging.getLogger(__name__)


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
    trained_config = json.loads((folder / "config.json").read_text())
    names = registry.get(trained_config["model"]).inputs
    model = registry.load_trained(folder / "model.keras")  # an unsafe or corrupt file: a one-line error
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
    run_id = tracking.model_run(folder, variant, dataset)
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
    tracking.check()  # an unreachable store fails now, not after the imports and the data
    unknown = [v for v in chosen if v not in params.variants]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r} (choose from {', '.join(params.variants)})")
    for name in chosen:
        evaluate(name, params.variants[name].dataset)
