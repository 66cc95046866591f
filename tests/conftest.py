"""Shared fixtures: a project folder on tmp_path with the repository's params.yaml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project root (cwd) holding a copy of the real params.yaml."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` (the real archives' offline mirrors), or skip."""
    if not (SHARED_DATASETS / "SHA256SUMS").is_file():
        pytest.skip(f"needs the real dataset mirrors in {SHARED_DATASETS} (absent on this machine)")
    return SHARED_DATASETS
