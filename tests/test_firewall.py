"""The firewall stage and lib/azagent/firewall.py (OS.EnableFirewall).

The stage runs against temporary roots: it writes the rules it would load to
<root>/run/azagent/firewall.rules and shows the commands, never running them.
The rules themselves are proven with the real nft, but only inside a private
network namespace (``unshare --net``) made for the test and thrown away with
it: the host's ruleset is never touched, and no packet is sent to a platform
address (the behaviour test protects 192.0.2.1, TEST-NET-1, on the
namespace's own loopback).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_stage, snapshot

from azagent import firewall

RECORD = "run/azagent/firewall.rules"
RESULT = "run/azagent/stages/firewall.json"

NFT_RULESET = """\
# azagent firewall (nft): WireServer 168.63.129.16
table inet azagent
delete table inet azagent
table inet azagent {
\tchain output {
\t\ttype filter hook output priority 0; policy accept;
\t\tip daddr 168.63.129.16 tcp dport 53 accept
\t\tip daddr 168.63.129.16 meta skuid 0 accept
\t\tip daddr 168.63.129.16 meta l4proto tcp ct state invalid,new counter drop
\t}
}
"""

IPTABLES_INPUT = """\
# azagent firewall (iptables): WireServer 168.63.129.16
*security
:AZAGENT - [0:0]
-A AZAGENT -d 168.63.129.16/32 -p tcp -m tcp --dport 53 -j ACCEPT
-A AZAGENT -d 168.63.129.16/32 -p tcp -m owner --uid-owner 0 -j ACCEPT
-A AZAGENT -d 168.63.129.16/32 -p tcp -m conntrack --ctstate INVALID,NEW -j DROP
COMMIT
"""


def configure(root: Path, *lines: str) -> None:
    path = root / "etc/waagent.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def tool(root: Path, name: str) -> None:
    """An executable the stage looks for under the root (it never runs it there)."""
    path = root / "usr/sbin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)


def result(root: Path) -> dict[str, object]:
    data = json.loads((root / RESULT).read_text())
    assert isinstance(data, dict)
    return data


def enabled_root(root: Path, *tools: str) -> None:
    configure(root, "OS.EnableFirewall=y")
    for name in tools or ("nft",):
        tool(root, name)


# -- what is generated -----------------------------------------------------------


def test_nft_ruleset() -> None:
    assert firewall.nft_ruleset("168.63.129.16") == NFT_RULESET
    assert firewall.recorded(NFT_RULESET) == ("nft", "168.63.129.16")


def test_iptables_input_and_commands() -> None:
    assert firewall.iptables_restore_input("168.63.129.16") == IPTABLES_INPUT
    assert firewall.recorded(IPTABLES_INPUT) == ("iptables", "168.63.129.16")
    install = firewall.install_commands("iptables", "168.63.129.16")
    assert [(c.argv, c.stdin, c.unless) for c in install] == [
        (("iptables-restore", "-w", "--noflush"), IPTABLES_INPUT, None),
        (
            ("iptables", "-w", "-t", "security", "-A", "OUTPUT", "-j", "AZAGENT"),
            None,
            ("iptables", "-w", "-t", "security", "-C", "OUTPUT", "-j", "AZAGENT"),
        ),
    ]
    assert firewall.check_commands("iptables", "168.63.129.16") == [
        ("iptables", "-w", "-t", "security", "-C", "OUTPUT", "-j", "AZAGENT"),
        ("iptables", "-w", "-t", "security", "-C", "AZAGENT", "-d", "168.63.129.16/32",
         "-p", "tcp", "-m", "tcp", "--dport", "53", "-j", "ACCEPT"),
        ("iptables", "-w", "-t", "security", "-C", "AZAGENT", "-d", "168.63.129.16/32",
         "-p", "tcp", "-m", "owner", "--uid-owner", "0", "-j", "ACCEPT"),
        ("iptables", "-w", "-t", "security", "-C", "AZAGENT", "-d", "168.63.129.16/32",
         "-p", "tcp", "-m", "conntrack", "--ctstate", "INVALID,NEW", "-j", "DROP"),
    ]  # fmt: skip
    assert [c.argv for c in firewall.remove_commands("iptables")] == [
        ("iptables", "-w", "-t", "security", "-D", "OUTPUT", "-j", "AZAGENT"),
        ("iptables", "-w", "-t", "security", "-F", "AZAGENT"),
        ("iptables", "-w", "-t", "security", "-X", "AZAGENT"),
    ]
    assert [c.argv for c in firewall.install_commands("nft", "10.0.0.1")] == [("nft", "-f", "-")]
    assert [c.argv for c in firewall.remove_commands("nft")] == [
        ("nft", "delete", "table", "inet", "azagent")
    ]


# -- the stage ----------------------------------------------------------------------


def test_off_is_skipped(root: Path) -> None:
    tool(root, "nft")
    run = run_stage("firewall", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "skipped"
    assert result(root)["reason"] == "OS.EnableFirewall=n"
    assert not (root / RECORD).exists()


def test_installs_records_and_then_has_nothing_to_do(root: Path) -> None:
    enabled_root(root)
    run = run_stage("firewall", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / RECORD).read_text() == NFT_RULESET
    assert result(root)["changes"] == [
        "only root may open TCP connections to the WireServer 168.63.129.16 (DNS excepted): "
        f"nft -f - < /run/azagent/firewall.rules [not run: {root} is not the running system]",
        "record the nft rules in /run/azagent/firewall.rules",
    ]
    before = snapshot(root)
    again = run_stage("firewall", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    changed = {
        k for k in before.keys() | snapshot(root).keys() if before.get(k) != snapshot(root).get(k)
    }
    assert changed <= {RESULT, "run/azagent/lock/firewall.lock"}


def test_dry_run_writes_nothing(root: Path) -> None:
    enabled_root(root)
    before = snapshot(root)
    run = run_stage("firewall", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert snapshot(root) == before
    assert "only root may open TCP connections to the WireServer 168.63.129.16" in run.stdout


def test_iptables_where_nft_is_absent(root: Path) -> None:
    enabled_root(root, "iptables", "iptables-restore")
    run = run_stage("firewall", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / RECORD).read_text() == IPTABLES_INPUT
    assert (
        "iptables-restore -w --noflush < /run/azagent/firewall.rules; "
        "iptables -w -t security -A OUTPUT -j AZAGENT "
        "(unless `iptables -w -t security -C OUTPUT -j AZAGENT` succeeds)"
    ) in str(result(root)["changes"])


def test_neither_tool_fails_with_the_reason(root: Path) -> None:
    configure(root, "OS.EnableFirewall=y")
    run = run_stage("firewall", "--root", str(root))
    assert run.returncode == 1
    assert "neither nft nor iptables is installed" in run.stderr
    assert result(root)["state"] == "failed"
    assert not (root / RECORD).exists()


def test_a_wireserver_named_by_host_name_fails_and_loopback_is_skipped(root: Path) -> None:
    enabled_root(root)
    configure(root, "OS.EnableFirewall=y", "Endpoint.WireServer=http://wireserver.test")
    run = run_stage("firewall", "--root", str(root))
    assert run.returncode == 1
    assert "is not named by an IPv4 address" in run.stderr
    configure(root, "OS.EnableFirewall=y", "Endpoint.WireServer=http://127.0.0.1:8080")
    run = run_stage("firewall", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "skipped"
    assert "loopback" in str(result(root)["reason"])


def test_the_rules_follow_the_address_dhcp_named(root: Path) -> None:
    enabled_root(root)
    assert run_stage("firewall", "--root", str(root)).returncode == 0
    saved = root / "run/azagent/wireserver"
    saved.write_text("http://10.0.0.5\n")
    run = run_stage("firewall", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / RECORD).read_text() == firewall.nft_ruleset("10.0.0.5")
    assert "WireServer 10.0.0.5" in str(result(root)["changes"])


def test_turning_it_off_removes_the_rules(root: Path) -> None:
    enabled_root(root)
    assert run_stage("firewall", "--root", str(root)).returncode == 0
    configure(root, "OS.EnableFirewall=n")
    run = run_stage("firewall", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["changes"] == [
        "remove the nft firewall rules (OS.EnableFirewall=n): nft delete table inet azagent "
        f"[not run: {root} is not the running system]",
        "forget /run/azagent/firewall.rules",
    ]
    assert not (root / RECORD).exists()
    assert run_stage("firewall", "--root", str(root)).returncode == 0
    assert result(root)["state"] == "skipped"


def test_a_new_backend_removes_the_old_rules_first(root: Path) -> None:
    enabled_root(root, "iptables", "iptables-restore")
    assert run_stage("firewall", "--root", str(root)).returncode == 0
    tool(root, "nft")
    assert run_stage("firewall", "--root", str(root)).returncode == 0
    changes = result(root)["changes"]
    assert isinstance(changes, list)
    assert changes[0].startswith("remove the iptables firewall rules (nft replaces them): ")
    assert (root / RECORD).read_text() == NFT_RULESET


# -- the real nft, in a throw-away network namespace ----------------------------------


def in_private_netns(script: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash in a new, empty network namespace (never the host's)."""
    return subprocess.run(
        ["unshare", "--net", "bash", "-euc", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def need_private_netns(*tools: str) -> None:
    for name in ("unshare", *tools):
        if shutil.which(name) is None:
            pytest.skip(f"{name} is not installed")
    probe = in_private_netns("true")
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {probe.stderr.strip()}")


def host_ruleset() -> str | None:
    done = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def test_nft_accepts_the_ruleset_and_replaces_it_whole(tmp_path: Path) -> None:
    need_private_netns("nft")
    before = host_ruleset()
    first = tmp_path / "first.nft"
    first.write_text(firewall.nft_ruleset("168.63.129.16"))
    second = tmp_path / "second.nft"
    second.write_text(firewall.nft_ruleset("10.0.0.5"))
    done = in_private_netns(
        f"nft -c -f {first}\n"  # --check: validated, never committed
        'test -z "$(nft list ruleset)"\n'
        f"nft -f {first}; nft -f {first}; nft -f {second}\n"
        "nft list ruleset\n"
    )
    assert done.returncode == 0, done.stderr
    listing = done.stdout
    assert listing.count("table inet azagent") == 1
    assert "168.63.129.16" not in listing
    assert "ip daddr 10.0.0.5 tcp dport 53 accept" in listing
    assert "ip daddr 10.0.0.5 meta skuid 0 accept" in listing
    assert "ip daddr 10.0.0.5 meta l4proto tcp ct state invalid,new counter" in listing
    assert host_ruleset() == before


LISTENER = """\
import socket, sys, time
server = socket.socket()
server.bind(("192.0.2.1", 8080))
server.listen()
open(sys.argv[1], "w").close()
time.sleep(15)
"""


def test_only_root_reaches_the_protected_address(tmp_path: Path) -> None:
    """The rules in force: root connects, another user's SYN is dropped, port 53 stays open."""
    need_private_netns("nft", "ip", "setpriv", "timeout")
    ruleset = tmp_path / "rules.nft"
    ruleset.write_text(firewall.nft_ruleset("192.0.2.1"))
    listener = tmp_path / "listen.py"
    listener.write_text(LISTENER)
    ready = tmp_path / "ready"
    done = in_private_netns(
        f"""
        ip link set lo up
        ip addr add 192.0.2.1/32 dev lo
        nft -f {ruleset}
        {sys.executable} {listener} {ready} &
        for _ in $(seq 50); do [ -e {ready} ] && break; sleep 0.1; done
        probe() {{  # PORT [COMMAND PREFIX]: connect with bash's /dev/tcp, as that user
            port=$1; shift
            timeout 3 "$@" bash -c "exec 3<>/dev/tcp/192.0.2.1/$port" 2>/dev/null \\
                && echo connected || echo "failed:$?"
        }}
        echo "root: $(probe 8080 env)"
        echo "nobody: $(probe 8080 setpriv --reuid=65534 --regid=65534 --clear-groups)"
        echo "dns: $(probe 53 setpriv --reuid=65534 --regid=65534 --clear-groups)"
        kill %1
        """,
        timeout=40,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["root"] == "connected"
    assert lines["nobody"] == "failed:124"  # the SYN was dropped: no answer at all
    assert lines["dns"] == "failed:1"  # port 53 was let through and refused by the kernel


def test_iptables_restore_accepts_the_input(tmp_path: Path) -> None:
    need_private_netns("iptables-restore")
    rules = tmp_path / "rules.iptables"
    rules.write_text(firewall.iptables_restore_input("168.63.129.16"))
    done = in_private_netns(f"iptables-restore --test --noflush < {rules}")
    if "Could not fetch rule set generation id" in done.stderr or "Table does not exist" in (
        done.stderr
    ):
        pytest.skip(f"this kernel has no security table: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
