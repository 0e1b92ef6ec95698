"""Diagnostics: the kernel command line in GRUB's defaults, and log collection for support.

Two jobs an operator asks for by hand (``azagent serialconsole``,
``azagent collect-logs``); the GRUB part also serves kernel-tune, which adds
``numa=off`` on old kernels.

**GRUB.** Arguments are added to ``GRUB_CMDLINE_LINUX`` in
``/etc/default/grub``: that variable applies to every menu entry, the
recovery entries included, which is where a serial console matters most.
The file is shell; only the forms images actually use are edited (one line,
double, single or no quotes, a trailing comment, ``$GRUB_CMDLINE_LINUX``
appends); anything else is refused with a reason rather than guessed at.
GRUB reads the generated configuration, not this file, so on ``/`` the
configuration is regenerated with the distribution's own tool (``grubby`` on
RHEL-like systems, else ``update-grub``, ``grub2-mkconfig`` or
``grub-mkconfig``); under ``--root``, or without a tool, the exact command
is given instead.

**Logs.** ``collect_logs`` writes a zip, readable by root only from the
moment it exists, of an explicit allow-list: the journal of the azure-*
units (capped), the stage results, what the CLI passes (status,
configuration), ``/etc/os-release`` and a few commands' output. Nothing is
read from ``Lib.Dir``, so certificates, private keys, customData and OVF
copies cannot end up in it; every text goes through
:func:`azagent.redact.redact` on its way in.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import stat
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from azagent import system
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.fsutil import atomic_write, ensure_dir
from azagent.plan import Plan
from azagent.redact import PLACEHOLDER, redact

# -- GRUB_CMDLINE_LINUX ------------------------------------------------------

GRUB_DEFAULT = "/etc/default/grub"
GRUB_DEFAULT_DROPINS = "/etc/default/grub.d"
SERIAL_CONSOLE_ARGS = ("console=ttyS0", "earlyprintk=ttyS0")
_MAX_GRUB_FILE = 1024 * 1024
_REGENERATE_TIMEOUT = 300.0

_ASSIGNMENT = re.compile(r"^(?P<lead>\s*(?:export\s+)?GRUB_CMDLINE_LINUX=)(?P<rest>.*)$")
_SELF_REFERENCE = re.compile(r"\$\{?GRUB_CMDLINE_LINUX\}?(?![A-Za-z0-9_])")
_RHEL_LIKE = {"rhel", "fedora", "centos", "almalinux", "rocky", "ol", "azurelinux", "mariner"}


@dataclass(frozen=True)
class _Assignment:
    index: int  # line number, from 0
    lead: str  # "GRUB_CMDLINE_LINUX=" with any indentation or "export "
    quote: str  # '"', "'" or "" (unquoted)
    content: str  # the value between the quotes
    tail: str  # what follows the value on the line (a comment, ';')


def _parse_assignment(index: int, line: str) -> Optional[_Assignment]:
    match = _ASSIGNMENT.match(line)
    if match is None:
        return None
    lead, rest = match.group("lead"), match.group("rest")
    if rest[:1] == '"':
        end, i = -1, 1
        while i < len(rest):
            if rest[i] == "\\":
                i += 2
                continue
            if rest[i] == '"':
                end = i
                break
            i += 1
        if end < 0:
            raise StageFailed(
                f"GRUB_CMDLINE_LINUX in {GRUB_DEFAULT} (line {index + 1}) spans several lines:"
                " edit it by hand"
            )
        return _Assignment(index, lead, '"', rest[1:end], rest[end + 1 :])
    if rest[:1] == "'":
        end = rest.find("'", 1)
        if end < 0:
            raise StageFailed(
                f"GRUB_CMDLINE_LINUX in {GRUB_DEFAULT} (line {index + 1}) spans several lines:"
                " edit it by hand"
            )
        return _Assignment(index, lead, "'", rest[1:end], rest[end + 1 :])
    value = re.match(r"[^\s;#]*", rest)
    content = value.group(0) if value else ""
    if any(c in content for c in "\"'\\`"):
        raise StageFailed(
            f"GRUB_CMDLINE_LINUX in {GRUB_DEFAULT} (line {index + 1}) is too complex to edit"
            " safely: edit it by hand"
        )
    return _Assignment(index, lead, "", content, rest[len(content) :])


def _has_arg(tokens: Sequence[str], arg: str) -> bool:
    """``console=ttyS0`` is there as such or with options (``console=ttyS0,115200n8``)."""
    return any(token == arg or token.startswith(arg + ",") for token in tokens)


def add_kernel_args(text: str, args: Sequence[str]) -> tuple[str, list[str]]:
    """``text`` of /etc/default/grub with ``args`` in GRUB_CMDLINE_LINUX, and those added.

    The value the shell would end up with (later assignments win, unless
    they append to ``$GRUB_CMDLINE_LINUX``) decides what is already there;
    the last assignment is the one extended. Without any, a line is added.
    """
    lines = text.splitlines(keepends=True)
    assignments = [
        parsed
        for index, line in enumerate(lines)
        if (parsed := _parse_assignment(index, line.rstrip("\r\n"))) is not None
    ]
    effective = ""
    for assignment in assignments:
        if assignment.quote == "'":  # no expansion inside single quotes
            effective = assignment.content
        else:
            effective = effective.join(_SELF_REFERENCE.split(assignment.content))
    tokens = effective.split()
    missing = [arg for arg in args if not _has_arg(tokens, arg)]
    if not missing:
        return text, []
    if not assignments:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f'GRUB_CMDLINE_LINUX="{" ".join(missing)}"\n')
        return "".join(lines), missing
    last = assignments[-1]
    content = last.content
    separator = "" if not content or content[-1].isspace() else " "
    quote = last.quote or '"'
    ending = lines[last.index][len(lines[last.index].rstrip("\r\n")) :]
    lines[last.index] = (
        f"{last.lead}{quote}{content}{separator}{' '.join(missing)}{quote}{last.tail}{ending}"
    )
    return "".join(lines), missing


def _dropin_overrides(ctx: Context) -> list[str]:
    """Drop-ins sourced after /etc/default/grub that replace GRUB_CMDLINE_LINUX outright."""
    notes = []
    directory = ctx.path(GRUB_DEFAULT_DROPINS)
    try:
        names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".cfg"))
    except OSError:
        return []
    for name in names:
        try:
            text = (directory / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = _ASSIGNMENT.match(line)
            if match and not _SELF_REFERENCE.search(match.group("rest")):
                notes.append(
                    f"{GRUB_DEFAULT_DROPINS}/{name} sets GRUB_CMDLINE_LINUX too, after"
                    f" {GRUB_DEFAULT}: check that it keeps these arguments"
                )
                break
    return notes


def _os_ids(ctx: Context) -> set[str]:
    """ID and ID_LIKE of os-release, without following a link out of the root."""
    for candidate in ("/etc/os-release", "/usr/lib/os-release"):
        path = ctx.path(candidate)
        if path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        ids: set[str] = set()
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("ID", "ID_LIKE"):
                ids.update(value.strip().strip("\"'").lower().split())
        return ids
    return set()


def _tool_available(ctx: Context, name: str) -> bool:
    if ctx.live:
        return system.which(name) is not None
    return any(
        ctx.path(f"{directory}/{name}").exists()
        for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
    )


def regeneration_command(ctx: Context, args: Sequence[str]) -> tuple[list[str], bool]:
    """The command that makes GRUB see the change, and whether the system has it.

    RHEL-like systems with BLS entries keep the kernel arguments in the
    entries themselves, so ``grubby`` is asked to add them there; other
    systems regenerate grub.cfg from /etc/default/grub.
    """
    candidates: list[list[str]] = []
    if _os_ids(ctx) & _RHEL_LIKE:
        candidates.append(["grubby", "--update-kernel=ALL", "--args=" + " ".join(args)])
    grub2_cfg = "/boot/grub2/grub.cfg"
    grub_cfg = "/boot/grub/grub.cfg"
    candidates += [
        ["update-grub"],
        ["grub2-mkconfig", "-o", grub2_cfg],
        ["grub-mkconfig", "-o", grub_cfg],
    ]
    for command in candidates:
        if _tool_available(ctx, command[0]):
            return command, True
    if ctx.path("/boot/grub2").is_dir():
        return ["grub2-mkconfig", "-o", grub2_cfg], False
    return ["grub-mkconfig", "-o", grub_cfg], False


def _kernel_lines(ctx: Context) -> list[str]:
    """The kernel command lines GRUB would boot, as far as the files show them."""
    found: list[str] = []
    for cfg in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"):
        try:
            text = ctx.path(cfg).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        # Only the entries grub-mkconfig made for this system's kernels, not
        # os-prober's entries for other systems, which never get our arguments.
        inside = False
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("### BEGIN /etc/grub.d/10_linux"):
                inside = True
            elif stripped.startswith("### END /etc/grub.d/10_linux"):
                inside = False
            elif inside and stripped.split(" ", 1)[0] in ("linux", "linux16", "linuxefi"):
                found.append(stripped)
    entries = ctx.path("/boot/loader/entries")
    try:
        confs = sorted(entries.glob("*.conf"))
    except OSError:
        confs = []
    for conf in confs:
        try:
            text = conf.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found += [line for line in text.splitlines() if line.startswith("options ")]
    try:
        grubenv = ctx.path("/boot/grub2/grubenv").read_text(encoding="utf-8", errors="replace")
    except OSError:
        grubenv = ""
    found += [line for line in grubenv.splitlines() if line.startswith("kernelopts=")]
    # A BLS entry saying "$kernelopts" takes its arguments from grubenv.
    return [line for line in found if "$kernelopts" not in line]


def generated_config_lacks(ctx: Context, args: Sequence[str]) -> bool:
    """Whether a kernel line GRUB boots is known to lack one of ``args``."""
    return any(not all(_has_arg(line.split(), arg) for arg in args) for line in _kernel_lines(ctx))


def _write_grub_default(path: Path, text: str, mode: int, owner: tuple[int, int]) -> None:
    try:
        atomic_write(path, text.encode("utf-8"), mode=mode, owner=owner)
    except OSError as e:
        raise StageFailed(f"cannot write {GRUB_DEFAULT}: {e.strerror or e}") from None


def _regenerate(argv: list[str]) -> None:
    system.run(argv, timeout=_REGENERATE_TIMEOUT, what="regenerate GRUB's configuration")


def plan_kernel_args(ctx: Context, args: Sequence[str], plan: Plan) -> list[str]:
    """Add the changes that put ``args`` on GRUB's kernel command line; returns notes.

    Raises StageFailed when /etc/default/grub is missing or cannot be edited
    safely.
    """
    path = ctx.path(GRUB_DEFAULT)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise StageFailed(
            f"{GRUB_DEFAULT} does not exist (not GRUB 2, or configured otherwise):"
            f" add {' '.join(args)} to the kernel command line by hand"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise StageFailed(f"{GRUB_DEFAULT} is not a regular file: edit it by hand")
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_GRUB_FILE + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StageFailed(f"cannot read {GRUB_DEFAULT}: {e}") from None
    if len(data) > _MAX_GRUB_FILE:
        raise StageFailed(f"{GRUB_DEFAULT} is larger than {_MAX_GRUB_FILE} bytes")

    new_text, added = add_kernel_args(text, args)
    notes = _dropin_overrides(ctx)
    if added:
        plan.add(
            f"add {' '.join(added)} to GRUB_CMDLINE_LINUX in {GRUB_DEFAULT}",
            functools.partial(
                _write_grub_default,
                path,
                new_text,
                stat.S_IMODE(st.st_mode),
                (st.st_uid, st.st_gid),
            ),
        )
    if not added and not generated_config_lacks(ctx, args):
        return notes
    command, available = regeneration_command(ctx, args)
    shown = " ".join(f"'{a}'" if " " in a else a for a in command)
    if ctx.live and available:
        plan.add(
            f"regenerate GRUB's configuration: {shown}", functools.partial(_regenerate, command)
        )
    elif ctx.live:
        notes.append(f"GRUB's configuration must be regenerated for this to take effect: {shown}")
    else:
        notes.append(
            f"GRUB's configuration in {ctx.root} must be regenerated inside that system for this"
            f" to take effect: chroot {ctx.root} {shown}  (with /dev, /proc and /sys mounted"
            " in it), or boot it and run the command there"
        )
    return notes


def serial_console_plan(ctx: Context) -> tuple[Plan, list[str]]:
    """``azagent serialconsole``: ttyS0 as the kernel's console and early console."""
    plan = Plan()
    notes = plan_kernel_args(ctx, SERIAL_CONSOLE_ARGS, plan)
    return plan, notes


# -- Log collection ----------------------------------------------------------

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
        lib_dir = ctx.lib_dir
        ensure_dir(lib_dir, mode=0o700)  # as the stages create it, should it be missing
        output = lib_dir / LOG_ARCHIVE
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
