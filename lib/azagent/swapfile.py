"""The swap file on the resource disk (``ResourceDisk.EnableSwap``).

``<mount point>/swapfile`` of ``ResourceDisk.SwapSizeMB`` MiB: root-only
from its first byte, every block allocated (never sparse), resized when the
size changes, removed when swap is turned off. A record file written on the
same filesystem before the swap file is created marks it as azagent's: a
swap file without it was made by someone else and is never touched.

Under ``--root`` the file is created in the tree but never activated.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from pathlib import Path

from azagent import disks, system
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.fsutil import atomic_write, crash_point
from azagent.journal import log
from azagent.plan import Action

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


SWAP_NAME = "swapfile"
# Written on the resource disk's own filesystem before the swap file is
# created, so that it lives and dies with the file: a swap file without it
# was made by someone else, and azagent leaves it alone.
SWAP_RECORD = ".azagent-swapfile"
SWAP_SIGNATURE = b"SWAPSPACE2"
MIB = 1024 * 1024
# Filesystems that can hold a swap file made with fallocate(2) (unwritten
# extents); elsewhere the file is written with zeros.
FALLOCATE_SWAP = ("ext4", "xfs")


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
    import json

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
