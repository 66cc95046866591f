"""``python -m pipeline sweep`` of 4 demo experiments on 2 Dask workers against 1: the wall-clock ratio.

Builds a throw-away team set-up on 127.0.0.1 (:class:`Sandbox`): a clone of
this project's working tree trimmed to one variant (lenet5, pretrain 2
epochs), a bare git repository as its ``origin``, a local folder as its DVC
remote (set in ``.dvc/config.local``, like the stack's S3 endpoint), an
MLflow server on sqlite, the baseline ``dvc repro`` pushed to both; then a
Dask scheduler with 1 worker, a sweep of 4 learning rates, the same with 2
workers, sharing the cores out between their TensorFlows as the stack's
workers do, and (a detail) 2 workers each sized to every core. Each worker
has one thread (one experiment at a time).
Prints both times and the ratio; writes ``reports/benchmarks/sweep.json``.
``tests/test_sweep.py`` builds its set-up with the same class.
Usage: ``python -m benchmarks.sweep``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import yaml

from benchmarks.common import REPO, quiet_env, write_figures
from pipeline.stack.services import thread_env

VENV_BIN = Path(sys.executable).parent
RATES = (0.003, 0.002, 0.0005, 0.0003)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    """A project clone with ``origin`` (bare git), a DVC remote, an MLflow server and Dask processes, all under ``tmp``.

    Every process starts in its own process group; :meth:`close` ends each
    group (SIGTERM, then SIGKILL) and :attr:`groups` lists what it started.
    """

    def __init__(self, tmp: Path, variants: tuple[str, ...] = ("lenet5",)) -> None:
        self.tmp, self.variants = tmp, variants
        self.work, self.origin, self.remote = tmp / "work", tmp / "origin.git", tmp / "dvc-remote"
        self.procs: list[subprocess.Popen] = []
        (tmp / "tmp").mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DASK_"))}
        self.env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=str(REPO),
            TMPDIR=str(
                tmp / "tmp"
            ),  # the tasks' clones: empty again after a sweep  # the workers import pipeline.sweep from this checkout
            DVC_NO_ANALYTICS="1",
            GX_ANALYTICS_ENABLED="false",
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="true",
            PYTHONHASHSEED="0",
            TF_CPP_MIN_LOG_LEVEL="2",
            GIT_AUTHOR_NAME="t",
            GIT_AUTHOR_EMAIL="t@example.com",
            GIT_COMMITTER_NAME="t",
            GIT_COMMITTER_EMAIL="t@example.com",
        )

    def sh(self, cwd: Path, *command: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run ``command`` in ``cwd`` with the sandbox's environment; a failure raises with its output's tail."""
        done = subprocess.run(command, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def spawn(self, *command: str, log: str, cwd: Path | None = None, **env: str) -> subprocess.Popen:
        """Start ``command`` in its own process group (in ``cwd``, default ``tmp``; ``env`` on top), output into ``tmp/<log>``."""
        out = (self.tmp / log).open("w")
        proc = subprocess.Popen(
            command, cwd=cwd or self.tmp, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def project(self) -> None:
        """The working tree of this checkout, trimmed, committed in a clone whose ``origin`` is a bare repository."""
        self.sh(REPO, "git", "clone", "-q", str(REPO), str(self.work))
        listed = self.sh(REPO, "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
        for name in filter(None, listed):  # the working tree under test, not only its last commit
            src, dst = REPO / name, self.work / name
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            elif dst.exists():
                dst.unlink()
        params = yaml.safe_load((self.work / "params.yaml").read_text())
        params["variants"] = {k: params["variants"][k] for k in self.variants}
        for source in ("houses_rooms", "pets_unlabeled"):  # config.PRETRAIN_SOURCES
            params["pretrain"][source]["epochs"] = 2
        params["pretrain"]["pets_unlabeled"]["warmup"] = 1  # a warmup must leave epochs to train
        (self.work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        self.sh(self.tmp, "git", "init", "-q", "--bare", "--initial-branch=main", str(self.origin))
        self.sh(self.work, "git", "remote", "set-url", "origin", str(self.origin))
        # committed: a placeholder; the real location in config.local, as the stack's endpoint: the sweep carries it
        self.sh(self.work, sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(self.tmp / "not-here"))
        self.sh(self.work, sys.executable, "-m", "dvc", "remote", "modify", "--local", "store", "url", str(self.remote))
        self.sh(self.work, "git", "add", "-A")
        self.sh(self.work, "git", "commit", "-q", "-m", "sweep sandbox")
        self.sh(self.work, "git", "push", "-q", "origin", "HEAD:refs/heads/main")

    def baseline(self) -> None:
        """``dvc repro`` of the clone, its dvc.lock committed, outputs pushed to the DVC remote, the commit to origin."""
        self.sh(self.work, sys.executable, "-m", "dvc", "repro")
        self.sh(self.work, "git", "add", "-A")
        self.sh(self.work, "git", "commit", "-q", "-m", "baseline")
        self.sh(self.work, sys.executable, "-m", "dvc", "push")
        self.sh(self.work, "git", "push", "-q", "origin", "HEAD:refs/heads/main")

    def mlflow(self) -> str:
        """An MLflow server on ``tmp/mlflow.db`` at a free loopback port; its URI, also set in :attr:`env`."""
        port = free_port()
        self.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job consumers: 0.5 GB instead of 2.4
        proc = self.spawn(
            str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.tmp / 'mlflow.db'}",
            "--artifacts-destination", str(self.tmp / "mlartifacts"),
            log="mlflow.log",
        )  # fmt: skip
        uri = f"http://127.0.0.1:{port}"
        self._wait(proc, lambda: urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200, "mlflow server", 120)
        self.env["MLFLOW_TRACKING_URI"] = uri
        return uri

    def scheduler(self) -> str:
        """A Dask scheduler on 127.0.0.1 (no dashboard); its address, also set in :attr:`env`."""
        file = self.tmp / "scheduler.json"
        file.unlink(missing_ok=True)
        dask = str(VENV_BIN / "dask")
        args = ("--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(file))
        proc = self.spawn(dask, "scheduler", *args, log="scheduler.log")
        self._wait(proc, lambda: file.is_file() and bool(json.loads(file.read_text()).get("address")), "dask scheduler", 60)
        self.env["DASK_SCHEDULER_ADDRESS"] = address = json.loads(file.read_text())["address"]
        return address

    def worker(self, name: str, threads: Mapping[str, str] | None = None) -> subprocess.Popen:
        """One Dask worker process (one thread: one experiment at a time), with its nanny, in its own process group.

        Its tasks' clones go under ``tmp/tmp-<name>`` (its ``TMPDIR``); ``threads``: TensorFlow's pool sizes, as
        the stack gives its workers (:func:`pipeline.stack.services.thread_env`), or TensorFlow's default.
        """
        (self.tmp / f"tmp-{name}").mkdir(exist_ok=True)
        return self.spawn(
            str(VENV_BIN / "dask"), "worker", self.env["DASK_SCHEDULER_ADDRESS"], "--name", name,
            "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard",
            "--local-directory", str(self.tmp / f"dask-{name}"),
            log=f"worker-{name}.log", TMPDIR=str(self.tmp / f"tmp-{name}"), **(threads or {}),
        )  # fmt: skip

    def wait_workers(self, count: int, timeout: float = 60) -> None:
        """Until the scheduler knows ``count`` workers."""
        from distributed import Client

        with Client(self.env["DASK_SCHEDULER_ADDRESS"], timeout="20s") as client:
            client.wait_for_workers(count, timeout=timeout)

    def sweep(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """``python -m pipeline sweep ARGS`` in the project clone (its own code), not checked."""
        return self.sh(self.work, sys.executable, "-m", "pipeline", "sweep", *args, check=False, timeout=timeout)

    def start_sweep(self, *args: str) -> subprocess.Popen:
        """:meth:`sweep` in the background (its output in ``tmp/sweep.log``), stopped by :meth:`close` if still running."""
        return self.spawn(sys.executable, "-m", "pipeline", "sweep", *args, log="sweep.log", cwd=self.work)

    def _wait(self, proc: subprocess.Popen, ready, what: str, timeout: float) -> None:  # noqa: ANN001 - a predicate
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}); see {self.tmp}")
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{what} not ready after {timeout} s")

    @staticmethod
    def stop(proc: subprocess.Popen, grace: float = 10) -> None:
        """End ``proc``'s process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                os.killpg(proc.pid, 0)  # the leader is gone; a straggler in its group still counts
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
            time.sleep(0.5)

    def close(self) -> None:
        """Stop every process started, workers first."""
        for proc in reversed(self.procs):
            self.stop(proc)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def timed_sweep(box: Sandbox, workers: int, prefix: str, share_cores: bool = True) -> float:
    """Seconds of one sweep of the 4 learning rates on ``workers`` fresh workers (stopped afterwards).

    ``share_cores``: each worker's TensorFlow gets its share of the cores, as the stack's workers do; else all of them.
    """
    threads = thread_env(workers) if share_cores else None
    procs = [box.worker(f"{prefix}-w{i}", threads) for i in range(workers)]
    try:
        box.wait_workers(workers)
        sets = [f"++variants.lenet5.train.learning_rate={rate}" for rate in RATES]
        start = time.perf_counter()
        done = box.sweep("--name", prefix, *(arg for s in sets for arg in ("-S", s)))
        seconds = time.perf_counter() - start
        print(done.stdout, flush=True)
        if done.returncode:
            sys.exit(f"sweep on {workers} worker(s) failed:\n{done.stderr[-3000:]}")
        return seconds
    finally:
        for proc in procs:
            box.stop(proc)


def main() -> None:
    quiet_env()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp, Sandbox(Path(tmp)) as box:
        start = time.perf_counter()
        box.project()
        box.mlflow()
        box.baseline()
        box.scheduler()
        setup = time.perf_counter() - start
        print(f"set-up (clone, MLflow server, baseline dvc repro + push): {setup:.0f} s", flush=True)
        one = timed_sweep(box, 1, "bench-1w")
        two = timed_sweep(box, 2, "bench-2w")
        oversubscribed = timed_sweep(box, 2, "bench-2w-all-cores", share_cores=False)
    write_figures(
        "sweep",
        {"sweep_1_worker_s": round(one, 1), "sweep_2_workers_s": round(two, 1), "sweep_speedup_2_vs_1": round(one / two, 2)},
        {
            "experiments": len(RATES),
            "variants": ["lenet5"],
            "threads_per_worker": 1,
            "tensorflow_threads": "the cores shared out between the workers (pipeline.stack.services.thread_env)",
            "sweep_2_workers_each_all_cores_s": round(oversubscribed, 1),
            "speedup_2_vs_1_each_all_cores": round(one / oversubscribed, 2),
            "setup_s": round(setup, 1),
        },
    )


if __name__ == "__main__":
    main()
