"""File writes that never leave a half-written or briefly world-readable file.

And, for the files written for someone else (a user's keys), a walk by
directory descriptor that never follows a link they could have placed.

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
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from azagent.errors import AzagentError, LockBusy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

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
        import signal

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
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _remove_stale_temps_at(dir_fd, path.name)
    finally:
        os.close(dir_fd)


def _remove_stale_temps_at(dir_fd: int, name: str) -> None:
    """:func:`_remove_stale_temps` for ``name`` in the directory ``dir_fd``."""
    prefix = f".{name}{_TEMP_INFIX}"
    try:
        entries = [entry.name for entry in os.scandir(dir_fd)]
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(_TEMP_SUFFIX)):
            continue
        if not entry[len(prefix) : -len(_TEMP_SUFFIX)].isdigit():
            continue
        try:
            if not stat.S_ISREG(os.lstat(entry, dir_fd=dir_fd).st_mode):
                continue  # not one of ours (they are all regular files): never opened
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(entry, flags, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue  # not one of ours: they are all regular files
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.lstat(entry, dir_fd=dir_fd).st_ino:
                os.unlink(entry, dir_fd=dir_fd)
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
            _fill(fd, data, mode=mode, owner=owner)
            crash_point(f"{tmp} written, not yet renamed to {path.name}")
            os.rename(tmp, path)
        finally:
            os.close(fd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fill(fd: int, data: bytes, *, mode: int, owner: Owner) -> None:
    """Give a new temporary file its final owner and mode, then ``data``, then fsync."""
    if owner is not None:
        os.fchown(fd, *owner)
    os.fchmod(fd, mode)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


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


# --- Walking by descriptor, never through a link ------------------------------------------
#
# For the files azagent writes for someone else (a user's keys, a user's
# home): each component is opened relative to the directory before it with
# O_NOFOLLOW, so a link swapped in at any moment is refused instead of
# followed, and the final writes happen within the descriptor of the
# directory that was checked.


class UnsafePath(AzagentError):
    """A path holds a symbolic link azagent does not follow, or is not what it must be."""


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINKS = 40


def _missing(shown: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)


def open_dir_at(dir_fd: int, name: str, shown: str) -> int:
    """Open the directory ``name`` of ``dir_fd`` without following a link.

    ``shown`` is the path errors name. FileNotFoundError when it does not
    exist, :class:`UnsafePath` when it is a symbolic link or no directory.
    """
    if not name or "/" in name or name in (".", ".."):
        raise UnsafePath(f"{shown}: {name!r} is not a single path component")
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise _missing(shown) from None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"cannot open {shown}: {e.strerror}") from None
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        raise UnsafePath(f"cannot open {shown}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{shown} is a symbolic link, which azagent does not follow here")
    raise UnsafePath(f"{shown} is not a directory")


def refuse_link_at(dir_fd: int, name: str, shown: str) -> None:
    """Refuse ``name`` of ``dir_fd`` if it is a symbolic link (missing is fine)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UnsafePath(f"cannot look at {shown}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{shown} is a symbolic link, which azagent does not follow here")


def _only_root_writes(fd: int, shown: str, link: str) -> None:
    st = os.fstat(fd)
    if st.st_uid != 0:
        raise UnsafePath(
            f"{shown} is owned by uid {st.st_uid}: the symbolic link {link} is not followed"
        )
    if st.st_mode & 0o022:
        who = "others" if st.st_mode & 0o002 else "its group"
        raise UnsafePath(f"{shown} is writable by {who}: the symbolic link {link} is not followed")


def open_directory(root: Path, path: str, *, follow_root_links: bool = False) -> int:
    """A descriptor of the directory ``path`` (absolute, ``root`` taken as /).

    Walked from ``root`` one component at a time (:func:`open_dir_at`): no
    symbolic link is followed. With ``follow_root_links``, a link only root
    can have made is: one owned by root in a directory of root's that its
    group and others cannot write, and every directory reached through it
    must be so too (Fedora Atomic and RHEL image mode have /home ->
    var/home). Its target is walked the same way: an absolute one starts
    again at ``root``, ``..`` never climbs above it. FileNotFoundError names
    the first missing component; :class:`UnsafePath` any other refusal.
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    names: list[str] = []
    via: Optional[str] = None  # the link the walk went through, for messages
    links = 0
    try:
        while pending:
            part = pending.pop(0)
            if part == "..":
                if len(fds) > 1:
                    os.close(fds.pop())
                    names.pop()
                continue
            here = "/" + "/".join(names)
            shown = "/" + "/".join([*names, part])
            if follow_root_links:
                try:
                    st = os.stat(part, dir_fd=fds[-1], follow_symlinks=False)
                except FileNotFoundError:
                    raise _missing(shown) from None
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_LINKS:
                        raise UnsafePath(f"{shown}: too many levels of symbolic links")
                    if st.st_uid != 0:
                        raise UnsafePath(
                            f"the symbolic link {shown} is owned by uid {st.st_uid}: not followed"
                        )
                    _only_root_writes(fds[-1], here, shown)
                    via = via or shown
                    target = os.readlink(part, dir_fd=fds[-1])
                    if target.startswith("/"):
                        for fd in fds[1:]:
                            os.close(fd)
                        del fds[1:]
                        names.clear()
                    pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
                    continue
            # Never follows: a link swapped in since the look above is refused.
            fds.append(open_dir_at(fds[-1], part, shown))
            names.append(part)
            if via is not None:
                _only_root_writes(fds[-1], shown, via)
        return os.dup(fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


def make_dir_at(dir_fd: int, name: str, shown: str, *, mode: int, owner: Owner) -> int:
    """Create the directory ``name`` of ``dir_fd`` with ``owner`` and ``mode``; its descriptor.

    Created 0700 and opened without following a link (anything already
    there, a link included, makes it fail), then given its owner and mode
    through the descriptor.
    """
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = open_dir_at(dir_fd, name, shown)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write_at(
    dir_fd: int, name: str, data: bytes, *, mode: int = 0o644, owner: Owner = None
) -> None:
    """Replace ``name`` in the directory ``dir_fd`` with ``data`` atomically.

    As :func:`atomic_write`, but every step is relative to the descriptor:
    the temporary file is created there (O_EXCL, O_NOFOLLOW) with its final
    owner and mode, renamed over ``name`` in the same directory (a link
    there would be replaced, never written through), and the directory is
    fsynced through the descriptor.
    """
    _remove_stale_temps_at(dir_fd, name)
    tmp = f".{name}{_TEMP_INFIX}{os.getpid()}{_TEMP_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        # Planted under this process's name (a live writer of ours would be
        # this process): unlink removes the entry itself, whatever it is.
        os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            with suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)  # debris to the next writer only once we die
            _fill(fd, data, mode=mode, owner=owner)
            crash_point(f"{tmp} written, not yet renamed to {name}")
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(fd)  # the flock goes with it, after the rename
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)
