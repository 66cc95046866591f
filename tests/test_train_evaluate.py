"""A tiny end-to-end augment -> train -> evaluate for one classification and one regression variant.

Runs on a copy of the shared demo project (prepared shards and stats) with a
small, fast configuration; checks the model files, the metrics and plots, and
what landed in the MLflow run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import config
from pipeline.errors import PipelineError
from pipeline.stages import train
from pipeline.training import inputs, loop
from tests.pipeline_project import copy_project, trained_project

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

TINY = {
    "tiny_cnn": {
        "dataset": "pets",
        "model": "cnn_functional",
        "augment": "standard",
        "width": 0.25,
        "train": {"epochs": 2, "batch_size": 32},
    },
    "tiny_seq": {
        "dataset": "pets",
        "model": "cnn_sequential",
        "augment": "none",
        "width": 0.25,
        "train": {"epochs": 1, "batch_size": 64},
    },
    "tiny_mixed": {"dataset": "houses", "model": "mixed_inputs", "augment": "none", "train": {"epochs": 2, "batch_size": 16}},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    steps = [("augment", []), *(("train", [name]) for name in TINY), ("evaluate", []), ("report", [])]
    return trained_project(tmp_path_factory, "train", ("data/prepared", "data/stats"), {"variants": TINY}, steps)


def _run(root: Path, variant: str):  # noqa: ANN202
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    run_id = json.loads((root / "logs/train" / f"{variant}.json").read_text())["run_id"]
    client = mlflow.MlflowClient()
    return client, client.get_run(run_id)


def test_outputs_written(trained: Path) -> None:
    for name, variant in TINY.items():
        assert (trained / "models" / name / "model.keras").is_file()
        history = pd.read_csv(trained / "reports/train" / f"{name}.csv")
        assert history.epoch.tolist() == list(range(variant["train"]["epochs"]))
        assert {"loss", "val_loss"} <= set(history.columns)
    assert (trained / "reports/augmentation/standard.png").stat().st_size > 1000  # one preview per policy but none
    assert sorted(p.name for p in (trained / "reports/augmentation").iterdir()) == ["standard.png"]


def test_metrics_and_plots(trained: Path) -> None:
    cls = json.loads((trained / "reports/metrics/tiny_cnn.json").read_text())
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix"} <= set(cls)
    assert 0 <= cls["accuracy"] <= 1 and sum(map(sum, cls["confusion_matrix"]["matrix"])) == cls["examples"]
    reg = json.loads((trained / "reports/metrics/tiny_mixed.json").read_text())
    assert {"mae", "rmse", "mape", "ape_mean", "ape_std"} <= set(reg) and reg["mape"] > 0
    assert (trained / "reports/plots/images/tiny_cnn/confusion_matrix.png").is_file()
    roc = pd.read_csv(trained / "reports/plots/roc/tiny_cnn.csv")
    assert roc.fpr.is_monotonic_increasing and roc.tpr.iloc[-1] == 1.0
    confusion = pd.read_csv(trained / "reports/plots/confusion/tiny_cnn.csv")
    assert len(confusion) == cls["examples"] and set(confusion.actual) <= {"Cat", "Dog"}
    assert (trained / "reports/plots/images/tiny_mixed/predicted_vs_actual.png").is_file()
    assert (trained / "reports/plots/images/tiny_mixed/training_curves.png").is_file()
    history = pd.read_csv(trained / "reports/plots/history/tiny_cnn.csv")
    assert history.equals(pd.read_csv(trained / "reports/train/tiny_cnn.csv"))
    assert len(pd.read_csv(trained / "reports/plots/scatter/tiny_mixed.csv")) == reg["examples"]


def test_model_reloads_safely_and_predicts_the_same(trained: Path) -> None:
    import keras

    from pipeline.data import shards
    from pipeline.training.inputs import make_dataset, model_inputs

    model = keras.models.load_model(trained / "models/tiny_mixed/model.keras", safe_mode=True)
    index, images = shards.load_split(trained / "data/prepared/houses", "test")
    x = model_inputs(("tabular", "zipcode", "image"), index, images)
    p = model.predict(make_dataset(x, index.price.to_numpy(), 8, None), verbose=0).reshape(-1)
    table = json.loads((trained / "reports/metrics/tiny_mixed.json").read_text())
    ape = np.abs(p - index.price.to_numpy()) / index.price.to_numpy() * 100
    assert ape.mean() == pytest.approx(table["mape"], rel=1e-4)


def test_mlflow_run_holds_params_history_weights_artifacts(trained: Path) -> None:
    client, run = _run(trained, "tiny_cnn")
    assert run.info.run_name == "tiny_cnn" and run.info.status == "FINISHED"
    assert float(run.data.params["class_weight.Dog"]) > float(run.data.params["class_weight.Cat"])  # Dog is the rare class
    assert run.data.params["train.epochs"] == "2" and run.data.params["model"] == "cnn_functional"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
    assert "test_accuracy" in run.data.metrics
    assert run.data.tags["dataset"] == "pets" and run.data.tags["dvc.stage"] == "train@tiny_cnn"
    folders = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "stats", "plots", "metrics", "history", "config"} <= folders
    assert {a.path for a in client.list_artifacts(run.info.run_id, "stats")} >= {"stats/pets.json", "stats/class_weight.json"}


@pytest.mark.parametrize("variant", list(TINY))  # functional, Sequential, three named inputs (one of strings)
def test_mlflow_model_has_signature_and_input_example(trained: Path, variant: str) -> None:
    import keras
    import mlflow
    import mlflow.keras
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS

    from pipeline.models import registry
    from pipeline.stages.train import make_dataset

    client, run = _run(trained, variant)
    assert [m["artifact_path"] for m in json.loads(run.data.tags[MLFLOW_LOGGED_MODELS])] == ["model"]  # the UI's model view
    files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/MLmodel", "model/input_example.json", "model/data"} <= files
    uri = f"runs:/{run.info.run_id}/model"
    model = mlflow.models.Model.load(uri)
    names = registry.get(TINY[variant]["model"]).inputs
    inputs = {spec.name: spec for spec in model.signature.inputs.inputs}
    assert list(inputs) == list(names)
    example = model.load_input_example(uri)
    assert set(example) == set(names)
    for name, array in example.items():
        assert array.shape[0] == 1 and tuple(array.shape[1:]) == tuple(inputs[name].shape[1:])
        assert (array.dtype == object) == (inputs[name].type == np.dtype(object))  # the zip codes
    # the logged model.keras is the trained one: same prediction on the example
    logged = mlflow.keras.load_model(uri)
    local = keras.models.load_model(trained / "models" / variant / "model.keras", safe_mode=True)
    as_dict = not isinstance(local, keras.Sequential)
    x = {k: example[k].astype(str) if example[k].dtype == object else example[k] for k in names}  # tf.data takes str, not object
    x = make_dataset(x, np.zeros((1, 1)), 1, None, as_dict=as_dict)
    np.testing.assert_allclose(logged.predict(x, verbose=0), local.predict(x, verbose=0), rtol=1e-5)
    assert model.signature.outputs.inputs[0].shape == (-1, 1)


def test_training_is_deterministic(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retraining with the same seed gives the same history (CPU, op determinism)."""
    copy_project(trained, tmp_path, "data/prepared", "data/stats", "reports/augmentation")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    train.main(["tiny_cnn"])
    again = pd.read_csv(tmp_path / "reports/train/tiny_cnn.csv")
    first = pd.read_csv(trained / "reports/train/tiny_cnn.csv")
    pd.testing.assert_frame_equal(again, first)


@pytest.mark.parametrize(
    "variant, change, message",
    [
        ("tiny_cnn", {"model": "mlp_tabular"}, r"variants\.tiny_cnn: model 'mlp_tabular' is for regression"),
        (
            "tiny_mixed",
            {"train": {"mixup": 0.2}},
            r"variants\.tiny_mixed\.train: mixup / cutmix .* 'mixed_inputs' takes tabular, zipcode, image",
        ),
        (
            "tiny_cnn",
            {"model": "resnet", "extra": {"stem": "tall"}},
            r"params\.yaml: variants\.tiny_cnn\.extra\.stem: 'tall' is not one of single, deep",
        ),
        (
            "tiny_mixed",
            {"extra": {"photo_pool": 64}},
            r"variants\.tiny_mixed: the montage CNN pools 3 times \(photo_pool 64\): image_size must be >= 512",
        ),
        (
            "tiny_cnn",
            {"model": "transfer_finetune", "extra": {"finetune_epochs": 2}, "train": {"epochs": 4, "warmup": 2}},
            r"variants\.tiny_cnn\.train\.warmup: 2 epochs of warmup leave none of the 2 fine-tuning epochs",
        ),
    ],
    ids=["task-mismatch", "mixup-on-multi-input", "extra-knob-in-config", "extra-knob-vs-image-size", "warmup-vs-fine-tuning"],
)
def test_a_bad_variant_fails_before_training_naming_the_culprit(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, change: dict, message: str
) -> None:
    copy_project(trained, tmp_path, "data/prepared", "data/stats", "reports/augmentation")
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    entry = raw["variants"][variant]
    for key, value in change.items():  # mappings (train, extra) are merged over the variant's own
        entry[key] = {**entry.get(key, {}), **value} if isinstance(value, dict) else value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(PipelineError, match=message):
        train.main([variant])


@pytest.mark.parametrize("schedule, after", [("cosine", [0.05, 0.0]), ("constant", [0.1, 0.1])])
def test_warmup_ramps_linearly_into_the_schedule(schedule: str, after: list[float]) -> None:
    cfg = config.load(REPO_PARAMS).train.model_copy(update={"epochs": 4, "learning_rate": 0.1, "schedule": schedule, "warmup": 2})
    rate = loop.learning_rate(cfg, steps_per_epoch=10)
    at = {step: float(rate(step)) for step in (0, 10, 20, 30, 40)}
    np.testing.assert_allclose([at[0], at[10], at[20]], [0.0, 0.05, 0.1], atol=1e-7)  # 2 epochs x 10 steps of ramp
    np.testing.assert_allclose([at[30], at[40]], after, atol=1e-7)  # half-way through the cosine, and its end


def test_a_variant_image_size_above_the_prepared_size_names_the_key() -> None:
    variant = config.load(REPO_PARAMS).variants["resnet"]
    stats = {"image": {"mean": [120.0] * 3, "variance": [3600.0] * 3}}
    spec = loop.model_spec(variant.model_copy(update={"image_size": 64}), {"image_size": 96}, stats)
    assert (spec.image_size, spec.input_size) == (64, 96)
    with pytest.raises(
        PipelineError, match=r"variants\.resnet\.image_size: 128 px; the model resizes the prepared 96 px images down"
    ):
        loop.model_spec(variant.model_copy(update={"image_size": 128}), {"image_size": 96}, stats)


def test_make_dataset_mixes_train_batches_reproducibly() -> None:
    images = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 255) * 8])
    labels = np.array([[0.0], [1.0]] * 8, np.float32)

    def epoch(seed: int) -> np.ndarray:
        return np.concatenate(
            [y for _, y in inputs.make_dataset({"image": images}, labels, 16, seed, mix=(0.4, 1.0)).as_numpy_iterator()]
        )

    soft = epoch(3)
    assert ((soft > 0) & (soft < 1)).any() and sorted(np.unique(labels)) == [0.0, 1.0]
    np.testing.assert_array_equal(epoch(3), soft)
    y_plain = np.concatenate([y for _, y in inputs.make_dataset({"image": images}, labels, 16, 3).as_numpy_iterator()])
    assert set(np.unique(y_plain)) == {0.0, 1.0}  # without mix: the labels as given


def test_report_leaderboard(trained: Path) -> None:
    summary = (trained / "reports/summary.md").read_text()
    assert "## pets: binary classification (by accuracy, higher is better)" in summary
    assert "## houses: regression (by mape, lower is better)" in summary
    for name in TINY:
        assert f"| {name} |" in summary
    scalars = json.loads((trained / "reports/metrics.json").read_text())
    assert set(scalars) == set(TINY) and "accuracy" in scalars["tiny_cnn"] and "mape" in scalars["tiny_mixed"]


def test_class_weight_choices() -> None:
    stats = {
        "classes": ["Cat", "Dog"],
        "class_weights": {"balanced": {"Cat": 0.6, "Dog": 2.0}, "inverse": {"Cat": 1.3, "Dog": 4.0}},
    }
    base = config.load(REPO_PARAMS).train

    def weights(choice: Any, stats: dict = stats) -> dict | None:
        return loop.class_weight(base.model_copy(update={"class_weight": choice}), stats)

    assert weights("balanced") == {0: 0.6, 1: 2.0}
    assert weights("inverse") == {0: 1.3, 1: 4.0}
    assert weights("none") is None
    assert weights({"Dog": 5.0, "Cat": 1.0}) == {0: 1.0, 1: 5.0}
    with pytest.raises(PipelineError, match=r"train.class_weight: give a weight for each class \['Cat', 'Dog'\], got \['Cat'\]"):
        weights({"Cat": 1.0})
    assert weights("balanced", {"classes": None}) is None  # regression


def test_runs_of_one_repro_share_a_revision_tag(trained: Path) -> None:
    _, cnn = _run(trained, "tiny_cnn")
    _, mixed = _run(trained, "tiny_mixed")
    assert cnn.data.tags["pipeline.revision"] == mixed.data.tags["pipeline.revision"] == "unknown"  # not a git checkout


def test_revision_follows_params_not_dvc_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from pipeline import tracking

    monkeypatch.chdir(tmp_path)
    for name in ("params.yaml", "dvc.lock"):
        (tmp_path / name).write_text("a: 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    clean = tracking.git_tags()
    assert clean["git.dirty"] == "false" and clean["pipeline.revision"] == clean["git.commit"][:12]
    (tmp_path / "dvc.lock").write_text("a: 2\n")  # dvc repro rewrites it stage by stage
    assert tracking.git_tags() == clean
    (tmp_path / "params.yaml").write_text("a: 2\n")
    dirty = tracking.git_tags()
    assert dirty["git.dirty"] == "true" and dirty["pipeline.revision"].startswith(clean["pipeline.revision"] + "+")


def test_evaluate_in_a_store_without_the_train_run(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Model folders restored by DVC (a fresh clone, a CI cache) were trained under another store: evaluate goes on."""
    import logging

    import mlflow

    from pipeline import tracking
    from pipeline.stages import evaluate

    copy_project(trained, tmp_path, "data/prepared", "models", "reports/train")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/fresh.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    md5 = tracking.file_md5(tmp_path / "models/tiny_seq/model.keras")
    with caplog.at_level(logging.INFO, logger="pipeline.tracking"):
        evaluate.main(["tiny_seq"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tiny_seq: no run")]
    assert len(lines) == 1 and f"no run in {uri} trained models/tiny_seq/model.keras (md5 {md5}" in lines[0]
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pets").experiment_id])
    assert run.info.status == "FINISHED" and lines[0].endswith(f"logging into new run {run.info.run_id}")
    assert run.data.tags[tracking.MODEL_TAG] == md5 and run.data.tags["dvc.stage"] == "train@tiny_seq"
    assert run.data.params["model"] == "cnn_sequential" and "test_accuracy" in run.data.metrics
    # the next evaluate finds that run by the model file's md5: no second run, no log line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.tracking"):
        evaluate.main(["tiny_seq"])
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert not [r for r in caplog.records if "no run" in r.getMessage()]
    # in the store where it trained, the train run carries the tag, and evaluate logged into it
    _, trained_run = _run(trained, "tiny_seq")
    assert trained_run.data.tags[tracking.MODEL_TAG] == md5 and "test_accuracy" in trained_run.data.metrics


def test_the_saved_model_has_the_same_bytes_when_the_weights_are_the_same(tmp_path: Path) -> None:
    import keras

    from pipeline import files
    from pipeline.models import registry

    spec = registry.ModelSpec(image_size=32)
    models = []
    for _ in range(2):  # two builds, as two runs of the train stage make them
        keras.utils.set_random_seed(1)
        models.append(registry.build("lenet5", spec))
    for model, name in zip(models, ("a.keras", "b.keras")):
        files.save_keras(model, tmp_path / name)  # Keras stamps the time and numbers shared objects by address: removed
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    x = np.full((1, 32, 32, 3), 128.0, np.float32)
    again = keras.models.load_model(tmp_path / "b.keras", safe_mode=True)
    np.testing.assert_array_equal(again.predict({"image": x}, verbose=0), models[0].predict({"image": x}, verbose=0))


def test_shared_object_ids_are_numbered_by_appearance_not_by_address() -> None:
    from pipeline.files import _renumber_shared_objects

    config = (
        '{"a": {"shared_object_id": 140485606548688}, "b": {"shared_object_id": 93}, "c": {"shared_object_id": 140485606548688}}'
    )
    renumbered = '{"a": {"shared_object_id": 0}, "b": {"shared_object_id": 1}, "c": {"shared_object_id": 0}}'
    assert _renumber_shared_objects(config) == renumbered


def test_evaluate_refuses_an_unsafe_model_in_one_line(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A model.keras with a Python lambda inside is not run: exit 1 and one line naming the file, as predict does."""
    import keras

    from pipeline import __main__ as cli_main

    copy_project(trained, tmp_path, "data/prepared", "models", "reports/train")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    unsafe = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.Lambda(lambda x: x[:, :1, 0, 0])])
    unsafe.save(tmp_path / "models/tiny_seq/model.keras")
    assert cli_main.main(["evaluate", "tiny_seq"]) == 1
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "\n" not in error and error.startswith("models/tiny_seq/model.keras: cannot load the model: ")
    assert "Lambda" in error and "arbitrary code execution" in error
    assert not (tmp_path / "reports/metrics/tiny_seq.json").exists()
