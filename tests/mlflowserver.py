"""``mlflow server`` for tests: on 127.0.0.1, a free port, its own process group, ended whole however the test ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.httpserver import free_port

START_TIMEOUT_S = 60


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (MLflow starts job consumers in children), SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; children of the group may linger a moment
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@contextlib.contextmanager
def serve(folder: Path, *store_args: str, port: int | None = None) -> Iterator[str]:
    """``mlflow server`` on ``folder/mlflow.db``; yields the base URL once ``/health`` answers.

    ``store_args`` go to the command line (default: proxied artifacts in
    ``folder/mlartifacts``); ``port`` reuses a port, as a restarted server would.
    """
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = folder / f"mlflow_server_{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        *(sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db"),
        *(store_args or ("--artifacts-destination", str(folder / "mlartifacts"))),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:  # noqa: S310 - 127.0.0.1 only
                    if r.read().decode().strip() == "OK":
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        stop(proc)
