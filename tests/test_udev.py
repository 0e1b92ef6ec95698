"""Finding devices through udev on the running system, and the sysfs fallback.

On ``/`` the lookups ask pyudev; these tests replace the ``pyudev`` module
with a fake describing a machine (devices whose attribute files live under
the test's temporary directory), so the live branch runs without touching
the host. One test loads the real pyudev and compares its answers with the
sysfs code's on this machine, reading only. Under any other root the tree's
own /sys answers: the stage tests cover that branch on test trees.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import pytest
from conftest import Logged, load_stage

from azagent import config, disks, media, udev
from azagent.context import Context
from azagent.plan import Plan


def live_context(tmp_path: Path, *lines: str) -> Context:
    """A context for the running system (root /) whose configuration is a temporary file."""
    path = tmp_path / "waagent.conf"
    path.write_text("".join(f"{line}\n" for line in lines))
    return Context(stage="test", root=Path("/"), config=config.load(path))


@pytest.fixture(autouse=True)
def _fresh_udev() -> Iterator[None]:
    """Each test loads pyudev (real or fake) afresh, and leaves no fake behind."""
    udev._load.cache_clear()
    yield
    udev._load.cache_clear()


# -- a fake pyudev ----------------------------------------------------------------


class FakeAttributes:
    def __init__(self, device: FakeDevice) -> None:
        self.device = device

    def get(self, name: str, default: Optional[bytes] = None) -> Optional[bytes]:
        """Read the attribute file, as libudev does (the test writes them as the kernel would)."""
        try:
            return (self.device.path / name).read_bytes()
        except FileNotFoundError:
            return default


class FakeDevice:
    def __init__(
        self,
        base: Path,
        sys_path: str,
        subsystem: str,
        *,
        device_type: Optional[str] = None,
        parent: Optional[FakeDevice] = None,
        number: tuple[int, int] = (0, 0),
        attributes: Optional[dict[str, str]] = None,
    ) -> None:
        self.path = base / sys_path.lstrip("/")
        self.path.mkdir(parents=True, exist_ok=True)
        for name, value in (attributes or {}).items():
            (self.path / name).write_text(value)
        self.sys_path = str(self.path)
        self.sys_name = self.path.name
        self.subsystem = subsystem
        self.device_type = device_type
        self.parent = parent
        self.device_number = os.makedev(*number)
        self.attributes = FakeAttributes(self)

    def find_parent(
        self, subsystem: str, device_type: Optional[str] = None
    ) -> Optional[FakeDevice]:
        node = self.parent
        while node is not None:
            if node.subsystem == subsystem and device_type in (None, node.device_type):
                return node
            node = node.parent
        return None


class FakeMachine:
    """The devices of a fake machine, and a ``pyudev`` module that finds them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.devices: list[FakeDevice] = []
        self.contexts = 0
        self.module = self._module()

    def add(self, sys_path: str, subsystem: str, **kwargs: Any) -> FakeDevice:
        device = FakeDevice(self.base, sys_path, subsystem, **kwargs)
        self.devices.append(device)
        return device

    def scsi_disk(self, name: str, host: int, vendor: str, model: str, major: int) -> FakeDevice:
        scsi = self.add(
            f"/sys/devices/vmbus/host{host}/target{host}:0:0/{host}:0:0:0",
            "scsi",
            device_type="scsi_device",
            attributes={
                "vendor": vendor.ljust(8) + "\n",
                "model": model.ljust(16) + "\n",
                "timeout": "30\n",
            },
        )
        return self.add(
            f"{scsi.sys_path.removeprefix(str(self.base))}/block/{name}",
            "block",
            device_type="disk",
            parent=scsi,
            number=(major, 16 * host),
        )

    def _module(self) -> ModuleType:
        machine = self
        module = types.ModuleType("pyudev")

        class DeviceError(Exception):
            pass

        class DeviceNotFoundError(DeviceError):
            pass

        class FakeContext:
            def __init__(self) -> None:
                machine.contexts += 1

            def list_devices(
                self, subsystem: Optional[str] = None, **properties: str
            ) -> Iterator[FakeDevice]:
                assert set(properties) <= {"DEVTYPE"}, properties
                for device in machine.devices:
                    if subsystem not in (None, device.subsystem):
                        continue
                    if properties.get("DEVTYPE", device.device_type) != device.device_type:
                        continue
                    yield device

        class Devices:
            @staticmethod
            def from_name(context: FakeContext, subsystem: str, name: str) -> FakeDevice:
                for device in machine.devices:
                    if (device.subsystem, device.sys_name) == (subsystem, name):
                        return device
                raise DeviceNotFoundError(name)

            @staticmethod
            def from_device_number(context: FakeContext, kind: str, number: int) -> FakeDevice:
                for device in machine.devices:
                    if (device.subsystem, device.device_number) == (kind, number):
                        return device
                raise DeviceNotFoundError(number)

        module.DeviceError = DeviceError  # type: ignore[attr-defined]
        module.DeviceNotFoundError = DeviceNotFoundError  # type: ignore[attr-defined]
        module.Context = FakeContext  # type: ignore[attr-defined]
        module.Devices = Devices  # type: ignore[attr-defined]
        return module


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    fake = FakeMachine(tmp_path / "machine")
    monkeypatch.setitem(sys.modules, "pyudev", fake.module)
    return fake


def hyperv_vm(machine: FakeMachine) -> None:
    """An Azure VM: OS and resource disk (Msft), a data disk of another vendor, a DVD, NVMe."""
    os_disk = machine.scsi_disk("sda", 0, "Msft", "Virtual Disk", 8)
    machine.add(
        f"{os_disk.sys_path.removeprefix(str(machine.base))}/sda1",
        "block",
        device_type="partition",
        parent=os_disk,
        number=(8, 1),
    )
    machine.scsi_disk("sdb", 1, "Msft", "Virtual Disk", 8)
    machine.scsi_disk("sdc", 2, "QEMU", "QEMU HARDDISK", 8)
    machine.scsi_disk("sr0", 3, "Msft", "Virtual DVD-ROM", 11)
    machine.add("/sys/devices/pci0000:00/nvme/nvme0/nvme0n1", "block", device_type="disk")


def stage_module() -> ModuleType:
    return load_stage("kernel-tune")


# -- the live branch, on a fake machine ---------------------------------------------


def test_hyperv_scsi_disks_come_from_udev(machine: FakeMachine, tmp_path: Path) -> None:
    hyperv_vm(machine)
    found = disks.hyperv_scsi_disks(live_context(tmp_path))
    assert [(disk.name, disk.timeout) for disk in found] == [("sda", "30"), ("sdb", "30")]
    sdb = machine.base / "sys/devices/vmbus/host1/target1:0:0/1:0:0:0/timeout"
    assert found[1].timeout_path == sdb
    disks.write_attribute(found[1].timeout_path, "300")
    assert sdb.read_text() == "300\n"
    assert machine.contexts == 1


def test_kernel_tune_plans_the_timeout_of_the_disks_udev_found(
    machine: FakeMachine, tmp_path: Path
) -> None:
    hyperv_vm(machine)
    plan = Plan()
    ctx = live_context(tmp_path, "OS.RootDeviceScsiTimeout=300")
    assert stage_module().plan_scsi_timeout(ctx, plan) is None
    summaries = [action.summary for action in plan.actions]  # planned only, never applied
    assert "set the SCSI timeout of sda from 30 s to 300 s" in summaries
    assert "set the SCSI timeout of sdb from 30 s to 300 s" in summaries
    assert not [s for s in summaries if "sdc" in s or "sr0" in s or "nvme" in s]


def test_block_device_lookups_ask_udev(machine: FakeMachine, tmp_path: Path) -> None:
    hyperv_vm(machine)
    ctx = live_context(tmp_path)
    assert disks.kernel_name(ctx, (8, 16)) == "sdb"
    assert disks.kernel_name(ctx, (8, 1)) == "sda1"
    assert disks.kernel_name(ctx, (8, 99)) is None
    assert disks.kernel_name(ctx, (0, 42)) is None  # tmpfs, btrfs: no block device
    assert disks.devnum_of(ctx, "sdb") == (8, 16)
    assert disks.devnum_of(ctx, "sdz") is None
    assert disks.scsi_identity(ctx, "sdb") == ("Msft", "Virtual Disk")
    assert disks.scsi_identity(ctx, "nvme0n1") == ("", "")
    assert disks.scsi_identity(ctx, "sdz") == ("", "")


def test_cdroms_are_found_by_kernel_name(machine: FakeMachine, tmp_path: Path) -> None:
    hyperv_vm(machine)
    machine.scsi_disk("sr1", 4, "Msft", "Virtual DVD-ROM", 11)
    assert media.cdrom_devices(live_context(tmp_path)) == ["sr0", "sr1"]


def test_mellanox_functions_and_rdma_devices_come_from_udev(
    machine: FakeMachine, tmp_path: Path
) -> None:
    pci = "/sys/devices/pci0000:00"
    machine.add(
        f"{pci}/0000:00:08.0", "pci", attributes={"vendor": "0x1414\n", "device": "0x5353\n"}
    )
    machine.add(f"{pci}/0002:00:02.0", "pci", attributes={"vendor": "0x15B3\n", "device": "none\n"})
    machine.add(
        f"{pci}/0001:00:02.0", "pci", attributes={"vendor": "0x15b3\n", "device": "0x101c\n"}
    )
    machine.add(f"{pci}/0001:00:02.0/infiniband/mlx5_0", "infiniband")
    stage = stage_module()
    ctx = live_context(tmp_path)
    assert stage.mellanox_functions(ctx) == [("0001:00:02.0", 0x101C)]
    assert stage.infiniband_devices(ctx) == ["mlx5_0"]


# -- when udev cannot answer --------------------------------------------------------


def test_without_pyudev_sysfs_answers_with_a_debug_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: Logged
) -> None:
    monkeypatch.setitem(sys.modules, "pyudev", None)  # import pyudev raises ImportError

    def live(pyudev: Any, context: Any) -> str:
        raise AssertionError("udev asked without pyudev")

    assert udev.find(live_context(tmp_path), "test", live, lambda: "sysfs") == "sysfs"
    assert "udev is not available (ModuleNotFoundError" in logged.text


def test_without_libudev_sysfs_answers(
    machine: FakeMachine, tmp_path: Path, logged: Logged
) -> None:
    def no_library(self: Any) -> None:
        raise ImportError("No library named udev")

    machine.module.Context.__init__ = no_library  # type: ignore[attr-defined]
    assert udev.find(live_context(tmp_path), "test", lambda p, c: "udev", lambda: "sysfs") == (
        "sysfs"
    )
    assert "No library named udev" in logged.text


@pytest.mark.parametrize(
    "error", [OSError(5, "Input/output error"), AttributeError("from_device_number"), None]
)
def test_a_failing_lookup_falls_back_to_sysfs(
    machine: FakeMachine, tmp_path: Path, error: Optional[Exception]
) -> None:
    def live(pyudev: Any, context: Any) -> str:
        raise error if error is not None else pyudev.DeviceError("gone")

    assert udev.find(live_context(tmp_path), "test", live, lambda: "sysfs") == "sysfs"


def test_under_a_root_udev_is_never_loaded(machine: FakeMachine, root: Path) -> None:
    hyperv_vm(machine)
    tree = Context(stage="test", root=root, config=config.defaults())
    assert disks.hyperv_scsi_disks(tree) == []
    assert media.cdrom_devices(tree) == []
    assert disks.kernel_name(tree, (8, 16)) is None
    assert machine.contexts == 0


# -- the real pyudev on this machine, read only ---------------------------------------


def test_real_udev_agrees_with_sysfs_on_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: Logged
) -> None:
    pytest.importorskip("pyudev")
    if udev._load() is None:
        pytest.skip("libudev cannot be loaded here")
    ctx = live_context(tmp_path)
    stage = stage_module()
    names = sorted(os.listdir("/sys/class/block"))

    def answers() -> dict[str, object]:
        scsi = disks.hyperv_scsi_disks(ctx)
        found: dict[str, object] = {
            "scsi": [(d.name, d.timeout, d.timeout_path.resolve()) for d in scsi],
            "cdrom": media.cdrom_devices(ctx),
            "mellanox": stage.mellanox_functions(ctx),
            "infiniband": stage.infiniband_devices(ctx),
        }
        for name in names:
            devnum = disks.devnum_of(ctx, name)
            found[name] = (
                devnum,
                disks.kernel_name(ctx, devnum) if devnum else None,
                disks.scsi_identity(ctx, name),
            )
        return found

    through_udev = answers()
    assert "udev failed" not in logged.text  # every lookup above was udev's own answer
    monkeypatch.setattr(udev, "_load", lambda: None)
    assert answers() == through_udev
