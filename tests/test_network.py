"""The network stage and lib/azagent/network.py: WireServer discovery, its route,
persistent-net rules, and Context.endpoint's use of the saved address.

The leases are WALinuxAgent's samples (tests/fixtures/walinuxagent) and files
written as systemd-networkd, dhclient and NetworkManager write them. Commands
for the running system appear in the plan only ("[not run: ...]").
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, load_stage, run_stage, snapshot

from azagent import config, dhcp, network
from azagent.context import Context

LEASES = FIXTURES / "walinuxagent"
RESULT = "run/azagent/stages/network.json"
SAVED = "run/azagent/wireserver"
ANY = "0.0.0.0"  # noqa: S104 - the "any" address of a route, not a bind
NOW = 1_700_000_000.0  # November 2023: after every sample's "2015" expiry, before "2152"


def context(root: Path, *lines: str) -> Context:
    path = root / "etc/waagent.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return Context(stage="test", root=root, config=config.load(path))


def configure(root: Path, *lines: str) -> None:
    context(root, *lines)


def result(root: Path) -> dict[str, object]:
    data = json.loads((root / RESULT).read_text())
    assert isinstance(data, dict)
    return data


def hex_address(address: str) -> str:
    """An address as /proc/net/route prints it: the 32-bit value in this machine's byte order."""
    return f"{struct.unpack('=I', socket.inet_aton(address))[0]:08X}"


def route_table(root: Path, *routes: tuple[str, str, str, str]) -> None:
    """/proc/net/route with (interface, destination, gateway, mask) rows."""
    lines = ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"]
    for interface, destination, gateway, mask in routes:
        flags = "0003" if gateway != ANY else "0001"
        lines.append(
            f"{interface}\t{hex_address(destination)}\t{hex_address(gateway)}\t{flags}\t0\t0\t100\t"
            f"{hex_address(mask)}\t0\t0\t0"
        )
    path = root / "proc/net/route"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def interface(root: Path, name: str = "eth0", index: int = 2) -> None:
    path = root / "sys/class/net" / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "ifindex").write_text(f"{index}\n")


def write(root: Path, relative: str, text: str, mtime: float | None = None) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def dhclient_lease(
    endpoint_hex: str, *, routes: str | None = None, router: str = "10.0.1.1"
) -> str:
    classless = f"  option rfc3442-classless-static-routes {routes};\n" if routes else ""
    return (
        'lease {\n  interface "eth0";\n  fixed-address 10.0.1.4;\n'
        f"  option routers {router};\n{classless}"
        f"  option unknown-245 {endpoint_hex};\n  expire never;\n}}\n"
    )


def networkd_lease(endpoint_hex: str, routes: str | None = None) -> str:
    text = "# This is private data. Do not parse.\nADDRESS=10.0.1.4\nROUTER=10.0.1.1\n"
    if routes:
        text += f"CLASSLESS_ROUTES={routes}\n"
    return text + f"OPTION_{dhcp.OPTION_WIRESERVER}={endpoint_hex}\n"


def azure_vm(root: Path) -> None:
    """eth0 (ifindex 2) with a default route and nothing else."""
    interface(root)
    route_table(
        root,
        ("eth0", ANY, "10.0.1.1", ANY),
        ("eth0", "10.0.1.0", ANY, "255.255.255.0"),
    )


# -- the stage: the endpoint ------------------------------------------------------


def test_saves_the_endpoint_of_the_newest_lease(root: Path) -> None:
    azure_vm(root)
    write(root, "run/systemd/netif/leases/2", networkd_lease("0a000063"), mtime=NOW - 100)
    write(root, "var/lib/dhcp/dhclient.eth0.leases", dhclient_lease("a8:3f:81:10"), mtime=NOW)
    run = run_stage("network", "--root", str(root))
    assert run.returncode == 0, run.stderr
    saved = root / SAVED
    assert saved.read_text() == "http://168.63.129.16\n"
    assert oct(saved.stat().st_mode & 0o777) == "0o644"
    changes = result(root)["changes"]
    assert isinstance(changes, list)
    assert changes[0] == (
        "save the WireServer http://168.63.129.16 (DHCP option 245 in "
        "/var/lib/dhcp/dhclient.eth0.leases) in /run/azagent/wireserver"
    )
    # Now networkd's lease is the newer one.
    os.utime(root / "run/systemd/netif/leases/2", (NOW + 100, NOW + 100))
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert saved.read_text() == "http://10.0.0.99\n"
    assert "/run/systemd/netif/leases/2" in str(result(root)["changes"])


@pytest.mark.parametrize(
    ("relative", "text"),
    [
        ("run/systemd/netif/leases/2", networkd_lease("a83f8110")),
        ("var/lib/dhclient/dhclient-eth0.leases", dhclient_lease("a8:3f:81:10")),
        ("var/lib/NetworkManager/dhclient-0c8e7e3a-2e0e-3d55-8c3f-0b3a1e0e6b1d-eth0.lease",
         dhclient_lease("a8:3f:81:10")),
        ("var/lib/NetworkManager/internal-0c8e7e3a-2e0e-3d55-8c3f-0b3a1e0e6b1d-eth0.lease",
         networkd_lease("a83f8110")),
        ("run/NetworkManager/devices/2", "[device]\nmanaged=true\nprivate_245=a83f8110\n"),
    ],
)  # fmt: skip
def test_every_dhcp_client_is_read(root: Path, relative: str, text: str) -> None:
    azure_vm(root)
    write(root, relative, text)
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert (root / SAVED).read_text() == "http://168.63.129.16\n"
    assert f"DHCP option 245 in /{relative}" in str(result(root)["changes"])


def test_second_run_changes_nothing(root: Path) -> None:
    azure_vm(root)
    write(root, "var/lib/dhcp/dhclient.eth0.leases", (LEASES / "dhcp.leases").read_text())
    write(root, "etc/udev/rules.d/70-persistent-net.rules", PINNED)
    assert run_stage("network", "--root", str(root)).returncode == 0
    # What `ip route add` did on a running system:
    route_table(
        root,
        ("eth0", ANY, "10.0.1.1", ANY),
        ("eth0", "168.63.129.16", "10.0.1.1", "255.255.255.255"),
    )
    before = snapshot(root)
    again = run_stage("network", "--root", str(root))
    assert again.returncode == 0, again.stderr
    after = snapshot(root)
    # Only the result file and the lock holder's pid differ.
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {RESULT, "run/azagent/lock/network.lock"}
    assert "nothing to do" in again.stderr
    assert result(root)["state"] == "nothing-to-do"


def test_dry_run_prints_the_plan_and_writes_nothing(root: Path) -> None:
    azure_vm(root)
    write(root, "var/lib/dhcp/dhclient.eth0.leases", dhclient_lease("a8:3f:81:10"))
    before = snapshot(root)
    run = run_stage("network", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert snapshot(root) == before
    assert "save the WireServer http://168.63.129.16" in run.stdout
    assert "ip route add 168.63.129.16/32 via 10.0.1.1 dev eth0" in run.stdout


def test_without_a_lease_the_configuration_applies(root: Path) -> None:
    configure(root, "Endpoint.WireServer=http://10.9.8.7/")
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert (root / SAVED).read_text() == "http://10.9.8.7\n"
    assert "Endpoint.WireServer (no DHCP lease names one)" in str(result(root)["changes"])
    # An emulator's URL (a port) is no http://A.B.C.D: the configuration is
    # used as it is, and the address saved before goes.
    configure(root, "Endpoint.WireServer=http://127.0.0.1:8080")
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert not (root / SAVED).exists()
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert result(root)["state"] == "nothing-to-do"


def test_an_expired_or_unusable_lease_is_no_lease(root: Path) -> None:
    azure_vm(root)
    expired = dhclient_lease("a8:3f:81:10").replace("expire never", "expire 1 2012/07/23 23:27:10")
    write(root, "var/lib/dhcp/dhclient.eth0.leases", expired)
    write(root, "run/systemd/netif/leases/2", "OPTION_245=ffffffff\n")
    write(root, "var/lib/dhclient/huge.leases", "x" * (dhcp.MAX_LEASE_FILE + 1))
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert "Endpoint.WireServer (no DHCP lease names one)" in str(result(root)["changes"])
    assert "ip route" not in str(result(root)["changes"])


def test_the_firewall_follows_a_new_address(root: Path) -> None:
    azure_vm(root)
    configure(root, "OS.EnableFirewall=y")
    write(
        root, "run/azagent/firewall.rules", "# azagent firewall (nft): WireServer 168.63.129.16\n"
    )
    write(root, "var/lib/dhcp/dhclient.eth0.leases", dhclient_lease("a:0:0:5"))
    run = run_stage("network", "--root", str(root), "--dry-run")
    assert (
        "move the firewall from 168.63.129.16 to 10.0.0.5: "
        "systemctl --no-block try-restart azure-firewall.service [not run:"
    ) in run.stdout
    # Same address, or the firewall off: nothing to restart.
    write(root, "var/lib/dhcp/dhclient.eth0.leases", dhclient_lease("a8:3f:81:10"))
    assert "systemctl" not in run_stage("network", "--root", str(root), "--dry-run").stdout
    configure(root, "OS.EnableFirewall=n")
    write(root, "var/lib/dhcp/dhclient.eth0.leases", dhclient_lease("a:0:0:5"))
    assert "systemctl" not in run_stage("network", "--root", str(root), "--dry-run").stdout


# -- the stage: the route ---------------------------------------------------------


def test_route_through_the_lease_gateway_when_the_table_has_none(root: Path) -> None:
    azure_vm(root)
    write(root, "var/lib/dhcp/dhclient.eth0.leases", dhclient_lease("a8:3f:81:10"))
    run = run_stage("network", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (
        "route the WireServer through eth0: ip route add 168.63.129.16/32 via 10.0.1.1 dev eth0 "
        f"[not run: {root} is not the running system]"
    ) in str(result(root)["changes"])


def test_no_route_when_the_dhcp_client_installed_it(root: Path) -> None:
    interface(root)
    route_table(
        root,
        ("eth0", ANY, "10.0.1.1", ANY),
        ("eth0", "168.63.129.16", "10.0.1.1", "255.255.255.255"),
    )
    write(root, "var/lib/dhcp/dhclient.eth0.leases", (LEASES / "dhcp.leases").read_text())
    run = run_stage("network", "--root", str(root), "--dry-run")
    assert "save the WireServer" in run.stdout
    assert "ip route" not in run.stdout


def test_the_classless_route_gateway_wins_and_on_link_has_no_via(root: Path) -> None:
    azure_vm(root)
    routes = "0,10,0,1,1,32,168,63,129,16,10,0,1,254"
    write(root, "var/lib/dhcp/dhclient.eth0.leases", dhclient_lease("a8:3f:81:10", routes=routes))
    run = run_stage("network", "--root", str(root), "--dry-run")
    assert "ip route add 168.63.129.16/32 via 10.0.1.254 dev eth0" in run.stdout
    write(
        root, "run/systemd/netif/leases/2", networkd_lease("a83f8110", "168.63.129.16/32,0.0.0.0")
    )
    os.utime(root / "run/systemd/netif/leases/2", (NOW * 2, NOW * 2))
    run = run_stage("network", "--root", str(root), "--dry-run")
    assert "ip route add 168.63.129.16/32 dev eth0" in run.stdout


def test_no_route_for_an_interface_that_is_gone(root: Path) -> None:
    route_table(root, ("eth0", ANY, "10.0.1.1", ANY))
    write(root, "var/lib/dhcp/dhclient.eth0.leases", dhclient_lease("a8:3f:81:10"))
    run = run_stage("network", "--root", str(root), "--dry-run")
    assert "save the WireServer" in run.stdout
    assert "ip route" not in run.stdout


# -- the stage: persistent-net rules ---------------------------------------------

PINNED = (
    "# This file was automatically generated by the /lib/udev/write_net_rules\n"
    'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="00:0d:3a:12:34:56", '
    'ATTR{dev_id}=="0x0", ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"\n'
)
GENERATOR = 'ACTION=="add", SUBSYSTEM=="net", IMPORT{program}="write_net_rules"\n'


def test_persistent_net_rules_are_moved_aside_and_the_generator_masked(root: Path) -> None:
    rules = write(root, "etc/udev/rules.d/70-persistent-net.rules", PINNED)
    write(root, "lib/udev/rules.d/75-persistent-net-generator.rules", GENERATOR)
    run = run_stage("network", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert not rules.exists()
    assert (root / "var/lib/waagent/70-persistent-net.rules").read_text() == PINNED
    mask = root / "etc/udev/rules.d/75-persistent-net-generator.rules"
    assert not network.has_rules(mask.read_text())
    assert oct(mask.stat().st_mode & 0o777) == "0o644"
    changes = str(result(root)["changes"])
    assert "move /etc/udev/rules.d/70-persistent-net.rules aside to /var/lib/waagent/" in changes
    assert "mask the persistent-net generator" in changes
    again = run_stage("network", "--root", str(root))
    assert again.returncode == 0
    assert result(root)["state"] == "nothing-to-do"
    # The generator came back and wrote the rules again: moved aside again.
    write(root, "etc/udev/rules.d/70-persistent-net.rules", PINNED.replace("eth0", "eth1"))
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert "eth1" in (root / "var/lib/waagent/70-persistent-net.rules").read_text()


def test_rules_that_pin_nothing_or_come_from_cloud_init_stay(root: Path) -> None:
    other = 'SUBSYSTEM=="net", ACTION=="add", RUN+="/bin/true"\n'
    write(root, "etc/udev/rules.d/70-persistent-net.rules", other)
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert (root / "etc/udev/rules.d/70-persistent-net.rules").read_text() == other
    cloud = "# Created by cloud-init on instance boot automatically, do not edit.\n#\n" + PINNED
    write(root, "etc/udev/rules.d/70-persistent-net.rules", cloud)
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert (root / "etc/udev/rules.d/70-persistent-net.rules").read_text() == cloud
    assert not (root / "var/lib/waagent").exists()


def test_a_generator_in_etc_is_kept_and_masked(root: Path) -> None:
    generator = write(root, "etc/udev/rules.d/75-persistent-net-generator.rules", GENERATOR)
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert (root / "var/lib/waagent/75-persistent-net-generator.rules").read_text() == GENERATOR
    assert not network.has_rules(generator.read_text())
    # A symlink to /dev/null is a mask too.
    generator.unlink()
    generator.symlink_to("/dev/null")
    write(root, "usr/lib/udev/rules.d/75-persistent-net-generator.rules", GENERATOR)
    assert run_stage("network", "--root", str(root)).returncode == 0
    assert result(root)["state"] == "nothing-to-do"


def test_pins_names() -> None:
    assert network.pins_names(PINNED)
    assert not network.pins_names("# " + PINNED.splitlines()[1])
    assert not network.pins_names('ATTR{address}=="00:0d:3a:12:34:56", ENV{ID_NET_NAME}="x"\n')


# -- Context.endpoint ---------------------------------------------------------------


def test_context_prefers_the_saved_wireserver(root: Path) -> None:
    ctx = context(root)
    assert ctx.endpoint("WireServer") == "http://168.63.129.16"
    write(root, SAVED, "http://10.1.2.3\n")
    assert ctx.endpoint("WireServer") == "http://10.1.2.3"
    assert ctx.endpoint("HostGAPlugin") == "http://10.1.2.3:32526"
    assert ctx.endpoint("IMDS") == "http://169.254.169.254"
    # An explicitly configured HostGAPlugin stays; so does the default spelled out.
    assert (
        context(root, "Endpoint.HostGAPlugin=http://127.0.0.1:9/").endpoint("HostGAPlugin")
        == "http://127.0.0.1:9"
    )
    spelled = context(root, "Endpoint.HostGAPlugin=http://168.63.129.16:32526")
    assert spelled.endpoint("HostGAPlugin") == "http://10.1.2.3:32526"


@pytest.mark.parametrize(
    "content",
    [
        "http://10.1.2.3:80\n",
        "https://10.1.2.3\n",
        "http://300.1.2.3\n",
        "http://host\n",
        "",
        "\xff",
    ],
)
def test_context_ignores_a_bad_saved_wireserver(root: Path, content: str) -> None:
    (root / "run/azagent").mkdir(parents=True)
    (root / SAVED).write_bytes(content.encode("latin-1"))
    ctx = context(root, "Endpoint.WireServer=http://127.0.0.1:8080")
    assert ctx.endpoint("WireServer") == "http://127.0.0.1:8080"
    assert ctx.endpoint("HostGAPlugin") == "http://168.63.129.16:32526"


# -- report-ready does not wait for this stage ------------------------------------


def test_report_ready_is_not_ordered_after_the_network_stage() -> None:
    """One process less between the lease and Ready: report-ready reads the lease itself."""
    units = REPO / "units"
    ready = (units / "azure-report-ready.service").read_text()
    network_unit = (units / "azure-network.service").read_text()
    assert "azure-network.service" not in ready
    assert "azure-report-ready" not in network_unit
    assert "After=network-online.target" in ready


def test_report_ready_finds_the_wireserver_as_the_network_stage_would(root: Path) -> None:
    stage = load_stage("report-ready")
    azure_vm(root)
    configure(root, "Endpoint.WireServer=http://127.0.0.1:9")
    ctx = context(root, "Endpoint.WireServer=http://127.0.0.1:9")
    # No lease naming one: the configured endpoint, as the network stage saves nothing.
    assert stage.unsaved_wireserver(ctx) == "http://127.0.0.1:9"
    # A lease with option 245, not yet saved: its address, as the network stage would save.
    write(root, "run/systemd/netif/leases/2", networkd_lease("0a000063"))
    assert stage.unsaved_wireserver(ctx) == "http://10.0.0.99"
    assert network.discover(ctx).url == "http://10.0.0.99"
    # Once the network stage saved it, the saved address applies (Context.endpoint).
    write(root, SAVED, "http://10.0.0.98\n")
    assert stage.unsaved_wireserver(ctx) is None
    assert ctx.endpoint("WireServer") == "http://10.0.0.98"


def test_under_root_requests_go_only_to_the_configured_endpoint(root: Path) -> None:
    """A lease or a saved address inside an image tree describes another machine: never used."""
    from azagent.wireclient import WireServerError, platform_url

    azure_vm(root)
    write(root, "run/systemd/netif/leases/2", networkd_lease("a83f8110"))  # 168.63.129.16
    write(root, SAVED, "http://168.63.129.16\n")
    ctx = context(root, "Endpoint.WireServer=http://127.0.0.1:9")
    found = load_stage("report-ready").unsaved_wireserver(ctx)
    assert platform_url(ctx, "WireServer", found) == "http://127.0.0.1:9"
    assert platform_url(ctx, "WireServer", "http://168.63.129.16") == "http://127.0.0.1:9"
    unconfigured = context(root)
    with pytest.raises(WireServerError, match="not configured"):
        platform_url(unconfigured, "WireServer", "http://168.63.129.16")
