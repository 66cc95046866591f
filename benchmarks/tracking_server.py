"""The train stage's loop logging to the team stack's MLflow server vs to a local sqlite store: images/s of each.

Starts a team stack (PostgreSQL, SeaweedFS, the MLflow server with
basic-auth; ``python -m pipeline stack up --free-ports``) in a temporary
folder, then measures, side by side and alternating (so other load on the
machine hits both alike), ``pipeline.training.loop.fit`` of the seed CNN on
the same throw-away prepared data as ``benchmarks.train_loop``, its per-epoch
MLflow logging going once to a sqlite store and once to the server as the
admin account. Also the median seconds of one per-epoch ``log_metrics`` call
against each. Stops the stack at the end, whatever happens. Writes
``reports/benchmarks/tracking_server.json``.
Usage: ``python -m benchmarks.tracking_server [--epochs N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO, quiet_env, write_figures
from benchmarks.train_loop import log_metrics_s, stage_rate, variant, write_prepared
from pipeline.stack.layout import read_env


def _stack(folder: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "stack", "--dir", str(folder), *args], cwd=REPO, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"stack {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the best counts")
    args = parser.parse_args()
    quiet_env()
    v = variant(args.epochs)
    # not a private temporary folder: PostgreSQL runs as the 'postgres' account when we are root
    root = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    root.chmod(0o755)
    try:
        _stack(root / "stack", "up", "--free-ports", "--workers", "1")
        server = read_env(root / "stack" / "env")
        sqlite = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
        prepared = write_prepared(root, args.image_size)
        rates: dict[str, list[float]] = {"sqlite": [], "server": []}
        log_s: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, env in (("sqlite", sqlite), ("server", server)):
                os.environ.update(env)
                rates[name].append(stage_rate(v, prepared))
            print(f"  sqlite {rates['sqlite'][-1]:7.1f} img/s   server {rates['server'][-1]:7.1f} img/s", flush=True)
        for name, env in (("sqlite", sqlite), ("server", server)):
            os.environ.update(env)
            log_s[name] = log_metrics_s()
    finally:
        subprocess.run([sys.executable, "-m", "pipeline", "stack", "--dir", str(root / "stack"), "down"], cwd=REPO)
        shutil.rmtree(root, ignore_errors=True)
    write_figures(
        "tracking_server",
        {
            "train_throughput_ratio_server_vs_sqlite": round(max(rates["server"]) / max(rates["sqlite"]), 3),
            "runs_images_per_s": {name: [round(r, 1) for r in runs] for name, runs in rates.items()},
            "log_metrics_s": {name: round(s, 4) for name, s in log_s.items()},
            "image_size": args.image_size,
            "epochs": args.epochs,
        },
    )


if __name__ == "__main__":
    main()
