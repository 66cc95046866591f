"""``scripts/results.py``: the protocol file, the per-run params, the figures and the table in docs/results.md."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("results", REPO / "scripts" / "results.py")
results = importlib.util.module_from_spec(_spec)
sys.modules["results"] = results  # dataclasses look their module up
_spec.loader.exec_module(results)

BASE = {
    "data": {"profile": "demo", "mirror": None},
    "prepare": {"seed": 0, "pets": {"image_size": 64, "split": {"train": 0.7, "val": 0.15, "test": 0.15}}},
    "variants": {"cnn": {"dataset": "pets", "model": "cnn_functional"}, "mlp": {"dataset": "houses", "model": "mlp_tabular"}},
}


def _plan(tmp_path: Path, **overrides: object) -> Path:
    plan = {
        "mirror": "datasets",
        "port": 8765,
        "houses_split_seeds": [42, 1],
        "params": {"data": {"profile": "real"}},
        **overrides,
    }
    path = tmp_path / "results.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_the_repository_plan_parses_and_names_only_known_variants() -> None:
    plan = results.load_plan(REPO / "results.yaml")
    params = results.merge(yaml.safe_load((REPO / "params.yaml").read_text()), plan.overlay)
    assert plan.split_seeds[0] == 42 and len(plan.split_seeds) == 5
    assert set(plan.overlay["variants"]) <= set(yaml.safe_load((REPO / "params.yaml").read_text())["variants"])
    assert params["prepare"]["pets"]["split"] == {"train": 1000, "val": 500, "test": 500}
    assert params["prepare"]["houses"]["group_duplicates"] is False and params["data"]["profile"] == "real"


def test_load_plan_resolves_the_mirror_next_to_the_file(tmp_path: Path) -> None:
    plan = results.load_plan(_plan(tmp_path))
    assert plan.mirror == (tmp_path / "datasets").resolve() and plan.split_seeds == (42, 1) and plan.port == 8765


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        ({"extra": 1}, "expected exactly the keys"),
        ({"houses_split_seeds": []}, "houses_split_seeds"),
        ({"houses_split_seeds": [1, 1]}, "houses_split_seeds"),
        ({"port": 80}, "port"),
        ({"params": [1]}, "params"),
    ],
)
def test_load_plan_rejects_a_bad_plan_naming_the_key(tmp_path: Path, overrides: dict, culprit: str) -> None:
    with pytest.raises(results.ResultsError, match=culprit):
        results.load_plan(_plan(tmp_path, **overrides))


def test_merge_is_deep_and_leaves_its_inputs_alone() -> None:
    overlay = {
        "prepare": {"pets": {"split": {"train": 1000, "val": 500, "test": 500}}},
        "variants": {"cnn": {"train": {"epochs": 9}}},
    }
    merged = results.merge(BASE, overlay)
    assert merged["prepare"]["pets"] == {"image_size": 64, "split": {"train": 1000, "val": 500, "test": 500}}
    assert merged["variants"]["cnn"] == {"dataset": "pets", "model": "cnn_functional", "train": {"epochs": 9}}
    assert "train" not in BASE["variants"]["cnn"]


def test_run_params_sets_mirror_seed_and_only_the_chosen_variants() -> None:
    out = results.run_params(BASE, "http://127.0.0.1:8765", 3, ["mlp"])
    assert out["data"]["mirror"] == "http://127.0.0.1:8765" and list(out["variants"]) == ["mlp"]
    # only the houses split moves: the pets split (and what pretrain.pets_unlabeled trains on) stays put
    assert out["prepare"]["houses"]["seed"] == 3 and out["prepare"]["seed"] == 0


def test_select_names_an_unknown_variant_and_the_choices() -> None:
    assert results.select(BASE, None) == ["cnn", "mlp"] and results.select(BASE, "mlp, cnn") == ["mlp", "cnn"]
    with pytest.raises(results.ResultsError, match="unknown nope; choices: cnn, mlp"):
        results.select(BASE, "cnn,nope")


def test_figures_read_the_runs_outputs_and_name_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "reports" / "metrics").mkdir(parents=True)
    (tmp_path / "logs" / "train").mkdir(parents=True)
    (tmp_path / "reports/metrics/mlp.json").write_text(json.dumps({"ape_mean": 20.0, "ape_std": 15.0, "examples": 91}))
    (tmp_path / "logs/train/mlp.json").write_text(json.dumps({"train_seconds": 12.34, "images_seen": 100, "epochs": 5}))
    assert results.houses_figures(tmp_path, "mlp") == {
        "mape_mean": 20.0,
        "mape_std": 15.0,
        "test_houses": 91,
        "train_seconds": 12.3,
    }
    with pytest.raises(results.ResultsError, match="reports/metrics/cnn.json"):
        results.pets_figures(tmp_path, "cnn")
    (tmp_path / "reports/metrics/cnn.json").write_text(json.dumps({"accuracy": 0.8, "roc_auc": 0.9}))
    (tmp_path / "logs/train/cnn.json").write_text(json.dumps({"train_seconds": 60.04, "images_seen": 40000, "epochs": 20}))
    assert results.pets_figures(tmp_path, "cnn") == {
        "test_accuracy": 0.8,
        "roc_auc": 0.9,
        "image_passes": 40000,
        "epochs": 20,
        "train_seconds": 60.0,
    }


def test_houses_entry_puts_the_seed_split_first_and_averages_every_split() -> None:
    entry = results.houses_entry({1: {"mape_mean": 30.0, "mape_std": 1.0}, 42: {"mape_mean": 20.0, "mape_std": 2.0}}, (42, 1))
    assert entry["seed_split"] == {"mape_mean": 20.0, "mape_std": 2.0}
    assert [s["seed"] for s in entry["splits"]] == [42, 1] and entry["mape_mean_over_splits"] == 25.0


def test_table_and_results_doc_markers(tmp_path: Path) -> None:
    figures = {
        "pets": {
            "a": {"test_accuracy": 0.7, "image_passes": 20000, "train_seconds": 60.0},
            "b": {"test_accuracy": 0.8, "image_passes": 40000, "train_seconds": 90.0},
            "t": {
                "test_accuracy": 0.75,
                "image_passes": 100,
                "train_seconds": 9.0,
                "source": "pets_unlabeled",
                "knn_accuracy": 0.6,
            },
        },
        "pretrain": {
            "pets_unlabeled": {
                "task": "simclr",
                "knn_accuracy": 0.61,
                "linear_probe_accuracy": 0.64,
                "epochs": 20,
                "pretrain_seconds": 300.0,
            }
        },
        "houses": {"m": results.houses_entry({42: {"mape_mean": 20.0, "mape_std": 2.0}}, (42,))},
    }
    text = results.table(figures)
    assert text.index("`b`") < text.index("`t`") < text.index("`a`") and "20.0 % ± 2.0" in text
    assert "| `b` |  | 0.800 |  | 40,000 | 90 |" in text
    assert "| `t` | pets_unlabeled | 0.750 | 0.600 | 100 | 9 |" in text
    assert "| `pets_unlabeled` | simclr | 0.610 | 0.640 |  | 20 | 300 |" in text
    doc = tmp_path / "results.md"
    doc.write_text(f"intro\n{results.MARKERS[0]}\nold\n{results.MARKERS[1]}\nafter\n")
    results.update_doc(doc, text)
    assert doc.read_text() == f"intro\n{results.MARKERS[0]}\n{text}{results.MARKERS[1]}\nafter\n"
    doc.write_text("no markers")
    with pytest.raises(results.ResultsError, match="markers"):
        results.update_doc(doc, text)


def test_serve_names_a_port_in_use(tmp_path: Path) -> None:
    server = results.serve(tmp_path, 0)
    try:
        with pytest.raises(results.ResultsError, match=f"port {server.server_address[1]}"):
            results.serve(tmp_path, server.server_address[1])
    finally:
        server.shutdown()


def test_the_results_doc_carries_the_markers() -> None:
    content = results.RESULTS_DOC.read_text()
    assert all(content.count(marker) == 1 for marker in results.MARKERS)


def test_sources_name_the_pretrain_source_of_each_variant_starting_from_one() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    names = ["transfer_features", "transfer_finetune_rooms", "transfer_scratch", "lenet5"]
    assert results.sources(params, names) == {"transfer_features": "pets_unlabeled", "transfer_finetune_rooms": "houses_rooms"}
    params["transfer"]["backbone"] = "imagenet"  # no pretrain source then
    assert results.sources(params, names) == {}


def test_stage_seconds_time_each_stage_that_ran_from_dvcs_console() -> None:
    lines = [
        (0.0, "Stage 'download@pets' didn't change, skipping\n"),
        (1.0, "Running stage 'prepare@houses':\n"),
        (4.5, "Updating lock file 'dvc.lock'\n"),
        (5.0, "Stage 'pretrain@pets_unlabeled' is cached - skipping run, checking out outputs\n"),
        (6.0, "Running stage 'train@mlp':\n"),
        (9.0, "Running stage 'evaluate':\n"),  # train@mlp's lock line missing: the next stage ends it
        (9.5, "Updating lock file 'dvc.lock'\n"),
        (10.0, "Running stage 'report':\n"),
        (12.0, ""),  # the end of the output: report failed
    ]
    assert results.stage_seconds(lines) == {"prepare@houses": 3.5, "train@mlp": 3.0, "evaluate": 0.5, "report": 2.0}


def test_the_table_ends_with_the_last_runs_stage_times() -> None:
    run = {
        "variants": "all",
        "seconds": 600.0,
        "stage_seconds": {"houses_seed_1": {"prepare@houses": 3.0, "train@mlp": 10.0}, "seed_protocol": {"prepare@houses": 4.0}},
    }
    text = results.table({"runs": [{"variants": "old", "seconds": 1.0, "stage_seconds": {"x": {"old": 1.0}}}, run]})
    assert "variants: all, 10.0 min in all" in text and "`old`" not in text
    assert text.index("| `prepare@houses` | 2 | 7 |") < text.index("| `train@mlp` | 1 | 10 |")
    assert "| stage" not in results.table({"runs": [{"variants": "all", "seconds": 1.0}]})  # runs before stage times
