"""The register stage: the champion decision (pure), its failure paths, and main() on a temp sqlite store.

No TensorFlow here: the "models" are a few bytes (the stage needs only their
md5, which names the train run) and the runs are made with
:func:`pipeline.tracking.start`, tagged as train tags them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS

from pipeline import tracking
from pipeline.errors import PipelineError
from pipeline.stages import register, report
from pipeline.stages.register import Contender, decide

T = 0.02


def _c(variant: str, value: float | None, run: str = "", version: str | None = None) -> Contender:
    return Contender(variant, value, run or f"run-{variant}", version)


# --------------------------------------------------------------------------- the decision (pure)


def test_first_champion_moves() -> None:
    d = decide("pets", "accuracy", True, T, _c("a", 0.7), None)
    assert d.moved and d.champion is None and d.reason == "first champion"


@pytest.mark.parametrize(
    ("higher", "new", "old", "moved"),
    [
        (True, 0.80, 0.70, True),  # accuracy up 14 %
        (True, 0.71, 0.70, False),  # up 1.4 %: under the 2 % threshold
        (True, 0.70, 0.70, False),  # a tie
        (True, 0.60, 0.70, False),  # worse
        (False, 20.0, 25.0, True),  # mape down 20 %
        (False, 24.8, 25.0, False),  # down 0.8 %
        (False, 30.0, 25.0, False),  # mape up: worse
    ],
)
def test_the_challenger_must_win_by_the_threshold_either_way(higher: bool, new: float, old: float, moved: bool) -> None:
    d = decide("x", "m", higher, T, _c("new", new), _c("old", old, version="3"))
    assert d.moved is moved
    assert (d.challenger_value, d.champion_value, d.champion_version) == (new, old, "3")
    assert d.gain == pytest.approx((new - old) / old * (1 if higher else -1))
    assert d.version == (None if moved else "3")  # the stage fills in the new version when it moves


def test_exactly_the_threshold_is_not_enough() -> None:
    assert not decide("x", "accuracy", True, 0.5, _c("new", 0.75), _c("old", 0.5)).moved
    assert decide("x", "accuracy", True, 0.5, _c("new", 0.76), _c("old", 0.5)).moved


def test_the_champion_itself_and_a_nan_challenger_keep_the_champion() -> None:
    assert not decide("x", "accuracy", True, T, _c("a", 0.9, run="r1"), _c("a", 0.5, run="r1")).moved
    d = decide("x", "accuracy", True, T, _c("a", math.nan), _c("b", 0.5))
    assert not d.moved and "not a number" in d.reason


def test_gain_over_zero_and_best_breaks_ties_by_name() -> None:
    assert register.gain(0.1, 0.0, True) == math.inf and register.gain(0.0, 0.0, True) == 0.0
    assert register.best([_c("b", 0.8), _c("a", 0.8), _c("c", 0.5)], True).variant == "a"
    assert register.best([_c("b", 10.0), _c("a", math.nan), _c("c", 12.0)], False).variant == "b"


# --------------------------------------------------------------------------- main() on a temp store


@pytest.fixture
def store(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project with variants a, b (pets) and h (houses) in params.yaml and a sqlite store of its own."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["variants"] = {
        "a": {"dataset": "pets", "model": "lenet5", "augment": "none"},
        "b": {"dataset": "pets", "model": "lenet5", "augment": "none"},
        "h": {"dataset": "houses", "model": "mlp_tabular", "augment": "none"},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/mlflow.db")
    return project


def trained(root: Path, variant: str, dataset: str, metrics: dict[str, float], content: bytes) -> str:
    """A "model" file, its metrics and its train run, as train and evaluate leave them; returns the run id."""
    model = root / "models" / variant / "model.keras"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(content)
    task = "binary_classification" if dataset == "pets" else "regression"
    (root / "reports/metrics").mkdir(parents=True, exist_ok=True)
    (root / "reports/metrics" / f"{variant}.json").write_text(json.dumps({**metrics, "task": task, "dataset": dataset}))
    tags = {"dvc.stage": f"train@{variant}", tracking.MODEL_TAG: tracking.file_md5(model)}
    run_id = tracking.start(variant, dataset, tags, {})
    tracking.log_artifact(run_id, model, "model")  # stands for the logged MLflow model
    tracking._mlflow().MlflowClient().set_tag(run_id, MLFLOW_LOGGED_MODELS, "[]")
    return run_id


def decision(root: Path, dataset: str) -> dict:
    return json.loads((root / "reports/register" / f"{dataset}.json").read_text())


def test_main_registers_every_variant_and_moves_the_champion_only_by_the_threshold(store: Path) -> None:
    import mlflow

    run_a = trained(store, "a", "pets", {"accuracy": 0.70}, b"a1")
    trained(store, "b", "pets", {"accuracy": 0.60}, b"b1")
    trained(store, "h", "houses", {"mape": 30.0}, b"h1")
    register.main([])
    client = mlflow.MlflowClient()
    pets = decision(store, "pets")
    assert pets["moved"] and pets["challenger"] == "a" and pets["champion"] is None and pets["version"] == "1"
    assert decision(store, "houses")["challenger"] == "h"
    champion = client.get_model_version_by_alias("pets", "champion")
    assert champion.run_id == run_a and champion.tags["variant"] == "a" and champion.tags["test_accuracy"] == "0.7"
    assert {m.name for m in client.search_registered_models()} == {"pets", "pets.a", "pets.b", "houses", "houses.h"}
    assert json.loads(client.get_registered_model("pets").tags["champion.decision"])["challenger"] == "a"

    register.main([])  # nothing new: no new versions, the champion is kept
    assert not decision(store, "pets")["moved"] and len(client.search_model_versions("name = 'pets.a'")) == 1

    trained(store, "b", "pets", {"accuracy": 0.71}, b"b2")  # retrained: better, but by 1.4 %
    register.main([])
    pets = decision(store, "pets")
    assert not pets["moved"] and pets["challenger"] == "b" and pets["champion"] == "a" and pets["champion_value"] == 0.7
    assert len(client.search_model_versions("name = 'pets.b'")) == 2

    run_b = trained(store, "b", "pets", {"accuracy": 0.80}, b"b3")  # 14 % better
    register.main([])
    pets = decision(store, "pets")
    assert pets["moved"] and pets["champion"] == "a" and pets["version"] == "2"
    assert client.get_model_version_by_alias("pets", "champion").run_id == run_b

    report.main([])
    summary = (store / "reports/summary.md").read_text()
    assert "## Champions" in summary and "| pets | accuracy (higher is better) | b: 0.8000 | a (v1): 0.7000 |" in summary


def test_a_variant_without_metrics_or_run_names_the_file(store: Path) -> None:
    trained(store, "a", "pets", {"accuracy": 0.7}, b"a1")
    with pytest.raises(PipelineError, match=r"reports/metrics/b\.json: not found"):
        register.main([])
    trained(store, "b", "pets", {"accuracy": 0.7}, b"b1")
    (store / "models/b/model.keras").write_bytes(b"retrained, never logged")
    with pytest.raises(PipelineError, match=r"models/b/model\.keras: no MLflow run .* holds this model"):
        register.register_dataset("pets", ["a", "b"], T)


def test_a_run_without_a_logged_model_is_left_out_with_a_warning(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    trained(store, "a", "pets", {"accuracy": 0.7}, b"a1")
    model = store / "models/b/model.keras"
    trained(store, "b", "pets", {"accuracy": 0.9}, b"b1")
    model.write_bytes(b"restored by DVC")
    tracking.start("b", "pets", {"dvc.stage": "train@b", tracking.MODEL_TAG: tracking.file_md5(model)}, {})  # evaluate's
    decision = register.register_dataset("pets", ["a", "b"], T)
    assert decision is not None and decision.challenger == "a"
    assert "b: run" in caplog.text and "holds no MLflow model" in caplog.text


def test_sqlite_experiments_keep_artifacts_beside_the_store_and_servers_choose_their_own(tmp_path: Path) -> None:
    assert tracking.artifact_location(f"sqlite:///{tmp_path}/x/mlflow.db") == (tmp_path / "x/mlartifacts").as_uri()
    assert tracking.artifact_location("http://127.0.0.1:5000") is None  # the server's proxied mlflow-artifacts:/
