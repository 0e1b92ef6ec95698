"""Start-up budget: stages that need neither HTTP nor crypto do not import them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import STAGES

HEAVY = ("requests", "cryptography", "urllib3", "xmltodict", "pyudev", "systemd")

# Stages that legitimately talk HTTP or do crypto go here as they land.
NEEDS_HTTP_OR_CRYPTO: set[str] = set()


def imported_modules(command: list[str]) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    modules = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert done.returncode == 0, done.stderr
    return modules


@pytest.mark.parametrize("stage", sorted(p.name for p in STAGES.iterdir()))
def test_light_stages_do_not_import_heavy_libraries(stage: str, root: Path) -> None:
    if stage in NEEDS_HTTP_OR_CRYPTO:
        pytest.skip(f"{stage} needs HTTP or crypto")
    modules = imported_modules([str(STAGES / stage), "--root", str(root), "--dry-run"])
    assert "azagent" in modules  # the measurement works
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_cli_status_and_configuration_stay_light(root: Path) -> None:
    for args in (["status", "--root", str(root)], ["show-configuration", "--root", str(root)]):
        modules = imported_modules(["-m", "azagent", *args])
        assert not modules & set(HEAVY), (args, sorted(modules & set(HEAVY)))


def test_logging_to_the_journal_does_not_load_systemd_python(tmp_path: Path, root: Path) -> None:
    """Under systemd (JOURNAL_STREAM names stderr) a stage logs without systemd-python,
    whose libraries cost more than the rest of a stage's start-up under emulation."""
    err = tmp_path / "stderr"
    with open(err, "w+b") as stderr:
        st = os.fstat(stderr.fileno())
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        done = subprocess.run(
            [sys.executable, "-X", "importtime", str(STAGES / "firewall"), "--root", str(root)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            timeout=60,
            check=False,
        )
    text = err.read_text()
    assert done.returncode == 0, text
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in text.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "azagent" in modules
    assert "systemd" not in modules
    assert "skipped: OS.EnableFirewall=n" in text  # logged, through the journal's stream here
