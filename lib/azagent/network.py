"""Networking an Azure VM needs: where the WireServer is, a route to it, and
interface names that survive a change of VM (the proxy is in :mod:`azagent.proxy`).

- The WireServer's address comes from DHCP option 245 in the lease of
  whichever client got it: systemd-networkd (``/run/systemd/netif/leases``),
  dhclient (``/var/lib/dhcp``, ``/var/lib/dhclient``) or NetworkManager (its
  dhclient and internal lease files, its device state in /run), as
  :mod:`azagent.dhcp` reads them. The newest lease that names one wins;
  without one the configured ``Endpoint.WireServer`` applies. The network
  stage saves the address in :data:`~azagent.context.WIRESERVER_PATH`, which
  :meth:`Context.endpoint <azagent.context.Context.endpoint>` prefers.
- The platform's DHCP server sends its routes as classless static routes
  (option 121), which some clients ignore: when the routing table has no
  host route to the WireServer, one is added through the lease's gateway.
- Persistent-net udev rules pin interface names to the MAC addresses of the
  VM an image was made on, so a new VM's NIC comes up as eth1 with no
  configuration: they are moved aside and their generator masked.

Everything here reads the target system under ``ctx.root`` (/proc, /sys and
/run included), so tests describe a running system with plain files; the
network stage runs the commands this module plans only on the running system.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from azagent import dhcp
from azagent.context import IPV4, WIRESERVER_PATH, Context
from azagent.fsutil import atomic_write, ensure_dir, read_bytes_limited
from azagent.plan import Action

# ipaddress is imported where it is used: a boot without a lease to follow
# needs none of it, and every stage is a fresh process at boot.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from typing import Final, Optional

# -- the endpoint ---------------------------------------------------------------


class Endpoint:
    """The WireServer this boot: its URL, its address when it has one, and why."""

    __slots__ = ("address", "lease", "origin", "url")

    def __init__(
        self,
        url: str,
        address: Optional[str],  # the IPv4 of an http://A.B.C.D URL, else None
        origin: str,
        lease: Optional[dhcp.Lease] = None,
    ) -> None:
        self.url: Final = url
        self.address: Final = address
        self.origin: Final = origin
        self.lease: Final = lease


def address_of(url: str) -> Optional[str]:
    """A.B.C.D when ``url`` is exactly ``http://A.B.C.D`` (no port, no path), else None."""
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme != "http" or parts.port is not None or parts.path or not parts.hostname:
        return None
    return parts.hostname if re.fullmatch(IPV4, parts.hostname) else None


def discover(ctx: Context, now: Optional[float] = None) -> Endpoint:
    """The WireServer: option 245 of the newest lease, else Endpoint.WireServer."""
    lease = dhcp.newest_lease(dhcp.leases(ctx), time.time() if now is None else now)
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


class HostRoute:
    """``ip route add <address>/32 [via <gateway>] dev <interface>``."""

    __slots__ = ("address", "gateway", "interface")

    def __init__(
        self,
        address: str,
        gateway: Optional[str],  # None: on-link
        interface: str,
    ) -> None:
        self.address: Final = address
        self.gateway: Final = gateway
        self.interface: Final = interface

    def argv(self) -> tuple[str, ...]:
        via = ("via", self.gateway) if self.gateway else ()
        return ("ip", "route", "add", f"{self.address}/32", *via, "dev", self.interface)


def lease_gateway(lease: dhcp.Lease, address: str) -> Optional[ipaddress.IPv4Address]:
    """The lease's gateway to ``address``: its most specific classless route, else its router."""
    import ipaddress

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
    import ipaddress

    if (
        not dhcp.valid_interface_name(lease.interface)
        or not ctx.path(f"/sys/class/net/{lease.interface}").exists()
    ):
        return None
    host = ipaddress.IPv4Network(f"{address}/32")
    if any(route.destination == host for route in dhcp.kernel_routes(ctx)):
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


def keep_copy(source: Path, destination: Path) -> None:
    """Keep a copy of ``source`` in ``destination`` (in Lib.Dir, made 0700 if new)."""
    ensure_dir(destination.parent, mode=0o700)
    atomic_write(destination, source.read_bytes(), mode=0o644)


def move_aside(source: Path, destination: Path) -> None:
    """Keep a copy in ``destination`` (in Lib.Dir, made 0700 if new), then remove ``source``."""
    keep_copy(source, destination)
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
        # Kept, then replaced by the mask below: removed first, a run killed
        # in between would leave neither the generator nor its mask, and the
        # next run no reason to mask it.
        kept = lib_dir / GENERATOR
        changes.append(
            Action(
                f"keep {ctx.display(generator)} in {ctx.display(kept)}",
                functools.partial(keep_copy, generator, kept),
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
