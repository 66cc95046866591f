"""The review's base from the DVC remote (:mod:`pipeline.review.remote`): the decisions, the failure paths, end to end.

End to end on the fake pipeline of ``test_review`` (no TensorFlow): a
local-folder remote holds the base's outputs and run cache pushed from one
copy; a second copy without a DVC cache (a fresh clone) takes the base from it
and runs no stage; a third, whose remote is an S3 endpoint nobody listens on,
falls back to the rebuild in seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import review
from pipeline.review import remote
from tests.pipeline_project import REPO
from tests.test_review import sh, two_commits  # noqa: F401 - the fixture, shared

TEAM = remote.Remote("team", {"url": "s3://dvc", "endpointurl": "http://127.0.0.1:8333"})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nobody listens there


# --------------------------------------------------------------------------- pure decisions


def test_explain_names_the_problem_of_dvc_output() -> None:
    creds = "ERROR: unexpected error - Unable to locate credentials\n\nHaving any troubles? Hit us up"
    assert remote.explain(creds).startswith("no credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    refused = 'ERROR: unexpected error - Could not connect to the endpoint URL: "http://127.0.0.1:8333/dvc/runs"'
    assert remote.explain(refused) == "unreachable (could not connect to the endpoint)"
    assert remote.explain("noise\nERROR: config file error: bad key\nmore") == "config file error: bad key"


def test_message_names_the_remote_and_the_problem() -> None:
    line = remote.message(TEAM, "unreachable (connection refused at 127.0.0.1:8333)", "the base abc1234")
    assert line.startswith("the base abc1234: DVC remote 'team' (s3://dvc at http://127.0.0.1:8333): unreachable")
    assert "rebuilding here without a remote" in line
    assert "outputs from DVC remote 'team'" in remote.message(TEAM, None, "the base abc1234")
    assert remote.message(None, "no default DVC remote configured (`dvc remote default`)", "the base x").startswith(
        "the base x: no default DVC remote configured"
    )


def test_sources_tell_cache_remote_and_rebuilt_apart() -> None:
    lock = {"stages": {"a": {"outs": [{"path": "x", "md5": "1"}]}, "b": {"outs": [{"path": "y", "md5": "2.dir"}]}}}
    committed = remote.lock_outs(lock)
    assert committed == {"x": ("a", "1"), "y": ("b", "2.dir")}
    rebuilt = {**committed, "z": ("c", "3"), "w": ("d", "9")}
    found = remote.sources({**committed, "w": ("d", "4")}, rebuilt, before={"1"}, ran={"c"}, remote=TEAM)
    assert found == {"x": remote.LOCAL, "y": "DVC remote `team`", "z": remote.REBUILT, "w": remote.REBUILT}
    assert remote.sources(committed, committed, before=set(), ran=set(), remote=None) == {"x": remote.LOCAL, "y": remote.LOCAL}


# --------------------------------------------------------------------------- failure paths, each fast


def test_probe_refused_endpoint_and_missing_folder(tmp_path: Path) -> None:
    port = closed_port()
    start = time.perf_counter()
    down = remote.Remote("team", {"url": "s3://dvc", "endpointurl": f"http://127.0.0.1:{port}"})
    assert remote.probe(down) == f"unreachable (connection refused at 127.0.0.1:{port})"
    assert time.perf_counter() - start < 2
    assert remote.probe(remote.Remote("here", {"url": str(tmp_path / "nope")})) == f"folder {tmp_path / 'nope'} not found"
    assert remote.probe(remote.Remote("here", {"url": str(tmp_path)})) is None


def test_default_remote_none_and_broken_config(tmp_path: Path) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    assert remote.default_remote(tmp_path) == (None, "no default DVC remote configured (`dvc remote default`)")
    (tmp_path / ".dvc" / "config").write_text("[core]\n    remote = team\n['remote \"team\"']\n    url = s3://dvc\n")
    (tmp_path / ".dvc" / "config.local").write_text("['remote \"team\"']\n    url = /tmp/x\n    bogus = 1\n")
    found, problem = remote.default_remote(tmp_path)
    assert found is None and "DVC config of" in problem and "bogus" in problem
    (tmp_path / ".dvc" / "config.local").unlink()
    found, problem = remote.default_remote(tmp_path)
    assert problem is None and found is not None and (found.name, found.url) == ("team", "s3://dvc")


def test_cli_without_a_remote_says_so_in_one_line(tmp_path: Path) -> None:
    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, "dvc", "init", "-q")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.review.repro", "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "the workspace: no default DVC remote configured (`dvc remote default`); " + (
        "rebuilding here without a remote (the local DVC cache and run cache)"
    )


# --------------------------------------------------------------------------- end to end (fake pipeline)


def runs(root: Path) -> int:
    with sqlite3.connect(root / "mlflow.db") as db:
        return db.execute("select count(*) from runs").fetchone()[0]


def fresh_copy(src: Path, dst: Path) -> Path:
    """``src`` without its DVC cache, its review worktrees or its local DVC config: a fresh clone with MLflow's store."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    sh(dst, "git", "worktree", "prune")
    return dst


@pytest.fixture(scope="module")
def store(two_commits: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A local-folder DVC remote holding both commits' outputs and the run cache, pushed from a copy of the repo."""
    root, _ = two_commits
    folder = tmp_path_factory.mktemp("remote")
    pusher = tmp_path_factory.mktemp("pusher") / "repo"
    shutil.copytree(root, pusher, symlinks=True)
    sh(pusher, "dvc", "remote", "add", "--local", "-d", "store", str(folder))
    sh(pusher, "dvc", "push", "-q", "--run-cache", "--all-commits")
    return folder


def test_base_from_the_remote_runs_no_stage(
    two_commits: tuple[Path, str],  # noqa: F811
    store: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, base = two_commits
    repo = fresh_copy(root, tmp_path / "repo")
    sh(repo, "dvc", "remote", "add", "--local", "-d", "store", str(store))
    assert review.missing_at(repo, base)  # nothing in a cache here
    before = runs(repo)
    with caplog.at_level(logging.INFO):
        result = review.review(repo, base, rebuild=True)
    assert runs(repo) == before  # no stage ran for the base: no MLflow run
    lines = [r.getMessage() for r in caplog.records]
    assert any("outputs from DVC remote 'store'" in line for line in lines), lines
    assert any(line.endswith(": stages run: 0 (none)") for line in lines), lines
    assert set(result.base_sources.values()) == {"DVC remote `store`"} and not result.base_source_note
    reference = review.review(root, base)  # the same comparison from the local cache of the original
    assert [(v.name, v.params, v.metrics) for v in result.variants] == [(v.name, v.params, v.metrics) for v in reference.variants]
    assert result.stats == reference.stats and not result.notes
    md = review.render_md(result)
    n = len(result.base_sources)
    assert f"**Base outputs** ({n} in its `dvc.lock`): {n} from the DVC remote `store`." in md


def test_partial_remote_rebuilds_only_what_it_lacks(
    two_commits: tuple[Path, str],  # noqa: F811
    store: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, base = two_commits
    lacking = tmp_path / "lacking"
    shutil.copytree(store, lacking)
    shutil.rmtree(lacking / "runs")  # no run cache, and lenet5's base model folder gone from the remote
    lock = yaml.safe_load(sh(root, "git", "show", f"{base}:dvc.lock"))
    md5 = next(o["md5"] for o in lock["stages"]["train@lenet5"]["outs"])
    (lacking / "files" / "md5" / md5[:2] / md5[2:]).unlink()
    repo = fresh_copy(root, tmp_path / "repo")
    sh(repo, "dvc", "remote", "add", "--local", "-d", "store", str(lacking))
    with caplog.at_level(logging.INFO):
        result = review.review(repo, base, rebuild=True)
    ran = next(r.getMessage() for r in caplog.records if "stages run" in r.getMessage())
    # the fake model is the same bytes again, so evaluate's inputs match dvc.lock: pulled, not rerun
    assert ran.endswith("stages run: 1 (train@lenet5)"), ran
    assert {path for path, source in result.base_sources.items() if source == remote.REBUILT} == {"models/lenet5"}
    assert [v.name for v in result.variants if v.changed] == ["lenet5"]


def test_unreachable_remote_falls_back_in_seconds(
    two_commits: tuple[Path, str],  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, base = two_commits
    repo = fresh_copy(root, tmp_path / "repo")
    port = closed_port()
    sh(repo, "dvc", "remote", "add", "--local", "-d", "down", "s3://dvc")
    sh(repo, "dvc", "remote", "modify", "--local", "down", "endpointurl", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with caplog.at_level(logging.INFO):
        result = review.review(repo, base, rebuild=True)
    line = next(r.getMessage() for r in caplog.records if "rebuilding here without a remote" in r.getMessage())
    assert f"DVC remote 'down' (s3://dvc at http://127.0.0.1:{port}): unreachable (connection refused" in line
    assert set(result.base_sources.values()) == {remote.REBUILT}
    assert "connection refused" in result.base_source_note and [v.name for v in result.variants if v.changed] == ["lenet5"]
    assert time.perf_counter() - start < 90  # the rebuild of the fake pipeline, not minutes of retries
    # the CLI, end to end on another fresh copy (this one's cache now holds the rebuilt base): the line, no traceback
    repo = fresh_copy(root, tmp_path / "again")
    sh(repo, "dvc", "remote", "add", "--local", "-d", "down", "s3://dvc")
    sh(repo, "dvc", "remote", "modify", "--local", "down", "endpointurl", f"http://127.0.0.1:{port}")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "report", "--base", base, "--rebuild-base", "--output", "review.md"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "unreachable (connection refused" in done.stderr and "rebuilt" in (repo / "review.md").read_text()


# --------------------------------------------------------------------------- the workflow and the Makefile


def test_workflow_uses_the_remote_only_when_its_secrets_are_set() -> None:
    workflow = yaml.safe_load((REPO / ".github/workflows/review.yml").read_text())
    env = workflow["env"]
    for secret in ("DVC_REMOTE_URL", "DVC_REMOTE_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[secret] == "${{ secrets." + secret + " }}"
    steps = {s.get("name"): s for s in workflow["jobs"]["review"]["steps"]}
    configure = steps["Point DVC at the team remote"]
    assert configure["if"] == "env.DVC_REMOTE_URL != ''" and "remote add --local --force --default ci" in configure["run"]
    assert steps["Run the demo pipeline"]["run"] == ".venv/bin/python -m pipeline.review.repro"
    assert steps["Push main's outputs to the remote"]["if"].startswith("env.DVC_REMOTE_URL != ''")
    assert "--rebuild-base" in steps["Write the review and post it"]["run"]
    review_target = (REPO / "Makefile").read_text().split("\nreview: setup")[1].split("\n\n")[0]
    assert "python -m pipeline.review.repro\n" in review_target and "--rebuild-base" in review_target
