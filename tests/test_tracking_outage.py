"""A tracking store that goes away after a run started: the calls are spooled, the run goes on, a sync replays them.

A real ``mlflow server`` (sqlite, proxied artifacts) behind :class:`FaultProxy`,
which hangs (accepts, never answers) or refuses on command.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import spool, tracking
from pipeline.errors import PipelineError
from tests import mlflowserver
from tests.faultproxy import FaultProxy


def test_spool_keeps_records_and_copies_in_order_and_skips_a_cut_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "spool"
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir/b.txt").write_text("b")
    spool.append(folder, "run1", {"op": "batch", "metrics": [["loss", float("nan"), 1, 0]]})
    spool.append(folder, "run1", {"op": "artifacts", "folder": "x"}, tmp_path / "a.txt")
    spool.append(folder, "run1", {"op": "artifacts", "folder": "y"}, tmp_path / "dir")
    (tmp_path / "a.txt").unlink()  # the original may be temporary: the spool holds its own copy
    shutil.rmtree(tmp_path / "dir")
    with (folder / "run1" / spool.RECORDS).open("a") as out:
        out.write('{"op": "batch", "metr')  # a kill mid-append
    assert spool.pending(folder) == ["run1"]
    with caplog.at_level(logging.WARNING, logger="pipeline.spool"):
        batch, file, tree = spool.records(folder, "run1")
    assert "line 4: not a whole record" in caplog.text
    assert batch["metrics"][0][1] != batch["metrics"][0][1]  # NaN survives
    assert Path(file["path"]).read_text() == "a" and (Path(tree["path"]) / "b.txt").read_text() == "b"
    with spool.locked(folder, "run1") as mine, spool.locked(folder, "run1", wait=False) as other:
        assert mine and not other  # flock is per open file: a second opener (another process) is refused
        spool.remove(folder, "run1")
    assert spool.pending(folder) == []


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, FaultProxy]]:
    """A project folder (outside git) logging to a real server through a fault proxy, with short request bounds."""
    store = tmp_path / "store"
    store.mkdir()
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with mlflowserver.serve(store) as base, FaultProxy(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as proxy:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
        yield root, proxy


def test_a_hanging_then_refusing_store_loses_nothing(
    project: tuple[Path, FaultProxy], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    import mlflow

    root, proxy = project
    run_id = tracking.start("v", "pets", {"dvc.stage": "train@v"}, {"lr": 0.1})
    tracking.log_metrics(run_id, {"loss": 1.0}, step=0)
    proxy.set("hang")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking"):
        tracking.log_metrics(run_id, {"loss": 0.5}, step=1)  # waits one request timeout, then spools
    assert time.monotonic() - started < 8
    assert f"tracking store {proxy.url} failed" in caplog.text and f"run {run_id}'s calls go to" in caplog.text
    connections, started = proxy.connections, time.monotonic()
    tracking.log_metrics(run_id, {"loss": 0.25}, step=2)  # the run is spooling: no request, no wait
    (root / "notes.txt").write_text("n")
    tracking.log_artifact(run_id, root / "notes.txt", "notes")
    tracking.set_tags(run_id, {"model.md5": "abc"})
    assert proxy.connections == connections and time.monotonic() - started < 1
    proxy.set("refuse")
    tracking.finish(run_id)  # spooled; its replay attempt meets the refusal and keeps the queue
    queue = tracking.spool_folder()
    assert queue == root / "logs/tracking-spool" and spool.pending(queue) == [run_id]
    backup = root / "spool-copy"
    shutil.copytree(queue, backup)
    with pytest.raises(PipelineError, match=rf"{queue}: 1 runs could not be replayed yet \({run_id}\)"):
        tracking.main(["sync"])
    assert spool.pending(queue) == [run_id]

    proxy.set("forward")
    tracking.main(["sync"])
    assert "replayed 5 tracking calls; 0 runs still spooled" in capsys.readouterr().out
    client = mlflow.MlflowClient(proxy.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time and run.data.tags["model.md5"] == "abc"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert [f.path for f in client.list_artifacts(run_id, "notes")] == ["notes/notes.txt"]
    assert spool.pending(queue) == []
    # replaying the same queue again (a sync interrupted after sending) duplicates nothing
    shutil.rmtree(queue)
    shutil.copytree(backup, queue)
    assert tracking.sync() == (5, [])
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 1.0), (1, 0.5), (2, 0.25)]


def test_the_next_use_of_the_store_replays_the_spool(project: tuple[Path, FaultProxy]) -> None:
    import mlflow

    root, proxy = project
    run_id = tracking.start("v", "pets", {"dvc.stage": "train@v"}, {})
    proxy.set("refuse")
    tracking.log_metrics(run_id, {"loss": 1.0}, step=0)
    tracking.finish(run_id, "KILLED")
    assert spool.pending(tracking.spool_folder()) == [run_id]
    proxy.set("forward")
    tracking._first_use.cache_clear()  # a new process: the next stage
    tracking.find_model_run("train@v", "nothing", "pets")
    assert spool.pending(tracking.spool_folder()) == []
    assert mlflow.MlflowClient(proxy.url).get_run(run_id).info.status == "KILLED"


TINY = {"tiny": {"dataset": "pets", "model": "cnn_functional", "augment": "none", "width": 0.25, "train": {"epochs": 4}}}


@pytest.mark.slow
def test_training_goes_on_through_an_outage_and_the_next_stage_replays_it(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The server hangs from the second epoch's metrics on: train completes, evaluate (server back) replays its calls."""
    import json
    import os
    import subprocess
    import sys

    import mlflow

    from tests.pipeline_project import REPO, trained_project

    root = trained_project(tmp_path_factory, "outage", ("data/prepared", "data/stats"), {"variants": TINY}, [])
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "GIT_CEILING_DIRECTORIES": str(root.parent),
    }
    with mlflowserver.serve(tmp_path) as base, FaultProxy(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as proxy:
        env["MLFLOW_TRACKING_URI"] = proxy.url
        proxy.switch_on(rb'"step": "?1\b', "hang")
        started = time.monotonic()
        train = subprocess.run(
            [sys.executable, "-m", "pipeline", "train", "tiny"], cwd=root, env=env, capture_output=True, text=True, timeout=600
        )
        seconds = time.monotonic() - started
        assert train.returncode == 0, train.stderr[-3000:]
        assert proxy.mode == "hang" and f"tracking store {proxy.url} failed" in train.stderr
        assert "replay them with `python -m pipeline tracking sync`" in train.stderr
        assert (root / "models/tiny/model.keras").is_file() and len(
            (root / "reports/train/tiny.csv").read_text().splitlines()
        ) == 5
        run_id = json.loads((root / "logs/train/tiny.json").read_text())["run_id"]
        assert spool.pending(root / "logs/tracking-spool") == [run_id]
        client = mlflow.MlflowClient(base)  # the server itself, past the proxy
        assert client.get_run(run_id).info.status == "RUNNING"
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0]

        proxy.set("forward")  # the server is back: the next stage replays the spool before it looks for the run
        evaluate = subprocess.run(
            [sys.executable, "-m", "pipeline", "evaluate", "tiny"], cwd=root, env=env, capture_output=True, text=True, timeout=600
        )
        assert evaluate.returncode == 0, evaluate.stderr[-3000:]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2, 3]
        assert [a.path for a in client.list_artifacts(run_id, "model") if a.path.endswith("MLmodel")] == ["model/MLmodel"]
        assert len(client.search_runs([run.info.experiment_id])) == 1  # evaluate found the train run: no restored run
        assert spool.pending(root / "logs/tracking-spool") == []
    print(f"train through the outage: {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["refuse", "hang"])
def test_a_store_away_before_training_fails_the_stage_at_once(tmp_path_factory: pytest.TempPathFactory, fault: str) -> None:
    import os
    import socket
    import subprocess
    import sys

    from tests.pipeline_project import REPO, trained_project

    root = trained_project(tmp_path_factory, f"away-{fault}", ("data/prepared", "data/stats"), {"variants": TINY}, [])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if fault == "hang":
            listener.listen()  # accepts connections, never answers
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"  # refuse: bound, not listening
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "train", "tiny"], cwd=root, env=env, capture_output=True, text=True, timeout=120
        )
        seconds = time.monotonic() - started
    assert done.returncode == 1 and seconds < 15, (seconds, done.stderr[-2000:])
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert f"tracking server {uri} is unreachable" in error
    assert not (root / "models/tiny").exists() and not (root / "logs/tracking-spool").exists()
    print(f"store away ({fault}) before training: exit 1 after {seconds:.1f} s")


def test_a_model_run_whose_tag_waits_in_the_spool_is_found_there(project: tuple[Path, FaultProxy]) -> None:
    """The store failed the replay, then answers a search: the next stage must not take the model for one DVC restored."""
    import mlflow

    root, proxy = project
    run_id = tracking.start("v", "pets", {"dvc.stage": "train@v"}, {})
    proxy.set("refuse")
    tracking.set_tags(run_id, {tracking.MODEL_TAG: "abc"})
    tracking.finish(run_id)
    proxy.set("forward")  # back, but this process already tried its one replay at its first use of the store
    assert tracking.find_model_run("train@v", "abc", "pets") == run_id
    assert spool.pending(tracking.spool_folder()) == [run_id]  # found in the spool: the store has no such tag yet
    assert "model.md5" not in mlflow.MlflowClient(proxy.url).get_run(run_id).data.tags
    assert tracking.find_model_run("train@v", "other", "pets") is None
