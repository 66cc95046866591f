"""A loopback HTTP server for download tests (127.0.0.1, a free port).

It serves the files of one folder, honours ``Range: bytes=N-`` (206 with
``Content-Range``, 416 past the end) and can drop the connection after sending
``drop_after`` bytes of the body, for the first ``drop_times`` responses::

    with serve(folder, drop_after=1000, drop_times=1) as url:
        fetch(f"{url}/data.zip", ...)
        assert url.ranges == [None, "bytes=1000-"]
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE_RE = re.compile(r"bytes=(\d+)-")


class ServerURL(str):
    """The server's base URL (no trailing slash), plus what the server saw.

    ``ranges`` holds the ``Range`` header of every GET, in order (None when a
    request had none); ``paths`` the request paths.
    """

    ranges: list[str | None]
    paths: list[str]

    def __new__(cls, url: str) -> ServerURL:
        self = super().__new__(cls, url)
        self.ranges = []
        self.paths = []
        return self


class _State:
    def __init__(self, url: ServerURL, drop_after: int | None, drop_times: int, honor_range: bool):
        self.url = url
        self.drop_after = drop_after
        self.drops_left = drop_times if drop_after is not None else 0
        self.honor_range = honor_range
        self.lock = threading.Lock()

    def record(self, path: str, range_header: str | None) -> None:
        with self.lock:
            self.url.paths.append(path)
            self.url.ranges.append(range_header)

    def take_drop(self) -> bool:
        with self.lock:
            if self.drops_left > 0:
                self.drops_left -= 1
                return True
            return False


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        state = self.server.state
        range_header = self.headers.get("Range")
        state.record(self.path, range_header)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "File not found")
            return
        data = path.read_bytes()
        start = self._range_start(range_header) if state.honor_range else None
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_body(data, start)

    @staticmethod
    def _range_start(header: str | None) -> int | None:
        match = _RANGE_RE.fullmatch((header or "").strip())
        return int(match[1]) if match else None

    def _send_body(self, data: bytes, start: int | None) -> None:
        body = data[start or 0 :]
        self.send_response(206 if start is not None else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        state = self.server.state
        if state.drop_after is not None and state.take_drop():
            self.wfile.write(body[: state.drop_after])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


@contextlib.contextmanager
def serve(
    folder: Path,
    *,
    drop_after: int | None = None,
    drop_times: int = 0,
    honor_range: bool = True,
) -> Iterator[ServerURL]:
    """Serve ``folder`` on 127.0.0.1 and yield its base URL (a :class:`ServerURL`).

    The first ``drop_times`` responses are cut off after ``drop_after`` body
    bytes. With ``honor_range`` False the server ignores ``Range`` (always 200).
    """
    handler = functools.partial(_Handler, directory=str(folder))
    server = _Server(("127.0.0.1", 0), handler)
    url = ServerURL(f"http://127.0.0.1:{server.server_address[1]}")
    server.state = _State(url, drop_after, drop_times, honor_range)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.02},
        name="test-httpserver",
        daemon=True,
    )
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
