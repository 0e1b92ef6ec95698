"""lib/azagent/ntfs.py, the NTFS reader, against volumes that ntfs-3g wrote (mkntfs, ntfscp).

Only image files under the test's temporary directory are read and written.
How the resource-disk stage acts on what the reader finds is in
test_resource_disk.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from azagent import ntfs

MIB = 1024 * 1024
TOOLS = ("mkntfs", "ntfscp", "ntfsls")


@pytest.fixture(autouse=True)
def _tools() -> None:
    """Missing tools fail the tests (never skip them): tools/bootstrap installs ntfs-3g."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [tool for tool in TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: install ntfs-3g")


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


def ntfsls_names(volume: Path) -> set[str]:
    listing = sh("ntfsls", "-a", "-f", str(volume))
    return {
        line.strip() for line in listing.splitlines() if line.strip() and not line.startswith("$")
    }


@pytest.mark.parametrize("cluster", [512, 4096, 65536])
def test_ntfs_reader_agrees_with_ntfsls(tmp_path: Path, cluster: int) -> None:
    volume = tmp_path / "v.img"
    with open(volume, "wb") as f:
        f.truncate(96 * MIB)
    subprocess.run(
        ["mkntfs", "-q", "-F", "-f", "-c", str(cluster), str(volume)],
        capture_output=True,
        check=True,
    )
    source = tmp_path / "s"
    source.write_bytes(b"x" * 5000)
    names = ["DATALOSS_WARNING_README.txt"] + [f"file {i}.dat" for i in range(80)]
    for name in names:
        sh("ntfscp", "-f", str(volume), str(source), name)
    with open(volume, "rb") as f:
        foreign = ntfs.ntfs_foreign_files(f, 0, volume.stat().st_size)
    assert {p.lstrip("/") for p in foreign} == ntfsls_names(volume) - {
        "DATALOSS_WARNING_README.txt"
    }
    assert len(foreign) == 80


def test_ntfs_reader_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    volume = tmp_path / "v.img"
    with open(volume, "wb") as f:
        f.truncate(16 * MIB)
    with (
        open(volume, "rb") as f,
        pytest.raises(ntfs.NtfsError, match="no NTFS boot sector"),
    ):
        ntfs.ntfs_foreign_files(f, 0, 16 * MIB)
    subprocess.run(["mkntfs", "-q", "-F", "-f", str(volume)], capture_output=True, check=True)
    boot = volume.read_bytes()[:512]
    mft = int.from_bytes(boot[0x30:0x38], "little") * 4096
    with open(volume, "r+b") as f:  # tear the $MFT record: its update sequence no longer matches
        f.seek(mft + 510)
        f.write(b"\xde\xad")
    with open(volume, "rb") as f, pytest.raises(ntfs.NtfsError, match="torn"):
        ntfs.ntfs_foreign_files(f, 0, 16 * MIB)
