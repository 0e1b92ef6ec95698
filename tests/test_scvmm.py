"""The scvmm stage against fake VMM DVD trees under temporary roots.

The stage never runs an installer under --root. The only installer these
tests execute is their own harmless shell script (it records its arguments
and working directory in a file of the test's temporary directory), run by
calling the stage's run_installer directly, or by the stage in-process with
the test root posing as the running system and every mount/umount recorded
instead of run; no DVD is mounted anywhere.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import STAGES, run_stage, snapshot

from azagent import stage, system, udev
from azagent.context import Context
from azagent.errors import StageFailed

RESULT = "run/azagent/stages/scvmm.json"


def result(root: Path) -> dict[str, object]:
    data = json.loads((root / RESULT).read_text())
    assert isinstance(data, dict)
    return data


def configure(root: Path, *lines: str) -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/waagent.conf").write_text("\n".join(lines) + "\n")


def vmm_dvd(directory: Path, evidence: Path) -> Path:
    """A VMM DVD as a directory: specialization data and an installer."""
    directory.mkdir(parents=True)
    (directory / "linuxosconfiguration.xml").write_text("<LinuxOSConfiguration/>\n")
    installer = directory / "install"
    installer.write_text(f'#!/bin/bash\nprintf "%s\\n" "$#" "$@" "$PWD" > "{evidence}"\n')
    return installer


def test_off_by_default(root: Path, tmp_path: Path) -> None:
    vmm_dvd(root / "mnt/cdrom/secure", tmp_path / "ran")
    run = run_stage("scvmm", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "skipped"
    assert result(root)["reason"] == "DetectScvmmEnv=n"
    assert not (tmp_path / "ran").exists()


def test_no_vmm_media(root: Path) -> None:
    configure(root, "DetectScvmmEnv=y")
    (root / "mnt/cdrom/secure").mkdir(parents=True)
    (root / "mnt/cdrom/secure/ovf-env.xml").write_text("<Environment/>\n")  # Azure's DVD
    run = run_stage("scvmm", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "skipped"
    assert "no SCVMM media: no DVD holds linuxosconfiguration.xml" in str(result(root)["reason"])


@pytest.mark.parametrize("mount_point", ["/mnt/cdrom/secure", "/media/vmm"])
def test_media_found_under_root_is_never_run(root: Path, tmp_path: Path, mount_point: str) -> None:
    lines = ["DetectScvmmEnv=y"]
    if mount_point != "/mnt/cdrom/secure":
        lines.append(f"DVD.MountPoint={mount_point}")
    configure(root, *lines)
    vmm_dvd(root / mount_point.lstrip("/"), tmp_path / "ran")
    before = snapshot(root)
    dry = run_stage("scvmm", "--root", str(root), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would skip: SCVMM media at {mount_point}; its installer runs only" in dry.stdout
    assert snapshot(root) == before
    run = run_stage("scvmm", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "skipped"
    assert "not under --root" in str(result(root)["reason"])
    assert not (tmp_path / "ran").exists()


def test_started_earlier_in_this_boot_is_nothing_to_do(root: Path, tmp_path: Path) -> None:
    configure(root, "DetectScvmmEnv=y")
    vmm_dvd(root / "mnt/cdrom/secure", tmp_path / "ran")
    (root / "run/azagent").mkdir(parents=True)
    (root / "run/azagent/scvmm-started").write_text("1 sr0\n")
    run = run_stage("scvmm", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "nothing-to-do"


def _stage_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("scvmm_stage", str(STAGES / "scvmm"))
    spec = importlib.util.spec_from_loader("scvmm_stage", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_installer_is_called_as_walinuxagent_calls_it(tmp_path: Path) -> None:
    """Our own harmless script stands in for the DVD's installer."""
    evidence = tmp_path / "ran"
    dvd = tmp_path / "dvd"
    vmm_dvd(dvd, evidence)
    started = tmp_path / "run/scvmm-started"
    _stage_module().run_installer(dvd, "", started)
    # One argument "-p <mount point>", run by bash (the script is not executable), in the DVD.
    assert evidence.read_text().splitlines() == ["1", f"-p {dvd}", str(dvd)]
    assert started.read_text().endswith(" mounted\n")


def test_a_failing_installer_fails_the_stage_and_may_run_again(tmp_path: Path) -> None:
    dvd = tmp_path / "dvd"
    vmm_dvd(dvd, tmp_path / "ran")
    (dvd / "install").write_text("#!/bin/bash\necho installing; exit 3\n")
    started = tmp_path / "scvmm-started"
    with pytest.raises(StageFailed, match="the VMM agent installer: bash exited with status 3"):
        _stage_module().run_installer(dvd, "", started)
    assert not started.exists()  # a later run tries again


def test_vmm_data_without_an_installer_fails(tmp_path: Path) -> None:
    dvd = tmp_path / "dvd"
    dvd.mkdir()
    (dvd / "linuxosconfiguration.xml").write_text("<LinuxOSConfiguration/>\n")
    with pytest.raises(StageFailed, match=r"has linuxosconfiguration\.xml but no install"):
        _stage_module().run_installer(dvd, "", tmp_path / "started")


class FakeDrives:
    """The test root posing as the running system, with CD-ROMs that mount on paper.

    Every mount/umount is recorded, never run; mounting ``vmm`` (a device
    name) puts a VMM DVD (harmless installer included) at the mount point.
    Other commands (the installer, run by bash) run for real.
    """

    def __init__(self, root: Path, evidence: Path, vmm: str = "") -> None:
        self.root = root
        self.evidence = evidence
        self.vmm = vmm
        self.calls: list[list[str]] = []
        self._run = system.run

    def add(self, *devices: str) -> None:
        for device in devices:
            (self.root / "sys/class/block" / device).mkdir(parents=True)

    def run(self, argv: Sequence[str], **kwargs: Any) -> system.Completed:
        command = list(argv)
        if command[0] not in ("mount", "umount"):
            return self._run(argv, **kwargs)
        self.calls.append(command)
        if command[0] == "umount":
            for child in Path(command[-1]).iterdir():
                child.unlink()
            return system.Completed(0, "", "")
        if self.vmm and command[-2] == f"/dev/{self.vmm}":
            point = Path(command[-1])
            point.mkdir(parents=True, exist_ok=True)
            (point / "linuxosconfiguration.xml").write_text("<LinuxOSConfiguration/>\n")
            (point / "install").write_text(
                f'#!/bin/bash\nprintf "%s\\n" "$#" "$@" "$PWD" > "{self.evidence}"\n'
            )
            return system.Completed(0, "", "")
        return system.Completed(32, "", "mount: wrong fs type")

    def mounts(self) -> list[str]:
        return [call[-2] for call in self.calls if call[0] == "mount"]


@pytest.fixture
def drives(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDrives:
    fake = FakeDrives(root, tmp_path / "ran")
    monkeypatch.setattr(Context, "live", property(lambda self: True))
    monkeypatch.setattr(system, "run", fake.run)
    # The pretend running system's CD-ROMs are in the tree's /sys, not this machine's udev.
    monkeypatch.setattr(udev, "_load", lambda: None)
    configure(root, "DetectScvmmEnv=y")
    return fake


def run_live(root: Path, *args: str) -> int:
    return stage.main("scvmm", "", _stage_module().plan, ["--root", str(root), *args])


def test_a_dry_run_on_the_running_system_mounts_nothing(
    root: Path, drives: FakeDrives, capsys: pytest.CaptureFixture[str]
) -> None:
    drives.add("sr0", "sr1")
    before = snapshot(root)
    assert run_live(root, "--dry-run") == 0
    assert drives.calls == []
    assert snapshot(root) == before
    out = capsys.readouterr().out
    assert "scvmm: would:" in out
    assert "look for the VMM DVD on /dev/sr0, /dev/sr1" in out


def test_no_cdrom_on_the_running_system_skips_without_mounting(
    root: Path, drives: FakeDrives
) -> None:
    assert run_live(root) == 0
    assert drives.calls == []
    assert result(root)["state"] == "skipped"
    assert result(root)["reason"] == "no SCVMM media: no DVD holds linuxosconfiguration.xml"


def test_probing_finds_nothing_once_per_boot(root: Path, drives: FakeDrives) -> None:
    drives.add("sr0")
    assert run_live(root) == 0
    assert result(root)["state"] == "done"
    assert drives.mounts() == ["/dev/sr0", "/dev/sr0"]  # udf, then iso9660
    assert (root / "run/azagent/scvmm-probed").read_text() == "sr0\n"
    assert not (root / "run/azagent/scvmm-started").exists()
    # A second run this boot mounts nothing again...
    drives.calls.clear()
    assert run_live(root) == 0
    assert drives.calls == []
    assert result(root)["state"] == "skipped"
    assert "sr0 probed earlier in this boot" in str(result(root)["reason"])
    # ...unless a CD-ROM came since.
    drives.add("sr1")
    assert run_live(root) == 0
    assert drives.mounts() == ["/dev/sr0", "/dev/sr0", "/dev/sr1", "/dev/sr1"]


def test_probing_finds_the_vmm_dvd_and_runs_its_installer(root: Path, drives: FakeDrives) -> None:
    drives.add("sr0", "sr1")
    drives.vmm = "sr1"
    assert run_live(root) == 0, result(root)
    assert result(root)["state"] == "done"
    mount_point = root / "mnt/cdrom/secure"
    # Probed at the probe point (and released), then mounted where the installer wants it.
    assert [call[-2:] for call in drives.calls if call[0] == "mount"][-2:] == [
        ["/dev/sr1", str(root / "run/azagent/scvmm-probe")],
        ["/dev/sr1", str(mount_point)],
    ]
    assert drives.evidence.read_text().splitlines() == ["1", f"-p {mount_point}", str(mount_point)]
    assert (root / "run/azagent/scvmm-started").read_text().endswith(" sr1\n")
    drives.calls.clear()
    assert run_live(root) == 0
    assert drives.calls == []
    assert result(root)["state"] == "nothing-to-do"
