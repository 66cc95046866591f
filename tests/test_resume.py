"""Kill and resume: a train stage killed mid-run resumes at its last epoch and ends as an uninterrupted run would.

The stage runs in subprocesses (``python -m pipeline train``) on copies of
the shared demo project; the test kills them with SIGTERM and SIGKILL once
their checkpoint holds enough epochs, reruns, and compares the history,
the model file and the MLflow run with an uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import files, paths, runs, tracking
from pipeline.predict import trained_variants
from pipeline.training import checkpoint, inputs
from tests.pipeline_project import copy_project, demo_project, edit_params, trained_project

REPO = Path(__file__).resolve().parents[1]
VARIANT = "tiny_resume"
EPOCHS = 4
TINY = {  # augmentation and dropout: their random draws must continue where the kill left them
    VARIANT: {
        "dataset": "pets",
        "model": "cnn_functional",
        "augment": "standard",
        "width": 0.25,
        "dropout": 0.3,
        "train": {"epochs": EPOCHS, "batch_size": 32},
    }
}


def project(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A copy of the demo project's prepared pets data and stats, with the tiny variant."""
    root = copy_project(demo_project(tmp_path_factory), tmp_path_factory.mktemp(name), "data/prepared/pets", "data/stats")
    edit_params(root, "variants", TINY)
    return root


def launch(root: Path, stage: str = f"train@{VARIANT}") -> subprocess.Popen:
    """``python -m pipeline train <variant>`` for ``train@<variant>``, ``... pretrain <source>`` for ``pretrain@<source>``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "PYTHONPATH": str(REPO)}
    log = (root / "train.log").open("a")
    argv = stage.split("@")
    return subprocess.Popen([sys.executable, "-m", "pipeline", *argv], cwd=root, env=env, stdout=log, stderr=log)


def saved_state(root: Path, stage: str = f"train@{VARIANT}") -> checkpoint.State | None:
    found = list((root / paths.checkpoints(stage)).glob("*/state.json"))
    return checkpoint.load(found[0].parent) if found else None


def kill_after(root: Path, epochs: int, sig: int, stage: str = f"train@{VARIANT}") -> tuple[int, checkpoint.State]:
    """Start the stage, send ``sig`` once its checkpoint holds ``epochs`` epochs; return its exit code and last checkpoint."""
    process = launch(root, stage)
    deadline = time.monotonic() + 300
    while (state := saved_state(root, stage)) is None or state.epoch < epochs:
        assert process.poll() is None, (root / "train.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(sig)
    code = process.wait(120)
    return code, saved_state(root, stage)


def the_run(root: Path, experiment: str = "pets"):  # noqa: ANN201
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


@pytest.mark.slow
def test_a_killed_train_stage_resumes_and_ends_as_an_uninterrupted_one(tmp_path_factory: pytest.TempPathFactory) -> None:
    whole = project(tmp_path_factory, "whole")
    started = time.perf_counter()
    assert launch(whole).wait(600) == 0, (whole / "train.log").read_text()[-3000:]
    whole_seconds = time.perf_counter() - started

    cut = project(tmp_path_factory, "cut")
    started = time.perf_counter()
    code, state = kill_after(cut, 1, signal.SIGTERM)  # Ctrl-C's path too: the stage ends its run KILLED and exits non-zero
    assert code == 143 and state is not None and 1 <= state.epoch < EPOCHS
    client, run = the_run(cut)
    assert run.info.status == "KILLED" and run.data.tags[runs.END_TAG] == "interrupted by SIGTERM"
    code, state = kill_after(cut, 2, signal.SIGKILL)  # resumes, then dies without a word
    assert code == -signal.SIGKILL and 2 <= state.epoch < EPOCHS
    assert the_run(cut)[1].info.status == "RUNNING"
    orphan = cut / "models" / f".{VARIANT}.tmpdead"  # what a kill during the model's save leaves
    orphan.mkdir(parents=True)
    (orphan / "model.keras").write_bytes(b"PK partial")
    assert launch(cut).wait(600) == 0, (cut / "train.log").read_text()[-3000:]
    cut_seconds = time.perf_counter() - started
    assert f"resuming fit at epoch {state.epoch + 1}" in (cut / "train.log").read_text()

    # the same history to the last digit, and the same model file
    whole_history = pd.read_csv(whole / paths.history(VARIANT))
    pd.testing.assert_frame_equal(pd.read_csv(cut / paths.history(VARIANT)), whole_history, check_exact=True)
    md5 = tracking.file_md5(whole / paths.model(VARIANT) / "model.keras")
    assert tracking.file_md5(cut / paths.model(VARIANT) / "model.keras") == md5
    # one MLflow run, resumed twice, finished, each epoch logged exactly once
    client, run = the_run(cut)
    assert run.info.run_id == state.run_id and run.info.status == "FINISHED"
    assert run.data.tags[runs.RESUME_TAG] == "2" and run.data.tags[tracking.MODEL_TAG] == md5
    for key in whole_history.columns.drop("epoch"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), key
        np.testing.assert_array_equal([m.value for m in sorted(history, key=lambda m: m.step)], whole_history[key])
    # no checkpoint, no orphan, and the orphan was never a variant
    assert not (cut / paths.CHECKPOINTS).exists() or not any((cut / paths.CHECKPOINTS).iterdir())
    assert sorted(p.name for p in (cut / "models").iterdir()) == [VARIANT]
    print(
        f"\nuninterrupted {whole_seconds:.1f} s; SIGTERM, SIGKILL at epoch {state.epoch}, resume: {cut_seconds:.1f} s; md5 {md5}"
    )


@pytest.mark.slow
def test_transfer_learning_resumes_in_its_fine_tuning_phase(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.test_transfer import PRETRAIN, TRANSFER, VARIANTS

    variants = {"finetune": {**VARIANTS["finetune"], "extra": {**VARIANTS["finetune"]["extra"], "finetune_epochs": 3}}}
    parts = ("data/raw/houses", "data/validated/houses", "data/prepared/houses", "data/prepared/pets", "data/stats")
    sections = {"pretrain": PRETRAIN, "transfer": TRANSFER, "variants": variants}
    whole = trained_project(tmp_path_factory, "finetune-whole", parts, sections, [("pretrain", ["houses_rooms"])])
    cut = copy_project(whole, tmp_path_factory.mktemp("finetune-cut"), "data/prepared/pets", "data/stats", "models/pretrain")
    assert launch(whole, "train@finetune").wait(600) == 0, (whole / "train.log").read_text()[-3000:]
    code, state = kill_after(cut, 2, signal.SIGKILL, "train@finetune")  # 1 epoch of the head, then 1 of fine-tuning
    assert code == -signal.SIGKILL and state.phase == "finetune" and state.epoch in (2, 3)
    assert launch(cut, "train@finetune").wait(600) == 0, (cut / "train.log").read_text()[-3000:]
    assert f"resuming finetune at epoch {state.epoch + 1}" in (cut / "train.log").read_text()
    history = pd.read_csv(cut / paths.history("finetune"))
    assert history.epoch.tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(history, pd.read_csv(whole / paths.history("finetune")), check_exact=True)
    md5 = tracking.file_md5(whole / paths.model("finetune") / "model.keras")
    assert tracking.file_md5(cut / paths.model("finetune") / "model.keras") == md5


PRETRAIN_RESUME = {  # source -> (the folders it reads, its section with 3 epochs)
    "houses_rooms": (("data/raw/houses", "data/validated/houses", "data/prepared/houses"), {"epochs": 3}),
    # SimCLR: views and order are functions of (seed, epoch), so a resumed run sees what the uninterrupted one saw
    "pets_unlabeled": (
        ("data/raw/pets", "data/validated/pets", "data/prepared/pets"),
        {"epochs": 3, "warmup": 1, "width": 0.25, "batch_size": 8, "train_size": 32},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(PRETRAIN_RESUME))
def test_a_killed_pretrain_resumes_and_ends_as_an_uninterrupted_one(
    tmp_path_factory: pytest.TempPathFactory, source: str
) -> None:
    from tests.test_transfer import PRETRAIN

    parts, changes = PRETRAIN_RESUME[source]
    stage, out = f"pretrain@{source}", paths.pretrain(source)
    sections = {"pretrain": {**PRETRAIN, source: {**PRETRAIN[source], **changes}}}
    whole = trained_project(tmp_path_factory, f"pretrain-whole-{source}", parts, sections, [])
    cut = copy_project(whole, tmp_path_factory.mktemp(f"pretrain-cut-{source}"), *parts)
    assert launch(whole, stage).wait(600) == 0, (whole / "train.log").read_text()[-3000:]
    code, state = kill_after(cut, 1, signal.SIGKILL, stage)
    assert code == -signal.SIGKILL and state.epoch in (1, 2)
    assert launch(cut, stage).wait(600) == 0, (cut / "train.log").read_text()[-3000:]
    assert f"at epoch {state.epoch + 1}" in (cut / "train.log").read_text()
    history = pd.read_csv(cut / out / "history.csv")
    pd.testing.assert_frame_equal(history, pd.read_csv(whole / out / "history.csv"), check_exact=True)
    md5 = tracking.file_md5(whole / out / "backbone.keras")
    assert tracking.file_md5(cut / out / "backbone.keras") == md5
    client, run = the_run(cut, tracking.PRETRAIN_EXPERIMENT)
    assert run.info.status == "FINISHED" and run.data.tags[runs.RESUME_TAG] == "1"
    assert run.data.tags["pretrain.source"] == source and run.data.tags["dvc.stage"] == stage
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [0, 1, 2]
    assert not (cut / paths.checkpoints(stage)).exists() or not any((cut / paths.checkpoints(stage)).iterdir())
    assert sorted(p.name for p in (cut / paths.PRETRAIN).iterdir()) == [source]


def test_epoch_plan_depends_on_seed_and_epoch_only() -> None:
    x = {"image": np.arange(10 * 2 * 2 * 3, dtype=np.float32).reshape(10, 2, 2, 3)}
    y = np.arange(10, dtype=np.float32).reshape(-1, 1)

    def labels(epochs: range) -> list[list[float]]:
        return [b.ravel().tolist() for _, b in inputs.make_dataset(x, y, 4, 7, mix=(0.2, 0.0), epochs=epochs).as_numpy_iterator()]

    three = labels(range(3))
    assert len(three) == 9  # 3 batches an epoch, the last one short: no batch spans two epochs
    assert labels(range(1, 3)) == three[3:]  # a run resumed at epoch 1 sees what the uninterrupted one saw
    order = [inputs.epoch_plan(10, 4, 7, e)[0].tolist() for e in range(3)]
    assert order[0] != order[1] and all(sorted(o) == list(range(10)) for o in order)


def test_a_checkpoint_of_another_run_is_removed_and_a_bad_one_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints" / "train@x"
    (root / "oldkey").mkdir(parents=True)
    assert checkpoint.run_key({"epochs": 2}, []) != checkpoint.run_key({"epochs": 3}, [])
    where = checkpoint.folder(root, "newkey")
    assert where == root / "newkey" and not (root / "oldkey").exists()
    where.mkdir()
    (where / checkpoint.STATE).write_text('{"run_id": "r", "phase": "fit"}')  # a field missing
    assert checkpoint.load(where) is None


def test_leftovers_of_a_killed_write_go_at_the_next_write_and_are_no_variant(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for name in (".a.tmp1234", ".a.old-beef", ".b.tmp99"):
        (models / name).mkdir(parents=True)
        (models / name / "model.keras").write_bytes(b"partial")
    assert trained_variants(models) == []
    with files.atomic_dir(models / "a") as tmp:
        (tmp / "model.keras").write_bytes(b"whole")
    assert sorted(p.name for p in models.iterdir()) == [".b.tmp99", "a"]  # another target's are its own writer's
    assert trained_variants(models) == ["a"]


def test_runs_of_dead_processes_end_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stage = {"dvc.stage": "train@x"}
    mine = tracking.start("x", "pets", {**stage, **runs.process_tags()}, {})
    gone = tracking.start("x", "pets", {**stage, **runs.process_tags(), "process.pid": str(dead.pid)}, {})
    kept = tracking.start("x", "pets", {**stage, **runs.process_tags(), "process.pid": str(dead.pid)}, {})
    elsewhere = tracking.start("x", "pets", {**stage, **runs.process_tags(), "process.host": "other-host"}, {})
    assert runs.end_dead_runs("train@x", "pets", keep=kept) == [gone]
    client = tracking._mlflow().MlflowClient()
    statuses = {r: client.get_run(r).info.status for r in (mine, gone, kept, elsewhere)}
    assert statuses == {mine: "RUNNING", gone: "FAILED", kept: "RUNNING", elsewhere: "RUNNING"}
    assert client.get_run(gone).data.tags[runs.END_TAG] == f"process {dead.pid} on {runs.process_tags()['process.host']} died"
    assert runs.open_run(kept, "x", "pets", stage, {}) == kept
    again = client.get_run(kept)
    assert again.info.status == "RUNNING" and again.data.tags[runs.RESUME_TAG] == "1"
    assert again.data.tags["process.pid"] == str(os.getpid())
