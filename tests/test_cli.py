"""The azagent command: run, status, version, help and the waagent spellings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO, add_scsi_disk, run_cli

from azagent import __version__
from azagent.cli import translate_waagent_args


def test_version_both_spellings() -> None:
    for spelling in ("version", "-version"):
        result = run_cli(spelling)
        assert result.returncode == 0
        assert result.stdout.startswith(f"azagent {__version__}\n")


def test_help_both_spellings_lists_commands() -> None:
    for spelling in ("help", "-help"):
        result = run_cli(spelling)
        assert result.returncode == 0
        for command in ("run", "status", "show-configuration", "version"):
            assert command in result.stdout


def test_no_command_is_a_usage_error() -> None:
    assert run_cli().returncode == 2
    assert run_cli("frobnicate").returncode == 2


@pytest.mark.parametrize(
    ("spelling", "words"),
    [
        (["-daemon"], "no resident daemon"),
        (["-start"], "no resident daemon"),
    ],
)
def test_features_not_landed_say_so_and_fail(spelling: list[str], words: str) -> None:
    result = run_cli(*spelling)
    assert result.returncode == 1
    assert words in result.stderr


def test_translation_of_waagent_arguments() -> None:
    assert translate_waagent_args(["-deprovision+user", "-force"]) == [
        "deprovision",
        "--user",
        "--force",
    ]
    assert translate_waagent_args(["-verbose", "-version"]) == ["version", "--verbose"]
    assert translate_waagent_args(["status", "--root", "/x"]) == ["status", "--root", "/x"]


def test_run_executes_the_stage_with_its_options(root: Path) -> None:
    timeout = add_scsi_disk(root, "sda", "Msft", "Virtual Disk", "30")
    dry = run_cli("run", "kernel-tune", "--root", str(root), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "set the SCSI timeout of sda from 30 s to 300 s" in dry.stdout
    assert timeout.read_text() == "30\n"
    real = run_cli("run", "kernel-tune", "--root", str(root))
    assert real.returncode == 0, real.stderr
    assert timeout.read_text() == "300\n"


def test_run_unknown_stage_is_a_usage_error() -> None:
    result = run_cli("run", "no-such-stage")
    assert result.returncode == 2
    assert "unknown stage 'no-such-stage'" in result.stderr
    assert "kernel-tune" in result.stderr


def test_status_table_and_json(root: Path) -> None:
    before = run_cli("status", "--root", str(root), "--json")
    assert before.returncode == 0
    [row] = [r for r in json.loads(before.stdout) if r["stage"] == "kernel-tune"]
    assert row["result"] == "never-ran"

    add_scsi_disk(root, "sda", "Msft", "Virtual Disk", "30")
    assert run_cli("run", "kernel-tune", "--root", str(root)).returncode == 0
    table = run_cli("status", "--root", str(root))
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["STAGE", "UNIT", "RESULT", "DURATION", "ENDED", "REASON"]
    [line] = [r for r in rows if r.startswith("kernel-tune")]
    assert " done " in line

    (root / "etc").mkdir()
    (root / "etc/waagent.conf").write_text("OS.RootDeviceScsiTimeout=soon\n")
    assert run_cli("run", "kernel-tune", "--root", str(root)).returncode == 1
    failed = run_cli("status", "--root", str(root))
    assert failed.returncode == 1
    assert "failed" in failed.stdout
    assert "OS.RootDeviceScsiTimeout='soon'" in failed.stdout


def test_status_shows_unit_enablement_and_masking(root: Path) -> None:
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "azure-kernel-tune.service").write_bytes(
        (REPO / "units/azure-kernel-tune.service").read_bytes()
    )

    def state() -> str:
        rows = json.loads(run_cli("status", "--root", str(root), "--json").stdout)
        return str(next(r["unit"] for r in rows if r["stage"] == "kernel-tune"))

    assert state() == "disabled"
    (root / "etc/systemd/system").mkdir(parents=True)
    os.symlink("/dev/null", root / "etc/systemd/system/azure-kernel-tune.service")
    assert state() == "masked"


def test_status_names_a_stage_systemd_skipped_on_a_condition(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage skipped by its unit's condition left no result: status says why, not never-ran."""
    from azagent import cli

    show = (
        "Id=azure-certificates.service\\nConditionResult=no\\nConditionTimestampMonotonic=9000000\\n\\n"
        "Id=azure-custom-data.service\\nConditionResult=no\\nConditionTimestampMonotonic=0\\n\\n"
        "Id=azure-hostname.service\\nConditionResult=yes\\nConditionTimestampMonotonic=8000000\\n"
    )
    fake = tmp_path / "bin/systemctl"
    fake.parent.mkdir()
    fake.write_text(
        f"#!/bin/sh\ncase \"$1\" in show) printf '{show}' ;; is-enabled) echo enabled ;; esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    rows = {row["stage"]: row for row in cli.status_rows(root, live=True)}
    assert rows["certificates"]["result"] == "condition-failed"
    assert "systemctl status azure-certificates.service" in rows["certificates"]["reason"]
    assert rows["custom-data"]["result"] == "never-ran"  # its condition was never checked
    assert rows["hostname"]["result"] == "never-ran"
    # Under --root (an image) systemd is not asked.
    rows = {row["stage"]: row for row in cli.status_rows(root, live=False)}
    assert rows["certificates"]["result"] == "never-ran"
