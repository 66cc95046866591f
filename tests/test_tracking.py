"""The default tracking store belongs to the project, wherever DVC or git runs a stage of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import tracking

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "params.yaml").write_text("x: 1\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return root


def test_worktrees_and_dvc_copies_share_the_project_store(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    review = repo / ".dvc/tmp/review/abc"  # the review's base rebuild: a linked git worktree
    git(repo, "worktree", "add", "-q", "--detach", str(review), "HEAD")
    queued = repo / ".dvc/tmp/exps/tmp1234"  # a queued experiment: DVC's fresh repository
    queued.mkdir(parents=True)
    git(queued, "init", "-q")
    elsewhere = repo.parent / "linked"  # a linked worktree beside the project
    git(repo, "worktree", "add", "-q", "--detach", str(elsewhere), "HEAD")
    (repo / "sub").mkdir()
    expected = f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    for folder in (repo, repo / "sub", review, queued, elsewhere):
        monkeypatch.chdir(folder)
        assert tracking.project_root() == repo.resolve(), folder
        assert tracking.tracking_uri() == expected, folder


def test_explicit_uri_wins_and_outside_git_the_folder_is_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert tracking.tracking_uri() == "http://127.0.0.1:5001"


def test_the_default_store_is_not_exported_to_child_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI; a DVC stage run later from here (another project) would log
    # into this store, and a later call with another folder would take it for the user's choice
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow = tracking._mlflow(tmp_path)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/chosen.db")
    tracking._mlflow(tmp_path)
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/chosen.db"  # the user's setting stays


def test_a_copied_workspace_writes_its_artifacts_into_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import mlflow

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    (original / "a.txt").write_text("a")
    monkeypatch.chdir(original)
    first = tracking.start("v", "pets", {}, {})
    tracking.log_artifact(first, original / "a.txt", "files")
    tracking.finish(first)
    shutil.copytree(original, copy)
    # the copy is used by another process (MLflow caches each run's artifact location within one)
    script = f"""from pathlib import Path
from pipeline import tracking
second = tracking.start("v", "pets", {{}}, {{}})
tracking.log_artifact(second, Path("a.txt"), "files")
tracking.log_artifact("{first}", Path("a.txt"), "more")
print(second)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    second = subprocess.run(
        [sys.executable, "-c", script], cwd=copy, env=env, capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    monkeypatch.chdir(copy)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    for run in (first, second):
        assert client.get_run(run).info.artifact_uri == f"{(copy / 'mlartifacts').as_uri()}/{run}/artifacts"
        assert [a.path for a in client.list_artifacts(run, "files")] == ["files/a.txt"]  # the first run's: the copy's copy
    assert (copy / f"mlartifacts/{first}/artifacts/more/a.txt").is_file()
    assert [p.name for p in (original / "mlartifacts").iterdir()] == [first]  # the original is left as it was
    assert not (original / f"mlartifacts/{first}/artifacts/more").exists()
    assert tracking.relocate_store(tracking.tracking_uri()) is None  # done once
