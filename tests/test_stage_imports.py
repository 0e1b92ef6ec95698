"""Start-up budget: a stage imports no standard-library module it does not need.

Every stage is a fresh interpreter at boot, and under emulation (TCG) each
module imported costs real time. Some modules cost far more than their use
is worth: ``dataclasses`` brings ``inspect``, ``ast``, ``dis`` and
``tokenize``; ``typing`` is only for the type checker; ``ipaddress`` and
``textwrap`` are needed by few runs, if any; ``logging`` (with ``traceback``,
``string``, ``threading``) is replaced by azagent's own small log
(azagent.journal). A stage's dry run against an empty root imports none of them.

What the standard library itself imports for modules a stage cannot do
without is not the stage's doing: ``urllib.parse`` imports ``ipaddress``
(and ``pathlib`` imports ``urllib.parse`` on Python 3.11 and 3.12).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from conftest import STAGES, imported_modules

# What no stage's dry run may import.
FORBIDDEN = frozenset(
    {"dataclasses", "inspect", "typing", "ast", "ipaddress", "textwrap", "logging", "traceback"}
)

# The extension handler is a long-running service, not a boot stage.
NOT_CHECKED = frozenset({"extensions"})

# Modules a stage may need, whose own imports are then not the stage's doing.
NEEDED = ("pathlib", "urllib.parse")


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


def test_mount_ovf_reading_real_media_imports_only_what_xmltodict_brings(root: Path) -> None:
    """A real run reads more than a dry run: the OVF, the password hash, the flags.
    xmltodict's own imports (inspect, urllib.request via xml.sax.saxutils) are the
    library's; nothing else forbidden may come in."""
    from azfabric.scenario import PublicKey
    from azfabric.server import Fabric
    from provisioning_env import Scenario, make_vm

    scenario = Scenario(
        hostname="imports-vm",
        username="alice",
        password="Imp0rts-Passw0rd",  # noqa: S106 - a test VM's password
        custom_data="#!/bin/sh\n",
        public_keys=[PublicKey(path="/home/alice/.ssh/authorized_keys")],
    )
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        modules = imported_modules([str(STAGES / "mount-ovf"), "--root", str(vm.root)])
    assert vm.result("mount-ovf")["state"] == "done"  # the measurement is of a real run
    allowed = not_the_stages_doing(modules) | imported_by("xmltodict")
    found = (modules & FORBIDDEN) - allowed
    assert not found, f"mount-ovf imports {sorted(found)}"
