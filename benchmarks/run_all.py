"""``make bench``: run every benchmark script, gather their figures into ``reports/benchmarks.json``, print a table.

Each script runs in its own process, prints its figures and writes
``reports/benchmarks/<script>.json``; this collects the headline figures
(each with the machine it ran on, in ``details``) and checks them against
the targets of issues 5 and 14. ``--skip-demo`` (``make bench QUICK=1``)
leaves out the scripts that run the demo pipeline (``stage_times``,
``review_remote``, ``sweep``); a skipped script's figures come from its
last JSON, if any, marked ``reused``. Exits 1 if a script failed.
Usage: ``python -m benchmarks.run_all [--skip-demo] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import OUT, REPO, machine, quiet_env

# script -> {figure in reports/benchmarks.json: key in the script's JSON}
SCRIPTS: dict[str, dict[str, str]] = {
    "input_pipeline": {"input_pipeline_speedup_vs_imagedatagenerator": "input_pipeline_speedup_vs_imagedatagenerator"},
    "train_loop": {
        "train_throughput_ratio_vs_bare_fit": "train_throughput_ratio_vs_bare_fit",
        "checkpoint_throughput_ratio": "checkpoint_throughput_ratio",
    },
    "mfu": {"mfu": "mfu"},
    "data_stages": {"validate_images_per_s": "validate_images_per_s", "noop_repro_s": "noop_repro_s"},
    "stage_times": {"demo_repro_s": "total_s"},
    "review_remote": {"review_with_remote_s": "review_with_remote_s", "review_rebuild_base_s": "review_rebuild_base_s"},
    "tracking_server": {"train_throughput_ratio_server_vs_sqlite": "train_throughput_ratio_server_vs_sqlite"},
    "sweep": {"sweep_speedup_2_vs_1": "sweep_speedup_2_vs_1", "sweep_2_workers_s": "sweep_2_workers_s"},
}
DEMO = {"stage_times", "review_remote", "sweep"}  # each runs the demo pipeline: left out by --skip-demo
TARGETS: dict[str, dict[str, float]] = {
    "input_pipeline_speedup_vs_imagedatagenerator": {"min": 3.0},
    "train_throughput_ratio_vs_bare_fit": {"min": 0.95},
    "mfu": {"min": 0.65},
    "train_throughput_ratio_server_vs_sqlite": {"min": 0.95},
    "sweep_speedup_2_vs_1": {"min": 1.7},  # issue 14: 4 demo experiments, 2 Dask workers vs 1, on 2 cores
}
SUMMARY = REPO / "reports" / "benchmarks.json"


def run_script(name: str) -> tuple[bool, float]:
    """Run ``benchmarks/<name>.py`` (its output goes straight to ours); return (succeeded, seconds)."""
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], cwd=REPO)
    return done.returncode == 0, time.perf_counter() - start


def load(name: str) -> dict[str, Any] | None:
    """The script's JSON, with the time it was written; None when it never ran."""
    path = OUT / f"{name}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["_written"] = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return data


def collect(status: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures, details): each figure's value, and where it came from (script, machine, when, status)."""
    figures, details = {}, {}
    for name, keys in SCRIPTS.items():
        data = load(name) if status[name] in ("ok", "skipped") else None
        for figure, key in keys.items():
            figures[figure] = data.get(key) if data else None
            details[figure] = {
                "script": f"benchmarks/{name}.py",
                "status": "reused" if data and status[name] == "skipped" else status[name],
            }
            if data:
                details[figure].update(
                    machine=data.get("machine"), written=data["_written"], json=f"reports/benchmarks/{name}.json"
                )
    return figures, details


def targets(figures: dict[str, Any]) -> dict[str, Any]:
    """Each target with whether the figure meets it (None when the figure is missing)."""
    return {k: {**t, "met": None if figures.get(k) is None else figures[k] >= t["min"]} for k, t in TARGETS.items()}


def table(figures: dict[str, Any], goals: dict[str, Any], details: dict[str, Any]) -> str:
    """A plain-text table: figure, value, target, met, status, machine."""
    rows = [("figure", "value", "target", "met", "status", "machine")]
    for key, value in figures.items():
        goal = goals.get(key)
        where = details[key].get("machine") or {}
        rows.append(
            (
                key,
                "-" if value is None else str(value),
                f">= {goal['min']}" if goal else "",
                "" if not goal or goal["met"] is None else ("yes" if goal["met"] else "NO"),
                details[key]["status"],
                f"{where.get('cores', '?')} cores, {where.get('cpu', '?')}" if where else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--skip-demo",
        action="store_true",
        help="skip stage_times.py, review_remote.py and sweep.py (each runs the demo pipeline)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(SCRIPTS), help="run only these scripts (the others' figures are reused)"
    )
    args = parser.parse_args()
    quiet_env()
    wanted = [n for n in SCRIPTS if (args.only is None or n in args.only) and not (args.skip_demo and n in DEMO)]
    status, seconds = {}, {}
    for name in SCRIPTS:
        if name in wanted:
            ok, seconds[name] = run_script(name)
            status[name] = "ok" if ok else "failed"
        else:
            status[name] = "skipped"
    figures, details = collect(status)
    goals = targets(figures)
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": machine(),
        "figures": figures,
        "targets": goals,
        "details": details,
        "script_seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{table(figures, goals, details)}\nwritten to {SUMMARY.relative_to(REPO)}")
    if "failed" in status.values():
        sys.exit(f"failed: {', '.join(n for n, s in status.items() if s == 'failed')}")


if __name__ == "__main__":
    main()
