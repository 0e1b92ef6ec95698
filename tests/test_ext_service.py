"""The extension handler's loop against the emulator: WALinuxAgent's sample handler run for real.

Each test starts the emulator on loopback with the sample extension, runs
passes of :class:`Service` under a temporary root, and checks what the
platform sees (the status uploads the emulator recorded) and what the
handler did (its status files, the operations in order). The executor here
runs each command with subprocess in the handler directory; the installer
unpacks the sample zip as the package module will.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
from azfabric import documents
from azfabric.scenario import Extension, ExtensionConfig, Fault, Scenario
from azfabric.server import Fabric, Request
from conftest import FIXTURES, REPO, Logged
from provisioning_env import make_vm
from test_certstore import fabric_context

from azagent import cli
from azagent.context import Context
from azagent.extensions import daemon, environment, naming
from azagent.extensions import state as saved
from azagent.extensions.executor import Operation, Outcome
from azagent.extensions.goalstate import Handler
from azagent.extensions.service import InstallError, Package, Service

SAMPLE_ZIP = FIXTURES / "walinuxagent/ext/sample_ext-1.3.0.zip"
SAMPLE = "OSTCExtensions.ExampleHandlerLinux"
OTHER = "Contoso.Test.Other"


class RunningExecutor:
    """Runs each operation's command with subprocess; records what ran."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.ran: list[Operation] = []
        self.fail = set(fail)  # handler names whose commands exit 3
        self.discarded: list[str] = []  # handlers whose units were let go of

    def run(self, operation: Operation) -> Outcome:
        self.ran.append(operation)
        started = time.monotonic()
        line = "echo broken handler >&2; exit 3" if operation.handler in self.fail else None
        done = subprocess.run(
            ["/bin/sh", "-c", line or operation.shell_line],
            cwd=operation.cwd,
            env={**os.environ, **operation.environment},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return Outcome(
            operation,
            done.returncode,
            duration=time.monotonic() - started,
            output=(done.stdout + done.stderr)[:3200],
            unit=f"azure-ext-test-{operation.operation}",
        )

    def running(self) -> Sequence[str]:
        return ()

    def wait(self, key: str, timeout: float) -> Optional[Outcome]:
        return None

    def discard(self, handler: str) -> None:
        self.discarded.append(handler)

    def operations(self, handler: str = SAMPLE) -> list[tuple[str, str, int]]:
        return [(o.operation, o.version, o.sequence) for o in self.ran if o.handler == handler]


def installer(ctx: Context) -> Any:
    """Unpacks the sample zip into <Lib.Dir>/<Name>-<Version> (whatever version is asked)."""

    def install(handler: Handler) -> Package:
        if handler.name.startswith("Broken."):
            raise InstallError("the package download failed: HTTP 404")
        directory = ctx.lib_dir / naming.handler_dir_name(handler.name, handler.version)
        if not directory.is_dir():
            with zipfile.ZipFile(SAMPLE_ZIP) as archive:
                archive.extractall(directory)
            for item in directory.iterdir():
                item.chmod(0o755)
            for sub in ("config", "status"):
                (directory / sub).mkdir(mode=0o700)
            (directory / "HandlerEnvironment.json").write_bytes(
                environment.handler_environment(
                    handler_name=handler.name,
                    handler_dir=str(directory),
                    log_root=str(ctx.root / "var/log/azure"),
                )
            )
        return Package(handler.version, directory)

    return install


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    scenario = Scenario(
        extensions=[
            Extension(
                name=SAMPLE,
                version="1.3.0",
                package=str(SAMPLE_ZIP),
                public_settings={"message": "hello from the goal state"},
            )
        ]
    )
    with Fabric(scenario) as running:
        yield running


def vm_context(root: Path, fabric: Fabric, *lines: str) -> Context:
    vm = make_vm(root, fabric.scenario, fabric, with_media=False)
    with open(vm.root / "etc/waagent.conf", "a") as conf:
        conf.write("Endpoint.RetryDeadline=1\n" + "".join(f"{line}\n" for line in lines))
    (vm.root / "var/lib/waagent").mkdir(parents=True, exist_ok=True)
    return fabric_context(vm.root)


def service(ctx: Context, executor: RunningExecutor) -> Service:
    svc = Service(ctx, executor, installer(ctx))
    svc.fabric.deadline = 1.0
    return svc


def last_upload(fabric: Fabric) -> dict[str, Any]:
    assert fabric.status_uploads, "no status upload"
    document = fabric.status_uploads[-1].document
    assert isinstance(document, dict)
    return document


def handler_entries(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = document["aggregateStatus"]["handlerAggregateStatus"]
    return {entry["handlerName"]: entry for entry in entries}


def settings_status(entry: dict[str, Any]) -> dict[str, Any]:
    return entry["runtimeSettingsStatus"]["settingsStatus"]["status"]  # type: ignore[no-any-return]


def test_new_handler_installed_enabled_and_its_status_uploaded(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    executor = RunningExecutor()
    summary = service(ctx, executor).run_once()
    assert executor.operations() == [("install", "1.3.0", 0), ("enable", "1.3.0", 0)]
    entry = handler_entries(last_upload(fabric))[SAMPLE]
    assert entry["status"] == "Ready"
    assert settings_status(entry)["status"] == "success"
    assert settings_status(entry)["formattedMessage"]["message"] == "hello from the goal state"
    handler_dir = ctx.lib_dir / f"{SAMPLE}-1.3.0"
    assert (handler_dir / "config/HandlerState").read_text() == "Enabled"
    assert json.loads((handler_dir / "config/0.settings").read_text())["runtimeSettings"]
    assert summary.endswith("1 handler enabled")
    state = saved.load(ctx.lib_dir)
    assert state.handlers[SAMPLE].version == "1.3.0"
    assert state.handlers[SAMPLE].extensions[SAMPLE].last is not None
    assert oct(saved.state_path(ctx.lib_dir).stat().st_mode & 0o777) == "0o600"


def test_operation_timeout_lowers_every_operations_limit(root: Path, fabric: Fabric) -> None:
    """Extensions.OperationTimeout caps the contract's timeouts; unset, they apply."""
    ctx = vm_context(root, fabric)
    executor = RunningExecutor()
    service(ctx, executor).run_once()
    ran = [(o.operation, o.timeout) for o in executor.ran]
    assert ran == [("install", 900.0), ("enable", 300.0)]
    with open(ctx.path("/etc/waagent.conf"), "a") as conf:
        conf.write("Extensions.OperationTimeout=20\n")
    limited = RunningExecutor()
    service(fabric_context(ctx.root), limited).run_once()  # a restart: enable again
    assert [(o.operation, o.timeout) for o in limited.ran] == [("enable", 20.0)]


def test_the_watchdog_is_fed_before_every_operation(root: Path, fabric: Fabric) -> None:
    """An operation may take its whole timeout: the watchdog hears from the loop before it."""
    events: list[str] = []

    class Recording(RunningExecutor):
        def run(self, operation: Operation) -> Outcome:
            events.append(operation.operation)
            return super().run(operation)

    svc = service(vm_context(root, fabric), Recording())
    svc.tick = lambda: events.append("tick")
    svc.run_once()
    assert events == ["tick", "install", "tick", "enable"]


def test_a_pass_without_change_runs_nothing_and_asks_conditionally(
    root: Path, fabric: Fabric
) -> None:
    ctx = vm_context(root, fabric)
    executor = RunningExecutor()
    svc = service(ctx, executor)
    svc.run_once()
    uploads = len(fabric.status_uploads)
    svc.run_once()
    assert len(executor.ran) == 2
    assert len(fabric.status_uploads) == uploads  # unchanged and not 30 s old
    asked = [r for r in fabric.requests if r.path.startswith("/vmSettings")]
    assert asked[-1].header("if-none-match")


def test_an_idle_pass_is_one_conditional_request(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    svc = service(ctx, RunningExecutor())
    svc.run_once()
    svc.run_once()  # the status may settle on the second pass
    before = len(fabric.requests)
    written = saved.state_path(ctx.lib_dir).stat().st_mtime_ns
    svc.run_once()
    idle = [(r.endpoint, r.method, r.path, r.status) for r in fabric.requests[before:]]
    assert idle == [("hostgaplugin", "GET", "/vmSettings", 304)]
    assert saved.state_path(ctx.lib_dir).stat().st_mtime_ns == written  # nothing written


def third_pass(svc: Service, fabric: Fabric) -> list[Request]:
    """What a pass asks once two passes ran (the status may settle on the second)."""
    svc.run_once()
    svc.run_once()
    before = len(fabric.requests)
    svc.run_once()
    return fabric.requests[before:]


def test_without_vm_settings_each_pass_asks_the_wireserver(root: Path) -> None:
    scenario = Scenario(
        extensions=[Extension(name=SAMPLE, version="1.3.0", package=str(SAMPLE_ZIP))],
        faults=[Fault(endpoint="hostgaplugin", kind="status", path="^GET /vmSettings", status=404)],
    )
    with Fabric(scenario) as fabric:
        ctx = vm_context(root, fabric)
        executor = RunningExecutor()
        svc = service(ctx, executor)
        idle = [(r.endpoint, r.method, r.path) for r in third_pass(svc, fabric)]
        assert len(idle) == 1, idle  # not vmSettings again for hours
        assert idle[0][:2] == ("wireserver", "GET"), idle
        assert "comp=goalstate" in idle[0][2], idle
        seq = fabric.new_settings(SAMPLE, public_settings={"message": "through ExtensionsConfig"})
        svc.run_once()
        assert executor.operations()[-1] == ("enable", "1.3.0", seq)


def test_vm_settings_naming_the_fabric_source_ask_the_wireserver_each_pass(
    root: Path, fabric: Fabric, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = documents.vm_settings

    def fabric_source(running: Fabric) -> bytes:
        document = json.loads(served(running))
        document["extensionGoalStatesSource"] = "Fabric"
        return json.dumps(document).encode()

    monkeypatch.setattr(documents, "vm_settings", fabric_source)
    ctx = vm_context(root, fabric)
    executor = RunningExecutor()
    svc = service(ctx, executor)
    idle = [(r.endpoint, r.path.split("?")[0], r.status) for r in third_pass(svc, fabric)]
    assert idle == [("hostgaplugin", "/vmSettings", 304), ("wireserver", "/machine/", 200)]
    seq = fabric.new_settings(SAMPLE, public_settings={"message": "through ExtensionsConfig"})
    svc.run_once()
    assert executor.operations()[-1] == ("enable", "1.3.0", seq)
    assert saved.load(ctx.lib_dir).channel == "WireServer"


def test_new_settings_enable_again_with_the_new_sequence_number(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    executor = RunningExecutor()
    svc = service(ctx, executor)
    svc.run_once()
    seq = fabric.new_settings(SAMPLE, public_settings={"message": "second"})
    svc.run_once()
    assert executor.operations()[-1] == ("enable", "1.3.0", seq)
    entry = handler_entries(last_upload(fabric))[SAMPLE]
    assert entry["runtimeSettingsStatus"]["sequenceNumber"] == seq
    assert settings_status(entry)["formattedMessage"]["message"] == "second"


def test_update_runs_the_full_sequence_in_order(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    executor = RunningExecutor()
    svc = service(ctx, executor)
    svc.run_once()
    fabric.update_version(SAMPLE, "1.4.0")
    svc.run_once()
    assert executor.operations()[2:] == [
        ("disable", "1.3.0", 0),
        ("update", "1.4.0", 0),
        ("uninstall", "1.3.0", 0),
        ("install", "1.4.0", 0),
        ("enable", "1.4.0", 0),
    ]
    update = next(o for o in executor.ran if o.operation == "update")
    assert update.environment["AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"] == "1.3.0"
    assert update.environment["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"] == "0"
    assert not (ctx.lib_dir / f"{SAMPLE}-1.3.0").exists()
    assert handler_entries(last_upload(fabric))[SAMPLE]["handlerVersion"] == "1.4.0"


def test_uninstall_disables_uninstalls_and_deletes(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    executor = RunningExecutor()
    svc = service(ctx, executor)
    svc.run_once()
    fabric.new_settings(SAMPLE, public_settings={"message": "second"})
    svc.run_once()
    fabric.set_extension_state(SAMPLE, "uninstall")
    svc.run_once()
    # The goal state's sequence number, for disable and uninstall alike.
    assert executor.operations()[3:] == [("disable", "1.3.0", 1), ("uninstall", "1.3.0", 1)]
    assert not (ctx.lib_dir / f"{SAMPLE}-1.3.0").exists()
    assert executor.discarded == [SAMPLE]  # its finished units are let go of
    assert SAMPLE not in saved.load(ctx.lib_dir).handlers


def test_a_vanished_handler_is_deleted_without_uninstall(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    executor = RunningExecutor()
    svc = service(ctx, executor)
    svc.run_once()
    fabric.remove_extension(SAMPLE)
    svc.run_once()
    assert len(executor.ran) == 2
    assert not (ctx.lib_dir / f"{SAMPLE}-1.3.0").exists()
    assert executor.discarded == [SAMPLE]


def test_extensions_disabled_reports_terminal_errors_and_runs_nothing(
    root: Path, fabric: Fabric
) -> None:
    ctx = vm_context(root, fabric, "Extensions.Enabled=n")
    executor = RunningExecutor()
    service(ctx, executor).run_once()
    assert executor.ran == []
    entry = handler_entries(last_upload(fabric))[SAMPLE]
    status = settings_status(entry)
    assert status["status"] == "error"
    assert "Extensions.Enabled=n" in status["formattedMessage"]["message"]
    assert daemon.period(ctx) == 300


def test_a_failing_handler_reports_error_and_others_still_run(root: Path, fabric: Fabric) -> None:
    fabric.add_extension(Extension(name=OTHER, version="2.0", public_settings={"message": "x"}))
    fabric.add_extension(Extension(name="Broken.Download", version="1.0"))
    ctx = vm_context(root, fabric)
    executor = RunningExecutor(fail=[OTHER])
    service(ctx, executor).run_once()
    entries = handler_entries(last_upload(fabric))
    assert settings_status(entries[SAMPLE])["status"] == "success"
    other = settings_status(entries[OTHER])
    assert other["status"] == "error"
    assert "exit status 3" in other["formattedMessage"]["message"]
    assert "broken handler" in other["formattedMessage"]["message"]
    assert entries["Broken.Download"]["status"] == "NotReady"
    assert "HTTP 404" in entries["Broken.Download"]["formattedMessage"]["message"]


@pytest.mark.parametrize("kind", ["status", "garbage"])
def test_a_failing_fabric_is_retried_on_the_next_pass(root: Path, kind: str) -> None:
    scenario = Scenario(
        extensions=[Extension(name=SAMPLE, version="1.3.0", package=str(SAMPLE_ZIP))],
        faults=[
            Fault(
                endpoint="wireserver",
                kind=kind,
                path="comp=goalstate",
                count=50,
                status=500,
            )
        ],
    )
    with Fabric(scenario) as fabric:
        ctx = vm_context(root, fabric)
        executor = RunningExecutor()
        svc = service(ctx, executor)
        svc.fabric.deadline = 0.3
        assert svc.run_once() == "no extensions goal state yet"
        assert executor.ran == []
        fabric.scenario.faults.clear()
        fabric._faults.clear()
        svc.run_once()
        assert [op for op, _, _ in executor.operations()] == ["install", "enable"]


def test_state_survives_a_restart_and_enable_runs_again(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    executor = RunningExecutor()
    service(ctx, executor).run_once()
    again = RunningExecutor()
    service(ctx, again).run_once()
    assert again.operations() == [("enable", "1.3.0", 0)]  # no second install


def test_a_malformed_state_file_is_unknown_not_a_crash(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    saved.state_path(ctx.lib_dir).write_text("{not json")
    assert saved.load(ctx.lib_dir).unknown
    executor = RunningExecutor()
    service(ctx, executor).run_once()
    assert [op for op, _, _ in executor.operations()] == ["install", "enable"]


def test_no_secret_reaches_the_log(root: Path, fabric: Fabric, logged: Logged) -> None:
    fabric.new_settings(SAMPLE, protected_settings={"password": "s3cr3t-value"})
    ctx = vm_context(root, fabric)
    service(ctx, RunningExecutor()).run_once()
    settings = json.loads((ctx.lib_dir / f"{SAMPLE}-1.3.0/config/1.settings").read_text())
    protected = settings["runtimeSettings"][0]["handlerSettings"]["protectedSettings"]
    assert protected
    assert "s3cr3t" not in protected
    assert "s3cr3t" not in logged.text
    assert protected[:40] not in logged.text
    assert "sig=" not in logged.text
    assert logged.entries  # the pass did log: the checks above read something


def test_loop_notifies_and_stops(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    told: list[str] = []
    stop = threading.Event()
    svc = service(ctx, RunningExecutor())

    def tell(message: str) -> bool:
        told.append(message)
        if len([m for m in told if m != "WATCHDOG=1"]) >= 3:
            stop.set()
        return True

    assert daemon.loop(svc, 0.01, stop, tell=tell) == 0
    assert told[0].startswith("READY=1\n")
    # The watchdog before each operation, STATUS with it after the pass.
    assert told[1:3] == ["WATCHDOG=1", "WATCHDOG=1"]
    assert told[3].startswith("STATUS=incarnation ")
    assert "WATCHDOG=1" in told[3]
    assert told[-1] == "STOPPING=1"


def test_ready_comes_before_the_first_pass(
    root: Path, fabric: Fabric, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first pass may run extensions for many minutes (install 900 s, enable 300 s):
    neither systemd's start timeout nor the boot may wait for it."""
    svc = service(vm_context(root, fabric), RunningExecutor())
    told: list[str] = []
    stop = threading.Event()
    seen_at_pass: list[list[str]] = []
    first_pass = svc.run_once

    def run_once() -> str:
        seen_at_pass.append(list(told))
        stop.set()
        return first_pass()

    monkeypatch.setattr(svc, "run_once", run_once)
    daemon.loop(svc, 0.01, stop, tell=lambda message: told.append(message) is None)
    assert seen_at_pass == [[told[0]]]
    assert told[0].startswith("READY=1")


def run_stage(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "stages/extensions"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_guest_agent_disabled_markers_stop_the_stage(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    for marker in ("guest-agent-disabled", "disable_agent"):
        (ctx.lib_dir / marker).write_text("")
        done = run_stage("--root", str(ctx.root), "--once")
        assert done.returncode == 0, done.stderr
        assert marker in done.stderr + done.stdout
        (ctx.lib_dir / marker).unlink()
    assert fabric.status_uploads == []


def test_once_through_the_stage_runs_the_real_handler_end_to_end(
    root: Path, fabric: Fabric
) -> None:
    """The stage as shipped: the package module downloads and unpacks the real zip the
    emulator serves, the direct executor runs its install and enable, and the status the
    handler wrote (echoing its public setting) reaches the platform."""
    ctx = vm_context(root, fabric)
    done = run_stage("--root", str(ctx.root), "--once")
    assert done.returncode == 0, done.stderr
    entry = handler_entries(last_upload(fabric))[SAMPLE]
    assert entry["handlerVersion"] == "1.3.0"
    assert entry["status"] == "Ready", entry
    assert settings_status(entry)["status"] == "success", entry
    assert "hello from the goal state" in json.dumps(settings_status(entry))
    handler_dir = ctx.lib_dir / f"{SAMPLE}-1.3.0"
    assert (handler_dir / "HandlerManifest.json").is_file()
    assert not (ctx.lib_dir / f"{SAMPLE}__1.3.0.zip").exists()  # deleted once unpacked
    assert (ctx.root / "var/log/azure" / SAMPLE / "CommandExecution.log").is_file()
    # A second pass of a new process: the goal state did not change, so the handler is
    # enabled again (a start), never installed twice.
    again = run_stage("--root", str(ctx.root), "--once")
    assert again.returncode == 0, again.stderr
    shown = json.loads(run_stage_cli(ctx.root))
    (row,) = shown["handlers"]
    assert (row["state"], row["last_operation"]["operation"]) == ("Enabled", "enable")


def run_stage_cli(root: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "azagent", "extensions", "--root", str(root), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_shows_every_handler(
    root: Path, fabric: Fabric, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = vm_context(root, fabric)
    service(ctx, RunningExecutor()).run_once()
    assert cli.main(["extensions", "--root", str(ctx.root)]) == 0
    text = capsys.readouterr().out
    assert SAMPLE in text
    assert "1.3.0" in text
    assert "Enabled" in text
    assert "enable" in text
    assert cli.main(["extensions", "--root", str(ctx.root), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["goal_state"]["incarnation"] == fabric.incarnation
    assert shown["last_upload"]
    (row,) = shown["handlers"]
    assert (row["handler"], row["version"], row["state"]) == (
        SAMPLE,
        "1.3.0",
        "Enabled",
    )
    assert row["last_operation"]["exit_status"] == 0
    assert row["last_operation"]["unit"] == "azure-ext-test-enable"
    assert row["message"] == "hello from the goal state"


def test_status_goes_directly_to_a_page_blob_when_the_hostgaplugin_fails(root: Path) -> None:
    scenario = Scenario(
        extensions=[Extension(name=SAMPLE, version="1.3.0", public_settings={"message": "p"})],
        status_blob_type="PageBlob",
        faults=[Fault(endpoint="hostgaplugin", kind="status", path="PUT /status", count=99)],
    )
    with Fabric(scenario) as fabric:
        ctx = vm_context(root, fabric)
        service(ctx, RunningExecutor()).run_once()
        upload = fabric.status_uploads[-1]
        assert (upload.via, upload.blob_type) == ("direct", "PageBlob")
        assert settings_status(handler_entries(last_upload(fabric))[SAMPLE])["status"] == "success"
        assert saved.load(ctx.lib_dir).last_upload_via == "direct"


def test_multi_config_extensions_each_get_settings_status_and_one_install(root: Path) -> None:
    scenario = Scenario(
        extensions=[
            Extension(
                name=SAMPLE,
                version="1.3.0",
                configs=[
                    ExtensionConfig("first", public_settings={"message": "one"}),
                    ExtensionConfig("second", seq_no=4, public_settings={"message": "two"}),
                ],
            )
        ]
    )
    with Fabric(scenario) as fabric:
        ctx = vm_context(root, fabric)
        executor = RunningExecutor()
        service(ctx, executor).run_once()
        ops = [(o.operation, o.extension, o.sequence) for o in executor.ran]
        assert [op for op, _, _ in ops].count("install") == 1
        assert ("enable", "first", 0) in ops
        assert ("enable", "second", 4) in ops
        entries = fabric.status_uploads[-1].document["aggregateStatus"]["handlerAggregateStatus"]
        messages = {
            e["runtimeSettingsStatus"]["extensionName"]: settings_status(e)["formattedMessage"][
                "message"
            ]
            for e in entries
        }
        assert messages == {"first": "one", "second": "two"}
        handler_dir = ctx.lib_dir / f"{SAMPLE}-1.3.0"
        assert (handler_dir / "config/second.4.settings").is_file()
        assert (handler_dir / "config/second.HandlerState").read_text() == "Enabled"


def test_a_stale_heartbeat_makes_the_handler_unresponsive(root: Path, fabric: Fabric) -> None:
    ctx = vm_context(root, fabric)
    svc = service(ctx, RunningExecutor())
    svc.run_once()
    handler_dir = ctx.lib_dir / f"{SAMPLE}-1.3.0"
    manifest = json.loads((handler_dir / "HandlerManifest.json").read_text())
    manifest[0]["handlerManifest"]["reportHeartbeat"] = True
    (handler_dir / "HandlerManifest.json").write_text(json.dumps(manifest))
    beat = handler_dir / "heartbeat.log"
    beat.write_text(json.dumps([{"heartbeat": {"status": "Ready", "code": 0}}]))
    svc.run_once()
    assert handler_entries(last_upload(fabric))[SAMPLE]["status"] == "Ready"
    old = time.time() - 3600
    os.utime(beat, (old, old))
    svc.run_once()
    entry = handler_entries(last_upload(fabric))[SAMPLE]
    assert entry["status"] == "Unresponsive"
    assert "heartbeat" in entry["formattedMessage"]["message"]
