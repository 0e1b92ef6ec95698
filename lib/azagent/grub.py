"""The kernel command line in GRUB's defaults: ``azagent serialconsole`` and kernel-tune's numa=off.

Arguments are added to ``GRUB_CMDLINE_LINUX`` in ``/etc/default/grub``: that
variable applies to every menu entry, the recovery entries included, which
is where a serial console matters most. The file is shell; only the forms
images actually use are edited (one line, double, single or no quotes, a
trailing comment, ``$GRUB_CMDLINE_LINUX`` appends); anything else is refused
with a reason rather than guessed at. GRUB reads the generated
configuration, not this file, so on ``/`` the configuration is regenerated
with the distribution's own tool (``grubby`` on RHEL-like systems, else
``update-grub``, ``grub2-mkconfig`` or ``grub-mkconfig``); under ``--root``,
or without a tool, the exact command is given instead.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from azagent import system
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.fsutil import atomic_write
from azagent.plan import Plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Optional

GRUB_DEFAULT = "/etc/default/grub"
GRUB_DEFAULT_DROPINS = "/etc/default/grub.d"
SERIAL_CONSOLE_ARGS = ("console=ttyS0", "earlyprintk=ttyS0")
_MAX_GRUB_FILE = 1024 * 1024
_REGENERATE_TIMEOUT = 300.0

_ASSIGNMENT = re.compile(r"^(?P<lead>\s*(?:export\s+)?GRUB_CMDLINE_LINUX=)(?P<rest>.*)$")
_SELF_REFERENCE = re.compile(r"\$\{?GRUB_CMDLINE_LINUX\}?(?![A-Za-z0-9_])")
_RHEL_LIKE = {"rhel", "fedora", "centos", "almalinux", "rocky", "ol", "azurelinux", "mariner"}


class _Assignment:
    __slots__ = ("content", "index", "lead", "quote", "tail")

    def __init__(
        self,
        index: int,  # line number, from 0
        lead: str,  # "GRUB_CMDLINE_LINUX=" with any indentation or "export "
        quote: str,  # '"', "'" or "" (unquoted)
        content: str,  # the value between the quotes
        tail: str,  # what follows the value on the line (a comment, ';')
    ) -> None:
        self.index: Final = index
        self.lead: Final = lead
        self.quote: Final = quote
        self.content: Final = content
        self.tail: Final = tail


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
