"""Start-up budget: a stage imports no standard-library module it does not need.

Every stage is a fresh interpreter at boot, and under emulation (TCG) each
module imported costs real time. Some modules cost far more than their use
is worth: ``dataclasses`` brings ``inspect``, ``ast``, ``dis`` and
``tokenize``; ``typing`` is only for the type checker; ``ipaddress`` and
``textwrap`` are needed by few runs, if any. A stage's dry run against an
empty root imports none of them.

What the standard library itself imports for modules a stage cannot do
without is not the stage's doing: ``urllib.parse`` imports ``ipaddress``
(and ``pathlib`` imports ``urllib.parse`` on Python 3.11 and 3.12);
``logging`` imports ``traceback``, which imports ``textwrap``, for as long
as azagent logs through it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from conftest import STAGES, imported_modules

# What no stage's dry run may import.
FORBIDDEN = frozenset({"dataclasses", "inspect", "typing", "ast", "ipaddress", "textwrap"})

# The extension handler is a long-running service, not a boot stage.
NOT_CHECKED = frozenset({"extensions"})

# Modules a stage may need, whose own imports are then not the stage's doing.
NEEDED = ("pathlib", "urllib.parse", "logging")


@functools.cache
def imported_by(module: str) -> frozenset[str]:
    """What ``import <module>`` imports in a bare interpreter (itself included)."""
    return frozenset(imported_modules(["-c", f"import {module}"]))


def not_the_stages_doing(modules: set[str]) -> set[str]:
    """What the modules of NEEDED that the stage imported imported themselves."""
    allowed: set[str] = set()
    for module in NEEDED:
        name = module.split(".")[0]
        if name in modules:
            allowed |= imported_by(module) - {name}
    return allowed


@pytest.mark.parametrize(
    "stage", sorted(p.name for p in STAGES.iterdir() if p.name not in NOT_CHECKED)
)
def test_a_dry_run_imports_no_module_it_does_not_need(stage: str, root: Path) -> None:
    modules = imported_modules([str(STAGES / stage), "--root", str(root), "--dry-run"])
    assert "azagent" in modules  # the measurement works
    found = (modules & FORBIDDEN) - not_the_stages_doing(modules)
    assert not found, f"{stage} --dry-run imports {sorted(found)}"
