"""azagent's log: to the journal with structured fields, or to stderr in a terminal.

Every module logs through the one :data:`log`, with printf-style arguments
and upper-case structured fields in ``extra``::

    from azagent.journal import log
    log.info("set %s", device, extra={"REASON": why})

Whatever a caller passes (message, arguments, traceback text, fields) goes
through :func:`azagent.redact.redact` before it is written anywhere.

Operators search the journal by these fields::

    journalctl STAGE=hostname
    journalctl MESSAGE_ID=<one of the ids below>

Why not the standard library's logging: every stage is a fresh process at
boot, and importing logging (with traceback, string, threading, weakref)
costs a stage about 4 ms on a fast host and far more under emulation, for
features a stage never uses (hierarchies, handlers, filters). For the same
reason the journal entry goes out through systemd-python's ``sendv``, the
documented ``systemd.journal.sendv``, taken from the C module that defines
it: the ``systemd.journal`` wrapper module imports logging, uuid, datetime
and traceback. Libraries that use logging (requests, urllib3) are left to it.
"""

from __future__ import annotations

import os
import sys

from azagent.redact import redact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# MESSAGE_IDs of the events operators look for (journalctl MESSAGE_ID=...).
MESSAGE_PROVISIONED = "8ab6433b30e74aa5926ac93d2321769a"
MESSAGE_READY_REPORTED = "c1afca95e20b4b0f87449edb142d0792"
MESSAGE_PROVISIONING_FAILED = "ef6f24851e7340e898fb5f8def786232"
MESSAGE_STAGE_FAILED = "e303eb0422a54bcdae6d854c2adf8fd3"
MESSAGE_STAGE_DONE = "5890429048634a40804745269d9401e1"

IDENTIFIER = "azagent"

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40

_SYSLOG_PRIORITY = {ERROR: 3, WARNING: 4, INFO: 6, DEBUG: 7}
_LEVEL_NAMES = {ERROR: "error", WARNING: "warning", INFO: "info", DEBUG: "debug"}


class Entry:
    """One thing logged: redacted text, its fields and where in the code it came from."""

    __slots__ = ("code_file", "code_func", "code_line", "fields", "level", "message")

    def __init__(
        self,
        level: int,
        message: str,
        fields: dict[str, str],
        *,
        code_file: str = "",
        code_line: int = 0,
        code_func: str = "",
    ) -> None:
        self.level = level
        self.message = message
        self.fields = fields
        self.code_file = code_file
        self.code_line = code_line
        self.code_func = code_func

    @property
    def priority(self) -> str:
        """The syslog priority, as the journal's PRIORITY field and a stderr <N> prefix."""
        return str(_SYSLOG_PRIORITY.get(self.level, 6))


def structured_fields(extra: Mapping[str, object] | None) -> dict[str, str]:
    """The upper-case fields of ``extra`` (STAGE, REASON, MESSAGE_ID, ...), redacted."""
    if not extra:
        return {}
    return {name: redact(str(value)) for name, value in extra.items() if name.isupper()}


def send(message: str, **fields: object) -> None:
    """One journal entry through systemd-python's sendv (loaded at the first entry)."""
    from systemd._journal import sendv

    sendv(f"MESSAGE={message}", *(f"{name}={value}" for name, value in fields.items()))


class JournalSink:
    """Entries to the journal with structured fields.

    ``send`` defaults to :func:`send`, which loads systemd-python at the first
    entry, so that a stage that logs nothing, or a run in a terminal, never
    loads it; tests pass a recorder with the same signature.
    """

    def __init__(self, stage: str, send: Callable[..., object] | None = None) -> None:
        self.stage = stage
        self._send = send

    def __call__(self, entry: Entry) -> None:
        fields: dict[str, object] = {
            "PRIORITY": entry.priority,
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "STAGE": self.stage,
            "CODE_FILE": entry.code_file,
            "CODE_LINE": entry.code_line,
            "CODE_FUNC": entry.code_func,
        }
        fields.update(entry.fields)
        try:
            (self._send or send)(entry.message, **fields)
        except OSError:
            # journald is gone or refused the entry: stderr is the journal's
            # stream, which reads a <priority> prefix; the fields are lost,
            # the line is not.
            write_lines(entry.message, f"<{entry.priority}>")


class StderrSink:
    """``azagent[stage]: message``, ``warning: `` before warnings and errors, and
    ``(REASON=...)`` style fields when verbose."""

    def __init__(self, stage: str, verbose: bool) -> None:
        self.stage = stage
        self.verbose = verbose

    def __call__(self, entry: Entry) -> None:
        text = f"{IDENTIFIER}[{self.stage}]: "
        if entry.level >= WARNING:
            text += _LEVEL_NAMES.get(entry.level, "error") + ": "
        text += entry.message
        if self.verbose and entry.fields:
            text += " (" + " ".join(f"{k}={v}" for k, v in sorted(entry.fields.items())) + ")"
        write_lines(text)


def plain_sink(entry: Entry) -> None:
    """Before :func:`setup` (library use, the CLI): the message alone, as Python's own
    last-resort handler prints it."""
    write_lines(entry.message)


def write_lines(text: str, prefix: str = "") -> None:
    try:
        sys.stderr.write("".join(f"{prefix}{line}\n" for line in text.splitlines() or [""]))
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass  # no stderr left to complain to


class Log:
    """The one logger: printf-style messages, upper-case ``extra`` fields, one sink.

    Until :func:`setup` chooses a sink it prints warnings and errors alone to
    stderr, as the standard library does for a program that configured nothing.
    """

    def __init__(self) -> None:
        self.sink: Callable[[Entry], None] = plain_sink
        self.level = WARNING

    def debug(self, msg: str, *args: object, extra: Mapping[str, object] | None = None) -> None:
        if self.level <= DEBUG:
            self._emit(DEBUG, msg, args, extra)

    def info(self, msg: str, *args: object, extra: Mapping[str, object] | None = None) -> None:
        if self.level <= INFO:
            self._emit(INFO, msg, args, extra)

    def warning(self, msg: str, *args: object, extra: Mapping[str, object] | None = None) -> None:
        if self.level <= WARNING:
            self._emit(WARNING, msg, args, extra)

    def error(self, msg: str, *args: object, extra: Mapping[str, object] | None = None) -> None:
        self._emit(ERROR, msg, args, extra)

    def exception(self, msg: str, *args: object, extra: Mapping[str, object] | None = None) -> None:
        """An error with the traceback of the exception being handled."""
        self._emit(ERROR, msg, args, extra, with_traceback=True)

    def _emit(
        self,
        level: int,
        msg: str,
        args: tuple[object, ...],
        extra: Mapping[str, object] | None,
        with_traceback: bool = False,
    ) -> None:
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError) as e:
            text = f"{msg} {args!r} (bad log arguments: {e})"
        if with_traceback and sys.exc_info()[0] is not None:
            import traceback

            text = text.rstrip("\n") + "\n" + traceback.format_exc().rstrip("\n")
        caller = sys._getframe(2)  # the caller of debug(), info(), ...
        entry = Entry(
            level,
            redact(text),
            structured_fields(extra),
            code_file=caller.f_code.co_filename,
            code_line=caller.f_lineno,
            code_func=caller.f_code.co_name,
        )
        try:
            self.sink(entry)
        except Exception as e:  # logging must never take a stage down
            write_lines(f"azagent: cannot log ({type(e).__name__}: {e}): {entry.message}")


log = Log()


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
    """Route :data:`log` to the journal under systemd, else stderr."""
    use_journal = stderr_is_journal() if journal is None else journal
    log.sink = JournalSink(stage) if use_journal else StderrSink(stage, verbose)
    log.level = DEBUG if verbose else INFO
