"""Stage ``validate``: decode every raw file, build the manifest, run the GX suites.

Rejected files are listed with a reason and left untouched in ``data/raw``;
decodable oddities are accepted with a warning. A failed suite (too many
rejects, a missing class, a house without its 4 photos, ...) fails the stage
after writing the report, so the user can read what went wrong.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import cli, config, files, paths
from pipeline.config import HousesChecks, PetsChecks
from pipeline.data.formats import HOUSES_INFO
from pipeline.data.images import ImageLimits
from pipeline.data.manifest import find_houses_folder, houses_manifest, houses_table, missing_photos, pets_manifest
from pipeline.data.validation import build_report, failure_message, render_html
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


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
