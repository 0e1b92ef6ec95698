"""A minimal reader of an NTFS master file table: what files a volume holds, without mounting it.

The platform hands a VM its resource disk NTFS-formatted, holding only
:data:`WARNING_NAME`; azagent formats it only when that is still all it
holds. This reader lists the volume's files from the master file table
itself, so that the image needs no NTFS driver or ntfs-3g, and so that the
same code reads disk images in tests. It is pure: it reads from a file
object (a device or an image, at any offset) and never writes.

It understands the NTFS a fresh platform disk has (one MFT record for $MFT,
resident file names) and raises :class:`NtfsError` on anything else, which
the caller takes as "not fresh".
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, Final, Optional

# The one file the platform puts on a fresh resource disk.
WARNING_NAME = "DATALOSS_WARNING_README.txt"


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
MAX_MFT_BYTES = 64 * 1024 * 1024  # a fresh disk's MFT is a few hundred KiB
REFERENCE_MASK = (1 << 48) - 1
ALLOWED_ROOT_FILES = (WARNING_NAME.lower(),)
ALLOWED_ROOT_DIRECTORIES = ("system volume information",)


class _Name:
    __slots__ = ("name", "parent")

    def __init__(self, parent: int, name: str) -> None:
        self.parent: Final = parent
        self.name: Final = name


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
