"""Tests for ``python -m pipeline sweep``: parsing, the environment checks, the table; one sweep on real Dask workers."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import spool, sweep, tracking
from pipeline.errors import PipelineError
from tests.pipeline_project import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
SERVER = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}


# --- parsing ---------------------------------------------------------------------------------------------------


def test_one_experiment_per_set_its_overrides_split_at_semicolons() -> None:
    assert sweep.split_overrides("++variants.lenet5.train.learning_rate=0.003", "-S #1") == (
        "++variants.lenet5.train.learning_rate=0.003",
    )
    assert sweep.split_overrides(" train.epochs=2 ;  variants.lenet5.dropout=0.5; ", "-S #1") == (
        "train.epochs=2",
        "variants.lenet5.dropout=0.5",
    )
    # a comma belongs to the value (a YAML list), as in Hydra
    assert sweep.split_overrides("params.yaml:prepare.pets.split=[1, 2, 3]; ~review", "x") == (
        "params.yaml:prepare.pets.split=[1, 2, 3]",
        "~review",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.epochs", "-S #2: 'train.epochs' has no '=value'"),
        ("=3", "-S #2: '=3' is no override"),
        ("train epochs=3", "-S #2: 'train epochs=3' is no override"),
        (" ; ", "-S #2: no override in ' ; '"),
    ],
)
def test_a_bad_override_is_named(text: str, message: str) -> None:
    with pytest.raises(PipelineError, match="^" + message.replace("[", r"\[")):
        sweep.split_overrides(text, "-S #2")


def test_render_writes_values_as_hydra_reads_them() -> None:
    assert [sweep.render(v) for v in (0.003, 2, "adam", None, True, [1, 2], {"a": 1})] == [
        "0.003",
        "2",
        "adam",
        "null",
        "true",
        "[1, 2]",
        "{a: 1}",
    ]


def test_a_grid_list_is_one_experiment_per_item() -> None:
    text = "- {++variants.lenet5.train.learning_rate: 0.003, train.epochs: 2}\n- 'train.epochs=3; ~review'\n"
    assert sweep.parse_grid(text) == [
        ("++variants.lenet5.train.learning_rate=0.003", "train.epochs=2"),
        ("train.epochs=3", "~review"),
    ]


def test_a_grid_mapping_is_the_cartesian_product() -> None:
    text = "train.learning_rate: [0.01, 0.001]\ntrain.optimizer: [adam, sgd]\ntrain.epochs: 2\n"
    assert sweep.parse_grid(text) == [
        ("train.learning_rate=0.01", "train.optimizer=adam", "train.epochs=2"),
        ("train.learning_rate=0.01", "train.optimizer=sgd", "train.epochs=2"),
        ("train.learning_rate=0.001", "train.optimizer=adam", "train.epochs=2"),
        ("train.learning_rate=0.001", "train.optimizer=sgd", "train.epochs=2"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {train.epochs: 2}\n- 42\n", "g.yaml:2: an experiment is a mapping"),
        ("- {train.epochs: 2}\n- {}\n", "g.yaml:2: an empty experiment"),
        ("- train.epochs=2\n- 'bad key=1'\n", "g.yaml:2: 'bad key=1' is no override"),
        ("train.epochs: [1]\ntrain.seed: []\n", "g.yaml:2: train.seed: an empty list of values"),
        ("- a=1\n- b: c: d\n", "g.yaml:2: not YAML"),
        ("", "g.yaml: empty"),
        ("just text", "g.yaml: expected a list of experiments"),
    ],
)
def test_a_bad_grid_names_its_line(text: str, message: str) -> None:
    with pytest.raises(PipelineError, match="^" + message):
        sweep.parse_grid(text, "g.yaml")


def test_keys_are_checked_against_params_as_hydra_would() -> None:
    sweep.check_keys([("++variants.lenet5.train.learning_rate=0.1", "train.epochs=2", "~review", "+train.new=1")], PARAMS)
    with pytest.raises(
        PipelineError, match=r"^experiment 2: variants\.lenet5\.trian: no such key in params\.yaml \(prefix '\+\+'"
    ):
        sweep.check_keys([("train.epochs=2",), ("variants.lenet5.trian=3",)], PARAMS)
    with pytest.raises(PipelineError, match=r"^experiment 1: train\.epochs: params\.yaml has it already"):
        sweep.check_keys([("+train.epochs=2",)], PARAMS)


def test_experiments_are_named_from_a_prefix() -> None:
    assert sweep.name_experiments([("a=1",), ("a=2",)], "lr") == [
        sweep.Experiment("lr-1", ("a=1",)),
        sweep.Experiment("lr-2", ("a=2",)),
    ]
    with pytest.raises(PipelineError, match="^--name 'a b'"):
        sweep.name_experiments([("a=1",)], "a b")


# --- environment -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1:5000", "https://mlflow.example", "sqlite:////srv/mlflow.db", "postgresql+psycopg2://u@db/mlflow"]
)
def test_shared_tracking_stores_are_accepted(uri: str) -> None:
    assert sweep.check_tracking_uri(uri) == uri


@pytest.mark.parametrize("uri", [None, "sqlite:///mlflow.db", "mlruns", "file:///srv/mlruns"])
def test_a_store_of_its_own_per_worker_is_refused(uri: str | None) -> None:
    with pytest.raises(PipelineError, match="MLFLOW_TRACKING_URI is not set" if uri is None else f"^MLFLOW_TRACKING_URI='{uri}'"):
        sweep.check_tracking_uri(uri)


def test_the_task_gets_the_tracking_and_remote_credentials_only() -> None:
    environ = {
        **SERVER,
        "MLFLOW_TRACKING_PASSWORD": "p",
        "AWS_SECRET_ACCESS_KEY": "k",
        "DVC_NO_ANALYTICS": "1",
        "HOME": "/root",
        "PATH": "/bin",
        "PYTHONHASHSEED": "0",
    }
    forwarded = (*SERVER, "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "DVC_NO_ANALYTICS", "PYTHONHASHSEED")
    assert sweep.task_env(environ) == {k: environ[k] for k in forwarded}
    with pytest.raises(PipelineError, match="MLFLOW_TRACKING_URI is not set"):
        sweep.task_env({"AWS_SECRET_ACCESS_KEY": "k"})


def test_the_scheduler_comes_from_the_flag_or_the_stack_env() -> None:
    assert sweep.scheduler_address("tcp://a:1", {"DASK_SCHEDULER_ADDRESS": "tcp://b:2"}) == "tcp://a:1"
    assert sweep.scheduler_address(None, {"DASK_SCHEDULER_ADDRESS": "tcp://b:2"}) == "tcp://b:2"
    with pytest.raises(PipelineError, match=r"^no Dask scheduler: pass --scheduler .* DASK_SCHEDULER_ADDRESS"):
        sweep.scheduler_address(None, {})


def test_a_failed_clone_raises_for_dask_to_retry_and_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(sweep.tempfile, "tempdir", None)  # tempfile caches the folder it chose
    exp = sweep.Experiment("x-1", ("train.epochs=2",))
    with pytest.raises(RuntimeError, match=r"^x-1: git clone failed\n.*nowhere"):
        sweep.run_experiment(exp, sweep.Source(str(tmp_path / "nowhere"), "0" * 40, SERVER))
    assert list(tmp_path.iterdir()) == []


def test_the_source_is_origin_at_head_with_the_local_dvc_config(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    repo = tmp_path / "repo"
    for command in (["git", "init", "-q", str(repo)], ["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "c"],
                    ["git", "-C", str(repo), "remote", "add", "origin", "../origin.git"]):  # fmt: skip
        subprocess.run(command, env=env, check=True)
    (repo / ".dvc").mkdir()
    (repo / ".dvc" / "config.local").write_text("['remote \"team\"']\n    endpointurl = http://127.0.0.1:9\n")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    src = sweep.source(repo, SERVER)
    assert src == sweep.Source(str(tmp_path / "origin.git"), head, SERVER, (repo / ".dvc" / "config.local").read_text())
    subprocess.run(["git", "-C", str(repo), "remote", "remove", "origin"], check=True)
    with pytest.raises(PipelineError, match="^git remote get-url origin in .*repo: .*origin"):
        sweep.source(repo, SERVER)


def test_a_step_is_retried_with_backoff_until_it_passes_or_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep, "BACKOFF_S", (0.05, 0.2))
    count, log = tmp_path / "count", tmp_path / "log"
    # a real command that fails twice (a store restarting), then passes
    flaky = ["sh", "-c", 'n=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count; [ "$n" -ge 2 ]']

    def attempt() -> bool:
        return not sweep._step(flaky, tmp_path, os.environ, log)

    assert sweep.with_backoff(attempt, "flaky", window=10)
    assert count.read_text().strip() == "3" and log.read_text().count("$ sh -c") == 3
    count.unlink()
    assert not sweep.with_backoff(attempt, "flaky", window=0.1)  # 2 tries (0.05 s, then 0.1 s would pass the window)
    assert count.read_text().strip() == "2"
    count.unlink()
    assert not sweep.with_backoff(attempt, "flaky", window=10, transient=lambda: False)  # a real failure: once
    assert count.read_text().strip() == "1"


def test_the_outage_pattern_matches_what_a_stage_prints_when_the_server_is_away() -> None:
    probe = "pipeline.errors.PipelineError: tracking server http://127.0.0.1:5050 is unreachable ([Errno 111] Connection refused)"
    rest = "Max retries exceeded with url: /api/2.0/mlflow/runs/create (Caused by NewConnectionError"
    database = "ERROR pipeline.stages.evaluate: tracking server http://127.0.0.1:5050 answered 503 Service Unavailable (`source"
    assert sweep.OUTAGE.search(probe) and sweep.OUTAGE.search(rest) and sweep.OUTAGE.search(database)
    assert not sweep.OUTAGE.search("variants.lenet5.train.optimizer: 'adamx' is not one of")
    assert not sweep.OUTAGE.search("tracking server http://127.0.0.1:5050 refused the account 'bob' (401 Unauthorized)")


def _spooled_run(folder: Path, uri: str, run_id: str, files: Path) -> None:
    """Queue a run's calls in ``folder`` as an outage would: two epochs, a file, the end."""
    (files / "notes.txt").write_text("n")
    spool.append(folder, run_id, {"op": "batch", "metrics": [["loss", 1.0, 1000, 0]], "uri": uri})
    spool.append(folder, run_id, {"op": "batch", "metrics": [["loss", 0.5, 2000, 1]], "uri": uri})
    spool.append(folder, run_id, {"op": "artifacts", "folder": "notes", "uri": uri}, files / "notes.txt")
    spool.append(folder, run_id, {"op": "terminate", "status": "FINISHED", "end_time": 3000, "uri": uri})


def test_a_packed_spool_unpacks_beside_the_runs_already_there(tmp_path: Path) -> None:
    clone, home = tmp_path / "clone" / "logs/tracking-spool", tmp_path / "home" / "logs/tracking-spool"
    for folder in (clone, home):
        folder.mkdir(parents=True)
    _spooled_run(clone, "http://127.0.0.1:9", "run-a", tmp_path)
    _spooled_run(home, "http://127.0.0.1:9", "run-mine", tmp_path)
    assert sweep.pack_spool(tmp_path / "nothing") == b""
    data = sweep.pack_spool(clone)
    shutil.rmtree(tmp_path / "clone")  # the worker's clone is gone: the bytes hold everything
    (tmp_path / "notes.txt").unlink()
    assert sweep.adopt_spool(data, home) == ["run-a"]
    assert sorted(spool.pending(home)) == ["run-a", "run-mine"]
    ops = [r["op"] for r in spool.records(home, "run-a")]
    assert ops == ["batch", "batch", "artifacts", "terminate"]
    assert Path(spool.records(home, "run-a")[2]["path"]).read_text() == "n"
    assert sweep.adopt_spool(data, home) == []  # the same queue again is not queued twice
    assert len(spool.records(home, "run-a")) == 4
    assert [p.name for p in home.parent.iterdir()] == ["tracking-spool"]  # no unpacking folder left


def test_the_client_takes_a_tasks_spool_and_replays_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task's queue the server refused comes home: kept in the project's spool, replayed once the server is back."""
    import mlflow

    from tests import mlflowserver
    from tests.faultproxy import FaultProxy

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (tmp_path / "store").mkdir()
    with mlflowserver.serve(tmp_path / "store") as base, FaultProxy(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as proxy:
        client = mlflow.MlflowClient(proxy.url)
        run_id = client.create_run(client.create_experiment("pets")).info.run_id
        queue = tmp_path / "clone" / "logs/tracking-spool"
        _spooled_run(queue, proxy.url, run_id, tmp_path)
        outcome = sweep.Outcome("s-1", ("a=1",), True, spool=sweep.pack_spool(queue))
        proxy.set("refuse")
        with caplog.at_level(logging.WARNING, logger="pipeline.sweep"):
            assert sweep.take_spool(outcome, home) == [run_id]
        assert f"s-1: tracking calls of runs {run_id} wait in {home / 'logs/tracking-spool'}" in caplog.text
        assert "run `python -m pipeline tracking sync` once the server is back" in caplog.text
        assert outcome.spool == b"" and spool.pending(home / "logs/tracking-spool") == [run_id]
        proxy.set("forward")
        assert tracking.sync(home) == (4, [])
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1]
        assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/notes.txt"]


# --- output ----------------------------------------------------------------------------------------------------


def outcomes() -> list[sweep.Outcome]:
    metrics = {"lenet5": {"accuracy": 0.87761, "loss": 0.3}, "mlp_tabular": {"mape": 31.2}, "vgg": {"accuracy": 0.5}}
    return [
        sweep.Outcome("s-1", ("++variants.lenet5.train.learning_rate=0.003",), True, 50.2, "w0", metrics),
        sweep.Outcome("s-2", ("train.epochs=1",), True, 40, "w1", metrics),
        sweep.Outcome(
            "s-3", ("++variants.lenet5.train.optimizer=adamx",), False, 11, "w1", error="dvc exp run failed", log_tail="ERROR ..."
        ),
    ]


def test_the_table_shows_the_named_variants_key_metrics_and_the_failures() -> None:
    lines = sweep.table(outcomes()).splitlines()
    assert lines[0].split() == ["experiment", "status", "time", "worker", "overrides", "key", "metrics"]
    assert lines[1].split()[:5] == ["s-1", "ok", "50", "s", "w0"]
    assert lines[1].endswith("++variants.lenet5.train.learning_rate=0.003  lenet5 accuracy 0.8776")
    assert lines[2].endswith("lenet5 accuracy 0.8776, mlp_tabular mape 31.2, vgg accuracy 0.5")  # no variant named: all
    assert " ".join(lines[3].split()) == "s-3 FAILED 11 s w1 ++variants.lenet5.train.optimizer=adamx dvc exp run failed"
    raised = sweep.Outcome("s-4", ("a=1",), False, error="RuntimeError: s-4: git clone failed\n$ git clone ...")
    assert sweep.table([raised]).splitlines()[1].endswith("a=1        RuntimeError: s-4: git clone failed")
    assert sweep.failures(outcomes()) == "--- s-3 failed: dvc exp run failed\nERROR ..."


def test_main_fails_fast_without_a_shared_store_or_a_scheduler(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    with pytest.raises(PipelineError, match="'sqlite:///mlflow.db': every worker must reach the same store"):
        sweep.main(["-S", "++variants.lenet5.train.learning_rate=0.003"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with pytest.raises(PipelineError, match="^no Dask scheduler"):
        sweep.main(["-S", "++variants.lenet5.train.learning_rate=0.003"])
    with pytest.raises(PipelineError, match=r"^experiment 1: variants\.lenet5\.train\.learning_rat: no such key"):
        sweep.main(["-S", "variants.lenet5.train.learning_rat=0.003"])
    (project / "g.yaml").write_text("- {train.epochs: 2}\n- [1]\n")
    with pytest.raises(PipelineError, match="^g.yaml:2: an experiment is a mapping"):
        sweep.main(["--grid", "g.yaml"])


def test_the_cli_without_experiments_is_a_usage_error(project: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "sweep"], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "nothing to run: give -S OVERRIDES" in done.stderr, done.stderr


# --- end to end ------------------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def killed_mid_task(box, name: str, timeout: float = 120) -> str:  # noqa: ANN001 - a benchmarks.sweep.Sandbox
    """SIGKILL the process group of the worker whose task clones experiment ``name`` as soon as it starts; its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in box.tmp.glob(f"tmp-*/pipeline-sweep-{name}-*"):
            worker = folder.parent.name.removeprefix("tmp-")
            proc = next(p for p in box.procs if worker in p.args)  # ... "--name", worker, ...
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return worker
        time.sleep(0.1)
    raise AssertionError(f"no worker started {name} in {timeout} s")


@pytest.mark.slow
def test_a_sweep_on_dask_workers_lands_in_origin_and_the_tracking_server(tmp_path: Path) -> None:
    """3 experiments on 3 workers: one fails, one loses its worker mid-task and reruns elsewhere, all others land."""
    from benchmarks.sweep import Sandbox

    rates = (0.003, 0.0003)
    box = Sandbox(tmp_path)
    try:
        start = time.perf_counter()
        box.project()
        uri = box.mlflow()
        box.baseline()  # the workers pull its outputs and retrain lenet5 only
        box.scheduler()
        workers = ("w0", "w1", "w2")
        for name in workers:
            box.worker(name)
        box.wait_workers(len(workers))
        setup = time.perf_counter() - start
        # the bad one first: it frees its worker in seconds, for the task whose worker dies
        sets = ["++variants.lenet5.train.optimizer=adamx"] + [f"++variants.lenet5.train.learning_rate={r}" for r in rates]
        sweeping = box.start_sweep("--name", "t", *(arg for s in sets for arg in ("-S", s)))
        victim = killed_mid_task(box, "t-2")
        sweeping.wait(600)
        ran = time.perf_counter() - start - setup
        out = (tmp_path / "sweep.log").read_text()

        # the failed experiment is reported with its log's tail, the others land
        assert sweeping.returncode == 1, out[-3000:]
        rows = {line.split()[0]: line for line in out.splitlines() if re.match(r"^t-\d+ ", line)}
        assert set(rows) == {"t-1", "t-2", "t-3"} and "FAILED" in rows["t-1"], out
        assert " ok " in rows["t-2"] and " ok " in rows["t-3"] and "lenet5 accuracy" in rows["t-2"], out
        assert f" {victim} " not in rows["t-2"], (victim, rows["t-2"])  # rerun on another worker
        assert "--- t-1 failed: dvc exp run failed" in out
        assert "variants.lenet5.train.optimizer: 'adamx' is not one of" in out
        assert "ERROR pipeline.sweep: 1 of 3 experiments failed: t-1" in out
        assert "[3/3]" in out  # progress
        for name in set(workers) - {victim}:  # every task on a living worker removed its clone
            assert list((tmp_path / f"tmp-{name}").iterdir()) == []

        # any clone sees the experiments, each with its own params and metrics
        fresh = tmp_path / "fresh"
        box.sh(tmp_path, "git", "clone", "-q", str(box.origin), str(fresh))
        box.sh(fresh, sys.executable, "-m", "dvc", "remote", "modify", "--local", "store", "url", str(box.remote))
        box.sh(fresh, sys.executable, "-m", "dvc", "exp", "pull", "origin", "t-2", "t-3")
        shown = json.loads(box.sh(fresh, sys.executable, "-m", "dvc", "exp", "show", "--json").stdout)
        exps = {e["name"]: e["revs"][0]["data"] for b in shown for e in b.get("experiments") or []}
        assert set(exps) == {"t-2", "t-3"}, exps
        found = {}
        for name, data in exps.items():
            rate = data["params"]["params.yaml"]["data"]["variants"]["lenet5"]["train"]["learning_rate"]
            found[name] = (rate, data["metrics"]["reports/metrics.json"]["data"]["lenet5"]["accuracy"])
        assert found["t-2"][0] == rates[0] and found["t-3"][0] == rates[1]
        table = {name: float(rows[name].rsplit(" ", 1)[1]) for name in ("t-2", "t-3")}
        assert {n: round(a, 4) for n, (_, a) in found.items()} == pytest.approx(table, abs=1e-4)

        # and their runs are on the tracking server, evaluated
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("pets").experiment_id], "attributes.run_name = 'lenet5'")
        logged = {float(r.data.params["train.learning_rate"]): r.data.metrics.get("test_accuracy") for r in runs}
        assert set(rates) <= set(logged) and all(logged[r] is not None for r in rates), logged
        print(f"sweep end to end: set-up {setup:.0f} s, sweep of 3 on 3 workers, one killed, {ran:.0f} s")
    finally:
        box.close()
    assert not [p.pid for p in box.procs if alive(p.pid)]  # no process group is left
