"""Logging to the journal with structured fields, or to stderr in a terminal.

Every handler azagent installs formats through :class:`RedactingFormatter`,
so whatever a caller passes (message, arguments, exception text, extra
fields) goes through :func:`azagent.redact.redact` before it is written.

Operators search the journal by these fields::

    journalctl STAGE=hostname
    journalctl MESSAGE_ID=<one of the ids below>
"""

from __future__ import annotations

import logging
import os
import sys

from azagent.redact import redact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

# MESSAGE_IDs of the events operators look for (journalctl MESSAGE_ID=...).
MESSAGE_PROVISIONED = "8ab6433b30e74aa5926ac93d2321769a"
MESSAGE_READY_REPORTED = "c1afca95e20b4b0f87449edb142d0792"
MESSAGE_PROVISIONING_FAILED = "ef6f24851e7340e898fb5f8def786232"
MESSAGE_STAGE_FAILED = "e303eb0422a54bcdae6d854c2adf8fd3"
MESSAGE_STAGE_DONE = "5890429048634a40804745269d9401e1"

IDENTIFIER = "azagent"

# The attributes every LogRecord has; anything else came in through extra=.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

log = logging.getLogger("azagent")


class RedactingFormatter(logging.Formatter):
    """A formatter whose every output has passed through redact()."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def structured_fields(record: logging.LogRecord) -> dict[str, str]:
    """The upper-case extra fields of a record (STAGE, REASON, MESSAGE_ID, ...), redacted."""
    fields = {}
    for name, value in vars(record).items():
        if name in _STANDARD_ATTRIBUTES or not name.isupper():
            continue
        fields[name] = redact(str(value))
    return fields


class JournalHandler(logging.Handler):
    """Send records to the journal with structured fields (systemd-python).

    ``send`` defaults to systemd.journal.send, imported at the first record
    so that a stage that logs nothing, or a run in a terminal, never loads
    systemd-python; tests pass a recorder with the same signature.
    """

    def __init__(self, stage: str, send: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.stage = stage
        self._send = send
        self.setFormatter(RedactingFormatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._send is None:
                from systemd import journal

                self._send = journal.send
            message = self.format(record)
            # systemd.journal.send formats CODE_LINE with {:d}: an int.
            fields: dict[str, object] = {
                "PRIORITY": str(_SYSLOG_PRIORITY.get(record.levelno, 6)),
                "SYSLOG_IDENTIFIER": IDENTIFIER,
                "STAGE": self.stage,
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,
                "CODE_FUNC": record.funcName,
            }
            fields.update(structured_fields(record))
            try:
                self._send(message, **fields)
            except OSError:
                # journald is gone or refused the entry: stderr is the journal's
                # stream, which reads a <priority> prefix; the fields are lost,
                # the line is not.
                for line in message.splitlines() or [""]:
                    sys.stderr.write(f"<{fields['PRIORITY']}>{line}\n")
                sys.stderr.flush()
        except Exception:
            self.handleError(record)


class StderrFormatter(RedactingFormatter):
    """``azagent[stage]: message`` plus ``(REASON=...)`` style fields when verbose."""

    def __init__(self, stage: str, verbose: bool) -> None:
        super().__init__("%(message)s")
        self.stage = stage
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{IDENTIFIER}[{self.stage}]: "
        if record.levelno >= logging.WARNING:
            prefix += record.levelname.lower() + ": "
        text = prefix + super().format(record)
        if self.verbose:
            fields = structured_fields(record)
            if fields:
                text += " (" + " ".join(f"{k}={v}" for k, v in sorted(fields.items())) + ")"
        return text


def stderr_is_journal() -> bool:
    """Whether systemd connected our stderr to the journal (see systemd.exec(5))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not device or not inode:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == stream


def setup(stage: str, *, verbose: bool = False, journal: bool | None = None) -> None:
    """Route the ``azagent`` logger to the journal under systemd, else stderr."""
    use_journal = stderr_is_journal() if journal is None else journal
    handler: logging.Handler
    if use_journal:
        handler = JournalHandler(stage)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter(stage, verbose))
    for old in list(log.handlers):
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
