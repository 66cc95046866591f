"""`make review` on a fresh clone, and queued experiments: every copy DVC makes logs into the project's one store.

The real pipeline on the demo profile, in a temporary clone of this repository
(its working tree included, committed in the clone), with two variants and a
short pretrain so that it takes minutes, not the full run's seven.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.clones import edit, sh, working_tree_clone

VARIANTS = ("lenet5", "mlp_tabular")

pytestmark = pytest.mark.slow


def runs(root: Path) -> list[tuple[str, str]]:
    """(run name, stage tag) of every run in the clone's default store."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return db.execute(
            "select r.name, t.value from runs r join tags t on t.run_uuid = r.run_uuid and t.key = 'dvc.stage'"
        ).fetchall()


def without_provenance(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if not line.startswith("**Base outputs**"))


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone at a small-variant base commit, then a commit that sets lenet5's learning rate 0.001 -> 0.003."""
    root = working_tree_clone(tmp_path_factory.mktemp("fresh") / "clone", VARIANTS)
    edit(root, lambda raw: raw["variants"]["lenet5"].update(train={"learning_rate": 0.003}))
    sh(root, "git", "commit", "-q", "-am", "lenet5 lr 0.003")
    return root


def test_make_review_on_a_fresh_clone(clone: Path) -> None:
    start = time.perf_counter()
    out = sh(clone, "make", "review", "BASE=HEAD~1")
    first = time.perf_counter() - start
    md = (clone / "reports/review.md").read_text()
    assert "**1 of 2 variants changed**; 1 with param changes" in md, md[:2000]
    assert "| `variants.lenet5.train.learning_rate` | 0.001 | 0.003 |" in md
    assert "| `mlp_tabular` | houses | mape |" in md and "| same |" in md.split("| `mlp_tabular` |")[1].splitlines()[0]
    assert "**Notes**" not in md
    # head and base runs both landed in the clone's store: lenet5 trained twice, the rest restored by DVC's run cache
    stages = [stage for _, stage in runs(clone)]
    assert stages.count("train@lenet5") == 2 and stages.count("train@mlp_tabular") == 1, stages
    before = runs(clone)
    worktree_lock = next((clone / ".dvc/tmp/review").glob("*/dvc.lock")).read_bytes()

    start = time.perf_counter()
    out = sh(clone, "make", "review", "BASE=HEAD~1")
    second = time.perf_counter() - start
    assert "Running stage" not in out and runs(clone) == before  # nothing retrained, nothing re-evaluated
    assert next((clone / ".dvc/tmp/review").glob("*/dvc.lock")).read_bytes() == worktree_lock
    # the same report, but for where the base's outputs came from: rebuilt the first time, the local cache now
    assert without_provenance((clone / "reports/review.md").read_text()) == without_provenance(md)
    assert "rebuilt (" in md.split("**Base outputs**")[1].splitlines()[0]
    print(f"make review on a fresh clone: first {first:.0f} s, second {second:.0f} s")


def test_queued_experiments_log_into_the_project_store(clone: Path) -> None:
    sh(clone, "dvc", "repro")  # the baseline the experiments start from (run by the test above, or here)
    for rate in (0.002, 0.004):
        sh(clone, "dvc", "exp", "run", "--queue", "-S", f"variants.lenet5.train.learning_rate={rate}")
    sh(clone, "dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = sh(clone, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") == 2 and "Failed" not in status, status
    exps = json.loads(sh(clone, "dvc", "exp", "show", "--json"))
    accuracies = set()
    for baseline in exps:
        for exp in baseline.get("experiments") or []:
            data = exp["revs"][0]["data"]
            rate = data["params"]["params.yaml"]["data"]["variants"]["lenet5"]["train"]["learning_rate"]
            accuracies.add((rate, data["metrics"]["reports/metrics/lenet5.json"]["data"]["accuracy"]))
    assert {rate for rate, _ in accuracies} == {0.002, 0.004}
    with sqlite3.connect(clone / "mlflow.db") as db:
        logged = db.execute(
            "select p.value, m.value from runs r join params p on p.run_uuid = r.run_uuid and p.key = 'train.learning_rate' "
            "join latest_metrics m on m.run_uuid = r.run_uuid and m.key = 'test_accuracy' where r.name = 'lenet5'"
        ).fetchall()
    assert {(float(rate), acc) for rate, acc in logged} >= accuracies  # the experiments' runs, evaluated, in the project's store
