"""Finding and reading the provisioning media (the "DVD" with ovf-env.xml).

The platform attaches a CD-ROM holding ``ovf-env.xml``. It is read once,
early at boot, without waiting for a device that may never come: only the
CD-ROM devices the kernel already shows are tried. Each is mounted read-only
(udf, then iso9660) under /run, the document copied into memory, and the
device unmounted again.

A directory that already holds ``ovf-env.xml`` at ``DVD.MountPoint`` (media
mounted by something else, or an image tree prepared for ``--root``) is used
as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from azagent import system, udev
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.journal import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional


OVF_NAME = "ovf-env.xml"
MOUNT_POINT = "/run/azagent/media"
# The real document is a few kB; customData is at most 64 KiB before base64.
MAX_OVF_BYTES = 1024 * 1024
FILESYSTEMS = ("udf", "iso9660")
SETTLE_SECONDS = 5


def _read_limited(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_OVF_BYTES + 1)
    if len(data) > MAX_OVF_BYTES:
        raise StageFailed(f"{OVF_NAME} is larger than {MAX_OVF_BYTES} bytes")
    return data


def _is_cdrom(name: str) -> bool:
    return name.startswith("sr") and name[2:].isdigit()


def cdrom_devices(ctx: Context) -> list[str]:
    """CD-ROM block devices present now (sr0, sr1, ...), by kernel name.

    By kernel name rather than udev's ID_CDROM: early at boot udev may not
    have processed the device yet, and the kernel names every CD-ROM srN.
    """

    def live(pyudev: Any, context: Any) -> list[str]:
        devices = context.list_devices(subsystem="block", DEVTYPE="disk")
        return sorted(str(d.sys_name) for d in devices if _is_cdrom(str(d.sys_name)))

    def tree() -> list[str]:
        try:
            names = os.listdir(ctx.path("/sys/class/block"))
        except OSError:
            return []
        return sorted(name for name in names if _is_cdrom(name))

    return udev.find(ctx, "CD-ROM devices", live, tree)


def premounted(ctx: Context) -> Optional[Path]:
    directory = ctx.path(ctx.config.required_str("DVD.MountPoint"))
    candidate = directory / OVF_NAME
    return candidate if candidate.is_file() else None


def read_from_device(ctx: Context, device: str) -> Optional[bytes]:
    """Mount ``/dev/<device>`` read-only, read ovf-env.xml, unmount. None if it has none."""
    mount_point = ctx.path(MOUNT_POINT)
    mount_point.mkdir(parents=True, exist_ok=True, mode=0o700)
    for filesystem in FILESYSTEMS:
        done = system.run(
            [
                "mount",
                "-t",
                filesystem,
                "-o",
                "ro,nosuid,nodev,noexec",
                f"/dev/{device}",
                str(mount_point),
            ],
            check=False,
            timeout=30,
            what=f"mount /dev/{device}",
        )
        if done.returncode != 0:
            log.debug("/dev/%s is not %s: %s", device, filesystem, done.stderr.strip())
            continue
        try:
            path = mount_point / OVF_NAME
            return _read_limited(path) if path.is_file() else None
        finally:
            system.run(["umount", str(mount_point)], check=False, timeout=30, what="unmount")
    log.warning(
        "/dev/%s could not be mounted as %s (is the udf module blacklisted?)",
        device,
        " or ".join(FILESYSTEMS),
    )
    return None


def read_ovf(ctx: Context) -> Optional[tuple[str, bytes]]:
    """(where it came from, the document), or None when there is no media."""
    found = premounted(ctx)
    if found is not None:
        return ctx.display(found), _read_limited(found)
    if not ctx.live:
        log.info("not mounting devices under --root %s", ctx.root)
        return None
    if not cdrom_devices(ctx):
        # Devices found at coldplug may still be in udev's queue: wait for it
        # to drain, briefly. A VM without a DVD pays at most this, never a
        # device timeout.
        system.run(["udevadm", "settle", f"--timeout={SETTLE_SECONDS}"], check=False, timeout=30)
    for device in cdrom_devices(ctx):
        data = read_from_device(ctx, device)
        if data is not None:
            return f"/dev/{device}", data
    return None
