"""The journal handler: structured, redacted entries through systemd-python's journal.send."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest
from conftest import REPO

from azagent import journal, redact


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def __call__(self, message: str, **fields: Any) -> None:
        if self.fail:
            raise OSError("journald is not there")
        self.sent.append((message, fields))


def log_through(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(f"azagent.test-journal-{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler.handleError = lambda record: pytest.fail("the journal handler failed")  # type: ignore[method-assign]
    logger.addHandler(handler)
    return logger


def test_the_handler_sends_redacted_structured_entries() -> None:
    send = Recorder()
    handler = journal.JournalHandler("ssh-keys", send=send)
    logger = log_through(handler, "fields")
    try:
        redact.register("JournalSecretPassw0rd")
        logger.warning(
            "ssh-keys failed for %s",
            "JournalSecretPassw0rd",
            extra={
                "REASON": "bad JournalSecretPassw0rd",
                "MESSAGE_ID": journal.MESSAGE_STAGE_FAILED,
            },
        )
    finally:
        logger.removeHandler(handler)
    [(message, fields)] = send.sent
    assert message == "ssh-keys failed for <redacted>"
    assert fields["PRIORITY"] == "4"
    assert fields["STAGE"] == "ssh-keys"
    assert fields["SYSLOG_IDENTIFIER"] == "azagent"
    assert fields["MESSAGE_ID"] == journal.MESSAGE_STAGE_FAILED
    assert fields["REASON"] == "bad <redacted>"
    assert fields["CODE_FUNC"] == "test_the_handler_sends_redacted_structured_entries"
    assert isinstance(fields["CODE_LINE"], int)  # systemd.journal.send formats it with {:d}


def test_by_default_the_entries_go_through_systemd_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from systemd import journal as systemd_journal

    send = Recorder()
    monkeypatch.setattr(systemd_journal, "send", send)
    handler = journal.JournalHandler("kernel-tune")
    logger = log_through(handler, "default")
    try:
        logger.info("applied")
    finally:
        logger.removeHandler(handler)
    assert [m for m, _ in send.sent] == ["applied"]


def test_when_journald_refuses_the_line_goes_to_stderr_with_its_priority(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = journal.JournalHandler("kernel-tune", send=Recorder(fail=True))
    logger = log_through(handler, "refused")
    try:
        logger.error("one\ntwo")
    finally:
        logger.removeHandler(handler)
    assert capsys.readouterr().err == "<3>one\n<3>two\n"


def test_a_stage_that_logs_nothing_does_not_load_systemd_python() -> None:
    code = (
        "import sys; from azagent import journal; journal.setup('x', journal=True); "
        "print('systemd.journal' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.stdout.strip() == "False"
