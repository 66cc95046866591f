"""``python -m pipeline sweep``: DVC experiments fanned out over Dask workers, one experiment per task.

Each ``-S`` is one experiment; several overrides of one experiment are
separated by ``;`` inside it (``-S 'a=1; b=2'``). Not by commas: in DVC's own
``-S`` a comma makes a grid of values, and YAML flow values (``[1, 2]``)
hold commas. ``--grid FILE`` reads more from YAML: a list of experiments (each
a mapping ``key: value`` or a string like one ``-S``), or a mapping ``key:
[values]`` expanded as a cartesian product. Every override uses DVC's
(Hydra's) syntax: ``key=value`` for a key params.yaml has, ``+key=value`` to
add one, ``++key=value`` for either, ``~key`` to delete one.

A task (:func:`run_experiment`) runs in a Dask worker: it clones the commit
from the git remote ``origin``, ``dvc pull``\\ s what the DVC remote has, runs
``dvc exp run -n <name> -S ...`` and ``dvc exp push origin <name>``, and
returns the experiment's metrics and the tail of its log; what a restarting
server fails (the object store, the tracking server) it retries with backoff,
and tracking calls it could not replay travel back to the client's spool
(:func:`take_spool`). The worker's clone
is a temporary folder, so the tracking store must be shared: ``MLFLOW_TRACKING_URI``
must name a server or an absolute database path; it, the credentials
(``MLFLOW_*``, ``AWS_*``, ``DVC_*``, ``PIPELINE_*``) and ``.dvc/config.local``
travel with the task. The scheduler is
``--scheduler`` or ``DASK_SCHEDULER_ADDRESS`` (``.stack/env`` of ``python -m
pipeline stack up`` sets both). More: docs/sweep.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pipeline import paths, spool, tracking
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

# [file:](~|+|++)key.path[=value]; DVC passes the rest to Hydra, which checks the value
OVERRIDE = re.compile(
    r"^(?:[\w.-]+\.ya?ml:)?(?P<op>~|\+\+|\+)?(?P<key>[A-Za-z_][\w-]*(?:\.[\w-]+|\[\d+\])*)(?:(?P<eq>=)(?P<value>.*))?$"
)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a git ref component, as DVC names experiments
FORWARD_PREFIXES = ("MLFLOW_", "AWS_", "DVC_", "PIPELINE_", "GIT_AUTHOR_", "GIT_COMMITTER_")
FORWARD_NAMES = ("GX_ANALYTICS_ENABLED", "DO_NOT_TRACK", "PYTHONHASHSEED", "TF_CPP_MIN_LOG_LEVEL")
SHARED_DATABASES = ("postgresql", "mysql", "mssql")  # a database server: shared like an HTTP tracking server
TAIL_LINES = 40
# A restarting tracking server or object store is back in seconds: a task retries what failed on it with backoff for
# up to this long (PIPELINE_SWEEP_RETRY_S) before giving up, rather than raising and retraining the whole experiment.
RETRY_WINDOW_S = 180.0
BACKOFF_S = (2.0, 30.0)  # the first wait, doubled each time up to the second
# What a stage prints when the tracking server went away under it (pipeline.tracking's probe: unreachable, or a 5xx
# while its database restarts; MLflow's REST client after its retries).
OUTAGE = re.compile(r"tracking server \S+ (?:is unreachable|answered 5\d\d)|Max retries exceeded with url: /api/2\.0/mlflow")


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment of a sweep: its name and its overrides (``dvc exp run -S`` each)."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """What every task of one sweep starts from: the git remote, the commit, the forwarded environment, DVC's local config."""

    url: str
    commit: str
    env: dict[str, str]
    dvc_local: str = ""  # the client's .dvc/config.local (the DVC remote's endpoint, keys): a clone has none


@dataclass
class Outcome:
    """What one task gives back: success, metrics (variant -> metric -> value), the log's tail."""

    name: str
    overrides: tuple[str, ...]
    ok: bool
    seconds: float = 0.0
    worker: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str = ""
    log_tail: str = ""
    spool: bytes = b""  # the clone's tracking spool (pack_spool) when it could not be replayed from the worker


# --- parsing ---------------------------------------------------------------------------------------------------


def check_override(text: str, where: str) -> str:
    """One override, stripped, if it reads as ``[~|+|++]key[=value]`` (``=`` required except with ``~``)."""
    text = text.strip()
    match = OVERRIDE.match(text)
    if not match:
        raise PipelineError(f"{where}: {text!r} is no override (expected key=value, +key=value, ++key=value or ~key)")
    if match["op"] != "~" and not match["eq"]:
        raise PipelineError(f"{where}: {text!r} has no '=value' (only ~key deletes without one)")
    return text


def split_overrides(text: str, where: str) -> tuple[str, ...]:
    """The overrides of one experiment: ``text`` split at ``;`` (empty parts dropped), each checked."""
    found = tuple(check_override(part, where) for part in text.split(";") if part.strip())
    if not found:
        raise PipelineError(f"{where}: no override in {text!r}")
    return found


def render(value: Any) -> str:
    """A YAML value as Hydra reads it on the command line (``0.003``, ``adam``, ``[1, 2]``, ``null``)."""
    dumped = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return dumped.removesuffix("...").strip()  # a bare scalar ends its document with "..."


def _from_mapping(item: Mapping[Any, Any], where: str) -> tuple[str, ...]:
    if not item:
        raise PipelineError(f"{where}: an empty experiment")
    return tuple(check_override(f"{key}={render(value)}", where) for key, value in item.items())


def _grid_item(item: Any, where: str) -> tuple[str, ...]:
    if isinstance(item, str):
        return split_overrides(item, where)
    if isinstance(item, Mapping):
        return _from_mapping(item, where)
    raise PipelineError(f"{where}: an experiment is a mapping key: value or a string 'key=value; ...', got {item!r}")


def parse_grid(text: str, source: str = "grid") -> list[tuple[str, ...]]:
    """The experiments of a grid file: a YAML list (one experiment per item) or a mapping ``key: [values]`` (product).

    Errors name ``source`` and the line of the culprit.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PipelineError(f"{source}: empty; expected a list of experiments or a mapping key: [values]")
        if isinstance(node, yaml.SequenceNode):
            return [_grid_item(loader.construct_object(n, deep=True), f"{source}:{n.start_mark.line + 1}") for n in node.value]
        if isinstance(node, yaml.MappingNode):
            return _product(node, loader, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise PipelineError(f"{source}{line}: not YAML ({getattr(exc, 'problem', None) or exc})") from exc
    finally:
        loader.dispose()
    raise PipelineError(f"{source}: expected a list of experiments or a mapping key: [values]")


def _product(node: yaml.MappingNode, loader: yaml.SafeLoader, source: str) -> list[tuple[str, ...]]:
    axes = []
    for key_node, value_node in node.value:
        where = f"{source}:{key_node.start_mark.line + 1}"
        key, values = loader.construct_object(key_node, deep=True), loader.construct_object(value_node, deep=True)
        values = values if isinstance(values, list) else [values]
        if not values:
            raise PipelineError(f"{where}: {key}: an empty list of values")
        axes.append([check_override(f"{key}={render(v)}", where) for v in values])
    return [tuple(combo) for combo in itertools.product(*axes)]


def _lookup(params: Any, key: str) -> bool:
    node = params
    for part in re.findall(r"[^.\[\]]+", key):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def check_keys(sets: Sequence[tuple[str, ...]], params: Mapping[str, Any]) -> None:
    """Fail before any task starts where Hydra would: ``key=`` / ``~key`` of a key params.yaml lacks, ``+key=`` of one it has."""
    for i, overrides in enumerate(sets, start=1):
        for text in overrides:
            match = OVERRIDE.match(text)
            assert match  # checked by check_override
            has = _lookup(params, match["key"])
            if match["op"] in (None, "~") and not has:
                raise PipelineError(f"experiment {i}: {match['key']}: no such key in params.yaml (prefix '++' to add it)")
            if match["op"] == "+" and has:
                raise PipelineError(f"experiment {i}: {match['key']}: params.yaml has it already (use '++' to override)")


def name_experiments(sets: Sequence[tuple[str, ...]], prefix: str) -> list[Experiment]:
    """``<prefix>-1``, ``<prefix>-2``, ...; a prefix that cannot name a git ref fails."""
    if not NAME.match(prefix):
        raise PipelineError(f"--name {prefix!r}: letters, digits, '_', '.', '-' only, starting with a letter or digit")
    return [Experiment(f"{prefix}-{i}", tuple(overrides)) for i, overrides in enumerate(sets, start=1)]


# --- environment -----------------------------------------------------------------------------------------------


def check_tracking_uri(uri: str | None) -> str:
    """``uri`` if every worker logs into the same store with it: an HTTP(S) server, a database server, an absolute sqlite path."""
    if not uri:
        raise PipelineError(
            "MLFLOW_TRACKING_URI is not set: a worker's clone would log into its own mlflow.db; "
            "point it at the shared tracking server (source .stack/env) or an absolute sqlite:////path"
        )
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("http", "https") or (scheme in SHARED_DATABASES and "://" in uri):
        return uri
    if scheme == "sqlite" and uri.startswith("sqlite:////"):
        return uri
    raise PipelineError(
        f"MLFLOW_TRACKING_URI={uri!r}: every worker must reach the same store; "
        "use http(s)://server, a database server or an absolute sqlite:////path"
    )


def task_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a task needs from here (tracking URI and credentials, DVC remote keys), the URI checked."""
    check_tracking_uri(environ.get("MLFLOW_TRACKING_URI"))
    return {k: v for k, v in environ.items() if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise PipelineError(f"git {' '.join(args)} in {root}: {done.stderr.strip() or 'failed'}")
    return done.stdout.strip()


def source(root: Path, env: dict[str, str]) -> Source:
    """The :class:`Source` of a sweep from the repository at ``root``: ``origin``'s URL (absolute where it is a path), HEAD.

    ``.dvc/config.local`` travels too: ``python -m pipeline stack up`` writes
    the S3 endpoint there when it differs from the committed one, and DVC
    remote credentials may live there.
    """
    url = _git(root, "remote", "get-url", "origin")
    if "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url):  # a local path, relative to the repository
        url = str((root / url).resolve())
    commit = _git(root, "rev-parse", "HEAD")
    if _git(root, "status", "--porcelain", "--untracked-files=no"):
        log.warning("uncommitted changes are not part of the sweep: the workers clone commit %s", commit[:12])
    local = root / ".dvc" / "config.local"
    return Source(url, commit, env, local.read_text() if local.is_file() else "")


# --- the task (runs in a Dask worker) --------------------------------------------------------------------------


def _step(command: list[str], cwd: Path, env: Mapping[str, str], logfile: Path) -> int:
    with logfile.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        return subprocess.run(command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT).returncode


def with_backoff(attempt: Callable[[], bool], what: str, window: float, transient: Callable[[], bool] = lambda: True) -> bool:
    """Call ``attempt`` until it succeeds, waiting 2, 4, 8 ... 30 s between tries, for up to ``window`` seconds.

    ``transient`` says, after a failure, whether trying again can help; when it
    says no, or the next wait would pass the window, the answer is False.
    """
    deadline, wait = time.monotonic() + window, BACKOFF_S[0]
    while True:
        if attempt():
            return True
        if not transient() or time.monotonic() + wait > deadline:
            return False
        log.warning("%s failed; trying again in %.0f s", what, wait)  # a warning: Dask's worker logs show no info
        time.sleep(wait)
        wait = min(2 * wait, BACKOFF_S[1])


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ("" when it is missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _metrics(clone: Path) -> dict[str, dict[str, float]]:
    try:
        return json.loads((clone / paths.METRICS_SUMMARY).read_text())
    except (OSError, ValueError):
        return {}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):  # called outside a Dask worker (tests, a debugger)
        return socket.gethostname()


def pack_spool(folder: Path) -> bytes:
    """The run folders of the tracking spool ``folder`` with calls queued, as a gzipped tar (b"" when none)."""
    runs = spool.pending(folder)
    if not runs:
        return b""
    with tempfile.TemporaryFile() as buffer:
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for run_id in runs:
                with spool.locked(folder, run_id):  # never half an append
                    tar.add(folder / run_id, arcname=run_id)
        buffer.seek(0)
        return buffer.read()


def adopt_spool(data: bytes, folder: Path) -> list[str]:
    """Unpack a :func:`pack_spool` into the spool ``folder`` beside its own runs; the run ids it added.

    A run already there is left as it is (a run id is written by one process
    only: the same folder twice is one queue adopted twice).
    """
    folder.mkdir(parents=True, exist_ok=True)
    added = []
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".spool-incoming-") as tmp:
        with tempfile.TemporaryFile() as buffer:
            buffer.write(data)
            buffer.seek(0)
            with tarfile.open(fileobj=buffer, mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")  # no absolute paths, links out or devices: it came over the network
        for run in sorted(Path(tmp).iterdir()):
            with spool.locked(folder, run.name):
                if (folder / run.name).exists():
                    log.warning("tracking spool %s: already here; the copy from the sweep was dropped", folder / run.name)
                    continue
                run.rename(folder / run.name)
            added.append(run.name)
    return added


def _retry_window(env: Mapping[str, str]) -> float:
    try:
        return float(env.get("PIPELINE_SWEEP_RETRY_S", RETRY_WINDOW_S))
    except ValueError:
        raise PipelineError(f"PIPELINE_SWEEP_RETRY_S={env['PIPELINE_SWEEP_RETRY_S']!r}: not a number of seconds") from None


def _exp_run(exp: Experiment, clone: Path, env: Mapping[str, str], logfile: Path, window: float) -> bool:
    """``dvc exp run``, run again while the tracking server is away: a stage that starts in its restart fails.

    DVC reruns only the stages that did not complete (the others are in the
    workspace's dvc.lock), so the run of a stage that trained is not repeated.
    """
    sets = [arg for o in exp.overrides for arg in ("-S", o)]
    command = [sys.executable, "-m", "dvc", "exp", "run", "--name", exp.name, *sets]
    begun = [0]

    def attempt() -> bool:
        begun[0] = logfile.stat().st_size
        return not _step(command, clone, env, logfile)

    def outage() -> bool:
        with logfile.open(errors="replace") as text:
            text.seek(begun[0])
            return bool(OUTAGE.search(text.read()))

    return with_backoff(attempt, f"{exp.name}: dvc exp run (tracking server away)", window, outage)


def _replay_spool(exp: Experiment, clone: Path, env: Mapping[str, str], logfile: Path, window: float) -> bytes:
    """Replay the tracking calls an outage spooled in the clone; what is still queued after ``window``, packed."""
    queue = clone / tracking.SPOOL
    if not spool.pending(queue):
        return b""
    sync = [sys.executable, "-m", "pipeline", "tracking", "sync"]  # the clone's code, as its stages ran
    if with_backoff(lambda: not _step(sync, clone, env, logfile), f"{exp.name}: tracking sync", window):
        return b""
    log.warning(
        "%s: tracking calls of runs %s not replayed in %.0f s: sent back to the client", exp.name, spool.pending(queue), window
    )
    return pack_spool(queue)


def run_experiment(exp: Experiment, src: Source) -> Outcome:
    """The Dask task: clone ``src.commit`` of ``src.url``, pull, ``dvc exp run`` ``exp``, push it to ``origin``; clean up.

    A failed ``dvc exp run`` is an outcome (ok false, with the log's tail),
    not an exception, so Dask does not retry it; a failed clone or push raises,
    and Dask retries the task (``retries``). Steps that fail while a server
    restarts are retried here first, with backoff (:data:`RETRY_WINDOW_S`): the
    pull and the push (the object store), ``dvc exp run`` when the tracking
    server was away, the replay of the clone's tracking spool; a spool still
    queued after that travels back in the outcome. The subprocesses run this
    worker's Python (the venv) with the forwarded ``src.env`` on top of its own.
    """
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"pipeline-sweep-{exp.name}-"))
    clone, logfile = tmp / "repo", tmp / "sweep.log"
    venv_bin = str(Path(sys.executable).parent)
    path = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    # the tracking defaults bound the requests of the spool's replay too (`tracking sync` does not set them itself)
    full_env = {**tracking.HTTP_DEFAULTS, **os.environ, **src.env, "PATH": path, "DVC_NO_ANALYTICS": "1"}
    window = _retry_window(full_env)
    dvc = [sys.executable, "-m", "dvc"]
    outcome = Outcome(exp.name, exp.overrides, ok=False, worker=_worker_name())
    keep = False
    try:
        for command in (["git", "clone", "--quiet", src.url, str(clone)], ["git", "checkout", "--quiet", "--detach", src.commit]):
            if _step(command, clone if clone.is_dir() else tmp, full_env, logfile):
                raise RuntimeError(f"{exp.name}: {' '.join(command[:2])} failed\n{tail(logfile)}")
        if src.dvc_local:
            (clone / ".dvc" / "config.local").write_text(src.dvc_local)
        if _step(["git", "config", "user.email"], clone, full_env, logfile):  # dvc exp run commits: it needs an identity
            _step(["git", "config", "user.name", "pipeline sweep"], clone, full_env, logfile)
            _step(["git", "config", "user.email", "sweep@localhost"], clone, full_env, logfile)
        pull = [*dvc, "pull", "--allow-missing"]
        if not with_backoff(lambda: not _step(pull, clone, full_env, logfile), f"{exp.name}: dvc pull", window):
            log.info("%s: dvc pull incomplete; dvc exp run rebuilds what is missing", exp.name)  # the remote may lack outputs
        ran = _exp_run(exp, clone, full_env, logfile, window)
        outcome.spool = _replay_spool(exp, clone, full_env, logfile, window)  # a failed run's calls count too
        push = [*dvc, "exp", "push", "origin", exp.name]
        if not ran:
            outcome.error = "dvc exp run failed"
        elif not with_backoff(lambda: not _step(push, clone, full_env, logfile), f"{exp.name}: dvc exp push", window):
            keep = bool(outcome.spool)  # the outcome (and the spool in it) is lost with the exception: keep the clone's
            if keep:
                log.warning("%s: tracking calls left in %s: run `python -m pipeline tracking sync` there", exp.name, clone)
            raise RuntimeError(f"{exp.name}: dvc exp push origin failed\n{tail(logfile)}")
        else:
            outcome.ok, outcome.metrics = True, _metrics(clone)
        outcome.log_tail = tail(logfile)
        outcome.seconds = time.perf_counter() - start
        return outcome
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


# --- the client ------------------------------------------------------------------------------------------------


def scheduler_address(given: str | None, environ: Mapping[str, str]) -> str:
    """``--scheduler``, else ``DASK_SCHEDULER_ADDRESS``; neither is an error that says where to get one."""
    address = given or environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        raise PipelineError(
            "no Dask scheduler: pass --scheduler tcp://HOST:PORT or set DASK_SCHEDULER_ADDRESS "
            "(python -m pipeline stack up writes it to .stack/env)"
        )
    return address


def sweep(address: str, experiments: Sequence[Experiment], src: Source, retries: int) -> list[Outcome]:
    """Submit one task per experiment, log each as it finishes; the outcomes in the experiments' order."""
    from distributed import Client, as_completed

    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise PipelineError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    with client:
        workers = len(client.scheduler_info().get("workers", {}))
        log.info("%d experiments of commit %s on %d Dask workers at %s", len(experiments), src.commit[:12], workers, address)
        futures = {
            client.submit(run_experiment, exp, src, key=f"sweep-{exp.name}", retries=retries, pure=False): exp
            for exp in experiments
        }
        outcomes: dict[str, Outcome] = {}
        for done, future in enumerate(as_completed(futures), start=1):
            exp = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a task that raised after its retries, or lost its workers: report it, keep the others
                outcome = Outcome(exp.name, exp.overrides, ok=False, error=f"{type(exc).__name__}: {exc}".strip())
            outcomes[exp.name] = outcome
            if outcome.spool:
                take_spool(outcome)
            state = "done" if outcome.ok else "FAILED"
            log.info(
                "[%d/%d] %s %s (%.0f s on %s)", done, len(experiments), exp.name, state, outcome.seconds, outcome.worker or "?"
            )
    return [outcomes[exp.name] for exp in experiments]


def take_spool(outcome: Outcome, start: Path | None = None) -> list[str]:
    """Put a task's unreplayed tracking calls into this project's spool and try to replay them; the runs still queued.

    They were spooled in the worker's clone, which is gone: here, ``python -m
    pipeline tracking sync`` (or the next stage) replays what the server refused now.
    """
    folder = tracking.spool_folder(start)
    runs = adopt_spool(outcome.spool, folder)
    outcome.spool = b""
    log.info("%s: tracking calls of runs %s taken into %s", outcome.name, ", ".join(runs), folder)
    _, left = tracking.sync(start)
    if left:
        log.warning(
            "%s: tracking calls of runs %s wait in %s: run `python -m pipeline tracking sync` once the server is back",
            outcome.name,
            ", ".join(left),
            folder,
        )
    return left


def key_metrics(outcome: Outcome) -> str:
    """``variant metric value`` of each variant the overrides name (of all variants when they name none)."""
    from pipeline.metrics import TASKS

    named = {m.group(1) for o in outcome.overrides if (m := re.search(r"variants\.([\w-]+)", o))}
    shown = []
    for variant, values in sorted(outcome.metrics.items()):
        if named and variant not in named:
            continue
        key = next((k for k, _ in TASKS.values() if k in values), None)
        if key is not None:
            shown.append(f"{variant} {key} {values[key]:.4g}")
    return ", ".join(shown)


def table(outcomes: Sequence[Outcome]) -> str:
    """A plain-text table: experiment, status, seconds, worker, overrides, key metrics."""
    rows = [("experiment", "status", "time", "worker", "overrides", "key metrics")]
    for o in outcomes:
        status = "ok" if o.ok else "FAILED"
        rows.append(
            (
                o.name,
                status,
                f"{o.seconds:.0f} s",
                o.worker,
                "; ".join(o.overrides),
                key_metrics(o) or (o.error.splitlines() or [""])[0],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def failures(outcomes: Sequence[Outcome]) -> str:
    """Each failed experiment with its error and the tail of its log."""
    parts = []
    for o in outcomes:
        if not o.ok:
            parts.append(f"--- {o.name} failed: {o.error}\n{o.log_tail}".rstrip())
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline sweep -S OVERRIDES [-S ...] [--grid FILE] [--scheduler ADDR] [--name PREFIX] [--retries N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    one = "one experiment: 'key=value[; key=value ...]' (DVC's -S syntax per override)"
    parser.add_argument("-S", "--set", dest="sets", action="append", default=[], metavar="OVERRIDES", help=one)
    parser.add_argument("--grid", type=Path, metavar="FILE", help="YAML: a list of experiments, or key: [values] (product)")
    parser.add_argument("--scheduler", metavar="ADDR", help="Dask scheduler (default: $DASK_SCHEDULER_ADDRESS)")
    parser.add_argument("--name", metavar="PREFIX", help="experiments are PREFIX-1, PREFIX-2, ... (default: sweep-<UTC time>)")
    parser.add_argument("--retries", type=int, default=2, help="Dask retries of a task that raised (clone, push)")
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error(f"--retries {args.retries}: 0 or more")
    sets = [split_overrides(text, f"-S #{i}") for i, text in enumerate(args.sets, start=1)]
    if args.grid is not None:
        try:
            sets += parse_grid(args.grid.read_text(), str(args.grid))
        except OSError as exc:
            raise PipelineError(f"--grid {args.grid}: {exc.strerror}") from exc
    if not sets:
        parser.error("nothing to run: give -S OVERRIDES (one experiment each) or --grid FILE")
    try:
        check_keys(sets, yaml.safe_load(Path("params.yaml").read_text()) or {})
    except OSError as exc:
        raise PipelineError(f"params.yaml: {exc.strerror} (run the sweep from the project's root)") from exc
    prefix = args.name or datetime.now(UTC).strftime("sweep-%Y%m%d-%H%M%S")
    experiments = name_experiments(sets, prefix)
    env = task_env(os.environ)
    _retry_window(env)  # a bad value fails here, not in every task
    address = scheduler_address(args.scheduler, os.environ)
    outcomes = sweep(address, experiments, source(Path.cwd(), env), args.retries)
    print(table(outcomes))
    failed = [o.name for o in outcomes if not o.ok]
    if failed:
        print(failures(outcomes), file=sys.stderr)
        raise PipelineError(f"{len(failed)} of {len(outcomes)} experiments failed: {', '.join(failed)}")
    log.info("pushed to origin: dvc exp pull origin %s, then dvc exp show", " ".join(o.name for o in outcomes))
