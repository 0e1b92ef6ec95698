"""File writes that never leave a half-written or briefly world-readable file.

A write may be cut short at any point (power loss, SIGKILL, the OOM killer):
what it leaves must be something the next run recognizes and finishes. So a
file appears only complete (written aside, then renamed), a directory only
with its final mode, and the temporary files of a writer that died are
removed by the next writer of the same file. The crash-consistency tests
(tests/test_crash.py) kill stages at every :func:`crash_point` in turn to
hold this.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Optional

from azagent.errors import LockBusy

Owner = Optional[tuple[int, int]]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- crash points: a test hook ------------------------------------------------------
#
# The places where a crash leaves something the next run has to cope with: a
# temporary file written but not renamed, a command that ran but whose
# effect is not recorded yet, a step of a stage about to be applied. The
# runner arms them only for tests (AZAGENT_TEST_CRASH_AT, never when the root
# is /, see azagent.stage); unarmed, crash_point() only returns.

_crash_at: Optional[int] = None
_crash_points_passed = 0


def arm_crash_points(at: int) -> None:
    """Test hook: SIGKILL this process at the ``at``-th crash point it reaches (1-based)."""
    global _crash_at, _crash_points_passed
    _crash_at = at
    _crash_points_passed = 0


def crash_points_passed() -> Optional[int]:
    """How many crash points this process passed since they were armed (None: unarmed)."""
    return None if _crash_at is None else _crash_points_passed


def crash_point(where: str) -> None:
    """A point where a crash must leave a state the next run finishes; inert unless armed."""
    global _crash_points_passed
    if _crash_at is None:
        return
    _crash_points_passed += 1
    if _crash_points_passed == _crash_at:
        sys.stderr.write(f"azagent test hook: crash point {_crash_at}: {where}: SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def ensure_dir(path: Path, *, mode: int = 0o755, owner: Owner = None) -> bool:
    """Create ``path`` (and missing parents, 0755 root-owned) with ``mode``.

    Returns whether anything was created. An existing directory is left as it
    is: its owner and mode are the administrator's. So a directory is made
    with its final mode at once (only a restrictive umask narrows it, fixed
    right after): one that a crash left 0700 would stay 0700. With an
    ``owner``, it is made 0700 and opened up only once given to that owner,
    so nobody sees it with the wrong owner in between.
    """
    if path.is_dir():
        return False
    ensure_dir(path.parent)
    try:
        os.mkdir(path, mode if owner is None else 0o700)
    except FileExistsError:
        return False
    crash_point(f"directory {path} made")
    if owner is not None:
        os.chown(path, *owner)
    if owner is not None or stat.S_IMODE(os.stat(path).st_mode) != mode:
        os.chmod(path, mode)
    return True


# A filesystem without flock (some FUSE and network filesystems).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)
_TEMP_INFIX = ".azagent-"
_TEMP_SUFFIX = ".tmp"


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}{_TEMP_INFIX}{os.getpid()}{_TEMP_SUFFIX}"


def _remove_stale_temps(path: Path) -> None:
    """Remove what writers of ``path`` that died left: their unlocked temporary files.

    A writer holds an flock on its temporary file from creation to rename,
    and the kernel drops it when the writer dies however it dies, so an
    unlocked one is debris. A pid in the name is no proof either way: pids
    are reused, early in every boot most of all.
    """
    prefix = f".{path.name}{_TEMP_INFIX}"
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):
            continue
        if not name[len(prefix) : -len(_TEMP_SUFFIX)].isdigit():
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue  # not one of ours: they are all regular files
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.lstat(entry.path).st_ino:
                os.unlink(entry.path)
        except OSError:
            pass  # a live writer holds it, or it went away meanwhile
        finally:
            os.close(fd)


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new temporary file next to ``path``, mode 0600, held under flock (see above)."""
    _remove_stale_temps(path)
    tmp = _temp_path(path)
    for _ in range(3):
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno in _NO_LOCKS:
                return tmp, fd  # such a filesystem keeps the debris: nobody can tell
            os.close(fd)
            raise
        except BaseException:
            os.close(fd)
            raise
        if os.fstat(fd).st_nlink > 0:
            return tmp, fd
        os.close(fd)  # another writer's clean-up took it for debris: make it again
    raise OSError(errno.EAGAIN, f"cannot keep a temporary file next to {path}")


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, owner: Owner = None) -> None:
    """Replace ``path`` with ``data`` atomically.

    The temporary file is created in the same directory with mode 0600, given
    its final owner and mode before a single byte is written, fsynced and
    renamed over ``path``; the directory is then fsynced so the rename
    survives a crash. ``owner`` None keeps the writer's own uid and gid. A
    temporary file that a writer killed before its rename left behind is
    removed by the next write of ``path``.
    """
    directory = path.parent
    ensure_dir(directory)
    tmp, fd = _create_temp(path)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            crash_point(f"{tmp} written, not yet renamed to {path.name}")
            os.rename(tmp, path)
        finally:
            os.close(fd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def read_bytes_limited(path: Path, limit: int) -> bytes:
    """Read at most ``limit`` bytes of ``path``; larger files are an error."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


@contextmanager
def exclusive_lock(path: Path, *, timeout: float = 30.0) -> Iterator[None]:
    """Hold an flock on ``path`` for the duration of the block.

    Waits at most ``timeout`` seconds, polling, so that a hung run of the
    same stage is reported instead of hanging the boot.
    """
    ensure_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    raise LockBusy(
                        f"another run holds {path}"
                        + (f" (pid {holder})" if holder else "")
                        + f" after waiting {timeout:g} s"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
