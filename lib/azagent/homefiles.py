"""Files azagent writes in a user's home: reached by descriptor, never through a link.

The SSH keys the platform gives the provisioned user (:mod:`azagent.sshkeys`)
are written into a home the user owns, where any directory or file can be
replaced by a symbolic link at any moment. So, whatever the input:

* The home is opened from the root down by directory descriptor
  (:func:`azagent.fsutil.open_directory`): above it only a link root made is
  followed (Fedora Atomic's ``/home -> var/home``); the home itself must be
  a directory, not a link, owned by the user or root.
* Below it each component is opened relative to the one before with
  O_NOFOLLOW: a link is refused wherever it points, back into the home too.
  Missing directories are created the user's, 0700.
* Every read and every write walks again from the root, and a file is
  written within the descriptor of the directory walked to (temporary file
  created with its final owner and mode, renamed in place), so a link
  swapped in after planning is refused, and one swapped in during the write
  changes nothing.
* An existing file is read only if it is a regular file with a single link,
  owned by the user or root, of bounded size.

Paths are absolute and already known to be inside the home (the callers
check that lexically, ``..`` refused).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from azagent.context import Context
from azagent.errors import AzagentError
from azagent.fsutil import (
    UnsafePath,
    atomic_write_at,
    make_dir_at,
    open_dir_at,
    open_directory,
    refuse_link_at,
)
from azagent.plan import Action
from azagent.users import Account

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final, Optional

MAX_EXISTING_BYTES = 1024 * 1024
DIR_MODE = 0o700


class HomeFileError(AzagentError):
    """A file in a user's home cannot be read or written safely; the reason names the path."""


def owner(account: Account) -> tuple[int, int]:
    return (account.uid, account.gid)


def _home_parts(account: Account, path: str) -> tuple[str, ...]:
    """The components of ``path`` below the home (the caller put it inside)."""
    return PurePosixPath(path).relative_to(PurePosixPath(account.home)).parts


def open_home(root: Path, account: Account) -> int:
    """A descriptor of the user's home, reached without following a link someone else made.

    Above the home only links root made are followed
    (:func:`azagent.fsutil.open_directory`); the home itself must be a
    directory, not a link, owned by the user or root.
    """
    home = PurePosixPath(account.home)
    try:
        parent = open_directory(root, str(home.parent), follow_root_links=True)
        try:
            fd = open_dir_at(parent, home.name, str(home))
        finally:
            os.close(parent)
    except FileNotFoundError:
        raise HomeFileError(
            f"the home directory of {account.name} ({account.home}) does not exist"
        ) from None
    except UnsafePath as e:
        raise HomeFileError(f"the home directory of {account.name}: {e.reason}") from None
    except OSError as e:
        raise HomeFileError(f"cannot open the home {account.home}: {e.strerror}") from None
    uid = os.fstat(fd).st_uid
    if uid not in (account.uid, 0):
        os.close(fd)
        raise HomeFileError(
            f"the home directory of {account.name} ({account.home}) is owned by uid {uid}"
        )
    return fd


def _open_directory(
    root: Path, account: Account, parts: Sequence[str], *, create: bool
) -> Optional[int]:
    """The directory ``parts`` below the home, walked without following a link.

    None when it does not exist, unless ``create``: then the missing
    directories are made, the user's, 0700.
    """
    fd = open_home(root, account)
    shown = PurePosixPath(account.home)
    try:
        for part in parts:
            shown /= part
            try:
                child = open_dir_at(fd, part, str(shown))
            except FileNotFoundError:
                if not create:
                    return None
                child = make_dir_at(fd, part, str(shown), mode=DIR_MODE, owner=owner(account))
            os.close(fd)
            fd = child
        opened, fd = fd, -1
        return opened
    except UnsafePath as e:
        raise HomeFileError(e.reason) from None
    except OSError as e:
        raise HomeFileError(f"cannot create {shown}: {e.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)


@contextlib.contextmanager
def _in_directory(
    root: Path, account: Account, path: str, *, create: bool = False
) -> Iterator[tuple[Optional[int], str]]:
    """(descriptor of the directory of ``path`` or None when missing, the file's name)."""
    parts = _home_parts(account, path)
    fd = _open_directory(root, account, parts[:-1], create=create)
    try:
        yield fd, parts[-1]
    finally:
        if fd is not None:
            os.close(fd)


def _refuse_link(fd: int, name: str, path: str) -> None:
    try:
        refuse_link_at(fd, name, path)
    except UnsafePath as e:
        raise HomeFileError(e.reason) from None


def check_path(root: Path, account: Account, path: str) -> None:
    """Refuse ``path`` (inside the home) when a link or a non-directory is on its way.

    No component is followed if it is a symbolic link, not even one that
    points back into the home: the user owns the home and can swap any of
    them. Missing directories are fine; they are created when installing.
    """
    with _in_directory(root, account, path) as (fd, name):
        if fd is not None:
            _refuse_link(fd, name, path)


class HomeFile:
    """One file to write in the user's home; ``data`` may be a private key (never shown)."""

    __slots__ = ("data", "mode", "path", "same", "summary")

    def __init__(
        self,
        path: str,  # absolute, inside the home; also what messages name
        data: bytes,
        mode: int,
        summary: str,
        # Whether the existing content already is what is wanted (a private key
        # re-serialized differs byte-wise but not in substance).
        same: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.path: Final = path
        self.data: Final = data
        self.mode: Final = mode
        self.summary: Final = summary
        self.same: Final = same


def _read_at(
    fd: int, name: str, path: str, account: Account
) -> Optional[tuple[bytes, os.stat_result]]:
    """The current content and status of a file we are about to replace, if any.

    Refuses what could make us copy someone else's file into the user's:
    a symbolic link (never followed), anything but a regular file with a
    single link, a file of another user.
    """
    try:
        file_fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd
        )
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise HomeFileError(
                f"{path} is a symbolic link, which azagent does not follow here"
            ) from None
        raise HomeFileError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(file_fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise HomeFileError(f"{path} exists and is not a regular file")
        if st.st_nlink != 1:
            raise HomeFileError(f"{path} has {st.st_nlink} hard links; refusing to rewrite it")
        if st.st_uid not in (account.uid, 0):
            raise HomeFileError(f"{path} is owned by uid {st.st_uid}, not by {account.name}")
        data = f.read(MAX_EXISTING_BYTES + 1)
    if len(data) > MAX_EXISTING_BYTES:
        raise HomeFileError(f"{path} is larger than {MAX_EXISTING_BYTES} bytes")
    return data, st


def read_existing(
    root: Path, account: Account, path: str
) -> Optional[tuple[bytes, os.stat_result]]:
    """The content and status of ``path`` in the home, None when it does not exist."""
    with _in_directory(root, account, path) as (fd, name):
        return None if fd is None else _read_at(fd, name, path, account)


def _is_right(st: os.stat_result, mode: int, account: Account) -> bool:
    return stat.S_IMODE(st.st_mode) == mode and (st.st_uid, st.st_gid) == owner(account)


def _install(ctx: Context, account: Account, wanted: HomeFile) -> None:
    """Write one file, walking again from the root: the home is the user's, it may have changed."""
    with _in_directory(ctx.root, account, wanted.path, create=True) as (fd, name):
        assert fd is not None
        _refuse_link(fd, name, wanted.path)
        try:
            atomic_write_at(fd, name, wanted.data, mode=wanted.mode, owner=owner(account))
        except OSError as e:
            raise HomeFileError(f"cannot write {wanted.path}: {e.strerror}") from None


def _fix_directory(root: Path, account: Account, directory: str) -> None:
    fd = _open_directory(root, account, _home_parts(account, directory), create=False)
    if fd is None:
        raise HomeFileError(f"{directory} disappeared while it was being fixed")
    try:
        os.fchown(fd, *owner(account))
        os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


def plan_files(ctx: Context, account: Account, files: Iterable[HomeFile]) -> list[Action]:
    """The actions that make each file as wanted, its directory the user's and 0700."""
    actions: list[Action] = []
    fixed: set[str] = set()
    for wanted in files:
        parent = str(PurePosixPath(wanted.path).parent)
        with _in_directory(ctx.root, account, wanted.path) as (fd, name):
            if fd is None:
                existing = None
            else:
                if parent != str(PurePosixPath(account.home)) and parent not in fixed:
                    st = os.fstat(fd)
                    if not _is_right(st, DIR_MODE, account):
                        fixed.add(parent)
                        actions.append(
                            Action(
                                f"make {parent} owned by {account.name} with mode 0700 "
                                f"(was uid {st.st_uid} mode {stat.S_IMODE(st.st_mode):04o})",
                                functools.partial(_fix_directory, ctx.root, account, parent),
                            )
                        )
                existing = _read_at(fd, name, wanted.path, account)
        if existing is not None:
            data, st = existing
            same = wanted.same(data) if wanted.same is not None else data == wanted.data
            if same and _is_right(st, wanted.mode, account):
                continue
        actions.append(Action(wanted.summary, functools.partial(_install, ctx, account, wanted)))
    return actions
