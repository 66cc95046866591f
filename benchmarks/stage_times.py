"""Time of every stage of the demo pipeline, from clean, as ``dvc repro`` runs it.

Copies the project (code, params, dvc.yaml) into a throw-away git + DVC repo,
then runs ``dvc repro --single-item <stage>`` for each stage in pipeline order
and times it (Python start-up, TensorFlow import and DVC bookkeeping
included), followed by a no-op ``dvc repro``. Prints a table and writes
``reports/benchmarks/stage_times.json``.
Usage: ``python -m benchmarks.stage_times`` (``make bench``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data_stages import machine

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("params.yaml", "dvc.yaml"):
            shutil.copy(REPO / name, root / name)
        for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
            subprocess.run(cmd, cwd=root, check=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
        stages = subprocess.run(
            ["dvc", "stage", "list", "--names-only"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.split()
        times = {}
        for stage in stages:
            times[stage] = round(run(["dvc", "repro", "--single-item", stage], root), 2)
            print(f"{stage:28s} {times[stage]:8.2f} s", flush=True)
        noop = round(run(["dvc", "repro"], root), 2)
    total = round(sum(times.values()), 1)
    print(f"{'total (from clean)':28s} {total:8.1f} s\n{'no-op dvc repro':28s} {noop:8.2f} s")
    out = REPO / "reports/benchmarks/stage_times.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"machine": machine(), "profile": "demo", "stages_s": times, "total_s": total, "noop_repro_s": noop}, indent=2)
        + "\n"
    )
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
