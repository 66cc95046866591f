"""The MLflow UI on a tiny pipeline's store: a real ``mlflow server`` answers the REST API and renders the runs.

A module fixture trains two tiny variants (pets and houses) into a sqlite store
in tmp, starts ``mlflow server`` on it in its own process group (MLflow 3.17
starts job consumers in child processes: the whole group is killed at teardown)
and yields the base URL. The REST test needs nothing else; the browser test
drives Debian's headless Chromium (``/usr/bin/chromium``) through Playwright:
each experiment's runs table, opened with the key-metric view `make ui`
prints, shows the key metric as a column; saves the pets page to
``reports/mlflow_ui.png`` and skips, saying why, where either is missing.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import tracking
from tests import mlflowserver
from tests.pipeline_project import REPO, trained_project

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOT = REPO / "reports" / "mlflow_ui.png"
TINY = {
    "ui_pets_cnn": {
        "dataset": "pets",
        "model": "cnn_functional",
        "augment": "none",
        "width": 0.25,
        "train": {"epochs": 1, "batch_size": 64},
    },
    "ui_houses_mlp": {"dataset": "houses", "model": "mlp_tabular", "augment": "none", "train": {"epochs": 2, "batch_size": 16}},
}
DATASET_OF = {name: v["dataset"] for name, v in TINY.items()}
KEY_METRIC = {"pets": ("test_accuracy", False), "houses": ("test_mape", True)}  # (metric, sorted ascending)
VIEWPORT = {"width": 1920, "height": 1080}


def _get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - 127.0.0.1 only
        return r.read().decode()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - 127.0.0.1 only
        return json.loads(r.read())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny augment -> train -> evaluate of one pets and one houses variant into ``<tmp>/mlflow.db``."""
    steps = [("augment", []), *(("train", [name]) for name in TINY), ("evaluate", [])]
    return trained_project(tmp_path_factory, "mlflow-ui", ("data/prepared", "data/stats"), {"variants": TINY}, steps)


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[str]:
    """``mlflow server`` on the store, in its own process group; yields the base URL once ``/health`` answers."""
    with mlflowserver.serve(store, "--default-artifact-root", (store / "mlartifacts").as_uri()) as base:
        yield base


def _experiment_ids(base: str) -> dict[str, str]:
    found = _post(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    return {e["name"]: e["experiment_id"] for e in found}


def test_rest_api_lists_every_variant_with_metrics_params_and_weights(server: str) -> None:
    ids = _experiment_ids(server)
    assert {"pets", "houses"} <= set(ids)
    for name, dataset in DATASET_OF.items():
        runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [ids[dataset]], "max_results": 100}).get(
            "runs", []
        )
        by_name = {r["info"]["run_name"]: r for r in runs}
        assert name in by_name, f"{name} not among {sorted(by_name)} in experiment {dataset}"
        run = by_name[name]
        assert run["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
        assert params["model"] == TINY[name]["model"]
        assert params["train.epochs"] == str(TINY[name]["train"]["epochs"])
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        assert [m["artifact_path"] for m in json.loads(tags["mlflow.log-model.history"])] == ["model"]
        if dataset == "pets":
            assert 0 <= metrics["test_accuracy"] <= 1
            assert float(params["class_weight.Dog"]) > float(params["class_weight.Cat"]) > 0  # Dog is the rare class
        else:
            assert metrics["test_mape"] > 0
            assert not any(k.startswith("class_weight.") for k in params)  # regression: no class weights


def _playwright():  # noqa: ANN202 - the sync_playwright factory, or a skip saying what is missing
    if not CHROMIUM.exists():
        pytest.skip(f"no headless Chromium: {CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.skip(f"no headless Chromium driver: playwright does not import ({e})")
    return sync_playwright


def test_every_experiment_has_its_key_metric_view(server: str) -> None:
    """evaluate tags each experiment with the shared view `make ui` links to: its key metric as a column, best first."""
    found = _post(f"{server}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    tags = {e["name"]: {t["key"]: t["value"] for t in e.get("tags", [])} for e in found}
    for dataset, (metric, ascending) in KEY_METRIC.items():
        view = json.loads(tags[dataset][tracking.VIEW_TAG])
        assert f"metrics.`{metric}`" in view["selectedColumns"]
        assert view["orderByKey"] == f"metrics.`{metric}`" and view["orderByAsc"] is ascending


def _close_assistant(page) -> None:  # noqa: ANN001 - a playwright Page
    """Close the "MLflow Assistant" side panel MLflow 3.17 opens on a first visit; it takes a third of the width."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()
        close.first.wait_for(state="hidden")


def _runs_table(page, base: str, experiment_id: str, variant: str, metric: str) -> tuple[str, str]:  # noqa: ANN001
    """Open the experiment's key-metric view, wait for ``variant``'s row and the ``metric`` column; (header, value) text."""
    page.goto(f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={tracking.VIEW_KEY}", wait_until="domcontentloaded")
    page.get_by_text(variant).first.wait_for(state="visible", timeout=45_000)
    _close_assistant(page)
    column = f"metrics.`{metric}`"
    header = page.locator(f'.ag-header-cell[col-id="{column}"]')
    header.wait_for(state="visible")
    cell = page.locator(f'.ag-row [col-id="{column}"]').first
    cell.wait_for(state="visible")
    page.wait_for_timeout(1_000)  # let the table finish rendering (the UI keeps polling: no networkidle)
    assert header.is_visible() and cell.is_visible()
    box, view = cell.bounding_box(), page.viewport_size
    assert box is not None and view is not None and box["x"] + box["width"] <= view["width"]  # on screen, not scrolled away
    return header.inner_text().strip(), cell.inner_text().strip()


def test_browser_shows_the_runs_with_their_key_metric(server: str, tmp_path: Path) -> None:
    sync_playwright = _playwright()
    ids = _experiment_ids(server)
    shot = tmp_path / "mlflow_ui.png"
    seen: dict[str, tuple[str, str, str]] = {}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
            timeout=30_000,
        )
        try:
            context.set_default_timeout(30_000)
            page = context.new_page()
            for variant, dataset in DATASET_OF.items():
                header, value = _runs_table(page, server, ids[dataset], variant, KEY_METRIC[dataset][0])
                seen[dataset] = (header, value, page.inner_text("body"))
                if dataset == "pets":
                    page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOT)
    for name, dataset in DATASET_OF.items():
        header, value, text = seen[dataset]
        metric = KEY_METRIC[dataset][0]
        assert header == metric
        runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [ids[dataset]], "max_results": 100})["runs"]
        (run,) = [r for r in runs if r["info"]["run_name"] == name]
        logged = next(m["value"] for m in run["data"]["metrics"] if m["key"] == metric)
        assert float(value) == pytest.approx(logged, rel=1e-6)
        assert name in text
        assert not any(other in text for other, d in DATASET_OF.items() if d != dataset)  # the experiment's page, not every run
    assert shot.stat().st_size > 10_000
