"""The hostname stage, run for real against temporary roots.

A root here can describe a running system with plain files: the kernel's
hostname (proc/sys/kernel/hostname), the routes (proc/net/route), processes
(proc/PID/{comm,cmdline,status}), networkd's leases and NetworkManager's
device records under run/. The running-system steps are only ever planned
(--dry-run) or, under --root, shown and skipped: no test sets this machine's
hostname or touches its network.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from conftest import REPO, run_stage, snapshot

from azagent import hostname, names

MONITOR = {"AZAGENT_HOSTNAME_MONITOR": "1"}
RESULT = "run/azagent/stages/hostname.json"
PUBLISHED = "run/azagent/hostname-published"
DEBIAN_HOSTS = (
    b"127.0.0.1\tlocalhost\n"
    b"127.0.1.1\tdebian\n"
    b"\n"
    b"# The following lines are desirable for IPv6 capable hosts\n"
    b"::1     localhost ip6-localhost ip6-loopback\n"
    b"ff02::1 ip6-allnodes\n"
    b"ff02::2 ip6-allrouters\n"
)
IFUPDOWN_DHCLIENT = (
    "/sbin/dhclient",
    "-4",
    "-v",
    "-i",
    "-pf",
    "/run/dhclient.eth0.pid",
    "-lf",
    "/var/lib/dhcp/dhclient.eth0.leases",
    "-I",
    "-df",
    "/var/lib/dhcp/dhclient6.eth0.leases",
    "eth0",
)
DHCLIENT_ARGS = " ".join(IFUPDOWN_DHCLIENT[1:])


# -- building roots ---------------------------------------------------------------


def provisioned(root: Path, name: str = "web-1", username: str = "alice") -> None:
    """provisioning.json with these names, written as JSON: a hand edit may hold any."""
    data = {"vm_id": "vm-1", "source": "ovf", "hostname": name, "username": username}
    state = root / "run/azagent/provisioning.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(data))
    state.chmod(0o600)


def image(root: Path, static: str | None = "debian", running: str = "debian") -> None:
    """A booted image: /etc/hostname, Debian's /etc/hosts, the kernel's name."""
    (root / "etc").mkdir(exist_ok=True)
    if static is not None:
        (root / "etc/hostname").write_text(static + "\n")
    (root / "etc/hosts").write_bytes(DEBIAN_HOSTS)
    kernel = root / "proc/sys/kernel"
    kernel.mkdir(parents=True, exist_ok=True)
    (kernel / "hostname").write_text(running + "\n")


def published(root: Path, name: str) -> None:
    path = root / PUBLISHED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name + "\n")


def network(root: Path, interface: str = "eth0", ifindex: int = 2) -> None:
    """A default route through ``interface``, and the interface in sysfs."""
    (root / "proc/net").mkdir(parents=True, exist_ok=True)
    (root / "proc/net/route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        f"{interface}\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        f"{interface}\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    )
    sysfs = root / "sys/class/net" / interface
    sysfs.mkdir(parents=True)
    (sysfs / "ifindex").write_text(f"{ifindex}\n")


def process(root: Path, pid: int, comm: str, argv: tuple[str, ...], uid: int = 0) -> None:
    base = root / "proc" / str(pid)
    base.mkdir(parents=True)
    (base / "comm").write_text(comm + "\n")
    (base / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in argv))
    (base / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")


def networkd(root: Path, ifindex: int = 2) -> None:
    process(root, 310, "systemd-network", ("/lib/systemd/systemd-networkd",), uid=101)
    leases = root / "run/systemd/netif/leases"
    leases.mkdir(parents=True)
    (leases / str(ifindex)).write_text("# This is private data. Do not parse.\nADDRESS=10.0.0.4\n")


def network_manager(root: Path, ifindex: int = 2, managed: str = "true") -> None:
    process(root, 420, "NetworkManager", ("/usr/sbin/NetworkManager", "--no-daemon"))
    devices = root / "run/NetworkManager/devices"
    devices.mkdir(parents=True)
    (devices / str(ifindex)).write_text(
        f"# NetworkManager device state\n[device]\nmanaged={managed}\n"
    )


def later_boot(root: Path, new: str = "web-2", old: str = "web-1") -> None:
    """The name was changed after boot: /etc/hostname and the kernel say ``new``,
    the DHCP client last carried ``old``."""
    image(root, static=new, running=new)
    published(root, old)
    network(root)


def state(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """The tree without the runner's bookkeeping (result file, lock)."""
    return {
        k: v
        for k, v in snapshot(root).items()
        if not k.startswith(("run/azagent/stages", "run/azagent/lock"))
    }


def result(root: Path) -> dict[str, object]:
    data = json.loads((root / RESULT).read_text())
    assert isinstance(data, dict)
    return data


def configure(root: Path, *lines: str) -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/waagent.conf").write_text("".join(line + "\n" for line in lines))


def plan_of(root: Path, env: dict[str, str] | None = None) -> str:
    run = run_stage("hostname", "--root", str(root), "--dry-run", env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout


# -- first boot -----------------------------------------------------------------------


def test_first_boot_sets_the_provisioned_name(root: Path) -> None:
    image(root)
    provisioned(root, "web-1")
    run = run_stage("hostname", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / "etc/hostname").read_bytes() == b"web-1\n"
    assert oct((root / "etc/hostname").stat().st_mode & 0o777) == "0o644"
    assert (root / "etc/hosts").read_bytes() == DEBIAN_HOSTS.replace(
        b"127.0.1.1\tdebian\n", b"127.0.1.1\tweb-1\n"
    )
    # The running name is planned from the root's /proc and never set here.
    assert "set the running hostname from debian to web-1 [not run:" in run.stderr
    # No DHCP client runs before network-pre.target: nothing is renewed, the
    # first request will carry the name.
    assert (root / PUBLISHED).read_text() == "web-1\n"
    recorded = result(root)
    assert recorded["state"] == "done"
    changes = recorded["changes"]
    assert isinstance(changes, list)
    assert not any(" through " in change for change in changes), changes
    assert any("no DHCP client serves the primary interface;" in c for c in changes)


def test_second_run_changes_nothing_and_says_so(root: Path) -> None:
    image(root)
    provisioned(root, "web-1")
    (root / "proc/sys/kernel/hostname").write_text("web-1\n")  # as if sethostname had run
    assert run_stage("hostname", "--root", str(root)).returncode == 0
    before = state(root)
    again = run_stage("hostname", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert state(root) == before
    assert "nothing to do" in again.stderr
    assert result(root)["state"] == "nothing-to-do"


def test_dry_run_prints_the_plan_and_writes_nothing(root: Path) -> None:
    image(root)
    provisioned(root, "web-1")
    before = snapshot(root)
    run = run_stage("hostname", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert snapshot(root) == before
    assert "write /etc/hostname: web-1" in run.stdout
    assert "set '127.0.1.1 web-1' in /etc/hosts" in run.stdout
    assert "set the running hostname from debian to web-1" in run.stdout


def test_after_the_first_run_etc_hostname_wins_over_the_provisioning_data(root: Path) -> None:
    image(root)
    provisioned(root, "web-1")
    assert run_stage("hostname", "--root", str(root)).returncode == 0
    # The administrator renames the VM during the first boot.
    (root / "etc/hostname").write_text("db-1\n")
    run = run_stage("hostname", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / "etc/hostname").read_text() == "db-1\n"
    assert b"127.0.1.1\tdb-1\n" in (root / "etc/hosts").read_bytes()


def test_a_long_provisioned_fqdn_uses_its_first_label(root: Path) -> None:
    image(root)
    fqdn = "web-1." + ".".join(["a" * 60] * 3) + ".example"
    provisioned(root, fqdn)
    run = run_stage("hostname", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / "etc/hostname").read_text() == "web-1\n"
    assert f"127.0.1.1\t{fqdn} web-1\n".encode() in (root / "etc/hosts").read_bytes()


def test_nothing_to_do_without_provisioning_data_or_etc_hostname(root: Path) -> None:
    run = run_stage("hostname", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "skipped"
    assert "no provisioning data and no name in /etc/hostname" in str(result(root)["reason"])


# -- refused names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "'' is not a valid hostname: it is empty"),
        ("-web", "the label '-web' starts or ends with '-'"),
        ("web-", "the label 'web-' starts or ends with '-'"),
        ("web_1", "'web_1' is not a valid hostname: it contains '_'"),
        ("web 1", "it contains ' '"),
        ("web\n1", "'web\\n1' is not a valid hostname: it contains '\\n'"),
        ("wéb", "it contains '\\xe9': only ASCII letters, digits, '-' and '.' between labels"),
        ("web;rm -rf", "it contains ' ', ';'"),
        ("web$(id)", "it contains '$', '(', ')'"),
        ("web..example", "empty label"),
        (".web", "empty label"),
        ("web.", "ends with a dot"),
        ("a" * 64, "a label is 64 characters long, at most 63 allowed"),
        ("10.0.0.4", "all digits"),
        ("x" * 254, "(254 characters) is not a valid hostname: it is 254 characters long"),
        ("../etc", "'../etc' is not a valid hostname: it contains '/'"),
        ("root\n", "'root\\n' is not a valid hostname: it contains '\\n'"),
        ("a;b", "'a;b' is not a valid hostname: it contains ';'"),
        ("a" * 300, "(300 characters) is not a valid hostname: it is 300 characters long"),
    ],
)
def test_invalid_names_are_refused_with_their_reason(root: Path, name: str, reason: str) -> None:
    image(root)
    provisioned(root, name)
    before = state(root)
    run = run_stage("hostname", "--root", str(root))
    assert run.returncode == 1, run.stderr
    assert "/run/azagent/provisioning.json: hostname: " in run.stderr
    assert reason in run.stderr
    assert state(root) == before
    assert result(root)["state"] == "failed"
    assert reason in str(result(root)["reason"])


@pytest.mark.parametrize("username", ["../etc", "root\n", "a;b", "a" * 300, "Alice"])
def test_a_refused_user_name_in_provisioning_data_fails_the_stage_too(
    root: Path, username: str
) -> None:
    """The hand-off is refused as a whole: a hand-edited file is not half trusted."""
    image(root)
    provisioned(root, "web-1", username=username)
    before = state(root)
    run = run_stage("hostname", "--root", str(root))
    assert run.returncode == 1
    assert "/run/azagent/provisioning.json: username: " in run.stderr
    assert "is not a valid user name" in run.stderr
    assert state(root) == before


def test_an_invalid_etc_hostname_is_refused(root: Path) -> None:
    image(root, static="# set by the image builder\n\nweb_1")
    (root / "run/azagent").mkdir(parents=True)  # the runner's own directory
    before = state(root)
    run = run_stage("hostname", "--root", str(root))
    assert run.returncode == 1
    assert state(root) == before
    assert "/etc/hostname: 'web_1' is not a valid hostname: it contains '_'" in run.stderr


@pytest.mark.parametrize(
    "name",
    [
        "web-1",
        "WebServer01",
        "x",
        "1web",
        "a" * 63,
        "web-1.contoso.com",
        "localhost",
        "xn--bcher-kva",
    ],
)
def test_valid_names(name: str) -> None:
    assert names.host_name(name, "test") == name
    assert hostname.system_name(name) == name


def test_names_beyond_the_kernel_limit_keep_their_first_label() -> None:
    fqdn = "web-1." + "a" * 58  # 64 characters: fits
    assert hostname.system_name(fqdn) == fqdn
    assert hostname.system_name(fqdn + "b") == "web-1"
    assert hostname.hosts_names("web-1.contoso.com") == ("web-1.contoso.com", "web-1")
    assert hostname.hosts_names("web-1") == ("web-1",)


# -- /etc/hosts -----------------------------------------------------------------------


def test_hosts_line_is_replaced_and_everything_else_kept() -> None:
    assert hostname.hosts_with(DEBIAN_HOSTS, ["web-1"]) == DEBIAN_HOSTS.replace(
        b"127.0.1.1\tdebian\n", b"127.0.1.1\tweb-1\n"
    )
    crlf = b"127.0.0.1 localhost\r\n127.0.1.1   old.example old  # keep me\r\n10.0.0.5 db\r\n"
    assert hostname.hosts_with(crlf, ["web-1.example", "web-1"]) == (
        b"127.0.0.1 localhost\r\n127.0.1.1\tweb-1.example web-1 # keep me\r\n10.0.0.5 db\r\n"
    )
    # Only the first 127.0.1.1 line is ours; a commented-out one is not a line.
    two = b"#127.0.1.1 ghost\n127.0.1.1 a\n127.0.1.1 b\n"
    assert (
        hostname.hosts_with(two, ["web-1"]) == b"#127.0.1.1 ghost\n127.0.1.1\tweb-1\n127.0.1.1 b\n"
    )


def test_hosts_line_is_added_when_missing() -> None:
    rhel = b"127.0.0.1   localhost localhost.localdomain\n::1         localhost6"
    assert hostname.hosts_with(rhel, ["web-1"]) == rhel + b"\n127.0.1.1\tweb-1\n"
    assert hostname.hosts_with(b"", ["web-1"]) == b"127.0.1.1\tweb-1\n"
    created = hostname.hosts_with(None, ["web-1"])
    assert created.startswith(b"127.0.0.1\tlocalhost\n")
    assert created.endswith(b"\n127.0.1.1\tweb-1\n")


def test_hosts_already_right_is_returned_unchanged() -> None:
    current = b"127.0.0.1 localhost\n127.0.1.1  web-1   # azure\n"
    assert hostname.hosts_with(current, ["web-1"]) is current


def test_stage_creates_etc_hosts_and_keeps_mode_and_owner(root: Path) -> None:
    provisioned(root, "web-1")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("debian\n")
    (root / "etc/hostname").chmod(0o640)
    os.chown(root / "etc/hostname", 0, 4)
    run = run_stage("hostname", "--root", str(root))
    assert run.returncode == 0, run.stderr
    st = (root / "etc/hostname").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, 4)
    assert (root / "etc/hosts").read_bytes().endswith(b"127.0.1.1\tweb-1\n")
    assert oct((root / "etc/hosts").stat().st_mode & 0o777) == "0o644"
    # No /proc under this root: no running system, no running-system step.
    assert "running hostname" not in run.stderr


# -- publishing a later change --------------------------------------------------------


def test_networkd_gets_reconfigured(root: Path) -> None:
    later_boot(root)
    networkd(root)
    out = plan_of(root)
    assert "publish web-2 through systemd-networkd on eth0: networkctl reconfigure eth0" in out
    assert "record web-2 as published" in out
    assert "write /etc/hostname" not in out  # already the name
    assert "set '127.0.1.1 web-2' in /etc/hosts" in out  # the image's line follows


def test_network_manager_restarts_dhcp_with_the_new_name(root: Path) -> None:
    later_boot(root)
    network_manager(root)
    # NetworkManager's own dhclient: foreground, its helper script; not restartable.
    process(
        root,
        421,
        "dhclient",
        ("/sbin/dhclient", "-d", "-q", "-sf", "/usr/libexec/nm-dhcp-helper", "eth0"),
    )
    out = plan_of(root)
    assert (
        "publish web-2 through NetworkManager on eth0: "
        "nmcli device modify eth0 ipv4.dhcp-hostname web-2 ipv6.dhcp-hostname web-2" in out
    )
    assert "dhclient -x" not in out


def test_network_manager_not_managing_the_interface_is_passed_over(root: Path) -> None:
    later_boot(root)
    network_manager(root, managed="false")
    networkd(root)
    assert "networkctl reconfigure eth0" in plan_of(root)


def test_standalone_dhclient_is_restarted_keeping_its_lease(root: Path) -> None:
    later_boot(root)
    process(root, 530, "dhclient", IFUPDOWN_DHCLIENT)
    out = plan_of(root)
    assert f"publish web-2 through dhclient on eth0: dhclient -x {DHCLIENT_ARGS}" in out
    assert f"publish web-2 through dhclient on eth0: dhclient {DHCLIENT_ARGS} [not run:" in out
    assert out.index("dhclient -x") < out.index(f": dhclient {DHCLIENT_ARGS}")


def test_dhclient_runs_outside_the_sandbox_under_systemd(root: Path) -> None:
    later_boot(root)
    process(root, 530, "dhclient", (*IFUPDOWN_DHCLIENT[:-1], "-H", "web-1", "eth0"))
    (root / "run/systemd/system").mkdir(parents=True)
    out = plan_of(root)
    assert (
        f"systemd-run --quiet --collect --wait -- dhclient -x {DHCLIENT_ARGS[:-5]} -H web-2 eth0"
        in out
    )
    assert (
        "systemd-run --quiet --collect --service-type=forking "
        "--property=PIDFile=/run/dhclient.eth0.pid" in out
    )
    assert f"-- dhclient {DHCLIENT_ARGS[:-5]} -H web-2 eth0" in out
    assert "-H web-1" not in out


@pytest.mark.parametrize(
    "why",
    ["not root", "other interface", "foreground", "dhcpv6", "not dhclient", "no default route"],
)
def test_no_client_no_command(root: Path, why: str) -> None:
    later_boot(root)
    argv = IFUPDOWN_DHCLIENT
    uid = 0
    if why == "not root":
        uid = 1000  # e.g. a setuid program run by a user under the name dhclient
    elif why == "other interface":
        argv = (*IFUPDOWN_DHCLIENT[:-1], "eth1")
    elif why == "foreground":
        argv = (*IFUPDOWN_DHCLIENT[:-1], "-d", "eth0")
    elif why == "dhcpv6":
        argv = ("/sbin/dhclient", "-6", "eth0")
    elif why == "not dhclient":
        argv = ("/usr/bin/passwd", "-sf", "/tmp/evil", "eth0")
    elif why == "no default route":
        (root / "proc/net/route").write_text("Iface\tDestination\n")
    process(root, 530, "dhclient", argv, uid=uid)
    out = plan_of(root)
    assert " through " not in out
    assert "record web-2 as published: no DHCP client serves the primary interface;" in out


def test_networkd_without_a_lease_is_not_the_dhcp_client(root: Path) -> None:
    later_boot(root)
    networkd(root, ifindex=3)  # a lease for another link only
    assert "networkctl" not in plan_of(root)


def test_first_boot_does_not_publish_and_an_unchanged_name_is_not_republished(
    root: Path,
) -> None:
    image(root)
    provisioned(root, "web-1")
    network(root)
    networkd(root)
    (root / "run/systemd/netif/leases/2").unlink()  # networkd started, no lease yet
    out = plan_of(root)
    assert " through " not in out
    assert "record web-1 as published: no DHCP client serves" in out
    other = root.parent / "other"
    other.mkdir()
    later_boot(other, new="web-1", old="web-1")
    (other / "etc/hosts").write_bytes(hostname.hosts_with(DEBIAN_HOSTS, ["web-1"]))
    networkd(other)
    assert "nothing to do" in plan_of(other)


def test_a_manual_run_republishes_when_nothing_was_recorded(root: Path) -> None:
    image(root, static="web-1", running="web-1")
    network(root)
    networkd(root)
    assert "networkctl reconfigure eth0" in plan_of(root)


def test_running_system_steps_never_run_under_root(root: Path, tmp_path: Path) -> None:
    """Under --root a plan that would renew a lease and set the hostname runs neither."""
    later_boot(root)
    (root / "proc/sys/kernel/hostname").write_text("web-1\n")
    networkd(root)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ran"
    for tool in ("networkctl", "nmcli", "dhclient", "systemd-run", "hostname", "hostnamectl"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho {tool} "$@" >> {marker}\n')
        script.chmod(0o755)
    machine = socket.gethostname()
    run = run_stage(
        "hostname", "--root", str(root), env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    )
    assert run.returncode == 0, run.stderr
    assert not marker.exists(), marker.read_text()
    assert socket.gethostname() == machine
    assert "networkctl reconfigure eth0 [not run:" in run.stderr
    assert "set the running hostname from web-1 to web-2 [not run:" in run.stderr
    assert (root / PUBLISHED).read_text() == "web-2\n"


# -- Provisioning.MonitorHostName ---------------------------------------------------


def test_monitor_skips_when_monitoring_is_off(root: Path) -> None:
    later_boot(root)
    networkd(root)
    configure(root, "Provisioning.MonitorHostName=n")
    before = state(root)
    run = run_stage("hostname", "--root", str(root), env=MONITOR)
    assert run.returncode == 0, run.stderr
    assert state(root) == before
    assert result(root)["state"] == "skipped"
    assert "Provisioning.MonitorHostName=n" in str(result(root)["reason"])


def test_monitor_publishes_when_monitoring_is_on(root: Path) -> None:
    later_boot(root)
    networkd(root)
    configure(root, "Provisioning.MonitorHostName=y")
    assert "networkctl reconfigure eth0" in plan_of(root, env=MONITOR)


def test_manual_run_publishes_even_when_monitoring_is_off(root: Path) -> None:
    later_boot(root)
    networkd(root)
    configure(root, "Provisioning.MonitorHostName=n")
    assert "networkctl reconfigure eth0" in plan_of(root)


def test_monitor_takes_etc_hostname_over_provisioning_data(root: Path) -> None:
    image(root, static="db-1", running="debian")
    provisioned(root, "web-1")  # not yet applied: the boot stage did not run
    out = plan_of(root, env=MONITOR)
    assert "web-1" not in out
    assert "set the running hostname from debian to db-1" in out


def test_monitor_unit_sets_the_variable_the_stage_reads() -> None:
    unit = (REPO / "units/azure-hostname-monitor.service").read_text()
    assert "\nEnvironment=AZAGENT_HOSTNAME_MONITOR=1\n" in unit
    assert "\nExecStart=/usr/libexec/azagent/hostname\n" in unit
    assert "RemainAfterExit=yes" not in unit  # the path unit could trigger it only once
    path = (REPO / "units/azure-hostname-monitor.path").read_text()
    assert "\nPathChanged=/etc/hostname\n" in path
    assert "\nUnit=azure-hostname-monitor.service\n" in path
