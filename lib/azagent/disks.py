"""Hyper-V / Azure disks as the kernel shows them: through udev on ``/``, in sysfs under a root.

Azure's SCSI disks (OS, resource and data disks) report vendor ``Msft`` and
model ``Virtual Disk``; qemu can present the same identity, which is what lets
the VM tests exercise this code for real. On the running system the lookups
ask udev (:mod:`azagent.udev`); under ``--root`` they read the tree's /sys.
"""

from __future__ import annotations

import os
from pathlib import Path

from azagent import udev

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from azagent.context import Context

VENDOR = "Msft"
MODEL = "Virtual Disk"

SCSI_TIMEOUT_RULE = "/run/udev/rules.d/66-azagent-scsi-timeout.rules"


class ScsiDisk:
    __slots__ = ("name", "timeout", "timeout_path")

    def __init__(
        self,
        name: str,  # kernel name, e.g. "sda"
        timeout_path: Path,  # /sys/block/<name>/device/timeout (under the root)
        timeout: str,  # current value as the kernel prints it, stripped
    ) -> None:
        self.name: Final = name
        self.timeout_path: Final = timeout_path
        self.timeout: Final = timeout


def _attribute(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def hyperv_scsi_disks(ctx: Context) -> list[ScsiDisk]:
    """The block devices that are Hyper-V virtual SCSI disks, sorted by name."""
    return udev.find(
        ctx, "Hyper-V SCSI disks", _hyperv_scsi_disks_udev, lambda: _hyperv_scsi_disks_sysfs(ctx)
    )


def _hyperv_scsi_disks_udev(pyudev: Any, context: Any) -> list[ScsiDisk]:
    disks = []
    for device in context.list_devices(subsystem="block", DEVTYPE="disk"):
        scsi = device.parent  # what /sys/block/<name>/device leads to
        if scsi is None or udev.attribute(scsi, "vendor") != VENDOR:
            continue
        if not (udev.attribute(scsi, "model") or "").startswith(MODEL):
            continue
        timeout = udev.attribute(scsi, "timeout")
        if timeout is None:
            continue
        disks.append(ScsiDisk(str(device.sys_name), Path(scsi.sys_path) / "timeout", timeout))
    return sorted(disks, key=lambda disk: disk.name)


def _hyperv_scsi_disks_sysfs(ctx: Context) -> list[ScsiDisk]:
    block = ctx.path("/sys/block")
    try:
        names = sorted(entry.name for entry in block.iterdir())
    except OSError:
        return []
    disks = []
    for name in names:
        device = block / name / "device"
        if _attribute(device / "vendor") != VENDOR:
            continue
        if not _attribute(device / "model").startswith(MODEL):
            continue
        timeout_path = device / "timeout"
        if not timeout_path.exists():
            continue
        disks.append(ScsiDisk(name, timeout_path, _attribute(timeout_path)))
    return disks


def scsi_timeout_rule(seconds: int) -> str:
    """A udev rule giving every Hyper-V SCSI disk that appears later ``seconds``."""
    return (
        "# Written by azagent's kernel-tune stage from OS.RootDeviceScsiTimeout.\n"
        "# It lives in /run: every boot regenerates it from waagent.conf.\n"
        'ACTION=="add|change", SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", '
        f'ATTR{{vendor}}=="{VENDOR}*", ATTR{{model}}=="{MODEL}*", '
        f'ATTR{{timeout}}="{seconds}"\n'
    )


def write_attribute(path: Path, value: str) -> None:
    """Write a sysfs attribute (which can be neither created nor renamed)."""
    with open(path, "w", encoding="ascii") as f:
        f.write(value + "\n")


# What the kernel says is in use: mounts, swap, block device names in sysfs.
# Used by the resource-disk stage to keep its hands off the OS disk and off
# anything mounted; every path goes through the context, so a test tree can
# describe a machine with a fake /proc and /sys.


class Mount:
    """One line of /proc/self/mountinfo."""

    __slots__ = ("devnum", "fstype", "source", "target")

    def __init__(
        self,
        devnum: tuple[int, int],  # st_dev of the filesystem (0:N for btrfs, tmpfs, ...)
        target: str,  # mount point, unescaped
        fstype: str,
        source: str,  # e.g. /dev/sda1, unescaped
    ) -> None:
        self.devnum: Final = devnum
        self.target: Final = target
        self.fstype: Final = fstype
        self.source: Final = source


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal."""
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(ctx: Context) -> list[Mount]:
    """The mounts of the target system (/proc/self/mountinfo under the root), in order.

    A missing file (a test tree describing no mounts) is no mounts; an
    unreadable one on the real system is an error the caller sees.
    """
    path = ctx.path("/proc/self/mountinfo")
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        if ctx.live:
            raise
        return []
    result = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if separator < 6 or len(fields) < separator + 3:
            continue
        major, _, minor = fields[2].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        result.append(
            Mount(
                devnum=(int(major), int(minor)),
                target=_unescape_mountinfo(fields[4]),
                fstype=fields[separator + 1],
                source=_unescape_mountinfo(fields[separator + 2]),
            )
        )
    return result


def active_swaps(ctx: Context) -> list[str]:
    """Paths of the active swap areas (/proc/swaps under the root)."""
    try:
        lines = ctx.path("/proc/swaps").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        if ctx.live:
            raise
        return []
    return [_unescape_mountinfo(line.split()[0]) for line in lines[1:] if line.split()]


def kernel_name(ctx: Context, devnum: tuple[int, int]) -> str | None:
    """The kernel name (sda, sda1, dm-0) of block device MAJOR:MINOR."""
    if devnum[0] == 0:
        return None

    def live(pyudev: Any, context: Any) -> str | None:
        try:
            device = pyudev.Devices.from_device_number(context, "block", os.makedev(*devnum))
        except pyudev.DeviceNotFoundError:
            return None
        return str(device.sys_name)

    def tree() -> str | None:
        link = ctx.path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}")
        try:
            return link.resolve(strict=True).name
        except OSError:
            return None

    return udev.find(ctx, f"block device {devnum[0]}:{devnum[1]}", live, tree)


def _udev_block(pyudev: Any, context: Any, name: str) -> Any:
    """The pyudev device of block device ``name``, or None."""
    try:
        return pyudev.Devices.from_name(context, "block", name)
    except pyudev.DeviceNotFoundError:
        return None


def block_sysfs(ctx: Context, name: str) -> Path:
    """/sys/class/block/<name> under the root (a disk or a partition)."""
    return ctx.path(f"/sys/class/block/{name}")


def underlying_disks(ctx: Context, name: str, _depth: int = 0) -> set[str]:
    """The whole disks block device ``name`` lives on.

    A partition lives on its disk; a device-mapper or md device on the disks
    of its slaves (LVM, RAID, dm-crypt), however deep the stack.
    """
    if _depth > 16:
        return set()
    directory = block_sysfs(ctx, name)
    try:
        resolved = directory.resolve(strict=True)
    except OSError:
        return {name}
    if (resolved / "partition").exists():
        return {resolved.parent.name}
    try:
        slaves = sorted(entry.name for entry in (resolved / "slaves").iterdir())
    except OSError:
        slaves = []
    if not slaves:
        return {name}
    result: set[str] = set()
    for slave in slaves:
        result |= underlying_disks(ctx, slave, _depth + 1)
    return result


def partition_name(disk: str, number: int) -> str:
    """The kernel's name for partition ``number`` of ``disk``: sdb1, nvme0n1p1."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def devnum_of(ctx: Context, name: str) -> tuple[int, int] | None:
    """MAJOR:MINOR of a block device (its sysfs ``dev`` attribute)."""

    def live(pyudev: Any, context: Any) -> tuple[int, int] | None:
        device = _udev_block(pyudev, context, name)
        if device is None:
            return None
        number = int(device.device_number)
        return (os.major(number), os.minor(number)) if number else None

    def tree() -> tuple[int, int] | None:
        major, _, minor = _attribute(block_sysfs(ctx, name) / "dev").partition(":")
        if major.isdigit() and minor.isdigit():
            return int(major), int(minor)
        return None

    return udev.find(ctx, f"block device {name}", live, tree)


def scsi_identity(ctx: Context, name: str) -> tuple[str, str]:
    """(vendor, model) of a SCSI disk, stripped; empty when unknown."""

    def live(pyudev: Any, context: Any) -> tuple[str, str]:
        device = _udev_block(pyudev, context, name)
        parent = device.parent if device is not None else None  # /sys/class/block/<name>/device
        if parent is None:
            return "", ""
        return udev.attribute(parent, "vendor") or "", udev.attribute(parent, "model") or ""

    def tree() -> tuple[str, str]:
        device = block_sysfs(ctx, name) / "device"
        return _attribute(device / "vendor"), _attribute(device / "model")

    return udev.find(ctx, f"SCSI identity of {name}", live, tree)
