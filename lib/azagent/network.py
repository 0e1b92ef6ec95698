"""Networking an Azure VM needs: where the WireServer is, a route to it,
interface names that survive a change of VM, and the proxy for everything else.

- The WireServer's address comes from DHCP option 245 in the lease of
  whichever client got it: systemd-networkd (``/run/systemd/netif/leases``),
  dhclient (``/var/lib/dhcp``, ``/var/lib/dhclient``) or NetworkManager (its
  dhclient and internal lease files, its device state in /run). The newest
  lease that names one wins; without one the configured
  ``Endpoint.WireServer`` applies. The network stage saves the address in
  :data:`~azagent.context.WIRESERVER_PATH`, which
  :meth:`Context.endpoint <azagent.context.Context.endpoint>` prefers.
- The platform's DHCP server sends its routes as classless static routes
  (option 121), which some clients ignore: when the routing table has no
  host route to the WireServer, one is added through the lease's gateway.
- Persistent-net udev rules pin interface names to the MAC addresses of the
  VM an image was made on, so a new VM's NIC comes up as eth1 with no
  configuration: they are moved aside and their generator masked.
- :func:`proxies` gives the HTTP proxy for traffic other than the platform
  endpoints, which are always reached directly.

Everything here reads the target system under ``ctx.root`` (/proc, /sys and
/run included), so tests describe a running system with plain files; the
network stage runs the commands this module plans only on the running system.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import ipaddress
import json
import os
import re
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from azagent.context import WIRESERVER_PATH, Context
from azagent.errors import INPUT_ERRORS, AzagentError
from azagent.fsutil import atomic_write, ensure_dir, read_bytes_limited
from azagent.plan import Action

OPTION_WIRESERVER = 245
MAX_LEASE_FILE = 1024 * 1024
MAX_LEASE_FILES = 64  # per location; a lease directory holds a few files

NETWORKD = "systemd-networkd"
DHCLIENT = "dhclient"
NETWORK_MANAGER = "NetworkManager"

# Interface names as the kernel allows them, minus a leading '-' or '.' that
# a command would read as an option or a path.
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,14}")
_DHCLIENT_TIME = "%Y/%m/%d %H:%M:%S"
_LEASE_START = re.compile(r"(?m)^\s*lease\s*\{")
_OCTAL = re.compile(r"[0-7]{1,3}")
# What a lease file written by someone else can make a reader raise; the
# statement or the file is then skipped as unreadable.
_UNREADABLE = INPUT_ERRORS


@dataclass(frozen=True)
class Route:
    """A route a DHCP server gave (option 121); gateway 0.0.0.0 means on-link."""

    destination: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address


@dataclass(frozen=True)
class Lease:
    """What azagent needs from one DHCPv4 lease."""

    client: str  # NETWORKD, DHCLIENT or NETWORK_MANAGER
    source: str  # the file, as the target system spells it
    interface: Optional[str]
    endpoint: Optional[str]  # option 245, dotted quad
    routers: tuple[str, ...] = ()  # option 3
    routes: Optional[tuple[Route, ...]] = None  # option 121; None: the lease has none
    expires: Optional[float] = None  # epoch seconds; None: never (or not recorded)
    mtime: float = 0.0  # of the file: the newest lease wins
    position: int = 0  # in the file: later dhclient leases are newer


# -- option values --------------------------------------------------------------


def endpoint_from_option(raw: bytes) -> Optional[str]:
    """The WireServer address option 245 carries (four bytes), or None if it is not one."""
    if len(raw) != 4:
        return None
    address = ipaddress.IPv4Address(raw)
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return None  # 0.0.0.0, 224/4, 240/4 (255.255.255.255 included)
    return str(address)


def classless_routes(raw: bytes) -> tuple[Route, ...]:
    """Decode option 121 (RFC 3442): width, significant octets, gateway; ValueError if malformed."""
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
            octal = _OCTAL.match(inner, index + 1)  # in place: no copy of the rest per escape
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
        match = _LEASE_START.search(text, position)
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
                Lease(client, source, interface, endpoint, routers, routes, expires, 0.0, position)
            )
    return leases


# -- systemd-networkd (and NetworkManager's internal client, which saved the same format) --


def _route_text(entries: Iterable[str]) -> tuple[Route, ...]:
    """networkd's ``dst/len,gw`` list."""
    routes = []
    for entry in entries:
        destination, _, gateway = entry.partition(",")
        routes.append(
            Route(ipaddress.IPv4Network(destination, strict=False), ipaddress.IPv4Address(gateway))
        )
    return tuple(routes)


def _json_address(value: object) -> str:
    if isinstance(value, str):
        return str(ipaddress.IPv4Address(value))
    if isinstance(value, list) and len(value) == 4 and all(isinstance(b, int) for b in value):
        return str(ipaddress.IPv4Address(bytes(value)))
    raise ValueError("not an IPv4 address")


def _networkd_json(
    document: object,
) -> tuple[Optional[str], tuple[str, ...], Optional[tuple[Route, ...]]]:
    """The lease as newer systemd saves it (JSON): Private_Options, Router, Classless_Routes."""
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
    return Lease(client, source, interface, endpoint, routers, routes)


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


def interface_names(ctx: Context) -> dict[str, str]:
    """ifindex -> interface name, from /sys/class/net under the root."""
    names = {}
    base = ctx.path("/sys/class/net")
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return {}
    for name in entries:
        try:
            index = (base / name / "ifindex").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if index.isdigit():
            names[index] = name
    return names


def _files(ctx: Context, pattern: str) -> list[Path]:
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
                found.append(dataclasses.replace(lease, mtime=mtime))

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


# -- the endpoint ---------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """The WireServer this boot: its URL, its address when it has one, and why."""

    url: str
    address: Optional[str]  # the IPv4 of an http://A.B.C.D URL, else None
    origin: str
    lease: Optional[Lease] = None


def address_of(url: str) -> Optional[str]:
    """A.B.C.D when ``url`` is exactly ``http://A.B.C.D`` (no port, no path), else None."""
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme != "http" or parts.port is not None or parts.path or not parts.hostname:
        return None
    try:
        return str(ipaddress.IPv4Address(parts.hostname))
    except ValueError:
        return None


def discover(ctx: Context, now: Optional[float] = None) -> Endpoint:
    """The WireServer: option 245 of the newest lease, else Endpoint.WireServer."""
    lease = newest_lease(leases(ctx), time.time() if now is None else now)
    if lease is not None and lease.endpoint is not None:
        return Endpoint(
            f"http://{lease.endpoint}", lease.endpoint, f"DHCP option 245 in {lease.source}", lease
        )
    configured = ctx.config.required_str("Endpoint.WireServer").rstrip("/")
    return Endpoint(
        configured, address_of(configured), "Endpoint.WireServer (no DHCP lease names one)"
    )


def saved_endpoint(ctx: Context) -> Optional[str]:
    try:
        return ctx.path(WIRESERVER_PATH).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def save_endpoint(ctx: Context, url: str) -> None:
    atomic_write(ctx.path(WIRESERVER_PATH), f"{url}\n".encode("ascii"), mode=0o644)


# -- the route to it ------------------------------------------------------------


@dataclass(frozen=True)
class KernelRoute:
    interface: str
    destination: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address


def kernel_routes(ctx: Context) -> list[KernelRoute]:
    """The IPv4 main routing table, from /proc/net/route under the root.

    The kernel prints each address as the hexadecimal of the 32-bit value in
    this machine's byte order.
    """
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
        except (ValueError, struct.error):
            continue
        routes.append(KernelRoute(fields[0], network, gateway))
    return routes


@dataclass(frozen=True)
class HostRoute:
    """``ip route add <address>/32 [via <gateway>] dev <interface>``."""

    address: str
    gateway: Optional[str]  # None: on-link
    interface: str

    def argv(self) -> tuple[str, ...]:
        via = ("via", self.gateway) if self.gateway else ()
        return ("ip", "route", "add", f"{self.address}/32", *via, "dev", self.interface)


def lease_gateway(lease: Lease, address: str) -> Optional[ipaddress.IPv4Address]:
    """The lease's gateway to ``address``: its most specific classless route, else its router."""
    target = ipaddress.IPv4Address(address)
    covering = [route for route in lease.routes or () if target in route.destination]
    if covering:
        return max(covering, key=lambda route: route.destination.prefixlen).gateway
    if lease.routers:
        return ipaddress.IPv4Address(lease.routers[0])
    return None


def wireserver_route(ctx: Context, endpoint: Endpoint) -> Optional[HostRoute]:
    """The host route to add, or None: no lease, or the table already routes the address itself.

    A DHCP client that honours option 121 has installed the platform's host
    route already; one that ignores it (or a lease without it) leaves the
    WireServer behind whatever default route wins, which a VPN or a second
    NIC may own.
    """
    lease, address = endpoint.lease, endpoint.address
    if lease is None or address is None or lease.interface is None:
        return None
    if (
        not _IFNAME.fullmatch(lease.interface)
        or not ctx.path(f"/sys/class/net/{lease.interface}").exists()
    ):
        return None
    host = ipaddress.IPv4Network(f"{address}/32")
    if any(route.destination == host for route in kernel_routes(ctx)):
        return None
    gateway = lease_gateway(lease, address)
    if gateway is None or str(gateway) == address:
        return None
    return HostRoute(address, None if gateway.is_unspecified else str(gateway), lease.interface)


# -- stable interface names -----------------------------------------------------

RULES_DIR = "/etc/udev/rules.d"
PERSISTENT_NET = "70-persistent-net.rules"
GENERATOR = "75-persistent-net-generator.rules"
GENERATOR_DIRS = ("/lib/udev/rules.d", "/usr/lib/udev/rules.d")
GENERATOR_MASK = (
    b"# azagent: masks the persistent-net generator, which would pin interface\n"
    b"# names to this VM's MAC addresses (see azure-network.service).\n"
)
_MAX_RULES = 1024 * 1024


def has_rules(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def pins_names(text: str) -> bool:
    """Whether udev rules name interfaces after MAC addresses (``ATTR{address}==`` + ``NAME=``)."""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if "ATTR{address}" in line and re.search(r'(?<![A-Z_])NAME\s*:?=\s*"', line):
            return True
    return False


def written_by_cloud_init(text: str) -> bool:
    """cloud-init writes these rules itself on every boot, from this VM's MAC addresses."""
    head = [line for line in text.splitlines()[:5] if line.lstrip().startswith("#")]
    return any("cloud-init" in line for line in head)


def _rules_text(path: Path) -> Optional[str]:
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return read_bytes_limited(path, _MAX_RULES).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None


def move_aside(source: Path, destination: Path) -> None:
    """Keep a copy in ``destination`` (in Lib.Dir, made 0700 if new), then remove ``source``."""
    ensure_dir(destination.parent, mode=0o700)
    atomic_write(destination, source.read_bytes(), mode=0o644)
    source.unlink()


def persistent_net_changes(ctx: Context) -> list[Action]:
    """What neutralises the persistent-net rules under the root (empty when nothing pins names)."""
    changes: list[Action] = []
    lib_dir = ctx.lib_dir
    rules_dir = ctx.path(RULES_DIR)
    rules = rules_dir / PERSISTENT_NET
    text = _rules_text(rules)
    if text is not None and pins_names(text) and not written_by_cloud_init(text):
        target = lib_dir / PERSISTENT_NET
        changes.append(
            Action(
                f"move {ctx.display(rules)} aside to {ctx.display(target)}: "
                "it pins interface names to the MAC addresses of the VM the image was made on",
                functools.partial(move_aside, rules, target),
            )
        )

    generator = rules_dir / GENERATOR
    local = _rules_text(generator)
    shipped = [
        ctx.path(f"{directory}/{GENERATOR}")
        for directory in GENERATOR_DIRS
        if has_rules(_rules_text(ctx.path(f"{directory}/{GENERATOR}")) or "")
    ]
    if local is not None and has_rules(local):
        kept = lib_dir / GENERATOR
        changes.append(
            Action(
                f"move {ctx.display(generator)} aside to {ctx.display(kept)}",
                functools.partial(move_aside, generator, kept),
            )
        )
    masked = generator.is_symlink() or (local is not None and not has_rules(local))
    if not masked and (shipped or (local is not None and has_rules(local))):
        changes.append(
            Action(
                f"mask the persistent-net generator with an empty {ctx.display(generator)}",
                functools.partial(atomic_write, generator, GENERATOR_MASK, mode=0o644),
            )
        )
    return changes


# -- the proxy for everything else ------------------------------------------------

# The platform's fixed addresses: the WireServer (and HostGAPlugin) and IMDS.
PLATFORM_ADDRESSES = ("168.63.129.16", "169.254.169.254")


class ProxyError(AzagentError):
    """A proxy setting cannot be used."""


def _proxy_url(value: str, where: str) -> str:
    value = value.strip()
    if "://" not in value:
        value = f"http://{value}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ProxyError(f"{where} is not a proxy URL") from None
    if parts.scheme not in ("http", "https", "socks5", "socks5h") or not parts.hostname:
        raise ProxyError(f"{where} is not a proxy URL")
    return value


def proxies(ctx: Context, environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The proxy for each scheme, as ``requests`` takes it: ``{"http": URL, "https": URL}``.

    HttpProxy.Host (and HttpProxy.Port; without it the proxy's port is 80)
    wins over the ``http_proxy``/``https_proxy`` environment variables (or
    their upper-case spellings), as in WALinuxAgent. Empty: no proxy. Never
    use it for the platform endpoints: see :func:`proxies_for`.
    """
    host = ctx.config.get_str("HttpProxy.Host")
    if host is not None:
        port = ctx.config.get_int("HttpProxy.Port")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        url = f"http://{host}" + (f":{port}" if port is not None else "")
        return {"http": url, "https": url}
    env = os.environ if environ is None else environ
    found = {}
    for scheme in ("http", "https"):
        for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
            if env.get(name):
                found[scheme] = _proxy_url(env[name], f"the {name} environment variable")
                break
    return found


def _no_proxy(host: str, environ: Mapping[str, str]) -> bool:
    """Whether ``no_proxy`` (or NO_PROXY) exempts ``host``: ``*``, domain suffixes, IPs, CIDRs."""
    value = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    try:
        address: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.ip_address(
            host
        )
    except ValueError:
        address = None
    for entry in (item.strip().lower() for item in value.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        suffix = entry.lstrip(".").split(":", 1)[0]
        if host == suffix or host.endswith("." + suffix):
            return True
    return False


def platform_hosts(ctx: Context) -> set[str]:
    """Hosts that are never reached through a proxy: the WireServer, HostGAPlugin and IMDS."""
    hosts = set(PLATFORM_ADDRESSES)
    for name in ("WireServer", "HostGAPlugin", "IMDS"):
        host = urlsplit(ctx.endpoint(name)).hostname
        if host:
            hosts.add(host.lower())
    return hosts


def proxies_for(
    ctx: Context, url: str, environ: Optional[Mapping[str, str]] = None
) -> dict[str, str]:
    """The proxies for one request to ``url``: none for a platform endpoint or a no_proxy host.

    For the extension handler's downloads: pass the result as ``proxies=``
    on a session with ``trust_env = False``, so that nothing else decides.
    """
    env = os.environ if environ is None else environ
    host = (urlsplit(url).hostname or "").lower()
    if not host or host in platform_hosts(ctx) or _no_proxy(host, env):
        return {}
    return proxies(ctx, env)
