"""Tests for ``python -m pipeline``: usage errors exit 2, pipeline errors become one line and exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import COMMANDS, STAGES
from tests.pipeline_project import REPO, edit_params


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GX_ANALYTICS_ENABLED": "false"}
    command = [sys.executable, "-m", "pipeline", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("args", [(), ("fit", "pets")], ids=["nothing", "unknown-stage"])
def test_usage(project: Path, args: tuple[str, ...]) -> None:
    result = cli(project, *args)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1
    assert lines[0].startswith("usage: python -m pipeline {" + ",".join(STAGES + COMMANDS) + "} [args]")
    assert (f"(got ['{args[0]}'])" if args else "(got nothing)") in lines[0]


def test_validate_before_download(project: Path) -> None:
    result = cli(project, "validate", "pets")
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1
    assert lines[0].startswith("ERROR pipeline.stages.validate: data/raw/pets: not found")
    assert not (project / "reports").exists()


def test_bad_params_key(project: Path) -> None:
    edit_params(project, "data.extract.max_bytez", 5)
    result = cli(project, "download", "pets")
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1
    assert "params.yaml: data.extract.max_bytez: unknown key" in lines[0]
    assert "max_bytes, max_files, max_ratio" in lines[0]
    assert not (project / "data").exists()


def test_unknown_dataset(project: Path) -> None:
    result = cli(project, "download", "cats")
    assert result.returncode == 2
    assert "invalid choice: 'cats' (choose from 'pets', 'houses')" in result.stderr
    assert not (project / "data").exists()


def test_missing_dataset_argument(project: Path) -> None:
    result = cli(project, "stats")
    assert result.returncode == 2
    assert "the following arguments are required: dataset" in result.stderr


def test_pretrain_needs_a_known_source(project: Path) -> None:
    result = cli(project, "pretrain")
    assert result.returncode == 2 and "the following arguments are required: source" in result.stderr
    result = cli(project, "pretrain", "rooms")
    assert result.returncode == 2
    assert "invalid choice: 'rooms' (choose from 'houses_rooms', 'pets_unlabeled')" in result.stderr


def test_pretrain_before_its_inputs_names_the_stage_to_run(project: Path) -> None:
    result = cli(project, "pretrain", "pets_unlabeled")
    assert result.returncode == 1
    lines = [line for line in error_lines(result) if line.startswith("ERROR")]
    assert lines == [
        "ERROR pipeline.stages.pretrain: data/validated/pets/manifest.parquet: not found; run the validate stage for pets first"
    ]
    assert not (project / "models").exists()
