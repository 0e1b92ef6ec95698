"""The extensions' telemetry event folders, kept bounded.

HandlerEnvironment.json names each handler's ``eventsFolder``
(``/var/log/azure/<Name>/events``): extensions drop telemetry events there,
one ``<number>.json`` file at a time, for the guest agent to collect.
WALinuxAgent sends them as telemetry and deletes them (a file over 4 MB
unread). azagent sends no telemetry, so nothing else empties the folder:
:func:`prune`, run by the service on every pass for each handler it knows,
keeps it bounded, newest first:

* a file older than :data:`MAX_AGE` (24 hours) is removed;
* a file larger than :data:`MAX_FILE` (4 MiB, WALinuxAgent's bound) is removed;
* of the rest, the newest :data:`MAX_FILES` (300) within :data:`MAX_TOTAL`
  (16 MiB together) stay; older ones are removed.

Only regular files named as event files are looked at (digits and
``.json``, the name WALinuxAgent collects); anything else (an extension's
temporary file still being written, a directory, a link, a hostile or
unprintable name) is left alone and never named in a log. Nothing is
followed and nothing is read: below the configured log root the handler's
folder and ``events`` are opened one component at a time with
``O_NOFOLLOW``, entries are looked at with ``lstat`` and removed relative to
the folder's descriptor, so a link an extension puts anywhere on the way
leads nowhere. System floor: removes files.
"""

from __future__ import annotations

import os
import re
import stat
from contextlib import suppress
from pathlib import Path
from typing import Optional

from azagent.extensions import environment, naming
from azagent.journal import log

MAX_AGE = 24 * 3600.0
MAX_FILE = 4 * 1024 * 1024
MAX_FILES = 300
MAX_TOTAL = 16 * 1024 * 1024
# Event files looked at in one pass (a folder with more is bounded over several passes).
MAX_SCAN = 20_000
EVENT_NAME = re.compile(r"[0-9]{1,32}\.json", re.IGNORECASE)
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def prune(log_root: Path, handler: str, *, now: float) -> int:
    """Remove what is past the bounds from ``handler``'s events folder; how many were removed.

    ``now`` is the wall clock (file ages are modification times). A missing
    folder, a link on the way, a handler name that names no folder: nothing
    is done. Never raises for the file system.
    """
    try:
        name = naming.check_handler_name(handler)
    except naming.NameRefused:
        return 0
    folder = _open(log_root, (name, environment.EVENTS_DIR))
    if folder is None:
        return 0
    try:
        doomed = _doomed(_event_files(folder), now)
        removed, failure = 0, ""
        for entry in doomed:
            try:
                os.unlink(entry, dir_fd=folder)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                failure = e.strerror or type(e).__name__
        if failure:
            log.debug("cannot remove event files of %s: %s", name, failure)
        if removed:
            log.debug("removed %d telemetry event files of %s", removed, name)
        return removed
    finally:
        os.close(folder)


def _open(root: Path, parts: tuple[str, ...]) -> Optional[int]:
    """``root/parts...`` as a directory descriptor, no link followed below ``root``."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    for part in parts:
        try:
            inner = os.open(part, _DIRECTORY, dir_fd=fd)
        except OSError:
            inner = None
        os.close(fd)
        if inner is None:
            return None
        fd = inner
    return fd


def _event_files(folder: int) -> list[tuple[float, str, int]]:
    """(modification time, name, size) of the regular event files in ``folder``."""
    found: list[tuple[float, str, int]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not EVENT_NAME.fullmatch(entry.name):
                    continue
                with suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode):
                        found.append((info.st_mtime, entry.name, info.st_size))
                        if len(found) >= MAX_SCAN:
                            break
    except OSError as e:
        log.debug("cannot list an events folder: %s", e.strerror)
    return found


def _doomed(files: list[tuple[float, str, int]], now: float) -> list[str]:
    """The names past the bounds (see the module docstring), given ``files`` newest or not."""
    doomed: list[str] = []
    kept = total = 0
    for mtime, name, size in sorted(files, reverse=True):
        if (
            now - mtime > MAX_AGE
            or size > MAX_FILE
            or kept >= MAX_FILES
            or total + size > MAX_TOTAL
        ):
            doomed.append(name)
        else:
            kept += 1
            total += size
    return doomed
