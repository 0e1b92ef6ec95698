"""Where a stage's executable is and what systemd says of its unit (azagent.units)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, STAGES

from azagent import units


def test_find_stage_in_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(units.STAGE_DIRS_ENV, raising=False)
    if Path(units.INSTALLED_STAGES_DIR, "kernel-tune").exists():
        pytest.skip("an installed azagent comes first")
    assert units.find_stage("kernel-tune") == STAGES / "kernel-tune"
    assert units.find_stage("no-such-stage") is None


def test_find_stage_prefers_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "kernel-tune").write_text("#!/bin/sh\n")
    monkeypatch.setenv(units.STAGE_DIRS_ENV, str(tmp_path))
    assert units.find_stage("kernel-tune") == tmp_path / "kernel-tune"
    # A name the directory lacks falls back to the others.
    assert units.find_stage("hostname") not in (None, tmp_path / "hostname")


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs systemctl")
def test_unit_state_under_a_root(root: Path) -> None:
    assert units.unit_state(root, "azure-kernel-tune.service") in ("not-found", "unknown")
    directory = root / "usr/lib/systemd/system"
    directory.mkdir(parents=True)
    shutil.copy(REPO / "units/azure-kernel-tune.service", directory)
    assert units.unit_state(root, "azure-kernel-tune.service") == "disabled"
    (root / "etc/systemd/system").mkdir(parents=True)
    os.symlink("/dev/null", root / "etc/systemd/system/azure-kernel-tune.service")
    assert units.unit_state(root, "azure-kernel-tune.service") == "masked"


def test_unit_state_without_systemctl(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(root))
    assert units.unit_state(root, "azure-kernel-tune.service") == "unknown"


def test_no_stage_imports_the_cli() -> None:
    for stage in STAGES.iterdir():
        assert "azagent.cli" not in stage.read_text(), stage.name
