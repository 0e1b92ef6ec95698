"""The Azure resource (temporary) disk: when it may be formatted, its mount, its swap file.

The platform gives most VMs a local disk whose content is lost when the VM is
deallocated. It arrives NTFS-formatted (one partition) holding only
``DATALOSS_WARNING_README.txt``, and can come back that way, or blank, after
any deallocation. This module decides, from what the disk holds, whether it
may be formatted, and never guesses:

* a blank disk (no partition table, no filesystem signature) is formatted;
* a fresh NTFS (one partition, or a Microsoft reserved partition and one
  NTFS partition) whose only files are the warning file and "System Volume
  Information" is formatted; its content is read without mounting, by a small
  reader of the NTFS master file table below, so that the image needs no
  NTFS driver or ntfs-3g, and so that the same code reads disk images in tests;
* a disk whose first partition already holds ``ResourceDisk.Filesystem`` is
  only mounted;
* a single Linux partition without any signature (what an interrupted
  format leaves) is formatted again;
* anything else (user files on the NTFS, another filesystem, LVM, RAID, a
  disk in use, the disk holding /) is refused, with the reason.

The filesystem is mounted through a runtime mount unit in /run/systemd/system
(``nofail``): /run is empty at every boot, and the stage, which udev starts
whenever the disk appears, checks the disk again and writes the unit again.

Under ``--root`` the disk may be a regular file (a disk image): the tests
partition and format images; they never touch a real device, and the stage
never mounts or activates swap unless the root is /.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Optional

from azagent import disks, system
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.fsutil import atomic_write, crash_point
from azagent.plan import Action

log = logging.getLogger("azagent")

RESOURCE_LINK = "/dev/disk/azure/resource"
PART1_LINK = "/dev/disk/azure/resource-part1"
UNIT_DIR = "/run/systemd/system"
WARNING_NAME = "DATALOSS_WARNING_README.txt"
SWAP_NAME = "swapfile"
# Written on the resource disk's own filesystem before the swap file is
# created, so that it lives and dies with the file: a swap file without it
# was made by someone else, and azagent leaves it alone.
SWAP_RECORD = ".azagent-swapfile"
SWAP_SIGNATURE = b"SWAPSPACE2"

MIB = 1024 * 1024
GPT_ABOVE = 2 * 1024**4  # an MBR partition cannot go beyond 2 TiB
LINUX_GPT_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
NTFS_PARTITION_TYPES = ("7", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")  # MBR, GPT basic data
LINUX_PARTITION_TYPES = ("83", LINUX_GPT_TYPE)
MSR_GPT_TYPE = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"  # Microsoft reserved
# Filesystems that can hold a swap file made with fallocate(2) (unwritten
# extents); elsewhere the file is written with zeros.
FALLOCATE_SWAP = ("ext4", "xfs")
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


@dataclass(frozen=True)
class Disk:
    """The resource disk: its node (under the root) and what the kernel calls it."""

    node: Path
    display: str  # as the target system names it, e.g. /dev/sdb
    name: str  # kernel name (sdb); an image file's name under --root
    block: bool  # a real block device (False: a disk image, tests only)
    size: int


@dataclass(frozen=True)
class Region:
    """Bytes of the disk a filesystem lives in: a partition node, or a range of an image."""

    path: Path
    offset: int
    size: int
    display: str


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes from the start of the disk
    size: int
    type: str  # MBR id ("83", "7") or GPT type GUID, upper case


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


@dataclass(frozen=True)
class Assessment:
    """What to do with the disk, and why."""

    format: bool
    holds: str  # what the disk holds, in words, for the log
    source: str  # the link the filesystem is mounted from


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


# --- a minimal reader of the NTFS master file table ----------------------------


class NtfsError(Exception):
    """The NTFS is not what a fresh platform disk looks like, or is damaged."""


NTFS_OEM = b"NTFS    "
ATTR_LIST = 0x20
ATTR_FILE_NAME = 0x30
ATTR_DATA = 0x80
ATTR_END = 0xFFFFFFFF
RECORD_IN_USE = 0x01
RECORD_DIRECTORY = 0x02
FIRST_USER_RECORD = 24  # 0-15: $MFT ... $Extend's slot; 16-23: reserved
ROOT_RECORD = 5
EXTEND_RECORD = 11
DOS_NAMESPACE = 2
MAX_MFT_BYTES = 64 * MIB  # a fresh disk's MFT is a few hundred KiB
REFERENCE_MASK = (1 << 48) - 1
ALLOWED_ROOT_FILES = (WARNING_NAME.lower(),)
ALLOWED_ROOT_DIRECTORIES = ("system volume information",)


@dataclass(frozen=True)
class _Name:
    parent: int
    name: str


def _read_exact(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    data = f.read(length)
    if len(data) != length:
        raise NtfsError(f"short read at byte {offset}")
    return data


def _fixup(record: bytes, number: int) -> bytes:
    """Undo the update sequence (torn-write protection) of one MFT record."""
    usa_offset, usa_count = struct.unpack_from("<HH", record, 4)
    if (
        usa_count < 2
        or usa_offset + 2 * usa_count > len(record)
        or (usa_count - 1) * 512 > len(record)
    ):
        raise NtfsError(f"MFT record {number} has a bad update sequence")
    buf = bytearray(record)
    usn = bytes(buf[usa_offset : usa_offset + 2])
    for i in range(1, usa_count):
        end = i * 512 - 2
        if bytes(buf[end : end + 2]) != usn:
            raise NtfsError(f"MFT record {number} is torn")
        buf[end : end + 2] = buf[usa_offset + 2 * i : usa_offset + 2 * i + 2]
    return bytes(buf)


def _attributes(record: bytes, number: int) -> Iterator[tuple[int, bytes]]:
    offset = struct.unpack_from("<H", record, 0x14)[0]
    limit = min(struct.unpack_from("<I", record, 0x18)[0], len(record))
    while offset + 8 <= limit:
        kind, length = struct.unpack_from("<II", record, offset)
        if kind == ATTR_END:
            return
        if length < 16 or offset + length > limit:
            raise NtfsError(f"MFT record {number} has a malformed attribute")
        yield kind, record[offset : offset + length]
        offset += length
    raise NtfsError(f"MFT record {number} has no end marker")


def _resident_value(attribute: bytes, number: int) -> bytes:
    if attribute[8] != 0:
        raise NtfsError(f"MFT record {number}: a file name that is not resident")
    length, offset = struct.unpack_from("<IH", attribute, 0x10)
    if offset + length > len(attribute):
        raise NtfsError(f"MFT record {number} has a malformed attribute value")
    return attribute[offset : offset + length]


def _runs(attribute: bytes) -> tuple[list[tuple[Optional[int], int]], int]:
    """Decode a non-resident attribute: ([(LCN or None if sparse, clusters)], initialized size)."""
    run_offset = struct.unpack_from("<H", attribute, 0x20)[0]
    initialized = struct.unpack_from("<q", attribute, 0x38)[0]
    runs: list[tuple[Optional[int], int]] = []
    lcn = 0
    pos = run_offset
    while pos < len(attribute) and attribute[pos] != 0:
        header = attribute[pos]
        length_size, offset_size = header & 0x0F, header >> 4
        if (
            not 1 <= length_size <= 8
            or offset_size > 8
            or pos + 1 + length_size + offset_size > len(attribute)
        ):
            raise NtfsError("the MFT's run list is malformed")
        length = int.from_bytes(attribute[pos + 1 : pos + 1 + length_size], "little")
        if offset_size == 0:
            runs.append((None, length))
        else:
            start = pos + 1 + length_size
            lcn += int.from_bytes(attribute[start : start + offset_size], "little", signed=True)
            runs.append((lcn, length))
        pos += 1 + length_size + offset_size
    return runs, initialized


def ntfs_foreign_files(f: BinaryIO, base: int, size: int) -> list[str]:
    """Paths on the NTFS at byte ``base`` of ``f`` that a fresh platform disk does not have.

    Reads the boot sector, then every in-use record of the master file table,
    and keeps the files that are neither NTFS metadata (the first records,
    everything under $Extend), nor "System Volume Information" and what it
    holds, nor the warning file in the root directory. Anything it does not
    understand raises NtfsError: the caller then refuses to format.
    """
    boot = _read_exact(f, base, 512)
    if boot[3:11] != NTFS_OEM or boot[510:512] != b"\x55\xaa":
        raise NtfsError("no NTFS boot sector")
    sector = struct.unpack_from("<H", boot, 0x0B)[0]
    per_cluster = boot[0x0D]
    if per_cluster > 0x80:
        per_cluster = 1 << (256 - per_cluster)
    if sector not in (512, 1024, 2048, 4096) or per_cluster == 0 or per_cluster & (per_cluster - 1):
        raise NtfsError("a boot sector with an impossible geometry")
    cluster = sector * per_cluster
    mft_lcn = struct.unpack_from("<q", boot, 0x30)[0]
    clusters_per_record = struct.unpack_from("<b", boot, 0x40)[0]
    record_size = (
        1 << -clusters_per_record if clusters_per_record < 0 else clusters_per_record * cluster
    )
    if record_size not in (1024, 2048, 4096) or not 0 < mft_lcn * cluster < size - record_size:
        raise NtfsError("a boot sector with an impossible MFT location")

    def record_at(offset: int, number: int) -> Optional[bytes]:
        raw = _read_exact(f, base + offset, record_size)
        if raw[:4] == b"FILE":
            return _fixup(raw, number)
        if raw[:4] == b"BAAD" or (number < FIRST_USER_RECORD and raw[:4] != b"\0\0\0\0"):
            raise NtfsError(f"MFT record {number} is damaged")
        return None

    mft = record_at(mft_lcn * cluster, 0)
    if mft is None:
        raise NtfsError("no MFT record for $MFT")
    data = None
    for kind, attribute in _attributes(mft, 0):
        if kind == ATTR_LIST:
            raise NtfsError("the MFT is spread over several records, unlike a fresh disk's")
        if kind == ATTR_DATA and attribute[9] == 0:
            data = attribute
    if data is None or data[8] == 0:
        raise NtfsError("the $MFT record has no data")
    runs, initialized = _runs(data)
    if not 0 < initialized <= MAX_MFT_BYTES:
        raise NtfsError(f"an MFT of {initialized} bytes, larger than a fresh disk's")

    names: dict[int, list[_Name]] = {}
    directories: set[int] = set()
    number = 0
    total = initialized // record_size
    for lcn, clusters in runs:
        for index in range(clusters * cluster // record_size):
            if number >= total:
                break
            record = None if lcn is None else record_at(lcn * cluster + index * record_size, number)
            if record is not None and struct.unpack_from("<H", record, 0x16)[0] & RECORD_IN_USE:
                flags = struct.unpack_from("<H", record, 0x16)[0]
                owner = struct.unpack_from("<Q", record, 0x20)[0] & REFERENCE_MASK or number
                entries = names.setdefault(owner, [])
                if flags & RECORD_DIRECTORY:
                    directories.add(owner)
                for kind, attribute in _attributes(record, number):
                    if kind != ATTR_FILE_NAME:
                        continue
                    value = _resident_value(attribute, number)
                    if len(value) < 0x42 or len(value) < 0x42 + 2 * value[0x40]:
                        raise NtfsError(f"MFT record {number} has a malformed file name")
                    if value[0x41] == DOS_NAMESPACE:
                        continue
                    parent = struct.unpack_from("<Q", value, 0)[0] & REFERENCE_MASK
                    name = value[0x42 : 0x42 + 2 * value[0x40]].decode("utf-16-le", "replace")
                    entries.append(_Name(parent, name))
            number += 1
    if number < total:
        raise NtfsError("the MFT's run list is shorter than the MFT")
    return _foreign(names, directories)


def _foreign(names: dict[int, list[_Name]], directories: set[int]) -> list[str]:
    def allowed_directory(record: int) -> bool:
        """$Extend, System Volume Information, or below one of them."""
        seen: set[int] = set()
        while record not in seen and len(seen) < 64:
            seen.add(record)
            if record == EXTEND_RECORD:
                return True
            entries = names.get(record, [])
            if not entries:
                return False
            first = entries[0]
            if first.parent == ROOT_RECORD and first.name.lower() in ALLOWED_ROOT_DIRECTORIES:
                return True
            if first.parent == record:
                return False
            record = first.parent
        return False

    def path(record: int, name: str) -> str:
        parts = [name]
        seen = set()
        while record != ROOT_RECORD and record in names and names[record] and record not in seen:
            seen.add(record)
            parts.append(names[record][0].name)
            record = names[record][0].parent
        return "/" + "/".join(reversed(parts))

    foreign = []
    for record in sorted(names):
        if record < FIRST_USER_RECORD:
            continue
        if not names[record]:
            foreign.append(f"MFT record {record} (no name)")
            continue
        for entry in names[record]:
            lower = entry.name.lower()
            if allowed_directory(entry.parent):
                continue
            if entry.parent == ROOT_RECORD and lower in ALLOWED_ROOT_DIRECTORIES:
                continue
            if (
                entry.parent == ROOT_RECORD
                and lower in ALLOWED_ROOT_FILES
                and record not in directories
            ):
                continue
            foreign.append(path(entry.parent, entry.name))
    return foreign


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
    return plan_warning(ctx, mount_point) + plan_swap(ctx, mount_point, filesystem)


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


def _swap_size(path: Path) -> Optional[int]:
    """The size of a swap file azagent made and finished (mkswap ran), else None."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        page = os.sysconf("SC_PAGE_SIZE")
        with open(path, "rb") as f:
            f.seek(page - len(SWAP_SIGNATURE))
            if f.read(len(SWAP_SIGNATURE)) != SWAP_SIGNATURE:
                return None
    except OSError:
        return None
    return st.st_size


def plan_swap(ctx: Context, mount_point: str, filesystem: str) -> list[Action]:
    config = ctx.config
    enabled = config.get_bool("ResourceDisk.EnableSwap")
    size_mb = config.get_int("ResourceDisk.SwapSizeMB") or 0
    encrypt = config.get_bool("ResourceDisk.EnableSwapEncryption")
    live = ctx.live
    display = f"{mount_point.rstrip('/')}/{SWAP_NAME}"
    path = ctx.path(display)
    record = ctx.path(mount_point) / SWAP_RECORD
    exists = os.path.lexists(path)
    ours = record.exists()
    active = display in disks.active_swaps(ctx)
    actions: list[Action] = []

    wanted = enabled and size_mb > 0 and not encrypt
    if enabled and size_mb <= 0:
        log.warning(
            "ResourceDisk.EnableSwap=y but ResourceDisk.SwapSizeMB=%s: no swap file", size_mb
        )
    if exists and not ours:
        if wanted:
            actions.append(_failure(f"{display} exists and azagent did not create it: left alone"))
        return actions
    if not wanted:
        if ours:
            actions.append(
                Action(
                    f"remove the swap file {display} azagent created (no swap configured)",
                    functools.partial(_remove_swap, path, record, active and live),
                )
            )
        if enabled and encrypt:
            actions.append(
                _failure(
                    "ResourceDisk.EnableSwapEncryption=y is not supported yet: no swap file "
                    "(an unencrypted one would contradict the setting)"
                )
            )
        return actions

    size = size_mb * MIB
    current = _swap_size(path) if exists else None
    if current != size:
        if current is None:
            summary = f"create the swap file {display} ({size_mb} MiB, mode 0600)"
        else:
            summary = f"resize the swap file {display} from {current // MIB} to {size_mb} MiB"
        actions.append(
            Action(
                summary,
                functools.partial(
                    _make_swap,
                    path,
                    record,
                    size,
                    filesystem=filesystem,
                    deactivate=active and live,
                    mount_point=mount_point,
                ),
            )
        )
        active = False
    if live and not active:
        actions.append(
            Action(
                f"activate the swap file {display}",
                functools.partial(_swapon, path, display),
            )
        )
    elif not live and not active:
        log.info("not activating swap under --root %s", ctx.root)
    return actions


def _failure(reason: str) -> Action:
    """An action that fails the run with ``reason`` once the changes before it are made."""

    def fail() -> None:
        raise StageFailed(reason)

    return Action(f"refuse: {reason}", fail)


def _swapon(path: Path, display: str) -> None:
    system.run(["swapon", str(path)], timeout=120, what=f"swapon {display}")


def _remove_swap(path: Path, record: Path, deactivate: bool) -> None:
    if deactivate:
        system.run(["swapoff", str(path)], timeout=600, what=f"swapoff {path}")
    path.unlink(missing_ok=True)
    record.unlink(missing_ok=True)


def _make_swap(
    path: Path, record: Path, size: int, *, filesystem: str, deactivate: bool, mount_point: str
) -> None:
    """A new swap file: root-only from its first byte, every block allocated, mkswap-ed."""
    if deactivate:
        system.run(["swapoff", str(path)], timeout=600, what=f"swapoff {path}")
    # The record first: whatever happens next, the file at this path is ours.
    atomic_write(
        record,
        (json.dumps({"created_by": "azagent", "file": SWAP_NAME}) + "\n").encode(),
        mode=0o600,
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        # Exactly 0600 whatever the umask (which can only have narrowed it).
        os.fchmod(fd, 0o600)
        if filesystem in FALLOCATE_SWAP:
            os.posix_fallocate(fd, 0, size)
        else:
            _write_zeros(fd, size)
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EFBIG):
            raise StageFailed(
                f"not enough space on {mount_point} for a swap file of {size // MIB} MiB "
                f"({e.strerror})"
            ) from None
        raise
    os.close(fd)
    crash_point(f"swap file {path} allocated, mkswap not run yet")
    system.run(["mkswap", str(path)], timeout=600, what=f"mkswap {path}")


def _write_zeros(fd: int, size: int) -> None:
    chunk = bytes(MIB)
    written = 0
    while written < size:
        written += os.write(fd, chunk[: min(MIB, size - written)])
