"""The fault matrix of the extension handler: every fabric call a pass makes, every fault.

Calls (a pass of :class:`Service`, in-process, with the stage's own
installer and the direct executor running WALinuxAgent's sample handler):
the WireServer goal state and ExtensionsConfig; the HostGAPlugin vmSettings;
the plugin manifest and the package from the blob endpoint (direct), the
package through the HostGAPlugin's extensionArtifact (the direct route
refused for good, so that the fallback is the call); the status upload
through the HostGAPlugin's ``/status`` and directly to the blob (the
HostGAPlugin refusing it for good). Faults: the stage matrix's own table
(tests/test_faults.py FAULTS), each injected once and always.

The handler's contract, not a stage's:

- each pass ends within its bound (BOUND: what the configuration below
  implies, call by call) and never raises out of ``run_once``;
- once: within ONCE_PASSES passes the end state is an unfaulted run's: the
  sample handler Enabled, its status (echoing its public setting) in the
  platform's last status upload;
- always: after ALWAYS_PASSES passes nothing is half-written (no zip, no
  staging or partial handler directory, a valid state file), and where the
  platform can hear it (a package or manifest that cannot be had), that
  handler's error status is uploaded saying why. Where another route exists
  (vmSettings: the WireServer's ExtensionsConfig; manifest or package: the
  HostGAPlugin; status: the direct blob PUT) the end state is the unfaulted
  one, unless the fault spends the whole budget of the call (a trickle on the
  package download: DOWNLOAD seconds for all its routes).

The cases run concurrently in threads, each with its own emulator and root.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from azfabric.scenario import Extension, Fault, Scenario
from azfabric.server import Fabric
from conftest import load_stage
from provisioning_env import make_vm
from test_certstore import fabric_context
from test_ext_service import SAMPLE, SAMPLE_ZIP, handler_entries, settings_status
from test_faults import ALWAYS, FAULTS

from azagent.extensions import channel, package, service
from azagent.extensions import state as saved
from azagent.extensions.direct_executor import DirectExecutor

MESSAGE = "hello from the goal state"

# The configuration of every case, and the bound of a pass it implies.
REQUEST_TIMEOUT = 1  # Endpoint.RequestTimeout: each exchange's I/O, a direct blob request
CHANNEL_DEADLINE = 2.0  # Fabric(deadline=): each WireServer/HostGAPlugin client's retries
DOWNLOAD = 4.0  # package.DOWNLOAD_TIMEOUT (300 s shipped): a package, all routes
# A pass: the goal state and ExtensionsConfig (one client), vmSettings, the
# manifest (each of its two routes one exchange), the package, the HostGAPlugin
# upload (one client), the direct upload (a block blob: one exchange); plus the
# handler's own commands (measured in the unfaulted run) and scheduling slack.
BOUND = 3 * CHANNEL_DEADLINE + 2 * REQUEST_TIMEOUT + DOWNLOAD + REQUEST_TIMEOUT
SLACK = 4.0
ONCE_PASSES = 3
# Between passes: the loop's period (Extensions.GoalStatePeriod) in real time,
# shortened; the service's clock is moved on by a long one (its back-offs).
PAUSE = 1.0
PERIOD = 600.0
ALWAYS_PASSES = 2
WORKERS = 16

ZIP_PATH = r"^GET /extensions/.*\.zip"


@dataclass(frozen=True)
class Call:
    name: str
    endpoint: str
    path: str
    # Faults that make the call possible in the first place (for good).
    given: tuple[Fault, ...] = ()
    # Always: the unfaulted end state through another route.
    fallback: bool = False
    # Always: the platform hears the handler's error status.
    handler_error: bool = False


CALLS = (
    Call("goal-state", "wireserver", r"^GET /machine/\?comp=goalstate"),
    Call("extensions-config", "wireserver", r"^GET /machine/.*type=extensionsConfig"),
    Call("vm-settings", "hostgaplugin", r"^GET /vmSettings", fallback=True),
    Call("manifest", "blob", r"^GET /extensions/.*manifest\.xml", fallback=True),
    Call("package", "blob", ZIP_PATH, fallback=True, handler_error=True),
    Call(
        "extension-artifact",
        "hostgaplugin",
        r"^GET /extensionArtifact.*\.zip",
        given=(Fault(endpoint="blob", kind="status", path=ZIP_PATH, status=404, count=ALWAYS),),
        handler_error=True,
    ),
    Call("status-hostgaplugin", "hostgaplugin", r"^PUT /status", fallback=True),
    Call(
        "status-blob",
        "blob",
        r"^PUT /status/",
        given=(
            Fault(
                endpoint="hostgaplugin",
                kind="status",
                path="^PUT /status",
                status=400,
                count=ALWAYS,
            ),
        ),
    ),
)


@dataclass(frozen=True)
class Case:
    call: Call
    fault: str
    once: bool

    @property
    def id(self) -> str:
        return f"{self.call.name}/{self.fault}/{'once' if self.once else 'always'}"

    def faults(self) -> list[Fault]:
        spec = dict(FAULTS[self.fault])
        if spec["kind"] == "blackhole" and not self.once:
            spec["seconds"] = 60
        injected = Fault(
            endpoint=self.call.endpoint,
            path=self.call.path,
            count=1 if self.once else ALWAYS,
            **spec,
        )
        return [*self.call.given, injected]


CASES = [Case(call, fault, once) for call in CALLS for fault in FAULTS for once in (True, False)]


@dataclass
class Outcome:
    passes: list[float] = field(default_factory=list)  # seconds per pass
    raised: Optional[str] = None
    hit: bool = False
    uploads: list[Any] = field(default_factory=list)
    handler_state: Optional[str] = None
    lib_entries: list[str] = field(default_factory=list)
    state_valid: bool = False
    handler_dir_whole: Optional[bool] = None
    vias: list[str] = field(default_factory=list)
    package_requests: int = 0


INSTALLER = load_stage("extensions").installer


def run_case(root: Path, faults: list[Fault], passes: int, advance: float = PERIOD) -> Outcome:
    scenario = Scenario(
        extensions=[
            Extension(
                name=SAMPLE,
                version="1.3.0",
                package=str(SAMPLE_ZIP),
                public_settings={"message": MESSAGE},
            )
        ],
        faults=faults,
    )
    outcome = Outcome()
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric, with_media=False)
        with open(vm.root / "etc/waagent.conf", "a") as conf:
            conf.write(f"Endpoint.RequestTimeout={REQUEST_TIMEOUT}\n")
        (vm.root / "var/lib/waagent").mkdir(parents=True, exist_ok=True)
        ctx = fabric_context(vm.root)
        fabric_client = channel.Fabric(ctx, deadline=CHANNEL_DEADLINE)
        later = [0.0]
        svc = service.Service(
            ctx,
            DirectExecutor(log_root=ctx.path("/var/log/azure")),
            INSTALLER(ctx, fabric_client),
            fabric=fabric_client,
            monotonic=lambda: time.monotonic() + later[0],
        )
        for number in range(passes):
            if number:
                time.sleep(PAUSE)
                later[0] += advance
            start = time.monotonic()
            try:
                svc.run_once()
            except BaseException as e:  # the contract: never
                outcome.raised = f"{type(e).__name__}: {e}"
                break
            finally:
                outcome.passes.append(time.monotonic() - start)
        outcome.hit = any(r.fault for r in fabric.requests)
        outcome.uploads = [u.document for u in fabric.status_uploads]
        outcome.vias = [u.via for u in fabric.status_uploads]
        outcome.package_requests = sum(
            1 for r in fabric.requests if r.method == "GET" and r.path.endswith(".zip")
        ) + sum(1 for r in fabric.requests if r.path.startswith("/extensionArtifact"))
        lib = ctx.lib_dir
        outcome.lib_entries = sorted(p.name for p in lib.iterdir())
        handler_dir = lib / f"{SAMPLE}-1.3.0"
        if handler_dir.exists():
            outcome.handler_dir_whole = all(
                (handler_dir / name).exists()
                for name in (
                    "HandlerManifest.json",
                    "HandlerEnvironment.json",
                    "config",
                    "status",
                )
            )
            state_file = handler_dir / "config/HandlerState"
            if state_file.is_file():
                outcome.handler_state = state_file.read_text()
        try:
            json.loads(saved.state_path(lib).read_text())
            outcome.state_valid = not saved.load(lib).unknown
        except (OSError, ValueError):
            outcome.state_valid = False
    return outcome


@dataclass
class Matrix:
    baseline: Outcome
    outcomes: dict[str, Outcome]
    seconds: float


def selected(request: pytest.FixtureRequest) -> list[Case]:
    cases: dict[str, Case] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("case") if callspec is not None else None
        if getattr(item, "module", None) is request.module and isinstance(case, Case):
            cases[case.id] = case
    return list(cases.values())


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    start = time.monotonic()
    cases = selected(request)
    work = tmp_path_factory.mktemp("extfaults")
    patch = pytest.MonkeyPatch()
    patch.setattr(package, "DOWNLOAD_TIMEOUT", DOWNLOAD)
    try:

        def faulted(case: Case) -> Outcome:
            root = work / case.id.replace("/", "_")
            root.mkdir()
            return run_case(root, case.faults(), ONCE_PASSES if case.once else ALWAYS_PASSES)

        (work / "baseline").mkdir()
        baseline = run_case(work / "baseline", [], 2)
        order = sorted(cases, key=lambda case: (case.once, case.fault, case.call.name))
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            outcomes = dict(zip((case.id for case in order), pool.map(faulted, order)))
    finally:
        patch.undo()
    result = Matrix(baseline, outcomes, time.monotonic() - start)
    plugins = request.config.pluginmanager
    reporter, capture = (
        plugins.get_plugin("terminalreporter"),
        plugins.get_plugin("capturemanager"),
    )
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"extension fault matrix: {len(cases)} cases "
                f"({len({c.call.name for c in cases})} calls x "
                f"{len({c.fault for c in cases})} faults"
                f" x once/always) ran in {result.seconds:.1f} s; the slowest pass took "
                f"{max((t for o in outcomes.values() for t in o.passes), default=0):.1f} s "
                f"(bound {BOUND:g} s + the handler's commands)"
            )
    return result


def enabled_end_state(outcome: Outcome) -> None:
    """An unfaulted run's end: Enabled, and the platform's last status says so."""
    assert outcome.handler_state == "Enabled", outcome
    assert outcome.uploads, "no status upload"
    entry = handler_entries(outcome.uploads[-1])[SAMPLE]
    assert entry["status"] == "Ready", entry
    assert settings_status(entry)["status"] == "success", entry
    assert MESSAGE in json.dumps(settings_status(entry))


def nothing_half_written(outcome: Outcome) -> None:
    assert outcome.state_valid
    assert not [n for n in outcome.lib_entries if n.endswith(".zip") or ".unpack-" in n]
    assert outcome.handler_dir_whole in (None, True)


def test_baseline(matrix: Matrix) -> None:
    assert matrix.baseline.raised is None
    enabled_end_state(matrix.baseline)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_fault(matrix: Matrix, case: Case) -> None:
    outcome = matrix.outcomes[case.id]
    assert outcome.raised is None, outcome.raised
    assert outcome.hit, "the fault never hit"
    commands = max(matrix.baseline.passes)
    for took in outcome.passes:
        assert took < BOUND + commands + SLACK, f"a pass took {took:.2f} s"
    nothing_half_written(outcome)
    spent = case.fault == "trickle" and case.call.name == "package"
    if case.once or (case.call.fallback and not spent):
        enabled_end_state(outcome)
        if case.call.name == "status-hostgaplugin" and not case.once:
            # A garbled 200 to a PUT whose answer is not read is a success.
            assert outcome.vias[-1] == ("hostgaplugin" if case.fault == "garbage" else "direct")
        return
    if case.call.name in ("goal-state", "extensions-config"):
        # No goal state: nothing to run, and no status blob to say it in.
        assert outcome.handler_dir_whole is None
        assert outcome.uploads == []
    elif case.call.name == "status-blob":
        # The handler runs; the platform hears it by neither route, unless the PUT
        # took effect and only its answer was lost (then whole, as in tests/test_faults.py).
        assert outcome.handler_state == "Enabled"
        if case.fault in ("reset-before-body", "reset-mid-body", "truncated", "garbage", "trickle"):
            enabled_end_state(outcome)
        else:
            assert outcome.uploads == []
    else:
        assert case.call.handler_error
        assert outcome.handler_dir_whole is None
        assert outcome.uploads, "the handler's error never reached the platform"
        entry = handler_entries(outcome.uploads[-1])[SAMPLE]
        assert entry["status"] == "NotReady", entry
        assert "could not be downloaded" in entry["formattedMessage"]["message"], entry


MISSING = [
    Fault(endpoint="blob", kind="status", path=ZIP_PATH, status=404, count=ALWAYS),
    Fault(
        endpoint="hostgaplugin",
        kind="status",
        path=r"^GET /extensionArtifact.*\.zip",
        status=404,
        count=ALWAYS,
    ),
]


@pytest.mark.parametrize(("advance", "tries"), [(0.0, 2), (PERIOD, 4)])
def test_a_missing_package_is_tried_again_with_a_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, advance: float, tries: int
) -> None:
    """Within one goal state: again on the next pass, then only after a back-off.

    Four passes a second apart: with the clock as it is, the retry on the
    second pass fails and the back-off (5 s) keeps the next two from trying;
    with the clock moved on by a loop period before each pass, every pass tries.
    """
    monkeypatch.setattr(package, "DOWNLOAD_TIMEOUT", DOWNLOAD)
    outcome = run_case(tmp_path, MISSING, 4, advance=advance)
    assert outcome.raised is None
    nothing_half_written(outcome)
    assert outcome.package_requests == 2 * tries  # each try: direct, then the HostGAPlugin
    entry = handler_entries(outcome.uploads[-1])[SAMPLE]
    assert "HTTP 404" in entry["formattedMessage"]["message"]
