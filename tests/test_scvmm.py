"""The scvmm stage against fake VMM DVD trees under temporary roots.

The stage never runs an installer under --root. The only installer these
tests execute is their own harmless shell script (it records its arguments
and working directory in a file of the test's temporary directory), run by
calling the stage's run_installer directly; no DVD is mounted anywhere.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from conftest import STAGES, run_stage, snapshot

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
