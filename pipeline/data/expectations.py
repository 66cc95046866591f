"""Great Expectations suites of the validate stage (GX 1.x, ephemeral context, offline).

Each suite is a list of expectation objects built from validated params; the
caller gets a plain JSON-able result and a one-line summary of what failed.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from pipeline.config import HOUSE_ROOMS, HousesChecks, PetsChecks

# Never phone home: the pipeline runs offline. Set before GX is imported.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402

HOUSE_COLUMNS = ["house_id", "bedrooms", "bathrooms", "area", "zipcode", "price", "photos"]


def files_suite(max_reject_rate: float) -> list:
    """Every file got a verdict, and rejects stay under the allowed rate."""
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="sha256"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["accepted"], mostly=1.0 - max_reject_rate),
    ]


def _sizes(min_side: int, max_side: int) -> list:
    return [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=min_side, max_value=max_side) for c in ("width", "height")]


def pets_images_suite(checks: PetsChecks) -> list:
    """On accepted pet photos: known labels, every class present, sizes, duplicates within a class."""
    return [
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(checks.classes)),
        gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(checks.classes)),
        *_sizes(checks.min_side, checks.max_side),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["label", "sha256"], mostly=1.0 - checks.max_duplicate_rate),
    ]


def houses_images_suite(checks: HousesChecks) -> list:
    """On accepted house photos: the four rooms, sizes."""
    return [
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(HOUSE_ROOMS)),
        gxe.ExpectColumnValuesToNotBeNull(column="house_id"),
        *_sizes(checks.min_side, checks.max_side),
    ]


def houses_table_suite(checks: HousesChecks) -> list:
    """On the HousesInfo table: schema, types, ranges, 5-digit zip codes, 4 photos per house."""
    between = [
        gxe.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi)
        for c, (lo, hi) in (
            ("bedrooms", checks.bedrooms),
            ("bathrooms", checks.bathrooms),
            ("area", checks.area),
            ("price", checks.price),
        )
    ]
    types = [
        gxe.ExpectColumnValuesToBeOfType(column=c, type_=t)
        for c, t in (
            ("house_id", "int64"),
            ("bedrooms", "int64"),
            ("bathrooms", "float64"),
            ("area", "float64"),
            ("price", "float64"),
        )
    ]
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=HOUSE_COLUMNS, exact_match=True),
        *types,
        gxe.ExpectColumnValuesToBeUnique(column="house_id"),
        *between,
        gxe.ExpectColumnValuesToMatchRegex(column="zipcode", regex=r"^\d{5}$"),
        gxe.ExpectColumnValuesToBeInSet(column="photos", value_set=[len(HOUSE_ROOMS)]),
    ]


def run(suites: dict[str, tuple[pd.DataFrame, list]]) -> list[dict[str, Any]]:
    """Validate each ``name -> (frame, expectations)``; return one JSON-able result per suite."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    source = context.data_sources.add_pandas("pipeline")
    out = []
    for name, (frame, expectations) in suites.items():
        batch = (
            source.add_dataframe_asset(name)
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        suite = gx.ExpectationSuite(name=name, expectations=expectations)
        result = batch.validate(suite, result_format="SUMMARY").to_json_dict()
        out.append({"suite": name, "success": bool(result["success"]), "results": [_slim(r) for r in result["results"]]})
    return out


def _slim(r: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in r["expectation_config"]["kwargs"].items() if k != "batch_id"}
    res = r.get("result") or {}
    exc = r.get("exception_info") or {}
    return {
        "expectation": r["expectation_config"]["type"],
        "kwargs": kwargs,
        "success": bool(r["success"]),
        "observed_value": res.get("observed_value"),
        "unexpected_count": res.get("unexpected_count"),
        "unexpected_percent": res.get("unexpected_percent"),
        "partial_unexpected_list": (res.get("partial_unexpected_list") or [])[:10],
        "partial_missing_list": (res.get("partial_missing_list") or [])[:10],
        "exception": exc.get("exception_message") if exc.get("raised_exception") else None,
    }


def failures(results: list[dict[str, Any]]) -> list[str]:
    """One human line per failed expectation: suite, expectation, column and what was seen."""
    lines = []
    for suite in results:
        for r in suite["results"]:
            if r["success"]:
                continue
            kw = r["kwargs"]
            target = kw.get("column") or kw.get("column_list") or kw.get("column_set")
            seen = r["exception"] or (
                f"{r['unexpected_count']} unexpected ({r['unexpected_percent']:.2f} %), e.g. {r['partial_unexpected_list'][:3]}"
                if r["unexpected_count"]
                else f"missing {r['partial_missing_list']}"
                if r.get("partial_missing_list")
                else f"observed {r['observed_value']!r}"
            )
            extra = {k: v for k, v in kw.items() if k not in ("column", "column_list", "column_set")}
            lines.append(f"{suite['suite']}: {r['expectation']}({target}, {extra}) failed: {seen}")
    return lines
