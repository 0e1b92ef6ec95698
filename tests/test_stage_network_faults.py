"""Stages that talk to the platform, against an emulator whose answers break mid-body.

A body that stalls after its first half, and a connection reset after it,
must each end the stage with exit 1 and a reason naming the request and the
problem (never a traceback, never exit 3), within Endpoint.RetryDeadline:
each exchange is bounded by Endpoint.RequestTimeout, body included, and the
retries by the deadline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from azfabric.scenario import Fault, PublicKey, Scenario
from azfabric.server import Fabric
from provisioning_env import Vm, make_vm

REQUEST_TIMEOUT = 1
RETRY_DEADLINE = 3
# Interpreter start-up and imports on a loaded two-core machine, on top of the deadline.
SLACK = 4.0

REASONS = {
    "stall": "the body did not arrive within the deadline",
    "reset": "the connection was reset",
}


def broken(kind: str, endpoint: str, path: str, **fields: object) -> Scenario:
    fault = Fault(endpoint=endpoint, kind=kind, path=path, seconds=60, count=1000)
    return Scenario(faults=[fault], **fields)  # type: ignore[arg-type]


def tighten(vm: Vm) -> None:
    vm.configure(
        f"Endpoint.RequestTimeout={REQUEST_TIMEOUT}", f"Endpoint.RetryDeadline={RETRY_DEADLINE}"
    )


def fails_in_time(vm: Vm, stage: str, kind: str) -> str:
    start = time.monotonic()
    run = vm.run(stage)
    took = time.monotonic() - start
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert took < RETRY_DEADLINE + SLACK
    reason = str(vm.result(stage)["reason"])
    assert REASONS[kind] in reason
    assert "gave up after" in reason
    return reason


@pytest.mark.parametrize("kind", ["stall", "reset"])
def test_report_ready(root: Path, kind: str) -> None:
    scenario = broken(kind, "wireserver", "comp=goalstate")
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        tighten(vm)
        assert vm.run("mount-ovf").returncode == 0
        reason = fails_in_time(vm, "report-ready", kind)
        assert "/machine/?comp=goalstate" in reason
        assert fabric.health_reports == []
        assert not (root / "var/lib/waagent/provisioned").exists()


def test_report_ready_recovers_from_one_reset(root: Path) -> None:
    scenario = Scenario(faults=[Fault(endpoint="wireserver", kind="reset", path="comp=goalstate")])
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        tighten(vm)
        assert vm.run("mount-ovf").returncode == 0
        run = vm.run("report-ready")
        assert run.returncode == 0, run.stderr
        assert [r.state for r in fabric.health_reports] == ["Ready"]
        assert "the connection was reset" in run.stderr  # the retry says why


def add_user(root: Path, name: str = "azureuser", uid: int = 1000) -> None:
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\n{name}:x:{uid}:{uid}::/home/{name}:/bin/sh\n"
    )
    (etc / "group").write_text(f"root:x:0:\n{name}:x:{uid}:\n")
    home = root / "home" / name
    home.mkdir(parents=True)
    os.chown(home, uid, uid)


@pytest.mark.parametrize("kind", ["stall", "reset"])
def test_certificates(root: Path, kind: str) -> None:
    key = PublicKey(path="/home/azureuser/.ssh/authorized_keys", fingerprint="generate")
    scenario = broken(kind, "wireserver", "comp=certificates", public_keys=[key])
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        add_user(root)
        tighten(vm)
        assert vm.run("mount-ovf").returncode == 0
        reason = fails_in_time(vm, "certificates", kind)
        assert "comp=certificates" in reason
        assert not list((root / "var/lib/waagent").glob("*.crt"))


def mask(vm: Vm, *stages: str) -> None:
    units = vm.root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        (units / f"azure-{stage}.service").symlink_to("/dev/null")


@pytest.mark.parametrize("kind", ["stall", "reset"])
def test_imds(root: Path, kind: str) -> None:
    scenario = broken(kind, "imds", "/metadata/instance")
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric, with_media=False)
        mask(vm, "hostname", "create-user", "ssh-keys")
        tighten(vm)
        assert vm.run("mount-ovf").returncode == 0
        reason = fails_in_time(vm, "imds", kind)
        assert reason.startswith("IMDS: GET ")
        assert "/metadata/instance?api-version=" in reason
        assert vm.state() is None
        assert all(r.header("x-ms-version") is None for r in fabric.requests)
