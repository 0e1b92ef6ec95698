"""The SSH server: the settings provisioning owns, and the host keys.

Settings. The platform decides whether passwords may be used
(``DisablePasswordAuthentication``) and ``OS.SshClientAliveInterval`` sets
``ClientAliveInterval``. ``KbdInteractiveAuthentication`` follows
``PasswordAuthentication`` (WALinuxAgent does the same with its old alias,
``ChallengeResponseAuthentication``): with PAM, keyboard-interactive is a
password prompt by another name.

sshd keeps the *first* value it reads for a keyword. When the image's
``sshd_config`` includes ``sshd_config.d/*.conf`` (Debian 12, Ubuntu,
Fedora, RHEL 9), the settings go to the drop-in ``10-azagent.conf``: it sorts
before the drop-ins images ship (``50-cloud-init.conf``,
``50-redhat.conf``, ``60-cloudimg-settings.conf``), so the platform's choice
wins over the image's defaults, while an administrator's ``0x-*.conf`` still
wins over azagent. A keyword the main file sets *above* its ``Include`` line
would still win, so that line is edited in place. Without such an
``Include``, ``sshd_config`` itself is edited: the first global occurrence
of each keyword is replaced, or the keyword is inserted before the first
directive.

Host keys. With ``Provisioning.RegenerateSshHostKeyPair=y`` the image's
``ssh_host_*key*`` files are replaced by one fresh key pair of
``Provisioning.SshHostKeyPairType`` (``auto``: rsa, ecdsa and ed25519, what
``ssh-keygen -A`` makes), once per VM: ``<Lib.Dir>/ssh-host-keys`` records the
VM id they were made for, so a re-run changes nothing and a captured image
booted as a new VM gets new keys.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from azagent import system
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.fsutil import atomic_write, ensure_dir
from azagent.journal import log
from azagent.plan import Action
from azagent.provisioning import same_vm

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Optional


CONFIG_NAME = "sshd_config"
DROPIN_DIR = "sshd_config.d"
DROPIN_NAME = "10-azagent.conf"
DROPIN_MODE = 0o644  # as Debian's sshd_config: nothing in it is secret
HOST_KEY_GLOB = "ssh_host_*key*"
AUTO_KEY_TYPES = ("rsa", "ecdsa", "ed25519")
HOST_KEY_MARKER = "ssh-host-keys"
# Where new host keys are made, next to the old ones (a private directory).
SCRATCH_PREFIX = ".azagent-host-keys-"
SERVICE_UNITS = ("ssh.service", "sshd.service")  # Debian/Ubuntu, Fedora/RHEL/SUSE

# sshd -t failures that say nothing about the configuration: before
# ssh.service ran, /run/sshd (its RuntimeDirectory) does not exist yet.
_ENVIRONMENTAL = ("privilege separation directory", "no hostkeys available")


class SshdError(AzagentError):
    """The SSH server's configuration or host keys could not be set."""


# --- sshd_config text ----------------------------------------------------------------

_DIRECTIVE = re.compile(r"\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+|$)(.*?)\s*$")


class Directive:
    __slots__ = ("index", "keyword", "value")

    def __init__(
        self,
        index: int,  # line number, from 0
        keyword: str,  # lower-case
        value: str,
    ) -> None:
        self.index: Final = index
        self.keyword: Final = keyword
        self.value: Final = value


def directives(lines: Sequence[str]) -> list[Directive]:
    """The keyword lines of an sshd_config, comments and blank lines left out."""
    found = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _DIRECTIVE.match(line)
        if match:
            found.append(Directive(index, match.group(1).lower(), match.group(2)))
    return found


def global_end(lines: Sequence[str]) -> int:
    """Index of the first ``Match`` line: what follows is conditional, not global."""
    for directive in directives(lines):
        if directive.keyword == "match":
            return directive.index
    return len(lines)


def wanted_settings(
    disable_password_auth: bool, client_alive_interval: Optional[int]
) -> dict[str, str]:
    password = "no" if disable_password_auth else "yes"
    settings = {"PasswordAuthentication": password, "KbdInteractiveAuthentication": password}
    if client_alive_interval is not None:
        settings["ClientAliveInterval"] = str(client_alive_interval)
    return settings


def set_directives(text: str, settings: dict[str, str], *, limit: int, insert: bool) -> str:
    """``text`` with the first occurrence (above line ``limit``) of each keyword set.

    Missing keywords are inserted before the first directive when ``insert``;
    later, shadowed occurrences are left alone: sshd ignores them.
    """
    lines = text.splitlines(keepends=True)
    first: dict[str, Directive] = {}
    for directive in directives(lines[:limit]):
        first.setdefault(directive.keyword, directive)
    missing = []
    for keyword, value in settings.items():
        current = first.get(keyword.lower())
        if current is None:
            missing.append(f"{keyword} {value}\n")
        elif current.value.lower() != value.lower():
            lines[current.index] = f"{keyword} {value}\n"
    if insert and missing:
        active = [d.index for d in directives(lines[:limit])]
        at = active[0] if active else min(limit, len(lines))
        if at == len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines[at:at] = ["# Set by azagent when this VM was provisioned (ssh-keys stage).\n"]
        lines[at + 1 : at + 1] = missing
    return "".join(lines)


def dropin_text(settings: dict[str, str]) -> str:
    body = "".join(f"{keyword} {value}\n" for keyword, value in settings.items())
    return (
        "# Written by azagent when this VM was provisioned (ssh-keys stage): the\n"
        "# platform's password authentication choice and OS.SshClientAliveInterval.\n"
        "# sshd keeps the first value it reads, so this file sorts before the other\n"
        "# drop-ins; an administrator's 0x-*.conf still comes first.\n" + body
    )


def covering_include(lines: Sequence[str], ssh_dir: str, dropin: str) -> Optional[int]:
    """Index of the global ``Include`` line whose pattern covers ``dropin``, if any.

    Relative patterns are relative to the SSH directory, as sshd reads them.
    """
    target = PurePosixPath(dropin)
    for directive in directives(lines[: global_end(lines)]):
        if directive.keyword != "include":
            continue
        try:
            import shlex

            patterns = shlex.split(directive.value)
        except ValueError:
            continue
        for pattern in patterns:
            absolute = pattern if pattern.startswith("/") else f"{ssh_dir}/{pattern}"
            if target.match(absolute):
                return directive.index
    return None


# --- Validation and reload ---------------------------------------------------------


def check_config(sshd: str, config: Path) -> Optional[str]:
    """What ``sshd -t -f config`` objects to, or None when it accepts it.

    Failures that are about the moment, not the file (no privilege separation
    directory before ssh.service created it, no host keys) are logged and
    count as accepted: ssh.service checks again when it starts.
    """
    done = system.run([sshd, "-t", "-f", str(config)], check=False, timeout=30, what="sshd -t")
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    detail = lines[-1] if lines else f"exit status {done.returncode}"
    if any(text in detail for text in _ENVIRONMENTAL):
        log.warning("cannot check the sshd configuration now: %s", detail)
        return None
    return detail


def _sshd_binary() -> Optional[str]:
    found = system.which("sshd")
    if found is None and os.access("/usr/sbin/sshd", os.X_OK):
        found = "/usr/sbin/sshd"
    return found


def _validate(ctx: Context, config: Path) -> Optional[str]:
    if not ctx.live:
        log.info("not checking %s with sshd -t: --root is not /", ctx.display(config))
        return None
    sshd = _sshd_binary()
    if sshd is None:
        log.info("sshd is not installed: %s not checked with sshd -t", ctx.display(config))
        return None
    return check_config(sshd, config)


def running_unit() -> Optional[str]:
    """The running SSH server unit, if any (only meaningful on the running system)."""
    if system.which("systemctl") is None:
        return None
    # One question for both names (a process costs at boot): a line per unit, in order.
    done = system.run(["systemctl", "is-active", *SERVICE_UNITS], check=False)
    states = done.stdout.split()
    for unit, state in zip(SERVICE_UNITS, states):
        if state in ("active", "reloading"):
            return unit
    return None


def _reload(unit: str) -> None:
    # --no-block: the SSH server is ordered after this stage, so a reload job
    # waited for here would wait for this very stage to finish (a deadlock
    # when the stage runs as a unit, e.g. restarted by the imds stage). Queued,
    # it runs as soon as the stage is done.
    system.run(["systemctl", "reload", "--no-block", unit], what=f"reload {unit}")


def plan_reload(ctx: Context) -> list[Action]:
    """Reload a running sshd so that it reads its new settings and host keys.

    Never under --root (the running sshd is not the image's); at boot sshd
    has not started yet (the unit is ordered before it), so nothing is done.
    """
    if not ctx.live:
        return []
    unit = running_unit()
    if unit is None:
        log.debug("sshd is not running: no reload needed")
        return []
    return [
        Action(
            f"reload {unit} so that sshd uses the new settings and keys",
            functools.partial(_reload, unit),
        )
    ]


# --- Planning the configuration ---------------------------------------------------


class _Write:
    __slots__ = ("data", "mode", "owner", "path")

    def __init__(
        self, path: Path, data: bytes, mode: int, owner: Optional[tuple[int, int]]
    ) -> None:
        self.path: Final = path
        self.data: Final = data
        self.mode: Final = mode
        self.owner: Final = owner


def _read(path: Path) -> Optional[tuple[str, os.stat_result]]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(1024 * 1024 + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SshdError(f"cannot read {path.name}: {e.strerror}") from None
    if len(data) > 1024 * 1024:
        raise SshdError(f"{path.name} is larger than 1 MiB")
    return data.decode("utf-8", "surrogateescape"), st


def _apply_config(ctx: Context, writes: Sequence[_Write], main: Path) -> None:
    """Write, check with sshd -t, and put the old files back if sshd refuses them."""
    previous = []
    for write in writes:
        old = _read(write.path)
        previous.append((write, old))
    for write in writes:
        atomic_write(write.path, write.data, mode=write.mode, owner=write.owner)
    problem = _validate(ctx, main)
    if problem is None:
        return
    for write, old in previous:
        if old is None:
            os.unlink(write.path)
        else:
            text, st = old
            atomic_write(
                write.path,
                text.encode("utf-8", "surrogateescape"),
                mode=stat.S_IMODE(st.st_mode),
                owner=(st.st_uid, st.st_gid),
            )
    raise SshdError(f"sshd -t rejects the new configuration, left as it was: {problem}")


def _describe(settings: dict[str, str]) -> str:
    return ", ".join(f"{keyword} {value}" for keyword, value in settings.items())


def _earlier_dropins(directory: Path, settings: dict[str, str]) -> None:
    """Warn about drop-ins sorting before ours that set the same keywords: they win."""
    wanted = {k.lower() for k in settings}
    try:
        names = sorted(p.name for p in directory.glob("*.conf") if p.name < DROPIN_NAME)
    except OSError:
        return
    for name in names:
        found = _read(directory / name)
        if found is None:
            continue
        lines = found[0].splitlines()
        shadowing = {d.keyword for d in directives(lines[: global_end(lines)])} & wanted
        if shadowing:
            log.warning(
                "%s/%s sorts before %s and also sets %s: its values win",
                DROPIN_DIR,
                name,
                DROPIN_NAME,
                ", ".join(sorted(shadowing)),
            )


def plan_sshd_config(ctx: Context, *, disable_password_auth: bool) -> list[Action]:
    """Set password authentication and ClientAliveInterval (drop-in or sshd_config)."""
    ssh_dir = ctx.config.required_str("OS.SshDir")
    main = ctx.path(ssh_dir) / CONFIG_NAME
    current = _read(main)
    if current is None:
        log.info("no %s/%s: no SSH server to configure", ssh_dir, CONFIG_NAME)
        return []
    text, st = current
    settings = wanted_settings(
        disable_password_auth, ctx.config.get_int("OS.SshClientAliveInterval")
    )
    lines = text.splitlines(keepends=True)
    main_owner = (st.st_uid, st.st_gid)
    writes = []
    dropin_name = f"{ssh_dir}/{DROPIN_DIR}/{DROPIN_NAME}"
    include = covering_include(lines, ssh_dir, dropin_name)
    if include is not None:
        dropin = ctx.path(dropin_name)
        content = dropin_text(settings)
        existing = _read(dropin)
        if existing is None or existing[0] != content or not _right(existing[1], DROPIN_MODE):
            writes.append(_Write(dropin, content.encode(), DROPIN_MODE, (0, 0)))
        # A keyword set above the Include line would still win over the drop-in.
        edited = set_directives(text, settings, limit=include, insert=False)
        if edited != text:
            writes.append(
                _Write(
                    main,
                    edited.encode("utf-8", "surrogateescape"),
                    stat.S_IMODE(st.st_mode),
                    main_owner,
                )
            )
        _earlier_dropins(dropin.parent, settings)
        where = dropin_name
    else:
        edited = set_directives(text, settings, limit=global_end(lines), insert=True)
        if edited != text:
            writes.append(
                _Write(
                    main,
                    edited.encode("utf-8", "surrogateescape"),
                    stat.S_IMODE(st.st_mode),
                    main_owner,
                )
            )
        where = f"{ssh_dir}/{CONFIG_NAME} (it includes no {DROPIN_DIR}/*.conf)"
    if not writes:
        return []
    return [
        Action(
            f"set {_describe(settings)} in {where}",
            functools.partial(_apply_config, ctx, writes, main),
        )
    ]


def _right(st: os.stat_result, mode: int) -> bool:
    return stat.S_IMODE(st.st_mode) == mode and (st.st_uid, st.st_gid) == (0, 0)


# --- Host keys ------------------------------------------------------------------------


def host_key_types(key_type: Optional[str]) -> tuple[str, ...]:
    """The ssh-keygen -t types to make for Provisioning.SshHostKeyPairType."""
    if key_type in (None, "auto"):
        return AUTO_KEY_TYPES
    return (key_type,)


def _marker(ctx: Context) -> Path:
    return ctx.lib_dir / HOST_KEY_MARKER


def _regenerate(
    ctx: Context, ssh_dir: Path, old: Sequence[str], types: Sequence[str], vm_id: str
) -> None:
    # Made in a private (0700) directory next to the final place, then
    # written over: sshd never sees a half-written key or no key at all. A
    # run killed meanwhile left its directory (private keys): removed first.
    import shutil
    import tempfile

    for stale in ssh_dir.glob(f"{SCRATCH_PREFIX}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=ssh_dir))
    try:
        new: dict[str, tuple[bytes, int]] = {}
        for key_type in types:
            name = f"ssh_host_{key_type}_key"
            system.run(
                ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "", "-f", str(scratch / name)],
                what=f"generate the {key_type} SSH host key",
            )
            new[name] = ((scratch / name).read_bytes(), 0o600)
            new[f"{name}.pub"] = ((scratch / f"{name}.pub").read_bytes(), 0o644)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, (data, mode) in new.items():
        atomic_write(ssh_dir / name, data, mode=mode)
    for name in old:
        if name not in new:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ssh_dir / name)
    lib = ctx.lib_dir
    ensure_dir(lib, mode=0o700)
    atomic_write(_marker(ctx), f"{vm_id}\n".encode(), mode=0o644)


def plan_host_keys(ctx: Context, vm_id: str) -> list[Action]:
    """Replace the image's host keys once per VM (Provisioning.RegenerateSshHostKeyPair)."""
    if not ctx.config.get_bool("Provisioning.RegenerateSshHostKeyPair"):
        return []
    ssh_dir_name = ctx.config.required_str("OS.SshDir")
    ssh_dir = ctx.path(ssh_dir_name)
    if not (ssh_dir / CONFIG_NAME).is_file():
        log.info("no %s/%s: no SSH server whose host keys to replace", ssh_dir_name, CONFIG_NAME)
        return []
    try:
        done_for = _marker(ctx).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        done_for = ""
    if done_for and same_vm(done_for, vm_id):
        log.debug("the SSH host keys were already made for this VM")
        return []
    old = sorted(p.name for p in ssh_dir.glob(HOST_KEY_GLOB) if p.is_file() or p.is_symlink())
    types = host_key_types(ctx.config.get_str("Provisioning.SshHostKeyPairType"))
    made = f"a new {'/'.join(types)} SSH host key in {ssh_dir_name}"
    summary = f"replace the image's {len(old)} SSH host key file(s) with {made}" if old else made
    return [
        Action(
            summary if old else f"generate {made}",
            functools.partial(_regenerate, ctx, ssh_dir, old, types, vm_id),
        )
    ]
