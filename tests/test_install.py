"""tools/install puts azagent into an image the way a package would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, add_scsi_disk


def install(image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/install"),
            "--root",
            str(image),
            "--python",
            sys.executable,
            "--prefix",
            "/usr",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_install_into_an_image_tree(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    done = install(image)
    assert done.returncode == 0, done.stderr

    stage = image / "usr/libexec/azagent/kernel-tune"
    assert stage.stat().st_mode & 0o777 == 0o755
    assert stage.read_text().splitlines()[0] == f"#!{sys.executable}"
    unit = image / "usr/lib/systemd/system/azure-kernel-tune.service"
    assert unit.stat().st_mode & 0o777 == 0o644
    assert (image / "usr/share/doc/azagent/README.md").is_file()
    generator = image / "usr/lib/systemd/system-generators/azagent-generator"
    assert generator.stat().st_mode & 0o777 == 0o755
    assert generator.read_bytes().startswith(b"#!/bin/sh\n")
    assert os.readlink(
        image / "etc/systemd/system/sysinit.target.wants/azure-kernel-tune.service"
    ) == ("/usr/lib/systemd/system/azure-kernel-tune.service")
    assert (image / "usr/bin/azagent").is_file()
    [package] = list(image.glob("usr/lib/python3*/site-packages/azagent/__init__.py"))

    # The installed stage runs from the installed package.
    target = tmp_path / "target"
    timeout = add_scsi_disk(target, "sda", "Msft", "Virtual Disk", "30")
    env = dict(os.environ, PYTHONPATH=str(package.parent.parent), PYTHONNOUSERSITE="1")
    env.pop("JOURNAL_STREAM", None)
    which = subprocess.run(
        [sys.executable, "-c", "import azagent; print(azagent.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert which.stdout.strip() == str(package)
    run = subprocess.run(
        [str(stage), "--root", str(target)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert timeout.read_text() == "300\n"


def test_reinstall_keeps_the_image_builders_mask(tmp_path: Path) -> None:
    image = tmp_path / "image"
    (image / "etc/systemd/system").mkdir(parents=True)
    os.symlink("/dev/null", image / "etc/systemd/system/azure-kernel-tune.service")
    done = install(image)
    assert done.returncode == 0, done.stderr
    assert os.readlink(image / "etc/systemd/system/azure-kernel-tune.service") == "/dev/null"
    assert not (
        image / "etc/systemd/system/sysinit.target.wants/azure-kernel-tune.service"
    ).exists()
