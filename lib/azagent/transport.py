"""One HTTP client for every exchange azagent has: WireServer, HostGAPlugin, IMDS, blobs.

Only code that talks HTTP imports this module (it imports requests). A
:class:`Transport` wraps one ``requests.Session`` and gives every caller the
same guarantees:

- **A deadline for the whole exchange** (``time.monotonic()`` seconds). The
  bound, exactly: each TCP connect attempt waits at most ``min(timeout, time
  left)`` (a host name with several addresses is tried address by address;
  the platform endpoints are addresses; name resolution is bounded by the
  resolver's own settings). From the moment the socket exists, a watchdog
  shuts it down when the deadline passes, so whatever the exchange is doing
  then (TLS handshake, proxy tunnel, sending, waiting for the headers,
  reading the body) ends at once: the call returns or raises at the deadline,
  plus the time this thread needs to be scheduled again. Every socket read
  and write also waits at most ``timeout`` seconds for progress. A server
  that sends a byte just before each read would time out keeps a caller
  until the deadline, never longer. (Through a SOCKS proxy, whose
  connections are not ours to watch, the deadline is checked between reads
  of the body instead: it can be passed by one read's ``timeout``.)
- **Bodies read in streaming mode with a size cap**, into memory
  (:meth:`Transport.request`) or into a file (:meth:`Transport.download`:
  a temporary file in the target's directory, 0600 from its creation,
  renamed over the target when complete, removed on any failure).
- **One error type**, :class:`TransportError`, for everything requests,
  urllib3 or the socket can raise (timeouts, a reset or a close mid-body, a
  bad chunked or gzip body, too many bytes, an invalid URL, TLS), with a
  reason naming the request (its URL redacted: SAS tokens never show) and
  what went wrong, and whether trying again may help.
- **Headers per endpoint** (:func:`endpoint_headers`): ``x-ms-version`` and
  ``x-ms-agent-name`` of the WireServer protocol go to the WireServer only;
  the HostGAPlugin gets its own ``x-ms-version``, IMDS ``Metadata: true``,
  Azure Storage its storage API version and ``x-ms-date`` on writes.
- **The proxy** (:mod:`azagent.proxy`) for everything but the WireServer,
  the HostGAPlugin and IMDS, which are always reached directly. The session
  ignores the environment (``trust_env`` off): nothing else decides.
"""

from __future__ import annotations

import functools
import http.client
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from email.utils import formatdate
from pathlib import Path

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

from azagent import __version__, proxy, wireserver
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.redact import redact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, Optional

WIRESERVER = "wireserver"
HOSTGAPLUGIN = "hostgaplugin"
IMDS = "imds"
BLOB = "blob"  # Azure Storage, and any other URL a goal state names
ENDPOINTS = (WIRESERVER, HOSTGAPLUGIN, IMDS, BLOB)
# Never through a proxy: the platform refuses (IMDS) or cannot route them.
PLATFORM = frozenset({WIRESERVER, HOSTGAPLUGIN, IMDS})

AGENT_NAME = "azagent"
USER_AGENT = f"{AGENT_NAME}/{__version__}"
HOSTGAPLUGIN_VERSION = "2015-09-01"
STORAGE_VERSION = "2014-02-14"

MAX_BODY = 4 * 1024 * 1024  # a platform document
DOWNLOAD_TIMEOUT = 300.0  # a whole package download
CHUNK = 64 * 1024
# Statuses a caller may try again; the WireClient has its own list.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504, 507})


class TransportError(AzagentError):
    """An HTTP exchange failed: ``request`` (method and redacted URL) and ``problem`` say how.

    ``transient`` says whether the same request may succeed later (a timeout,
    a reset) or not (an invalid URL, an answer over the size cap); ``status``
    is the HTTP status when there was one; ``late`` says that the exchange's
    deadline ended it (or passed before it began), whatever the server did.
    """

    def __init__(
        self,
        request: str,
        problem: str,
        *,
        transient: bool,
        status: Optional[int] = None,
        late: bool = False,
    ) -> None:
        super().__init__(f"{request}: {problem}")
        self.request = request
        self.problem = problem
        self.transient = transient
        self.status = status
        self.late = late


class Reply:
    """A complete answer: status, body, headers (names in lower case)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.status: Final = status
        self.body: Final = body
        self.headers: Final[Mapping[str, str]] = {} if headers is None else headers

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


def endpoint_headers(endpoint: str, method: str = "GET") -> dict[str, str]:
    """The headers every request to ``endpoint`` carries; callers add their own on top.

    Azure Storage reads ``x-ms-version`` as its own API version, so the
    WireServer's never goes anywhere but the WireServer.
    """
    headers = {"User-Agent": USER_AGENT}
    if endpoint == WIRESERVER:
        headers["x-ms-agent-name"] = AGENT_NAME
        headers["x-ms-version"] = wireserver.PROTOCOL_VERSION
    elif endpoint == HOSTGAPLUGIN:
        headers["x-ms-version"] = HOSTGAPLUGIN_VERSION
    elif endpoint == IMDS:
        headers["Metadata"] = "true"
    elif endpoint == BLOB:
        # A read through a SAS URL needs nothing more; a write names the
        # storage API version it speaks and when it was made.
        if method.upper() not in ("GET", "HEAD"):
            headers["x-ms-version"] = STORAGE_VERSION
            headers["x-ms-date"] = formatdate(usegmt=True)
    else:
        raise ValueError(f"unknown endpoint {endpoint!r}: one of {', '.join(ENDPOINTS)}")
    return headers


# -- the deadline watchdog --------------------------------------------------------

_current = threading.local()


def _cut(sock: socket.socket) -> None:
    """Shut a socket down so that a read or write blocked on it returns now.

    The plain socket's shutdown, also for a TLS socket: it acts on the file
    descriptor without touching TLS state another thread may be using.
    """
    with suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watch:
    """Shuts down the sockets of one exchange when its deadline passes."""

    def __init__(self, deadline: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._done = False
        self.fired = False
        self.connecting = False  # a new connection is being made
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, sock: Any) -> None:
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            if self._done:
                return
            self._sockets.append(sock)
            if self.fired:
                _cut(sock)

    @property
    def watching(self) -> bool:
        return bool(self._sockets)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for sock in self._sockets:
                _cut(sock)

    def disarm(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


def _watch_new(connect: Callable[[], socket.socket]) -> socket.socket:
    """``connect()``'s new socket, watched from then on; while it connects, the watch knows."""
    watch: Optional[_Watch] = getattr(_current, "watch", None)
    if watch is None:
        return connect()
    watch.connecting = True
    sock = connect()
    watch.connecting = False
    watch.attach(sock)
    return sock


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _watch_new(super()._new_conn)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _watch_new(super()._new_conn)


def _watch_pooled(connection: Any) -> Any:
    """A connection taken from the pool: an open one is watched from now on, headers included."""
    watch: Optional[_Watch] = getattr(_current, "watch", None)
    if watch is not None:
        watch.attach(getattr(connection, "sock", None))
    return connection


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        return _watch_pooled(super()._get_conn(timeout))


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        return _watch_pooled(super()._get_conn(timeout))


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections hand their socket to the exchange's watchdog."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            # A SOCKS proxy has connection classes of its own: there, the
            # socket timeout bounds each read, and the deadline is checked
            # between reads of the body.
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


# -- what went wrong ----------------------------------------------------------------


class _SinkError(Exception):
    """Writing a received chunk failed (a full disk): not the network's fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _causes(error: BaseException) -> list[BaseException]:
    """The error, what it wraps (urllib3's ``reason``, exception arguments) and its causes."""
    found: list[BaseException] = []
    pending: list[object] = [error]
    while pending and len(found) < 32:
        item = pending.pop()
        if not isinstance(item, BaseException) or any(item is seen for seen in found):
            continue
        found.append(item)
        pending.extend((item.__cause__, item.__context__, getattr(item, "reason", None)))
        pending.extend(item.args)
    return found


def _has(causes: list[BaseException], *kinds: type[BaseException]) -> Optional[BaseException]:
    for cause in causes:
        if isinstance(cause, kinds):
            return cause
    return None


# Not urllib3's TimeoutError: its NewConnectionError (a refused connection) is one.
_TIMEOUTS: tuple[type[BaseException], ...] = (
    socket.timeout,
    TimeoutError,
    requests.Timeout,
    urllib3.exceptions.ReadTimeoutError,
)
_BAD_URL: tuple[type[BaseException], ...] = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    urllib3.exceptions.LocationValueError,
)


class _Progress:
    """Where an exchange got to, for the reason of its failure."""

    __slots__ = ("chunked", "encoding", "length", "phase", "received")

    def __init__(self) -> None:
        self.phase = "request"  # request: connecting, sending, waiting for the headers; body
        self.received = 0  # body bytes, decoded
        self.length: Optional[int] = None  # Content-Length
        self.encoding = ""  # Content-Encoding
        self.chunked = False  # Transfer-Encoding: chunked


def _late(progress: _Progress, budget: float, connecting: bool = False) -> str:
    if connecting:
        return f"could not connect within its deadline ({budget:.3g} s)"
    if progress.phase != "body":
        return f"no answer within its deadline ({budget:.3g} s)"
    read = f", {progress.received} bytes read" if progress.received else ""
    return f"the body did not arrive within the deadline ({budget:.3g} s{read})"


def _strerror(error: Optional[BaseException]) -> Optional[str]:
    if isinstance(error, OSError) and error.errno:
        return (error.strerror or os.strerror(error.errno)).lower()
    return None


def _is_late(error: BaseException, watch: _Watch, timeout: float, budget: float) -> bool:
    """Whether the exchange's deadline ended it.

    A socket timeout as long as the time left races the watchdog: the deadline it is.
    """
    return watch.fired or (timeout >= budget and _has(_causes(error), *_TIMEOUTS) is not None)


def _problem(
    error: BaseException, watch: _Watch, progress: _Progress, timeout: float, budget: float
) -> tuple[str, bool]:
    """A fixed phrase for ``error``, and whether trying again may help.

    Never the error's own text: urllib3 quotes URLs, SAS tokens included.
    """
    causes = _causes(error)
    if _is_late(error, watch, timeout, budget):
        return _late(progress, budget, watch.connecting), True
    if _has(causes, urllib3.exceptions.DecodeError, requests.exceptions.ContentDecodingError):
        return f"the body is not valid {progress.encoding or 'compressed'} data", True
    tls = _has(causes, ssl.SSLError, urllib3.exceptions.SSLError, requests.exceptions.SSLError)
    if tls is not None:
        detail = getattr(tls, "reason", None)
        detail = detail if isinstance(detail, str) and detail.isidentifier() else type(tls).__name__
        return f"TLS failed ({detail})", True
    if _has(causes, requests.exceptions.ProxyError, urllib3.exceptions.ProxyError):
        return "the proxy did not relay the request", True
    if _has(causes, *_BAD_URL):
        return "not a URL azagent can fetch", False
    if _has(causes, requests.exceptions.InvalidHeader, urllib3.exceptions.HeaderParsingError):
        return "a malformed header", True
    innermost = type(causes[-1] if causes else error).__name__
    if progress.phase == "body":
        # urllib3 < 2.2 reads in whole chunks: what a failed read brought is unknown.
        so_far = (
            f" after {progress.received} bytes of the body"
            if progress.received
            else " while reading the body"
        )
        if _has(causes, ConnectionResetError):
            return f"the connection was reset{so_far}", True
        if progress.chunked and _has(
            causes,
            urllib3.exceptions.InvalidChunkLength,
            requests.exceptions.ChunkedEncodingError,
            http.client.IncompleteRead,  # what http.client says of a bad chunk size too
        ):
            return f"a chunked body cut short or malformed{so_far}", True
        if _has(causes, http.client.IncompleteRead):
            total = f" of {progress.length}" if progress.length is not None else ""
            return f"the body ended after {progress.received}{total} bytes", True
        if _has(causes, *_TIMEOUTS):
            return f"no data for {timeout:.3g} s{so_far}", True
        reason = _strerror(_has(causes, OSError))
        if reason:
            return f"{reason}{so_far}", True
        return f"the body could not be read ({innermost}){so_far}", True
    if _has(causes, ConnectionRefusedError):
        return "connection refused", True
    connect = _has(causes, urllib3.exceptions.NewConnectionError)
    if _has(causes, requests.exceptions.ConnectTimeout) or (
        connect is None and _has(causes, urllib3.exceptions.ConnectTimeoutError)
    ):
        return f"could not connect within {timeout:.3g} s", True
    if connect is not None:
        reason = _strerror(_has(causes, OSError))
        return f"could not connect ({reason or innermost})", True
    # RemoteDisconnected is a ConnectionResetError too: a close, not a reset.
    if _has(causes, http.client.RemoteDisconnected, http.client.BadStatusLine):
        return "the connection closed before an answer", True
    if _has(causes, ConnectionResetError):
        return "the connection was reset before an answer", True
    if _has(causes, *_TIMEOUTS):
        return f"no answer within {timeout:.3g} s", True
    reason = _strerror(_has(causes, OSError))
    if reason:
        return reason, True
    if isinstance(error, ValueError):
        return "not a URL azagent can fetch", False
    return f"the request failed ({innermost})", True


# -- the client ---------------------------------------------------------------------


class Transport:
    """HTTP exchanges under a deadline, with per-endpoint headers and the proxy rule.

    ``timeout`` bounds each connect attempt and each socket read or write
    (progress), and is the default budget of a whole :meth:`request`.
    ``proxies(url)`` gives the proxies for a non-platform URL (None: direct).
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        proxies: Optional[Callable[[str], dict[str, str]]] = None,
        session: Optional[requests.Session] = None,
    ) -> None:
        self.timeout = timeout
        self._proxies = proxies
        self.session = session or requests.Session()
        # The environment (http_proxy, netrc, CA bundles) decides nothing:
        # proxies_for does, per request.
        self.session.trust_env = False
        self.session.proxies = {}
        self.session.mount("http://", _Adapter())
        self.session.mount("https://", _Adapter())

    @classmethod
    def from_context(cls, ctx: Context) -> Transport:
        """Endpoint.RequestTimeout; HttpProxy.* (or the environment's) for non-platform URLs."""
        return cls(
            timeout=float(ctx.config.get_int("Endpoint.RequestTimeout") or 10),
            proxies=functools.partial(proxy.proxies_for, ctx),
        )

    def close(self) -> None:
        self.session.close()

    def proxies_for(self, endpoint: str, url: str) -> dict[str, str]:
        """The proxies a request to ``url`` at ``endpoint`` goes through; {} is direct."""
        if endpoint in PLATFORM or self._proxies is None:
            return {}
        return self._proxies(url)

    def request(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        deadline: Optional[float] = None,
        max_bytes: int = MAX_BODY,
    ) -> Reply:
        """One exchange; any status is a :class:`Reply`, any failure a :class:`TransportError`.

        ``deadline`` (``time.monotonic()``) defaults to ``timeout`` from now.
        """
        content = bytearray()
        status, answer = self._exchange(
            method,
            url,
            endpoint=endpoint,
            body=body,
            headers=headers,
            deadline=time.monotonic() + self.timeout if deadline is None else deadline,
            max_bytes=max_bytes,
            sink_for=lambda _status: content.extend,
        )
        return Reply(status, bytes(content), answer)

    def put_blob(
        self,
        url: str,
        content: bytes,
        *,
        blob_type: str = "BlockBlob",
        headers: Optional[Mapping[str, str]] = None,
        deadline: Optional[float] = None,
    ) -> Reply:
        """PUT a blob through its SAS URL (``x-ms-blob-type`` and the storage version)."""
        return self.request(
            "PUT",
            url,
            endpoint=BLOB,
            body=content,
            headers={"x-ms-blob-type": blob_type, **(headers or {})},
            deadline=deadline,
        )

    def download(
        self,
        url: str,
        path: Path,
        *,
        max_bytes: int,
        endpoint: str = BLOB,
        headers: Optional[Mapping[str, str]] = None,
        deadline: Optional[float] = None,
    ) -> int:
        """Stream a 200 answer's body into ``path`` (0600), at most ``max_bytes``; its size.

        The body goes to a temporary file in ``path``'s directory, created
        0600, fsynced and renamed over ``path`` once complete; on any failure
        (another status, the network, the cap, the deadline, a full disk) it
        is removed and ``path`` is left as it was. ``deadline`` defaults to
        DOWNLOAD_TIMEOUT from now.
        """
        if deadline is None:
            deadline = time.monotonic() + DOWNLOAD_TIMEOUT
        shown = f"GET {redact(url)}"

        def sink_for(status: int) -> Callable[[bytes], object]:
            if status != 200:
                raise TransportError(
                    shown, f"HTTP {status}", transient=status in TRANSIENT_STATUS, status=status
                )
            return out.write

        temporary: Optional[Path] = None
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            temporary = Path(name)
            with os.fdopen(fd, "wb") as out:
                self._exchange(
                    "GET",
                    url,
                    endpoint=endpoint,
                    body=None,
                    headers=headers,
                    deadline=deadline,
                    max_bytes=max_bytes,
                    sink_for=sink_for,
                )
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            os.replace(temporary, path)
            temporary = None
            _fsync_directory(path.parent)
        except (OSError, _SinkError) as e:
            error = e.error if isinstance(e, _SinkError) else e
            problem = f"cannot write {path}: {error.strerror or type(error).__name__}"
            raise TransportError(shown, problem, transient=False) from None
        finally:
            if temporary is not None:
                with suppress(FileNotFoundError):
                    temporary.unlink()
        return size

    # -- one exchange -----------------------------------------------------------

    def _exchange(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        body: Optional[bytes],
        headers: Optional[Mapping[str, str]],
        deadline: float,
        max_bytes: int,
        sink_for: Callable[[int], Callable[[bytes], object]],
    ) -> tuple[int, dict[str, str]]:
        shown = f"{method} {redact(url)}"
        all_headers = {**endpoint_headers(endpoint, method), **(headers or {})}
        proxies = self.proxies_for(endpoint, url)
        budget = deadline - time.monotonic()
        if budget <= 0:
            raise TransportError(
                shown, "the deadline passed before it was sent", transient=True, late=True
            )
        io_timeout = min(self.timeout, budget)
        progress = _Progress()
        watch = _Watch(deadline)
        try:
            _current.watch = watch
            try:
                response = self.session.request(
                    method,
                    url,
                    data=body,
                    headers=all_headers,
                    timeout=(io_timeout, io_timeout),
                    allow_redirects=False,
                    stream=True,
                    proxies=proxies,
                )
            finally:
                _current.watch = None
            try:
                if not watch.watching:  # a pooled connection: watch its socket now
                    connection = getattr(response.raw, "_connection", None)
                    watch.attach(getattr(connection, "sock", None))
                answer = {k.lower(): v for k, v in response.headers.items()}
                progress.phase = "body"
                progress.encoding = answer.get("content-encoding", "")
                progress.length = _length(answer)
                progress.chunked = "chunked" in answer.get("transfer-encoding", "").lower()
                bodyless = method.upper() == "HEAD" or response.status_code in (204, 304)
                if bodyless:
                    progress.length = None
                elif progress.length is not None and progress.length > max_bytes:
                    raise TransportError(
                        shown,
                        f"an answer of {progress.length} bytes, over the limit of {max_bytes}",
                        transient=False,
                        status=response.status_code,
                    )
                sink = sink_for(response.status_code)
                # read1 (urllib3 >= 2.2) returns what one read brings, so the
                # reason of a failure can say how far the body got.
                read = getattr(response.raw, "read1", None) or response.raw.read
                while not bodyless:
                    chunk = read(CHUNK, decode_content=True)
                    if not chunk:
                        break
                    progress.received += len(chunk)
                    if progress.received > max_bytes:
                        raise TransportError(
                            shown,
                            f"an answer larger than {max_bytes} bytes",
                            transient=False,
                            status=response.status_code,
                        )
                    try:
                        sink(chunk)
                    except OSError as e:
                        raise _SinkError(e) from e
                    if time.monotonic() > deadline:  # without the watchdog (a SOCKS proxy)
                        raise TransportError(
                            shown, _late(progress, budget), transient=True, late=True
                        )
                wire = response.raw.tell()
            finally:
                response.close()
            watch.disarm()
            if watch.fired:  # a cut socket may look like the end of a body without a length
                raise TransportError(shown, _late(progress, budget), transient=True, late=True)
            if progress.length is not None and wire < progress.length:
                raise TransportError(
                    shown,
                    f"the body ended after {wire} of {progress.length} bytes",
                    transient=True,
                    status=response.status_code,
                )
            return response.status_code, answer
        except (AzagentError, _SinkError):
            raise
        except Exception as e:
            watch.disarm()
            problem, transient = _problem(e, watch, progress, io_timeout, budget)
            late = _is_late(e, watch, io_timeout, budget)
            raise TransportError(shown, problem, transient=transient, late=late) from None
        finally:
            watch.disarm()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _length(headers: Mapping[str, str]) -> Optional[int]:
    """Content-Length, None when absent or not one number (urllib3 then reads to the end)."""
    value = headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None
