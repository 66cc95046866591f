"""The DVC remote a review takes outputs from: which one, whether it answers (bounded), where each output came from.

A review's base revision (and, with ``make review``, the workspace) takes its
outputs from the project's default DVC remote when they are there
(``dvc fetch --run-cache``, then ``dvc repro --pull``: DVC pulls what an
unchanged stage lacks and restores from the run cache what ran elsewhere),
and runs only the stages whose outputs the remote lacks. When no remote is
configured, or it does not answer (no credentials, connection refused, a
local folder that is not there, a fetch past its time limit), one log line
says so and everything is rebuilt locally, as without a remote.

``python -m pipeline.review.repro`` (:mod:`.repro`) is ``make review``'s
``dvc repro`` of the workspace: with ``--pull`` when the default remote answers.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.review.document import code

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0  # seconds for a TCP connect to an S3/HTTP endpoint: on loopback or a LAN, far more than enough
FETCH_TIMEOUT = 300.0  # seconds for `dvc fetch --run-cache`; botocore retries a refused endpoint for ~12 s first
LOCAL = "local DVC cache"
REBUILT = "rebuilt"


@dataclass(frozen=True)
class Remote:
    """A DVC remote: its name and its settings as DVC merges them (repository config, then ``config.local``)."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.settings.get("url", ""))

    @property
    def endpoint(self) -> str | None:
        return self.settings.get("endpointurl") or None

    def __str__(self) -> str:
        return f"DVC remote {self.name!r} ({self.url}{f' at {self.endpoint}' if self.endpoint else ''})"


def default_remote(root: Path) -> tuple[Remote | None, str | None]:
    """(the default remote of ``root``'s DVC config, None) or (None, why there is none to use)."""
    from dvc.config import Config, ConfigError

    try:
        config = Config(dvc_dir=str(root / ".dvc"))
    except ConfigError as exc:
        return None, f"DVC config of {root}: {str(exc).splitlines()[0]}"
    name = config["core"].get("remote")
    if not name:
        return None, "no default DVC remote configured (`dvc remote default`)"
    settings = config["remote"].get(name)
    if settings is None:
        return None, f"the default DVC remote {name!r} is not defined in {root / '.dvc'}"
    return Remote(name, dict(settings)), None


def probe(remote: Remote, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why ``remote`` cannot answer, found cheaply (a missing folder, a refused TCP connect), or None.

    A refused S3 endpoint costs ``dvc fetch`` about 12 s of botocore retries,
    and reading through DVC at a revision tries it again for every file.
    """
    endpoint = remote.endpoint or (remote.url if remote.url.startswith(("http://", "https://")) else None)
    if endpoint is None:
        scheme = urlsplit(remote.url).scheme
        if scheme in ("", "file") or len(scheme) == 1:  # a path (a Windows drive letter parses as a scheme)
            folder = Path(urlsplit(remote.url).path if scheme == "file" else remote.url)
            return None if folder.is_dir() else f"folder {folder} not found"
        return None  # s3://, gs://, ssh://...: dvc fetch, under its time limit, tells
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return None
    except OSError as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else (exc.strerror or type(exc).__name__)
        return f"unreachable ({reason} at {parts.hostname}:{port})"


KNOWN = {  # what dvc's output says -> the problem, in words
    "Unable to locate credentials": "no credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or .dvc/config.local)",
    "InvalidAccessKeyId": "credentials refused (InvalidAccessKeyId)",
    "SignatureDoesNotMatch": "credentials refused (SignatureDoesNotMatch)",
    "AccessDenied": "access denied",
    "NoSuchBucket": "no such bucket",
    "Could not connect to the endpoint URL": "unreachable (could not connect to the endpoint)",
    "Connection refused": "unreachable (connection refused)",
}


def explain(output: str) -> str:
    """The one line of a failed ``dvc fetch``'s output that says what went wrong, shortened; pure."""
    for needle, problem in KNOWN.items():
        if needle in output:
            return problem
    errors = [line.removeprefix("ERROR: ").strip() for line in output.splitlines() if line.startswith("ERROR")]
    return (errors[0] if errors else (output.strip().splitlines() or ["no output"])[-1])[:200]


def configure(folder: Path, remote: Remote) -> None:
    """Make ``remote`` the default of the DVC project in ``folder`` (its ``config.local``): a base revision may predate it."""
    from dvc.config import Config

    config = Config(dvc_dir=str(folder / ".dvc"))
    with config.edit("local") as conf:
        conf["core"]["remote"] = remote.name
        conf["remote"][remote.name] = dict(remote.settings)


def fetch(folder: Path, remote: Remote, timeout: float = FETCH_TIMEOUT) -> str | None:
    """``dvc fetch --run-cache`` in ``folder`` (its dvc.lock's outputs and every run-cache entry), bounded; why not, or None.

    Outputs the remote lacks are no failure: ``dvc repro`` rebuilds them.
    """
    if problem := probe(remote):
        return problem
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        done = subprocess.run(
            ["dvc", "fetch", "--run-cache", "-r", remote.name],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {timeout:.0f} s (`dvc fetch --run-cache`)"
    text = done.stdout + done.stderr
    if done.returncode == 0 or (not any(k in text for k in KNOWN) and "failed to" in text.lower()):
        return None  # "N files failed to fetch": the remote lacks them, and dvc repro rebuilds them
    return explain(text)


def usable(root: Path, folder: Path | None = None, timeout: float = FETCH_TIMEOUT) -> tuple[Remote | None, str | None]:
    """(the default remote of ``root``, None) when it answers, having fetched the run cache and ``folder``'s outputs;
    else (the remote or None, why not). ``folder``: another checkout (the base's worktree) set up to use it."""
    remote, problem = default_remote(root)
    if remote is None:
        return None, problem
    if folder is not None:
        try:
            configure(folder, remote)
        except Exception as exc:  # noqa: BLE001 - a base whose own config clashes with it: rebuild without
            return remote, f"not usable in {folder} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    problem = fetch(folder or root, remote, timeout)
    return (remote, None) if problem is None else (remote, problem)


def message(remote: Remote | None, problem: str | None, what: str) -> str:
    """The one log line saying where ``what``'s outputs come from; pure."""
    if problem is None and remote is not None:
        return f"{what}: outputs from {remote} where it has them; the rest is rebuilt here"
    where = f"{remote}: {problem}" if remote is not None else problem
    return f"{what}: {where}; rebuilding here without a remote (the local DVC cache and run cache)"


# --------------------------------------------------------------------------- where each output came from


def lock_outs(lock: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """out path -> (its stage, its md5) for every output a ``dvc.lock`` records; pure."""
    found = {}
    for stage, entry in ((lock or {}).get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            if isinstance(out, Mapping) and out.get("path") and out.get("md5"):
                found[str(out["path"])] = (str(stage), str(out["md5"]))
    return found


def cached_objects(cache: Path) -> set[str]:
    """The md5 of every object in a DVC cache (``files/md5/ab/cdef...``; a folder's manifest ends in ``.dir``)."""
    top = cache / "files" / "md5"
    return {p.parent.name + p.name for p in top.glob("*/*")} if top.is_dir() else set()


def sources(
    committed: Mapping[str, tuple[str, str]],
    rebuilt: Mapping[str, tuple[str, str]],
    before: set[str],
    ran: set[str],
    remote: Remote | None,
) -> dict[str, str]:
    """out path -> where it came from: the local DVC cache, the remote, or rebuilt; pure.

    ``committed``/``rebuilt``: :func:`lock_outs` of the revision's ``dvc.lock``
    and of its rebuild; ``before``: the cache's objects before the fetch;
    ``ran``: the stages ``dvc repro`` ran. An output is rebuilt when its stage
    ran here or its hash differs from the committed one (the run cache
    restored it from an earlier rebuild); else it was in the cache, or pulled.
    """
    out = {}
    for path, (stage, md5) in rebuilt.items():
        if stage in ran or committed.get(path, ("", ""))[1] != md5:
            out[path] = REBUILT
        elif md5 in before or remote is None:
            out[path] = LOCAL
        else:
            out[path] = f"DVC remote {code(remote.name)}"
    return out
