"""Tests for pipeline.data.fetch: all offline, against a loopback server or file:// URLs."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.request
from pathlib import Path

import pytest

from pipeline.data import fetch as fetch_mod
from pipeline.data.fetch import fetch, resolve_source
from pipeline.errors import PipelineError
from tests.httpserver import free_port, serve

SIZE = 300_000  # > one read, < one chunk; odd-sized halves on purpose
NAME = "data.zip"


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "_RETRY_BACKOFF_S", 0.0)


@pytest.fixture()
def payload() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture()
def served(tmp_path: Path, payload: bytes) -> Path:
    """A folder holding NAME with ``payload``."""
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / NAME).write_bytes(payload)
    return folder


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def get(url: str, dest: Path, sha256: str | None, *, retries: int = 2, progress: bool = False) -> str:
    return fetch(url, dest, sha256, timeout_s=5, retries=retries, progress=progress)


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --- resolve_source ------------------------------------------------------------------


def test_resolve_without_mirror_returns_url() -> None:
    assert resolve_source("https://example.org/a.zip", None, "b.zip") == "https://example.org/a.zip"


@pytest.mark.parametrize(
    "mirror, expected",
    [
        ("http://127.0.0.1:8000/data", "http://127.0.0.1:8000/data/my%20file.zip"),
        ("http://127.0.0.1:8000/data//", "http://127.0.0.1:8000/data/my%20file.zip"),
        ("https://mirror.example", "https://mirror.example/my%20file.zip"),
        ("file:///srv/mirror/", "file:///srv/mirror/my%20file.zip"),
        ("file:///", "file:///my%20file.zip"),
    ],
)
def test_resolve_url_mirror(mirror: str, expected: str) -> None:
    assert resolve_source("https://example.org/a.zip", mirror, "my file.zip") == expected


def test_resolve_folder_mirror_is_absolute_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mirror").mkdir()
    monkeypatch.chdir(tmp_path)
    expected = (tmp_path / "mirror").resolve().as_uri() + "/my%20file.zip"
    assert resolve_source("https://example.org/a.zip", "mirror/", "my file.zip") == expected
    assert resolve_source("https://example.org/a.zip", "mirror", "my file.zip") == expected


# --- successful downloads ------------------------------------------------------------


def test_http_download_verifies_checksum(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    with serve(served) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload), progress=True) == sha(payload)
        assert url.ranges == [None]
    assert dest.read_bytes() == payload
    assert not part_of(dest).exists()


def test_file_url_download(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    assert get((served / NAME).as_uri(), dest, sha(payload)) == sha(payload)
    assert dest.read_bytes() == payload
    assert not part_of(dest).exists()


def test_folder_mirror_download_quotes_name(served: Path, out: Path, payload: bytes) -> None:
    (served / "odd name #1.zip").write_bytes(payload)
    src = resolve_source("https://unreachable.invalid/x.zip", str(served), "odd name #1.zip")
    dest = out / "x.zip"
    assert get(src, dest, sha(payload)) == sha(payload)
    assert dest.read_bytes() == payload


def test_http_mirror_download(served: Path, out: Path, payload: bytes) -> None:
    with serve(served) as url:
        src = resolve_source("https://unreachable.invalid/x.zip", f"{url}/", NAME)
        assert get(src, out / "x.zip", sha(payload)) == sha(payload)
        assert url.paths == [f"/{NAME}"]


def test_no_pinned_checksum_warns_with_digest(served: Path, out: Path, payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.data.fetch"), serve(served) as url:
        assert get(f"{url}/{NAME}", out / NAME, None) == sha(payload)
    assert sha(payload) in caplog.text
    assert "pin it in params.yaml" in caplog.text


def test_existing_dest_with_matching_sha_needs_no_network(out: Path, payload: bytes) -> None:
    dest = out / NAME
    dest.write_bytes(payload)
    dead = f"http://127.0.0.1:{free_port()}/{NAME}"
    assert get(dead, dest, sha(payload)) == sha(payload)
    assert get(dead, dest, None) == sha(payload)


def test_existing_dest_with_wrong_sha_is_downloaded_again(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    dest.write_bytes(b"stale")
    with serve(served) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload)) == sha(payload)
    assert dest.read_bytes() == payload


# --- resuming ------------------------------------------------------------------------


def test_dropped_connection_resumes_within_one_call(
    served: Path, out: Path, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    dest = out / NAME
    with caplog.at_level(logging.WARNING, logger="pipeline.data.fetch"), serve(served, drop_after=100_000, drop_times=1) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload)) == sha(payload)
        assert url.ranges == [None, "bytes=100000-"]
    assert dest.read_bytes() == payload
    assert not part_of(dest).exists()
    assert "retry 1/2" in caplog.text


def test_several_drops_each_resume_from_current_size(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    with serve(served, drop_after=50_000, drop_times=3) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload), retries=3) == sha(payload)
        assert url.ranges == [None, "bytes=50000-", "bytes=100000-", "bytes=150000-"]
    assert dest.read_bytes() == payload


def test_resume_across_calls_from_existing_part(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    half = SIZE // 2 + 7
    part_of(dest).write_bytes(payload[:half])
    with serve(served) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload)) == sha(payload)
        assert url.ranges == [f"bytes={half}-"]
    assert dest.read_bytes() == payload
    assert not part_of(dest).exists()


def test_resume_file_url_from_existing_part(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    part_of(dest).write_bytes(payload[:1234])
    assert get((served / NAME).as_uri(), dest, sha(payload)) == sha(payload)
    assert dest.read_bytes() == payload


def test_server_ignoring_range_restarts_from_zero(
    served: Path, out: Path, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    dest = out / NAME
    part_of(dest).write_bytes(b"x" * 1000)  # would corrupt the file if appended to
    with caplog.at_level(logging.WARNING, logger="pipeline.data.fetch"), serve(served, honor_range=False) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload)) == sha(payload)
        assert url.ranges == ["bytes=1000-"]
    assert dest.read_bytes() == payload
    assert "ignored the Range request" in caplog.text


def test_complete_part_gets_416_and_is_verified(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    part_of(dest).write_bytes(payload)
    with serve(served) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload)) == sha(payload)
        assert url.ranges == [f"bytes={SIZE}-"]
    assert dest.read_bytes() == payload
    assert not part_of(dest).exists()


def test_oversized_part_is_discarded(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    part_of(dest).write_bytes(payload + b"junk")
    with serve(served) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload)) == sha(payload)
        assert url.ranges == [f"bytes={SIZE + 4}-", None]
    assert dest.read_bytes() == payload


def test_retries_exhausted_keeps_part_and_next_call_resumes(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    with serve(served, drop_after=60_000, drop_times=10) as url:
        with pytest.raises(PipelineError) as err:
            get(f"{url}/{NAME}", dest, sha(payload), retries=1)
        assert url.ranges == [None, "bytes=60000-"]
    message = str(err.value)
    assert f"{url}/{NAME}" in message
    assert "kept 120000 bytes" in message and "resume" in message
    assert part_of(dest).stat().st_size == 120_000
    assert not dest.exists()
    with serve(served) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload)) == sha(payload)
        assert url.ranges == ["bytes=120000-"]


class _BreakingResponse:
    """Wraps a real response; the second read raises ``exc`` (a mid-file failure)."""

    def __init__(self, resp: object, exc: BaseException) -> None:
        self._resp, self._exc, self._reads = resp, exc, 0
        self.status, self.headers = resp.status, resp.headers  # type: ignore[attr-defined]

    def read(self, n: int) -> bytes:
        self._reads += 1
        if self._reads == 2:
            raise self._exc
        return self._resp.read(min(n, 70_000))  # type: ignore[attr-defined]

    def close(self) -> None:
        self._resp.close()  # type: ignore[attr-defined]

    def __enter__(self) -> _BreakingResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.mark.parametrize(
    "exc",
    [
        http.client.IncompleteRead(b"abc", 10),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
    ],
    ids=["IncompleteRead", "ConnectionResetError", "timeout"],
)
def test_mid_file_errors_are_retried_with_range(
    served: Path, out: Path, payload: bytes, exc: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_urlopen = urllib.request.urlopen
    calls: list[int] = []

    def flaky_urlopen(*args: object, **kwargs: object) -> object:
        calls.append(1)
        resp = real_urlopen(*args, **kwargs)  # type: ignore[arg-type]
        return _BreakingResponse(resp, exc) if len(calls) == 1 else resp

    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", flaky_urlopen)
    dest = out / NAME
    with serve(served) as url:
        assert get(f"{url}/{NAME}", dest, sha(payload)) == sha(payload)
        assert url.ranges == [None, "bytes=70000-"]
    assert dest.read_bytes() == payload


# --- failures ------------------------------------------------------------------------


def test_wrong_checksum_names_url_and_both_digests(served: Path, out: Path, payload: bytes) -> None:
    dest = out / NAME
    wrong = "ab" * 32
    with serve(served) as url, pytest.raises(PipelineError) as err:
        get(f"{url}/{NAME}", dest, wrong)
    message = str(err.value)
    assert f"{url}/{NAME}" in message
    assert "sha256 mismatch" in message
    assert wrong in message and sha(payload) in message
    assert list(out.iterdir()) == []


def test_http_404_names_url_and_leaves_no_files(served: Path, out: Path) -> None:
    dest = out / "missing.zip"
    with serve(served) as url, pytest.raises(PipelineError) as err:
        get(f"{url}/missing.zip", dest, None)
    message = str(err.value)
    assert f"{url}/missing.zip" in message
    assert "HTTP 404" in message
    assert list(out.iterdir()) == []


def test_http_error_keeps_resumable_part_but_not_empty_one(served: Path, out: Path) -> None:
    dest = out / "missing.zip"
    part_of(dest).write_bytes(b"partial")
    with serve(served) as url, pytest.raises(PipelineError, match="HTTP 404"):
        get(f"{url}/missing.zip", dest, None)
    assert part_of(dest).read_bytes() == b"partial"
    part_of(dest).write_bytes(b"")
    with serve(served) as url, pytest.raises(PipelineError, match="HTTP 404"):
        get(f"{url}/missing.zip", dest, None)
    assert list(out.iterdir()) == []


def test_refused_connection_names_url_and_leaves_no_files(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/{NAME}"
    dest = tmp_path / "out" / NAME
    with pytest.raises(PipelineError) as err:
        get(url, dest, None)
    message = str(err.value)
    assert url in message
    assert "cannot connect" in message
    assert list(tmp_path.iterdir()) == []


def test_missing_local_file_names_url(tmp_path: Path, out: Path) -> None:
    url = (tmp_path / "nope.zip").as_uri()
    with pytest.raises(PipelineError) as err:
        get(url, out / NAME, None)
    assert url in str(err.value)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("url", ["ftp://example.org/data.zip", "s3://bucket/data.zip", "data.zip"])
def test_unsupported_scheme_names_url_and_allowed_schemes(url: str, out: Path) -> None:
    with pytest.raises(PipelineError) as err:
        get(url, out / NAME, None)
    message = str(err.value)
    assert url in message
    assert "http, https, file" in message
    assert list(out.iterdir()) == []


def test_malformed_sha256_is_rejected(out: Path) -> None:
    with pytest.raises(PipelineError, match="not a 64-digit hex digest"):
        get("http://127.0.0.1:1/x.zip", out / NAME, "abc")
