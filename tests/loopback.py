"""A scripted HTTP server on 127.0.0.1 for the transport tests: it answers byte by byte.

``Server(script)`` accepts connections on a free port, each in a thread of
its own, reads each request (head and Content-Length body), records it, and
hands the socket to ``script(server, connection, request)``, which writes
whatever bytes the test needs: a slow body, a reset, a lie about the length.
It serves at most ``max_connections`` connections and stops when the
``with`` block ends; scripts wait through :meth:`Server.idle`, which returns
early on stop, so no test leaves a thread behind.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Request:
    method: str
    target: str  # as sent: a path, or an absolute URL through a proxy
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


Script = Callable[["Server", socket.socket, Request], None]


def answer(status: int = 200, body: bytes = b"", headers: Optional[dict[str, str]] = None) -> bytes:
    """A complete HTTP/1.1 answer's head and body, closing the connection."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def head(status: int, length: int, headers: Optional[dict[str, str]] = None) -> bytes:
    """Only the head, announcing ``length`` bytes of body."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {length}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def reset(connection: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER on, zero timeout) instead of a FIN."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


class Server:
    def __init__(self, script: Script, *, max_connections: int = 20) -> None:
        self.script = script
        self.max_connections = max_connections
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._handlers: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for handler in self._handlers:
            handler.join(timeout=10)
        self._listener.close()
        alive = [t for t in (self._thread, *self._handlers) if t.is_alive()]
        assert not alive, "the loopback server did not stop"

    def idle(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the server stops first; whether it is still running."""
        return not self._stop.wait(seconds)

    def _serve(self) -> None:
        served = 0
        while not self._stop.is_set() and served < self.max_connections:
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            served += 1
            handler = threading.Thread(target=self._handle, args=(connection,), daemon=True)
            self._handlers.append(handler)
            handler.start()

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5)
            try:
                request = self._read(connection)
            except OSError:
                return
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            with contextlib.suppress(OSError):  # the client went away: its business
                self.script(self, connection, request)

    @staticmethod
    def _read(connection: socket.socket) -> Optional[Request]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk or len(data) > 1024 * 1024:
                return None
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < length:
            chunk = connection.recv(65536)
            if not chunk:
                break
            rest += chunk
        return Request(method, target, headers, rest[:length])
