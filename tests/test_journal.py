"""The journal without systemd-python: journald's native protocol, one datagram per entry."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from azagent import journal, redact


def parse_native(payload: bytes) -> dict[str, str]:
    """Decode a datagram of journald's native protocol (what journald does)."""
    fields: dict[str, str] = {}
    rest = payload
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            rest = after
        else:
            size = int.from_bytes(after[:8], "little")
            fields[line.decode()] = after[8 : 8 + size].decode()
            assert after[8 + size : 9 + size] == b"\n"
            rest = after[9 + size :]
    return fields


def sender(path: str) -> Callable[..., None]:
    """journal.native_send, to the socket at ``path``."""

    def send(message: str, **fields: object) -> None:
        journal.send_to(path, message, fields)

    return send


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    try:
        yield path, server
    finally:
        server.close()


def test_native_send_delivers_every_field_intact(journald: tuple[str, socket.socket]) -> None:
    path, server = journald
    journal.send_to(
        path,
        "first line\nsecond line = with an equals sign",
        {"PRIORITY": "3", "STAGE": "create-user", "CODE_LINE": 42, "REASON": "why: a=b"},
    )
    fields = parse_native(server.recv(65536))
    assert fields == {
        "MESSAGE": "first line\nsecond line = with an equals sign",
        "PRIORITY": "3",
        "STAGE": "create-user",
        "CODE_LINE": "42",
        "REASON": "why: a=b",
    }


def test_the_handler_sends_redacted_structured_entries(
    journald: tuple[str, socket.socket],
) -> None:
    path, server = journald
    logger = logging.getLogger("azagent.test-native")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = journal.JournalHandler("ssh-keys", send=sender(path))
    handler.handleError = lambda record: pytest.fail("the journal handler failed")  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        redact.register("NativeSecretPassw0rd")
        logger.warning(
            "ssh-keys failed for %s",
            "NativeSecretPassw0rd",
            extra={"REASON": "bad", "MESSAGE_ID": journal.MESSAGE_STAGE_FAILED},
        )
    finally:
        logger.removeHandler(handler)
    fields = parse_native(server.recv(65536))
    assert fields["MESSAGE"] == "ssh-keys failed for <redacted>"
    assert fields["PRIORITY"] == "4"
    assert fields["STAGE"] == "ssh-keys"
    assert fields["SYSLOG_IDENTIFIER"] == "azagent"
    assert fields["MESSAGE_ID"] == journal.MESSAGE_STAGE_FAILED
    assert fields["CODE_FUNC"] == "test_the_handler_sends_redacted_structured_entries"


def test_without_journald_the_line_goes_to_stderr_with_its_priority(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("azagent.test-native-missing")
    logger.propagate = False
    handler = journal.JournalHandler("kernel-tune", send=sender(str(tmp_path / "absent")))
    handler.handleError = lambda record: pytest.fail("the journal handler failed")  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.error("one\ntwo")
    finally:
        logger.removeHandler(handler)
    assert capsys.readouterr().err == "<3>one\n<3>two\n"
