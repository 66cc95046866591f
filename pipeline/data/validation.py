"""The validation report: what was accepted and rejected (with reasons), the suites' results, as JSON and HTML."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import HOUSE_ROOMS
from pipeline.data.manifest import duplicates


def _listing(manifest: pd.DataFrame, status: str, column: str) -> list[dict[str, str]]:
    rows = (
        manifest[(manifest.status == status) & manifest[column].notna()]
        if column == "warning"
        else manifest[manifest.status == status]
    )
    return [{"path": p, "reason": r} for p, r in zip(rows.path, rows[column])]


def build_report(dataset: str, manifest: pd.DataFrame, suites: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: counts first (read by ``dvc metrics``), then the listings and suite results."""
    accepted = manifest[manifest.status == "accepted"]
    return {
        "dataset": dataset,
        "success": all(s["success"] for s in suites),
        "files": len(manifest),
        "accepted": len(accepted),
        "rejected_count": int((manifest.status == "rejected").sum()),
        "warnings_count": int(accepted.warning.notna().sum()),
        "per_label": {str(k): int(v) for k, v in accepted.label.value_counts().sort_index().items()},
        "rejected": _listing(manifest, "rejected", "reason"),
        "warnings": _listing(manifest, "accepted", "warning"),
        "duplicates": duplicates(manifest),
        **extra,
        "suites": suites,
    }


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page of the report (the GX Data Docs need a file context; this needs nothing)."""
    esc = html.escape

    def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
        head = "".join(f"<th>{esc(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    verdict = "passed" if report["success"] else "FAILED"
    parts = [
        f"<h1>Validation of {esc(report['dataset'])}: {verdict}</h1>",
        f"<p>{report['files']} files, {report['accepted']} accepted, {report['rejected_count']} rejected, "
        f"{report['warnings_count']} accepted with warnings. Per label: {esc(str(report['per_label']))}</p>",
    ]
    for s in report["suites"]:
        rows = [dict(r, kwargs=r["kwargs"], result="ok" if r["success"] else "FAILED") for r in s["results"]]
        parts.append(f"<h2>Suite {esc(s['suite'])}: {'passed' if s['success'] else 'FAILED'}</h2>")
        parts.append(
            table(rows, ["result", "expectation", "kwargs", "observed_value", "unexpected_count", "partial_unexpected_list"])
        )
    parts += ["<h2>Rejected</h2>", table(report["rejected"], ["path", "reason"])]
    parts += ["<h2>Accepted with warnings</h2>", table(report["warnings"], ["path", "reason"])]
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
    )
    head = f"<meta charset='utf-8'><title>Validation: {esc(report['dataset'])}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>\n"


def failure_message(dataset: str, report: dict[str, Any], report_path: Path) -> str:
    from pipeline.data import expectations as ex

    lines = ex.failures(report["suites"])
    missing = report.get("houses_missing_photos") or {}
    if missing:
        shown = ", ".join(f"house {h} (no {'/'.join(r)})" for h, r in list(missing.items())[:10])
        lines.append(f"houses without their {len(HOUSE_ROOMS)} photos: {shown}{' ...' if len(missing) > 10 else ''}")
    return f"validation of {dataset} failed ({len(lines)} problem(s); details in {report_path}):\n  " + "\n  ".join(lines)
