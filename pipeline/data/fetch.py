"""Robust download of one archive: mirrors, resume with HTTP Range, retries, sha256.

The file is streamed into ``<dest>.part`` next to ``dest`` and only moved onto
``dest`` (``os.replace``) once its sha256 is verified, so ``dest`` is never
half-written. An interrupted transfer is resumed from the size of the ``.part``,
both within one call (``retries``) and across calls.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("http", "https", "file")
CHUNK_BYTES = 1 << 20
_USER_AGENT = "pipeline-fetch/1.0"
# Seconds slept before retry n is _RETRY_BACKOFF_S * 2**(n-1), capped; tests set it to 0.
_RETRY_BACKOFF_S = 1.0
_RETRY_BACKOFF_MAX_S = 30.0
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE_RE = re.compile(r"bytes\s+\*/(\d+)")


class _Transient(Exception):
    """A transfer that broke off midway and may be resumed (retried)."""


@dataclass
class _Response:
    """An opened source: ``stream`` yields the bytes from ``offset`` on.

    ``stream`` is None when the ``.part`` is already complete (HTTP 416 or a
    local file no longer than the part); ``total`` is the full size if known.
    """

    stream: BinaryIO | None
    offset: int
    total: int | None


def resolve_source(url: str, mirror: str | None, mirror_file: str) -> str:
    """Return the URL to download from.

    With ``mirror`` None this is ``url``. Otherwise ``mirror`` is a base URL
    (http, https or file) or a local folder, and the result is the URL of
    ``mirror_file`` inside it (a folder becomes a ``file://`` URL of its
    absolute path). Trailing slashes on the mirror do not matter.
    """
    if mirror is None:
        return url
    scheme = urllib.parse.urlsplit(mirror).scheme.lower()
    if scheme in ALLOWED_SCHEMES or "://" in mirror:
        base = mirror
    else:
        base = Path(mirror).expanduser().resolve().as_uri()
    parts = urllib.parse.urlsplit(base)
    path = parts.path.rstrip("/") + "/" + urllib.parse.quote(mirror_file)
    return urllib.parse.urlunsplit(parts._replace(path=path))


def fetch(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    timeout_s: float,
    retries: int,
    progress: bool = True,
) -> str:
    """Download ``url`` to ``dest`` and return the file's hex sha256.

    Returns at once, without network, when ``dest`` already exists and matches
    ``sha256`` (or ``sha256`` is None). Otherwise streams into ``dest.part``,
    resuming an existing part with ``Range: bytes=N-``, retries a dropped
    connection up to ``retries`` times, verifies the digest and moves the part
    onto ``dest``. Every failure raises :class:`PipelineError` naming ``url``.
    """
    dest = Path(dest)
    want = _normalise_sha256(url, sha256)
    _check_scheme(url)
    if dest.is_file():
        have = sha256_file(dest)
        if want is None or have == want:
            log.info("%s is present (sha256 %s); not downloading", dest, have)
            return have
        log.warning("%s has sha256 %s, expected %s; downloading it again", dest, have, want)
    part = dest.with_name(dest.name + ".part")
    _download(url, part, timeout_s=timeout_s, retries=retries, progress=progress)
    return _install(url, part, dest, want)


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _error(url: str, problem: str) -> PipelineError:
    return PipelineError(f"download of {url} failed: {problem}")


def _normalise_sha256(url: str, sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    want = sha256.strip().lower()
    if not _SHA256_RE.fullmatch(want):
        raise _error(url, f"sha256 {sha256!r} is not a 64-digit hex digest")
    return want


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        allowed = ", ".join(ALLOWED_SCHEMES)
        raise _error(url, f"unsupported URL scheme {scheme!r} (allowed: {allowed})")


def _part_size(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


def _remove_if_empty(part: Path) -> None:
    if part.is_file() and _part_size(part) == 0:
        part.unlink()


def _download(url: str, part: Path, *, timeout_s: float, retries: int, progress: bool) -> None:
    """Fill ``part`` with the whole body of ``url``, retrying interruptions."""
    attempt = 0
    while True:
        try:
            _transfer(url, part, timeout_s=timeout_s, progress=progress)
            return
        except _Transient as exc:
            attempt += 1
            if attempt > retries:
                raise _gave_up(url, part, exc, retries) from exc
            _log_retry(url, part, exc, attempt, retries)
        except PipelineError:
            _remove_if_empty(part)
            raise


def _gave_up(url: str, part: Path, exc: _Transient, retries: int) -> PipelineError:
    size = _part_size(part)
    problem = f"{exc} (gave up after {retries} {'retry' if retries == 1 else 'retries'})"
    if size > 0:
        problem += f"; kept {size} bytes in {part}, the next run resumes from there"
    else:
        _remove_if_empty(part)
    return _error(url, problem)


def _log_retry(url: str, part: Path, exc: _Transient, attempt: int, retries: int) -> None:
    delay = min(_RETRY_BACKOFF_S * 2 ** (attempt - 1), _RETRY_BACKOFF_MAX_S)
    log.warning(
        "download of %s interrupted: %s; retry %d/%d in %.0f s, resuming from byte %d",
        url,
        exc,
        attempt,
        retries,
        delay,
        _part_size(part),
    )
    time.sleep(delay)


def _transfer(url: str, part: Path, *, timeout_s: float, progress: bool) -> None:
    """One attempt: open ``url`` from the part's size on and append to ``part``."""
    start = _part_size(part)
    resp = _open(url, start, timeout_s)
    if resp.stream is None:
        if resp.total is not None and resp.total != start:
            log.warning("%s holds %d bytes but %s has %d; starting over", part, start, url, resp.total)
            part.unlink()
            _transfer(url, part, timeout_s=timeout_s, progress=progress)
        return
    with resp.stream:
        if resp.offset == 0 and start > 0:
            log.warning("%s ignored the Range request; downloading from the start", url)
        _write_body(url, resp, part, progress)


def _open(url: str, start: int, timeout_s: float) -> _Response:
    if urllib.parse.urlsplit(url).scheme.lower() == "file":
        return _open_file(url, start)
    return _open_http(url, start, timeout_s)


def _open_file(url: str, start: int) -> _Response:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _error(url, f"file URLs on another host ({parts.netloc}) are not supported")
    path = Path(urllib.request.url2pathname(parts.path))
    try:
        size = path.stat().st_size
        if start >= size:
            return _Response(None, start, size)
        stream = open(path, "rb")
    except OSError as exc:
        raise _error(url, f"cannot read {path}: {exc.strerror or exc}") from exc
    stream.seek(start)
    return _Response(stream, start, size)


def _open_http(url: str, start: int, timeout_s: float) -> _Response:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        try:
            return _http_error(url, exc, start)
        finally:
            exc.close()
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _Transient(f"timed out connecting after {timeout_s:g} s") from exc
        raise _error(url, f"cannot connect: {exc.reason}") from exc
    except (http.client.HTTPException, OSError) as exc:
        raise _Transient(f"connection lost before the response: {_describe(exc)}") from exc
    return _http_response(url, resp, start)


def _http_error(url: str, exc: urllib.error.HTTPError, start: int) -> _Response:
    if exc.code == 416 and start > 0:
        match = _UNSATISFIED_RANGE_RE.fullmatch((exc.headers.get("Content-Range") or "").strip())
        log.info("%s: range from byte %d not satisfiable; the part looks complete", url, start)
        return _Response(None, start, int(match[1]) if match else None)
    raise _error(url, f"HTTP {exc.code} {exc.reason}")


def _http_response(url: str, resp: http.client.HTTPResponse, start: int) -> _Response:
    length = resp.headers.get("Content-Length")
    length_n = int(length) if length and length.isdigit() else None
    if resp.status != 206:
        return _Response(resp, 0, length_n)
    match = _CONTENT_RANGE_RE.fullmatch((resp.headers.get("Content-Range") or "").strip())
    if not match or int(match[1]) != start:
        resp.close()
        got = resp.headers.get("Content-Range")
        raise _error(url, f"asked for bytes={start}- but got Content-Range {got!r}")
    if match[3] != "*":
        total: int | None = int(match[3])
    else:
        total = start + length_n if length_n is not None else None
    return _Response(resp, start, total)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed early (IncompleteRead, {len(exc.partial)} bytes in last read)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _write_body(url: str, resp: _Response, part: Path, progress: bool) -> None:
    """Stream ``resp`` into ``part`` (append when resuming, else truncate)."""
    assert resp.stream is not None
    part.parent.mkdir(parents=True, exist_ok=True)
    done = resp.offset
    with (
        open(part, "ab" if resp.offset else "wb") as out,
        tqdm(
            total=resp.total,
            initial=resp.offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            file=sys.stderr,
            disable=not progress,
        ) as bar,
    ):
        while chunk := _read_chunk(resp.stream):
            _write_chunk(url, out, chunk, part)
            done += len(chunk)
            bar.update(len(chunk))
    if resp.total is not None and done < resp.total:
        raise _Transient(f"connection closed after {done} of {resp.total} bytes")


def _read_chunk(stream: BinaryIO) -> bytes:
    try:
        return stream.read(CHUNK_BYTES)
    except (http.client.HTTPException, OSError) as exc:
        raise _Transient(_describe(exc)) from exc


def _write_chunk(url: str, out: BinaryIO, chunk: bytes, part: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise _error(url, f"cannot write {part}: {exc.strerror or exc}") from exc


def _install(url: str, part: Path, dest: Path, want: str | None) -> str:
    """Verify the finished ``part`` and move it onto ``dest``; return its sha256."""
    got = sha256_file(part)
    if want is None:
        log.warning("%s has sha256 %s; pin it in params.yaml so later downloads are verified", url, got)
    elif got != want:
        part.unlink(missing_ok=True)
        raise _error(url, f"sha256 mismatch: expected {want}, got {got}")
    os.replace(part, dest)
    log.info("downloaded %s to %s (sha256 %s)", url, dest, got)
    return got
