"""The life of a stage's MLflow run: opened or resumed, ended KILLED on SIGTERM / Ctrl-C, FAILED when its process died.

A run is tagged with the process writing it (:func:`process_tags`). A stage
resumed from a checkpoint reopens the run the checkpoint names
(:func:`open_run`, tag :data:`RESUME_TAG`) and logs the epochs it lacks
(:func:`log_history`; :func:`resumable` does all of it around a stage's
training); before that, the RUNNING runs of the same stage whose
process on this host is gone are ended FAILED (:func:`end_dead_runs`, tag
:data:`END_TAG`). :func:`ending` wraps a stage's work: an error ends the run
FAILED, SIGTERM or Ctrl-C KILLED. The calls go through :mod:`pipeline.tracking`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.training import checkpoint

log = logging.getLogger(__name__)

RESUME_TAG = "resume.count"
END_TAG = "end.reason"


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM (a BaseException, like KeyboardInterrupt: no ``except Exception`` swallows it)."""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (``/proc``): with the pid, it tells a reused pid apart; "" elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags() -> dict[str, str]:
    """``process.host``, ``process.pid``, ``process.start``: which process is writing the run."""
    import socket

    return {"process.host": socket.gethostname(), "process.pid": str(os.getpid()), "process.start": _process_start(os.getpid())}


def process_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process named by :func:`process_tags` still runs; None when it ran on another host (or was not tagged)."""
    import socket

    if tags.get("process.host") != socket.gethostname() or not tags.get("process.pid", "").isdigit():
        return None
    pid = int(tags["process.pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return not tags.get("process.start") or _process_start(pid) == tags["process.start"]


def reopen(run_id: str) -> bool:
    """Set the run RUNNING again, tagged with this process and one more :data:`RESUME_TAG`; False if it is gone or deleted."""
    mlflow = tracking._mlflow()
    from mlflow.entities import RunTag

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    if run.info.lifecycle_stage != "active":
        return False
    count = int(run.data.tags.get(RESUME_TAG, "0")) + 1
    client.update_run(run_id, status="RUNNING")
    tags = {**process_tags(), RESUME_TAG: str(count)}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    log.info("MLflow run %s resumed (resume %d) at %s", run_id, count, mlflow.get_tracking_uri())
    return True


def end_dead_runs(stage: str, experiment: str, keep: str | None = None) -> list[str]:
    """End FAILED the RUNNING runs of ``stage`` (tag ``dvc.stage``) whose process on this host is gone; return their ids.

    A process killed with SIGKILL (or a crashed machine) cannot end its run;
    the next start of the same stage does, tagging :data:`END_TAG`. ``keep``
    (the run a checkpoint resumes) is left alone, and so are runs of live
    processes and of other hosts.
    """
    mlflow = tracking._mlflow()
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    running = client.search_runs([found.experiment_id], f"tags.`dvc.stage` = '{stage}' and attributes.status = 'RUNNING'")
    ended = []
    for run in running:
        if run.info.run_id == keep or process_alive(run.data.tags) is not False:
            continue
        tags = run.data.tags
        client.set_tag(run.info.run_id, END_TAG, f"process {tags['process.pid']} on {tags['process.host']} died")
        client.set_terminated(run.info.run_id, "FAILED")
        log.warning("MLflow run %s of %s: its process %s died; ended FAILED", run.info.run_id, stage, tags["process.pid"])
        ended.append(run.info.run_id)
    return ended


def open_run(resumed: str | None, name: str, experiment: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """The run a stage logs into: ``resumed`` (a checkpoint's run) reopened if it still exists, else a new one (:func:`start`).

    First ends the runs of dead processes of the same stage (``tags["dvc.stage"]``, :func:`end_dead_runs`).
    """
    end_dead_runs(tags["dvc.stage"], experiment, keep=resumed)
    if resumed and reopen(resumed):
        return resumed
    return tracking.start(name, experiment, {**tags, **process_tags()}, params)


@contextmanager
def resumable(
    checkpoints: Path, key: str, name: str, experiment: str, tags: Mapping[str, str], params: Mapping[str, Any]
) -> Iterator[tuple[str, Path, checkpoint.State | None]]:
    """A stage's training under its checkpoints: yields (run id, checkpoint folder, the checkpoint to resume or None).

    ``checkpoints/<key>`` is the run's folder (other keys' are stale and go,
    :func:`pipeline.training.checkpoint.folder`); the run is the checkpoint's,
    reopened, or a new one (:func:`open_run`), and gets the epochs a kill left
    unlogged. The block runs under :func:`ending`; when it succeeds the
    checkpoints go, then the run ends FINISHED (a kill in between leaves no
    finished run to resume).
    """
    saved = checkpoint.folder(checkpoints, key)
    resume = checkpoint.load(saved)
    run_id = open_run(resume and resume.run_id, name, experiment, tags, params)
    with ending(run_id):
        if resume:
            log_history(run_id, resume.history)
        yield run_id, saved, resume
        checkpoint.clear(checkpoints)
        tracking.finish(run_id)


def log_history(run_id: str, history: Mapping[str, list[float]]) -> None:
    """Log the epochs of ``history`` (step = epoch) that the run lacks: those a kill left between a checkpoint and its logging."""
    client = tracking._mlflow().MlflowClient()
    logged = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in history}
    for key, steps in _spooled_steps(run_id).items():  # logged, not yet replayed (the store failed the replay)
        logged.get(key, set()).update(steps)
    for step in range(max(map(len, history.values()), default=0)):
        missing = {k: v[step] for k, v in history.items() if step < len(v) and step not in logged[k]}
        if missing:
            tracking.log_metrics(run_id, missing, step=step)


def _spooled_steps(run_id: str) -> dict[str, set[int]]:
    """Metric key -> the steps the run's spool holds."""
    steps: dict[str, set[int]] = {}
    for record in tracking.spooled_calls().get(run_id, []):
        for key, _, _, step in record.get("metrics", []):
            steps.setdefault(key, set()).add(step)
    return steps


# Raising in the middle of a store call can leave an sqlite write transaction open (the KILLED status could then not
# be written: "database is locked"); the signal is sent again shortly instead, until it lands outside these modules.
_UNINTERRUPTIBLE = ("mlflow", "sqlalchemy", "sqlite3")


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM / SIGINT handler: raise :class:`Terminated` / KeyboardInterrupt, unless inside a tracking store call."""
    import signal
    import threading

    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(_UNINTERRUPTIBLE):
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        frame = frame.f_back
    raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def ending(run_id: str) -> Iterator[None]:
    """Around a stage's work on ``run_id``: an error ends it FAILED, SIGTERM or Ctrl-C KILLED (then exit 143 / 130).

    SIGTERM raises :class:`Terminated` in the main thread meanwhile, so the
    stage unwinds as on Ctrl-C (checkpoints stay: a rerun resumes); neither
    interrupts a tracking store call (:func:`_interrupt`).
    """
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = {n: signal.signal(n, _interrupt) for n in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        yield
    except (KeyboardInterrupt, Terminated) as exc:
        name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("SIGINT", 130)
        tracking.set_tags(run_id, {END_TAG: f"interrupted by {name}"})
        tracking.finish(run_id, "KILLED")
        log.error("interrupted by %s: MLflow run %s ended KILLED; rerun to resume from the last checkpoint", name, run_id)
        raise SystemExit(code) from None
    except BaseException:
        tracking.finish(run_id, "FAILED")
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
