"""``azagent collect-logs``: a zip of what support needs, and nothing secret.

``collect_logs`` writes a zip, readable by root only from the moment it
exists, of an explicit allow-list: the journal of the azure-* units
(capped), the stage results, what the CLI passes (status, configuration),
``/etc/os-release`` and a few commands' output. Nothing is read from
``Lib.Dir``, so certificates, private keys, customData and OVF copies
cannot end up in it; every text goes through :func:`azagent.redact.redact`
on its way in.
"""

from __future__ import annotations

import errno
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


def _journal(ctx: Context, archive: Archive) -> Optional[str]:
    command = ["journalctl"]
    if not ctx.live:
        command.append(f"--root={ctx.root}")
    command += ["-u", "azure-*", "-o", "short-precise", "--no-pager", "-n", str(_JOURNAL_LINES)]
    try:
        done = system.run(command, check=False, timeout=_COMMAND_TIMEOUT, what="read the journal")
    except StageFailed as e:
        archive.notes.append(f"journal not collected: {e.reason}")
        return None
    if done.returncode != 0:
        if "No journal files" in done.stderr:
            archive.notes.append("journal not collected: journalctl found no journal")
        else:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            archive.notes.append(
                f"journal not collected: journalctl exited with status {done.returncode}: "
                + clean(last)
            )
        return None
    text = done.stdout
    data = text.encode("utf-8", errors="replace")
    if len(data) > JOURNAL_CAP:
        # Keep the most recent part, from a line start.
        tail = data[-JOURNAL_CAP:]
        tail = tail[tail.find(b"\n") + 1 :]
        dropped = len(data) - len(tail)
        archive.notes.append(f"journal truncated: the oldest {dropped} bytes were left out")
        text = f"[the oldest {dropped} bytes were left out]\n" + tail.decode(
            "utf-8", errors="replace"
        )
    return text


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
        "OVF copies), /run/azagent/provisioning.json.",
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
