"""A durable queue of tracking calls that could not be delivered: one folder per MLflow run.

When the tracking server is unreachable, refusing or hanging once a stage has
begun, :mod:`pipeline.tracking` writes each call it could not make as one
JSON line of ``<spool>/<run id>/records.jsonl`` (files to upload are copied
into ``<spool>/<run id>/files/`` first, since the originals may be temporary),
and training goes on. :func:`pipeline.tracking.sync` replays the records in
order and removes the folder once all of them went through. Plain files, no
MLflow: the spool lives in the project's ``logs/`` (not a DVC output, never
hashed) and survives the process.

Each record carries the tracking URI it was meant for, so a replay goes to
that store whatever the environment says later. Appends are flushed and
fsynced line by line; a line cut short by a kill is skipped at replay with a
warning. An ``flock`` on ``<spool>/<run id>.lock`` (kept, so every process
locks the same file) orders appends and replays of one run: a replay never
reads half a record, and two stages starting at once never send one twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECORDS = "records.jsonl"
FILES = "files"


@contextmanager
def locked(spool: Path, run_id: str, wait: bool = True) -> Iterator[bool]:
    """Hold the run's lock; yields False (holding nothing) when ``wait`` is False and another process holds it."""
    spool.mkdir(parents=True, exist_ok=True)
    with (spool / f"{run_id}.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append(spool: Path, run_id: str, record: dict[str, Any], path: Path | None = None) -> None:
    """Queue ``record`` for ``run_id``; ``path`` (a file or folder to upload) is copied into the spool and named in it."""
    folder = spool / run_id
    with locked(spool, run_id):
        folder.mkdir(exist_ok=True)
        if path is not None:
            n = len(list((folder / FILES).glob("*"))) if (folder / FILES).exists() else 0
            copy = folder / FILES / f"{n:04d}" / path.name
            copy.parent.mkdir(parents=True)
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, copy)
            record = {**record, "path": str(copy.relative_to(folder))}
        with (folder / RECORDS).open("a") as out:
            out.write(json.dumps(record, allow_nan=True) + "\n")  # NaN metrics stay NaN: MLflow stores them
            out.flush()
            os.fsync(out.fileno())


def pending(spool: Path) -> list[str]:
    """The run ids with queued records, oldest folder first."""
    if not spool.is_dir():
        return []
    runs = [d for d in spool.iterdir() if (d / RECORDS).is_file()]
    return [d.name for d in sorted(runs, key=lambda d: d.stat().st_mtime)]


def records(spool: Path, run_id: str) -> list[dict[str, Any]]:
    """The run's queued records in order, with ``path`` made absolute; an unreadable line (a kill mid-append) is skipped."""
    folder = spool / run_id
    out = []
    for number, line in enumerate((folder / RECORDS).read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s line %d: not a whole record (cut short by a kill?); skipped", folder / RECORDS, number)
            continue
        if "path" in record:
            record["path"] = str(folder / record["path"])
        out.append(record)
    return out


def remove(spool: Path, run_id: str) -> None:
    """Drop the run's queue once every record was delivered (call it holding :func:`locked`)."""
    shutil.rmtree(spool / run_id, ignore_errors=True)
