"""Faults between a client and a real server: a loopback TCP proxy that forwards, refuses or hangs on command.

    with FaultProxy(("127.0.0.1", server_port)) as proxy:
        client(proxy.url) ...        # forwarded to the server
        proxy.set("hang")            # accepts connections, never answers (nor reads past what the kernel buffers)
        proxy.set("refuse")          # nothing listens on the port: connection refused
        proxy.set("forward")         # the same port again, forwarding
        proxy.switch_on(rb'"step": "?1\b', "hang")  # the first request whose bytes match goes nowhere: then hang

Connections open when the mode changes are cut, as a crash of the server would.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from typing import Literal

Mode = Literal["forward", "hang", "refuse"]


class FaultProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode: Mode = "forward"
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.port = self._listen(0)
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._trigger: tuple[re.Pattern[bytes], Mode] | None = None

    def _listen(self, port: int) -> int:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: refuse mode or the end
                return
            with self._lock:
                self.connections += 1
                self._open.append(client)
                if self.mode == "hang":
                    continue  # held open, never answered
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.append(upstream)
            for src, dst, watch in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, watch), daemon=True).start()

    def switch_on(self, pattern: bytes, mode: Mode) -> None:
        """Switch to ``mode`` at the first client request whose bytes match ``pattern`` (that request is not forwarded)."""
        self._trigger = (re.compile(pattern), mode)

    def _pipe(self, src: socket.socket, dst: socket.socket, watch: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                trigger = self._trigger
                if watch and trigger and trigger[0].search(data):
                    self._trigger = None
                    self.set(trigger[1])
                    return
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _cut(self) -> None:
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def set(self, mode: Mode) -> None:
        """Switch to ``mode``; open connections are cut."""
        self._cut()
        if mode == "refuse" and self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            self._listener.close()
            self._listener = None
        elif mode != "refuse" and self._listener is None:
            self._listen(self.port)
        self.mode = mode

    def close(self) -> None:
        self.set("refuse")

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
