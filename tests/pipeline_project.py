"""Helpers for the stage tests: one shared demo run of the whole pipeline, tree hashes, params edits.

The demo run (download, validate, prepare, stats of both datasets on the
repository's params.yaml) is built once per test session in a tmp folder and
handed to read-only tests; a test that changes something copies what it needs
into its own ``tmp_path`` first (:func:`copy_project`).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("pets", "houses")
STAGES = ("download", "validate", "prepare", "stats")

_CACHE: dict[str, Any] = {}


@contextmanager
def chdir(path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def run_stage(stage: str, dataset: str) -> None:
    """``python -m pipeline <stage> <dataset>`` in-process, in the current folder."""
    importlib.import_module(f"pipeline.stages.{stage}").main([dataset])


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder after every stage ran on both datasets with the repository's params (built once; read-only).

    ``raw_digest_after_download()`` holds the hashes of ``data/raw`` taken right
    after the download stage, before validate/prepare/stats read it.
    """
    if "root" not in _CACHE:
        root = tmp_path_factory.mktemp("demo-project")
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        with chdir(root):
            for dataset in DATASETS:
                run_stage("download", dataset)
            _CACHE["raw_digest"] = tree_digest(root / "data/raw")
            for stage in STAGES[1:]:
                for dataset in DATASETS:
                    run_stage(stage, dataset)
        _CACHE["root"] = root
    return _CACHE["root"]


def raw_digest_after_download() -> dict[str, str]:
    return _CACHE["raw_digest"]


def copy_project(src: Path, dst: Path, *parts: str) -> Path:
    """Copy ``params.yaml`` and the given folders (e.g. ``data/raw/pets``) of project ``src`` into ``dst``."""
    shutil.copy(src / "params.yaml", dst / "params.yaml")
    for part in parts:
        shutil.copytree(src / part, dst / part)
    return dst


def edit_params(root: Path, dotted: str, value: Any) -> None:
    """Set ``dotted`` (e.g. ``prepare.seed``) in ``root/params.yaml``."""
    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def trained_project(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    parts: tuple[str, ...],
    sections: dict[str, Any],
    steps: list[tuple[str, list[str]]],
) -> Path:
    """A copy of ``parts`` of the demo project whose params.yaml has ``sections`` replaced, after ``steps``.

    Each step is ``(stage, argv)``, run in-process in the copy with MLflow
    logging to ``<copy>/mlflow.db``; e.g. ``[("train", ["tiny"]), ("evaluate", [])]``.
    """
    root = tmp_path_factory.mktemp(name)
    copy_project(demo_project(tmp_path_factory), root, *parts)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(sections)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        for stage, argv in steps:
            importlib.import_module(f"pipeline.stages.{stage}").main(argv)
    return root
