"""lib/azagent/dhcp.py: the lease files of every DHCP client, the routing table, and
which client serves the primary interface.

The leases are WALinuxAgent's samples (tests/fixtures/walinuxagent) and files
written as systemd-networkd, dhclient and NetworkManager write them; the
running system (/proc, /sys, /run) is described by plain files under a
temporary root. The stage-level behaviour is in test_network.py and
test_hostname.py.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest
from conftest import FIXTURES

from azagent import config, dhcp
from azagent.context import Context

LEASES = FIXTURES / "walinuxagent"
ANY = "0.0.0.0"  # noqa: S104 - the "any" address of a route, not a bind
NOW = 1_700_000_000.0  # November 2023: after every sample's "2015" expiry, before "2152"


def context(root: Path) -> Context:
    path = root / "etc/waagent.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return Context(stage="test", root=root, config=config.load(path))


def hex_address(address: str) -> str:
    """An address as /proc/net/route prints it: the 32-bit value in this machine's byte order."""
    return f"{struct.unpack('=I', socket.inet_aton(address))[0]:08X}"


def route_table(root: Path, *routes: tuple[str, str, str, str, str, int]) -> None:
    """/proc/net/route with (interface, destination, gateway, mask, flags, metric) rows."""
    lines = ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"]
    for interface, destination, gateway, mask, flags, metric in routes:
        lines.append(
            f"{interface}\t{hex_address(destination)}\t{hex_address(gateway)}\t{flags}\t0\t0\t"
            f"{metric}\t{hex_address(mask)}\t0\t0\t0"
        )
    path = root / "proc/net/route"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def networkd_lease(endpoint_hex: str, routes: str | None = None) -> str:
    text = "# This is private data. Do not parse.\nADDRESS=10.0.1.4\nROUTER=10.0.1.1\n"
    if routes:
        text += f"CLASSLESS_ROUTES={routes}\n"
    return text + f"OPTION_{dhcp.OPTION_WIRESERVER}={endpoint_hex}\n"


# -- parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("dhcp.leases", "168.63.129.16"),
        # option 245 wins over a custom domain-name-servers
        ("dhcp.leases.custom.dns", "168.63.129.16"),
        # the last unexpired lease of the file: the third one expired in 2012
        ("dhcp.leases.multi", "168.63.129.2"),
    ],
)
def test_dhclient_samples_name_what_waagent_finds(sample: str, expected: str) -> None:
    found = dhcp.parse_dhclient_leases((LEASES / sample).read_text(), source=sample)
    assert len(found) == 3
    chosen = dhcp.newest_lease(found, NOW)
    assert chosen is not None
    assert chosen.endpoint == expected
    assert chosen.interface == "eth0"
    assert chosen.routers == ("10.0.1.1",)


def test_dhclient_sample_details() -> None:
    found = dhcp.parse_dhclient_leases((LEASES / "dhcp.leases").read_text())
    assert [lease.expires for lease in found] == [None, 1434473934.0, 5761063630.0]
    assert found[1].routes is None  # that lease carries no option 121
    assert found[2].routes is not None
    assert [(str(r.destination), str(r.gateway)) for r in found[2].routes] == [
        ("0.0.0.0/0", "10.0.1.1"),
        ("168.63.129.16/32", "10.0.1.1"),
    ]
    # After 2152 every dated lease has expired; "never" has not.
    later = dhcp.newest_lease(found, 6_000_000_000.0)
    assert later is not None
    assert later.position == 0


def test_dhclient_value_spellings() -> None:
    text = (
        'default-duid "\\000\\001";\n'
        "lease {\n"
        '  interface "ens5";  # a comment; with a semicolon\n'
        "  option routers 10.1.0.1,10.1.0.2;\n"
        "  option unknown-245 a:0:0:1;\n"  # dhclient prints bytes with %x
        "  expire epoch 4102444800; # Fri Jan  1 00:00:00 2100\n"
        "}\n"
        "lease {\n"
        '  interface "ens5";\n'
        '  option unknown-245 "ABCD";\n'  # printable bytes come quoted
        "  expire 5 2099/12/31 23:59:59;\n"
        "}\n"
        "lease {\n"
        '  interface "ens5";\n'
        "  option unknown-245 a8:3f:81:10;\n"  # no expiry: not trusted
        "}\n"
        'lease6 {\n  interface "ens5";\n  option unknown-245 a8:3f:81:11;\n  expire never;\n}\n'
    )
    found = dhcp.parse_dhclient_leases(text)
    assert [(lease.endpoint, lease.routers) for lease in found] == [
        ("10.0.0.1", ("10.1.0.1", "10.1.0.2")),
        ("65.66.67.68", ()),
    ]
    assert found[0].interface == "ens5"
    assert found[0].expires == 4102444800.0


def bootp_options(packet: bytes) -> dict[int, bytes]:
    """The options of a DHCP message (RFC 2131: a 236-byte header, the magic cookie, TLVs)."""
    assert packet[236:240] == b"\x63\x82\x53\x63"
    options: dict[int, bytes] = {}
    index = 240
    while index < len(packet):
        code = packet[index]
        if code == 255:
            break
        if code == 0:
            index += 1
            continue
        length = packet[index + 1]
        options[code] = packet[index + 2 : index + 2 + length]
        index += 2 + length
    return options


def test_a_platform_dhcp_offer_decodes() -> None:
    """WALinuxAgent's captured answer of an Azure DHCP server: option 245 is what we decode."""
    options = bootp_options((LEASES / "dhcp").read_bytes())
    assert options[53] == b"\x02"  # DHCPOFFER
    assert dhcp.endpoint_from_option(options[dhcp.OPTION_WIRESERVER]) == "10.62.144.140"
    assert socket.inet_ntoa(options[3]) == "10.62.144.1"


def test_option_245_must_be_a_unicast_address() -> None:
    assert dhcp.endpoint_from_option(bytes.fromhex("a83f8110")) == "168.63.129.16"
    for raw in ("00000000", "ffffffff", "e0000001", "f0000001", "a83f81", "a83f811000"):
        assert dhcp.endpoint_from_option(bytes.fromhex(raw)) is None, raw


def test_classless_routes() -> None:
    raw = bytes([0, 10, 0, 1, 1, 32, 168, 63, 129, 16, 10, 0, 1, 1, 24, 10, 2, 3, 0, 0, 0, 0])
    routes = dhcp.classless_routes(raw)
    assert [(str(r.destination), str(r.gateway)) for r in routes] == [
        ("0.0.0.0/0", "10.0.1.1"),
        ("168.63.129.16/32", "10.0.1.1"),
        ("10.2.3.0/24", ANY),
    ]
    for bad in (bytes([33, 1, 2, 3, 4, 5, 6, 7, 8]), bytes([32, 168, 63, 129, 16, 10, 0])):
        with pytest.raises(ValueError, match="route"):
            dhcp.classless_routes(bad)


def test_networkd_lease_files() -> None:
    text = networkd_lease("a83f8110", "0.0.0.0/0,10.0.1.1 168.63.129.16/32,10.0.1.1")
    lease = dhcp.parse_networkd_lease(text, interface="eth0")
    assert lease is not None
    assert (lease.client, lease.endpoint, lease.routers) == (
        dhcp.NETWORKD,
        "168.63.129.16",
        ("10.0.1.1",),
    )
    assert lease.routes is not None
    assert [str(r.destination) for r in lease.routes] == ["0.0.0.0/0", "168.63.129.16/32"]
    # systemd < 246 called them ROUTES
    old = dhcp.parse_networkd_lease("ROUTES=0.0.0.0/0,10.0.1.1\nOPTION_245=0a000001\n")
    assert old is not None
    assert old.endpoint == "10.0.0.1"
    assert old.routes is not None
    assert str(old.routes[0].gateway) == "10.0.1.1"
    # newer systemd saves JSON
    document = {
        "Address": [10, 0, 1, 4],
        "Router": [[10, 0, 1, 1]],
        "Classless_Routes": [
            {
                "Destination": [168, 63, 129, 16],
                "DestinationString": "168.63.129.16",
                "DestinationPrefixLength": 32,
                "Gateway": [10, 0, 1, 1],
                "GatewayString": "10.0.1.1",
            }
        ],
        "Private_Options": [{"Option": 245, "Data": "a83f8110"}],
    }
    modern = dhcp.parse_networkd_lease(json.dumps(document, indent=2))
    assert modern is not None
    assert (modern.endpoint, modern.routers) == ("168.63.129.16", ("10.0.1.1",))
    assert modern.routes is not None
    assert str(modern.routes[0].destination) == "168.63.129.16/32"
    # garbage is no lease, not a crash
    assert dhcp.parse_networkd_lease("OPTION_245=zz\n") is None
    assert dhcp.parse_networkd_lease("{not json") is None


def test_network_manager_device_state() -> None:
    text = "[device]\nmanaged=true\n[dhcp4]\nunknown_245=a8:3f:81:10\n"
    lease = dhcp.parse_device_state(text, interface="eth0")
    assert lease is not None
    assert (lease.client, lease.endpoint) == (dhcp.NETWORK_MANAGER, "168.63.129.16")
    assert dhcp.parse_device_state("[device]\nmanaged=true\n") is None


# -- the routing table ----------------------------------------------------------


def test_kernel_routes_parse_proc_net_route(root: Path) -> None:
    route_table(
        root,
        ("eth0", ANY, "10.0.1.1", ANY, "0003", 100),
        ("eth0", "168.63.129.16", "10.0.1.1", "255.255.255.255", "0007", 100),
    )
    routes = dhcp.kernel_routes(context(root))
    assert [(r.interface, str(r.destination), str(r.gateway)) for r in routes] == [
        ("eth0", "0.0.0.0/0", "10.0.1.1"),
        ("eth0", "168.63.129.16/32", "10.0.1.1"),
    ]


def test_the_primary_interface_is_the_up_default_route_with_the_lowest_metric(root: Path) -> None:
    route_table(
        root,
        ("eth1", ANY, "10.0.2.1", ANY, "0003", 200),
        ("eth9", ANY, "10.0.9.1", ANY, "0002", 10),  # not up
        ("eth2", "10.0.3.0", ANY, "255.255.255.0", "0001", 0),  # not a default route
        ("-x", ANY, "10.0.4.1", ANY, "0003", 0),  # a name a command would read as an option
        ("eth0", ANY, "10.0.1.1", ANY, "0003", 100),
    )
    assert dhcp.primary_interface(context(root)) == "eth0"
    route_table(root, ("eth0", "10.0.1.0", ANY, "255.255.255.0", "0001", 0))
    assert dhcp.primary_interface(context(root)) is None
    assert dhcp.primary_interface(context(root / "nothing")) is None


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("eth0", True),
        ("enP12345s1", True),
        ("br-lan.100", True),
        ("veth@1", True),
        ("abcdefghijklmno", True),  # 15 characters, the kernel's most
        ("abcdefghijklmnop", False),
        ("eth0:1", False),  # an address label, not an interface (the kernel refuses ':')
        ("-eth0", False),
        (".hidden", False),
        ("a/b", False),
        ("", False),
    ],
)
def test_interface_names_azagent_puts_on_a_command_line(name: str, valid: bool) -> None:
    assert dhcp.valid_interface_name(name) is valid
