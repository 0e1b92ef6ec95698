"""The Azure resource (temporary) disk: when it may be formatted, and its mount.

The platform gives most VMs a local disk whose content is lost when the VM is
deallocated. It arrives NTFS-formatted (one partition) holding only
``DATALOSS_WARNING_README.txt``, and can come back that way, or blank, after
any deallocation. This module decides, from what the disk holds, whether it
may be formatted, and never guesses:

* a blank disk (no partition table, no filesystem signature) is formatted;
* a fresh NTFS (one partition, or a Microsoft reserved partition and one
  NTFS partition) whose only files are the warning file and "System Volume
  Information" is formatted; its content is read without mounting, by a small
  reader of the NTFS master file table (:mod:`azagent.ntfs`), so that the
  image needs no NTFS driver or ntfs-3g, and so that the same code reads disk
  images in tests;
* a disk whose first partition already holds ``ResourceDisk.Filesystem`` is
  only mounted;
* a single Linux partition without any signature (what an interrupted
  format leaves) is formatted again;
* anything else (user files on the NTFS, another filesystem, LVM, RAID, a
  disk in use, the disk holding /) is refused, with the reason.

The filesystem is mounted through a runtime mount unit in /run/systemd/system
(``nofail``): /run is empty at every boot, and the stage, which udev starts
whenever the disk appears, checks the disk again and writes the unit again.
The swap file on it is :mod:`azagent.swapfile`'s.

Under ``--root`` the disk may be a regular file (a disk image): the tests
partition and format images; they never touch a real device, and the stage
never mounts or activates swap unless the root is /.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import stat
import time
from pathlib import Path, PurePosixPath

from azagent import disks, swapfile, system
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.fsutil import atomic_write, crash_point
from azagent.journal import log
from azagent.ntfs import WARNING_NAME, NtfsError, ntfs_foreign_files
from azagent.plan import Action

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Optional


RESOURCE_LINK = "/dev/disk/azure/resource"
PART1_LINK = "/dev/disk/azure/resource-part1"
UNIT_DIR = "/run/systemd/system"

MIB = 1024 * 1024
GPT_ABOVE = 2 * 1024**4  # an MBR partition cannot go beyond 2 TiB
LINUX_GPT_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
NTFS_PARTITION_TYPES = ("7", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")  # MBR, GPT basic data
LINUX_PARTITION_TYPES = ("83", LINUX_GPT_TYPE)
MSR_GPT_TYPE = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"  # Microsoft reserved
FORCE_FLAGS = {
    "ext2": ["-F", "-q"],
    "ext3": ["-F", "-q"],
    "ext4": ["-F", "-q"],
    "xfs": ["-f", "-q"],
    "btrfs": ["-f", "-q"],
}
MKFS_TIMEOUT = 600.0

WARNING_TEXT = b"""\
WARNING: THIS IS A TEMPORARY DISK.

Anything stored on this disk can be lost, and cannot be recovered: the
platform may hand the virtual machine a fresh disk whenever it is stopped
(deallocated), resized, redeployed, or moved to another host after a
hardware failure.

Keep nothing here you cannot afford to lose: use it for caches, scratch
files and swap.

azagent formatted and mounted this disk as configured by ResourceDisk.* in
/etc/waagent.conf.
"""


# --- the disk -----------------------------------------------------------------


class Disk:
    """The resource disk: its node (under the root) and what the kernel calls it."""

    __slots__ = ("block", "display", "name", "node", "size")

    def __init__(
        self,
        node: Path,
        display: str,  # as the target system names it, e.g. /dev/sdb
        name: str,  # kernel name (sdb); an image file's name under --root
        block: bool,  # a real block device (False: a disk image, tests only)
        size: int,
    ) -> None:
        self.node: Final = node
        self.display: Final = display
        self.name: Final = name
        self.block: Final = block
        self.size: Final = size


class Region:
    """Bytes of the disk a filesystem lives in: a partition node, or a range of an image."""

    __slots__ = ("display", "offset", "path", "size")

    def __init__(self, path: Path, offset: int, size: int, display: str) -> None:
        self.path: Final = path
        self.offset: Final = offset
        self.size: Final = size
        self.display: Final = display


class Partition:
    __slots__ = ("number", "size", "start", "type")

    def __init__(
        self,
        number: int,
        start: int,  # bytes from the start of the disk
        size: int,
        type: str,  # MBR id ("83", "7") or GPT type GUID, upper case
    ) -> None:
        self.number: Final = number
        self.start: Final = start
        self.size: Final = size
        self.type: Final = type


def _resolve_in_root(ctx: Context, link: Path) -> Path:
    """Follow ``link`` the way the target system would: absolute targets stay under the root."""
    path = link
    for _ in range(40):
        if not path.is_symlink():
            break
        target = os.readlink(path)
        if target.startswith("/"):
            path = ctx.path(os.path.normpath(target))
        else:
            path = Path(os.path.normpath(path.parent / target))
    else:
        raise StageFailed(f"{RESOURCE_LINK}: too many levels of symbolic links")
    real = Path(os.path.realpath(path))
    if not ctx.live and not real.is_relative_to(ctx.root):
        raise StageFailed(f"{RESOURCE_LINK} leads outside --root {ctx.root}")
    return real


def find_disk(ctx: Context) -> Optional[Disk]:
    """The resource disk named by udev (66-azure-storage.rules), or None without one."""
    link = ctx.path(RESOURCE_LINK)
    if not os.path.lexists(link):
        return None
    node = _resolve_in_root(ctx, link)
    try:
        st = os.stat(node)
    except FileNotFoundError:
        return None
    display = ctx.display(node)
    if stat.S_ISBLK(st.st_mode) and not ctx.live:
        raise StageFailed(
            f"{RESOURCE_LINK} points at the block device {display}: under --root only disk "
            "images are formatted, real disks only on the running system"
        )
    if stat.S_ISBLK(st.st_mode):
        devnum = (os.major(st.st_rdev), os.minor(st.st_rdev))
        name = disks.kernel_name(ctx, devnum) or node.name
        vendor, model = disks.scsi_identity(ctx, name)
        if vendor != disks.VENDOR or not model.startswith(disks.MODEL):
            raise StageFailed(
                f"{RESOURCE_LINK} points at {display}, which is not a Hyper-V virtual disk "
                f"(vendor {vendor or '?'}, model {model or '?'})"
            )
        with open(node, "rb") as f:
            size = f.seek(0, os.SEEK_END)
        return Disk(node, display, name, True, size)
    if stat.S_ISREG(st.st_mode) and not ctx.live:
        return Disk(node, display, node.name, False, st.st_size)
    raise StageFailed(f"{RESOURCE_LINK} points at {display}, which is not a block device")


def _partition_node(ctx: Context, disk: Disk, number: int, wait: float = 0.0) -> Path:
    """/dev/<partition> of a real disk, checked against sysfs (waits up to ``wait`` s)."""
    name = disks.partition_name(disk.name, number)
    node = ctx.path(f"/dev/{name}")
    deadline = time.monotonic() + wait
    while True:
        devnum = disks.devnum_of(ctx, name)
        try:
            st = os.stat(node)
        except FileNotFoundError:
            st = None
        if (
            devnum is not None
            and st is not None
            and stat.S_ISBLK(st.st_mode)
            and (os.major(st.st_rdev), os.minor(st.st_rdev)) == devnum
        ):
            return node
        if time.monotonic() >= deadline:
            raise StageFailed(
                f"partition {number} of {disk.display} has no device node /dev/{name}"
            )
        time.sleep(0.1)


def region_of(ctx: Context, disk: Disk, partition: Partition, wait: float = 0.0) -> Region:
    display = f"partition {partition.number} of {disk.display}"
    if disk.block:
        node = _partition_node(ctx, disk, partition.number, wait)
        return Region(node, 0, partition.size, ctx.display(node))
    return Region(disk.node, partition.start, partition.size, display)


def whole(disk: Disk) -> Region:
    return Region(disk.node, 0, disk.size, disk.display)


# --- what the disk holds --------------------------------------------------------


def probe(region: Region) -> dict[str, str]:
    """libblkid's low-level probe of ``region``: TYPE, PTTYPE, USAGE, ...; {} when blank."""
    done = system.run(
        [
            "blkid",
            "--probe",
            "--output",
            "export",
            "--offset",
            str(region.offset),
            "--size",
            str(region.size),
            str(region.path),
        ],
        check=False,
        timeout=60,
        what=f"probe {region.display}",
    )
    if done.returncode == 2:  # nothing found
        return {}
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise StageFailed(
            f"cannot tell what {region.display} holds: blkid exited with status "
            f"{done.returncode}" + (f": {detail[-1]}" if detail else "")
        )
    properties = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            properties[key] = value.replace("\\ ", " ")
    return properties


def partitions(disk: Disk) -> tuple[str, tuple[Partition, ...]]:
    """(table type, partitions) as sfdisk reads them."""
    done = system.run(
        ["sfdisk", "--json", str(disk.node)],
        timeout=60,
        what=f"read the partitions of {disk.display}",
    )
    try:
        import json

        table = json.loads(done.stdout)["partitiontable"]
        sector = int(table.get("sectorsize", 512))
        result = []
        for entry in table.get("partitions", []):
            node = str(entry["node"])
            suffix = node[len(str(disk.node)) :].lstrip("p")
            result.append(
                Partition(
                    number=int(suffix),
                    start=int(entry["start"]) * sector,
                    size=int(entry["size"]) * sector,
                    type=str(entry["type"]).upper(),
                )
            )
        return str(table["label"]), tuple(result)
    except (ValueError, KeyError, TypeError) as e:
        raise StageFailed(f"cannot read the partition table of {disk.display}: {e}") from None


class Assessment:
    """What to do with the disk, and why."""

    __slots__ = ("format", "holds", "source")

    def __init__(
        self,
        format: bool,
        holds: str,  # what the disk holds, in words, for the log
        source: str,  # the link the filesystem is mounted from
    ) -> None:
        self.format: Final = format
        self.holds: Final = holds
        self.source: Final = source


def assess(ctx: Context, disk: Disk, filesystem: str) -> Assessment:
    """Decide whether the disk may be formatted; raise StageFailed when it must not be."""
    disk_probe = probe(whole(disk))
    if not disk_probe:
        return Assessment(True, "nothing (no partition table, no filesystem)", PART1_LINK)
    found = disk_probe.get("TYPE")
    if found is not None:
        if found == filesystem:
            return Assessment(False, f"{filesystem} on the whole disk", RESOURCE_LINK)
        raise _refuse(disk, f"it holds {found} on the whole disk, not {filesystem}")
    label, parts = partitions(disk)
    first = next((p for p in parts if p.number == 1), None)
    first_probe = probe(region_of(ctx, disk, first)) if first is not None else {}
    if first is not None and first_probe.get("TYPE") == filesystem:
        return Assessment(False, f"{filesystem} on partition 1", PART1_LINK)

    ntfs = _fresh_ntfs_partition(parts)
    if ntfs is not None:
        region = region_of(ctx, disk, ntfs)
        found = (first_probe if ntfs is first else probe(region)).get("TYPE")
        if found == "ntfs":
            try:
                with open(region.path, "rb") as f:
                    foreign = ntfs_foreign_files(f, region.offset, region.size)
            except NtfsError as e:
                raise _refuse(disk, f"its NTFS cannot be shown to be fresh: {e}") from None
            if foreign:
                shown = ", ".join(foreign[:5]) + (
                    f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
                )
                raise _refuse(disk, f"its NTFS holds files besides {WARNING_NAME}: {shown}")
            return Assessment(True, f"a fresh NTFS holding only {WARNING_NAME}", PART1_LINK)
    if (
        len(parts) == 1
        and first is not None
        and first.type in LINUX_PARTITION_TYPES
        and not first_probe
    ):
        return Assessment(
            True, "one Linux partition without a filesystem (an unfinished format)", PART1_LINK
        )

    if not parts:
        what = f"an empty {label} partition table"
    else:
        kinds = ", ".join(
            f"{p.number}: type {p.type}"
            + (f" {first_probe['TYPE']}" if p is first and "TYPE" in first_probe else "")
            for p in parts
        )
        what = f"a {label} partition table ({kinds}) and no {filesystem} on partition 1"
    raise _refuse(disk, f"it holds {what}")


def _fresh_ntfs_partition(parts: tuple[Partition, ...]) -> Optional[Partition]:
    """The NTFS partition of the platform's layout: alone, or after a Microsoft reserved one."""
    if len(parts) == 1:
        candidate = parts[0]
    elif len(parts) == 2 and parts[0].type == MSR_GPT_TYPE:
        candidate = parts[1]
    else:
        return None
    return candidate if candidate.type in NTFS_PARTITION_TYPES else None


def _refuse(disk: Disk, why: str) -> StageFailed:
    return StageFailed(
        f"refusing to format the resource disk {disk.display}: {why}; "
        f"clear it (wipefs --all) to let azagent format it, losing its data"
    )


def check_not_in_use(ctx: Context, disk: Disk, mount_point: str, filesystem: str) -> None:
    """Refuse a disk anything is mounted from or swaps on, above all the disk holding /.

    The one use allowed is the resource filesystem itself, mounted at the
    mount point (an earlier run of this stage).
    """
    own = _own_devnums(ctx, disk)
    for mount in disks.mounts(ctx):
        names = _disks_of(ctx, mount.devnum, mount.source)
        if disk.name not in names:
            continue
        if mount.target == mount_point and mount.fstype == filesystem and mount.devnum in own:
            continue
        if mount.target == "/":
            raise StageFailed(
                f"{RESOURCE_LINK} points at {disk.display}, which holds the root filesystem: "
                "that is the OS disk, never formatted"
            )
        raise StageFailed(
            f"the resource disk {disk.display} is in use: "
            f"{mount.source} is mounted at {mount.target}"
        )
    for swap in disks.active_swaps(ctx):
        if swap.startswith("/dev/") and disk.name in _disks_of(ctx, (0, 0), swap):
            raise StageFailed(f"the resource disk {disk.display} is in use: swap on {swap}")


def _own_devnums(ctx: Context, disk: Disk) -> set[tuple[int, int]]:
    if not disk.block:
        return set()
    result = set()
    for name in (disk.name, disks.partition_name(disk.name, 1)):
        devnum = disks.devnum_of(ctx, name)
        if devnum is not None:
            result.add(devnum)
    return result


def _disks_of(ctx: Context, devnum: tuple[int, int], source: str) -> set[str]:
    """The whole disks a mount or swap lives on, from its device number or its source."""
    name = disks.kernel_name(ctx, devnum)
    if name is None and source.startswith("/dev/"):
        try:
            st = os.stat(_resolve_in_root(ctx, ctx.path(os.path.normpath(source))))
        except (OSError, StageFailed):
            st = None
        if st is not None and stat.S_ISBLK(st.st_mode):
            name = disks.kernel_name(ctx, (os.major(st.st_rdev), os.minor(st.st_rdev)))
    return disks.underlying_disks(ctx, name) if name is not None else set()


# --- formatting -----------------------------------------------------------------


def table_for(disk: Disk) -> tuple[str, str]:
    """(sfdisk script, words): one partition over the whole disk, type Linux."""
    if disk.size > GPT_ABOVE:
        return f"label: gpt\n,,{LINUX_GPT_TYPE}\n", "GPT"
    return "label: dos\n,,83\n", "MBR, type 83"


def mkfs_command(filesystem: str, target: str) -> list[str]:
    return [f"mkfs.{filesystem}", *FORCE_FLAGS.get(filesystem, []), target]


def check_mkfs(filesystem: str) -> None:
    if system.which(f"mkfs.{filesystem}") is None:
        raise StageFailed(
            f"mkfs.{filesystem} is not installed: cannot format the resource disk as "
            f"{filesystem} (ResourceDisk.Filesystem)"
        )


def _check_unclaimed(disk: Disk) -> None:
    """The kernel's own word that nothing holds the disk: an exclusive open fails if so."""
    try:
        fd = os.open(disk.node, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise StageFailed(f"the resource disk {disk.display} is in use (busy)") from None
        raise
    os.close(fd)


def _zero(region: Region, length: int) -> None:
    fd = os.open(region.path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, bytes(min(length, region.size)), region.offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def format_disk(ctx: Context, disk: Disk, filesystem: str) -> None:
    """One partition over the whole disk, wiped, and a fresh ``filesystem`` on it."""
    if disk.block:
        _check_unclaimed(disk)
    script, _ = table_for(disk)
    # Hold the disk's lock (udev's convention, as `udevadm lock` does) while
    # its partitions change, so that udev probes the result, not a half.
    fd = os.open(disk.node, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _lock(fd, disk)
        system.run(
            [
                "sfdisk",
                "--quiet",
                "--wipe",
                "always",
                "--wipe-partitions",
                "always",
                str(disk.node),
            ],
            stdin=script,
            timeout=120,
            what=f"partition {disk.display}",
        )
        _, parts = partitions(disk)
        first = next((p for p in parts if p.number == 1), None)
        if first is None:
            raise StageFailed(f"sfdisk left no partition 1 on {disk.display}")
        region = region_of(ctx, disk, first, wait=10.0)
        _zero(region, MIB)
        if region.path == disk.node:
            _mkfs_in_image(region, filesystem)
        else:
            system.run(
                mkfs_command(filesystem, str(region.path)),
                timeout=MKFS_TIMEOUT,
                what=f"make {filesystem} on {region.display}",
            )
    finally:
        os.close(fd)


def _lock(fd: int, disk: Disk) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                raise StageFailed(f"cannot lock {disk.display}: {e.strerror}") from None
            time.sleep(0.1)


def _mkfs_in_image(region: Region, filesystem: str) -> None:
    """A disk image has no partition node: make the filesystem aside, copy it in place.

    The first MiB (superblock and signatures; zeroed before) is copied last,
    so a copy cut short leaves no filesystem the next run would take for
    finished: it formats again.
    """
    prefix = f".{region.path.name}.azagent-mkfs-"
    for stale in region.path.parent.glob(f"{prefix}*"):
        stale.unlink(missing_ok=True)  # what a run killed during mkfs left
    aside = region.path.with_name(f"{prefix}{os.getpid()}")
    try:
        with open(aside, "xb") as f:
            f.truncate(region.size)
        system.run(
            mkfs_command(filesystem, str(aside)),
            timeout=MKFS_TIMEOUT,
            what=f"make {filesystem} on {region.display}",
        )
        with open(aside, "rb") as source, open(region.path, "r+b") as target:
            first = source.read(MIB)
            target.seek(region.offset + len(first))
            while chunk := source.read(MIB):
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
            crash_point(f"the new filesystem copied to {region.display} but its first MiB")
            target.seek(region.offset)
            target.write(first)
            target.flush()
            os.fsync(target.fileno())
    finally:
        aside.unlink(missing_ok=True)


# --- the mount --------------------------------------------------------------------


def unit_name(path: str, suffix: str = "mount") -> str:
    """systemd's name for the unit of ``path`` (what ``systemd-escape --path`` prints)."""
    trimmed = "/".join(part for part in path.split("/") if part)
    if not trimmed:
        return f"-.{suffix}"
    out = []
    for i, byte in enumerate(trimmed.encode()):
        c = chr(byte)
        if c == "/":
            out.append("-")
        elif (c.isascii() and (c.isalnum() or c in ":_.")) and not (i == 0 and c == "."):
            out.append(c)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out) + f".{suffix}"


def mount_options(configured: Optional[str]) -> str:
    """ResourceDisk.MountOptions plus nofail: a missing disk never holds up the boot."""
    options = [o for o in (configured or "").split(",") if o] or ["defaults"]
    if "nofail" not in options:
        options.append("nofail")
    return ",".join(options)


def mount_unit(what: str, where: str, filesystem: str, options: str) -> str:
    return (
        "# Written by azagent's resource-disk stage from ResourceDisk.* in waagent.conf.\n"
        "# It lives in /run: at every boot the stage checks the disk again (it can come\n"
        "# back blank after a deallocation) and writes this unit again.\n"
        "[Unit]\n"
        "Description=Azure resource disk (temporary storage)\n"
        "Documentation=file:/usr/share/doc/azagent/README.md\n"
        "\n"
        "[Mount]\n"
        f"What={what}\n"
        f"Where={where}\n"
        f"Type={filesystem}\n"
        f"Options={options}\n"
    )


def check_mount_point(ctx: Context, mount_point: str) -> None:
    """Refuse a mount point something else already owns (fstab, an admin's unit)."""
    pure = PurePosixPath(mount_point)
    if str(pure) == "/" or len(pure.parts) < 2:
        raise StageFailed(f"ResourceDisk.MountPoint={mount_point} cannot be the root directory")
    normal = str(pure)
    try:
        fstab = ctx.path("/etc/fstab").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        fstab = ""
    for number, line in enumerate(fstab.splitlines(), 1):
        fields = line.split()
        if (
            len(fields) >= 2
            and not fields[0].startswith("#")
            and str(PurePosixPath(fields[1].replace("\\040", " "))) == normal
        ):
            raise StageFailed(
                f"/etc/fstab:{number} already mounts {normal}: remove that line or set "
                "ResourceDisk.MountPoint elsewhere"
            )
    name = unit_name(normal)
    if ctx.path(f"/etc/systemd/system/{name}").exists():
        raise StageFailed(f"/etc/systemd/system/{name} already mounts {normal}")


def mounted_from(ctx: Context, mount_point: str) -> Optional[disks.Mount]:
    """The mount currently on ``mount_point`` (the last one, which hides the others)."""
    found = None
    for mount in disks.mounts(ctx):
        if mount.target == mount_point:
            found = mount
    return found


def own_mount(ctx: Context, disk: Disk, mount_point: str, filesystem: str) -> bool:
    """Whether the resource filesystem is mounted at the mount point now."""
    mount = mounted_from(ctx, mount_point)
    if mount is None:
        return False
    if mount.fstype == filesystem and mount.devnum in _own_devnums(ctx, disk):
        return True
    raise StageFailed(f"{mount_point} is already a mount point, of {mount.source} ({mount.fstype})")


def plan_mount(
    ctx: Context, disk: Disk, source: str, mount_point: str, filesystem: str
) -> tuple[list[Action], bool]:
    """The mount unit's actions, and whether the filesystem is already mounted."""
    name = unit_name(mount_point)
    path = ctx.path(UNIT_DIR) / name
    options = mount_options(ctx.config.get_str("ResourceDisk.MountOptions"))
    content = mount_unit(source, mount_point, filesystem, options)
    try:
        current: Optional[str] = path.read_text(encoding="utf-8")
    except OSError:
        current = None
    actions = []
    live = ctx.live
    mounted = live and own_mount(ctx, disk, mount_point, filesystem)
    if current != content:
        actions.append(
            Action(
                f"write the mount unit {UNIT_DIR}/{name} ({source} on {mount_point}, {options})",
                functools.partial(atomic_write, path, content.encode(), mode=0o644),
            )
        )
        if live:
            actions.append(
                Action(
                    "reload systemd's units",
                    lambda: _systemctl("daemon-reload"),
                )
            )
            if mounted:
                log.info("%s is mounted: changed options apply from the next mount", mount_point)
    if live and not mounted:
        actions.append(
            Action(
                f"mount the resource disk on {mount_point} (start {name})",
                functools.partial(_start_mount, ctx, disk, name, mount_point, filesystem),
            )
        )
    elif not live:
        log.info("not mounting under --root %s", ctx.root)
    return actions, mounted


def _systemctl(*args: str) -> None:
    system.run(["systemctl", *args], timeout=180, what=f"systemctl {' '.join(args)}")


def _start_mount(ctx: Context, disk: Disk, name: str, mount_point: str, filesystem: str) -> None:
    _systemctl("start", name)
    if not own_mount(ctx, disk, mount_point, filesystem):
        raise StageFailed(f"{name} started, but {mount_point} is not mounted")


# --- on the mounted filesystem: the warning file and the swap file -------------


def plan_on_disk(ctx: Context, mount_point: str, filesystem: str) -> list[Action]:
    """The warning file and the swap file, decided from the mounted filesystem."""
    return plan_warning(ctx, mount_point) + swapfile.plan_swap(ctx, mount_point, filesystem)


def deferred_on_disk(ctx: Context, disk: Disk, mount_point: str, filesystem: str) -> Action:
    """When the disk is mounted only by this run, decide what it needs once it is."""

    def apply() -> None:
        if not own_mount(ctx, disk, mount_point, filesystem):
            raise StageFailed(f"{mount_point} is not mounted: no warning file, no swap file")
        for action in plan_on_disk(ctx, mount_point, filesystem):
            log.info("%s", action.summary)
            action.apply()

    return Action(
        f"once mounted: the data-loss warning and, if configured, the swap file on {mount_point}",
        apply,
    )


def plan_warning(ctx: Context, mount_point: str) -> list[Action]:
    path = ctx.path(mount_point) / WARNING_NAME
    if os.path.lexists(path):
        return []
    return [
        Action(
            f"write {mount_point}/{WARNING_NAME}",
            functools.partial(atomic_write, path, WARNING_TEXT, mode=0o644),
        )
    ]
