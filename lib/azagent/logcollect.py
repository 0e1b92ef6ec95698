"""``azagent collect-logs``: a zip of what support needs, and nothing secret.

``collect_logs`` writes a zip, readable by root only from the moment it
exists, of an explicit allow-list: the journal of the azure-* units
(capped), the extension handler's own journal (capped apart), the
extensions' logs under ``Extension.LogDir`` (``/var/log/azure/<Name>/``:
``CommandExecution*.log``, the commands' output and the handlers' ``*.log``
files, each and all together capped), the stage results, what the CLI
passes (status, configuration), ``/etc/os-release`` and a few commands'
output. Nothing is read from ``Lib.Dir``, so certificates, private keys,
customData, OVF copies and the extensions' settings cannot end up in it;
every text goes through :func:`azagent.redact.redact` on its way in.

The extension logs are the extensions' own, so their names are not trusted:
no symbolic link is followed (every directory and file is opened relative
to its parent with ``O_NOFOLLOW``), only regular files are opened, and a
name becomes an archive name with every byte outside ``[A-Za-z0-9._+@-]``
written as ``%XX`` (no control character, '/', '\\' or '..' reaches the zip,
a terminal or README.txt), cut with a digest when it is long.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from azagent import system
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.fsutil import atomic_write, ensure_dir
from azagent.redact import PLACEHOLDER, redact

LOG_ARCHIVE = "logcollector/logs.zip"  # under Lib.Dir, as waagent's log collector
JOURNAL_CAP = 8 * 1024 * 1024  # bytes of journal text kept (the most recent)
_JOURNAL_LINES = 100_000
_FILE_CAP = 1024 * 1024
_COMMAND_TIMEOUT = 60.0
# The extension handler's journal: its service, every operation's transient
# unit, and the slices those run in (a slice matches what runs inside it).
EXTENSION_UNITS = ("azure-extensions.service", "azure-ext-*", "azure-vmextensions*.slice")
EXTENSION_JOURNAL_CAP = 4 * 1024 * 1024
# The extensions' log files: the newest part of each, a bound on all of them
# together, and on how many are looked at.
EXTENSION_LOG_CAP = 1024 * 1024
EXTENSION_LOGS_CAP = 16 * 1024 * 1024
_MAX_HANDLER_DIRS = 100
_MAX_LOGS_PER_HANDLER = 40
_MAX_LOG_NAMES = 1000  # log files of one handler looked at (the newest 40 are kept)
_COMMAND_LOG = re.compile(r"CommandExecution.*\.log", re.DOTALL)
# What of a handler's log folder is collected: logs (rotated ones too, not
# compressed ones) and the stdout/stderr files the executor writes.
_EXTENSION_LOG = re.compile(r".+\.(?:log(?:\.[0-9]{1,4})?|stdout|stderr)", re.DOTALL)
_SAFE_NAME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+@-")
_MAX_NAME = 120
_STAGE_RESULT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.json")
# Never collected even if one turned up among the stage results.
_NEVER = ("provisioning.json", "customdata", "ovf-env", ".prv", ".key", ".pem", ".crt", ".p12")
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/@:]+:[^\s/@]+@", re.IGNORECASE)

_SYSTEM_COMMANDS: tuple[tuple[str, list[str]], ...] = (
    ("system/uname.txt", ["uname", "-a"]),
    ("system/ip-addr.txt", ["ip", "addr", "show"]),
    ("system/lsblk.txt", ["lsblk", "-o", "NAME,MAJ:MIN,SIZE,TYPE,FSTYPE,MOUNTPOINT,MODEL"]),
    (
        "system/systemctl-status.txt",
        ["systemctl", "status", "--all", "--full", "--no-pager", "azure-*"],
    ),
)


@dataclass
class Archive:
    """What went into the zip and what did not, with why."""

    path: Path
    size: int = 0
    entries: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def clean(text: str) -> str:
    """Text fit for the archive: redacted, and without credentials in URLs."""
    return redact(_USERINFO.sub(lambda m: m.group(1) + PLACEHOLDER + "@", text))


def _read_regular(path: Path, limit: int) -> str:
    """A regular file's text, never through a symbolic link, at most ``limit`` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    text = data[:limit].decode("utf-8", errors="replace")
    if len(data) > limit:
        text += f"\n[truncated at {limit} bytes]\n"
    return text


def _journal(
    ctx: Context,
    archive: Archive,
    units: tuple[str, ...] = ("azure-*",),
    cap: int = JOURNAL_CAP,
    what: str = "journal",
) -> Optional[str]:
    """The newest ``cap`` bytes of the journal of ``units`` (patterns), or None and a note."""
    command = ["journalctl"]
    if not ctx.live:
        command.append(f"--root={ctx.root}")
    for unit in units:
        command += ["-u", unit]
    command += ["-o", "short-precise", "--no-pager", "-n", str(_JOURNAL_LINES)]
    try:
        done = system.run(command, check=False, timeout=_COMMAND_TIMEOUT, what="read the journal")
    except StageFailed as e:
        archive.notes.append(f"{what} not collected: {e.reason}")
        return None
    # No journal: journalctl exits with 0 or 1, depending on the units asked for.
    if "No journal files" in done.stderr:
        archive.notes.append(f"{what} not collected: journalctl found no journal")
        return None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        archive.notes.append(
            f"{what} not collected: journalctl exited with status {done.returncode}: " + clean(last)
        )
        return None
    text = done.stdout
    data = text.encode("utf-8", errors="replace")
    if len(data) > cap:
        # Keep the most recent part, from a line start.
        tail = _from_line_start(data[-cap:])
        dropped = len(data) - len(tail)
        archive.notes.append(f"{what} truncated: the oldest {dropped} bytes were left out")
        text = f"[the oldest {dropped} bytes were left out]\n" + tail.decode(
            "utf-8", errors="replace"
        )
    return text


def _from_line_start(tail: bytes) -> bytes:
    """``tail`` (the end of a text) from its first full line on, when it has one."""
    newline = tail.find(b"\n")
    return tail[newline + 1 :] if newline != -1 else tail


def archive_name(name: str) -> str:
    """One path component of an archive name from an untrusted file name.

    Bytes outside ``[A-Za-z0-9._+@-]`` become ``%XX`` (so two names stay
    apart), a leading '.' too (no '..', no hidden entry); a long result is
    cut and ends in a digest of the whole name.
    """
    raw = os.fsencode(name)
    out = "".join(
        chr(byte) if byte in _SAFE_NAME_BYTES and not (i == 0 and byte == 0x2E) else f"%{byte:02X}"
        for i, byte in enumerate(raw)
    )
    if len(out) <= _MAX_NAME:
        return out
    digest = hashlib.sha256(raw).hexdigest()[:16]
    cut = out[: _MAX_NAME - 17]
    partial = cut.rfind("%", len(cut) - 2)
    return f"{cut[:partial] if partial != -1 else cut}_{digest}"


def _read_tail(dir_fd: int, name: str, limit: int) -> tuple[str, int]:
    """The newest ``limit`` bytes of regular file ``name`` in ``dir_fd``, and its size.

    Never through a symbolic link and never opening anything but a regular
    file (a FIFO or device is not even opened).
    """
    if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        size = info.st_size
        start = max(0, size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        chunks: list[bytes] = []
        wanted = min(size, limit)
        while wanted > 0:
            chunk = os.read(fd, min(wanted, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if start > 0:
        data = _from_line_start(data)
        dropped = size - len(data)
        return f"[the oldest {dropped} bytes were left out]\n" + data.decode(
            "utf-8", errors="replace"
        ), size
    return data.decode("utf-8", errors="replace"), size


def _open_directory(name: str, dir_fd: Optional[int] = None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _extension_logs(ctx: Context, archive: Archive) -> dict[str, str]:
    """``<Extension.LogDir>/<Name>/``'s logs, the newest first within the bound."""
    setting = ctx.config.get_str("Extension.LogDir") or "/var/log/azure"
    shown = clean(setting)
    log_root = ctx.path(setting)
    if _within(log_root, ctx.lib_dir) or _within(ctx.lib_dir, log_root):
        archive.notes.append(
            f"extension logs not collected: Extension.LogDir {shown} overlaps Lib.Dir"
        )
        return {}
    try:
        root_fd = _open_directory(str(log_root))
    except OSError as e:
        why = (
            "a symbolic link"
            if e.errno in (errno.ELOOP, errno.ENOTDIR) and log_root.is_symlink()
            else e.strerror or str(e)
        )
        archive.notes.append(f"no extension logs in {shown}: {why}")
        return {}
    candidates: list[tuple[int, float, str, str, str]] = []  # priority, -mtime, dir, file, entry
    handler_fds: dict[str, int] = {}
    try:
        handlers = sorted(os.listdir(root_fd))
        if len(handlers) > _MAX_HANDLER_DIRS:
            archive.notes.append(
                f"{shown}: {len(handlers)} entries, only the first {_MAX_HANDLER_DIRS} looked at"
            )
            handlers = handlers[:_MAX_HANDLER_DIRS]
        for handler in handlers:
            where = f"{shown}/{archive_name(handler)}"
            try:
                mode = os.stat(handler, dir_fd=root_fd, follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    archive.notes.append(f"left out {where}: a symbolic link")
                    continue
                if not stat.S_ISDIR(mode):
                    continue  # a file of its own: not a handler's folder
                handler_fd = _open_directory(handler, root_fd)
            except OSError as e:
                archive.notes.append(f"left out {where}: {e.strerror or e}")
                continue
            handler_fds[handler] = handler_fd
            try:
                names = sorted(os.listdir(handler_fd))
            except OSError as e:
                archive.notes.append(f"left out {where}: {e.strerror or e}")
                continue
            logs = [n for n in names if _EXTENSION_LOG.fullmatch(n)]
            others = len(names) - len(logs)
            if len(logs) > _MAX_LOG_NAMES:
                archive.notes.append(
                    f"{where}: {len(logs)} log files, only the first {_MAX_LOG_NAMES} looked at"
                )
                logs = logs[:_MAX_LOG_NAMES]
            if others:
                archive.notes.append(
                    f"left out {others} other entr{'y' if others == 1 else 'ies'} of {where}"
                    " (not a log file)"
                )
            found: list[tuple[int, float, str, str, str]] = []
            for name in logs:
                try:
                    info = os.stat(name, dir_fd=handler_fd, follow_symlinks=False)
                except OSError:
                    continue
                entry = f"extensions/{archive_name(handler)}/{archive_name(name)}"
                if not stat.S_ISREG(info.st_mode):
                    kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
                    archive.notes.append(f"left out {entry}: {kind}")
                    continue
                priority = 0 if _COMMAND_LOG.fullmatch(name) else 1
                found.append((priority, -info.st_mtime, handler, name, entry))
            found.sort()
            if len(found) > _MAX_LOGS_PER_HANDLER:
                archive.notes.append(
                    f"{where}: {len(found)} log files, the {_MAX_LOGS_PER_HANDLER} newest collected"
                )
            candidates += found[:_MAX_LOGS_PER_HANDLER]
        # CommandExecution logs first, then the newest: what the bound keeps.
        candidates.sort()
        texts: dict[str, str] = {}
        left = EXTENSION_LOGS_CAP
        for _, _, handler, name, entry in candidates:
            if left <= 0:
                archive.notes.append(
                    f"left out {entry}: the extension logs reached {EXTENSION_LOGS_CAP} bytes"
                )
                continue
            limit = min(EXTENSION_LOG_CAP, left)
            try:
                text, size = _read_tail(handler_fds[handler], name, limit)
            except OSError as e:
                why = "a symbolic link" if e.errno == errno.ELOOP else (e.strerror or str(e))
                archive.notes.append(f"left out {entry}: {why}")
                continue
            if size > limit:
                archive.notes.append(
                    f"{entry} truncated: the newest {limit} of {size} bytes collected"
                )
            left -= min(size, limit)
            texts[entry] = text
        return dict(sorted(texts.items()))
    finally:
        for fd in handler_fds.values():
            os.close(fd)
        os.close(root_fd)


def _stage_results(ctx: Context, archive: Archive) -> dict[str, str]:
    directory = ctx.path("/run/azagent/stages")
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError:
        archive.notes.append("no stage results in /run/azagent/stages")
        return {}
    results = {}
    for name in names:
        lowered = name.lower()
        if not _STAGE_RESULT.fullmatch(name) or any(word in lowered for word in _NEVER):
            archive.notes.append(f"left out /run/azagent/stages/{name}: not a stage result")
            continue
        try:
            results[f"azagent/stages/{name}"] = _read_regular(directory / name, _FILE_CAP)
        except OSError as e:
            why = "a symbolic link" if e.errno == errno.ELOOP else (e.strerror or str(e))
            archive.notes.append(f"left out /run/azagent/stages/{name}: {why}")
    return results


def _os_release(ctx: Context, archive: Archive) -> Optional[str]:
    for candidate in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            return _read_regular(ctx.path(candidate), _FILE_CAP)
        except OSError:
            continue
    archive.notes.append("no os-release")
    return None


def _system_facts(ctx: Context, archive: Archive) -> dict[str, str]:
    if not ctx.live:
        archive.notes.append(
            f"system facts (uname, ip addr, lsblk, systemctl status) describe the running"
            f" machine, not {ctx.root}: not collected under --root"
        )
        return {}
    facts = {}
    for name, command in _SYSTEM_COMMANDS:
        try:
            done = system.run(command, check=False, timeout=_COMMAND_TIMEOUT, what=command[0])
        except StageFailed as e:
            archive.notes.append(f"{name} not collected: {e.reason}")
            continue
        text = done.stdout
        if done.returncode != 0 and done.stderr.strip():
            text += f"\n[{command[0]} exited with status {done.returncode}]\n{done.stderr}"
        facts[name] = text
    return facts


def _readme(archive: Archive, root: Path) -> str:
    lines = [
        "azagent log collection",
        f"created {time.strftime('%Y-%m-%dT%H:%M:%S%z')} from {root}",
        "",
        "Collected (every text redacted: passwords, hashes, private keys, customData,",
        "protected settings and SAS query strings read <redacted>):",
        *(f"  {entry}" for entry in archive.entries),
        "",
        "Never collected: anything in Lib.Dir (certificates, private keys, customData,",
        "OVF copies, extension settings), /run/azagent/provisioning.json.",
    ]
    if archive.notes:
        lines += ["", "Notes:", *(f"  {note}" for note in archive.notes)]
    return "\n".join(lines) + "\n"


def collect_logs(ctx: Context, output: Optional[Path], extra: Mapping[str, str]) -> Archive:
    """Write the support archive (0600); ``extra`` adds named texts.

    ``output`` None means ``<Lib.Dir>/logcollector/logs.zip`` under the root.
    """
    if output is None:
        ensure_dir(ctx.lib_dir, mode=0o700)  # as the stages create it, should it be missing
        output = ctx.lib_dir / LOG_ARCHIVE
    archive = Archive(output)
    texts: dict[str, str] = {}
    journal = _journal(ctx, archive)
    if journal is not None:
        texts["journal/azure-units.txt"] = journal
    extensions_journal = _journal(
        ctx,
        archive,
        EXTENSION_UNITS,
        EXTENSION_JOURNAL_CAP,
        "extension handler journal",
    )
    if extensions_journal is not None:
        texts["journal/extensions.txt"] = extensions_journal
    texts.update(_extension_logs(ctx, archive))
    texts.update(_stage_results(ctx, archive))
    texts.update(extra)
    os_release = _os_release(ctx, archive)
    if os_release is not None:
        texts["system/os-release"] = os_release
    texts.update(_system_facts(ctx, archive))
    archive.entries = ["README.txt", *texts]

    buffer = io.BytesIO()
    now = time.localtime()[:6]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in [("README.txt", _readme(archive, ctx.root)), *texts.items()]:
            info = zipfile.ZipInfo(name, date_time=now)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o600) << 16
            zf.writestr(info, clean(text).encode("utf-8"))
    data = buffer.getvalue()
    ensure_dir(output.parent, mode=0o700)
    atomic_write(output, data, mode=0o600)
    archive.size = len(data)
    return archive
