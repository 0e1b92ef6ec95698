"""The pure parts of `tools/vmtest bench`: peer patches, packet dump, figures.

The boots themselves are not tested here (minutes under TCG); these check what
decides whether a bench run's figures and its no-real-address promise hold.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from azvmtest import bench, peers
from azvmtest.boot import IMDS_IP, WIRESERVER_IP

# -- patches ------------------------------------------------------------------------


def test_route_entry_is_the_kernel_route_table_form() -> None:
    # /proc/net/route prints 168.63.129.16 as 10813FA8 (WALinuxAgent looks for that).
    assert peers.route_entry("168.63.129.16") == "10813FA8"
    assert peers.route_entry(WIRESERVER_IP) == "6402000A"


def test_a_replacement_whose_text_is_missing_fails_loudly() -> None:
    change = peers.Replace("a.py", "X = '168.63.129.16'", "X = '10.0.2.100'")
    with pytest.raises(peers.PatchError, match=r"a\.py: expected 1 .* found 0"):
        peers.replace_exactly("X = '1.2.3.4'\n", change)


def test_a_replacement_found_more_often_than_expected_fails() -> None:
    change = peers.Replace("a.py", "old", "new")
    with pytest.raises(peers.PatchError, match="found 2"):
        peers.replace_exactly("old\nold\n", change)


def test_patch_tree_changes_nothing_when_one_replacement_fails(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("A = '168.63.129.16'\n")
    (tmp_path / "b.py").write_text("B = 'something else'\n")
    changes = (
        peers.Replace("a.py", "A = '168.63.129.16'", "A = '10.0.2.100'"),
        peers.Replace("b.py", "B = '169.254.169.254'", "B = '10.0.2.101'"),
    )
    with pytest.raises(peers.PatchError, match=r"b\.py"):
        peers.patch_tree(tmp_path, changes)
    assert (tmp_path / "a.py").read_text() == "A = '168.63.129.16'\n"


def test_patch_tree_reports_each_change(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/w.conf").write_text("Agent=cloud-init\nKeys=auto\n")
    changes = (
        peers.Replace("etc/w.conf", "Agent=cloud-init", "Agent=waagent"),
        peers.Replace("etc/w.conf", "Keys=auto", "Keys=ed25519"),
    )
    lines = peers.patch_tree(tmp_path, changes)
    assert (tmp_path / "etc/w.conf").read_text() == "Agent=waagent\nKeys=ed25519\n"
    assert lines == [
        "etc/w.conf: Agent=cloud-init -> Agent=waagent",
        "etc/w.conf: Keys=auto -> Keys=ed25519",
    ]


def test_patch_tree_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(peers.PatchError, match=r"nowhere\.py"):
        peers.patch_tree(tmp_path, (peers.Replace("nowhere.py", "a", "b"),))


def test_every_peer_address_goes_to_a_forwarded_guest_address() -> None:
    for name, changes in peers.PATCHES.items():
        for change in changes:
            for real in (peers.REAL_WIRESERVER, peers.REAL_IMDS, "10813FA8"):
                assert real not in change.new, (name, change)
    news = " ".join(c.new for changes in peers.PATCHES.values() for c in changes)
    assert WIRESERVER_IP in news
    assert IMDS_IP in news
    for files in peers.FILES.values():
        for text in files.values():
            assert peers.REAL_WIRESERVER not in text
            assert peers.REAL_IMDS not in text


# -- the packet dump ------------------------------------------------------------------


def _ipv4(dst: str, payload: bytes, proto: int = 17) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0,
        64,
        proto,
        0,
        bytes([10, 0, 2, 2]),
        bytes(int(o) for o in dst.split(".")),
    )
    return b"\x52\x54\x00\x12\x34\x56" * 2 + b"\x08\x00" + header + payload


def _dhcp(message_type: int) -> bytes:
    bootp = bytes(236) + b"\x63\x82\x53\x63" + bytes([53, 1, message_type, 255])
    return struct.pack("!HHHH", 67, 68, 8 + len(bootp), 0) + bootp


def _pcap(frames: list[bytes], truncate: int = 0) -> bytes:
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, frame in enumerate(frames):
        data += struct.pack("<IIII", 100 + i, 0, len(frame), len(frame)) + frame
    return data[: len(data) - truncate]


def test_a_dhcp_ack_is_seen_and_an_offer_is_not() -> None:
    packets = bench.pcap_packets(
        _pcap([_ipv4("10.0.2.15", _dhcp(2)), _ipv4("10.0.2.15", _dhcp(5))])
    )
    assert [bench.is_dhcp_ack(frame) for _, frame in packets] == [False, True]
    assert packets[1][0] == 101.0


def test_a_record_still_being_written_is_left_for_the_next_poll() -> None:
    data = _pcap([_ipv4("10.0.2.15", _dhcp(5))], truncate=3)
    assert bench.pcap_packets(data) == []
    with pytest.raises(ValueError, match="pcap"):
        bench.pcap_packets(b"x" * 40)


def test_packets_and_arp_queries_for_real_platform_addresses_are_found() -> None:
    arp = (
        b"\xff" * 6
        + b"\x52\x54\x00\x12\x34\x56"
        + b"\x08\x06"
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
        + bytes(6)
        + bytes([10, 0, 2, 15])
        + bytes(6)
        + bytes([169, 254, 169, 254])
    )
    frames = [_ipv4("10.0.2.100", b"x" * 20, 6), _ipv4("168.63.129.16", b"x" * 20, 6), arp]
    packets = bench.pcap_packets(_pcap(frames))
    assert bench.forbidden_packets(packets) == ["168.63.129.16", "169.254.169.254"]
    assert bench.forbidden_packets(packets[:1]) == []


# -- figures ------------------------------------------------------------------------


def _boots() -> list[bench.Boot]:
    return [
        bench.Boot("azagent", 1, lease=20.0, ready=30.0, ssh=28.0, cpu=9.0),
        bench.Boot("azagent", 2, lease=22.0, ready=31.0, ssh=33.0, cpu=11.0),
        bench.Boot("azagent", 3, lease=21.0, failures=["no Ready health report within 300 s"]),
        bench.Boot("none", 1, lease=18.0, ssh=24.0, extra=0.5),
        bench.Boot("none", 2, lease=19.0, ssh=26.0, extra=0.7),
    ]


def test_usable_is_the_later_of_ready_and_ssh_and_none_without_either() -> None:
    boots = _boots()
    assert [b.usable for b in boots] == [30.0, 33.0, None, 24.0, 26.0]


def test_summary_takes_medians_and_counts_only_good_boots() -> None:
    result = bench.summary(_boots())
    azagent = result["azagent"]
    assert (azagent["lease"], azagent["ready"], azagent["ssh"], azagent["cpu"]) == (
        21.0,
        30.5,
        30.5,
        10.0,
    )
    assert azagent["usable"] == 31.5
    assert azagent["boots"] == 2
    assert set(result["none"]) >= {"lease", "ssh", "boots"}
    assert "ready" not in result["none"]
    assert "cpu" not in result["none"]
    json.dumps(result)  # what --json writes


def test_the_limit_is_the_bare_ssh_plus_one_request_and_one_report() -> None:
    assert bench.limit(_boots()) == 25.6
    assert bench.limit(_boots()[:3]) is None


def test_table_and_ratios() -> None:
    result = bench.summary(_boots())
    text = bench.table(result)
    assert "| azagent | 21.0 | 30.5 | 30.5 | 31.5 | 10.0 | 2 |" in text
    assert "| none | 18.5 | - | 25.0 | 25.0 | - | 2 |" in text
    result["cloud-init"] = {"usable": 63.0}
    lines = bench.ratios(result, 25.6)
    assert "azagent usable / cloud-init usable = 0.50" in lines
    assert "azagent usable - limit = +5.9 s" in lines


def test_cpu_seconds_sums_units_and_flags_a_unit_that_ran_without_a_figure() -> None:
    show = (
        "CPUUsageNSec=1500000000\nId=a.service\nActiveState=active\n"
        "InactiveExitTimestampMonotonic=5\n\n"
        "CPUUsageNSec=[not set]\nId=never.service\nActiveState=inactive\n"
        "InactiveExitTimestampMonotonic=0\n\n"
        "CPUUsageNSec=250000000\nId=stopped.service\nActiveState=inactive\n"
        "InactiveExitTimestampMonotonic=9\n"
    )
    assert bench.cpu_seconds(show) == (1.75, 2, [])
    lost = show.replace("250000000", "[not set]")
    assert bench.cpu_seconds(lost) == (1.5, 1, ["stopped.service"])
