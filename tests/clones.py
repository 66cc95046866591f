"""Temporary clones of this repository for the end-to-end tests: the working tree under test, a small variant set.

A clone symlinks this session's virtualenv and dates ``requirements.txt`` /
``pyproject.toml`` before its install stamp, so ``make`` in it reinstalls
nothing (and never points the editable install at the clone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def command_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its tracking, S3 and Dask settings, the virtualenv first on PATH, ``env`` on top."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "AWS_", "DASK_"))}
    base.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    return {**base, **(env or {})}


def sh(cwd: Path, *command: str, timeout: int = 900, env: Mapping[str, str] | None = None, check: bool = True) -> str:
    """Run ``command`` in ``cwd`` with :func:`command_env`; fail the test with its output unless it succeeds."""
    done = subprocess.run(command, cwd=cwd, env=command_env(env), capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, (
            f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout + done.stderr


def edit(root: Path, change: Callable[[dict], None]) -> None:
    """Apply ``change`` to the clone's parsed params.yaml and write it back."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    change(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def working_tree_clone(root: Path, variants: tuple[str, ...], pretrain_epochs: int = 2) -> Path:
    """Clone this repository into ``root`` with its working tree committed, trimmed to ``variants``."""
    sh(REPO, "git", "clone", "-q", str(REPO), str(root))
    listed = sh(REPO, "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):  # the working tree under test, not only its last commit
        src, dst = REPO / name, root / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.exists():
            dst.unlink()

    def small(raw: dict) -> None:
        raw["variants"] = {k: raw["variants"][k] for k in variants}
        for source in ("houses_rooms", "pets_unlabeled"):  # config.PRETRAIN_SOURCES
            raw["pretrain"][source]["epochs"] = pretrain_epochs
        unlabeled = raw["pretrain"]["pets_unlabeled"]
        unlabeled["warmup"] = min(unlabeled["warmup"], pretrain_epochs - 1)  # a warmup must leave epochs to train

    edit(root, small)
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", f"small variant set: {', '.join(variants)}")
    link_venv(root)
    return root


def link_venv(root: Path) -> None:
    """Give a clone this session's virtualenv, dated so that its ``make setup`` is a no-op."""
    (root / ".venv").symlink_to(Path(sys.prefix))
    stamp = min((p.stat().st_mtime for p in Path(sys.prefix).glob(".installed-*")), default=0)
    for name in ("requirements.txt", "pyproject.toml"):
        os.utime(root / name, (stamp - 1, stamp - 1))
