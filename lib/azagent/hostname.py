"""The VM's hostname: checked, kept where Linux keeps it, and published to Azure DNS.

Azure DNS learns a VM's name from the host-name option of the DHCP requests
the VM sends; there is no other channel. So the name must be in place before
the first DHCP request of the boot, and a name that changes later reaches
Azure DNS only when the DHCP client sends a new request, which
:func:`publish_commands` asks of whichever client manages the primary
interface (systemd-networkd, NetworkManager or a standalone dhclient).

Everything here reads the target system under ``ctx.root``, /proc and /run
included, so tests describe a running system with plain files. Only
:func:`set_running_hostname` and the publish commands touch the running
system; the hostname stage calls them only when the root is ``/``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from azagent import names
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.fsutil import atomic_write, read_bytes_limited

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

NETWORKD = "systemd-networkd"
NETWORK_MANAGER = "NetworkManager"
DHCLIENT = "dhclient"
# Process names (/proc/PID/comm, at most 15 characters) of the DHCP clients.
_COMMS = frozenset({"systemd-network", "NetworkManager", "dhclient"})
# Interface names as the kernel allows them, minus a leading '-' or '.' that
# a command would read as an option or a path.
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}")
_RTF_UP = 0x1
# ISC dhclient options that take a value (upstream and Red Hat's patches).
_DHCLIENT_VALUE_OPTIONS = frozenset(
    {
        "-p", "-s", "-cf", "-lf", "-pf", "-sf", "-df", "-e", "-g", "-D", "-H", "-F", "-V",
        "-C", "-timeout", "--timeout", "--dad-wait-time", "--prefix-len-hint",
        "--decline-wait-time", "--address-prefix-len",
    }
)  # fmt: skip
# A dhclient started with these is not a long-running IPv4 client azagent may
# restart: -d runs in the foreground under a supervisor (NetworkManager runs
# it so), -6 speaks DHCPv6 (no host-name option), -r and -x are exiting.
_DHCLIENT_NOT_OURS = frozenset({"-d", "-6", "-r", "-x"})


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


# -- who sends the DHCP requests ------------------------------------------------


@dataclass(frozen=True)
class Process:
    pid: int
    comm: str
    argv: tuple[str, ...]
    uid: Optional[int]  # real uid


@dataclass(frozen=True)
class DhcpClient:
    """The DHCP client of the primary interface (``argv``: a dhclient's command line)."""

    manager: str  # NETWORKD, NETWORK_MANAGER or DHCLIENT
    interface: str
    argv: tuple[str, ...] = ()


def processes(ctx: Context) -> list[Process]:
    """The running DHCP clients, from /proc under the root, by pid."""
    proc = ctx.path("/proc")
    try:
        pids = sorted(int(entry) for entry in os.listdir(proc) if entry.isdigit())
    except OSError:
        return []
    found = []
    for pid in pids:
        base = proc / str(pid)
        try:
            comm = (base / "comm").read_text(encoding="utf-8", errors="replace").strip()
            if comm not in _COMMS:
                continue
            raw = (base / "cmdline").read_bytes()
            status = (base / "status").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # exited meanwhile
        argv = tuple(os.fsdecode(arg) for arg in raw.rstrip(b"\0").split(b"\0")) if raw else ()
        found.append(Process(pid, comm, argv, _real_uid(status)))
    return found


def _real_uid(status: str) -> Optional[int]:
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) > 1 and fields[1].isdigit():
                return int(fields[1])
    return None


def primary_interface(ctx: Context) -> Optional[str]:
    """The interface of the IPv4 default route with the lowest metric, as waagent picks it."""
    try:
        text = ctx.path("/proc/net/route").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    best: Optional[tuple[int, str]] = None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[1] != "00000000" or fields[7] != "00000000":
            continue
        try:
            up = int(fields[3], 16) & _RTF_UP
            metric = int(fields[6])
        except ValueError:
            continue
        if up and _IFNAME.fullmatch(fields[0]) and (best is None or metric < best[0]):
            best = (metric, fields[0])
    return best[1] if best else None


def _ifindex(ctx: Context, interface: str) -> Optional[str]:
    try:
        index = ctx.path(f"/sys/class/net/{interface}/ifindex").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    index = index.strip()
    return index if index.isdigit() else None


def _nm_manages(ctx: Context, ifindex: Optional[str]) -> Optional[bool]:
    """NetworkManager's own record of whether it manages the device (None: no record)."""
    if ifindex is None:
        return None
    try:
        text = ctx.path(f"/run/NetworkManager/devices/{ifindex}").read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "managed":
            return value.strip() == "true"
    return None


def dhclient_interfaces(args: Sequence[str]) -> list[str]:
    """The interfaces on a dhclient command line (arguments after argv[0])."""
    interfaces = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _DHCLIENT_VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            interfaces.append(arg)
    return interfaces


def _restartable_dhclient(process: Process, interface: str) -> bool:
    """A dhclient root started, in the background, for IPv4 on ``interface``.

    Its command line is run again as root, so it must come from root: the
    real uid is 0 (a user running a setuid program under the name dhclient
    keeps their own real uid) and argv[0] names dhclient.
    """
    if process.uid != 0 or not process.argv:
        return False
    if os.path.basename(process.argv[0]) != DHCLIENT:
        return False
    args = process.argv[1:]
    if _DHCLIENT_NOT_OURS.intersection(args):
        return False
    interfaces = dhclient_interfaces(args)
    return not interfaces or interface in interfaces


def detect_dhcp_client(ctx: Context) -> Optional[DhcpClient]:
    """Who sends the DHCP requests of the primary interface now, or None.

    None when there is no default route or no client is running: before the
    network is up (the hostname stage runs before network-pre.target), or on
    a statically configured VM. In that order: NetworkManager when its device
    record says it manages the interface; systemd-networkd when it runs and
    holds a DHCPv4 lease for it; a standalone dhclient serving it;
    NetworkManager when it runs and has no record saying it does not.
    """
    interface = primary_interface(ctx)
    if interface is None:
        return None
    running = processes(ctx)
    comms = {process.comm for process in running}
    index = _ifindex(ctx, interface)
    nm_manages = _nm_manages(ctx, index) if NETWORK_MANAGER in comms else False
    if nm_manages:
        return DhcpClient(NETWORK_MANAGER, interface)
    if (
        "systemd-network" in comms
        and index is not None
        and ctx.path(f"/run/systemd/netif/leases/{index}").is_file()
    ):
        return DhcpClient(NETWORKD, interface)
    for process in running:
        if process.comm == DHCLIENT and _restartable_dhclient(process, interface):
            return DhcpClient(DHCLIENT, interface, process.argv)
    if nm_manages is None:
        return DhcpClient(NETWORK_MANAGER, interface)
    return None


def publish_commands(ctx: Context, client: DhcpClient, name: str) -> list[tuple[str, ...]]:
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
    if client.manager == NETWORKD:
        return [("networkctl", "reconfigure", interface)]
    if client.manager == NETWORK_MANAGER:
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
    stop = (DHCLIENT, "-x", *args)
    start = (DHCLIENT, *args)
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
