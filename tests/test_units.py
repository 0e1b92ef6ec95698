"""Unit files: systemd accepts them, and every stage has exactly one."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import types
from pathlib import Path

import pytest
from conftest import REPO, STAGES, load_stage

from azagent import catalog, config, system

UNITS = REPO / "units"


def unit_files() -> list[Path]:
    return sorted(
        p for p in UNITS.iterdir() if p.suffix in (".service", ".target", ".path", ".slice")
    )


GATE = UNITS / "azure-.service.d/10-azure-only.conf"


def parse(unit: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    return parser


def test_catalog_stages_units_and_executables_match() -> None:
    executables = sorted(p.name for p in STAGES.iterdir() if p.is_file())
    assert executables == sorted(stage.name for stage in catalog.STAGES + catalog.SERVICES)
    services = sorted(p.name for p in UNITS.glob("azure-*.service"))
    for stage in catalog.STAGES + catalog.SERVICES:
        assert stage.unit in services
        assert (STAGES / stage.name).stat().st_mode & 0o111, f"{stage.name} is not executable"


@pytest.mark.parametrize("unit", unit_files(), ids=lambda p: p.name)
def test_stage_units_follow_the_conventions(unit: Path) -> None:
    parsed = parse(unit)
    assert unit.name.startswith("azure-")
    assert parsed.get("Unit", "Description")
    assert parsed.get("Unit", "Documentation")
    assert unit.read_text().startswith("#"), "a header comment says why it is ordered so"
    if unit.name in {service.unit for service in catalog.SERVICES}:
        # A long-running service: systemd hears from it (READY, the watchdog).
        assert parsed.get("Service", "Type") == "notify"
        assert parsed.get("Service", "WatchdogSec")
        assert parsed.get("Service", "ProtectSystem") == "strict"
    elif unit.suffix == ".service":
        assert parsed.get("Service", "Type") == "oneshot"
        assert parsed.get("Service", "ExecStart").startswith("/usr/libexec/azagent/")
        # report-failure may be started again by a later failure, and so on;
        # the others
        # stay "active" so that `systemctl status 'azure-*'` shows what ran.
        # and a service a .path unit starts must become inactive again, or
        # the path unit could start it only once.
        if unit.name != "azure-report-failure.service" and not unit.with_suffix(".path").exists():
            assert parsed.get("Service", "RemainAfterExit") == "yes"
        # custom-data runs the VM owner's script and scvmm the VMM installer,
        # which install packages.
        if unit.name not in ("azure-custom-data.service", "azure-scvmm.service"):
            assert parsed.get("Service", "ProtectSystem") == "strict"
        if parsed.get("Unit", "DefaultDependencies", fallback="yes") == "no":
            assert "shutdown.target" in parsed.get("Unit", "Conflicts")
            assert "shutdown.target" in parsed.get("Unit", "Before")


def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    """systemd-analyze verify exits 0 on many problems, so any output is a failure.

    ExecStart= points at the installed location; the copies checked here point
    at this checkout's stages/ so verify can see the executables.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: tools/bootstrap installs it")
    copies = []
    for unit in unit_files():
        text = unit.read_text().replace("/usr/libexec/azagent/", f"{STAGES}/")
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(str(copy))
    # The gate drop-in applies to every azure-*.service: check its lines too.
    gate = [line for line in GATE.read_text().splitlines() if line.startswith("Condition")]
    gated = tmp_path / "azure-gate-check.service"
    gated.write_text(
        "[Unit]\nDescription=gate check\nDocumentation=file:/dev/null\n"
        + "\n".join(gate)
        + f"\n[Service]\nType=oneshot\nExecStart={STAGES}/kernel-tune\n"
    )
    copies.append(str(gated))
    done = subprocess.run(
        [analyze, "verify", *copies], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_gate_keeps_stages_off_other_machines() -> None:
    """On this machine (no Azure asset tag, no override) the gate's conditions fail."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    gate = [line for line in GATE.read_text().splitlines() if line.startswith("Condition")]
    assert any("7783-7084-3265-9085-8269-3286-77" in line for line in gate)
    assert "ConditionKernelCommandLine=|azagent.force" in gate
    if Path("/etc/azagent/force").exists():
        pytest.skip("this machine has the override")
    done = subprocess.run(
        [analyze, "condition", *gate], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0, done.stdout + done.stderr


def test_sandbox_exposure_at_most_5(tmp_path: Path) -> None:
    """`systemd-analyze security` exposure <= 5.0, except custom-data and scvmm (they run
    the VM owner's script and the VMM installer)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    system = tmp_path / "usr/lib/systemd/system"
    system.mkdir(parents=True)
    services = [u for u in unit_files() if u.suffix == ".service"]
    for unit in services:
        (system / unit.name).write_text(unit.read_text())
    for unit in services:
        if unit.name in ("azure-custom-data.service", "azure-scvmm.service"):
            continue
        done = subprocess.run(
            [analyze, "security", "--offline=true", f"--root={tmp_path}", unit.name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        last = done.stdout.strip().splitlines()[-1]
        exposure = float(last.split(":")[-1].split()[0])
        assert exposure <= 5.0, f"{unit.name}: {last}"


# -- the network stages end before systemd's limit ------------------------------------

# The stages that talk to the platform: each keeps to Endpoint.RetryDeadline by itself.
PLATFORM_STAGES = ("certificates", "imds", "report-failure", "report-ready")
# What a stage's start and local work (the interpreter, a transport key, a
# few files) may take on a slow first boot, on top of its network bound.
START = 30.0


def stage_module(name: str) -> types.ModuleType:
    return load_stage(name)


def worst_case(stage: str) -> float:
    """How long ``stage`` may run with the default configuration, by its own limits."""
    defaults = config.defaults()
    retry = float(defaults.get_int("Endpoint.RetryDeadline") or 0)
    # One WireClient per run: every request, retries and back-off included,
    # ends by the retry deadline, whatever Endpoint.RequestTimeout is.
    assert 0 < (defaults.get_int("Endpoint.RequestTimeout") or 0) <= retry
    if stage == "imds":
        imds = stage_module("imds")
        return retry + len(imds.DEPENDENT) * float(imds.DEPENDENT_TIMEOUT)
    if stage == "network":
        return 2 * system.DEFAULT_TIMEOUT  # ip route add; systemctl --no-block try-restart
    assert stage in PLATFORM_STAGES
    return retry


def timespan(text: str) -> float:
    """A systemd time span ("6min", "1h 30s", "90") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    parts = re.findall(r"(\d+)\s*([a-z]*)", text)
    assert parts, text
    assert "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", "")
    return sum(int(number) * units[unit] for number, unit in parts)


def test_the_platform_stages_are_the_ones_that_talk_to_it() -> None:
    for stage in catalog.STAGES:
        text = (STAGES / stage.name).read_text()
        talks = any(use in text for use in ("WireClient", "imds.fetch(", "report_failure("))
        assert talks == (stage.name in PLATFORM_STAGES), stage.name


@pytest.mark.parametrize("stage", [*PLATFORM_STAGES, "network"])
def test_systemd_stops_a_network_stage_only_after_the_stage_would(stage: str) -> None:
    """TimeoutStartSec= is the backstop: the stage ends first, with a reason recorded."""
    value = parse(UNITS / f"azure-{stage}.service").get("Service", "TimeoutStartSec", fallback=None)
    assert value is not None, f"azure-{stage}.service has no TimeoutStartSec="
    assert timespan(value) > worst_case(stage) + START
    # A backstop, not a second infinity: at most a few minutes more.
    assert timespan(value) <= worst_case(stage) + START + 300


def test_systemd_reads_the_timeouts_as_written() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    for stage in (*PLATFORM_STAGES, "network"):
        value = parse(UNITS / f"azure-{stage}.service").get("Service", "TimeoutStartSec")
        done = subprocess.run(
            [analyze, "timespan", value], capture_output=True, text=True, timeout=60, check=True
        )
        micro = re.search(r"μs:\s*(\d+)", done.stdout)
        assert micro is not None, done.stdout
        assert int(micro.group(1)) == timespan(value) * 1_000_000


def ordering_graph() -> dict[str, set[str]]:
    """unit -> the units it starts after, from After= and the other units' Before=."""
    after: dict[str, set[str]] = {}
    for path in sorted(UNITS.glob("azure-*")):
        if path.suffix not in (".service", ".target", ".path"):
            continue
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "After":
                after.setdefault(path.name, set()).update(value.split())
            elif key == "Before":
                for other in value.split():
                    after.setdefault(other, set()).add(path.name)
    return after


def waits_for(graph: dict[str, set[str]], unit: str, target: str) -> list[str]:
    """A chain of After= from ``unit`` to ``target``, or [] when it does not wait for it."""
    seen = {unit}
    paths = [[unit]]
    while paths:
        path = paths.pop()
        for before in sorted(graph.get(path[-1], ())):
            if before == target:
                return [*path, before]
            if before not in seen:
                seen.add(before)
                paths.append([*path, before])
    return []


@pytest.mark.parametrize(
    "unit",
    [
        "azure-mount-ovf.service",
        "azure-hostname.service",
        "azure-create-user.service",
        "azure-ssh-keys.service",
        "azure-custom-data.service",  # saving; running it is ordered by the generator
        "azure-kernel-tune.service",
    ],
)
def test_what_needs_no_network_never_waits_for_it(unit: str) -> None:
    """A job ordered after the network holds up whatever is after it, even when its own
    condition then skips it: so no such unit may sit on these units' path."""
    graph = ordering_graph()
    for target in ("network-online.target", "network.target", "azure-network.service"):
        assert waits_for(graph, unit, target) == [], f"{unit} waits for {target}"
