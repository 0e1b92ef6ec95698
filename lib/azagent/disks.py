"""Hyper-V / Azure disks as the kernel shows them in sysfs.

Azure's SCSI disks (OS, resource and data disks) report vendor ``Msft`` and
model ``Virtual Disk``; qemu can present the same identity, which is what lets
the VM tests exercise this code for real.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from azagent.context import Context

VENDOR = "Msft"
MODEL = "Virtual Disk"

SCSI_TIMEOUT_RULE = "/run/udev/rules.d/66-azagent-scsi-timeout.rules"


@dataclass(frozen=True)
class ScsiDisk:
    name: str  # kernel name, e.g. "sda"
    timeout_path: Path  # /sys/block/<name>/device/timeout (under the root)
    timeout: str  # current value as the kernel prints it, stripped


def _attribute(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def hyperv_scsi_disks(ctx: Context) -> list[ScsiDisk]:
    """The block devices that are Hyper-V virtual SCSI disks, sorted by name."""
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
