"""MLflow at the edges: one experiment per dataset, one run per variant, shared by train and evaluate.

The tracking URI defaults to ``mlflow.db`` with artifacts under
``mlartifacts/`` (embedded, no server), both in the project's root
(:func:`project_root`), so git worktrees, DVC's experiment copies and the
review's base rebuild log into one store; ``MLFLOW_TRACKING_URI`` points it at
a real server. Train tags its run with the md5 of the model file it wrote
(what DVC records for it too); evaluate finds that run from the file alone
(:func:`model_run`), so both log into one run, and no run id has to live in a
DVC-hashed output.

Once a run has started, a call that fails (the server went away, refuses, or
hangs past ``MLFLOW_HTTP_REQUEST_TIMEOUT``) does not stop the stage: that run's
calls from then on go to a spool in ``logs/`` (:mod:`pipeline.spool`), which
the end of the stage, the start of the next one, and
``python -m pipeline tracking sync`` replay into the store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pipeline import spool
from pipeline.config import flatten
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

STORE = "mlflow.db"  # the default store and artifact folder, in the project root
ARTIFACTS = "mlartifacts"
PRETRAIN_EXPERIMENT = "pretrain"  # beside one experiment per dataset: one run per pretraining
MODEL_TAG = "model.md5"  # ties a run to the model file it trained, wherever DVC restores that file
SPOOL = Path("logs/tracking-spool")  # in the project root: calls a tracking outage kept from the store
# Bounded requests: MLflow's defaults (120 s timeout, 7 retries with backoff factor 2) block a call for minutes.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def project_root(start: Path | None = None) -> Path:
    """The folder that owns the default tracking store: the main worktree of the git repository holding ``start``.

    ``start`` (default: the current folder) may be a linked git worktree, or
    lie under ``<root>/.dvc/tmp/``, where DVC runs queued experiments in fresh
    repositories (``exps/``) and the review rebuilds a base revision
    (``review/``): all of them log into ``<root>``'s store, where the runs of
    the models DVC's run cache restores live. Outside git: ``start`` itself.
    """
    return _root((start or Path.cwd()).resolve())


@cache
def _root(here: Path) -> Path:
    try:
        common = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        root = Path(common).parent if Path(common).name == ".git" else here
    except (OSError, subprocess.CalledProcessError):
        root = here
    parts = root.parts
    for i in range(len(parts) - 1):
        if parts[i : i + 2] == (".dvc", "tmp"):
            return Path(*parts[:i])
    return root


def tracking_uri(start: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the ``mlflow.db`` of the project holding ``start`` (an absolute sqlite URI)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root(start) / STORE}"


def _mlflow(start: Path | None = None):  # noqa: ANN202 - the module
    # No network but the tracking server: MLflow 3 otherwise sends usage telemetry.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    uri = check(start)
    import mlflow  # after the probe: an unreachable server fails the stage without waiting for MLflow's import

    chosen = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # MLflow also exports the URI for child processes: a later call with another ``start`` would then read it as the
    # user's choice, and every subprocess (a DVC stage of another project) would log here. Keep the user's setting only.
    if chosen is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    _first_use(project_root(start), uri)
    return mlflow


def check(start: Path | None = None) -> str:
    """The store's URI, once :func:`check_server` found it answering: a stage that logs calls it first, before slow imports.

    An unreachable, hanging or refusing server then fails the stage within the
    probe's timeout (10 s), with one line naming the URI, before any training.
    """
    uri = tracking_uri(start)
    check_server(uri, os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    return uri


@cache
def check_server(uri: str, user: str | None, password: str | None, timeout: float = 10.0) -> None:
    """:func:`probe_server`, once per process for each URI and account (a failure is not remembered)."""
    probe_server(uri, user, password, timeout)


def probe_server(uri: str, user: str | None, password: str | None, timeout: float = 10.0) -> None:
    """One request to a tracking server (http[s] URIs only) with the account MLflow will use.

    A wrong password, a missing account or an unreachable server then stops
    the stage within ``timeout`` seconds with a message naming the URI, instead
    of MLflow's minutes of retries ending in a traceback.
    """
    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
        data=b'{"max_results": 1}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code == 401 and user:
            problem = f"refused the account {user!r} (401 Unauthorized): check MLFLOW_TRACKING_PASSWORD"
        elif exc.code == 401:
            problem = "needs an account (401 Unauthorized): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        else:
            problem = f"answered {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        problem = f"is unreachable ({getattr(exc, 'reason', exc)})"
    raise PipelineError(f"tracking server {uri} {problem} (`source .stack/env` sets the team stack's)")


def _mlflow_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and None become JSON (MLflow params are strings), empty mappings nothing."""
    flat = {k: v for k, v in flatten(params).items() if not isinstance(v, Mapping)}  # a mapping leaf is empty
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in flat.items()}


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
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", ".", ":!dvc.lock", ":!.gitignore", ":!**/.gitignore"], capture_output=True, check=True
        ).stdout
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


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of the store at ``uri`` keeps its artifacts; None: the server decides.

    A server (``http(s)://``) gets no location, so it uses its own default:
    ``mlflow-artifacts:/``, proxied, which stays valid for every client and
    never names a path on this machine. A local store (``sqlite:///<dir>/x.db``,
    a file store) keeps them in ``<dir>/mlartifacts``, beside the store file,
    not in the folder the first process happened to run in (MLflow's default
    ``./mlruns``).
    """
    scheme, _, rest = uri.partition(":")
    if scheme == "sqlite" and rest.startswith("///"):
        return (Path(rest[3:]).resolve().parent / ARTIFACTS).as_uri()
    return None  # a server's default, a file store's own folder, a database server's --default-artifact-root


# Columns holding artifact URIs in MLflow 3.17's sqlite schema (tables a store may lack are skipped).
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def relocate_store(uri: str) -> str | None:
    """Point a copied sqlite store's artifact URIs at the ``mlartifacts`` beside it; return the old root, or None.

    MLflow stores absolute artifact locations: a workspace copied elsewhere
    (``cp -r``, a CI cache, a moved checkout) would go on reading and writing
    the original folder's artifacts. Locations under another folder's
    ``mlartifacts`` (what :func:`artifact_location` gives) are rewritten to
    this store's, in one transaction; other locations are left alone.
    """
    here = artifact_location(uri)
    db = Path(uri.partition(":///")[2]) if here else None
    if db is None or not db.is_file():
        return None
    import sqlite3

    with sqlite3.connect(db, timeout=30) as conn:
        try:
            rows = conn.execute("SELECT artifact_location FROM experiments WHERE artifact_location LIKE 'file://%/mlartifacts%'")
        except sqlite3.DatabaseError:
            return None  # not (yet) an MLflow store
        roots = {loc[: loc.rindex("/" + ARTIFACTS) + len(ARTIFACTS) + 1] for (loc,) in rows} - {here}
        for old in roots:
            for table, column in LOCATION_COLUMNS:
                try:
                    conn.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",  # noqa: S608
                        (here, len(old) + 1, len(old), old),
                    )
                except sqlite3.OperationalError:  # an older schema without the table
                    continue
    for old in roots:
        log.info("%s was copied from another folder: its artifact locations %s now point to %s", db, old, here)
    return next(iter(roots), None)


def _experiment_id(mlflow: Any, name: str) -> str:
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location(mlflow.get_tracking_uri()))


def start(variant: str, dataset: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """Create the variant's run in the dataset's experiment with ``tags``, then log the params in one batch; return its id.

    The tags (the process's among them) come with the run itself: a run that
    exists always says which stage and process made it, even when the store
    fails the next call.
    """
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    try:
        run_id = client.create_run(
            _experiment_id(mlflow, dataset), run_name=variant, tags={k: str(v) for k, v in tags.items()}
        ).info.run_id
    except mlflow.exceptions.MlflowException as exc:
        if "403" not in str(exc):
            raise
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        raise PipelineError(
            f"tracking server {mlflow.get_tracking_uri()}: account {user!r} may not write into experiment {dataset!r} "
            "(403 Permission denied): the stack's admin grants it with `python -m pipeline stack user add`"
        ) from None
    _apply(client, run_id, {"op": "batch", "params": {k: str(v) for k, v in _mlflow_params(params).items()}})
    log.info("MLflow run %s (%s / %s) at %s", run_id, dataset, variant, mlflow.get_tracking_uri())
    return run_id


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log several metrics in one call."""
    now = int(time.time() * 1000)
    _send(run_id, {"op": "batch", "metrics": [[k, float(v), now, step or 0] for k, v in metrics.items()]})


def epoch_logger(run_id: str):  # noqa: ANN201 - a keras callback; keras is imported only here
    """A Keras callback logging each epoch's metrics into ``run_id`` in one batched call."""
    import keras

    return keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: log_metrics(run_id, {k: float(v) for k, v in (logs or {}).items()}, step=epoch)
    )


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log several (flattened) params in one call."""
    _send(run_id, {"op": "batch", "params": {k: str(v) for k, v in _mlflow_params(params).items()}})


def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    """Set several tags in one call."""
    _send(run_id, {"op": "batch", "tags": {k: str(v) for k, v in tags.items()}})


def log_artifact(run_id: str, path: Path, folder: str) -> None:
    """Upload ``path`` (file or folder) under ``folder/`` of the run's artifacts."""
    _send(run_id, {"op": "artifacts", "folder": folder}, path)


# --- delivery: live while the store answers, else into the spool (see the module docstring)
_outage: set[str] = set()  # runs of this process whose calls go to the spool


def spool_folder(start: Path | None = None) -> Path:
    """The spool of the project holding ``start`` (default: the current folder)."""
    return project_root(start) / SPOOL


def _apply(client: Any, run_id: str, record: Mapping[str, Any]) -> None:
    """Make one spool record's call (live calls and replays share this one path)."""
    from mlflow.entities import Metric, Param, RunTag

    op = record["op"]
    if op == "batch":
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, step) for k, v, ts, step in record.get("metrics", [])],
            params=[Param(k, v[:6000]) for k, v in record.get("params", {}).items()],
            tags=[RunTag(k, v) for k, v in record.get("tags", {}).items()],
        )
    elif op == "artifacts":
        path = Path(record["path"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), record["folder"])
        else:
            client.log_artifact(run_id, str(path), record["folder"])
    elif op == "terminate":
        client.set_terminated(run_id, record["status"], record["end_time"])
    elif op == "experiment_tag":
        client.set_experiment_tag(client.get_run(run_id).info.experiment_id, record["key"], record["value"])
    else:
        raise PipelineError(f"tracking spool: unknown record {op!r} for run {run_id}")


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message (MLflow's hold whole tracebacks), or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _send(run_id: str, record: dict[str, Any], path: Path | None = None) -> None:
    """Make the call now; when the store fails, spool it, and every later call of the run (their order holds)."""
    mlflow = _mlflow()
    record = {**record, "uri": mlflow.get_tracking_uri()}
    if run_id not in _outage:
        try:
            _apply(mlflow.MlflowClient(), run_id, {**record, "path": str(path)} if path else record)
            return
        except Exception as exc:  # noqa: BLE001 - whatever the store or the network raised, training goes on
            _outage.add(run_id)
            log.warning(
                "tracking store %s failed (%s): run %s's calls go to %s until they are replayed",
                record["uri"],
                _first_line(exc),
                run_id,
                spool_folder() / run_id,
            )
    spool.append(spool_folder(), run_id, record, path)


def sync(start: Path | None = None, only_uri: str | None = None) -> tuple[int, list[str]]:
    """Replay the spooled calls of the project holding ``start`` into their stores; return (records sent, runs left).

    Each run's records go in order; a run's queue is removed once all went
    through, and kept whole when one fails (replaying it again is harmless:
    MLflow drops a metric logged twice with the same timestamp, and tags,
    params, artifacts and the end status are simply set again). A run whose
    lock another process holds (it is appending, or replaying) is left for later.
    ``only_uri``: replay only the runs meant for that store.
    """
    import mlflow

    folder = spool_folder(start)
    sent, left = 0, []
    for run_id in spool.pending(folder):
        with spool.locked(folder, run_id, wait=False) as mine:
            queued = spool.records(folder, run_id) if mine else []
            uri = queued[0]["uri"] if queued else None
            if not mine or (only_uri and uri != only_uri):
                left.append(run_id)
                continue
            try:
                if uri:  # one bounded request first: a store still away costs one timeout, not every retry
                    account = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
                    probe_server(uri, *account, timeout=float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")))
                client = mlflow.MlflowClient(tracking_uri=uri)
                for record in queued:
                    _apply(client, run_id, record)
            except Exception as exc:  # noqa: BLE001 - the store is still away: keep the queue whole
                log.warning("tracking spool %s: not replayed yet (%s)", folder / run_id, _first_line(exc))
                left.append(run_id)
                continue
            spool.remove(folder, run_id)
            _outage.discard(run_id)
            sent += len(queued)
            log.info("tracking spool: %d calls of run %s replayed into %s", len(queued), run_id, uri)
    return sent, left


@cache
def _first_use(root: Path, uri: str) -> None:
    """Once per process for each project and store: a copied sqlite store relocated, what earlier stages spooled replayed."""
    relocate_store(uri)
    if spool.pending(root / SPOOL):
        sync(root, only_uri=uri)


def signature(example: Mapping[str, Any], output: Any):  # noqa: ANN201 - an mlflow.models.ModelSignature
    """Named tensor inputs (batch dimension -1; strings as ``object``) and the unnamed output of one example batch."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(array: Any, name: str | None = None) -> TensorSpec:
        array = np.asarray(array)
        dtype = np.dtype(object) if array.dtype.kind in "OSU" else array.dtype
        return TensorSpec(dtype, (-1, *array.shape[1:]), name)

    return ModelSignature(Schema([spec(v, k) for k, v in example.items()]), Schema([spec(output)]))


def _pinned(*distributions: str) -> list[str]:
    """``name==version`` of the first installed of ``distributions`` (tensorflow or tensorflow-cpu)."""
    from importlib import metadata

    for name in distributions:
        try:
            return [f"{name}=={metadata.version(name)}"]
        except metadata.PackageNotFoundError:
            continue
    return []


# What the logged model's code (the ``pipeline`` package, see :func:`log_model`) imports to load and serve it.
SERVING_REQUIREMENTS = (("keras",), ("tensorflow", "tensorflow-cpu"), ("numpy",), ("pandas",), ("pydantic",), ("PyYAML",))
SERVING_LOADER = "pipeline.serving"  # the pyfunc loader module inside the logged code


def _bundle_code(path: Path, info: Any) -> None:
    """Copy the ``pipeline`` package into ``path/code`` and make the pyfunc flavor load through it."""
    import shutil

    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.pyfunc import FLAVOR_NAME
    from mlflow.utils.model_utils import FLAVOR_CONFIG_CODE

    package = Path(__file__).resolve().parent
    shutil.copytree(package, path / "code" / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info.flavors[FLAVOR_NAME].update({"loader_module": SERVING_LOADER, FLAVOR_CONFIG_CODE: "code"})
    info.save(str(path / MLMODEL_FILE_NAME))


def log_model(
    run_id: str,
    model: Any,
    example: Mapping[str, Any],
    output: Any,
    folder: str = "model",
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Log ``model`` as an MLflow model (keras flavor, signature, input example) in the run's ``folder/``; return its URI.

    ``example`` is one batch of the model's named inputs (what ``train.model_inputs``
    returns), ``output`` the model's prediction on it. Saved into a temporary
    folder, uploaded as run artifacts and recorded in the run's
    ``mlflow.log-model.history`` tag (as MLflow 2's ``log_model`` did): the
    run page's Artifacts tab then shows the model schema and the input example
    under ``model``, the runs table's "Models" column the model, and
    ``runs:/<run>/model`` loads it. Not
    ``mlflow.keras.log_model``: in MLflow 3.17 it writes the input example
    before it creates the model folder (FileNotFoundError ``.../input_example.json``),
    and its LoggedModel would hold a second copy of ``model.keras`` outside
    the run. Requirements are pinned from the installed packages instead of
    MLflow's inference (which loads the model again in a subprocess); the
    serving check is not run: Keras's ``predict`` cannot take NumPy string
    arrays (the zip codes), the pipeline feeds them through ``tf.data``.

    Self-contained: the ``pipeline`` package travels in the model's ``code/``
    folder (MLflow's ``code_paths``, which the keras flavor's ``save_model``
    lacks) and the pyfunc flavor loads through :data:`SERVING_LOADER`, which
    registers the project's layers (``SeedCNN``, flip TTA, the log-price
    output) and feeds the inputs through ``tf.data`` as evaluate does. So
    ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work from any
    folder, without the project installed. ``metadata`` (the variant's
    resolved config) goes into the MLmodel file; ``predict --model`` reads it.
    """
    _mlflow()  # the tracking URI
    import tempfile

    import mlflow.keras
    from mlflow.models import Model
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS

    start = time.perf_counter()
    info = Model(artifact_path=folder, run_id=run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / folder
        path.mkdir()
        mlflow.keras.save_model(
            model,
            str(path),
            mlflow_model=info,
            signature=signature(example, output),
            input_example=dict(example),
            pip_requirements=[pin for names in SERVING_REQUIREMENTS for pin in _pinned(*names)],
            metadata=dict(metadata) if metadata else None,
        )
        _bundle_code(path, info)
        log_artifact(run_id, path, folder)  # spooled (copied) in an outage: the folder is temporary
    set_tags(run_id, {MLFLOW_LOGGED_MODELS: json.dumps([info.get_tags_dict()])})
    uri = f"runs:/{run_id}/{folder}"
    log.info("MLflow model %s logged in %.1f s", uri, time.perf_counter() - start)
    return uri


# The runs table of MLflow 3.17's UI hides every metric column until the user
# picks it ("Columns"); its state lives in the browser's local storage. A
# shared view (experiment tag ``mlflow.sharedViewState.<key>``, opened by
# ``#/experiments/<id>/runs?viewStateShareKey=<key>``) sets it from the URL:
# each experiment gets one showing its key metric, best run first (`make ui` prints the URLs).
VIEW_KEY = "key-metric"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def set_runs_view(run_id: str, metric: str, higher_is_better: bool) -> None:
    """Tag the run's experiment with the shared view showing ``metric`` as a column, sorted best first.

    The columns: the logged model and ``metric`` (the UI's default Source and
    Dataset columns are empty for these runs and take the width).
    """
    column = f"metrics.`{metric}`"
    columns = ["attributes.`Models`", column]  # columnOrder: the UI applies columnWidths only to the columns it orders
    view = {
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {column: 160},
        "orderByKey": column,
        "orderByAsc": not higher_is_better,
    }
    _send(run_id, {"op": "experiment_tag", "key": VIEW_TAG, "value": json.dumps(view)})


def ui_urls(base: str) -> dict[str, str]:
    """Experiment name -> the URL of its runs table (with the key-metric view where evaluate set one)."""
    mlflow = _mlflow()
    out = {}
    for experiment in mlflow.MlflowClient().search_experiments():
        url = f"{base.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs"
        out[experiment.name] = url + (f"?viewStateShareKey={VIEW_KEY}" if VIEW_TAG in experiment.tags else "")
    return out


def finish(run_id: str, status: str = "FINISHED") -> None:
    """Mark the run finished (or FAILED, KILLED); a run that spooled calls tries to replay them now."""
    _send(run_id, {"op": "terminate", "status": status, "end_time": int(time.time() * 1000)})
    if run_id in _outage:
        _, left = sync()
        if run_id in left:
            log.warning(
                "run %s: its tracking calls wait in %s; replay them with `python -m pipeline tracking sync`",
                run_id,
                spool_folder() / run_id,
            )


def file_md5(path: Path) -> str:
    """md5 of a file (DVC's hash of it, so a revision's ``models/<variant>/model.keras`` names its run)."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tag_model(run_id: str, model_file: Path) -> None:
    """Tag the run with ``model_file``'s md5 (:data:`MODEL_TAG`), so :func:`model_run` finds it from the file alone."""
    set_tags(run_id, {MODEL_TAG: file_md5(model_file)})


def spooled_calls(start: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run id -> its calls waiting in the spool of the project holding ``start``."""
    folder = spool_folder(start)
    out = {}
    for run_id in spool.pending(folder):
        with spool.locked(folder, run_id):  # never half a record being appended
            out[run_id] = spool.records(folder, run_id) if (folder / run_id / spool.RECORDS).is_file() else []
    return out


def _spooled_run_with(tag: str, value: str, start: Path | None = None) -> str | None:
    """A run whose spooled calls set ``tag`` to ``value``, or None."""
    found = (run for run, calls in spooled_calls(start).items() if any(c.get("tags", {}).get(tag) == value for c in calls))
    return next(found, None)


def find_model_run(stage: str, md5: str, dataset: str, start: Path | None = None) -> str | None:
    """The newest run of ``stage`` (``train@<variant>``) tagged with model file md5 ``md5``, or None.

    Looks in the store of the project holding ``start`` (default: the current
    folder) and creates nothing: no store file, no experiment, no run gives None.
    A run whose model tag still waits in the spool (the store failed its
    replay) is found there: the next stage never takes it for a run DVC
    restored, and never makes a second run for one model.
    """
    if spooled := _spooled_run_with(MODEL_TAG, md5, start):
        return spooled
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (project_root(start) / STORE).is_file():
        return None
    client = _mlflow(start).MlflowClient()
    experiment = client.get_experiment_by_name(dataset)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        f"tags.`dvc.stage` = '{stage}' and tags.`{MODEL_TAG}` = '{md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def model_run(folder: Path, variant: str, dataset: str) -> str:
    """The run that trained ``folder/model.keras`` (:func:`find_model_run`); a new run when the store has none.

    DVC may have restored the folder from its cache or run cache, trained
    under another store (a fresh clone, a CI cache, another tracking URI):
    then a new run in the dataset's experiment, tagged like a train run (git,
    data hash) and with the model's resolved config as params, and one log
    line that says why.
    """
    md5 = file_md5(folder / "model.keras")
    stage = f"train@{variant}"
    run_id = find_model_run(stage, md5, dataset)
    if run_id:
        return run_id
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    tags = {**git_tags(), "data.hash": data_hash(Path("dvc.lock"), dataset), "dataset": dataset}
    run_id = start(variant, dataset, {**tags, "dvc.stage": stage, MODEL_TAG: md5, "model.restored": "true"}, config)
    finish(run_id)  # like a train run: evaluate logs into it after it ended
    log.info(
        "%s: no run in %s trained %s (md5 %s; restored by DVC?); logging into new run %s",
        variant,
        _mlflow().get_tracking_uri(),
        folder / "model.keras",
        md5,
        run_id,
    )
    return run_id


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline tracking {sync,uri,artifacts,urls}``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline tracking", description="The project's tracking store.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sync", help="replay the calls a tracking outage spooled (logs/tracking-spool) into their stores")
    commands.add_parser("uri", help="the store the pipeline logs into, from any worktree or DVC copy of the project")
    commands.add_parser("artifacts", help="the default store's artifact folder")
    urls = commands.add_parser("urls", help="each experiment's runs-table URL in the MLflow UI at BASE")
    urls.add_argument("base", nargs="?", default="http://127.0.0.1:5000")
    args = parser.parse_args(argv)
    if args.command == "sync":
        sent, left = sync()
        print(f"replayed {sent} tracking calls; {len(left)} runs still spooled in {spool_folder()}")
        if left:
            raise PipelineError(
                f"{spool_folder()}: {len(left)} runs could not be replayed yet ({', '.join(left)}); see the warnings above"
            )
    elif args.command == "uri":
        print(tracking_uri())
    elif args.command == "artifacts":
        print(project_root() / ARTIFACTS)
    else:
        for experiment, url in ui_urls(args.base).items():
            print(f"{experiment}: {url}")
