"""Deprovisioning: make a VM (or an image tree) ready to be captured and provisioned again.

What the seed documents, under ``ctx.root``: the SSH host keys (when
Provisioning.RegenerateSshHostKeyPair=y), the nameserver configuration, the
root password (when Provisioning.DeleteRootPassword=y), cached DHCP leases,
the hostname (reset to localhost.localdomain), and azagent's own state and
markers so the next boot provisions again; with ``--user`` also the last
provisioned user and its home.

It does not guarantee that the image holds no sensitive data: it removes
what the agent knows about.
"""

from __future__ import annotations

import functools
import glob
import shutil
from pathlib import Path
from typing import Optional

from azagent import system
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.fsutil import atomic_write
from azagent.plan import Plan

HOSTNAME = "localhost.localdomain"
LEASE_PATTERNS = (
    "/var/lib/dhcp/dhclient*.leases",
    "/var/lib/dhcp/dhclient*.lease",
    "/var/lib/dhclient/*.lease*",
    "/var/lib/NetworkManager/*.lease",
    "/var/lib/NetworkManager/internal-*",
    "/var/lib/systemd/network/*lease*",
    "/run/systemd/netif/leases/*",
)
STATE_PATTERNS = (
    "provisioned",
    "ovf-env.xml",
    "CustomData",
    "CustomData.executed",
    "*.crt",
    "*.prv",
    "*.pem",
    "Certificates*",
)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _matches(ctx: Context, pattern: str) -> list[Path]:
    base = str(ctx.root).rstrip("/")
    return [Path(p) for p in sorted(glob.glob(base + pattern))]


def last_user(ctx: Context) -> Optional[str]:
    """The last provisioned user, from the OVF copy azagent keeps in Lib.Dir."""
    from azagent import ovf

    copy = ctx.lib_dir / "ovf-env.xml"
    try:
        return ovf.parse_ovf(copy.read_bytes()).username
    except (OSError, AzagentError):
        return None


def plan(ctx: Context, *, user: bool) -> tuple[Plan, list[str]]:
    """What deprovisioning would do, and notes for the operator."""
    config = ctx.config
    notes: list[str] = []
    result = Plan()
    if config.get_bool("Provisioning.RegenerateSshHostKeyPair"):
        for key in _matches(ctx, f"{config.required_str('OS.SshDir')}/ssh_host_*key*"):
            result.add(
                f"delete the SSH host key {ctx.display(key)}", functools.partial(_remove, key)
            )
    resolv = ctx.path("/etc/resolv.conf")
    if resolv.is_symlink():
        notes.append("/etc/resolv.conf is a link (systemd-resolved/resolvconf): left alone")
    elif resolv.exists() and resolv.read_bytes():
        result.add(
            "empty /etc/resolv.conf (nameserver configuration)",
            lambda: atomic_write(resolv, b"", mode=0o644),
        )
    if config.get_bool("Provisioning.DeleteRootPassword"):
        shadow = ctx.path("/etc/shadow")
        try:
            root_line = next(
                (line for line in shadow.read_text().splitlines() if line.startswith("root:")), ""
            )
        except OSError:
            root_line = ""
        fields = root_line.split(":")
        if len(fields) > 1 and fields[1] not in ("*", "!", "!*", "!!"):
            result.add("delete root's password in /etc/shadow", lambda: _lock_root(ctx))
    for pattern in LEASE_PATTERNS:
        for lease in _matches(ctx, pattern):
            result.add(
                f"delete the DHCP lease {ctx.display(lease)}", functools.partial(_remove, lease)
            )
    hostname = ctx.path("/etc/hostname")
    if not hostname.exists() or hostname.read_text().strip() != HOSTNAME:
        result.add(
            f"reset the hostname to {HOSTNAME}",
            lambda: atomic_write(hostname, f"{HOSTNAME}\n".encode(), mode=0o644),
        )
    lib_dir = config.required_str("Lib.Dir")
    name = last_user(ctx) if user else None
    for pattern in STATE_PATTERNS:
        for path in _matches(ctx, f"{lib_dir}/{pattern}"):
            result.add(
                f"delete azagent state {ctx.display(path)}", functools.partial(_remove, path)
            )
    for path in _matches(ctx, "/run/azagent/*"):
        if path.name not in ("lock",):
            result.add(
                f"delete azagent state {ctx.display(path)}", functools.partial(_remove, path)
            )
    if user:
        if name is None:
            notes.append("no provisioned user is recorded in Lib.Dir: no user to delete")
        elif _user_exists(ctx, name):
            result.add(
                f"delete the user {name} and its home directory",
                lambda: _delete_user(ctx, name),
            )
    notes.append("deprovisioning does not guarantee the image holds no sensitive data")
    return result, notes


def _user_exists(ctx: Context, name: str) -> bool:
    try:
        return any(
            line.split(":", 1)[0] == name
            for line in ctx.path("/etc/passwd").read_text().splitlines()
        )
    except OSError:
        return False


def _delete_user(ctx: Context, name: str) -> None:
    argv = ["userdel", "--remove"]
    if not ctx.live:
        argv += ["--prefix", str(ctx.root)]
    system.run([*argv, name], what=f"delete user {name}")
    sudoers = ctx.path(ctx.config.required_str("OS.SudoersDir")) / "waagent"
    sudoers.unlink(missing_ok=True)


def _lock_root(ctx: Context) -> None:
    shadow = ctx.path("/etc/shadow")
    st = shadow.stat()
    lines = []
    for line in shadow.read_text().splitlines(keepends=True):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            fields[1] = "*"
        lines.append(":".join(fields))
    atomic_write(
        shadow, "".join(lines).encode(), mode=st.st_mode & 0o777, owner=(st.st_uid, st.st_gid)
    )
