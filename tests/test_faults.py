"""The stages' fault matrix: every fabric call a stage makes, against every way a network breaks.

Calls (each made by a stage, run as a real process under ``--root`` against
the emulator): report-ready's goal state, role properties and Ready health
report; report-failure's goal state and NotReady health report; the
certificates stage's goal state and Certificates document; the imds stage's
``/metadata/instance``: 8 calls, 192 cases. No stage fetches the WireServer
versions, the hosting environment or the shared config: when one does, its
call joins CALLS. The extension handler's calls (HostGAPlugin vmSettings,
status and extensionArtifact, blob downloads and status uploads) have their
matrix in tests/test_ext_faults.py, with the same FAULTS: 8 calls, 192 cases,
all holding like these.

Faults (the emulator's fault kinds, tools/azfabric): HTTP 500, 503, 429 with
Retry-After, 410; a connect timeout (the endpoint stops accepting
connections: a loopback listener with a full backlog); a read timeout (no
answer before the headers); a close before the answer; a reset before the
body and one during it; a truncated body; garbage; a trickle whose every
gap is just under the read timeout.

Each fault is injected twice: once (the first matching request only) and
always. Every case must end within the bound the configuration implies
(Endpoint.RetryDeadline, each exchange bounded by Endpoint.RequestTimeout),
and either succeed after a retry, ending as an unfaulted run does, or exit 1
with a reason (recorded and on stderr; no traceback, never exit 3), leaving
the tree as it was (a KVP record, written before the health report by
design, excepted: it is whole).

The cases run concurrently (they mostly wait on the network), each with its
own emulator and its own copy of a prepared root, each stage a process of
its own forked from one that imported azagent once (tests/stagefork.py); the
tests then check one case each. Persistent faults get a short retry
deadline, single faults one long enough for a connect timeout, the back-off
and the retry. A garbled 200 is no network fault: where the stage reads the
body it fails at once, where it does not (a POST) it succeeds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import pytest
from azfabric import media
from azfabric.scenario import Fault, PublicKey, Scenario, materialize
from azfabric.server import TRICKLE_PIECES, Fabric, Request
from conftest import Run, snapshot
from stagefork import run_stage

from azagent import kvp

REQUEST_TIMEOUT = 1
# Persistent faults: two exchanges' worth, so that each case ends soon.
ALWAYS_DEADLINE = 2
# A single fault: its worst failed exchange (a connect timeout after a dropped
# connection: about 1.5 s), the back-off, then the retry and the calls after
# it, on a loaded machine (only the cases that fail wait for all of it).
ONCE_DEADLINE = 6
# The bound, checked twice. From the stage's first request to its end: the
# retry deadline, plus the scheduling of the last steps on a loaded two-core
# machine. The process as a whole: also its start and its own work (an RSA
# key for certificates), which the machine's load stretches. Both far below
# what an unbounded read takes here (a hang: 60 s; a trickle: 45 s).
SLACK = 1.5
WALL_SLACK = 8.0
# Cases at a time: they mostly wait, on sockets and deadlines.
WORKERS = 16
ALWAYS = 1000

DVD = "mnt/cdrom/secure"
KVP_POOL = "var/lib/hyperv/.kvp_pool_1"


@dataclass(frozen=True)
class Call:
    stage: str
    name: str
    endpoint: str
    path: str  # regular expression on "METHOD path?query", as the emulator matches
    # Whether the stage reads the answer's body (a 200 with garbage fails it).
    reads_body: bool = True


CALLS = (
    Call("report-ready", "goal-state", "wireserver", r"^GET /machine/\?comp=goalstate"),
    Call(
        "report-ready",
        "role-properties",
        "wireserver",
        r"^POST /machine\?comp=roleProperties",
        reads_body=False,
    ),
    Call("report-ready", "health", "wireserver", r"^POST /machine\?comp=health", reads_body=False),
    Call("report-failure", "goal-state", "wireserver", r"^GET /machine/\?comp=goalstate"),
    Call(
        "report-failure", "health", "wireserver", r"^POST /machine\?comp=health", reads_body=False
    ),
    Call("certificates", "goal-state", "wireserver", r"^GET /machine/\?comp=goalstate"),
    Call("certificates", "certificates", "wireserver", r"^GET /machine/.*comp=certificates"),
    Call("imds", "instance", "imds", r"^GET /metadata/instance"),
)

# A trickle whose every gap is just under the read timeout: each socket read
# succeeds, the answer never ends in time.
TRICKLE_GAP = 0.9 * REQUEST_TIMEOUT

FAULTS: dict[str, dict[str, Any]] = {
    "500": {"kind": "status", "status": 500},
    "503": {"kind": "status", "status": 503},
    "429-retry-after": {"kind": "status", "status": 429, "retry_after": "1"},
    "410": {"kind": "status", "status": 410},
    # Once: long enough that the first retry's connect times out too; always: for good.
    "connect-timeout": {"kind": "blackhole", "seconds": 2.0},
    "read-timeout": {"kind": "hang", "seconds": 60},
    "closed-before-answer": {"kind": "drop"},
    "reset-before-body": {"kind": "reset", "body_bytes": 0},
    "reset-mid-body": {"kind": "reset"},
    "truncated": {"kind": "truncate"},
    "garbage": {"kind": "garbage"},
    "trickle": {"kind": "trickle", "seconds": TRICKLE_PIECES * TRICKLE_GAP},
}

# What the recorded reason says, per fault (the last attempt's problem).
REASONS: dict[str, tuple[str, ...]] = {
    "500": ("HTTP 500",),
    "503": ("HTTP 503",),
    "429-retry-after": ("HTTP 429 (retry after 1 s)",),
    "410": ("the goal state kept changing", "the goal state changed", "HTTP 410"),
    "connect-timeout": ("could not connect",),
    "read-timeout": ("no answer within",),
    "closed-before-answer": ("the connection closed before an answer",),
    "reset-before-body": ("the connection was reset",),
    "reset-mid-body": ("the connection was reset",),
    "truncated": ("the body ended after",),
    "garbage": ("",),
    # The emulator trickles the headers too: a body-less answer trickles as well.
    "trickle": ("no answer within its deadline", "the body did not arrive within the deadline"),
}


@dataclass(frozen=True)
class Case:
    call: Call
    fault: str
    once: bool

    @property
    def id(self) -> str:
        times = "once" if self.once else "always"
        return f"{self.call.stage}/{self.call.name}/{self.fault}/{times}"

    @property
    def deadline(self) -> int:
        return ONCE_DEADLINE if self.once else ALWAYS_DEADLINE

    @property
    def succeeds(self) -> bool:
        """Whether the stage must succeed: a retry gets past a single fault.

        Garbage in a 200 is no network fault: a document that does not parse
        fails the stage at once; an answer whose body is not read is fine.
        """
        if self.fault == "garbage":
            return not self.call.reads_body
        return self.once

    def faults(self) -> list[Fault]:
        spec = dict(FAULTS[self.fault])
        if spec["kind"] == "blackhole" and not self.once:
            spec["seconds"] = 60
        return [
            Fault(
                endpoint=self.call.endpoint,
                path=self.call.path,
                count=1 if self.once else ALWAYS,
                **spec,
            )
        ]


CASES = [Case(call, fault, once) for call in CALLS for fault in FAULTS for once in (True, False)]


@dataclass
class Outcome:
    stage: str
    run: Run
    wall: float
    before: dict[str, Any]
    after: dict[str, Any]
    requests: list[Request] = field(default_factory=list)
    health: list[tuple[str, Optional[str]]] = field(default_factory=list)
    role_properties: int = 0

    @property
    def result(self) -> dict[str, Any]:
        content = self.after[f"run/azagent/stages/{self.stage}.json"][3]
        assert isinstance(content, bytes)
        data: dict[str, Any] = json.loads(content)
        return data


# -- the roots each stage starts from ---------------------------------------------


def scenario_for(stage: str) -> Scenario:
    if stage == "certificates":
        key = PublicKey(path="/home/azureuser/.ssh/authorized_keys", fingerprint="generate")
        return materialize(Scenario(public_keys=[key], provision_guest_agent=False))
    return materialize(Scenario(provision_guest_agent=False))


def add_user(root: Path, name: str = "azureuser", uid: int = 1000) -> None:
    etc = root / "etc"
    (etc / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\n{name}:x:{uid}:{uid}::/home/{name}:/bin/sh\n"
    )
    (etc / "group").write_text(f"root:x:0:\n{name}:x:{uid}:\n")
    home = root / "home" / name
    home.mkdir(parents=True)
    os.chown(home, uid, uid)


def mask(root: Path, *stages: str) -> None:
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        (units / f"azure-{stage}.service").symlink_to("/dev/null")


def prepare(stage: str, root: Path, scenario: Scenario) -> None:
    """A root as the stage finds it at boot: mount-ovf has run (and whatever else it needs)."""
    root.mkdir(parents=True)
    dmi = root / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text((scenario.vm_id or "").upper() + "\n")
    (root / "etc").mkdir()
    (root / "etc/waagent.conf").write_text(f"Endpoint.RequestTimeout={REQUEST_TIMEOUT}\n")
    if stage != "imds":
        (root / DVD).mkdir(parents=True)
        (root / DVD / "ovf-env.xml").write_bytes(media.ovf_env(scenario))
    if stage == "report-ready":
        ssh = root / "etc/ssh"
        ssh.mkdir()
        (ssh / "ssh_host_rsa_key.pub").write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 host\n")
    if stage == "certificates":
        add_user(root)
    if stage == "imds":
        # The stages it runs again once it has the data are not what is tested here.
        mask(root, "hostname", "create-user", "ssh-keys")
    run = run_stage("mount-ovf", "--root", str(root))
    assert run.returncode == 0, run.stderr
    if stage == "report-failure":
        (root / "run/azagent/stages/create-user.json").write_text(
            '{"stage": "create-user", "state": "failed", "reason": "useradd exited with status 9"}'
        )


def configure(root: Path, fabric: Fabric, deadline: int) -> None:
    urls = fabric.urls
    dropins = root / "etc/waagent.conf.d"
    dropins.mkdir(exist_ok=True)
    (dropins / "90-fabric.conf").write_text(
        f"Endpoint.WireServer={urls['wireserver']}\n"
        f"Endpoint.HostGAPlugin={urls['hostgaplugin']}\n"
        f"Endpoint.IMDS={urls['imds']}\n"
        f"Endpoint.RetryDeadline={deadline}\n"
    )


def run_one(template: Path, root: Path, scenario: Scenario, stage: str, deadline: int) -> Outcome:
    subprocess.run(["cp", "-a", str(template), str(root)], check=True, timeout=60)
    with Fabric(scenario) as fabric:
        configure(root, fabric, deadline)
        before = snapshot(root)
        start = time.monotonic()
        run = run_stage(stage, "--root", str(root), env={"AZAGENT_LOCK_TIMEOUT": "5"})
        wall = time.monotonic() - start
        return Outcome(
            stage,
            run,
            wall,
            before,
            snapshot(root),
            list(fabric.requests),
            [(r.state, r.substatus) for r in fabric.health_reports],
            len(fabric.role_properties),
        )


@dataclass
class Matrix:
    baselines: dict[str, Outcome]
    outcomes: dict[str, Outcome]
    seconds: float


def selected(request: pytest.FixtureRequest) -> list[Case]:
    """The cases of this module that this session runs (all, unless deselected)."""
    cases: dict[str, Case] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("case") if callspec is not None else None
        if getattr(item, "module", None) is request.module and isinstance(case, Case):
            cases[case.id] = case
    return list(cases.values())


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    """Run every selected case, and an unfaulted run of each stage, concurrently."""
    start = time.monotonic()
    cases = selected(request)
    work = tmp_path_factory.mktemp("faults")
    stages = sorted({case.call.stage for case in cases})
    templates = {stage: work / "templates" / stage for stage in stages}
    (work / "baseline").mkdir()
    (work / "cases").mkdir()

    def template(stage: str) -> Scenario:
        scenario = scenario_for(stage)
        prepare(stage, templates[stage], scenario)
        return scenario

    def baseline(stage: str) -> Outcome:
        root = work / "baseline" / stage
        return run_one(templates[stage], root, scenarios[stage], stage, ONCE_DEADLINE)

    def faulted(case: Case) -> Outcome:
        stage = case.call.stage
        scenario = replace(scenarios[stage], faults=case.faults())
        root = work / "cases" / case.id.replace("/", "_")
        return run_one(templates[stage], root, scenario, stage, case.deadline)

    # The persistent faults first (they take longest), fault by fault, so that
    # the stages' processor time (an RSA key for certificates) is spread out.
    order = sorted(cases, key=lambda case: (case.once, case.fault, case.call.stage))
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        scenarios = dict(zip(stages, pool.map(template, stages)))
        baselines = dict(zip(stages, pool.map(baseline, stages)))
        outcomes = dict(zip((case.id for case in order), pool.map(faulted, order)))
    result = Matrix(baselines, outcomes, time.monotonic() - start)
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"fault matrix: {len(cases)} cases ({len({c.call for c in cases})} calls x "
                f"{len({c.fault for c in cases})} faults x once/always) "
                f"ran in {result.seconds:.1f} s"
            )
    return result


# -- what every case must show ------------------------------------------------------


def kvp_whole(content: object) -> list[tuple[str, str]]:
    """The records of a KVP pool, each checked whole."""
    assert isinstance(content, bytes)
    assert len(content) % kvp.RECORD_SIZE == 0, "a KVP record is cut short"
    records = kvp.decode_pool(content)
    assert all(key == kvp.PROVISIONING_REPORT_KEY for key, _ in records)
    return records


def comparable(state: dict[str, Any], stage: str) -> dict[str, Any]:
    """The tree as an end state: what varies between equal runs reduced to what must not."""
    out = {}
    for path, (mode, uid, gid, content) in state.items():
        kept: object = content
        if path.startswith("etc/waagent.conf.d"):
            kept = ""  # the emulator's ports and the deadline differ by case
        elif path.startswith("run/azagent/lock/"):
            kept = ""  # the holder's process id
        elif path == KVP_POOL:
            kept = [
                (key, kvp.parse_provisioning_report(value).get("result"))
                for key, value in kvp_whole(content)
            ]
        elif path == f"run/azagent/stages/{stage}.json":
            result = json.loads(content)
            kept = (result["state"], result["exit_status"], result["changes"])
        out[path] = (mode, uid, gid, kept)
    return out


def untouched(outcome: Outcome) -> None:
    """Nothing changed but the stage's result, its lock and a whole KVP record."""
    expected = {
        f"run/azagent/stages/{outcome.stage}.json",
        f"run/azagent/lock/{outcome.stage}.lock",
        "var/lib/hyperv",
        KVP_POOL,
    }
    before = {p: v for p, v in outcome.before.items() if p not in expected}
    after = {p: v for p, v in outcome.after.items() if p not in expected}
    assert after == before
    if KVP_POOL in outcome.after:
        kvp_whole(outcome.after[KVP_POOL][3])


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_fault(matrix: Matrix, case: Case) -> None:
    outcome = matrix.outcomes[case.id]
    run, result = outcome.run, outcome.result
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode in (0, 1), run.stderr
    first = min(request.time for request in outcome.requests)
    took = datetime.fromisoformat(result["end"]).timestamp() - first
    assert took < case.deadline + SLACK, f"{took:.2f} s from the first request on"
    assert outcome.wall < case.deadline + WALL_SLACK, f"{outcome.wall:.2f} s in all"
    assert any(request.fault for request in outcome.requests), f"never hit: {run.stderr}"
    if case.succeeds:
        assert run.returncode == 0, result["reason"]
        baseline = matrix.baselines[case.call.stage]
        assert baseline.run.returncode == 0, baseline.run.stderr
        assert comparable(outcome.after, case.call.stage) == comparable(
            baseline.after, case.call.stage
        )
        # The platform heard what it hears without the fault (a POST whose
        # answer was lost may have arrived twice).
        assert set(outcome.health) == set(baseline.health)
        assert outcome.health[-1:] == baseline.health[-1:]
        assert bool(outcome.role_properties) == bool(baseline.role_properties)
    else:
        assert run.returncode == 1
        assert (result["state"], result["exit_status"]) == ("failed", 1)
        reason = result["reason"]
        assert reason
        assert not reason.startswith("unexpected error")
        assert any(phrase in reason for phrase in REASONS[case.fault]), reason
        assert reason in run.stderr
        untouched(outcome)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.fault == "429-retry-after" and c.once],
    ids=lambda case: case.id,
)
def test_retry_after_is_honoured(matrix: Matrix, case: Case) -> None:
    requests = [
        r
        for r in matrix.outcomes[case.id].requests
        if r.endpoint == case.call.endpoint and re.search(case.call.path, f"{r.method} {r.path}")
    ]
    assert [r.status // 100 for r in requests[:2]] == [4, 2]
    assert requests[0].status == 429
    assert requests[1].time - requests[0].time >= 1.0 - 0.05


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.id == "certificates/certificates/410/once"],
    ids=lambda case: case.id,
)
def test_certificates_makes_its_transport_key_once(matrix: Matrix, case: Case) -> None:
    """A 410 fetches the goal state and the certificates again, with the same transport key.

    A fresh RSA key for each try would spend the retry deadline on the processor.
    """
    fetched = [r for r in matrix.outcomes[case.id].requests if "comp=certificates" in r.path]
    assert [r.status for r in fetched] == [410, 200]
    assert len({r.header("x-ms-guest-agent-public-x509-cert") for r in fetched}) == 1
