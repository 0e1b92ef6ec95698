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
