"""Start and stop the stack's processes: one process group each, a PID file each, readiness polled with a deadline.

Each service starts in its own session (``start_new_session``), so stopping
it signals the whole group: the MLflow server's uvicorn workers, Dask's
nannies and PostgreSQL's backends go with their parent. A PID file whose
process is gone, or whose PID now belongs to another program, is stale.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.stack.layout import Layout, port_in_use
from pipeline.stack.services import Service

log = logging.getLogger(__name__)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running_pid(layout: Layout, service: Service) -> int | None:
    """The PID in the service's PID file if that process is alive and is this service; else None (stale files removed)."""
    path = layout.pid(service.name)
    if not path.exists():
        return None
    text = path.read_text().strip()
    pid = int(text) if text.isdigit() else 0
    if pid and service.binary in _cmdline(pid):
        return pid
    log.warning("%s: stale PID file %s (pid %s is not %s): removed", service.name, path, text or "?", service.binary)
    path.unlink()
    return None


def since(layout: Layout, service: str) -> str:
    """When the service was started (its PID file's time), in UTC."""
    stamp = layout.pid(service).stat().st_mtime
    return datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def start(layout: Layout, service: Service, ready: Callable[[], bool], timeout: float) -> int:
    """Start ``service`` unless it runs; wait until ``ready()`` or fail (naming the log) when it exits or the deadline passes."""
    pid = running_pid(layout, service)
    if pid is not None:
        log.info("%s: already running (pid %d)", service.name, pid)
        return pid
    busy = [port for port in service.ports if port_in_use(port)]
    if busy:
        raise PipelineError(
            f"{service.name}: port {', '.join(map(str, busy))} on 127.0.0.1 is in use by another process; "
            f"stop it, or choose ports with `stack up --port NAME=N` / `--free-ports` (ports are kept in {layout.config})"
        )
    logfile = layout.log(service.name)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    layout.pid(service.name).parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            service.argv,
            cwd=service.cwd,
            env={**os.environ, **service.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    layout.pid(service.name).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            layout.pid(service.name).unlink(missing_ok=True)
            raise PipelineError(
                f"{service.name} exited with code {proc.returncode} while starting: see {logfile}\n{_tail(logfile)}"
            )
        if time.monotonic() > deadline:
            stop(layout, service)
            raise PipelineError(
                f"{service.name} was not ready after {timeout:.0f} s and was stopped: see {logfile}\n{_tail(logfile)}"
            )
        time.sleep(0.25)
    log.info("%s: started (pid %d)", service.name, proc.pid)
    return proc.pid


def group_rss_mb(pid: int) -> float:
    """Resident memory of every process in the group ``pid`` leads (the server with its workers), in MB."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:  # field 5 of stat, the process group
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24, rss in pages
    return total / 2**20


def _tail(path: Path, lines: int = 8) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _group_alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap the leader if this process started it, or a dead leader counts as alive
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(layout: Layout, service: Service) -> bool:
    """Signal the service's process group, SIGKILL it after its grace period; remove the PID file. False if not running."""
    pid = running_pid(layout, service)
    if pid is None:
        return False
    try:
        os.killpg(pid, getattr(signal, service.stop_signal))
        deadline = time.monotonic() + service.grace
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pid):
            log.info("%s: still running after %.0f s: SIGKILL", service.name, service.grace)
            os.killpg(pid, signal.SIGKILL)
            while _group_alive(pid):
                time.sleep(0.1)
    except ProcessLookupError:
        pass
    layout.pid(service.name).unlink(missing_ok=True)
    log.info("%s: stopped", service.name)
    return True
