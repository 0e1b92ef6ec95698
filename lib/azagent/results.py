"""What a stage run left behind: its state, reason and changes, and its exit status.

The runner records every run in ``/run/azagent/stages/<stage>.json``; the
status command, the failure and Ready reports, and stages that run other
stages read it back here, without depending on the runner. The file format
is read by people and by the VM test harness, so it is kept as it is::

    {"stage": "create-user", "state": "failed", "start": "2024-...+00:00",
     "end": "2024-...+00:00", "duration_ms": 12, "reason": "...",
     "changes": ["..."], "exit_status": 1}

A file that is not such a document (not JSON, not an object, a field of the
wrong type, too large, not a regular file) reads as no result at all.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from azagent.redact import redact

# json and datetime are imported where they are used: a stage's dry run
# neither writes nor reads a result, and every stage is a fresh process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Final, Optional

# Exit statuses of a stage (and of the azagent command).
EXIT_OK = 0  # done, nothing to do, or skipped (the stage does not apply)
EXIT_FAILED = 1  # expected failure; the reason is logged and recorded
EXIT_USAGE = 2  # usage error
EXIT_UNEXPECTED = 3  # unexpected error; the traceback goes to the journal

STATE_DONE = "done"
STATE_NOTHING = "nothing-to-do"
STATE_SKIPPED = "skipped"
STATE_FAILED = "failed"
STATES = (STATE_DONE, STATE_NOTHING, STATE_SKIPPED, STATE_FAILED)

RESULTS_DIR = "run/azagent/stages"
# A real result is well under a few kB; anything far larger is not one.
MAX_RESULT_BYTES = 1024 * 1024


class Result:
    """One run of a stage. Fields a file leaves out read as None, "" or ()."""

    __slots__ = (
        "changes",
        "duration_ms",
        "end",
        "exit_status",
        "reason",
        "stage",
        "start",
        "state",
    )

    def __init__(
        self,
        stage: str,
        state: str,
        *,
        start: Optional[datetime] = None,
        end: Optional[datetime] = None,
        duration_ms: Optional[int] = None,
        reason: str = "",
        changes: tuple[str, ...] = (),
        exit_status: Optional[int] = None,
    ) -> None:
        self.stage: Final = stage
        self.state: Final = state
        self.start: Final = start
        self.end: Final = end
        self.duration_ms: Final = duration_ms
        self.reason: Final = reason
        self.changes: Final = changes
        self.exit_status: Final = exit_status

    def _fields(self) -> tuple[object, ...]:
        return (
            self.stage,
            self.state,
            self.start,
            self.end,
            self.duration_ms,
            self.reason,
            self.changes,
            self.exit_status,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    @classmethod
    def of_run(
        cls,
        stage: str,
        state: str,
        start: float,
        end: float,
        *,
        reason: str = "",
        changes: tuple[str, ...] = (),
        exit_status: int = EXIT_OK,
    ) -> Result:
        """The result of a run between ``start`` and ``end`` (seconds since the epoch)."""
        from datetime import datetime, timezone

        return cls(
            stage=stage,
            state=state,
            start=datetime.fromtimestamp(start, timezone.utc),
            end=datetime.fromtimestamp(end, timezone.utc),
            duration_ms=round((end - start) * 1000),
            reason=reason,
            changes=changes,
            exit_status=exit_status,
        )

    @property
    def failed(self) -> bool:
        return self.state == STATE_FAILED

    @property
    def ended(self) -> str:
        """When the run ended, as recorded (ISO 8601, milliseconds), or ""."""
        return _iso(self.end)

    def to_json(self) -> bytes:
        """The recorded document; reason and changes redacted."""
        import json

        document = {
            "stage": self.stage,
            "state": self.state,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "duration_ms": self.duration_ms,
            "reason": redact(self.reason),
            "changes": [redact(change) for change in self.changes],
            "exit_status": self.exit_status,
        }
        return (json.dumps(document, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Optional[Result]:
        """The result ``data`` records, or None when it is not a result document."""
        import json

        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict):
            return None
        try:
            return cls(
                stage=_text(document, "stage", required=True),
                state=_state(document),
                start=_time(document, "start"),
                end=_time(document, "end"),
                duration_ms=_integer(document, "duration_ms"),
                reason=_text(document, "reason"),
                changes=_texts(document, "changes"),
                exit_status=_integer(document, "exit_status"),
            )
        except _Malformed:
            return None


class _Malformed(Exception):
    """A field of a result document is not what the runner writes."""


def _iso(moment: Optional[datetime]) -> str:
    return "" if moment is None else moment.isoformat(timespec="milliseconds")


def _text(document: dict[str, object], key: str, *, required: bool = False) -> str:
    value = document.get(key, None if required else "")
    if not isinstance(value, str):
        raise _Malformed(key)
    return value


def _state(document: dict[str, object]) -> str:
    value = _text(document, "state", required=True)
    if value not in STATES:
        raise _Malformed("state")
    return value


def _texts(document: dict[str, object], key: str) -> tuple[str, ...]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Malformed(key)
    return tuple(value)


def _integer(document: dict[str, object], key: str) -> Optional[int]:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(key)
    return value


def _time(document: dict[str, object], key: str) -> Optional[datetime]:
    """An ISO 8601 time (UTC when it names no offset); absent or "" is None."""
    from datetime import datetime, timezone

    value = document.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise _Malformed(key)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Malformed(key) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def result_path(root: Path, stage: str) -> Path:
    return root / RESULTS_DIR / f"{stage}.json"


def read_result(root: Path, stage: str) -> Optional[Result]:
    """The last recorded result of ``stage``, or None if it never ran (or is unreadable).

    A file recording another stage, or one that is not a regular file (a
    FIFO would block the reader), is not this stage's result.
    """
    try:
        fd = os.open(result_path(root, stage), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_RESULT_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_RESULT_BYTES:
        return None
    result = Result.from_json(data)
    if result is None or result.stage != stage:
        return None
    return result
