"""A temporary root that looks like a freshly booted Azure VM, plus the fabric emulator.

Tests of the provisioning stages build one of these: the emulator on
loopback serves the platform, the root holds the provisioning media where
``DVD.MountPoint`` points (media mounted by someone else is read in place),
the SMBIOS VM id, and a waagent.conf whose endpoints are the emulator's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from conftest import REPO, Run, run_stage

sys.path.insert(0, str(REPO / "tools"))
from azfabric import media
from azfabric.scenario import Scenario, materialize
from azfabric.server import Fabric

DVD = "mnt/cdrom/secure"


@dataclass
class Vm:
    root: Path
    fabric: Fabric
    scenario: Scenario

    def run(self, stage: str, *args: str) -> Run:
        return run_stage(stage, "--root", str(self.root), *args, env={"AZAGENT_LOCK_TIMEOUT": "5"})

    def result(self, stage: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.root / f"run/azagent/stages/{stage}.json").read_text()
        )
        return data

    def configure(self, *lines: str) -> None:
        dropins = self.root / "etc/waagent.conf.d"
        dropins.mkdir(parents=True, exist_ok=True)
        (dropins / "90-test.conf").write_text("\n".join(lines) + "\n")

    def state(self) -> Optional[dict[str, Any]]:
        path = self.root / "run/azagent/provisioning.json"
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data


def make_vm(root: Path, scenario: Scenario, fabric: Fabric, *, with_media: bool = True) -> Vm:
    materialize(scenario)
    dmi = root / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text((scenario.vm_id or "").upper() + "\n")
    if with_media:
        (root / DVD).mkdir(parents=True)
        (root / DVD / "ovf-env.xml").write_bytes(media.ovf_env(scenario))
    (root / "etc").mkdir(exist_ok=True)
    urls = fabric.urls
    (root / "etc/waagent.conf").write_text(
        f"Endpoint.WireServer={urls['wireserver']}\n"
        f"Endpoint.HostGAPlugin={urls['hostgaplugin']}\n"
        f"Endpoint.IMDS={urls['imds']}\n"
        "Endpoint.RequestTimeout=5\n"
        "Endpoint.RetryDeadline=20\n"
    )
    return Vm(root, fabric, scenario)
