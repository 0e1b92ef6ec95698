"""Extension status: what an extension reports, and what the agent uploads.

Read: an extension writes ``status/<seq>.status`` (multi-config
``status/<ext>.<seq>.status``), a JSON list of which only element [0] counts
(samples: tests/fixtures/walinuxagent/ext/sample-status*.json), and, when its
manifest asks for it, ``heartbeat.log``. :func:`parse_status_file` never
raises on what the extension wrote: a missing file is "transitioning", a bad
one is an "error" status with code 1012 and a reason, as the platform expects
to see them.

Build: :func:`status_blob` makes the aggregate status document (version 1.1)
the platform reads from the status blob; :func:`blob_requests` the direct
PUTs of that document to a block or page blob and :func:`hostgaplugin_envelope`
the HostGAPlugin's ``/status`` body wrapping one of them. No protected setting
is ever part of these (the model has no field for one) and every message goes
through :func:`azagent.redact.redact`; the SAS URL is in a request but out of
its ``repr``. Pure: no I/O.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from azagent import redact
from azagent.extensions import goalstate

TRANSITIONING = "transitioning"
WARNING = "warning"
ERROR = "error"
SUCCESS = "success"
STATUS_VALUES = (TRANSITIONING, WARNING, ERROR, SUCCESS)
TERMINAL = (ERROR, SUCCESS)

# A handler's own status in handlerAggregateStatus.
READY = "Ready"
NOT_READY = "NotReady"
UNRESPONSIVE = "Unresponsive"

# Handler error codes the platform knows (EXTENSIONS.md section 7).
CODE_SUCCESS = 0
CODE_UNKNOWN = -1
CODE_PROCESSING_ERROR = 1000
CODE_MANIFEST_DOWNLOAD = 1001
CODE_HANDLER_MANIFEST_MISSING = 1002
CODE_HANDLER_MANIFEST_INVALID = 1003
CODE_PACKAGE_DOWNLOAD = 1004
CODE_PACKAGE_EXTRACTION = 1005
CODE_INSTALL = 1007
CODE_UPDATE = 1008
CODE_ENABLE = 1009
CODE_DISABLE = 1010
CODE_TIMEOUT = 1011
CODE_STATUS_INVALID = 1012
# goalStateAggregateStatus codes.
GOAL_STATE_SUCCESS = 0
GOAL_STATE_FAILURE = -1
GOAL_STATE_UNSUPPORTED_FEATURES = 2001

# An extension's status file is reported whole up to 128 KiB; a larger one
# loses its message past 1 KiB and its sub-statuses past the 128 KiB budget
# (as WALinuxAgent does: the portal shows 1 KiB anyway). The reader takes in
# at most MAX_STATUS_READ bytes; a file over that is an error status.
MAX_STATUS_FILE = 128 * 1024
MAX_STATUS_READ = 1024 * 1024
MAX_MESSAGE = 1024
MAX_SUBSTATUS_FIELD = 10 * 1024
MAX_HEARTBEAT = 64 * 1024
TRUNCATED = " ... [truncated]"
# A heartbeat older than this means the extension stopped answering.
HEARTBEAT_STALE_SECONDS = 600

STORAGE_VERSION = "2014-02-14"
PAGE_SIZE = 512
MAX_PAGE_WRITE = 4 * 1024 * 1024
# Features the agent tells the platform it has (supportedFeatures).
CRP_FEATURES = ((goalstate.MULTI_CONFIG_FEATURE, "1.0"),)
FAST_TRACK_FEATURE = ("FastTrack", "1.0")


@dataclass(frozen=True)
class SubStatus:
    name: Optional[str]
    status: str
    code: int = 0
    message: Optional[str] = None


@dataclass(frozen=True)
class ExtensionStatus:
    """One extension's status for one sequence number."""

    name: str  # the handler name, or the extension name for multi-config
    seq_no: int
    status: str  # one of STATUS_VALUES
    code: int = CODE_SUCCESS
    message: Optional[str] = None
    operation: Optional[str] = None
    configuration_applied_time: Optional[str] = None
    substatus: tuple[SubStatus, ...] = ()


# --- reading what the extension wrote -------------------------------------------


class _Malformed(Exception):
    """The status file is JSON but not a status; turned into an error status."""


def parse_status_file(data: Optional[bytes], *, name: str, seq_no: int) -> ExtensionStatus:
    """The status an extension reported in its status file; None: there is no file yet.

    A reader need not take in more than ``MAX_STATUS_READ + 1`` bytes: a file
    that long is an error status whatever follows.
    """

    def failed(reason: str) -> ExtensionStatus:
        return ExtensionStatus(
            name,
            seq_no,
            ERROR,
            CODE_STATUS_INVALID,
            f"the status file of sequence number {seq_no} {reason}",
        )

    if data is None:
        return ExtensionStatus(
            name,
            seq_no,
            TRANSITIONING,
            CODE_SUCCESS,
            f"the extension has not written a status for sequence number {seq_no} yet",
        )
    if len(data) > MAX_STATUS_READ:
        return failed(f"is over {MAX_STATUS_READ} bytes")
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        return failed(f"is not valid UTF-8 (at byte {e.start})")
    except json.JSONDecodeError as e:
        return failed(f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})")
    except (ValueError, RecursionError):
        return failed("is not valid JSON")
    try:
        status = _status(document, name, seq_no)
    except _Malformed as e:
        return failed(f"is not a valid status: {e}")
    if len(data) > MAX_STATUS_FILE:
        status = _shrink(status)
    return status


def _status(document: Any, name: str, seq_no: int) -> ExtensionStatus:
    if not isinstance(document, list):
        raise _Malformed("the top level is not a list")
    if not document:
        return ExtensionStatus(
            name, seq_no, TRANSITIONING, CODE_SUCCESS, "the status file is empty"
        )
    first = document[0]
    inner = first.get("status") if isinstance(first, dict) else None
    if not isinstance(inner, dict):
        raise _Malformed("[0].status is missing or not an object")
    if "status" not in inner:
        raise _Malformed("[0].status.status is missing")
    value = inner["status"]
    substatus = inner.get("substatus")
    if substatus is None:  # some extensions write null
        substatus = []
    if not isinstance(substatus, list):
        raise _Malformed("[0].status.substatus is not a list")
    return ExtensionStatus(
        name=name,
        seq_no=seq_no,
        # An unknown status value is reported as an error, not guessed at.
        status=value if value in STATUS_VALUES else ERROR,
        code=_code(inner.get("code", 0), "[0].status.code"),
        message=_message(inner.get("formattedMessage"), "[0].status.formattedMessage"),
        operation=_optional_text(inner.get("operation"), "[0].status.operation"),
        configuration_applied_time=_optional_text(
            inner.get("configurationAppliedTime"), "[0].status.configurationAppliedTime"
        ),
        substatus=tuple(
            _substatus(item, f"[0].status.substatus[{index}]")
            for index, item in enumerate(substatus)
            if item is not None  # some extensions write a null entry
        ),
    )


def _substatus(item: Any, where: str) -> SubStatus:
    if not isinstance(item, dict):
        raise _Malformed(f"{where} is not an object")
    if item.get("status") not in STATUS_VALUES:
        raise _Malformed(f"{where}.status is not one of {', '.join(STATUS_VALUES)}")
    return SubStatus(
        name=_optional_text(item.get("name"), f"{where}.name"),
        status=item["status"],
        code=_code(item.get("code", 0), f"{where}.code"),
        message=_message(item.get("formattedMessage"), f"{where}.formattedMessage"),
    )


def _code(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise _Malformed(f"{where} is not a number")
    if isinstance(value, int) and abs(value) < 2**31:
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**31:
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 12:
        return int(value)
    if value is None:
        return 0
    raise _Malformed(f"{where} is not a number")


def _message(value: Any, where: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, dict) or "lang" not in value or "message" not in value:
        raise _Malformed(f"{where} lacks lang or message")
    return _optional_text(value["message"], f"{where}.message")


def _optional_text(value: Any, where: str) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    raise _Malformed(f"{where} is not a string")


def truncate(text: Optional[str], limit: int) -> Optional[str]:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + TRUNCATED


def _shrink(status: ExtensionStatus) -> ExtensionStatus:
    """A status from an oversized file, cut to what the platform takes."""
    message = truncate(status.message, MAX_MESSAGE)
    budget = len(message or "")
    kept = []
    for item in status.substatus:
        name = truncate(item.name, MAX_SUBSTATUS_FIELD)
        text = truncate(item.message, MAX_SUBSTATUS_FIELD)
        budget += len(name or "") + len(text or "")
        if budget > MAX_STATUS_FILE:
            break
        kept.append(SubStatus(name, item.status, item.code, text))
    return ExtensionStatus(
        status.name,
        status.seq_no,
        status.status,
        status.code,
        message,
        status.operation,
        status.configuration_applied_time,
        tuple(kept),
    )


@dataclass(frozen=True)
class Heartbeat:
    status: str  # becomes the handler's status: Ready, NotReady, Unresponsive
    code: int
    message: Optional[str]


def parse_heartbeat(data: Optional[bytes], age_seconds: float) -> Heartbeat:
    """heartbeat.log (``[{"heartbeat": {status, code, formattedMessage}}]``) and its age."""
    if data is None:
        return Heartbeat(NOT_READY, CODE_UNKNOWN, "the extension has written no heartbeat.log")
    if age_seconds > HEARTBEAT_STALE_SECONDS:
        return Heartbeat(
            UNRESPONSIVE,
            CODE_UNKNOWN,
            f"the extension's heartbeat is {int(age_seconds)} s old (over"
            f" {HEARTBEAT_STALE_SECONDS} s)",
        )
    malformed = Heartbeat(NOT_READY, CODE_UNKNOWN, "the extension's heartbeat.log is malformed")
    if len(data) > MAX_HEARTBEAT:
        return malformed
    try:
        document = json.loads(data.decode("utf-8-sig"))
        beat = document[0]["heartbeat"]
        status = beat["status"]
        if not isinstance(status, str) or not status or len(status) > 64:
            return malformed
        return Heartbeat(
            status,
            _code(beat.get("code", 0), "heartbeat.code"),
            _message(beat.get("formattedMessage"), "heartbeat.formattedMessage"),
        )
    except (ValueError, RecursionError, LookupError, TypeError, _Malformed):
        return malformed


# --- the aggregate status blob ---------------------------------------------------


@dataclass(frozen=True)
class HandlerStatus:
    """One entry of handlerAggregateStatus: a handler, or one extension of a multi-config one."""

    name: str
    version: str
    status: str = NOT_READY
    code: int = CODE_SUCCESS
    message: Optional[str] = None
    extension: Optional[ExtensionStatus] = None
    multi_config: bool = False  # name the extension in runtimeSettingsStatus


@dataclass(frozen=True)
class GoalStateStatus:
    """goalStateAggregateStatus: how the last extensions goal state went."""

    svd_seq_no: int
    status: str  # "Success" or "Failed"
    code: int
    message: str
    processed: datetime


@dataclass(frozen=True)
class AgentStatus:
    version: str
    computer_name: str
    os_name: str
    os_version: str
    status: str = READY
    message: str = "Guest Agent is running"


def error_report(
    handler: goalstate.Handler, *, version: str, code: int, message: str
) -> tuple[HandlerStatus, ...]:
    """Terminal error statuses for every extension of ``handler`` (or the handler alone).

    For a handler whose goal-state entry is invalid, that the configuration
    keeps from running (Extensions.Enabled=n), or whose download failed:
    the platform fails the operation at once instead of waiting for a status.
    """
    if not handler.extensions:
        return (HandlerStatus(handler.name, version, NOT_READY, code, message),)
    return tuple(
        HandlerStatus(
            handler.name,
            version,
            NOT_READY,
            code,
            message,
            ExtensionStatus(extension.name, extension.seq_no, ERROR, code, message),
            handler.is_multi_config,
        )
        for extension in handler.extensions
    )


def timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _formatted(message: Optional[str]) -> dict[str, Any]:
    return {"lang": "en-US", "message": redact.redact(message or "")}


def _extension_v1(status: ExtensionStatus, now: datetime) -> dict[str, Any]:
    inner: dict[str, Any] = {
        "name": status.name,
        "configurationAppliedTime": status.configuration_applied_time,
        "operation": status.operation,
        "status": status.status,
        "code": status.code,
        "formattedMessage": _formatted(status.message),
    }
    if status.substatus:
        inner["substatus"] = [
            {
                "name": item.name,
                "status": item.status,
                "code": item.code,
                "formattedMessage": _formatted(item.message),
            }
            for item in status.substatus
        ]
    return {"status": inner, "version": 1.0, "timestampUTC": timestamp(now)}


def _handler_v1(handler: HandlerStatus, now: datetime) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "handlerName": handler.name,
        "handlerVersion": handler.version,
        "status": handler.status,
        "code": handler.code,
        "useExactVersion": True,
    }
    if handler.message is not None:
        entry["formattedMessage"] = _formatted(handler.message)
    if handler.extension is not None:
        runtime: dict[str, Any] = {
            "settingsStatus": _extension_v1(handler.extension, now),
            "sequenceNumber": handler.extension.seq_no,
        }
        if handler.multi_config:
            runtime["extensionName"] = handler.extension.name
        entry["runtimeSettingsStatus"] = runtime
    return entry


def status_blob(
    *,
    agent: AgentStatus,
    handlers: Sequence[HandlerStatus],
    goal_state: Optional[GoalStateStatus],
    now: datetime,
    fast_track: bool = False,
) -> bytes:
    """The aggregate status document, as uploaded (compact JSON, UTF-8).

    ``fast_track`` advertises the FastTrack feature: say so only when the
    HostGAPlugin serves vmSettings.
    """
    aggregate: dict[str, Any] = {
        "guestAgentStatus": {
            "version": agent.version,
            "status": agent.status,
            "formattedMessage": _formatted(agent.message),
        },
        "handlerAggregateStatus": [_handler_v1(handler, now) for handler in handlers],
    }
    if goal_state is not None:
        aggregate["vmArtifactsAggregateStatus"] = {
            "goalStateAggregateStatus": {
                "formattedMessage": _formatted(goal_state.message),
                "timestampUTC": timestamp(goal_state.processed),
                "inSvdSeqNo": goal_state.svd_seq_no,
                "status": goal_state.status,
                "code": goal_state.code,
            }
        }
    features = list(CRP_FEATURES) + ([FAST_TRACK_FEATURE] if fast_track else [])
    document = {
        "version": "1.1",
        "timestampUTC": timestamp(now),
        "aggregateStatus": aggregate,
        "guestOSInfo": {
            "computerName": agent.computer_name,
            "osName": agent.os_name,
            "osVersion": agent.os_version,
            "version": agent.version,
        },
        "supportedFeatures": [{"Key": key, "Value": value} for key, value in features],
    }
    return json.dumps(document, separators=(",", ":")).encode()


# --- uploading it ----------------------------------------------------------------


@dataclass(frozen=True)
class BlobRequest:
    """One PUT to the status blob: directly, or wrapped for the HostGAPlugin."""

    url: str = field(repr=False)  # the SAS URL: send it, never log it
    headers: tuple[tuple[str, str], ...]
    body: Optional[bytes] = field(default=None, repr=False)  # None: an empty PUT

    @property
    def redacted_url(self) -> str:
        """The URL for a log line: without its query (the SAS token)."""
        return redact.redact(self.url.split("?", 1)[0] + ("?<redacted>" if "?" in self.url else ""))


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(moment: datetime) -> str:
    """RFC 1123, as x-ms-date wants it, independent of the locale."""
    utc = moment.astimezone(timezone.utc)
    return (
        f"{_DAYS[utc.weekday()]}, {utc.day:02d} {_MONTHS[utc.month - 1]} {utc.year:04d}"
        f" {utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} GMT"
    )


def blob_requests(
    content: bytes, *, url: str, blob_type: str, now: datetime
) -> tuple[BlobRequest, ...]:
    """The PUTs that store ``content`` in the status blob at ``url``.

    A block blob is one PUT. A page blob is created at the content's length
    rounded up to 512 bytes (padded with spaces, so the document stays valid
    JSON), then written in pages of at most 4 MiB (``comp=page``).
    """
    date = http_date(now)
    if blob_type == goalstate.BLOCK_BLOB:
        return (
            BlobRequest(
                url,
                (
                    ("Content-Length", str(len(content))),
                    ("x-ms-blob-type", goalstate.BLOCK_BLOB),
                    ("x-ms-date", date),
                    ("x-ms-version", STORAGE_VERSION),
                ),
                content,
            ),
        )
    if blob_type != goalstate.PAGE_BLOB:
        raise ValueError(f"unknown blob type {blob_type!r}")
    size = -(-len(content) // PAGE_SIZE) * PAGE_SIZE
    padded = content.ljust(size, b" ")
    requests = [
        BlobRequest(
            url,
            (
                ("Content-Length", "0"),
                ("x-ms-blob-content-length", str(size)),
                ("x-ms-blob-type", goalstate.PAGE_BLOB),
                ("x-ms-date", date),
                ("x-ms-version", STORAGE_VERSION),
            ),
        )
    ]
    page_url = url + ("&" if "?" in url else "?") + "comp=page"
    for start in range(0, size, MAX_PAGE_WRITE):
        end = min(size, start + MAX_PAGE_WRITE)
        requests.append(
            BlobRequest(
                page_url,
                (
                    ("Content-Length", str(end - start)),
                    ("x-ms-date", date),
                    ("x-ms-range", f"bytes={start}-{end - 1}"),
                    ("x-ms-page-write", "update"),
                    ("x-ms-version", STORAGE_VERSION),
                ),
                padded[start:end],
            )
        )
    return tuple(requests)


def hostgaplugin_envelope(request: BlobRequest) -> bytes:
    """The body of ``PUT /status`` on the HostGAPlugin, which performs ``request`` for us."""
    document: dict[str, Any] = {
        "requestUri": request.url,
        "headers": [{"headerName": name, "headerValue": value} for name, value in request.headers],
    }
    if request.body is not None:
        document["content"] = base64.b64encode(request.body).decode("ascii")
    return json.dumps(document, sort_keys=True).encode()
