"""A first boot, simulated: every provisioning stage in the order its unit gives it.

The order comes from the units' own After=/Before= lines (a topological
sort), a masked unit is simply not run (as systemd would not start it), and a
failing stage with OnFailure= starts report-failure, as systemd would. The
stages are the real executables against a temporary Debian-like root and the
emulated fabric on loopback. The VM tests boot the same graph for real.
"""

from __future__ import annotations

import base64
import configparser
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from azfabric.scenario import KeyPair, PublicKey
from azfabric.server import Fabric
from conftest import REPO, Run
from provisioning_env import DVD, Scenario, Vm, make_vm
from test_create_user import debian_root

from azagent import provisioning

UNITS = REPO / "units"
PASSWORD = "Corr3ct-Horse-Battery"  # noqa: S105 - a test password, to hunt for
CUSTOM = "#!/bin/sh\necho customdata-secret-line\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="useradd needs root (chown)")


def unit_order() -> list[str]:
    """Provisioning stages in the order their units impose (After=/Before=)."""
    stages = ["mount-ovf", *[s for s in provisioning.PROVISIONING_STAGES if s != "mount-ovf"]]
    stages += ["certificates", "report-ready"]
    after: dict[str, set[str]] = {s: set() for s in stages}
    for stage in stages:
        parser = configparser.RawConfigParser(strict=False)
        parser.read(UNITS / f"azure-{stage}.service")
        for key, edges in (("After", True), ("Before", False)):
            for word in parser.get("Unit", key, fallback="").split():
                other = word.removeprefix("azure-").removesuffix(".service")
                if other in after and other != stage:
                    if edges:
                        after[stage].add(other)
                    else:
                        after[other].add(stage)
    order: list[str] = []
    while len(order) < len(stages):
        ready = [s for s in stages if s not in order and after[s] <= set(order)]
        assert ready, f"ordering cycle among {set(stages) - set(order)}"
        order.append(ready[0])
    return order


def conditions_hold(root: Path, stage: str) -> bool:
    """The unit's own ConditionPathExists= lines, checked under ``root`` as systemd would."""
    for line in (UNITS / f"azure-{stage}.service").read_text().splitlines():
        if not line.startswith("ConditionPathExists="):
            continue
        path = line.partition("=")[2]
        negated = path.startswith("!")
        if (root / path.lstrip("!/")).exists() == negated:
            return False
    return True


def has_on_failure(stage: str) -> bool:
    parser = configparser.RawConfigParser(strict=False)
    parser.read(UNITS / f"azure-{stage}.service")
    return parser.get("Unit", "OnFailure", fallback="") == "azure-report-failure.service"


@dataclass
class Boot:
    vm: Vm
    runs: dict[str, Run] = field(default_factory=dict)
    failure_reports: int = 0

    def output(self) -> str:
        return "".join(run.stdout + run.stderr for run in self.runs.values())


def boot(vm: Vm, masked: tuple[str, ...] = ()) -> Boot:
    result = Boot(vm)
    for stage in unit_order():
        if stage in masked:
            continue
        if not conditions_hold(vm.root, stage):
            continue  # systemd would skip the unit without starting it
        run = vm.run(stage)
        result.runs[stage] = run
        assert run.returncode in (0, 1), f"{stage}: {run.stderr}"
        if run.returncode != 0 and has_on_failure(stage):
            result.runs[f"report-failure after {stage}"] = vm.run("report-failure")
            result.failure_reports += 1
    return result


@pytest.fixture
def vm(root: Path) -> Iterator[Vm]:
    scenario = Scenario(
        hostname="boot-vm",
        username="alice",
        password=PASSWORD,
        disable_password_auth=False,
        custom_data=CUSTOM,
        public_keys=[PublicKey(path="/home/alice/.ssh/authorized_keys")],
        key_pairs=[KeyPair(path="/home/alice/.ssh/id_rsa")],
    )
    with Fabric(scenario) as fabric:
        debian_root(root)
        (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
        (root / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
        vm = make_vm(root, scenario, fabric)
        vm.configure("Provisioning.DecodeCustomData=y", "Provisioning.RegenerateSshHostKeyPair=y")
        yield vm


def test_unit_order_is_the_documented_graph() -> None:
    order = unit_order()
    assert order[0] == "mount-ovf"
    assert order[-1] == "report-ready"
    assert order.index("create-user") < order.index("ssh-keys") < order.index("certificates")
    # Saving customData waits for mount-ovf alone; running it waits for the rest
    # too, through the generator's drop-in (tests/test_generator.py).
    assert order.index("mount-ovf") < order.index("custom-data") < order.index("report-ready")
    for stage in order:
        if stage != "report-ready":
            assert has_on_failure(stage), stage


def test_first_boot_provisions_everything_and_reports_ready(vm: Vm) -> None:
    result = boot(vm)
    states = {stage: vm.result(stage)["state"] for stage in result.runs}
    assert states == {
        "mount-ovf": "done",
        "hostname": "done",
        "create-user": "done",
        "ssh-keys": "done",
        "certificates": "done",
        "custom-data": "done",
        "report-ready": "done",
    }
    assert [r.state for r in vm.fabric.health_reports] == ["Ready"]
    home = vm.root / "home/alice"
    assert (home / ".ssh/authorized_keys").read_text().startswith("ssh-ed25519 ")
    assert (home / ".ssh/id_rsa").stat().st_mode & 0o777 == 0o600
    assert (vm.root / "etc/hostname").read_text() == "boot-vm\n"
    assert "alice ALL=(ALL) ALL" in (vm.root / "etc/sudoers.d/waagent").read_text()
    assert (vm.root / "var/lib/waagent/CustomData").read_text() == CUSTOM

    # The second boot of the same VM provisions nothing and reports nothing.
    for stage_result in (vm.root / "run/azagent").iterdir():
        if stage_result.is_file():
            stage_result.unlink()
    for stage_result in (vm.root / "run/azagent/stages").iterdir():
        stage_result.unlink()
    second = boot(vm)
    # Without provisioning data their units' conditions fail: no process at all.
    assert {stage: vm.result(stage)["state"] for stage in second.runs} == {
        "mount-ovf": "skipped",
        "hostname": "done",  # records, in /run, the name this boot's DHCP carries
        "report-ready": "skipped",
    }
    for stage in ("create-user", "ssh-keys", "certificates", "custom-data"):
        assert not (vm.root / f"run/azagent/stages/{stage}.json").exists()
    assert len(vm.fabric.health_reports) == 1


def secrets(vm: Vm) -> dict[str, str]:
    state = (vm.root / "run/azagent/provisioning.json").read_text()
    import json

    password_hash = json.loads(state)["password_hash"]
    key_pem = next(c.key_pem for c in vm.scenario.certificates if c.with_key)
    assert key_pem is not None
    key_line = key_pem.splitlines()[1]
    return {
        "password": PASSWORD,
        "hash": password_hash,
        "customData": "customdata-secret-line",
        "customData (base64)": base64.b64encode(CUSTOM.encode()).decode()[:24],
        "private key": key_line,
    }


def test_no_secret_outside_root_only_files(vm: Vm) -> None:
    result = boot(vm)
    assert [r.state for r in vm.fabric.health_reports] == ["Ready"]
    found = secrets(vm)
    output = result.output()
    for name, value in found.items():
        assert value not in output, f"{name} in a stage's output"
    # /etc/shadow holds the hash by design (root and group shadow); the DVD
    # is the platform's input, not something a stage wrote.
    shadow_files = {vm.root / "etc/shadow", vm.root / "etc/shadow-"}
    for path in vm.root.rglob("*"):
        if not path.is_file() or path.is_symlink() or path in shadow_files:
            continue
        if vm.root / DVD in path.parents:
            continue
        if path.stat().st_mode & 0o077 == 0:
            continue  # only its owner may read it
        text = path.read_bytes().decode("utf-8", "replace")
        for name, value in found.items():
            assert value not in text, (
                f"{name} in {path.relative_to(vm.root)} ({oct(path.stat().st_mode)})"
            )
    # The request log's printable form hides them too.
    for request in vm.fabric.requests:
        printed = str(request.printable())
        for name, value in found.items():
            assert value not in printed, f"{name} in the emulator's request log"


MASKABLE = ("mount-ovf", "hostname", "create-user", "ssh-keys", "certificates", "custom-data")


@pytest.mark.parametrize("masked", MASKABLE)
def test_masking_one_stage_still_completes_and_reports(vm: Vm, masked: str) -> None:
    result = boot(vm, masked=(masked,))
    assert masked not in result.runs
    ran = [s for s in result.runs if not s.startswith("report-failure")]
    failed = {s: vm.result(s)["reason"] for s in ran if vm.result(s)["state"] == "failed"}
    assert failed == {}
    if masked == "create-user":
        # Users are managed some other way: that user's keys are left out, said so.
        assert "create-user did not run this boot" in result.runs["ssh-keys"].stderr
    assert [r.state for r in vm.fabric.health_reports] == ["Ready"]


def test_masking_all_but_report_ready_reports_ready(vm: Vm) -> None:
    result = boot(vm, masked=MASKABLE)
    assert list(result.runs) == ["report-ready"]
    assert [r.state for r in vm.fabric.health_reports] == ["Ready"]


def test_masking_report_ready_reports_nothing(vm: Vm) -> None:
    boot(vm, masked=("report-ready",))
    assert vm.fabric.health_reports == []


def test_a_failing_stage_is_reported_at_once_with_its_reason(root: Path) -> None:
    scenario = Scenario(username="-rf")
    with Fabric(scenario) as fabric:
        debian_root(root)
        vm = make_vm(root, scenario, fabric)
        result = boot(vm)
        assert result.failure_reports >= 1
        first: Optional[str] = vm.fabric.health_reports[0].description
        assert vm.fabric.health_reports[0].substatus == "ProvisioningFailed"
        assert first is not None
        assert first.startswith("mount-ovf: ") or first.startswith("create-user: ")
        assert "UserName" in first
        assert {r.state for r in vm.fabric.health_reports} == {"NotReady"}
        assert not (root / "var/lib/waagent/provisioned").exists()
