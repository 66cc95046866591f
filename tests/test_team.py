"""Team mode end to end: the whole stack on free loopback ports, two members sharing runs, models and DVC objects.

Alice runs the demo pipeline (two variants) against the stack's MLflow server
and pushes her outputs to its DVC remote; Bob clones from the shared git
remote, pulls, finds ``dvc status`` clean and renders the report without
training. Accounts are checked (401, 403, a wrong password), the stack is
stopped and started with everything still there, and at the end every process
it started is gone.
"""

from __future__ import annotations

import base64
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.stack.layout import read_env
from tests.clones import edit, link_venv, sh, working_tree_clone

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not glob.glob("/usr/lib/postgresql/*/bin/postgres"), reason="PostgreSQL is not installed (apt-get install postgresql)"
    ),
]
VARIANTS = ("lenet5", "mlp_tabular")


class Team:
    """The stack's folder, its client environment, the shared git remote and the members' accounts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stack = root / "stack"
        self.origin = root / "origin.git"
        self.passwords: dict[str, str] = {}

    def stack_cmd(self, cwd: Path, *args: str, timeout: int = 300) -> str:
        return sh(cwd, "python", "-m", "pipeline", "stack", "--dir", str(self.stack), *args, timeout=timeout)

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
        sh(bob, "dvc", "exp", "run", "--queue", "-S", f"variants.lenet5.train.learning_rate={rate}", env=team.env("bob"))
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
    alice = team.root / "alice"
    sh(alice, "dvc", "exp", "pull", "origin", "lr-1", "lr-2", env=team.env("alice"))
    shown = json.loads(sh(alice, "dvc", "exp", "show", "--json", env=team.env("alice")))
    landed = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            data = exp["revs"][0]["data"]
            rate = data["params"]["params.yaml"]["data"]["variants"]["lenet5"]["train"]["learning_rate"]
            landed[exp["revs"][0]["name"]] = (rate, data["metrics"]["reports/metrics/lenet5.json"]["data"]["accuracy"])
    assert {name: rate for name, (rate, _) in landed.items()} == {"lr-1": 0.003, "lr-2": 0.0003}, landed
    logged = _sql(
        team,
        "select count(distinct r.run_uuid) from runs r join params p on p.run_uuid = r.run_uuid "
        "and p.key = 'train.learning_rate' and p.value in ('0.003', '0.0003') "
        "join latest_metrics m on m.run_uuid = r.run_uuid and m.key = 'test_accuracy' where r.name = 'lenet5'",
    )
    assert logged >= 2  # both experiments' runs, evaluated, on the server


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
    import psycopg2

    secret = json.loads((team.stack / "secrets.json").read_text())
    uri = f"postgresql://mlflow:{secret['postgres_password']}@127.0.0.1:{team.ports()['postgres']}/mlflow"
    with psycopg2.connect(uri, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0]


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
