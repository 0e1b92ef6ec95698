"""lib/azagent/transport.py against a loopback server that misbehaves byte by byte.

Each test starts its own server (tests/loopback.py) whose script writes
exactly the bytes a broken network or a hostile server would: a body that
stops, a reset, a short body, a trickle, a lie about the length, bad gzip.
The transport must end each within its deadline with a TransportError that
names the request and the problem, and never leave half a file behind.
"""

from __future__ import annotations

import gzip
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
from loopback import Request, Script, Server, answer, head, reset

from azagent import transport
from azagent.transport import Transport, TransportError
from azagent.wireclient import WireClient, WireServerError

SLACK = 1.0  # scheduling on a loaded two-core machine; the bounds tested are far from it


def ok(body: bytes = b"hello", headers: Optional[dict[str, str]] = None) -> Script:
    def script(server: Server, connection: socket.socket, request: Request) -> None:
        connection.sendall(answer(200, body, headers))

    return script


def stall(server: Server, connection: socket.socket, request: Request) -> None:
    """Headers and half of a 100-byte body, then silence."""
    connection.sendall(head(200, 100) + b"x" * 50)
    server.idle(30)


def reset_mid_body(server: Server, connection: socket.socket, request: Request) -> None:
    connection.sendall(head(200, 100) + b"x" * 50)
    time.sleep(0.1)
    reset(connection)


def truncate(server: Server, connection: socket.socket, request: Request) -> None:
    connection.sendall(head(200, 100) + b"x" * 50)
    connection.shutdown(socket.SHUT_RDWR)


def trickle_body(server: Server, connection: socket.socket, request: Request) -> None:
    """A 100-byte body, one byte every 0.3 s: each read succeeds, the whole takes 30 s."""
    connection.sendall(head(200, 100))
    for _ in range(100):
        if not server.idle(0.3):
            return
        connection.sendall(b"x")


def trickle_head(server: Server, connection: socket.socket, request: Request) -> None:
    """The status line and headers themselves, a byte every 0.2 s."""
    for byte in head(200, 5) + b"hello":
        if not server.idle(0.2):
            return
        connection.sendall(bytes([byte]))


def timed(call: Callable[[], object]) -> tuple[TransportError, float]:
    start = time.monotonic()
    with pytest.raises(TransportError) as caught:
        call()
    return caught.value, time.monotonic() - start


# -- the deadline bounds the whole exchange --------------------------------------


def test_a_body_that_stops_ends_at_the_deadline() -> None:
    with Server(stall) as server:
        client = Transport(timeout=10)
        error, took = timed(
            lambda: client.request(
                "GET", f"{server.url}/doc", endpoint="blob", deadline=time.monotonic() + 1
            )
        )
    assert 0.9 < took < 1 + SLACK
    assert error.transient
    assert "deadline" in error.problem
    assert error.request == f"GET {server.url}/doc"


def test_a_trickled_body_cannot_outlast_the_deadline() -> None:
    """Each byte comes within the read timeout, so only the deadline can end it."""
    with Server(trickle_body) as server:
        client = Transport(timeout=0.5)
        error, took = timed(
            lambda: client.request(
                "GET", f"{server.url}/doc", endpoint="blob", deadline=time.monotonic() + 1.5
            )
        )
    assert 1.4 < took < 1.5 + SLACK
    assert "deadline" in error.problem


def test_trickled_headers_cannot_outlast_the_deadline() -> None:
    with Server(trickle_head) as server:
        client = Transport(timeout=0.5)
        error, took = timed(
            lambda: client.request(
                "GET", f"{server.url}/doc", endpoint="blob", deadline=time.monotonic() + 1
            )
        )
    assert took < 1 + SLACK
    assert error.problem.startswith("no answer within its deadline")


def test_the_default_deadline_is_the_timeout() -> None:
    with Server(stall) as server:
        error, took = timed(
            lambda: Transport(timeout=0.5).request("GET", server.url, endpoint="wireserver")
        )
    assert took < 0.5 + SLACK
    assert "deadline" in error.problem


def test_a_deadline_already_past_sends_nothing() -> None:
    with Server(ok()) as server:
        error, _ = timed(
            lambda: Transport().request(
                "GET", server.url, endpoint="blob", deadline=time.monotonic() - 1
            )
        )
        assert server.requests == []
    assert error.transient


# -- every failure is a TransportError with a reason ------------------------------


def test_a_reset_mid_body() -> None:
    with Server(reset_mid_body) as server:
        error, took = timed(
            lambda: Transport(timeout=5).request("GET", server.url, endpoint="blob")
        )
    assert took < SLACK
    assert error.transient
    assert "reset" in error.problem
    # urllib3 >= 2.2 says how far the body got; older versions cannot know.
    assert error.problem in (
        "the connection was reset after 50 bytes of the body",
        "the connection was reset while reading the body",
    )


def test_a_truncated_body() -> None:
    with Server(truncate) as server:
        error, _ = timed(lambda: Transport(timeout=5).request("GET", server.url, endpoint="blob"))
    assert error.problem == "the body ended after 50 of 100 bytes"
    assert error.transient


def test_an_answer_over_the_cap_announced() -> None:
    with Server(ok(b"x" * 2000)) as server:
        error, _ = timed(
            lambda: Transport().request("GET", server.url, endpoint="blob", max_bytes=1000)
        )
    assert "over the limit of 1000" in error.problem
    assert not error.transient
    assert error.status == 200


def test_an_answer_over_the_cap_without_a_length() -> None:
    def endless(server: Server, connection: socket.socket, request: Request) -> None:
        connection.sendall(b"HTTP/1.1 200 X\r\nConnection: close\r\n\r\n")
        for _ in range(100):
            connection.sendall(b"x" * 1000)

    with Server(endless) as server:
        error, _ = timed(
            lambda: Transport().request("GET", server.url, endpoint="blob", max_bytes=5000)
        )
    assert error.problem == "an answer larger than 5000 bytes"


def test_a_bad_gzip_body() -> None:
    with Server(ok(b"\x1f\x8b\x08not gzip at all", {"Content-Encoding": "gzip"})) as server:
        error, _ = timed(lambda: Transport().request("GET", server.url, endpoint="blob"))
    assert error.problem == "the body is not valid gzip data"


def test_a_good_gzip_body_is_decoded() -> None:
    with Server(ok(gzip.compress(b"<Versions/>"), {"Content-Encoding": "gzip"})) as server:
        reply = Transport().request("GET", server.url, endpoint="blob")
    assert reply.body == b"<Versions/>"


def test_a_malformed_chunked_body() -> None:
    def chunked(server: Server, connection: socket.socket, request: Request) -> None:
        connection.sendall(
            b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5\r\nhello\r\nzz\r\n"
        )
        connection.shutdown(socket.SHUT_RDWR)

    with Server(chunked) as server:
        error, _ = timed(lambda: Transport().request("GET", server.url, endpoint="blob"))
    assert "chunked" in error.problem


def test_a_connection_closed_before_an_answer() -> None:
    def drop(server: Server, connection: socket.socket, request: Request) -> None:
        connection.shutdown(socket.SHUT_RDWR)

    with Server(drop) as server:
        error, _ = timed(lambda: Transport().request("GET", server.url, endpoint="wireserver"))
    assert error.problem == "the connection closed before an answer"


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error, _ = timed(
        lambda: Transport().request("GET", f"http://127.0.0.1:{port}/", endpoint="wireserver")
    )
    assert error.problem == "connection refused"
    assert error.transient


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/x", "http://"])
def test_an_invalid_url_is_not_transient(url: str) -> None:
    error, _ = timed(lambda: Transport().request("GET", url, endpoint="blob"))
    assert not error.transient
    assert error.problem == "not a URL azagent can fetch"


def test_a_sas_token_never_shows_in_the_reason() -> None:
    with Server(reset_mid_body) as server:
        url = f"{server.url}/c/pkg.zip?sv=2020-08-04&sr=b&sig=TOPSECRETSIGNATURE"
        error, _ = timed(lambda: Transport().request("GET", url, endpoint="blob"))
    assert "TOPSECRETSIGNATURE" not in str(error)
    assert "<redacted>" in str(error)
    assert str(error).startswith(f"GET {server.url}/c/pkg.zip?")


# -- downloads ----------------------------------------------------------------------


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_download_streams_into_a_private_file(tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    target = tmp_path / "Contoso.Ext__1.0.zip"
    old = os.umask(0o022)
    try:
        with Server(ok(body)) as server:
            size = Transport().download(f"{server.url}/p.zip", target, max_bytes=4 << 20)
    finally:
        os.umask(old)
    assert size == len(body)
    assert target.read_bytes() == body
    assert target.stat().st_mode & 0o777 == 0o600
    assert leftovers(tmp_path) == [target.name]


@pytest.mark.parametrize("script", [reset_mid_body, truncate, stall], ids=lambda s: s.__name__)
def test_a_failed_download_leaves_no_file(tmp_path: Path, script: Script) -> None:
    target = tmp_path / "pkg.zip"
    with Server(script) as server:
        error, took = timed(
            lambda: Transport(timeout=5).download(
                f"{server.url}/p.zip", target, max_bytes=1000, deadline=time.monotonic() + 1
            )
        )
    assert took < 1 + SLACK
    assert error.transient
    assert leftovers(tmp_path) == []


def test_a_failed_download_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "pkg.zip"
    target.write_bytes(b"the previous package")
    with Server(ok(b"x" * 2000)) as server:
        error, _ = timed(lambda: Transport().download(server.url, target, max_bytes=1000))
    assert "over the limit" in error.problem
    assert leftovers(tmp_path) == ["pkg.zip"]
    assert target.read_bytes() == b"the previous package"


def test_a_download_answered_404_writes_nothing(tmp_path: Path) -> None:
    def missing(server: Server, connection: socket.socket, request: Request) -> None:
        connection.sendall(answer(404, b"<Error>BlobNotFound</Error>"))

    with Server(missing) as server:
        error, _ = timed(lambda: Transport().download(server.url, tmp_path / "p", max_bytes=100))
    assert (error.problem, error.status, error.transient) == ("HTTP 404", 404, False)
    assert leftovers(tmp_path) == []


def test_a_download_into_a_missing_directory_is_a_transport_error(tmp_path: Path) -> None:
    with Server(ok()) as server:
        error, _ = timed(
            lambda: Transport().download(server.url, tmp_path / "no/such/p", max_bytes=100)
        )
    assert error.problem.startswith("cannot write")
    assert not error.transient


# -- headers per endpoint -----------------------------------------------------------


def test_each_endpoint_gets_its_own_headers() -> None:
    with Server(ok(b"")) as server:
        client = Transport()
        for endpoint in transport.ENDPOINTS:
            client.request("GET", f"{server.url}/{endpoint}", endpoint=endpoint)
        client.put_blob(f"{server.url}/status?sig=x", b"{}", blob_type="BlockBlob")
        seen = {r.target.split("?")[0].lstrip("/"): r for r in server.requests}
    wire, hgap, imds, blob, put = (
        seen["wireserver"],
        seen["hostgaplugin"],
        seen["imds"],
        seen["blob"],
        seen["status"],
    )
    assert wire.header("x-ms-version") == "2012-11-30"
    assert wire.header("x-ms-agent-name") == "azagent"
    assert hgap.header("x-ms-version") == "2015-09-01"
    assert imds.header("metadata") == "true"
    assert put.header("x-ms-version") == "2014-02-14"
    assert put.header("x-ms-blob-type") == "BlockBlob"
    assert put.header("x-ms-date") is not None
    for request in (hgap, imds, blob, put):
        assert request.header("x-ms-agent-name") is None
    for request in (imds, blob):
        assert request.header("x-ms-version") is None
    for request in server.requests:
        assert (request.header("user-agent") or "").startswith("azagent/")


# -- the WireClient's retries on top ------------------------------------------------


def test_wireclient_retries_a_reset_and_succeeds() -> None:
    count = 0
    lock = threading.Lock()

    def flaky(server: Server, connection: socket.socket, request: Request) -> None:
        nonlocal count
        with lock:
            count += 1
            first = count == 1
        if first:
            reset_mid_body(server, connection, request)
        else:
            connection.sendall(answer(200, b"<GoalState/>"))

    with Server(flaky) as server:
        client = WireClient(server.url, timeout=2, deadline=10, sleep=lambda _: None)
        assert client.request("GET", f"{server.url}/machine/?comp=goalstate").body == (
            b"<GoalState/>"
        )
        assert len(server.requests) == 2


def test_wireclient_bounds_each_slow_exchange_and_all_of_them() -> None:
    with Server(stall) as server:
        client = WireClient(server.url, timeout=1, deadline=3)
        start = time.monotonic()
        with pytest.raises(WireServerError) as caught:
            client.request("GET", f"{server.url}/machine/?comp=goalstate")
        took = time.monotonic() - start
        attempts = len(server.requests)
    assert took < 3 + SLACK
    assert attempts >= 2  # one stalled exchange did not eat the whole deadline
    reason = str(caught.value)
    assert "deadline" in reason
    assert f"gave up after {attempts} attempt(s)" in reason
