"""tools/package-deb builds the .deb with Debian's tooling (debian/): what it holds,
that it byte-compiles azagent at install and cleans up at removal, lintian."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from conftest import REPO

import azagent

SITE = "usr/lib/python3/dist-packages"
# The dependencies an image builder relies on (the stages' programs and modules).
DEPENDS = (
    "python3 (>= 3.9)",
    "python3-systemd",
    "python3-cryptography",
    "python3-xmltodict",
    "python3-requests",
    "python3-pyudev",
    "passwd",
    "sudo",
    "openssh-client",
    "iproute2",
    "fdisk",
    "mount",
)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    done = subprocess.run(
        [sys.executable, str(REPO / "tools/package-deb"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # tools/azvmtest/image.py reads the path from stdout: one line, nothing else.
    path = Path(done.stdout.strip())
    assert path == out / f"azagent_{azagent.__version__}_all.deb"
    assert path.is_file()
    return path


def contents(deb: Path) -> dict[str, str]:
    """Each file's path in the package (no leading ./) and its mode string."""
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    files = {}
    for line in listing.splitlines():
        fields = line.split()
        if not fields[0].startswith("d"):
            files[fields[5].removeprefix("./")] = fields[0]
    return files


def tools_install_files(tmp_path: Path) -> set[str]:
    """What tools/install installs besides the Python package."""
    image = tmp_path / "image"
    image.mkdir()
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/install"),
            "--root",
            str(image),
            "--no-package",
            "--no-preset",
            "--python",
            "/usr/bin/python3",
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return {str(p.relative_to(image)) for p in image.rglob("*") if not p.is_dir()}


def test_changelog_names_the_version_being_packaged() -> None:
    first = (REPO / "debian/changelog").read_text().splitlines()[0]
    assert re.match(rf"^azagent \({re.escape(azagent.__version__)}\) ", first), first


def test_the_package_holds_what_tools_install_installs_and_azagent(
    deb: Path, tmp_path: Path
) -> None:
    files = contents(deb)
    installed = tools_install_files(tmp_path)
    assert {"usr/libexec/azagent/kernel-tune", "usr/share/doc/azagent/README.md"} <= installed
    modules = {
        f"{SITE}/{p.relative_to(REPO / 'lib')}"
        for p in (REPO / "lib/azagent").rglob("*")
        if p.suffix in (".py", ".typed") and "__pycache__" not in p.parts
    }
    expected = installed | modules | {"usr/bin/azagent"}
    assert expected <= set(files), sorted(expected - set(files))
    # Besides: the dist-info, what Debian Policy asks for and the lintian
    # overrides, nothing else.
    extra = {
        p
        for p in set(files) - expected
        if not p.startswith(f"{SITE}/azagent-{azagent.__version__}.")
    }
    assert extra == {
        "usr/share/doc/azagent/changelog.gz",
        "usr/share/doc/azagent/copyright",
        "usr/share/lintian/overrides/azagent",
        "usr/share/man/man1/azagent.1.gz",
    }
    # No bytecode in the package: the postinst compiles it for the image's python3.
    assert not [p for p in files if p.endswith(".pyc") or "__pycache__" in p]
    assert files["usr/libexec/azagent/kernel-tune"] == "-rwxr-xr-x"
    assert files["usr/bin/azagent"] == "-rwxr-xr-x"
    assert files["usr/lib/systemd/system/azure-kernel-tune.service"] == "-rw-r--r--"


def test_the_package_depends_on_what_the_stages_need(deb: Path) -> None:
    depends = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    listed = {d.strip() for d in depends.split(",")}
    assert set(DEPENDS) <= listed, depends


def run_maintainer_script(
    deb: Path, tmp_path: Path, script: str, *args: str, env: Optional[dict[str, str]] = None
) -> list[str]:
    """Run one of the package's maintainer scripts with systemctl and the Python
    byte-compilers replaced by recorders (nothing on this machine changes);
    returns the commands they were called with."""
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(control)], check=True)
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls"
    for name in ("systemctl", "py3compile", "py3clean", "pypy3compile", "pypy3clean"):
        recorder = fake / name
        recorder.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        recorder.chmod(0o755)
    # DPKG_ROOT (dpkg's own variable for a foreign root): the scripts' files
    # land in a temporary tree, never in this machine's /var or /etc.
    environment = dict(os.environ, PATH=f"{fake}:/usr/bin:/bin", DPKG_ROOT=str(tmp_path / "root"))
    environment.update(env or {})
    subprocess.run(["sh", str(control / script), *args], env=environment, check=True, timeout=60)
    return log.read_text().splitlines() if log.exists() else []


def test_postinst_byte_compiles_azagent(deb: Path, tmp_path: Path) -> None:
    calls = run_maintainer_script(deb, tmp_path, "postinst", "configure")
    assert "py3compile -p azagent" in [c.strip() for c in calls]


def test_postinst_presets_each_unit_once(deb: Path, tmp_path: Path) -> None:
    """A unit is preset when first installed, never again: an administrator's
    `systemctl disable` survives upgrades, and a unit new in an upgrade is preset."""
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "azure-a.service").write_text("")
    (units / "azure-b.target").write_text("")
    environment = {"DPKG_ROOT": str(root)}

    def presets(work: str, *args: str) -> list[str]:
        (tmp_path / work).mkdir()
        calls = run_maintainer_script(deb, tmp_path / work, "postinst", *args, env=environment)
        return sorted(c.split()[-1] for c in calls if " preset " in c)

    assert presets("install", "configure") == ["azure-a.service", "azure-b.target"]
    assert presets("again", "configure", "0.1.0") == []
    (units / "azure-c.service").write_text("")
    assert presets("upgrade", "configure", "0.1.0") == ["azure-c.service"]
    assert (root / "var/lib/azagent/preset-units").read_text().split() == [
        "azure-a.service",
        "azure-b.target",
        "azure-c.service",
    ]
    # Purge forgets them, and drops enable links left dangling.
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "azure-gone.service").symlink_to("/nonexistent/azure-gone.service")
    (tmp_path / "purge").mkdir()
    run_maintainer_script(deb, tmp_path / "purge", "postrm", "purge", env=environment)
    assert not (root / "var/lib/azagent").exists()
    assert not (wants / "azure-gone.service").is_symlink()


def test_prerm_removes_the_bytecode(deb: Path, tmp_path: Path) -> None:
    calls = run_maintainer_script(deb, tmp_path, "prerm", "remove")
    assert "py3clean -p azagent" in [c.strip() for c in calls]


def test_lintian_finds_nothing(deb: Path) -> None:
    # Each remaining tag is overridden, with its reason, in debian/azagent.lintian-overrides.
    # (Not --fail-on info: it also counts what lintian's own screens mask, "M:".)
    done = subprocess.run(
        ["lintian", "--fail-on", "error,warning", "--display-info", str(deb)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [line for line in done.stdout.splitlines() if re.match(r"^[EWI]: ", line)]
