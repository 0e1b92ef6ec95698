"""DHCP as the VM's clients keep it: their leases, the client serving an interface, the routes.

Two stages need the same knowledge of the DHCP clients Azure images run
(systemd-networkd, ISC dhclient, NetworkManager with either of its clients):

- the network stage reads the WireServer's address (option 245) and the
  gateway to it from the newest lease (:func:`leases`, :func:`newest_lease`)
  and checks the routing table (:func:`kernel_routes`);
- the hostname stage asks whichever client serves the primary interface
  (:func:`primary_interface`, :func:`detect_dhcp_client`) for a new request
  carrying the name.

Everything here reads the target system under ``ctx.root`` (/proc, /sys,
/run and /var/lib included), so tests describe a running system with plain
files. Nothing here changes the system or runs a command.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from azagent.errors import INPUT_ERRORS
from azagent.fsutil import read_bytes_limited

# ipaddress, json, datetime, glob and struct are imported where they are
# used: the hostname stage (and a dry run) may read no lease and no route,
# and every stage is a fresh process at boot. The patterns are compiled by re
# (and cached) when first used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from typing import Final, Optional

    from azagent.context import Context

OPTION_WIRESERVER = 245
MAX_LEASE_FILE = 1024 * 1024
MAX_LEASE_FILES = 64  # per location; a lease directory holds a few files

NETWORKD = "systemd-networkd"
DHCLIENT = "dhclient"
NETWORK_MANAGER = "NetworkManager"
# Process names (/proc/PID/comm, at most 15 characters) of the DHCP clients.
_COMMS = frozenset({"systemd-network", "NetworkManager", "dhclient"})

# Interface names as the kernel allows them (at most 15 characters, no '/',
# ':' or white space: dev_valid_name()), narrowed to characters that are safe
# on a command line: no leading '-' or '.', which a command would read as an
# option or a path.
_IFNAME = r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}"
_RTF_UP = 0x1
_DHCLIENT_TIME = "%Y/%m/%d %H:%M:%S"
_LEASE_START = r"(?m)^\s*lease\s*\{"
_OCTAL = r"[0-7]{1,3}"
# What a lease file written by someone else can make a reader raise; the
# statement or the file is then skipped as unreadable.
_UNREADABLE = INPUT_ERRORS
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


# -- interfaces -----------------------------------------------------------------


def valid_interface_name(name: str) -> bool:
    """Whether ``name`` is an interface name azagent may put on a command line."""
    return re.fullmatch(_IFNAME, name) is not None


def interface_index(ctx: Context, interface: str) -> Optional[str]:
    """The interface's ifindex (decimal text), from /sys/class/net under the root."""
    if not valid_interface_name(interface):
        return None
    try:
        index = ctx.path(f"/sys/class/net/{interface}/ifindex").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    index = index.strip()
    return index if index.isdigit() else None


def interface_names(ctx: Context) -> dict[str, str]:
    """ifindex -> interface name, from /sys/class/net under the root."""
    try:
        entries = sorted(os.listdir(ctx.path("/sys/class/net")))
    except OSError:
        return {}
    names = {}
    for name in entries:
        index = interface_index(ctx, name)
        if index is not None:
            names[index] = name
    return names


# -- the routing table ----------------------------------------------------------


class KernelRoute:
    __slots__ = ("destination", "gateway", "interface", "metric", "up")

    def __init__(
        self,
        interface: str,
        destination: ipaddress.IPv4Network,
        gateway: ipaddress.IPv4Address,
        up: bool,  # RTF_UP
        metric: int,
    ) -> None:
        self.interface: Final = interface
        self.destination: Final = destination
        self.gateway: Final = gateway
        self.up: Final = up
        self.metric: Final = metric


def kernel_routes(ctx: Context) -> list[KernelRoute]:
    """The IPv4 main routing table, from /proc/net/route under the root.

    The kernel prints each address as the hexadecimal of the 32-bit value in
    this machine's byte order.
    """
    import ipaddress
    import struct

    try:
        text = ctx.path("/proc/net/route").read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, mask = (
                ipaddress.IPv4Address(struct.pack("=I", int(fields[i], 16))) for i in (1, 2, 7)
            )
            network = ipaddress.IPv4Network(f"{destination}/{mask}", strict=False)
            up = bool(int(fields[3], 16) & _RTF_UP)
            metric = int(fields[6])
        except (ValueError, struct.error):
            continue
        routes.append(KernelRoute(fields[0], network, gateway, up, metric))
    return routes


def primary_interface(ctx: Context) -> Optional[str]:
    """The interface of the IPv4 default route with the lowest metric, as waagent picks it."""
    import ipaddress

    default = ipaddress.IPv4Network("0.0.0.0/0")
    best: Optional[KernelRoute] = None
    for route in kernel_routes(ctx):
        if (
            route.up
            and route.destination == default
            and valid_interface_name(route.interface)
            and (best is None or route.metric < best.metric)
        ):
            best = route
    return best.interface if best else None


# -- leases ---------------------------------------------------------------------


class Route:
    """A route a DHCP server gave (option 121); gateway 0.0.0.0 means on-link."""

    __slots__ = ("destination", "gateway")

    def __init__(self, destination: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address) -> None:
        self.destination: Final = destination
        self.gateway: Final = gateway


class Lease:
    """What azagent needs from one DHCPv4 lease."""

    __slots__ = (
        "client",
        "endpoint",
        "expires",
        "interface",
        "mtime",
        "position",
        "routers",
        "routes",
        "source",
    )

    def __init__(
        self,
        client: str,  # NETWORKD, DHCLIENT or NETWORK_MANAGER
        source: str,  # the file, as the target system spells it
        interface: Optional[str],
        endpoint: Optional[str],  # option 245, dotted quad
        *,
        routers: tuple[str, ...] = (),  # option 3
        routes: Optional[tuple[Route, ...]] = None,  # option 121; None: the lease has none
        expires: Optional[float] = None,  # epoch seconds; None: never (or not recorded)
        mtime: float = 0.0,  # of the file: the newest lease wins
        position: int = 0,  # in the file: later dhclient leases are newer
    ) -> None:
        self.client: Final = client
        self.source: Final = source
        self.interface: Final = interface
        self.endpoint: Final = endpoint
        self.routers: Final = routers
        self.routes: Final = routes
        self.expires: Final = expires
        self.mtime: Final = mtime
        self.position: Final = position


# -- option values --------------------------------------------------------------


def endpoint_from_option(raw: bytes) -> Optional[str]:
    """The WireServer address option 245 carries (four bytes), or None if it is not one."""
    import ipaddress

    if len(raw) != 4:
        return None
    address = ipaddress.IPv4Address(raw)
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return None  # 0.0.0.0, 224/4, 240/4 (255.255.255.255 included)
    return str(address)


def classless_routes(raw: bytes) -> tuple[Route, ...]:
    """Decode option 121 (RFC 3442): width, significant octets, gateway; ValueError if malformed."""
    import ipaddress

    routes = []
    index = 0
    while index < len(raw):
        width = raw[index]
        index += 1
        if width > 32:
            raise ValueError(f"a route of width {width}")
        significant = (width + 7) // 8
        if index + significant + 4 > len(raw):
            raise ValueError("a truncated route")
        destination = raw[index : index + significant] + bytes(4 - significant)
        index += significant
        gateway = raw[index : index + 4]
        index += 4
        network = ipaddress.IPv4Network((int.from_bytes(destination, "big"), width), strict=False)
        routes.append(Route(network, ipaddress.IPv4Address(gateway)))
    return tuple(routes)


def _hex_bytes(value: str) -> bytes:
    """``a8:3f:81:10`` (dhclient prints each byte with %x: ``a:0:0:1``) or ``a83f8110``."""
    value = value.strip()
    if ":" in value:
        parts = value.split(":")
        if not all(re.fullmatch(r"[0-9A-Fa-f]{1,2}", part) for part in parts):
            raise ValueError("not colon-separated hex bytes")
        return bytes(int(part, 16) for part in parts)
    return bytes.fromhex(value)


def _c_string(value: str) -> bytes:
    """A dhclient quoted option value (printable bytes, with C escapes) as bytes."""
    inner = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    out = bytearray()
    index = 0
    while index < len(inner):
        char = inner[index]
        if char == "\\" and index + 1 < len(inner):
            # In place: no copy of the rest per escape.
            octal = re.compile(_OCTAL).match(inner, index + 1)
            if octal:
                out.append(int(octal.group(0), 8) & 0xFF)
                index += 1 + len(octal.group(0))
                continue
            out.extend(inner[index + 1].encode("latin-1", "replace"))
            index += 2
            continue
        out.extend(char.encode("latin-1", "replace"))
        index += 1
    return bytes(out)


def _ipv4s(words: Iterable[str]) -> tuple[str, ...]:
    import ipaddress

    found = []
    for word in words:
        try:
            found.append(str(ipaddress.IPv4Address(word.strip())))
        except ValueError:
            continue
    return tuple(found)


# -- dhclient -------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    """Drop ``# ...`` to the end of each line, outside double quotes."""
    lines = []
    for line in text.splitlines():
        quoted = False
        end = len(line)
        for index, char in enumerate(line):
            if char == '"' and (index == 0 or line[index - 1] != "\\"):
                quoted = not quoted
            elif char == "#" and not quoted:
                end = index
                break
        lines.append(line[:end])
    return "\n".join(lines)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for index, char in enumerate(text):
        if char == '"' and (index == 0 or text[index - 1] != "\\"):
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _lease_blocks(text: str) -> list[str]:
    """The bodies of the ``lease { ... }`` blocks (``lease6`` blocks are not DHCPv4).

    One pass, block after block as dhclient reads them: a block that is never
    closed ends the file (rescanning from every later ``lease {`` would make a
    file of unclosed blocks cost time quadratic in its size).
    """
    blocks: list[str] = []
    position = 0
    while True:
        match = re.compile(_LEASE_START).search(text, position)
        if match is None:
            return blocks
        start = match.end()
        quoted = False
        for index in range(start, len(text)):
            char = text[index]
            if char == '"' and text[index - 1] != "\\":
                quoted = not quoted
            elif char == "}" and not quoted:
                blocks.append(text[start:index])
                position = index + 1
                break
        else:
            return blocks


def _dhclient_expiry(value: str) -> Optional[float]:
    """``[W] never``, ``epoch N`` or ``W YYYY/MM/DD HH:MM:SS`` (UTC); ValueError otherwise."""
    words = value.split()
    if words and words[-1] == "never":  # "never", or "0 never" with a weekday
        return None
    if len(words) == 2 and words[0] == "epoch":
        return float(int(words[1]))
    if len(words) == 3:
        from datetime import datetime, timezone

        when = datetime.strptime(f"{words[1]} {words[2]}", _DHCLIENT_TIME)
        return when.replace(tzinfo=timezone.utc).timestamp()
    raise ValueError(f"unknown expiry {value!r}")


def parse_dhclient_leases(text: str, *, client: str = DHCLIENT, source: str = "") -> list[Lease]:
    """Every DHCPv4 lease in an ISC dhclient lease file, oldest first.

    A lease whose expiry cannot be read is left out: nothing says it is current.
    """
    leases = []
    for position, block in enumerate(_lease_blocks(_strip_comments(text))):
        interface: Optional[str] = None
        endpoint: Optional[str] = None
        routers: tuple[str, ...] = ()
        routes: Optional[tuple[Route, ...]] = None
        expires: Optional[float] = None
        expiry_known = False
        for statement in _split_outside_quotes(block, ";"):
            words = statement.split(None, 2)
            if not words:
                continue
            try:
                if words[0] == "interface" and len(words) >= 2:
                    interface = _c_string(statement.split(None, 1)[1].strip()).decode(
                        "ascii", "replace"
                    )
                elif words[0] == "expire" and len(words) >= 2:
                    expires = _dhclient_expiry(statement.split(None, 1)[1])
                    expiry_known = True
                elif words[0] == "option" and len(words) == 3:
                    name, value = words[1], words[2].strip()
                    if name == f"unknown-{OPTION_WIRESERVER}":
                        raw = _c_string(value) if value.startswith('"') else _hex_bytes(value)
                        endpoint = endpoint_from_option(raw)
                    elif name == "routers":
                        routers = _ipv4s(value.split(","))
                    elif name in ("rfc3442-classless-static-routes", "classless-static-routes"):
                        routes = classless_routes(bytes(int(b) for b in value.split(",")))
            except _UNREADABLE:
                continue  # one unreadable statement does not spoil the lease
        if expiry_known:
            leases.append(
                Lease(
                    client,
                    source,
                    interface,
                    endpoint,
                    routers=routers,
                    routes=routes,
                    expires=expires,
                    position=position,
                )
            )
    return leases


# -- systemd-networkd (and NetworkManager's internal client, which saved the same format) --


def _route_text(entries: Iterable[str]) -> tuple[Route, ...]:
    """networkd's ``dst/len,gw`` list."""
    import ipaddress

    routes = []
    for entry in entries:
        destination, _, gateway = entry.partition(",")
        routes.append(
            Route(ipaddress.IPv4Network(destination, strict=False), ipaddress.IPv4Address(gateway))
        )
    return tuple(routes)


def _json_address(value: object) -> str:
    import ipaddress

    if isinstance(value, str):
        return str(ipaddress.IPv4Address(value))
    if isinstance(value, list) and len(value) == 4 and all(isinstance(b, int) for b in value):
        return str(ipaddress.IPv4Address(bytes(value)))
    raise ValueError("not an IPv4 address")


def _networkd_json(
    document: object,
) -> tuple[Optional[str], tuple[str, ...], Optional[tuple[Route, ...]]]:
    """The lease as newer systemd saves it (JSON): Private_Options, Router, Classless_Routes."""
    import ipaddress

    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    endpoint = None
    for option in document.get("Private_Options") or []:
        if isinstance(option, dict) and option.get("Option") == OPTION_WIRESERVER:
            endpoint = endpoint_from_option(bytes.fromhex(str(option.get("Data", ""))))
    routers = tuple(_json_address(r) for r in document.get("Router") or [])
    routes: Optional[tuple[Route, ...]] = None
    if document.get("Classless_Routes"):
        found = []
        for route in document["Classless_Routes"]:
            destination = _json_address(route.get("DestinationString", route.get("Destination")))
            gateway = _json_address(route.get("GatewayString", route.get("Gateway")))
            width = int(route["DestinationPrefixLength"])
            network = ipaddress.IPv4Network(f"{destination}/{width}", strict=False)
            found.append(Route(network, ipaddress.IPv4Address(gateway)))
        routes = tuple(found)
    return endpoint, routers, routes


def parse_networkd_lease(
    text: str, *, client: str = NETWORKD, source: str = "", interface: Optional[str] = None
) -> Optional[Lease]:
    """A systemd-networkd lease file (``KEY=VALUE`` lines, or JSON in newer systemd)."""
    import json

    try:
        if text.lstrip().startswith("{"):
            endpoint, routers, routes = _networkd_json(json.loads(text))
        else:
            values: dict[str, str] = {}
            for line in text.splitlines():
                key, sep, value = line.strip().partition("=")
                if sep and not key.startswith("#"):
                    values[key.strip()] = value.strip().strip("\"'")
            raw = values.get(f"OPTION_{OPTION_WIRESERVER}")
            endpoint = endpoint_from_option(_hex_bytes(raw)) if raw else None
            routers = _ipv4s(values.get("ROUTER", "").split())
            # CLASSLESS_ROUTES since systemd 246; ROUTES before it.
            route_text = values.get("CLASSLESS_ROUTES", values.get("ROUTES"))
            routes = _route_text(route_text.split()) if route_text else None
    except _UNREADABLE:
        return None
    return Lease(client, source, interface, endpoint, routers=routers, routes=routes)


def parse_device_state(
    text: str, *, source: str = "", interface: Optional[str] = None
) -> Optional[Lease]:
    """Option 245 from a NetworkManager device state file, when it records one.

    NetworkManager names the option ``unknown_245`` (dhclient) or
    ``private_245`` (its internal client).
    """
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() in (f"unknown_{OPTION_WIRESERVER}", f"private_{OPTION_WIRESERVER}"):
            try:
                endpoint = endpoint_from_option(_hex_bytes(value))
            except _UNREADABLE:
                continue
            return Lease(NETWORK_MANAGER, source, interface, endpoint)
    return None


# -- finding the leases ---------------------------------------------------------


def _files(ctx: Context, pattern: str) -> list[Path]:
    import glob

    base = str(ctx.root).rstrip("/")
    found = [Path(p) for p in sorted(glob.glob(glob.escape(base) + pattern))]
    return [p for p in found if p.is_file() and not p.is_symlink()][:MAX_LEASE_FILES]


def _read(path: Path) -> Optional[tuple[str, float]]:
    try:
        data = read_bytes_limited(path, MAX_LEASE_FILE)
        mtime = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    return data.decode("utf-8", "replace"), mtime


def _nm_interface(name: str, prefix: str) -> Optional[str]:
    """``internal-<uuid>-<iface>.lease`` / ``dhclient-<uuid>-<iface>.lease`` -> iface."""
    match = re.fullmatch(rf"{prefix}-[0-9a-fA-F-]{{36}}-(.+)\.lease", name)
    return match.group(1) if match else None


def leases(ctx: Context) -> list[Lease]:
    """Every DHCPv4 lease under the root that azagent can read, in no particular order."""
    found: list[Lease] = []
    names = interface_names(ctx)

    def add(items: Iterable[Optional[Lease]], mtime: float) -> None:
        for lease in items:
            if lease is not None:
                found.append(
                    Lease(
                        lease.client,
                        lease.source,
                        lease.interface,
                        lease.endpoint,
                        routers=lease.routers,
                        routes=lease.routes,
                        expires=lease.expires,
                        mtime=mtime,
                        position=lease.position,
                    )
                )

    for path in _files(ctx, "/run/systemd/netif/leases/*"):
        read = _read(path)
        if read:
            source = ctx.display(path)
            add(
                [parse_networkd_lease(read[0], source=source, interface=names.get(path.name))],
                read[1],
            )
    for pattern in ("/var/lib/dhcp/*.leases", "/var/lib/dhcp/*.lease", "/var/lib/dhclient/*"):
        for path in _files(ctx, pattern):
            read = _read(path)
            if read:
                add(parse_dhclient_leases(read[0], source=ctx.display(path)), read[1])
    for path in _files(ctx, "/var/lib/NetworkManager/dhclient-*.lease"):
        read = _read(path)
        if read:
            items = parse_dhclient_leases(read[0], client=NETWORK_MANAGER, source=ctx.display(path))
            add(items, read[1])
    for path in _files(ctx, "/var/lib/NetworkManager/internal-*.lease"):
        read = _read(path)
        if read:
            lease = parse_networkd_lease(
                read[0],
                client=NETWORK_MANAGER,
                source=ctx.display(path),
                interface=_nm_interface(path.name, "internal"),
            )
            add([lease], read[1])
    for path in _files(ctx, "/run/NetworkManager/devices/*"):
        read = _read(path)
        if read:
            source = ctx.display(path)
            add(
                [parse_device_state(read[0], source=source, interface=names.get(path.name))],
                read[1],
            )
    return found


def newest_lease(candidates: Iterable[Lease], now: float) -> Optional[Lease]:
    """The newest unexpired lease that names a WireServer (file time, then place in the file)."""
    usable = [
        lease
        for lease in candidates
        if lease.endpoint is not None and (lease.expires is None or lease.expires > now)
    ]
    return max(usable, key=lambda lease: (lease.mtime, lease.position), default=None)


# -- the client serving an interface -------------------------------------------


class Process:
    __slots__ = ("argv", "comm", "pid", "uid")

    def __init__(
        self,
        pid: int,
        comm: str,
        argv: tuple[str, ...],
        uid: Optional[int],  # real uid
    ) -> None:
        self.pid: Final = pid
        self.comm: Final = comm
        self.argv: Final = argv
        self.uid: Final = uid


class DhcpClient:
    """The DHCP client of the primary interface (``argv``: a dhclient's command line)."""

    __slots__ = ("argv", "interface", "manager")

    def __init__(
        self,
        manager: str,  # NETWORKD, NETWORK_MANAGER or DHCLIENT
        interface: str,
        argv: tuple[str, ...] = (),
    ) -> None:
        self.manager: Final = manager
        self.interface: Final = interface
        self.argv: Final = argv


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
    index = interface_index(ctx, interface)
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
