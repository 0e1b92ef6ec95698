"""azagent's log: structured, redacted entries through systemd-python's sendv, or stderr."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REPO, run_python

from azagent import journal, redact

THIS_CHECKOUT = {"PYTHONPATH": str(REPO / "lib")}


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def __call__(self, message: str, **fields: Any) -> None:
        if self.fail:
            raise OSError("journald is not there")
        self.sent.append((message, fields))


@pytest.fixture
def restore_log() -> Iterator[None]:
    saved = (journal.log.sink, journal.log.level)
    try:
        yield
    finally:
        journal.log.sink, journal.log.level = saved


def to_journal(send: Any, stage: str) -> None:
    journal.log.sink = journal.JournalSink(stage, send=send)
    journal.log.level = journal.INFO


@pytest.mark.usefixtures("restore_log")
def test_entries_are_redacted_and_carry_structured_fields() -> None:
    send = Recorder()
    to_journal(send, "ssh-keys")
    redact.register("JournalSecretPassw0rd")
    journal.log.warning(
        "ssh-keys failed for %s",
        "JournalSecretPassw0rd",
        extra={
            "REASON": "bad JournalSecretPassw0rd",
            "MESSAGE_ID": journal.MESSAGE_STAGE_FAILED,
            "DETAIL": "<UserPassword>x1y2z3</UserPassword>",
            "lowercase": "not a field",
        },
    )
    [(message, fields)] = send.sent
    assert message == "ssh-keys failed for <redacted>"
    assert fields["PRIORITY"] == "4"
    assert fields["STAGE"] == "ssh-keys"
    assert fields["SYSLOG_IDENTIFIER"] == "azagent"
    assert fields["MESSAGE_ID"] == journal.MESSAGE_STAGE_FAILED
    assert fields["REASON"] == "bad <redacted>"
    assert "x1y2z3" not in fields["DETAIL"]  # a pattern nobody registered
    assert "lowercase" not in fields
    assert fields["CODE_FUNC"] == "test_entries_are_redacted_and_carry_structured_fields"
    assert fields["CODE_FILE"] == __file__
    assert isinstance(fields["CODE_LINE"], int)


@pytest.mark.usefixtures("restore_log")
def test_the_level_filters_and_exception_adds_the_redacted_traceback() -> None:
    send = Recorder()
    to_journal(send, "kernel-tune")
    journal.log.debug("not at info level")
    try:
        raise ValueError("password=Hunter2Secret")
    except ValueError:
        journal.log.exception("failed: %s", "why")
    [(message, fields)] = send.sent
    assert message.startswith("failed: why\nTraceback")
    assert "ValueError" in message
    assert "Hunter2Secret" not in message
    assert fields["PRIORITY"] == "3"


@pytest.mark.usefixtures("restore_log")
def test_by_default_entries_go_through_systemd_pythons_sendv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from systemd import _journal

    sent: list[tuple[str, ...]] = []
    monkeypatch.setattr(_journal, "sendv", lambda *args: sent.append(args))
    journal.setup("kernel-tune", journal=True)
    journal.log.info(
        "set %s", "sda", extra={"REASON": "why", "MESSAGE_ID": journal.MESSAGE_STAGE_DONE}
    )
    [fields] = sent
    assert fields[0] == "MESSAGE=set sda"
    assert "STAGE=kernel-tune" in fields
    assert "PRIORITY=6" in fields
    assert "REASON=why" in fields
    assert f"MESSAGE_ID={journal.MESSAGE_STAGE_DONE}" in fields
    assert any(field.startswith("CODE_LINE=") for field in fields)
    # the very function systemd-python documents as systemd.journal.sendv
    from systemd import journal as systemd_journal

    assert systemd_journal.sendv is _journal.sendv


@pytest.mark.usefixtures("restore_log")
def test_when_journald_refuses_the_line_goes_to_stderr_with_its_priority(
    capsys: pytest.CaptureFixture[str],
) -> None:
    to_journal(Recorder(fail=True), "kernel-tune")
    journal.log.error("one\ntwo")
    assert capsys.readouterr().err == "<3>one\n<3>two\n"


@pytest.mark.usefixtures("restore_log")
def test_in_a_terminal_lines_name_the_stage_and_warnings_say_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    journal.setup("hostname", journal=False)
    journal.log.info("set %s", "vm1", extra={"REASON": "asked"})
    journal.log.warning("cannot publish")
    journal.log.debug("hidden")
    assert capsys.readouterr().err == (
        "azagent[hostname]: set vm1\nazagent[hostname]: warning: cannot publish\n"
    )
    journal.setup("hostname", verbose=True, journal=False)
    journal.log.debug("shown %d", 1, extra={"REASON": "asked"})
    assert capsys.readouterr().err == "azagent[hostname]: shown 1 (REASON=asked)\n"


@pytest.mark.usefixtures("restore_log")
def test_bad_arguments_or_a_failing_sink_never_raise(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(entry: journal.Entry) -> None:
        raise RuntimeError("sink down")

    journal.log.sink = broken
    journal.log.level = journal.INFO
    journal.log.info("two %s %s", "only-one")
    err = capsys.readouterr().err
    assert "cannot log (RuntimeError: sink down)" in err
    assert "bad log arguments" in err


def test_before_setup_only_warnings_and_errors_are_printed_alone() -> None:
    code = (
        "from azagent.journal import log; log.info('quiet'); log.warning('loud %s', 1);"
        " log.error('worse')"
    )
    done = run_python("-c", code, env=THIS_CHECKOUT)
    assert (done.returncode, done.stderr) == (0, "loud 1\nworse\n")


def test_a_stage_that_logs_nothing_loads_neither_logging_nor_systemd_python() -> None:
    code = (
        "import sys; from azagent import journal; journal.setup('x', journal=True); "
        "print(sorted(m for m in ('systemd', 'logging') if m in sys.modules))"
    )
    done = run_python("-c", code, env=THIS_CHECKOUT)
    assert (done.returncode, done.stdout.strip()) == (0, "[]")
