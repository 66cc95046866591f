"""Stage ``report``: a leaderboard of every evaluated variant.

Reads ``reports/metrics/<variant>.json`` and writes ``reports/summary.md``
(one table per task, best first, then each dataset's champion decision from
``reports/register/<dataset>.json``) and ``reports/metrics.json`` (the scalar
metrics of every variant, for ``dvc metrics show/diff``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from pipeline import files, paths
from pipeline.metrics import TASKS, sense

log = logging.getLogger(__name__)

COMMON = ["parameters", "epochs"]  # timings live in MLflow: they vary from run to run


def collect(folder: Path) -> dict[str, dict[str, Any]]:
    """variant -> its metrics JSON, for every ``*.json`` in ``folder``."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    if not found:
        log.warning("%s holds no metrics; run the evaluate stage first", folder)
    return found


def scalars(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The numeric metrics of each variant (what ``dvc metrics`` compares)."""
    return {
        v: {k: x for k, x in m.items() if isinstance(x, (int, float)) and not isinstance(x, bool)} for v, m in metrics.items()
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def leaderboard(metrics: dict[str, dict[str, Any]]) -> str:
    """Markdown: one table per task, sorted by the task's key metric (best first)."""
    lines = ["# Leaderboard", ""]
    for task, (key, columns) in TASKS.items():
        rows = {v: m for v, m in metrics.items() if m.get("task") == task}
        if not rows:
            continue
        higher = sense(key) == "higher"
        ranked = sorted(rows, key=lambda v: rows[v].get(key, math.nan) * (-1 if higher else 1))
        dataset = ", ".join(sorted({m["dataset"] for m in rows.values()}))
        lines += [f"## {dataset}: {task.replace('_', ' ')} (by {key}, {'higher' if higher else 'lower'} is better)", ""]
        header = ["#", "variant", *columns, *COMMON]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rank, v in enumerate(ranked, start=1):
            cells = [str(rank), v, *(_fmt(rows[v].get(c, "")) for c in (*columns, *COMMON))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _figure(value: Any) -> str:
    return "-" if value is None else _fmt(float(value))


def champions(decisions: dict[str, dict[str, Any]]) -> str:
    """Markdown: per dataset, the register stage's decision on ``models:/<dataset>@champion`` with both figures."""
    if not decisions:
        return ""
    header = ["dataset", "metric", "challenger", "champion before", "gain", "threshold", "decision", "champion now"]
    lines = ["## Champions (`models:/<dataset>@champion`)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset, d in sorted(decisions.items()):
        gain = "-" if d.get("gain") is None else f"{d['gain']:+.2%}"
        held = f"{d['champion']} (v{d['champion_version']}): {_figure(d['champion_value'])}"
        before = "none" if d.get("champion") is None else held
        cells = [
            dataset,
            f"{d['metric']} ({'higher' if d['higher_is_better'] else 'lower'} is better)",
            f"{d['challenger']}: {_figure(d['challenger_value'])}",
            before,
            gain,
            f"{d['threshold']:.2%}",
            f"{'moved' if d['moved'] else 'kept'}: {d['reason']}",
            f"version {d['version']}" if d.get("version") else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline report``; with ``--base REV``, the review report (:mod:`pipeline.review`)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline report", description=__doc__)
    review = parser.add_argument_group("review (not a DVC stage): compare with a git revision instead")
    review.add_argument("--base", metavar="REV", help="git revision to compare with (its outputs come from the DVC cache)")
    review.add_argument("--head", metavar="EXP", help="an experiment name or revision instead of the workspace")
    review.add_argument(
        "--format", choices=("md", "html"), help="md (a PR comment) or html (plots embedded); default: by --output"
    )
    review.add_argument("--output", type=Path, metavar="FILE", help="write there instead of stdout")
    review.add_argument(
        "--rebuild-base",
        action="store_true",
        help="reproduce the base's outputs (in .dvc/tmp/review/) when the DVC cache lacks them",
    )
    args = parser.parse_args(argv)
    if args.base is not None:
        from pipeline import review as review_report

        review_report.run(base=args.base, head=args.head, fmt=args.format, output=args.output, rebuild=args.rebuild_base)
        return
    if args.head or args.format or args.output or args.rebuild_base:
        parser.error("--head, --format, --output and --rebuild-base go with --base")
    metrics = collect(paths.METRICS)
    files.write_json(paths.METRICS_SUMMARY, scalars(metrics))
    decisions = collect(paths.REGISTER) if paths.REGISTER.is_dir() else {}
    files.write_text(paths.SUMMARY, "\n".join(filter(None, [leaderboard(metrics), champions(decisions)])))
    log.info("leaderboard of %d variants in %s", len(metrics), paths.SUMMARY)
