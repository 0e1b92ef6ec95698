"""--dry-run describes and changes nothing, for every stage.

Every stage runs with --dry-run against a root prepared like a freshly booted
VM (provisioning media, account files, sshd, a SCSI disk, a CD-ROM) with the
fabric emulator on loopback: first before anything ran, then after mount-ovf
saved the provisioning data (so the stages that need it plan their changes).
The tree must stay byte for byte (mode and owner too) as it was, and none of
the commands that change a system may run: recording stubs of them come
first on PATH.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from azfabric.scenario import KeyPair, PublicKey
from azfabric.server import Fabric
from conftest import add_scsi_disk, run_stage, snapshot
from provisioning_env import Scenario, Vm, make_vm
from test_create_user import debian_root

from azagent import catalog

# Commands that change a system (or wait on one), as stages would run them.
COMMANDS = (
    "mount", "umount", "swapon", "swapoff", "mkswap", "mkfs", "mkfs.ext4", "mkfs.xfs",
    "sfdisk", "parted", "partprobe", "wipefs", "blockdev", "fallocate", "dd",
    "systemctl", "udevadm", "modprobe", "sysctl",
    "useradd", "usermod", "userdel", "groupadd", "gpasswd", "chpasswd", "passwd", "chage",
    "hostname", "hostnamectl", "ip", "dhclient", "dhcpcd", "nmcli", "networkctl", "ifup",
    "iptables", "iptables-restore", "ip6tables", "nft",
    "ssh-keygen", "sshd", "restorecon", "chcon", "update-grub", "grub2-mkconfig", "grubby",
    "bash", "sh",
)  # fmt: skip


@pytest.fixture(params=["media", "no media"])
def vm(root: Path, request: pytest.FixtureRequest) -> Iterator[Vm]:
    scenario = Scenario(
        hostname="dry-vm",
        username="alice",
        password="Dry-Run-Pa55word",  # noqa: S106 - a test password
        disable_password_auth=False,
        custom_data="#!/bin/sh\necho hello\n",
        public_keys=[PublicKey(path="/home/alice/.ssh/authorized_keys")],
        key_pairs=[KeyPair(path="/home/alice/.ssh/id_rsa")],
    )
    with Fabric(scenario) as fabric:
        debian_root(root)
        (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
        (root / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
        (root / "etc/hostname").write_text("localhost\n")
        (root / "sys/class/block/sr0").mkdir(parents=True)
        add_scsi_disk(root, "sda", "Msft", "Virtual Disk")
        vm = make_vm(root, scenario, fabric, with_media=request.param == "media")
        vm.configure(
            "Provisioning.DecodeCustomData=y",
            "Provisioning.ExecuteCustomData=y",
            "Provisioning.RegenerateSshHostKeyPair=y",
            "Provisioning.DeleteRootPassword=y",
            "DetectScvmmEnv=y",
            "ResourceDisk.Format=y",
            "ResourceDisk.EnableSwap=y",
            "OS.EnableFirewall=y",
            "OS.RootDeviceScsiTimeout=300",
        )
        yield vm


def stubs(directory: Path, log: Path) -> dict[str, str]:
    """An environment whose PATH starts with recording stubs of COMMANDS."""
    directory.mkdir()
    for name in COMMANDS:
        stub = directory / name
        stub.write_text(f'#!/bin/sh\necho "$0 $*" >> "{log}"\n')
        stub.chmod(0o755)
    return {"PATH": f"{directory}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def dry_run_every_stage(vm: Vm, env: dict[str, str]) -> dict[str, str]:
    """Each stage's dry-run output, after checking it exited 0."""
    outputs = {}
    for info in catalog.STAGES:
        run = run_stage(info.name, "--root", str(vm.root), "--dry-run", env=env)
        assert run.returncode == 0, f"{info.name}: {run.stderr}"
        outputs[info.name] = run.stdout
    return outputs


def test_dry_runs_change_nothing_and_run_nothing(vm: Vm, tmp_path: Path) -> None:
    log = tmp_path / "commands.log"
    env = stubs(tmp_path / "bin", log)
    assert shutil.which("mount", path=env["PATH"]) == str(tmp_path / "bin/mount")

    before = snapshot(vm.root)
    fresh = dry_run_every_stage(vm, env)
    assert snapshot(vm.root) == before
    assert not log.exists(), log.read_text()
    assert "mount-ovf: would:" in fresh["mount-ovf"]
    assert "kernel-tune: would:" in fresh["kernel-tune"]

    # Once mount-ovf ran, the stages that use what it found plan their changes.
    assert vm.run("mount-ovf").returncode == 0
    before = snapshot(vm.root)
    after_mount_ovf = dry_run_every_stage(vm, env)
    assert snapshot(vm.root) == before
    assert not log.exists(), log.read_text()
    if vm.state() is not None:
        planning = ("hostname", "create-user", "ssh-keys", "certificates", "custom-data")
    else:
        planning = ("imds",)
    for name in (*planning, "report-ready"):
        assert f"{name}: would:" in after_mount_ovf[name], after_mount_ovf[name]
