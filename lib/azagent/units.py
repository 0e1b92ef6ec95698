"""The stages as installed: where each executable is, and what systemd says of its unit.

Used by the ``azagent`` command (run, status) and by the imds stage, which
runs hostname, create-user and ssh-keys again unless their units are masked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

STAGE_DIRS_ENV = "AZAGENT_STAGES_DIR"
INSTALLED_STAGES_DIR = "/usr/libexec/azagent"


def find_stage(name: str) -> Optional[Path]:
    """The executable of stage ``name``: installed, or in this source checkout."""
    candidates = []
    if os.environ.get(STAGE_DIRS_ENV):
        candidates.append(Path(os.environ[STAGE_DIRS_ENV]))
    candidates += [
        Path(INSTALLED_STAGES_DIR),
        Path(sys.prefix) / "libexec/azagent",
        Path(__file__).resolve().parents[2] / "stages",
    ]
    for directory in candidates:
        path = directory / name
        if path.is_file():
            return path
    return None


def unit_state(root: Path, unit: str) -> str:
    """What ``systemctl is-enabled`` says of ``unit`` (enabled, masked, ...)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return "unknown"
    command = [systemctl]
    if root != Path("/"):
        command.append(f"--root={root}")
    command += ["is-enabled", unit]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    state = done.stdout.strip().splitlines()
    if state:
        return state[0]
    return "not-found" if "No such file" in done.stderr else "unknown"


def skipped_on_condition(units: list[str]) -> set[str]:
    """The units systemd skipped this boot because a start condition failed.

    One ``systemctl show`` for all of them (running system only): a unit whose
    condition was checked (``ConditionTimestampMonotonic`` set) and failed
    (``ConditionResult=no``). A stage skipped that way never ran, so it left no
    result file; ``systemctl status <unit>`` names the condition.
    """
    systemctl = shutil.which("systemctl")
    if systemctl is None or not units:
        return set()
    command = [systemctl, "show", "-p", "Id,ConditionResult,ConditionTimestampMonotonic", *units]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    skipped = set()
    for block in done.stdout.split("\n\n"):
        values = dict(line.partition("=")[::2] for line in block.splitlines())
        checked = values.get("ConditionTimestampMonotonic", "0") not in ("", "0")
        if checked and values.get("ConditionResult") == "no" and values.get("Id") in units:
            skipped.add(values["Id"])
    return skipped
