"""kernel-tune's Hyper-V entropy, virtual NUMA and RDMA knobs, against temporary roots.

Nothing here touches the host: entropy goes to a regular file standing in for
<root>/dev/random, GRUB's defaults are the tree's, and no module is loaded
(modprobe is only ever a fake that records its arguments).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType

import pytest
from conftest import add_scsi_disk, load_stage, run_stage, snapshot

RESULT = "run/azagent/stages/kernel-tune.json"
MARKER = "run/azagent/kernel-tune/entropy-fed"
HEADER = b"OEM0" + bytes(32)  # a 36-byte ACPI table header
SEED = bytes(range(1, 65))


def result(root: Path) -> dict[str, object]:
    data = json.loads((root / RESULT).read_text())
    assert isinstance(data, dict)
    return data


def changes(root: Path) -> list[str]:
    """What the last run changed, without the SCSI rule every default run installs."""
    recorded = result(root)["changes"]
    assert isinstance(recorded, list)
    return [change for change in recorded if "66-azagent-scsi-timeout" not in change]


def configure(root: Path, *lines: str) -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/waagent.conf").write_text("\n".join(lines) + "\n")


def entropy_root(root: Path, table: bytes = HEADER + SEED) -> Path:
    tables = root / "sys/firmware/acpi/tables"
    tables.mkdir(parents=True)
    (tables / "OEM0").write_bytes(table)
    random = root / "dev/random"
    random.parent.mkdir()
    random.write_bytes(b"")
    return random


def kernel(root: Path, release: str, cmdline: str = "BOOT_IMAGE=/vmlinuz ro quiet") -> None:
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
    (root / "proc/cmdline").write_text(cmdline + "\n")


def grub(root: Path, text: str) -> Path:
    path = root / "etc/default/grub"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o644)
    return path


def pci_function(root: Path, address: str, vendor: str, device: str) -> None:
    directory = root / "sys/bus/pci/devices" / address
    directory.mkdir(parents=True)
    (directory / "vendor").write_text(vendor + "\n")
    (directory / "device").write_text(device + "\n")


# -- Hyper-V entropy ---------------------------------------------------------


def test_entropy_is_fed_once_per_boot(root: Path) -> None:
    random = entropy_root(root)
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert random.read_bytes() == HEADER + SEED
    assert changes(root) == ["feed the Hyper-V entropy table (OEM0, 100 bytes) to /dev/random"]
    marker = root / MARKER
    assert marker.read_text() == "100 bytes\n"
    assert oct(marker.stat().st_mode & 0o777) == "0o644"
    # The seed itself is never logged or recorded.
    assert SEED.hex() not in run.stderr + (root / RESULT).read_text()

    again = run_stage("kernel-tune", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert random.read_bytes() == HEADER + SEED  # not a second time
    assert result(root)["state"] == "nothing-to-do"

    marker.unlink()  # a new boot: /run is empty again
    assert run_stage("kernel-tune", "--root", str(root)).returncode == 0
    assert random.read_bytes() == (HEADER + SEED) * 2


def test_entropy_dry_run_writes_nothing(root: Path) -> None:
    entropy_root(root)
    before = snapshot(root)
    run = run_stage("kernel-tune", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "feed the Hyper-V entropy table (OEM0, 100 bytes) to /dev/random" in run.stdout
    assert snapshot(root) == before


def test_entropy_under_root_never_leaves_the_tree(root: Path, tmp_path: Path) -> None:
    """Only a regular file <root>/dev/random is written: never a link, never a device."""
    random = entropy_root(root)
    random.unlink()
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    random.symlink_to(outside)
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert outside.read_bytes() == b""
    assert "/dev/random is not a regular file: entropy is fed only on /" in run.stderr
    assert not (root / MARKER).exists()

    random.unlink()  # no /dev/random at all
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert not random.exists()


def test_entropy_the_kernel_already_took_is_left_alone(root: Path) -> None:
    random = entropy_root(root, HEADER + bytes(64))  # zeroed by the kernel
    configure(root, "OS.RootDeviceScsiTimeout=None")
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert random.read_bytes() == b""
    assert result(root)["state"] == "skipped"
    assert "the kernel already took the Hyper-V entropy" in str(result(root)["reason"])


# -- Virtual NUMA ------------------------------------------------------------

DEBIAN_GRUB = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'


@pytest.mark.parametrize(
    ("release", "needed"),
    [
        ("2.6.32-431.el6.x86_64", True),  # RHEL 6.5
        ("2.6.36", True),
        ("2.6.32-504.el6.x86_64", False),  # RHEL 6.6 fixed it
        ("2.6.37", False),
        ("3.10.0-1160.el7.x86_64", False),
        ("6.1.0-27-cloud-amd64", False),
    ],
)
def test_numa_off_only_for_kernels_that_need_it(root: Path, release: str, needed: bool) -> None:
    kernel(root, release)
    path = grub(root, DEBIAN_GRUB)
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    expected = 'GRUB_CMDLINE_LINUX="numa=off"\n' if needed else 'GRUB_CMDLINE_LINUX=""\n'
    assert path.read_text().endswith(expected)
    if not needed:
        assert f"kernel {release} handles Hyper-V's virtual NUMA" in run.stderr


def test_numa_off_is_added_once(root: Path) -> None:
    kernel(root, "2.6.32-279.el6.x86_64")
    path = grub(root, 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="crashkernel=auto rhgb quiet"\n')
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (
        path.read_text()
        == 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="crashkernel=auto rhgb quiet numa=off"\n'
    )
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert changes(root) == ["add numa=off to GRUB_CMDLINE_LINUX in /etc/default/grub"]
    assert "must be regenerated" in run.stderr
    again = run_stage("kernel-tune", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert path.read_text().count("numa=off") == 1


def test_numa_already_off_on_the_running_kernel(root: Path) -> None:
    kernel(root, "2.6.32-279.el6.x86_64", "ro root=/dev/sda1 numa=off")
    path = grub(root, DEBIAN_GRUB)
    assert run_stage("kernel-tune", "--root", str(root)).returncode == 0
    assert path.read_text() == DEBIAN_GRUB


def test_numa_without_grub_defaults_warns_and_the_rest_still_runs(root: Path) -> None:
    kernel(root, "2.6.32-279.el6.x86_64")
    sda = add_scsi_disk(root, "sda", "Msft", "Virtual Disk", "30")
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "needs numa=off: /etc/default/grub does not exist" in run.stderr
    assert sda.read_text() == "300\n"


# -- RDMA --------------------------------------------------------------------


@pytest.fixture
def fake_modprobe(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose modprobe only records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "modprobe-calls"
    script = bin_dir / "modprobe"
    script.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, record


def test_rdma_off_by_default(root: Path) -> None:
    pci_function(root, "0001:00:02.0", "0x15b3", "0x101c")
    configure(root, "OS.RootDeviceScsiTimeout=None")
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "OS.EnableRDMA=n" in str(result(root)["reason"])
    assert "mlx5_ib" not in run.stderr


@pytest.mark.parametrize(
    ("device", "driver"), [("0x101c", "mlx5_ib"), ("0x1016", "mlx5_ib"), ("0x1004", "mlx4_ib")]
)
def test_rdma_names_the_driver_and_loads_nothing_under_root(
    root: Path, fake_modprobe: tuple[dict[str, str], Path], device: str, driver: str
) -> None:
    env, record = fake_modprobe
    pci_function(root, "0000:00:08.0", "0x8086", "0x7111")  # not Mellanox
    pci_function(root, "0001:00:02.0", "0x15b3", device)
    configure(root, "OS.EnableRDMA=y")
    run = run_stage("kernel-tune", "--root", str(root), env=env)
    assert run.returncode == 0, run.stderr
    assert (
        f"RDMA: {driver} is needed for 0001:00:02.0; modules are loaded only when the root is /"
        in run.stderr
    )
    assert not record.exists()
    dry = run_stage("kernel-tune", "--root", str(root), "--dry-run", env=env)
    assert driver not in dry.stdout
    assert not record.exists()


def test_rdma_driver_already_loaded(root: Path) -> None:
    pci_function(root, "0001:00:02.0", "0x15b3", "0x101c")
    (root / "sys/module/mlx5_ib").mkdir(parents=True)
    configure(root, "OS.EnableRDMA=y")
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "RDMA: mlx5_ib is loaded for 0001:00:02.0" in run.stderr


def test_rdma_says_clearly_when_there_is_no_device(root: Path) -> None:
    pci_function(root, "0000:00:08.0", "0x1414", "0x5353")  # Hyper-V video
    configure(root, "OS.EnableRDMA=y", "OS.RootDeviceScsiTimeout=None")
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    message = "OS.EnableRDMA=y, but this VM has no RDMA device (no Mellanox ConnectX function)"
    assert message in run.stderr
    assert message in str(result(root)["reason"])


def test_rdma_unknown_mellanox_device_is_reported(root: Path) -> None:
    pci_function(root, "0001:00:02.0", "0x15b3", "0xcb84")  # a switch, not a ConnectX
    configure(root, "OS.EnableRDMA=y")
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "Mellanox device 0001:00:02.0 (id 0xcb84) is not a known ConnectX" in run.stderr


def test_rdma_infiniband_devices_without_connectx(root: Path) -> None:
    (root / "sys/class/infiniband/mlx5_0").mkdir(parents=True)
    configure(root, "OS.EnableRDMA=y", "OS.RootDeviceScsiTimeout=None")
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "RDMA: devices present, no ConnectX driver to load: mlx5_0" in run.stderr
    assert result(root)["state"] == "nothing-to-do"


def _stage_module() -> ModuleType:
    return load_stage("kernel-tune")


def test_load_module_runs_modprobe_with_the_name_only(
    fake_modprobe: tuple[dict[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, record = fake_modprobe
    monkeypatch.setenv("PATH", env["PATH"])
    _stage_module().load_module("mlx5_ib")
    assert record.read_text() == "mlx5_ib\n"


def test_everything_off_is_a_skip_naming_each_knob(root: Path) -> None:
    configure(root, "OS.RootDeviceScsiTimeout=None")
    run = run_stage("kernel-tune", "--root", str(root))
    assert run.returncode == 0, run.stderr
    reason = str(result(root)["reason"])
    for part in (
        "OS.RootDeviceScsiTimeout=None",
        "no Hyper-V entropy table (OEM0)",
        "kernel release unknown under --root",
        "OS.EnableRDMA=n",
    ):
        assert part in reason
