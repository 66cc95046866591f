"""Reading one side of a review: the working tree, or a git revision or DVC experiment.

A revision's ``params.yaml`` comes from git; its generated outputs are
DVC-tracked, so they are read through :class:`dvc.api.DVCFileSystem` at that
revision (its ``dvc.lock`` and the local DVC cache only: DVC would try the
remote for every file, unbounded). Where the cache lacks them (a fresh clone,
CI), :func:`build_base` takes them from the default DVC remote where it has
them and reproduces the rest in a worktree (:mod:`.remote`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from pipeline import config, paths, tracking
from pipeline.errors import PipelineError
from pipeline.review import remote as dvc_remote
from pipeline.review.diff import MISSING, Side
from pipeline.review.document import code

log = logging.getLogger(__name__)

BUILT = Path(".dvc/tmp/review")  # rebuilt base revisions, one git worktree per commit (git-ignored by DVC)


class ReviewError(PipelineError):
    """A revision cannot be resolved or read."""


class Workspace:
    """A working tree: the project's, or a rebuilt revision's."""

    def __init__(self, root: Path, label: str = "workspace") -> None:
        self.root = root
        self.label = label
        self.notes: list[str] = []
        self.sources: dict[str, str] = {}  # a rebuilt revision's: out path -> local DVC cache, the remote, rebuilt
        self.source_note = ""  # why the remote was not used, when it was not

    def read(self, path: PurePosixPath | Path) -> bytes | None:
        p = self.root / path
        return p.read_bytes() if p.is_file() else None

    def md5(self, path: PurePosixPath | Path) -> str | None:
        p = self.root / path
        return tracking.file_md5(p) if p.is_file() else None

    def listdir(self, folder: PurePosixPath | Path) -> list[str]:
        p = self.root / folder
        return sorted(q.name for q in p.iterdir() if q.is_file()) if p.is_dir() else []


class Revision:
    """A git revision or experiment: params.yaml from git, outputs through DVC (dvc.lock + the local cache)."""

    def __init__(self, root: Path, rev: str) -> None:
        from dvc.api import DVCFileSystem
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
        from dvc.scm import resolve_rev
        from scmrepo.git import Git

        try:
            with Repo(str(root)) as repo:
                if not isinstance(repo.scm, Git):
                    raise ReviewError(f"{root}: not a git repository; a review compares with a git revision")
                self.sha = resolve_rev(repo.scm, rev)  # experiment names too, unlike git's own rev-parse
        except DvcException as exc:
            raise ReviewError(f"{rev!r}: {exc} (a git revision, branch, tag or experiment name of {root.resolve()})") from None
        self.label = self.sha[:7] if self.sha.startswith(rev) else f"{rev} ({self.sha[:7]})"
        # the local cache only: with the default remote down, DVC would retry it for every file (minutes)
        self.fs = DVCFileSystem(repo=str(root), rev=self.sha, config={"core": {"remote": ""}})
        self.notes: list[str] = []
        self.sources: dict[str, str] = {}
        self.source_note = ""

    def md5(self, path: PurePosixPath | Path) -> str | None:
        """The md5 dvc.lock records for a tracked file (read from its folder's manifest, not the file)."""
        try:
            return (self.fs.info(PurePosixPath(path).as_posix()).get("dvc_info") or {}).get("md5")
        except Exception:  # noqa: BLE001 - absent from the local cache: read() notes what is missing
            return None

    def read(self, path: PurePosixPath | Path) -> bytes | None:
        key = PurePosixPath(path).as_posix()
        try:
            return self.fs.read_bytes(key)
        except FileNotFoundError as exc:
            if self.fs.exists(key):  # tracked, but its data is in no cache here
                self.notes.append(f"{code(key)}: {_unreadable(exc)}")
            return None
        except (IsADirectoryError, NotADirectoryError):
            return None
        except Exception as exc:  # noqa: BLE001  (a tracked output absent from the local cache, ...)
            self.notes.append(f"{code(key)}: {_unreadable(exc)}")
            return None

    def listdir(self, folder: PurePosixPath | Path) -> list[str]:
        key = PurePosixPath(folder).as_posix()
        try:
            entries = self.fs.ls(key, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except Exception as exc:  # noqa: BLE001
            self.notes.append(f"{code(key)}: {_unreadable(exc)}")
            return []
        return sorted(PurePosixPath(e["name"]).name for e in entries if e.get("type") == "file")


Reader = Workspace | Revision


def _unreadable(exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"not in the local DVC cache? ({type(exc).__name__}: {first}; `dvc pull`, or `dvc repro` at that revision)"


# --------------------------------------------------------------------------- dvc.lock against params.yaml


def stale_stages(params: Mapping[str, Any], lock: Mapping[str, Any], stages: Mapping[str, bool] | None = None) -> list[str]:
    """The stages of ``dvc.lock`` whose recorded params differ from ``params``: their outputs predate the params.

    DVC keeps the entries of stages that no longer exist: a removed variant's
    ``train@<name>`` (an item whose params are gone) and, where ``stages``
    (``dvc.yaml``'s stage names -> whether it is a ``foreach``) is given, a
    stage removed from ``dvc.yaml`` or turned into a ``foreach`` (``pretrain``
    -> ``pretrain@<source>``) or back. Neither is stale.
    """
    stale = []
    for stage, entry in ((lock or {}).get("stages") or {}).items():
        name, at, _ = stage.partition("@")
        if stages is not None and stages.get(name) is not bool(at):
            continue
        recorded = ((entry or {}).get("params") or {}).get("params.yaml") or {}
        found = {dotted: _lookup(params, str(dotted)) for dotted in recorded}
        if "@" in stage and MISSING in found.values():
            continue
        if any(found[dotted] != value for dotted, value in recorded.items()):
            stale.append(stage)
    return stale


def _lookup(params: Mapping[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = node.get(part, MISSING) if isinstance(node, Mapping) else MISSING
    return node


def _stale_notes(reader: Reader, params: Mapping[str, Any]) -> list[str]:
    """A note when the side's ``dvc.lock`` records other params than its ``params.yaml``."""
    lock = reader.read(Path("dvc.lock"))
    if lock is None:
        return []
    spec = reader.read(Path("dvc.yaml"))
    try:
        stages = None  # no dvc.yaml: every entry of dvc.lock counts
        if spec is not None:
            defined = (yaml.safe_load(spec) or {}).get("stages") or {}
            stages = {name: isinstance(d, Mapping) and "foreach" in d for name, d in defined.items()}
        stale = stale_stages(params, yaml.safe_load(lock) or {}, stages)
    except yaml.YAMLError:
        return []
    if not stale:
        return []
    shown = ", ".join(code(s) for s in stale[:6]) + (f" and {len(stale) - 6} more" if len(stale) > 6 else "")
    if isinstance(reader, Workspace):
        return [f"outputs older than params.yaml (stages {shown}): run `dvc repro` (or `make review`) first"]
    return [
        f"its dvc.lock was committed out of date with its params.yaml (stages {shown}): "
        "those outputs came from the params dvc.lock records"
    ]


# --------------------------------------------------------------------------- one side


def _params(reader: Reader) -> dict[str, Any]:
    text = reader.read(Path("params.yaml"))
    if text is None:
        raise ReviewError(f"params.yaml: not found in the {reader.label}")
    try:
        params = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ReviewError(f"params.yaml ({reader.label}): not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ReviewError(f"params.yaml ({reader.label}): expected a mapping, got {type(params).__name__}")
    return params


def _json(reader: Reader, path: Path, notes: list[str]) -> dict[str, Any] | None:
    data = reader.read(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        notes.append(f"{code(path.as_posix())}: not JSON ({exc})")
        return None


def _pngs(reader: Reader, folder: Path) -> dict[str, bytes]:
    return {n: png for n in reader.listdir(folder) if n.endswith(".png") and (png := reader.read(folder / n)) is not None}


def _read_outputs(reader: Reader, side: Side, images: bool, notes: list[str]) -> None:
    """Fill ``side`` with what the review compares: metrics; per dataset, statistics and validation; per variant..."""
    for name in reader.listdir(paths.METRICS):
        if name.endswith(".json") and (found := _json(reader, paths.METRICS / name, notes)) is not None:
            side.metrics[name[: -len(".json")]] = found
    declared = side.params.get("datasets")
    for d in list(declared) if isinstance(declared, Mapping) else config.DATASETS:
        if (stats := _json(reader, paths.stats(d), notes)) is not None:
            side.stats[d] = stats
        if (report := _json(reader, paths.validation_report(d), notes)) is not None:
            side.validation[d] = report
    for v in side.variant_names:
        if (weights := _json(reader, paths.model(v) / "class_weight.json", notes)) is not None:
            side.class_weights[v] = weights
        if md5 := reader.md5(paths.model(v) / "model.keras"):
            side.models[v] = md5
        if images:
            side.images[v] = _pngs(reader, paths.plot_images(v))
    if images:
        side.images["augmentation"] = _pngs(reader, paths.AUGMENTATION)


def load_side(reader: Reader, images: bool = False) -> Side:
    """Read one side: params.yaml, then the outputs the review compares (what is absent stays absent)."""
    side = Side(label=reader.label, params=_params(reader))
    notes: list[str] = []
    _read_outputs(reader, side, images, notes)
    if not side.metrics:
        notes.append(f"no {code(paths.METRICS.as_posix() + '/*.json')} (run `dvc repro` there)")
    side.missing = notes + reader.notes  # before dvc.lock is read: what the outputs lack
    side.sources, side.source_note = reader.sources, reader.source_note
    side.notes = side.missing + _stale_notes(reader, side.params)
    return side


def missing_at(root: Path, rev: str) -> list[str]:
    """What of revision ``rev``'s outputs cannot be read here (e.g. absent from the DVC cache); [] when all can."""
    return load_side(Revision(root.resolve(), rev)).missing


# --------------------------------------------------------------------------- rebuilding a revision


def build_base(root: Path, sha: str, label: str, timeout: float = dvc_remote.FETCH_TIMEOUT) -> Workspace:
    """Revision ``sha``'s outputs in a git worktree under ``.dvc/tmp/review/`` on this project's DVC cache.

    First from the default DVC remote when it answers (:func:`.remote.usable`:
    ``dvc fetch --run-cache``, bounded by ``timeout``), then ``dvc repro`` in
    the worktree (``--pull`` with the remote) restores or pulls every stage
    whose outputs are in the cache, the run cache or the remote, and runs the
    others. Without a remote, DVC's run cache restores every stage that already
    ran here with the same code, params and data (after ``make run`` at that
    revision: all of them). A rerun on another CPU matches the committed hashes
    only where training gives the same bits. The worktree is kept for the next review.
    """
    folder = root / BUILT / sha
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def call(cmd: list[str], cwd: Path) -> str:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        if done.returncode:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise ReviewError(f"rebuilding {label} in {folder}: `{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")
        return done.stdout + done.stderr

    if not (folder / ".git").exists():
        shutil.rmtree(folder, ignore_errors=True)
        call(["git", "worktree", "prune"], root)
        call(["git", "worktree", "add", "--detach", str(folder), sha], root)
        call(["dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache")], folder)
    before = dvc_remote.cached_objects(root / ".dvc" / "cache")
    committed = dvc_remote.lock_outs(_lock(folder))
    remote, problem = dvc_remote.usable(root, folder, timeout)
    log.info("%s", dvc_remote.message(remote, problem, f"the base {label} (in {folder})"))
    pull = ["--pull"] if remote is not None and problem is None else []
    out = call(["dvc", "repro", *pull], folder)
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    log.info("the base %s: stages run: %d (%s)", label, len(ran), ", ".join(sorted(ran)) or "none")
    built = Workspace(folder, f"{label}, rebuilt")
    built.sources = dvc_remote.sources(committed, dvc_remote.lock_outs(_lock(folder)), before, ran, remote if pull else None)
    built.source_note = "" if pull else (f"{remote}: {problem}" if remote is not None else problem or "")
    return built


def _lock(folder: Path) -> dict[str, Any]:
    try:
        lock = yaml.safe_load((folder / "dvc.lock").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return lock if isinstance(lock, dict) else {}
