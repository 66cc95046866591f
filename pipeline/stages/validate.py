"""Stage ``validate``: decode every raw file, build the manifest, run the GX suites.

Rejected files are listed with a reason and left untouched in ``data/raw``;
decodable oddities are accepted with a warning. A failed suite (too many
rejects, a missing class, a house without its 4 photos, ...) fails the stage
after writing the report, so the user can read what went wrong.
"""

from __future__ import annotations

import html
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipeline import cli, config, files, paths
from pipeline.config import HOUSE_ROOMS, HousesChecks, PetsChecks
from pipeline.data.formats import HOUSES_INFO, PETS_ROOT, PHOTO_NAME, parse_house
from pipeline.data.images import ImageLimits, inspect
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

_INLINE_BELOW = 256  # files; below this, worker start-up costs more than it saves


def _inspect_one(job: tuple[Path, str, ImageLimits]) -> dict[str, Any]:
    return inspect(*job)


def scan(root: Path, rels: list[str], limits: ImageLimits, workers: int) -> list[dict[str, Any]]:
    """Inspect ``root/rel`` for each rel in parallel processes; rows come back in input order."""
    jobs = [(root / rel, rel, limits) for rel in rels]
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(jobs), desc="decode", unit="img", mininterval=1.0)
    if workers == 1 or len(jobs) < _INLINE_BELOW:
        return [_inspect_one(j) for j in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_inspect_one, jobs, chunksize=64), **bar))


def _relative_files(root: Path, folder: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file())


def pets_manifest(root: Path, limits: ImageLimits, workers: int) -> pd.DataFrame:
    """Manifest of ``root/PetImages/<class>/*``: one row per file, label = class folder."""
    folder = root / PETS_ROOT
    if not folder.is_dir():
        raise PipelineError(f"{root}: no {PETS_ROOT}/ folder (expected {PETS_ROOT}/<class>/*.jpg)")
    rows = scan(root, _relative_files(root, folder), limits, workers)
    for row in rows:
        parts = row["path"].split("/")
        row["label"] = parts[1] if len(parts) == 3 else None
        if row["label"] is None and row["status"] == "accepted":
            row.update(status="rejected", reason=f"not inside a class folder of {PETS_ROOT}/")
    return _frame(rows, ["label"])


def find_houses_folder(root: Path) -> Path:
    """The folder holding ``HousesInfo.txt`` (``Houses-dataset-master/Houses Dataset`` upstream)."""
    found = sorted(root.rglob(HOUSES_INFO))
    if len(found) != 1:
        raise PipelineError(f"{root}: expected exactly one {HOUSES_INFO}, found {len(found)}")
    return found[0].parent


def houses_manifest(root: Path, folder: Path, limits: ImageLimits, workers: int) -> pd.DataFrame:
    """Manifest of the house photos ``N_<room>.jpg``; label = room, house_id = N."""
    rels = [r for r in _relative_files(root, folder) if not r.endswith("/" + HOUSES_INFO)]
    rows = scan(root, rels, limits, workers)
    for row in rows:
        m = PHOTO_NAME.fullmatch(row["path"].rsplit("/", 1)[-1])
        row["house_id"], row["label"] = (int(m[1]), m[2]) if m else (None, None)
        if not m and row["status"] == "accepted":
            row.update(status="rejected", reason=f"unexpected file name (expected N_<{'|'.join(HOUSE_ROOMS)}>.jpg)")
    return _frame(rows, ["label", "house_id"]).astype({"house_id": "Int64"})


def _frame(rows: list[dict[str, Any]], extra: list[str]) -> pd.DataFrame:
    cols = ["path", *extra, "status", "reason", "warning", "format", "mode", "width", "height", "bytes", "sha256"]
    return pd.DataFrame(rows, columns=cols).astype({"width": "Int64", "height": "Int64", "bytes": "int64"})


def houses_table(info: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """Parse ``HousesInfo.txt`` (line N = house N) and count each house's accepted photos."""
    records = []
    for lineno, line in enumerate(info.read_text().splitlines(), start=1):
        if not line.split():
            continue
        try:
            house = parse_house(line, price_required=True)
        except ValueError as exc:
            raise PipelineError(f"{info}:{lineno}: {exc}") from None
        if not house["bedrooms"].is_integer():
            raise PipelineError(f"{info}:{lineno}: bedrooms must be a whole number: {line.strip()!r}")
        records.append((lineno, int(house["bedrooms"]), *(house[k] for k in ("bathrooms", "area", "zipcode", "price"))))
    table = pd.DataFrame(records, columns=["house_id", "bedrooms", "bathrooms", "area", "zipcode", "price"])
    ok = manifest[manifest.status == "accepted"].groupby("house_id")["label"].nunique()
    table["photos"] = table.house_id.map(ok).fillna(0).astype("int64")
    return table


def missing_photos(table: pd.DataFrame, manifest: pd.DataFrame) -> dict[int, list[str]]:
    """house_id -> rooms without an accepted photo, for houses with fewer than 4."""
    have = manifest[manifest.status == "accepted"].groupby("house_id")["label"].agg(set)
    out = {}
    for hid in table.loc[table.photos < len(HOUSE_ROOMS), "house_id"]:
        out[int(hid)] = [r for r in HOUSE_ROOMS if r not in have.get(hid, set())]
    return out


def duplicates(manifest: pd.DataFrame) -> list[list[str]]:
    """Groups of accepted files with identical bytes (sha256)."""
    ok = manifest[manifest.status == "accepted"]
    groups = ok.groupby("sha256")["path"].agg(list)
    return sorted(sorted(g) for g in groups if len(g) > 1)


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


def validate_pets(
    root: Path, checks: PetsChecks, limits: ImageLimits, workers: int
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Return (frames to save, report) for the pets dataset."""
    from pipeline.data import expectations as ex

    manifest = pets_manifest(root, limits, workers)
    accepted = manifest[manifest.status == "accepted"]
    suites = ex.run(
        {
            "pets.files": (manifest, ex.files_suite(checks.max_reject_rate)),
            "pets.images": (accepted, ex.pets_images_suite(checks)),
        }
    )
    return {"manifest": manifest}, build_report("pets", manifest, suites, {})


def validate_houses(
    root: Path, checks: HousesChecks, limits: ImageLimits, workers: int
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Return (frames to save, report) for the houses dataset."""
    from pipeline.data import expectations as ex

    folder = find_houses_folder(root)
    manifest = houses_manifest(root, folder, limits, workers)
    table = houses_table(folder / HOUSES_INFO, manifest)
    orphans = (manifest.status == "accepted") & ~manifest.house_id.isin(table.house_id)
    manifest.loc[orphans, ["status", "reason"]] = ["rejected", f"no house with this number in {HOUSES_INFO}"]
    accepted = manifest[manifest.status == "accepted"]
    suites = ex.run(
        {
            "houses.files": (manifest, ex.files_suite(checks.max_reject_rate)),
            "houses.images": (accepted, ex.houses_images_suite(checks)),
            "houses.table": (table, ex.houses_table_suite(checks)),
        }
    )
    missing = missing_photos(table, manifest)
    extra = {"houses": len(table), "houses_missing_photos": {str(k): v for k, v in missing.items()}}
    return {"manifest": manifest, "houses": table}, build_report("houses", manifest, suites, extra)


def failure_message(dataset: str, report: dict[str, Any], report_path: Path) -> str:
    from pipeline.data import expectations as ex

    lines = ex.failures(report["suites"])
    missing = report.get("houses_missing_photos") or {}
    if missing:
        shown = ", ".join(f"house {h} (no {'/'.join(r)})" for h, r in list(missing.items())[:10])
        lines.append(f"houses without their {len(HOUSE_ROOMS)} photos: {shown}{' ...' if len(missing) > 10 else ''}")
    return f"validation of {dataset} failed ({len(lines)} problem(s); details in {report_path}):\n  " + "\n  ".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline validate <dataset>``."""
    dataset = cli.dataset_arg("validate", __doc__, argv)
    cfg = config.load().validate
    checks = getattr(cfg, dataset)
    limits = ImageLimits(checks.min_side, checks.max_side, cfg.max_pixels)
    root = paths.raw(dataset)
    if not root.is_dir():
        raise PipelineError(f"{root}: not found; run the download stage first (dvc repro download@{dataset})")
    run = validate_pets if dataset == "pets" else validate_houses
    frames, report = run(root, checks, limits, cfg.workers)
    report_path = paths.validation_report(dataset)
    files.write_json(report_path, report)
    files.write_text(report_path.with_suffix(".html"), render_html(report))
    log.info(
        "%s: %d files, %d accepted, %d rejected, %d warnings",
        dataset,
        report["files"],
        report["accepted"],
        report["rejected_count"],
        report["warnings_count"],
    )
    for item in report["rejected"]:
        log.info("rejected %s: %s", item["path"], item["reason"])
    if not report["success"]:
        raise PipelineError(failure_message(dataset, report, report_path))
    with files.atomic_dir(paths.validated(dataset)) as out:
        for name, frame in frames.items():
            frame.to_parquet(out / f"{name}.parquet", index=False)
