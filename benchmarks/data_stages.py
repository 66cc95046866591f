"""Benchmark of the data stages on the real mirrors: validate throughput and no-op ``dvc repro``.

Builds a throw-away copy of the project with ``data.profile: real`` and
``data.mirror`` pointing at ``../shared/datasets`` served on 127.0.0.1, runs
the data stages (``dvc repro stats``: download, validate, prepare, stats of
both datasets) once (timed), records placeholder outputs for every later
stage with ``dvc commit`` (training 16 variants on the real data would take
hours; a no-op repro only stats and compares them), then measures, side by
side in this one run:

* validate decode throughput on the 10,013 PetImages files with one process
  and with all cores (images/s and the ratio);
* the whole ``validate@pets`` stage (Great Expectations included);
* a no-op ``dvc repro`` of the whole pipeline (median of 5).

Prints the figures and writes them to ``reports/benchmarks/data_stages.json``.
Usage: ``python -m benchmarks.data_stages`` (``make bench``).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


def machine() -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version()}


def serve(folder: Path, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """``folder`` over HTTP on 127.0.0.1:``port`` (0: a free one) in a daemon thread; the server and its URL."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def make_project(root: Path, mirror: str) -> None:
    import yaml

    for item in ("pipeline", "dvc.yaml"):
        src = REPO / item
        (
            shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, root / item)
        )
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(profile="real", mirror=mirror)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=root, check=True)


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def commit_placeholders(root: Path) -> None:
    """A placeholder for every missing output (a file, or a folder holding one), recorded with ``dvc commit``."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        outs = [Path(out.fs_path) for stage in repo.index.stages for out in stage.outs]
    for path in outs:
        if path.exists():
            continue
        target = path if path.suffix else path / "placeholder.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}\n" if target.suffix == ".json" else "placeholder\n")
    subprocess.run(["dvc", "commit", "--force", "--quiet"], cwd=root, check=True, stdout=subprocess.DEVNULL)


def decode_rate(raw: Path, workers: int) -> float:
    from pipeline.config import load
    from pipeline.data.images import ImageLimits
    from pipeline.data.manifest import _relative_files, scan

    checks = load(raw.parents[2] / "params.yaml").validate
    limits = ImageLimits(checks.pets.min_side, checks.pets.max_side, checks.max_pixels)
    rels = _relative_files(raw, raw / "PetImages")
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        scan(raw, rels, limits, workers)
        best = max(best, len(rels) / (time.perf_counter() - start))
    return best


def main() -> None:
    if not (SHARED / "SHA256SUMS").is_file():
        sys.exit(f"needs the real dataset mirrors in {SHARED}")
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    server, url = serve(SHARED)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = Path(tmp)
        make_project(root, url)
        data_stages = timed(["dvc", "repro", "stats"], root)
        commit_placeholders(root)
        raw = root / "data/raw/pets"
        one, many = decode_rate(raw, 1), decode_rate(raw, 0)
        stage = timed([sys.executable, "-m", "pipeline", "validate", "pets"], root)
        noop = statistics.median(timed(["dvc", "repro"], root) for _ in range(5))
    server.shutdown()
    figures = {
        "machine": machine(),
        "files": 10_013,
        "validate_images_per_s": round(many, 1),
        "validate_images_per_s_one_process": round(one, 1),
        "validate_parallel_speedup": round(many / one, 2),
        "validate_pets_stage_s": round(stage, 2),
        "noop_repro_s": round(noop, 3),
        "real_data_stages_from_clean_s": round(data_stages, 1),
    }
    out = REPO / "reports/benchmarks/data_stages.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    for key, value in figures.items():
        print(f"{key:36s} {value}")
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
