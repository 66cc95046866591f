"""Team mode end to end: the whole stack on free loopback ports, two members sharing runs, models and DVC objects.

Alice runs the demo pipeline (two variants) against the stack's MLflow server
and pushes her outputs to its DVC remote; Bob clones from the shared git
remote, pulls, finds ``dvc status`` clean and renders the report without
training. Accounts are checked (401, 403, a wrong password), the stack is
stopped and started with everything still there, and at the end every process
it started is gone. A sweep on the stack's workers survives a worker killed
mid-task and the tracking server and object store killed and restarted.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pipeline import spool
from pipeline.stack.layout import read_env
from tests.clones import REPO, command_env, edit, link_venv, sh, working_tree_clone

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not glob.glob("/usr/lib/postgresql/*/bin/postgres"), reason="PostgreSQL is not installed (apt-get install postgresql)"
    ),
]
VARIANTS = ("lenet5", "mlp_tabular")
T = TypeVar("T")


class Team:
    """The stack's folder, its client environment, the shared git remote and the members' accounts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stack = root / "stack"
        self.origin = root / "origin.git"
        self.passwords: dict[str, str] = {}

    def stack_cmd(self, cwd: Path, *args: str, timeout: int = 300) -> str:
        # PYTHONPATH: the Dask workers import the task (pipeline.sweep) from the checkout under test, not from
        # wherever the virtualenv's editable install points (as benchmarks/sweep.py's workers do)
        env = {"PYTHONPATH": str(REPO)}
        return sh(cwd, "python", "-m", "pipeline", "stack", "--dir", str(self.stack), *args, timeout=timeout, env=env)

    def env(self, user: str | None = None) -> dict[str, str]:
        """``.stack/env`` as a dict, with ``user``'s account instead of the admin's."""
        env = read_env(self.stack / "env")
        if user:
            env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=self.passwords[user])
        return env

    def ports(self) -> dict[str, int]:
        return json.loads((self.stack / "stack.json").read_text())["ports"]

    def pids(self) -> list[int]:
        return [int(p.read_text()) for p in (self.stack / "run").glob("*.pid")]

    def rest(self, path: str, body: dict | None = None, user: str | None = None, password: str | None = None) -> tuple[int, dict]:
        """One call of MLflow's REST API as ``user`` (none: unauthenticated); (status, JSON answer)."""
        url = f"{self.env()['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/{path}"
        request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
        request.add_header("Content-Type", "application/json")
        if user:
            secret = password if password is not None else self.passwords.get(user, self.env()["MLFLOW_TRACKING_PASSWORD"])
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {}


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    """The stack, started from Alice's clone (which it points at its S3 port), with accounts for Alice and Bob."""
    # not pytest's tmp_path: it is private to its owner, and PostgreSQL runs as the 'postgres' account when we are root
    team = Team(Path(tempfile.mkdtemp(prefix="team-")))
    team.root.chmod(0o755)
    alice = working_tree_clone(team.root / "alice", VARIANTS)
    sh(team.root, "git", "init", "-q", "--bare", "-b", "main", str(team.origin))
    sh(alice, "git", "remote", "set-url", "origin", str(team.origin))
    sh(alice, "git", "push", "-q", "origin", "HEAD:main")
    started: list[int] = []
    try:
        team.stack_cmd(alice, "up", "--free-ports", "--workers", "2")
        started = team.pids()
        for user in ("alice", "bob"):
            out = team.stack_cmd(alice, "user", "add", user)
            team.passwords[user] = re.search(r"^password: (\S+)", out, re.M).group(1)
        yield team
    finally:
        subprocess.run(["python", "-m", "pipeline", "stack", "--dir", str(team.stack), "down"], cwd=alice, capture_output=True)
        _kill_leftovers(started + team.pids())
        shutil.rmtree(team.root, ignore_errors=True)


def test_alice_runs_the_pipeline_on_the_server_and_pushes(team: Team) -> None:
    alice = team.root / "alice"
    assert "endpointurl = " + team.env()["PIPELINE_S3_ENDPOINT"] in (alice / ".dvc" / "config.local").read_text()
    sh(alice, "dvc", "repro", env=team.env("alice"), timeout=1200)
    sh(alice, "dvc", "push", "--run-cache", env=team.env("alice"))
    sh(alice, "git", "add", "-A")
    sh(alice, "git", "commit", "-q", "-m", "outputs of the demo run")
    sh(alice, "git", "push", "-q", "origin", "HEAD:main")
    # every variant's run is on the server, readable by Bob, with its test metrics
    status, found = team.rest("runs/search", {"experiment_ids": _experiment_ids(team), "max_results": 100}, user="bob")
    assert status == 200
    names = {run["info"]["run_name"] for run in found["runs"] if run["info"]["status"] == "FINISHED"}
    assert set(VARIANTS) <= names, names
    # rows in PostgreSQL, artifacts and DVC objects in the bucket
    assert _sql(team, "select count(*) from runs where status = 'FINISHED'") >= len(VARIANTS)
    assert _objects(team, "mlflow") > 0 and _objects(team, "dvc") > 0
    # the register stage crowned each dataset's best variant on the server
    for dataset in ("pets", "houses"):
        status, alias = team.rest(f"registered-models/alias?name={dataset}&alias=champion", user="bob")
        assert status == 200 and alias["model_version"].get("tags"), (dataset, status)


def test_bob_pulls_in_sync_and_reports_without_training(team: Team) -> None:
    bob = team.root / "bob"
    sh(team.root, "git", "clone", "-q", str(team.origin), str(bob))
    link_venv(bob)
    sh(bob, "dvc", "remote", "modify", "--local", "team", "endpointurl", team.env()["PIPELINE_S3_ENDPOINT"])
    sh(bob, "dvc", "pull", env=team.env("bob"))
    assert "Data and pipelines are up to date" in sh(bob, "dvc", "status", env=team.env("bob"))
    before = _sql(team, "select count(*) from runs")
    out = sh(bob, "python", "-m", "pipeline", "report", "--base", "HEAD", env=team.env("bob"))
    assert "Running stage" not in out and _sql(team, "select count(*) from runs") == before
    assert (bob / "reports" / "summary.md").exists()


def test_queued_experiments_run_in_parallel_against_the_server(team: Team) -> None:
    """``dvc exp run --queue`` x2 and ``dvc queue start -j 2`` in Bob's clone: both land, each run on the server evaluated."""
    bob = team.root / "bob"
    rates = ("0.002", "0.004")
    for rate in rates:
        sh(bob, "dvc", "exp", "run", "--queue", "-S", f"++variants.lenet5.train.learning_rate={rate}", env=team.env("bob"))
    try:
        sh(bob, "dvc", "queue", "start", "-j", "2", env=team.env("bob"))
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            status = sh(bob, "dvc", "queue", "status", env=team.env("bob"))
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(5)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=bob, capture_output=True)
    assert status.count("Success") == 2 and "Failed" not in status, status
    logged = _sql(
        team,
        "select count(distinct p.value) from runs r join params p on p.run_uuid = r.run_uuid "
        f"and p.key = 'train.learning_rate' and p.value in {rates} "
        "join latest_metrics m on m.run_uuid = r.run_uuid and m.key = 'test_accuracy' where r.name = 'lenet5'",
    )
    assert logged == 2  # both experiments' runs, evaluated, in the server's one store


def test_a_review_takes_the_base_from_the_remote(team: Team) -> None:
    """Bob, on a second machine with an empty cache, changes lenet5: the base comes from the remote, only lenet5 trains."""
    clone = team.root / "bob2"
    sh(team.root, "git", "clone", "-q", str(team.origin), str(clone))
    link_venv(clone)
    sh(clone, "dvc", "remote", "modify", "--local", "team", "endpointurl", team.env()["PIPELINE_S3_ENDPOINT"])
    edit(clone, lambda raw: raw["variants"]["lenet5"].update(train={"learning_rate": 0.003}))
    sh(clone, "git", "commit", "-q", "-am", "lenet5 lr 0.003")
    out = sh(clone, "make", "review", "BASE=HEAD~1", env=team.env("bob"), timeout=1200)
    md = (clone / "reports" / "review.md").read_text()
    assert "**1 of 2 variants changed**" in md and "| `variants.lenet5.train.learning_rate` | 0.001 | 0.003 |" in md
    # every output the base needs came from the remote: into the empty cache by `dvc repro --pull`, or fetched for
    # the base; only what it could not have (nothing, here) is rebuilt, and a rebuild would be named in the report
    base = [line for line in md.splitlines() if line.startswith("**Base outputs**")]
    assert not base or "rebuilt" not in base[0], base
    ran = re.findall(r"Running stage '([\w@]+)'", out)
    assert [stage for stage in ran if stage.startswith(("train@", "pretrain", "prepare@"))] == ["train@lenet5"], ran


def test_bob_sweeps_two_experiments_on_the_stack_workers(team: Team) -> None:
    bob = team.root / "bob"
    rates = ("0.003", "0.0003")
    overrides = [a for rate in rates for a in ("-S", f"++variants.lenet5.train.learning_rate={rate}")]
    out = sh(bob, "python", "-m", "pipeline", "sweep", *overrides, "--name", "lr", env=team.env("bob"), timeout=1500)
    assert "FAILED" not in out and "lr-1" in out and "lr-2" in out, out[-3000:]  # exit 0 checked by sh
    landed = _landed(team, "lr-1", "lr-2")
    assert landed == {"lr-1": 0.003, "lr-2": 0.0003}, landed
    logged = _sql(
        team,
        "select count(distinct r.run_uuid) from runs r join params p on p.run_uuid = r.run_uuid "
        "and p.key = 'train.learning_rate' and p.value in ('0.003', '0.0003') "
        "join latest_metrics m on m.run_uuid = r.run_uuid and m.key = 'test_accuracy' where r.name = 'lenet5'",
    )
    assert logged >= 2  # both experiments' runs, evaluated, on the server


def test_a_sweep_loses_nothing_to_a_killed_worker_and_restarted_servers(team: Team) -> None:
    """Mid-sweep: a worker dies (SIGKILL); the tracking server is killed mid-training, then PostgreSQL, then S3 mid-push.

    Each comes back by ``stack up`` a few seconds later (the nanny restarts the
    worker). Both experiments land in origin, each of their runs once, finished,
    with every epoch and its test metric, and no spool is left anywhere.
    """
    names, rates = ("faults-1", "faults-2"), ("0.002", "0.0002")
    tmp = Path(tempfile.gettempdir())  # the stack's workers make their clones in the same one
    before = set(tmp.glob("pipeline-sweep-faults-*"))
    try:
        _sweep_through_faults(team, names, rates, tmp)
    finally:
        for folder in set(tmp.glob("pipeline-sweep-faults-*")) - before:  # the dead worker's clone
            shutil.rmtree(folder)


def _sweep_through_faults(team: Team, names: tuple[str, ...], rates: tuple[str, ...], tmp: Path) -> None:
    """Bob's sweep of one experiment per rate with the faults injected, and what must hold at its end."""
    bob, alice = team.root / "bob", team.root / "alice"
    overrides = [a for rate in rates for a in ("-S", f"++variants.lenet5.train.learning_rate={rate}")]
    before = set(tmp.glob("pipeline-sweep-faults-*"))
    start_ms, started = int(time.time() * 1000), time.monotonic()
    with (team.root / "faults.log").open("wb") as out:
        sweeping = subprocess.Popen(
            ["python", "-m", "pipeline", "sweep", *overrides, "--name", "faults"],
            cwd=bob,
            env=command_env(team.env("bob")),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # 1. the worker running faults-1, with everything it started, as soon as the task runs dvc (before any MLflow run)
        task = _wait_for("faults-1 runs dvc", lambda: _task_process(tmp, "faults-1", "-m dvc"), sweeping)
        worker = _worker_of(task, int((team.stack / "run" / "dask_workers.pid").read_text()))
        victim = _worker_address(team, worker)
        _kill_tree(worker)
        # 2. the tracking server, once a run of the sweep has logged an epoch
        training = _wait_for("a sweep run with a metric", lambda: _running_with_metrics(team, start_ms), sweeping)
        mlflow_down = _kill_and_restart(team, "mlflow")
        # 2b. its database, right after (the server answers 500 meanwhile; its pool pings connections before use)
        postgres_down = _kill_and_restart(team, "postgres")
        # 3. the object store, as a task pushes its experiment
        _wait_for("a dvc exp push", lambda: _task_process(tmp, "faults-", "exp push"), sweeping)
        s3_down = _kill_and_restart(team, "s3")
        assert sweeping.wait(timeout=900) == 0, (team.root / "faults.log").read_text()[-4000:]
    finally:
        if sweeping.poll() is None:
            os.killpg(sweeping.pid, signal.SIGKILL)
            sweeping.wait()
    seconds = time.monotonic() - started
    out = (team.root / "faults.log").read_text()
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(names)}
    assert set(rows) == set(names) and all(" ok " in row for row in rows.values()), out[-4000:]
    assert victim not in rows["faults-1"]  # rerun on another worker
    # both experiments landed in origin, refs and outputs
    refs = sh(alice, "git", "ls-remote", "origin", "refs/exps/*")
    assert all(re.search(rf"/{name}$", refs, re.M) for name in names), refs
    assert _landed(team, *names) == {"faults-1": 0.002, "faults-2": 0.0002}
    # every run the sweep made is finished; one lenet5 run per experiment (none retrained), each epoch once, evaluated
    assert _sql(team, f"select count(*) from runs where start_time >= {start_ms} and status <> 'FINISHED'") == 0
    runs = _rows(
        team,
        "select r.run_uuid, p.value from runs r join params p on p.run_uuid = r.run_uuid and p.key = 'train.learning_rate' "
        f"where r.name = 'lenet5' and r.start_time >= {start_ms}",
    )
    assert sorted(rate for _, rate in runs) == sorted(rates), runs
    for run, _ in runs:
        for key in ("loss", "val_loss"):
            steps = _rows(team, f"select step, count(*) from metrics where run_uuid = '{run}' and key = '{key}' group by step")
            assert sorted(steps) == [(step, 1) for step in range(4)], (run, key, steps)
        assert _sql(team, f"select count(*) from latest_metrics where run_uuid = '{run}' and key = 'test_accuracy'") == 1
    assert training in {run for run, _ in runs}
    # no spool anywhere: not in Bob's project, not in the clone the dead worker left
    assert spool.pending(bob / "logs" / "tracking-spool") == []
    left = set(tmp.glob("pipeline-sweep-faults-*")) - before
    assert [p.name.startswith("pipeline-sweep-faults-1-") for p in left] == [True]  # the dead worker's clone, only
    assert not [p for p in left if spool.pending(p / "repo" / "logs" / "tracking-spool")]
    team.stack_cmd(alice, "up")  # the stack is whole again (the nanny restarted the worker): a no-op
    assert len(team.pids()) == 5
    retries = re.findall(r"(faults-\d: [\w ()]+) failed; trying again", (team.stack / "logs" / "dask_workers.log").read_text())
    print(
        f"sweep of 2 with faults: {seconds:.0f} s; tracking server down {mlflow_down:.1f} s, PostgreSQL down "
        f"{postgres_down:.1f} s, object store down {s3_down:.1f} s; retried in the tasks: {retries}"
    )


def test_accounts_protect_what_is_theirs(team: Team) -> None:
    assert team.rest("experiments/search", {"max_results": 5})[0] == 401
    assert team.rest("experiments/search", {"max_results": 5}, user="bob", password="wrong")[0] == 401
    status, made = team.rest("experiments/create", {"name": "alice-scratch"}, user="alice")
    assert status == 200
    assert team.rest("runs/create", {"experiment_id": made["experiment_id"]}, user="bob")[0] == 403
    assert team.rest("runs/create", {"experiment_id": made["experiment_id"]}, user="alice")[0] == 200
    # the pipeline with a wrong password stops within seconds, naming the server and the account
    alice = team.root / "alice"
    env = {**team.env("alice"), "MLFLOW_TRACKING_PASSWORD": "wrong"}
    started = time.monotonic()
    done = subprocess.run(
        ["python", "-m", "pipeline", "evaluate"],
        cwd=alice,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"tracking server {env['MLFLOW_TRACKING_URI']} refused the account 'alice' (401 Unauthorized)" in done.stderr
    assert time.monotonic() - started < 30


def test_a_restart_keeps_runs_users_and_objects(team: Team) -> None:
    alice = team.root / "alice"
    runs = _sql(team, "select count(*) from runs")
    team.stack_cmd(alice, "down")
    assert not any(_alive(pid) for pid in team.pids())
    team.stack_cmd(alice, "up")
    pids = sorted(team.pids())
    assert team.stack_cmd(alice, "up").count("already running") == 5 and sorted(team.pids()) == pids  # a no-op
    assert _sql(team, "select count(*) from runs") == runs
    assert team.rest("experiments/search", {"max_results": 5}, user="bob")[0] == 200  # Bob's account survived
    assert "Cache and remote 'team' are in sync" in sh(alice, "dvc", "status", "--cloud", env=team.env("alice"))


def test_stack_down_leaves_no_process(team: Team) -> None:
    pids = team.pids()
    assert len(pids) == 5
    team.stack_cmd(team.root / "alice", "down")
    assert not list((team.stack / "run").glob("*.pid"))
    assert not [pid for pid in pids if _group_alive(pid)]


def _landed(team: Team, *names: str) -> dict[str, float]:
    """``dvc exp pull origin`` the experiments into Alice's clone; each one's lenet5 learning rate, from ``dvc exp show``."""
    alice = team.root / "alice"
    sh(alice, "dvc", "exp", "pull", "origin", *names, env=team.env("alice"))
    shown = json.loads(sh(alice, "dvc", "exp", "show", "--json", env=team.env("alice")))
    landed = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            name, data = exp["revs"][0]["name"], exp["revs"][0]["data"]
            if name in names:
                assert data["metrics"]["reports/metrics/lenet5.json"]["data"]["accuracy"] >= 0, name  # evaluated
                landed[name] = data["params"]["params.yaml"]["data"]["variants"]["lenet5"]["train"]["learning_rate"]
    return landed


def _wait_for(what: str, found: Callable[[], T | None], sweeping: subprocess.Popen, timeout: float = 600) -> T:
    """Poll ``found`` until it gives something; fail if the sweep ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert sweeping.poll() is None, f"the sweep ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s"
        time.sleep(0.2)
    return value


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, command line, working folder) of every live process this user may read."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(stat.parent / "cwd")
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(stat.parent.name)] = (int(fields[1]), cmdline, cwd)
    return table


def _task_process(tmp: Path, name: str, needle: str) -> int | None:
    """A process of a sweep task whose clone is ``tmp/pipeline-sweep-<name>*`` with ``needle`` in its command line."""
    prefix = str(tmp / f"pipeline-sweep-{name}")
    return next((pid for pid, (_, cmd, cwd) in _processes().items() if cwd.startswith(prefix) and needle in cmd), None)


def _worker_of(pid: int, nanny: int) -> int:
    """The Dask worker process above ``pid``: the child of the ``dask worker`` process, where the nannies live."""
    table = _processes()
    while table[pid][0] != nanny:
        pid = table[pid][0]
    return pid


def _worker_address(team: Team, pid: int) -> str:
    from distributed import Client

    with Client(team.env()["DASK_SCHEDULER_ADDRESS"], timeout=20) as client:
        return next(address for address, worker_pid in client.run(os.getpid).items() if worker_pid == pid)


def _kill_tree(root: int) -> None:
    """SIGKILL ``root`` and every process below it, frozen first (SIGSTOP) so that none starts another meanwhile."""
    tree: set[int] = set()
    todo = {root}
    while todo:
        for pid in todo:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        tree |= todo
        table = _processes()
        todo = {pid for pid, (parent, _, _) in table.items() if parent in tree} - tree
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while set(_processes()) & tree:
        assert time.monotonic() < deadline, f"still alive after SIGKILL: {set(_processes()) & tree}"
        time.sleep(0.1)


def _running_with_metrics(team: Team, since_ms: int) -> str | None:
    """A RUNNING run started since ``since_ms`` that has logged a metric (an epoch), asked of the server as the admin."""
    admin = team.env()["MLFLOW_TRACKING_USERNAME"]
    query = {"experiment_ids": _experiment_ids(team), "filter": "attributes.status = 'RUNNING'", "max_results": 20}
    status, found = team.rest("runs/search", query, user=admin)
    for run in found.get("runs", []) if status == 200 else []:
        if run["info"]["start_time"] >= since_ms and run["data"].get("metrics"):
            return run["info"]["run_id"]
    return None


def _kill_and_restart(team: Team, service: str, pause: float = 3.0) -> float:
    """SIGKILL the service's process group, ``stack up`` after ``pause`` seconds; how long it was down."""
    pid = int((team.stack / "run" / f"{service}.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    down = time.monotonic()
    while _group_alive(pid):
        time.sleep(0.1)
    time.sleep(pause)
    team.stack_cmd(team.root / "alice", "up")  # starts only what is down, and waits until it answers
    return time.monotonic() - down


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _experiment_ids(team: Team) -> list[str]:
    status, found = team.rest("experiments/search", {"max_results": 50}, user="bob")
    assert status == 200
    return [e["experiment_id"] for e in found["experiments"] if e["name"] in ("pets", "houses")]


def _sql(team: Team, query: str) -> int:
    return _rows(team, query)[0][0]


def _rows(team: Team, query: str) -> list[tuple]:
    import psycopg2

    secret = json.loads((team.stack / "secrets.json").read_text())
    uri = f"postgresql://mlflow:{secret['postgres_password']}@127.0.0.1:{team.ports()['postgres']}/mlflow"
    with psycopg2.connect(uri, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def _objects(team: Team, bucket: str) -> int:
    import boto3

    env = team.env()
    s3 = boto3.client(
        "s3",
        endpoint_url=env["PIPELINE_S3_ENDPOINT"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    return s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0)
