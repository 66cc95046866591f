"""The MLflow UI on a tiny pipeline's store: a real ``mlflow server`` answers the REST API and renders the runs.

A module fixture trains two tiny variants (pets and houses) into a sqlite store
in tmp, starts ``mlflow server`` on it in its own process group (MLflow 3.17
starts job consumers in child processes: the whole group is killed at teardown)
and yields the base URL. The REST test needs nothing else; the browser test
drives Debian's headless Chromium (``/usr/bin/chromium``) through Playwright,
saves a screenshot to ``reports/mlflow_ui.png`` and skips, saying why, where
either is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pipeline_project import REPO, trained_project

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOT = REPO / "reports" / "mlflow_ui.png"
TINY = {
    "ui_pets_cnn": {"dataset": "pets", "model": "cnn_functional", "width": 0.25, "train": {"epochs": 1, "batch_size": 64}},
    "ui_houses_mlp": {"dataset": "houses", "model": "mlp_tabular", "train": {"epochs": 2, "batch_size": 16}},
}
DATASET_OF = {name: v["dataset"] for name, v in TINY.items()}
START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - 127.0.0.1 only
        return r.read().decode()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - 127.0.0.1 only
        return json.loads(r.read())


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group, SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; children of the group may linger a moment
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny augment -> train -> evaluate of one pets and one houses variant into ``<tmp>/mlflow.db``."""
    steps = [("augment", []), *(("train", [name]) for name in TINY), ("evaluate", [])]
    return trained_project(tmp_path_factory, "mlflow-ui", ("data/prepared", "data/stats"), {"variants": TINY}, steps)


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[str]:
    """``mlflow server`` on the store, in its own process group; yields the base URL once ``/health`` answers."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (store / "mlflow_server.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
           "--default-artifact-root", (store / "mlartifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=store, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{(store / 'mlflow_server.log').read_text()[-3000:]}")
            try:
                if _get(f"{base}/health", timeout=2).strip() == "OK":
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n{(store / 'mlflow_server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        _stop(proc)
        log.close()


def _experiment_ids(base: str) -> dict[str, str]:
    found = _post(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    return {e["name"]: e["experiment_id"] for e in found}


def test_rest_api_lists_every_variant_with_metrics_params_and_weights(server: str) -> None:
    ids = _experiment_ids(server)
    assert {"pets", "houses"} <= set(ids)
    for name, dataset in DATASET_OF.items():
        runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [ids[dataset]], "max_results": 100}).get("runs", [])
        by_name = {r["info"]["run_name"]: r for r in runs}
        assert name in by_name, f"{name} not among {sorted(by_name)} in experiment {dataset}"
        run = by_name[name]
        assert run["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
        assert params["model"] == TINY[name]["model"]
        assert params["train.epochs"] == str(TINY[name]["train"]["epochs"])
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


def test_browser_shows_the_pets_runs(server: str, tmp_path: Path) -> None:
    sync_playwright = _playwright()
    pets = _experiment_ids(server)["pets"]
    url = f"{server}/#/experiments/{pets}/runs"  # the bare experiment URL opens MLflow 3's GenAI overview, not the runs table
    shot = tmp_path / "mlflow_ui.png"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000}, timeout=30_000,
        )
        try:
            context.set_default_timeout(30_000)
            page = context.new_page()
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("ui_pets_cnn").first.wait_for(state="visible", timeout=45_000)
            page.wait_for_timeout(1_500)  # let the table finish rendering (the UI keeps polling: no networkidle)
            text = page.inner_text("body")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOT)
    assert "ui_pets_cnn" in text
    assert "ui_houses_mlp" not in text  # the pets experiment's page, not every run
    assert shot.stat().st_size > 10_000
