"""What the platform is told about each handler of the goal state.

:func:`handler_statuses` builds the ``handlerAggregateStatus`` entries from
what the service remembers (``extensions.state``: its own errors, the last
operation) and what each extension wrote in its directory: the status file
of the goal state's sequence number (:func:`read_status`, bounded) and, when
HandlerManifest.json asks for it, ``heartbeat.log``. An extension that waits
for lower dependency levels (``extensions.ordering``) is ``transitioning``;
with ``Extensions.Enabled=n`` every extension gets a terminal error naming
the setting. :func:`summary` is the line ``systemctl status`` shows.
Split off ``extensions.service``, which uploads what this builds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from azagent.errors import AzagentError
from azagent.extensions import environment, goalstate, naming, ordering, status
from azagent.extensions import handler as manifests
from azagent.extensions import state as saved
from azagent.extensions.goalstate import Extension, ExtensionsGoalState, Handler
from azagent.fsutil import read_bytes_limited

DISABLED_MESSAGE = (
    "Extensions.Enabled=n in waagent.conf: this VM does not run extensions"
    " (set Extensions.Enabled=y to run them)"
)


def extension_key(handler: Handler, extension: Optional[Extension]) -> str:
    """The name of an extension's record: the extension's in multi-config, else the handler's."""
    return extension.name if extension is not None and handler.is_multi_config else handler.name


def handler_dir(lib_dir: Path, name: str, version: str) -> Path:
    return lib_dir / naming.handler_dir_name(name, version)


def handler_statuses(
    goal: Optional[ExtensionsGoalState],
    state: saved.ServiceState,
    lib_dir: Path,
    *,
    enabled: bool,
    waiting: Optional[ordering.Waiting] = None,
) -> list[status.HandlerStatus]:
    """One entry per extension of the goal state (none for what is being uninstalled)."""
    if goal is None:
        return []
    result: list[status.HandlerStatus] = []
    for handler in goal.handlers:
        if handler.state == goalstate.UNINSTALL:
            continue
        record = state.handlers.get(handler.name)
        version = (record.version if record else None) or handler.version
        if not enabled:
            result.extend(
                status.error_report(
                    handler,
                    version=version,
                    code=status.CODE_PROCESSING_ERROR,
                    message=DISABLED_MESSAGE,
                )
            )
            continue
        error = handler.error or (record.error if record else None)
        if error is not None or (record is None and waiting is None):
            result.extend(
                status.error_report(
                    handler,
                    version=version,
                    code=status.CODE_PROCESSING_ERROR,
                    message=error or "not processed yet",
                )
            )
            continue
        for extension in handler.extensions or (None,):
            if waiting is not None and waiting.holds(handler, extension):
                result.append(
                    ordering.waiting_report(
                        handler, extension, version=version, message=waiting.message()
                    )
                )
            elif record is not None:
                result.append(_extension_status(lib_dir, handler, extension, record, version))
    return result


def _extension_status(
    lib_dir: Path,
    handler: Handler,
    extension: Optional[Extension],
    record: saved.HandlerRecord,
    version: str,
) -> status.HandlerStatus:
    key = extension_key(handler, extension)
    entry = record.extension(key)
    seq_no = extension.seq_no if extension is not None else environment.DEFAULT_SEQ_NO
    if entry.status == status.ERROR and entry.code >= status.CODE_PROCESSING_ERROR:
        found = status.ExtensionStatus(key, seq_no, status.ERROR, entry.code, entry.message)
    else:
        found = read_status(lib_dir, handler, extension, record, seq_no)
        entry.status, entry.code, entry.message = (
            found.status,
            found.code,
            found.message,
        )
    ready = entry.state == saved.ENABLED and found.status != status.ERROR
    state, code, message = status.READY if ready else status.NOT_READY, 0, None
    if found.status == status.ERROR:
        code, message = (
            found.code,
            status.truncate(found.message, status.MAX_MESSAGE),
        )
    beat = _heartbeat(lib_dir, handler, record) if ready else None
    if beat is not None:
        state, code, message = beat.status, beat.code, beat.message
    return status.HandlerStatus(
        handler.name, version, state, code, message, found, handler.is_multi_config
    )


def _heartbeat(
    lib_dir: Path, handler: Handler, record: saved.HandlerRecord
) -> Optional[status.Heartbeat]:
    """heartbeat.log, when HandlerManifest.json asks for it (reportHeartbeat)."""
    assert record.version is not None
    directory = handler_dir(lib_dir, handler.name, record.version)
    try:
        data = read_bytes_limited(
            directory / "HandlerManifest.json", manifests.MAX_HANDLER_MANIFEST
        )
        if not manifests.parse_handler_manifest(data).report_heartbeat:
            return None
    except (OSError, ValueError, manifests.HandlerManifestError):
        return None
    path = directory / environment.HEARTBEAT
    beat: Optional[bytes]
    try:
        age = time.time() - path.stat().st_mtime
        beat = read_bytes_limited(path, status.MAX_HEARTBEAT + 1)
    except FileNotFoundError:
        age, beat = 0.0, None
    except (OSError, ValueError):
        age, beat = 0.0, b""
    return status.parse_heartbeat(beat, age)


def read_status(
    lib_dir: Path,
    handler: Handler,
    extension: Optional[Extension],
    record: saved.HandlerRecord,
    seq_no: int,
) -> status.ExtensionStatus:
    """The status file of ``seq_no`` in the installed version's directory, bounded."""
    assert record.version is not None
    key = extension_key(handler, extension)
    directory = handler_dir(lib_dir, handler.name, record.version)
    relative = environment.status_file(extension, multi_config=handler.is_multi_config)
    try:
        path = Path(environment.inside(str(directory), relative))
        with open(path, "rb") as f:
            data: Optional[bytes] = f.read(status.MAX_STATUS_READ + 1)
    except FileNotFoundError:
        data = None
    except (OSError, AzagentError) as e:
        return status.ExtensionStatus(key, seq_no, status.ERROR, status.CODE_STATUS_INVALID, str(e))
    return status.parse_status_file(data, name=key, seq_no=seq_no)


def summary(goal: Optional[ExtensionsGoalState], handlers: list[status.HandlerStatus]) -> str:
    """ "incarnation 7: 2 handlers enabled, 1 handler transitioning" (sd_notify STATUS=)."""
    if goal is None:
        return "no extensions goal state yet"
    name = (
        f"incarnation {goal.incarnation}" if goal.incarnation is not None else f"etag {goal.etag}"
    )
    counts: dict[str, int] = {}
    for entry in handlers:
        value = entry.extension.status if entry.extension is not None else status.ERROR
        word = "enabled" if value in (status.SUCCESS, status.WARNING) else value
        counts[word] = counts.get(word, 0) + 1
    parts = [f"{n} {'handler' if n == 1 else 'handlers'} {w}" for w, n in sorted(counts.items())]
    return f"{name}: {', '.join(parts) or 'no handlers'}"
