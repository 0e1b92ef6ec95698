"""The extension handler's memory across restarts, and the HandlerState files extensions read.

One JSON document, ``<Lib.Dir>/azagent-extensions.json`` (root only, written
atomically): the extensions goal state acted on last (its id, incarnation and
ETag), the vmSettings ETag, when status was last uploaded, and per handler
(per extension for a multi-config handler) the installed version, the
HandlerState (NotInstalled, Installed, Enabled, Disabled), the last sequence
number handled, the last operation with its exit status, duration and unit,
and the status reported. ``azagent extensions`` shows it without touching the
network.

A file that cannot be read as such a document is "unknown": a warning, and
the service starts from nothing (it enables every extension again, which the
contract makes safe), never a crash.

Besides, every handler directory gets ``config/HandlerState`` (multi-config:
``config/<ext>.HandlerState``) holding the state word, as extensions written
for WALinuxAgent expect.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from azagent.extensions import environment
from azagent.extensions.goalstate import Extension
from azagent.fsutil import atomic_write, ensure_dir, read_bytes_limited
from azagent.journal import log

STATE_FILE = "azagent-extensions.json"
FORMAT = 1
MAX_STATE_FILE = 4 * 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700

NOT_INSTALLED = "NotInstalled"
INSTALLED = "Installed"
ENABLED = "Enabled"
DISABLED = "Disabled"
HANDLER_STATES = (NOT_INSTALLED, INSTALLED, ENABLED, DISABLED)


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class OperationRecord:
    """How the last operation of an extension ended."""

    operation: str
    exit_status: Optional[int]
    timed_out: bool = False
    duration: float = 0.0
    unit: Optional[str] = None
    reason: str = ""
    ended: str = ""


@dataclass
class ExtensionRecord:
    """One extension (the handler itself for single-config)."""

    name: str
    state: str = NOT_INSTALLED
    seq_no: Optional[int] = None  # the last sequence number handled
    status: Optional[str] = None  # transitioning, warning, error, success
    code: int = 0
    message: Optional[str] = None
    last: Optional[OperationRecord] = None


@dataclass
class HandlerRecord:
    name: str
    version: Optional[str] = None  # installed; None: nothing installed
    state: str = NOT_INSTALLED
    multi_config: bool = False
    error: Optional[str] = None  # the handler's own problem (download, manifest)
    extensions: dict[str, ExtensionRecord] = field(default_factory=dict)

    def extension(self, name: str) -> ExtensionRecord:
        found = self.extensions.get(name)
        if found is None:
            found = self.extensions[name] = ExtensionRecord(name)
        return found


@dataclass
class ServiceState:
    goal_state_id: Optional[str] = None  # the extensions goal state acted on
    incarnation: Optional[int] = None
    etag: Optional[str] = None
    channel: Optional[str] = None
    source: Optional[str] = None
    acted: Optional[str] = None  # when it was acted on
    last_upload: Optional[str] = None  # when status was last uploaded
    last_upload_via: Optional[str] = None  # hostgaplugin or direct
    handlers: dict[str, HandlerRecord] = field(default_factory=dict)
    unknown: bool = False  # the file was unreadable: nothing is known

    def handler(self, name: str) -> HandlerRecord:
        found = self.handlers.get(name)
        if found is None:
            found = self.handlers[name] = HandlerRecord(name)
        return found

    def to_json(self) -> bytes:
        document = asdict(self)
        document.pop("unknown")
        document["format"] = FORMAT
        return json.dumps(document, indent=1, sort_keys=True).encode()


def state_path(lib_dir: Path) -> Path:
    return lib_dir / STATE_FILE


def _operation(value: Any) -> Optional[OperationRecord]:
    if value is None:
        return None
    return OperationRecord(
        operation=str(value["operation"]),
        exit_status=_optional_int(value.get("exit_status")),
        timed_out=bool(value.get("timed_out", False)),
        duration=float(value.get("duration", 0.0)),
        unit=_optional_str(value.get("unit")),
        reason=str(value.get("reason", "")),
        ended=str(value.get("ended", "")),
    )


def _optional_int(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not an integer")
    return value


def _optional_str(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _state_word(value: Any) -> str:
    if value not in HANDLER_STATES:
        raise ValueError(f"unknown handler state {value!r}")
    return str(value)


def _extension(value: Any) -> ExtensionRecord:
    return ExtensionRecord(
        name=str(value["name"]),
        state=_state_word(value.get("state", NOT_INSTALLED)),
        seq_no=_optional_int(value.get("seq_no")),
        status=_optional_str(value.get("status")),
        code=int(value.get("code", 0)),
        message=_optional_str(value.get("message")),
        last=_operation(value.get("last")),
    )


def _handler(value: Any) -> HandlerRecord:
    extensions = value.get("extensions") or {}
    if not isinstance(extensions, dict):
        raise ValueError("extensions is not an object")
    return HandlerRecord(
        name=str(value["name"]),
        version=_optional_str(value.get("version")),
        state=_state_word(value.get("state", NOT_INSTALLED)),
        multi_config=bool(value.get("multi_config", False)),
        error=_optional_str(value.get("error")),
        extensions={str(k): _extension(v) for k, v in extensions.items()},
    )


def parse(data: bytes) -> ServiceState:
    """The state in ``data``; ValueError (or a KeyError, TypeError) when it is not one."""
    document = json.loads(data.decode("utf-8"))
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError("not an azagent extensions state document")
    handlers = document.get("handlers") or {}
    if not isinstance(handlers, dict):
        raise ValueError("handlers is not an object")
    return ServiceState(
        goal_state_id=_optional_str(document.get("goal_state_id")),
        incarnation=_optional_int(document.get("incarnation")),
        etag=_optional_str(document.get("etag")),
        channel=_optional_str(document.get("channel")),
        source=_optional_str(document.get("source")),
        acted=_optional_str(document.get("acted")),
        last_upload=_optional_str(document.get("last_upload")),
        last_upload_via=_optional_str(document.get("last_upload_via")),
        handlers={str(k): _handler(v) for k, v in handlers.items()},
    )


def load(lib_dir: Path) -> ServiceState:
    """The saved state; empty when there is none, empty and ``unknown`` when unreadable."""
    path = state_path(lib_dir)
    try:
        data = read_bytes_limited(path, MAX_STATE_FILE)
    except FileNotFoundError:
        return ServiceState()
    except (OSError, ValueError) as e:
        log.warning("cannot read %s (%s): the extension state is unknown", path, e)
        return ServiceState(unknown=True)
    try:
        return parse(data)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        log.warning(
            "%s is malformed (%s): the extension state is unknown",
            path,
            type(e).__name__,
        )
        return ServiceState(unknown=True)


def save(lib_dir: Path, state: ServiceState, data: Optional[bytes] = None) -> None:
    """Write ``state`` (``data``: its :meth:`ServiceState.to_json`, when already made)."""
    ensure_dir(lib_dir, mode=DIR_MODE)
    atomic_write(state_path(lib_dir), state.to_json() if data is None else data, mode=FILE_MODE)


def write_handler_state(
    handler_dir: Path, extension: Optional[Extension], *, multi_config: bool, value: str
) -> None:
    """``config/HandlerState`` (or ``config/<ext>.HandlerState``) in the handler directory."""
    if value not in HANDLER_STATES:
        raise ValueError(f"unknown handler state {value!r}")
    relative = environment.handler_state_file(extension, multi_config=multi_config)
    path = Path(environment.inside(str(handler_dir), relative))
    ensure_dir(path.parent, mode=DIR_MODE)
    atomic_write(path, value.encode(), mode=0o644)
