"""The stage contract, proven on the real kernel-tune stage against temporary roots."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from conftest import add_scsi_disk, run_stage, snapshot

RULE = "run/udev/rules.d/66-azagent-scsi-timeout.rules"
RESULT = "run/azagent/stages/kernel-tune.json"


def azure_root(root: Path) -> tuple[Path, Path, Path]:
    """Two Hyper-V disks (OS and resource) and a disk of another vendor."""
    sda = add_scsi_disk(root, "sda", "Msft", "Virtual Disk", "30")
    sdb = add_scsi_disk(root, "sdb", "Msft", "Virtual Disk", "300")
    sdc = add_scsi_disk(root, "sdc", "QEMU", "QEMU HARDDISK", "30")
    return sda, sdb, sdc


def system_state(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """The tree without azagent's own bookkeeping (result files, lock holder pid)."""
    return {k: v for k, v in snapshot(root).items() if not k.startswith("run/azagent/")}


def result(root: Path) -> dict[str, object]:
    data = json.loads((root / RESULT).read_text())
    assert isinstance(data, dict)
    return data


def test_sets_timeouts_and_installs_the_rule(root: Path) -> None:
    sda, sdb, sdc = azure_root(root)
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert sda.read_text() == "300\n"
    assert sdb.read_text() == "300\n"  # already right
    assert sdc.read_text() == "30\n"  # not a Hyper-V disk
    rule = root / RULE
    assert oct(rule.stat().st_mode & 0o777) == "0o644"
    assert 'ATTR{vendor}=="Msft*"' in rule.read_text()
    assert 'ATTR{timeout}="300"' in rule.read_text()
    recorded = result(root)
    assert recorded["state"] == "done"
    assert recorded["exit_status"] == 0
    assert recorded["changes"] == [
        "install /run/udev/rules.d/66-azagent-scsi-timeout.rules: "
        "SCSI timeout 300 s for disks attached later",
        "set the SCSI timeout of sda from 30 s to 300 s",
    ]
    assert isinstance(recorded["duration_ms"], int)
    assert "set the SCSI timeout of sda" in run.stderr


def test_second_run_changes_nothing_and_says_so(root: Path) -> None:
    azure_root(root)
    assert run_stage("kernel-tune", "--root", str(root)).returncode == 0
    before = system_state(root)
    again = run_stage("kernel-tune", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert system_state(root) == before
    assert "nothing to do" in again.stderr
    assert result(root)["state"] == "nothing-to-do"


def test_dry_run_prints_the_plan_and_writes_nothing(root: Path) -> None:
    azure_root(root)
    before = snapshot(root)
    run = run_stage("kernel-tune", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert snapshot(root) == before
    assert "would:" in run.stdout
    assert "set the SCSI timeout of sda from 30 s to 300 s" in run.stdout


def test_configuration_from_root_and_dropins(root: Path) -> None:
    sda, _, _ = azure_root(root)
    (root / "etc/waagent.conf.d").mkdir(parents=True)
    (root / "etc/waagent.conf").write_text("OS.RootDeviceScsiTimeout=120\n")
    (root / "etc/waagent.conf.d/90-site.conf").write_text("OS.RootDeviceScsiTimeout=180\n")
    assert run_stage("kernel-tune", "--root", str(root)).returncode == 0
    assert sda.read_text() == "180\n"
    assert 'ATTR{timeout}="180"' in (root / RULE).read_text()


def test_explicit_config_path(root: Path, tmp_path: Path) -> None:
    sda, _, _ = azure_root(root)
    conf = tmp_path / "other.conf"
    conf.write_text("OS.RootDeviceScsiTimeout=90\n")
    assert run_stage("kernel-tune", "--root", str(root), "--config", str(conf)).returncode == 0
    assert sda.read_text() == "90\n"
    missing = run_stage("kernel-tune", "--root", str(root), "--config", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert "nope: cannot read" in missing.stderr


def test_knob_off_removes_the_rule_then_skips(root: Path) -> None:
    azure_root(root)
    assert run_stage("kernel-tune", "--root", str(root)).returncode == 0
    (root / "etc").mkdir()
    (root / "etc/waagent.conf").write_text("OS.RootDeviceScsiTimeout=None\n")
    off = run_stage("kernel-tune", "--root", str(root))
    assert off.returncode == 0, off.stderr
    assert not (root / RULE).exists()
    skipped = run_stage("kernel-tune", "--root", str(root))
    assert skipped.returncode == 0
    assert result(root)["state"] == "skipped"
    assert "OS.RootDeviceScsiTimeout=None" in str(result(root)["reason"])


def test_bad_configuration_fails_with_reason_and_changes_nothing(root: Path) -> None:
    sda, _, _ = azure_root(root)
    (root / "etc").mkdir()
    (root / "etc/waagent.conf").write_text("OS.RootDeviceScsiTimeout=soon\n")
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 1
    assert "waagent.conf:1: OS.RootDeviceScsiTimeout='soon' is not valid" in run.stderr
    assert sda.read_text() == "30\n"
    assert not (root / RULE).exists()
    recorded = result(root)
    assert recorded["state"] == "failed"
    assert "OS.RootDeviceScsiTimeout='soon'" in str(recorded["reason"])


def test_unexpected_error_exits_3_with_traceback(root: Path) -> None:
    device = root / "sys/block/sda/device"
    device.mkdir(parents=True)
    (device / "vendor").write_text("Msft\n")
    (device / "model").write_text("Virtual Disk\n")
    (device / "timeout").mkdir()  # writing it fails in a way nobody planned for
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 3
    assert "Traceback" in run.stderr
    recorded = result(root)
    assert recorded["state"] == "failed"
    assert str(recorded["reason"]).startswith("unexpected error: IsADirectoryError")
    # The change made before the failure is recorded.
    assert recorded["changes"] == [
        "install /run/udev/rules.d/66-azagent-scsi-timeout.rules: "
        "SCSI timeout 300 s for disks attached later"
    ]


def test_usage_errors_exit_2(root: Path, tmp_path: Path) -> None:
    assert run_stage("kernel-tune", "--no-such-option").returncode == 2
    missing = run_stage("kernel-tune", "--root", str(tmp_path / "absent"))
    assert missing.returncode == 2
    assert "not a directory" in missing.stderr


def test_a_held_lock_fails_the_run_with_the_holder(root: Path) -> None:
    sda, _, _ = azure_root(root)
    lock = root / "run/azagent/lock/kernel-tune.lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        run = run_stage("kernel-tune", "--root", str(root), env={"AZAGENT_LOCK_TIMEOUT": "0.3"})
    finally:
        os.close(fd)
    assert run.returncode == 1
    assert "another run holds" in run.stderr
    assert "pid 4242" in run.stderr
    assert sda.read_text() == "30\n"
    assert result(root)["state"] == "failed"
    # Released: the next run goes through.
    assert run_stage("kernel-tune", "--root", str(root)).returncode == 0
    assert sda.read_text() == "300\n"


def test_no_disks_is_nothing_but_the_rule(root: Path) -> None:
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / RULE).exists()
    assert result(root)["changes"] == [
        "install /run/udev/rules.d/66-azagent-scsi-timeout.rules: "
        "SCSI timeout 300 s for disks attached later"
    ]
