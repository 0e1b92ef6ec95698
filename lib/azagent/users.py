"""Local accounts: the provisioned user, its password, sudo rights, root's password.

Reads go straight to the target's ``/etc/passwd``, ``/etc/group`` and
``/etc/shadow`` (never NSS: under ``--root`` the host's accounts are not the
image's). Changes go through the distribution's shadow-utils so that their
locking, backups, login.defs policy (UID_MIN, HOME_MODE, ...), SELinux labels
and nscd/sssd cache flushes apply:

* ``useradd`` and ``usermod`` take ``--prefix DIR`` for a root other than
  ``/``: they edit ``DIR/etc/*`` and create the home under ``DIR`` without a
  chroot (shadow-utils >= 4.6; Debian 12 has 4.13, RHEL 9 4.9). With a prefix
  they would still copy the *host's* /etc/skel, so the image's skeleton is
  always passed with ``-k``, which both versions take verbatim.
* ``chpasswd`` has no ``--prefix`` before 4.14, so it gets ``--root DIR``
  (it chroots itself after start-up; it needs nothing from the image). It is
  the only tool that takes a hash on stdin: ``usermod -p`` would put the hash
  in argv, readable by every user in /proc.

chpasswd writes the hash into /etc/passwd (world-readable) when the account
is not shadowed, so :func:`set_password_hash` refuses unless the passwd field
is ``x`` and /etc/shadow exists and is not world-readable.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

from azagent import names, system
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.fsutil import (
    UnsafePath,
    atomic_write,
    ensure_dir,
    open_directory,
    refuse_link_at,
)
from azagent.journal import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Optional


ACCOUNTS = "/etc/passwd"
# The passwd field of an account whose hash lives in /etc/shadow.
SHADOWED = "x"
GROUP = "/etc/group"
SHADOW = "/etc/shadow"
SKEL = "/etc/skel"
LOGIN_DEFS = ("/etc/login.defs", "/usr/etc/login.defs")
DEFAULT_UID_MIN = 1000
# Accounts and groups the distributions create for themselves. Provisioning
# one of them as the administrator would hand a daemon's identity (its files,
# its processes) to a login, whatever Provisioning.AllowResetSysUser says.
RESERVED_NAMES = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news",
        "uucp", "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody",
        "nogroup", "nfsnobody", "_apt", "adm", "admin", "shutdown", "halt", "operator",
        "ftp", "sshd", "messagebus", "dbus", "polkitd", "systemd-network",
        "systemd-resolve", "systemd-timesync", "systemd-coredump", "systemd-journal",
        "syslog", "tss", "chrony", "_chrony", "rpc", "rpcuser", "sudo", "wheel",
        "shadow", "tty", "disk", "kmem", "utmp", "staff", "users", "input", "kvm",
        "render", "audio", "video", "cdrom", "floppy", "dialout", "plugdev", "netdev",
        "docker", "lxd", "ssh_keys",
    }
)  # fmt: skip
# The group that grants administration, in order of preference: Debian and
# Ubuntu configure %sudo in /etc/sudoers, the RHEL family %wheel.
ADMIN_GROUPS = ("sudo", "wheel")
SUDOERS_FILE = "waagent"
SHELLS = (("/bin/bash", ("/bin/bash", "/usr/bin/bash")), ("/bin/sh", ()))
# A password field that holds no hash at all: '!' and '*' in any mix, and
# WALinuxAgent's own '*LOCK*'.
_ERASED = re.compile(r"[!*]+(?:LOCK\*)?")
# A crypt(3) hash as libxcrypt writes one; never a ':' or a newline, which
# would corrupt /etc/shadow through chpasswd's input.
_HASH = re.compile(r"\$[0-9a-z]+\$[./0-9A-Za-z$=,]+")


class InvalidUserName(StageFailed):
    """The provisioned user name cannot be used for a local account."""


class Account:
    """One line of /etc/passwd, field by field."""

    __slots__ = ("gid", "home", "name", "password", "shell", "uid")

    def __init__(  # noqa: PLR0917 (the fields of a passwd line, in their order)
        self,
        name: str,
        password: str,  # the passwd field: 'x' when the hash lives in /etc/shadow
        uid: int,
        gid: int,
        home: str,
        shell: str,
    ) -> None:
        self.name: Final = name
        self.password: Final = password
        self.uid: Final = uid
        self.gid: Final = gid
        self.home: Final = home
        self.shell: Final = shell

    def _fields(self) -> tuple[object, ...]:
        return (self.name, self.password, self.uid, self.gid, self.home, self.shell)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Account):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())


class Group:
    __slots__ = ("gid", "members", "name")

    def __init__(self, name: str, gid: int, members: tuple[str, ...]) -> None:
        self.name: Final = name
        self.gid: Final = gid
        self.members: Final = members


def check_name(name: str) -> None:
    """Raise saying why ``name`` cannot be the provisioned user.

    The syntax is the one rule of :mod:`azagent.names` (InvalidName); the
    distributions' own account names are this module's (InvalidUserName).
    """
    names.user_name(name, "the provisioned user")
    if name in RESERVED_NAMES:
        shown = names.shown(name)
        raise InvalidUserName(f"the provisioned user: {shown} is reserved for the system")


def check_existing_account(ctx: Context, account: Account) -> None:
    """Raise saying why the existing ``account`` cannot be the provisioned user.

    A uid 0 account is root whatever its name, and never provisioned, nor
    one whose home is a uid 0 account's (its authorized_keys would be
    root's); a system account (uid below UID_MIN) only with
    Provisioning.AllowResetSysUser=y. create-user adopts nothing else, and
    the stages that place keys apply the same rules when create-user is
    masked.
    """
    name = account.name
    if account.uid == 0:
        raise InvalidUserName(f"user {name!r} has uid 0: it is root, never provisioned")
    for other in accounts(ctx).values():
        if other.uid == 0 and _same_directory(ctx, other.home, account.home):
            # Its keys would be read for root too: they would log in as root.
            raise InvalidUserName(
                f"user {name!r} has the home of {other.name} ({other.home}), which has uid 0"
            )
    minimum = uid_min(ctx)
    if account.uid < minimum and not ctx.config.get_bool("Provisioning.AllowResetSysUser"):
        raise StageFailed(
            f"user {name!r} is an existing system account (uid {account.uid} < "
            f"UID_MIN {minimum}); set Provisioning.AllowResetSysUser=y to reuse it"
        )


def _same_directory(ctx: Context, first: str, second: str) -> bool:
    """Whether two homes of /etc/passwd name the same directory (spelled alike, or on disk)."""
    one, other = (PurePosixPath("/" + path.lstrip("/")) for path in (first, second))
    if one == other:
        return True
    try:
        return os.path.samefile(ctx.path(str(one)), ctx.path(str(other)))
    except (OSError, ValueError):
        return False


def check_new_home(ctx: Context, home: str) -> None:
    """Refuse a home useradd would reach through a link it must not follow.

    useradd creates the home and copies the skeleton into it, the user's, by
    path. Above the home only links root made are followed
    (:func:`azagent.fsutil.open_directory`); the home itself must not be a
    link nor anything but a directory; and under ``--root`` the directory
    must be the one the host's kernel reaches too (an absolute link would
    lead useradd out of the root). Directories still missing are fine:
    checked again once made, right before useradd.
    """
    parent = PurePosixPath(home).parent
    try:
        fd = _open_existing(ctx.root, parent)
    except UnsafePath as e:
        raise StageFailed(f"the home {home}: {e.reason}") from None
    if fd is None:
        return
    try:
        try:
            refuse_link_at(fd, PurePosixPath(home).name, home)
            st = os.stat(PurePosixPath(home).name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except UnsafePath as e:
            raise StageFailed(e.reason) from None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise StageFailed(f"the home {home} exists and is not a directory")
        walked = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        seen = ctx.path(str(parent)).stat()
    except OSError as e:
        raise StageFailed(f"cannot look at {parent}: {e.strerror}") from None
    if (seen.st_dev, seen.st_ino) != (walked.st_dev, walked.st_ino):
        raise StageFailed(f"{parent} leads out of {ctx.root} through an absolute symbolic link")


def _open_existing(root: Path, directory: PurePosixPath) -> Optional[int]:
    """open_directory of ``directory``, or of its nearest existing ancestor (None if none)."""
    for candidate in (directory, *directory.parents):
        try:
            fd = open_directory(root, str(candidate), follow_root_links=True)
        except FileNotFoundError:
            continue
        if candidate != directory:
            os.close(fd)
            return None
        return fd
    return None


def _lines(ctx: Context, path: str) -> list[list[str]]:
    """The ':'-separated records of one of the account files (missing: none)."""
    try:
        text = ctx.path(path).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StageFailed(f"cannot read {path}: {e.strerror}") from None
    # '+' and '-' lines are NIS compat entries, not local accounts.
    return [
        line.split(":")
        for line in text.splitlines()
        if line and not line.startswith(("#", "+", "-"))
    ]


def accounts(ctx: Context) -> dict[str, Account]:
    """The local accounts of the target's /etc/passwd, by name."""
    found: dict[str, Account] = {}
    for fields in _lines(ctx, ACCOUNTS):
        if len(fields) < 7:
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        found.setdefault(fields[0], Account(fields[0], fields[1], uid, gid, fields[5], fields[6]))
    return found


def groups(ctx: Context) -> dict[str, Group]:
    """The target's /etc/group, by name."""
    found: dict[str, Group] = {}
    for fields in _lines(ctx, GROUP):
        if len(fields) < 4:
            continue
        try:
            gid = int(fields[2])
        except ValueError:
            continue
        members = tuple(m for m in fields[3].split(",") if m)
        found.setdefault(fields[0], Group(fields[0], gid, members))
    return found


def shadow_password(ctx: Context, name: str) -> Optional[str]:
    """The password field of ``name`` in the target's /etc/shadow, None without an entry."""
    for fields in _lines(ctx, SHADOW):
        if len(fields) >= 2 and fields[0] == name:
            return fields[1]
    return None


def uid_min(ctx: Context) -> int:
    """UID_MIN of the target's login.defs: accounts below it are system accounts."""
    for path in LOGIN_DEFS:
        try:
            text = ctx.path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "UID_MIN" and fields[1].isdigit():
                return int(fields[1])
        return DEFAULT_UID_MIN
    return DEFAULT_UID_MIN


def admin_group(known: dict[str, Group]) -> Optional[Group]:
    """The sudo or wheel group, whichever the target has (sudo first)."""
    for name in ADMIN_GROUPS:
        if name in known:
            return known[name]
    return None


def is_member(account: Account, group: Group) -> bool:
    return account.gid == group.gid or account.name in group.members


def login_shell(ctx: Context) -> str:
    """/bin/bash when the target has it, else /bin/sh."""
    for shell, candidates in SHELLS:
        if not candidates or any(ctx.path(c).exists() for c in candidates):
            return shell
    return "/bin/sh"


def home_directory(ctx: Context, name: str) -> str:
    home_root = ctx.config.required_str("OS.HomeDir").rstrip("/")
    return f"{home_root}/{name}"


def check_password_hash(hashed: str) -> None:
    """Refuse anything that is not a crypt(3) hash, without quoting it."""
    if not _HASH.fullmatch(hashed):
        raise StageFailed("the password hash in the provisioning data is not a crypt(3) hash")


def password_usable(field: str) -> bool:
    """Whether the password field lets someone log in with a password.

    '!' (locked) and '*' prefixes make every password fail; an empty field
    lets anyone in without one, so it counts as usable (and gets locked).
    """
    return not field.startswith(("!", "*"))


def password_erased(field: str) -> bool:
    """Whether the field holds no hash at all (not merely a locked one)."""
    return bool(_ERASED.fullmatch(field))


# --- Changes -------------------------------------------------------------


def _prefix(ctx: Context) -> list[str]:
    """useradd/usermod's options to edit the target's files instead of the host's."""
    return [] if ctx.live else ["--prefix", str(ctx.root)]


def create_user(ctx: Context, name: str, *, home: str, shell: str, group: Optional[str]) -> None:
    """useradd: a user private group, the home from the image's skeleton, the admin group."""
    argv = ["useradd", *_prefix(ctx), "--create-home", "--home-dir", home]
    argv += ["--skel", str(ctx.path(SKEL)), "--shell", shell, "--user-group"]
    if group is not None:
        argv += ["--groups", group]
    check_new_home(ctx, home)
    ensure_dir(ctx.path(home).parent)
    check_new_home(ctx, home)  # now that every directory above it exists
    system.run([*argv, "--", name], what=f"create user {name}")


def add_to_group(ctx: Context, name: str, group: str) -> None:
    system.run(
        ["usermod", *_prefix(ctx), "--append", "--groups", group, "--", name],
        what=f"add user {name} to group {group}",
    )


def lock_password(ctx: Context, name: str) -> None:
    """usermod -L: a '!' before the hash, so only keys can log in."""
    system.run(
        ["usermod", *_prefix(ctx), "--lock", "--", name], what=f"lock the password of {name}"
    )


def _chpasswd(ctx: Context, name: str, field: str, what: str) -> None:
    root = [] if ctx.live else ["--root", str(ctx.root)]
    system.run(["chpasswd", *root, "--encrypted"], stdin=f"{name}:{field}\n", what=what)


def check_hash_stays_secret(ctx: Context, name: str, account: Optional[Account]) -> None:
    """Refuse to set a hash chpasswd would put where others can read it.

    ``account`` None is a user useradd is about to create: with /etc/shadow
    present it gets the 'x' that sends the hash there.
    """
    what = f"set the password of {name}"
    try:
        mode = ctx.path(SHADOW).stat().st_mode
    except FileNotFoundError:
        raise StageFailed(f"{what}: {SHADOW} does not exist") from None
    if mode & 0o004:
        raise StageFailed(f"{what}: {SHADOW} is world-readable")
    if account is not None and account.password != SHADOWED:
        # chpasswd would write the hash into /etc/passwd, which everyone reads.
        raise StageFailed(
            f"{what}: the account is not shadowed (its {ACCOUNTS} password field is not 'x')"
        )


def set_password_hash(ctx: Context, name: str, hashed: str) -> None:
    """Put ``hashed`` in the shadow entry of ``name`` (chpasswd -e, the hash on stdin)."""
    check_password_hash(hashed)
    account = accounts(ctx).get(name)
    if account is None:
        raise StageFailed(f"set the password of {name}: no such user in {ACCOUNTS}")
    # Checked again now that useradd has run: the plan saw the files before.
    check_hash_stays_secret(ctx, name, account)
    _chpasswd(ctx, name, hashed, f"set the password of {name}")


def erase_password(ctx: Context, name: str) -> None:
    """Replace the password of ``name`` by '*': no password matches, keys still work.

    Not a '!' lock: sshd without PAM refuses even key logins to '!'-locked
    accounts, and WALinuxAgent only ever erased the password.
    """
    _chpasswd(ctx, name, "*", f"erase the password of {name}")


def sudoers_rule(name: str, *, nopasswd: bool) -> str:
    return f"{name} ALL=(ALL) NOPASSWD: ALL" if nopasswd else f"{name} ALL=(ALL) ALL"


def sudoers_content(current: Optional[str], name: str, *, nopasswd: bool) -> str:
    """The drop-in with the rule for ``name`` in place; other users' lines kept.

    WALinuxAgent appends one line per provisioned user to the same file, so a
    line for another user is the image's business, not ours.
    """
    rule = sudoers_rule(name, nopasswd=nopasswd)
    out: list[str] = []
    placed = False
    for line in (current or "").splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            if not placed:
                out.append(rule)
                placed = True
            continue
        out.append(line)
    if not placed:
        out.append(rule)
    return "\n".join(out) + "\n"


def read_sudoers(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StageFailed(f"cannot read {path}: {e.strerror}") from None


def install_sudoers(ctx: Context, path: Path, content: str) -> None:
    """Install a sudoers drop-in only once ``visudo -c`` accepted the exact bytes.

    A drop-in sudo cannot parse disables sudo for everyone, so the content is
    checked first in a file sudo ignores (its name has a '.'), then written
    atomically, 0440 root:root, as sudo wants.
    """
    data = content.encode()
    shown = ctx.display(path)
    ensure_dir(path.parent, mode=0o750)
    candidate = path.parent / f".{path.name}.azagent-check"
    visudo = system.which("visudo")
    if visudo is None:
        log.warning("visudo is missing (no sudo installed): %s is installed unchecked", shown)
    else:
        atomic_write(candidate, data, mode=0o440, owner=(0, 0))
        try:
            done = system.run(
                [visudo, "-c", "-f", str(candidate)],
                check=False,
                what=f"check {shown}",
            )
        finally:
            os.unlink(candidate)
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["rejected"])[0]
            detail = detail.replace(str(candidate), shown)
            raise StageFailed(f"{shown}: visudo refuses the new content: {detail}")
    atomic_write(path, data, mode=0o440, owner=(0, 0))
