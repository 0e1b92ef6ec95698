"""Shared test helpers: run stages as real processes against temporary roots."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = REPO / "stages"
# The fabric emulator (tools/azfabric) is importable by every test.
if str(REPO / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tools"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_stage(name: str, *args: str, env: dict[str, str] | None = None) -> Run:
    """Run stages/<name> as boot would, with this interpreter, never under systemd."""
    environment = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, str(STAGES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def run_cli(*args: str) -> Run:
    environment = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    done = subprocess.run(
        [sys.executable, "-m", "azagent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """Every path under root with its mode, owner, group and content (or link target)."""
    state: dict[str, tuple[int, int, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = ""
        state[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, content)
    return state


def add_scsi_disk(root: Path, name: str, vendor: str, model: str, timeout: str = "30") -> Path:
    """A fake /sys/block/<name>/device with the attributes kernel-tune reads."""
    device = root / "sys/block" / name / "device"
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor.ljust(8) + "\n")
    (device / "model").write_text(model.ljust(16) + "\n")
    (device / "timeout").write_text(timeout + "\n")
    return device / "timeout"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty target system root."""
    path = tmp_path / "root"
    path.mkdir()
    return path
