"""The VM's hostname: checked, kept where Linux keeps it, and published to Azure DNS.

Azure DNS learns a VM's name from the host-name option of the DHCP requests
the VM sends; there is no other channel. So the name must be in place before
the first DHCP request of the boot, and a name that changes later reaches
Azure DNS only when the DHCP client sends a new request, which
:func:`publish_commands` asks of whichever client manages the primary
interface (systemd-networkd, NetworkManager or a standalone dhclient, as
:func:`azagent.dhcp.detect_dhcp_client` finds it).

Everything here reads the target system under ``ctx.root``, /proc and /run
included, so tests describe a running system with plain files. Only
:func:`set_running_hostname` and the publish commands touch the running
system; the hostname stage calls them only when the root is ``/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from azagent import dhcp, names
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.fsutil import atomic_write, read_bytes_limited

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

HOSTNAME_PATH = "/etc/hostname"
HOSTS_PATH = "/etc/hosts"
KERNEL_HOSTNAME = "/proc/sys/kernel/hostname"
# The name the DHCP client carried (or will carry in its first request) this
# boot. In /run: a reboot sends a fresh request with whatever name is set.
PUBLISHED_PATH = "/run/azagent/hostname-published"

# Debian's convention: the hostname resolves to 127.0.1.1 through /etc/hosts.
# The first line for that address is the one this module owns.
HOSTS_ADDRESS = b"127.0.1.1"
NEW_HOSTS = b"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"

MAX_FILE = 1024 * 1024


# -- the name -------------------------------------------------------------------


def system_name(given: str) -> str:
    """The name for /etc/hostname, the kernel and DHCP.

    ``given`` has passed :func:`azagent.names.host_name`. The name as given
    (its case kept: DNS ignores case, and the owner chose it), unless it
    exceeds the kernel's 64 bytes: then its first label.
    """
    return given if len(given) <= names.HOST_NAME_MAX else given.split(".", 1)[0]


def hosts_names(given: str) -> tuple[str, ...]:
    """The names of the 127.0.1.1 line: the full name first, then the short one."""
    short = given.split(".", 1)[0]
    return (given,) if short == given else (given, short)


# -- where Linux keeps it -------------------------------------------------------


def _read_text(ctx: Context, absolute: str) -> Optional[str]:
    try:
        raw = read_bytes_limited(ctx.path(absolute), MAX_FILE)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StageFailed(f"cannot read {absolute}: {e.strerror}") from None
    except ValueError:
        raise StageFailed(f"{absolute} is larger than {MAX_FILE} bytes") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StageFailed(f"{absolute} is not UTF-8 text") from None


def read_static(ctx: Context) -> Optional[str]:
    """The name in /etc/hostname as systemd reads it: its first line that is
    neither empty nor a comment, stripped; None when there is none."""
    text = _read_text(ctx, HOSTNAME_PATH)
    for line in (text or "").splitlines():
        value = line.strip()
        if value and not value.startswith("#"):
            return value
    return None


def read_running(ctx: Context) -> Optional[str]:
    """The kernel's hostname (None under a root without /proc)."""
    try:
        return ctx.path(KERNEL_HOSTNAME).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def read_published(ctx: Context) -> Optional[str]:
    try:
        return ctx.path(PUBLISHED_PATH).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _replace(path: Path, data: bytes) -> None:
    """Atomically replace ``path``, keeping the mode and owner of the file it replaces."""
    mode, owner = 0o644, None
    try:
        st = path.stat()
    except FileNotFoundError:
        pass
    else:
        mode = st.st_mode & 0o7777
        if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            owner = (st.st_uid, st.st_gid)  # chown needs CAP_CHOWN: only when it differs
    atomic_write(path, data, mode=mode, owner=owner)


def write_static(ctx: Context, name: str) -> None:
    _replace(ctx.path(HOSTNAME_PATH), f"{name}\n".encode("ascii"))


def write_published(ctx: Context, name: str) -> None:
    atomic_write(ctx.path(PUBLISHED_PATH), f"{name}\n".encode("ascii"), mode=0o644)


def set_running_hostname(ctx: Context, name: str) -> None:
    """sethostname(2), as systemd-hostnamed does: no D-Bus, works in early boot.

    Needs CAP_SYS_ADMIN. Refuses any root but ``/``: a test tree or an image
    has no running system, and a chroot's /proc is the host's.
    """
    if not ctx.live:
        raise StageFailed(f"refusing to set the running hostname under --root {ctx.root}")
    try:
        import socket

        socket.sethostname(name)
    except OSError as e:
        raise StageFailed(f"cannot set the running hostname to {name}: {e.strerror}") from None


def read_hosts(ctx: Context) -> Optional[bytes]:
    try:
        return read_bytes_limited(ctx.path(HOSTS_PATH), MAX_FILE)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StageFailed(f"cannot read {HOSTS_PATH}: {e.strerror}") from None
    except ValueError:
        raise StageFailed(f"{HOSTS_PATH} is larger than {MAX_FILE} bytes") from None


def hosts_with(current: Optional[bytes], names: Sequence[str]) -> bytes:
    """/etc/hosts with its first 127.0.1.1 line naming ``names``; every other byte kept.

    The line is rewritten (a trailing comment kept) when it names anything
    else, appended when there is none; a missing file is created with the
    localhost lines. Returns ``current`` itself when nothing changes.
    """
    wanted = [name.encode("ascii") for name in names]
    entry = HOSTS_ADDRESS + b"\t" + b" ".join(wanted)
    if current is None:
        return NEW_HOSTS + entry + b"\n"
    lines = current.splitlines(keepends=True)
    for index, line in enumerate(lines):
        content = line.rstrip(b"\r\n")
        ending = line[len(content) :]
        fields, hash_mark, comment = content.partition(b"#")
        words = fields.split()
        if not words or words[0] != HOSTS_ADDRESS:
            continue
        if words[1:] == wanted:
            return current
        lines[index] = entry + (b" #" + comment if hash_mark else b"") + ending
        return b"".join(lines)
    separator = b"" if not current or current.endswith(b"\n") else b"\n"
    return current + separator + entry + b"\n"


def write_hosts(ctx: Context, data: bytes) -> None:
    _replace(ctx.path(HOSTS_PATH), data)


# -- asking the DHCP client to publish it --------------------------------------


def publish_commands(ctx: Context, client: dhcp.DhcpClient, name: str) -> list[tuple[str, ...]]:
    """The commands that make ``client`` send a DHCP request carrying ``name``.

    - systemd-networkd: ``networkctl reconfigure``. ``networkctl renew``
      would resend the name networkd read when it configured the link
      (systemd issues 23244, 36440): reconfiguring makes it read it again.
    - NetworkManager: ``nmcli device modify IFACE ipv4.dhcp-hostname NAME``
      (and ipv6, for dual-stack VNets), as waagent does, minus its restart of
      NetworkManager: it changes the active connection only (not the profile
      on disk), and a changed DHCP setting makes NetworkManager restart DHCP
      in place, without taking the device down; a plain ``nmcli device
      reapply`` changes nothing, so it would send nothing.
    - dhclient: stop it keeping its lease (``-x``: no DHCPRELEASE), then start
      it again with its own command line (pid and lease files, config, a
      ``-H`` name replaced); the new one asks for the same address with the
      current name. Under systemd both run as transient units, so that
      dhclient and its hook scripts get neither azagent's sandbox nor its
      cgroup (which systemd empties when the oneshot unit ends).
    """
    interface = client.interface
    if client.manager == dhcp.NETWORKD:
        return [("networkctl", "reconfigure", interface)]
    if client.manager == dhcp.NETWORK_MANAGER:
        return [
            (
                "nmcli", "device", "modify", interface,
                "ipv4.dhcp-hostname", name, "ipv6.dhcp-hostname", name,
            )
        ]  # fmt: skip
    args = list(client.argv[1:])
    for index in range(len(args) - 1):
        if args[index] == "-H":
            args[index + 1] = name
    stop = (dhcp.DHCLIENT, "-x", *args)
    start = (dhcp.DHCLIENT, *args)
    if not ctx.path("/run/systemd/system").is_dir():
        return [stop, start]
    pid_files = [args[i + 1] for i in range(len(args) - 1) if args[i] == "-pf"]
    return [
        ("systemd-run", "--quiet", "--collect", "--wait", "--", *stop),
        (
            "systemd-run",
            "--quiet",
            "--collect",
            "--service-type=forking",
            *[f"--property=PIDFile={path}" for path in pid_files[:1]],
            f"--description=dhclient on {interface} (restarted by azagent to publish the hostname)",
            "--",
            *start,
        ),
    ]
