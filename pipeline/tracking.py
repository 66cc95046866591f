"""MLflow at the edges: one experiment per dataset, one run per variant, shared by train and evaluate.

The tracking URI defaults to ``sqlite:///mlflow.db`` with artifacts under
``mlartifacts/`` (embedded, no server); ``MLFLOW_TRACKING_URI`` points it at a
real server. Train writes the run id to ``models/<variant>/mlflow_run.json``;
evaluate reopens that run, so both log into the same place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS = Path("mlartifacts")
RUN_FILE = "mlflow_run.json"


def _mlflow():  # noqa: ANN202 - the module
    # No network but the tracking server: MLflow 3 otherwise sends usage telemetry.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    mlflow.set_tracking_uri(uri)
    return mlflow


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and None become strings (MLflow params are strings)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


def git_tags() -> dict[str, str]:
    """``git.commit``, ``git.dirty`` and ``pipeline.revision`` ("unknown" outside a git checkout).

    ``pipeline.revision`` names one state of code and params: the commit, plus
    a digest of the uncommitted changes when the tree is dirty. The runs of
    one ``dvc repro`` share it: group by it in the MLflow UI ("Group by" >
    tag). Tags rather than parent runs keep every variant's row, with its
    metrics, visible in the runs table.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        # dvc.lock and .gitignore files change while `dvc repro` runs; they are not the state it runs
        diff = subprocess.run(["git", "diff", "HEAD", "--", ".", ":!dvc.lock", ":!.gitignore", ":!**/.gitignore"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"git.commit": "unknown", "git.dirty": "unknown", "pipeline.revision": "unknown"}
    revision = commit[:12] + (f"+{hashlib.sha256(diff).hexdigest()[:8]}" if diff else "")
    return {"git.commit": commit, "git.dirty": str(bool(diff)).lower(), "pipeline.revision": revision}


def data_hash(lock: Path, dataset: str) -> str:
    """md5 of ``data/prepared/<dataset>`` as recorded in ``dvc.lock`` ("unknown" before the first repro)."""
    try:
        stages = yaml.safe_load(lock.read_text())["stages"]
        outs = stages[f"prepare@{dataset}"]["outs"]
        return next(o["md5"] for o in outs if o["path"] == f"data/prepared/{dataset}")
    except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError):
        return "unknown"


def _experiment_id(mlflow: Any, name: str) -> str:
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if "MLFLOW_TRACKING_URI" in os.environ else ARTIFACTS.resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def start(variant: str, dataset: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """Create the variant's run in the dataset's experiment, log tags and params in one batch; return the run id."""
    mlflow = _mlflow()
    from mlflow.entities import Param, RunTag

    client = mlflow.MlflowClient()
    run_id = client.create_run(_experiment_id(mlflow, dataset), run_name=variant).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flatten(params).items()], tags=[RunTag(k, str(v)) for k, v in tags.items()])
    log.info("MLflow run %s (%s / %s) at %s", run_id, dataset, variant, mlflow.get_tracking_uri())
    return run_id


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log several metrics in one call."""
    mlflow = _mlflow()
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=batch)


def epoch_logger(run_id: str):  # noqa: ANN201 - a keras callback; keras is imported only here
    """A Keras callback logging each epoch's metrics into ``run_id`` in one batched call."""
    import keras

    return keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: log_metrics(run_id, {k: float(v) for k, v in (logs or {}).items()}, step=epoch)
    )


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log several (flattened) params in one call."""
    mlflow = _mlflow()
    from mlflow.entities import Param

    mlflow.MlflowClient().log_batch(run_id, params=[Param(k, str(v)) for k, v in flatten(params).items()])


def log_artifact(run_id: str, path: Path, folder: str) -> None:
    """Upload ``path`` (file or folder) under ``folder/`` of the run's artifacts."""
    client = _mlflow().MlflowClient()
    if path.is_dir():
        client.log_artifacts(run_id, str(path), folder)
    else:
        client.log_artifact(run_id, str(path), folder)


def finish(run_id: str, status: str = "FINISHED") -> None:
    """Mark the run finished (or FAILED)."""
    _mlflow().MlflowClient().set_terminated(run_id, status)


def save_run_id(folder: Path, run_id: str) -> None:
    (folder / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": _mlflow().get_tracking_uri()}) + "\n")


def load_run_id(folder: Path) -> str:
    return json.loads((folder / RUN_FILE).read_text())["run_id"]
