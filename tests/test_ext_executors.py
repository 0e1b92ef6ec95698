"""The executors that run handler commands: direct (children) and systemd (transient units).

The direct executor runs real shell commands in temporary directories. The
systemd executor is checked against fake ``systemd-run``/``systemctl``/
``systemd-cat`` on PATH that record their argv (the host's systemd is never
touched); the fake systemd-run runs the command itself, as systemd would, so
output, exit status and timeouts are real. The real path runs in the VM tier.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from azagent.extensions import systemd_executor
from azagent.extensions.direct_executor import COMMAND_LOG, OUTPUT_LIMIT, DirectExecutor
from azagent.extensions.executor import Executor, Operation
from azagent.extensions.systemd_executor import (
    SystemdExecutor,
    SystemdUnavailable,
    escape,
    slice_name,
    unit_name,
)

HANDLER = "Microsoft.Azure.Extensions.CustomScript"
CONTRACT = {
    "ConfigSequenceNumber": "4",
    "AZURE_GUEST_AGENT_EXTENSION_PATH": "/var/lib/waagent/x",
    "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE": "NOT_RUN",
}


def operation(tmp_path: Path, shell_line: str, **kwargs: Any) -> Operation:
    handler_dir = tmp_path / "handler"
    handler_dir.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "handler": HANDLER,
        "version": "2.1.6",
        "operation": "enable",
        "shell_line": shell_line,
        "cwd": str(handler_dir),
        "environment": CONTRACT,
        "timeout": 20.0,
        "sequence": 4,
        "log_dir": str(tmp_path / "log"),
    }
    values.update(kwargs)
    return Operation(**values)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


# -- direct ------------------------------------------------------------------


def test_direct_exit_status_output_and_command_log(tmp_path: Path) -> None:
    executor: Executor = DirectExecutor()
    ok = executor.run(operation(tmp_path, "echo out; echo err >&2"))
    assert (ok.exit_status, ok.timed_out, ok.succeeded) == (0, False, True)
    assert ok.output == "[stdout]\nout\n\n\n[stderr]\nerr\n"
    failed = executor.run(operation(tmp_path, "printf '%05000d' 0; exit 7", operation="install"))
    assert (failed.exit_status, failed.succeeded) == (7, False)
    stdout = failed.output.split("\n\n[stderr]\n")[0].removeprefix("[stdout]\n")
    assert stdout == "0" * OUTPUT_LIMIT  # the first 3200 characters, as WALinuxAgent keeps
    assert (tmp_path / "log/install.4.stdout").stat().st_size == 5000  # the file has it all
    text = (tmp_path / "log" / COMMAND_LOG).read_text()
    assert "exit status 0" in text
    assert "exit status 7" in text
    assert text.count("0" * OUTPUT_LIMIT) == 1
    assert "0" * (OUTPUT_LIMIT + 1) not in text
    assert stat_mode(tmp_path / "log" / COMMAND_LOG) == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_direct_environment_is_exactly_the_contract(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("AZAGENT_SECRET_OF_THE_SERVICE", "leak")
    dump = tmp_path / "env.txt"
    line = f"exec env -0 > {dump}"
    done = DirectExecutor(path="/usr/bin:/bin").run(operation(tmp_path, line))
    assert done.succeeded, done
    seen = dict(item.split("=", 1) for item in dump.read_text().split("\0") if item)
    shell_own = {"PWD", "SHLVL", "_", "OLDPWD"}  # what /bin/sh itself may export
    assert {k: v for k, v in seen.items() if k not in shell_own} == {
        "PATH": "/usr/bin:/bin",
        **CONTRACT,
    }


def test_direct_cwd_and_stdin(tmp_path: Path) -> None:
    done = DirectExecutor().run(operation(tmp_path, "pwd; cat; echo after-stdin"))
    assert done.output.startswith(f"[stdout]\n{tmp_path / 'handler'}\nafter-stdin\n")
    nul = DirectExecutor().run(operation(tmp_path, "echo a\0b"))
    assert nul.exit_status is None
    assert "cannot start" in nul.reason
    missing = DirectExecutor().run(operation(tmp_path, "true", cwd=str(tmp_path / "nope")))
    assert missing.exit_status is None
    assert "cannot start" in missing.reason


def test_direct_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    line = f"sleep 60 & echo $! > {pids}; sleep 60"
    start = time.monotonic()
    done = DirectExecutor().run(operation(tmp_path, line, timeout=1.0))
    assert time.monotonic() - start < 15
    assert done.timed_out
    assert done.exit_status is None
    assert not done.succeeded
    assert "process group was killed" in done.reason
    assert wait_gone(int(pids.read_text()))
    assert "killed after 1 s (timeout)" in (tmp_path / "log" / COMMAND_LOG).read_text()


def test_direct_a_setsid_child_escapes_as_documented(tmp_path: Path) -> None:
    """Why production uses systemd: a child in its own session outlives the group kill."""
    setsid = shutil.which("setsid")
    if setsid is None:
        pytest.skip("setsid is not installed")
    pids = tmp_path / "pids"
    line = f"{setsid} sh -c 'echo $$ > {pids}; exec sleep 60' & sleep 60"
    done = DirectExecutor().run(operation(tmp_path, line, timeout=1.0))
    assert done.timed_out
    for _ in range(100):
        if pids.exists() and pids.read_text().strip():
            break
        time.sleep(0.05)
    escaped = int(pids.read_text())
    try:
        assert not gone(escaped)
    finally:
        os.kill(escaped, signal.SIGKILL)  # the test started it: the test ends it
    assert DirectExecutor().running() == ()
    assert DirectExecutor().wait("anything", 1.0) is None


# -- systemd: names ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("Microsoft.Azure.Extensions.CustomScript", "Microsoft.Azure.Extensions.CustomScript"),
        ("a-b", "a\\x2db"),
        ("with space", "with\\x20space"),
        ("../etc", "\\x2e.-etc"),
        (".hidden", "\\x2ehidden"),
        ("é", "\\xc3\\xa9"),
        ("a:b_c", "a:b_c"),
    ],
)
def test_escape_follows_systemd_escape(text: str, escaped: str) -> None:
    assert escape(text) == escaped
    tool = shutil.which("systemd-escape")  # a pure string tool: it touches nothing
    if tool is not None:
        done = subprocess.run([tool, "--", text], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == escaped


UNIT = re.compile(r"azure-ext-[A-Za-z0-9:_.\\]+-enable-4-[0-9a-f]{8}\.service")


@pytest.mark.parametrize(
    "handler",
    [
        HANDLER,
        "Contoso-Test-Handler",
        "name with spaces",
        "../../etc/passwd",
        "ünïcode-名前",
        "x" * 200,
    ],
)
def test_hostile_handler_names_make_valid_unit_and_slice_names(
    tmp_path: Path, handler: str
) -> None:
    op = operation(tmp_path, "true", handler=handler)
    unit = unit_name(op, "0123abcd")
    assert UNIT.fullmatch(unit), unit
    assert len(unit) < 200
    piece = slice_name(handler)
    # One dash after the prefix: a sub-slice of azure-vmextensions.slice, nothing deeper.
    assert piece.startswith("azure-vmextensions-")
    assert piece.count("-") == 2
    assert "/" not in unit + piece
    other = unit_name(operation(tmp_path, "true", handler=handler + "y"), "0123abcd")
    assert other != unit  # long names keep apart by their digest


# -- systemd: fakes on PATH ----------------------------------------------------

FAKE_RUN = r"""
import json, os, subprocess, sys
with open(FAKE_RECORD, "a") as f:
    f.write(json.dumps(sys.argv) + "\n")
args = sys.argv[1:]
command = args[args.index("--") + 1:]
env, cwd, props = {}, "/", {}
i = 0
while args[i] != "--":
    a = args[i]
    if a == "-p":
        k, _, v = args[i + 1].partition("="); props[k] = v; i += 2; continue
    if a.startswith("--setenv="):
        k, _, v = a[len("--setenv="):].partition("="); env[k] = v
    if a.startswith("--working-directory="):
        cwd = a.split("=", 1)[1]
    if a.startswith("--unit="):
        unit = a.split("=", 1)[1]
    if a.startswith("--description="):
        description = a.split("=", 1)[1]
    i += 1
refuse = json.load(open(FAKE_STATE)).get("refuse")
if refuse:
    print(refuse, file=sys.stderr); sys.exit(1)
command = [c.replace("$$", "$") for c in command]
out = open(props["StandardOutput"].removeprefix("file:"), "w")
err = open(props["StandardError"].removeprefix("file:"), "w")
child = subprocess.Popen(
    command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
    start_new_session=True,
)
# A oneshot's start job ends when the main process exits (or at TimeoutStartSec=);
# with RemainAfterExit=yes the unit stays: active (exited), or failed.
try:
    code = child.wait(timeout=float(props["TimeoutStartSec"]))
except subprocess.TimeoutExpired:
    os.kill(child.pid, 15); child.wait()
    shown = {"Result": "timeout", "ExecMainCode": "2", "ExecMainStatus": "15"}
else:
    shown = {"Result": "success" if code == 0 else "exit-code", "ExecMainCode": "1",
             "ExecMainStatus": str(code)}
ok = shown["Result"] == "success"
active, sub = ("active", "exited") if ok else ("failed", "failed")
shown.update(LoadState="loaded", ActiveState=active, SubState=sub)
state = json.load(open(FAKE_STATE))
state["units"].append(
    {"name": unit, "active": active, "sub": sub, "description": description, "show": shown}
)
json.dump(state, open(FAKE_STATE, "w"))
if not ok:
    print(f"Job for {unit} failed because the control process exited with error code.",
          file=sys.stderr)
    sys.exit(1)
print("Running as unit: " + unit, file=sys.stderr)
"""

FAKE_CTL = r"""
import json, os, sys
with open(FAKE_RECORD, "a") as f:
    f.write(json.dumps(sys.argv) + "\n")
state = json.load(open(FAKE_STATE))
verb, names = sys.argv[1], sys.argv[2:]
if verb == "list-units":
    wanted = [a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--state=")]
    for u in state["units"]:
        if "--all" in sys.argv or u["active"] in wanted[0]:
            print(u["name"], "loaded", u["active"], u.get("sub", "running"), u["description"])
elif verb == "show":
    mine = [u["show"] for u in state["units"] if u["name"] == names[-1] and "show" in u]
    if mine:
        props = mine[0]
    else:
        props = state["show"].pop(0) if len(state["show"]) > 1 else state["show"][0]
        json.dump(state, open(FAKE_STATE, "w"))
    for k, v in props.items():
        print(f"{k}={v}")
elif verb in ("stop", "reset-failed"):
    # Stopping an exited oneshot or resetting a failed one unloads it (nothing left in it).
    gone = "active" if verb == "stop" else "failed"
    state["units"] = [
        u for u in state["units"] if not (u["name"] in names and u["active"] == gone)
    ]
    json.dump(state, open(FAKE_STATE, "w"))
"""

FAKE_CAT = r"""
import json, os, sys
with open(FAKE_RECORD, "a") as f:
    f.write(json.dumps(sys.argv + [sys.stdin.read()]) + "\n")
"""


class Fakes:
    def __init__(self, tmp_path: Path, monkeypatch: Any) -> None:
        self.bin = tmp_path / "fakebin"
        self.bin.mkdir()
        self.record = tmp_path / "record.jsonl"
        self.state = tmp_path / "state.json"
        self.set_state(units=[], show=[{"LoadState": "not-found", "ActiveState": "inactive"}])
        for name, body in (
            ("systemd-run", FAKE_RUN),
            ("systemctl", FAKE_CTL),
            ("systemd-cat", FAKE_CAT),
        ):
            path = self.bin / name
            # system.run passes PATH and LC_ALL only: the fakes know their files.
            where = f"FAKE_RECORD = {str(self.record)!r}\nFAKE_STATE = {str(self.state)!r}\n"
            path.write_text(f"#!{sys.executable}\n{where}{body}")
            path.chmod(0o755)
        # The fakes alone: the host's systemd-run and systemctl are never reached.
        monkeypatch.setenv("PATH", str(self.bin))

    def set_state(self, **state: Any) -> None:
        self.state.write_text(json.dumps(state))

    def units(self) -> list[dict[str, Any]]:
        """What the fake systemd has loaded now (systemd-run adds, stop/reset-failed unload)."""
        units: list[dict[str, Any]] = json.loads(self.state.read_text())["units"]
        return units

    def calls(self, name: Optional[str] = None) -> list[list[str]]:
        if not self.record.exists():
            return []
        found = [json.loads(line) for line in self.record.read_text().splitlines()]
        return [c for c in found if name is None or os.path.basename(c[0]) == name]


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: Any) -> Fakes:
    return Fakes(tmp_path, monkeypatch)


def test_systemd_run_argv_is_exact(tmp_path: Path, fakes: Fakes) -> None:
    op = operation(tmp_path, 'echo "$HOME-$ConfigSequenceNumber"; exit 3', cpu_quota_percent=25)
    done = SystemdExecutor(path="/usr/bin:/bin").run(op)
    [argv] = fakes.calls("systemd-run")
    unit = done.unit or ""
    assert re.fullmatch(rf"azure-ext-{re.escape(HANDLER)}-enable-4-[0-9a-f]{{8}}\.service", unit)
    log_dir = tmp_path / "log"
    assert argv[1:] == [
        f"--unit={unit}",
        f"--slice=azure-vmextensions-{HANDLER}.slice",
        f"--description={systemd_executor.description(op)}",
        "--service-type=oneshot",
        f"--working-directory={tmp_path / 'handler'}",
        "-p", "RemainAfterExit=yes",
        "-p", "KillMode=process",
        "-p", "TimeoutStartSec=20",
        "-p", f"TimeoutStopSec={systemd_executor.STOP_GRACE}",
        "-p", f"SyslogIdentifier={HANDLER}",
        "-p", "StandardInput=null",
        "-p", f"StandardOutput=file:{log_dir}/enable.4.stdout",
        "-p", f"StandardError=file:{log_dir}/enable.4.stderr",
        "-p", "CPUQuota=25%",
        "--setenv=PATH=/usr/bin:/bin",
        *[f"--setenv={k}={v}" for k, v in CONTRACT.items()],
        "--",
        "/bin/sh", "-c", 'echo "$$HOME-$$ConfigSequenceNumber"; exit 3',
    ]  # fmt: skip
    # The fake ran it as systemd would: $$ is a literal dollar for the shell.
    assert (done.exit_status, done.timed_out) == (3, False)
    assert done.output.startswith("[stdout]\n-4\n")
    assert "exit status 3" in (log_dir / COMMAND_LOG).read_text()
    [journal] = fakes.calls("systemd-cat")
    assert journal[1] == f"--identifier={HANDLER}"
    assert "exit status 3" in journal[-1]
    assert "-4" in journal[-1]
    # The exit status came from systemd's record of the unit, which stays listed (failed).
    assert ["show", f"--property={systemd_executor._PROPERTIES}", unit] in [
        c[1:] for c in fakes.calls("systemctl")
    ]
    assert [(u["name"], u["active"]) for u in fakes.units()] == [(unit, "failed")]


def test_systemd_hostile_names_stay_single_arguments(tmp_path: Path, fakes: Fakes) -> None:
    handler = "evil name; rm -rf / -- ../x"
    op = operation(tmp_path, "echo ok", handler=handler, log_dir=None)
    done = SystemdExecutor(log_root=tmp_path / "logs").run(op)
    assert done.succeeded, done
    [argv] = fakes.calls("systemd-run")
    assert f"--slice={slice_name(handler)}" in argv
    assert f"SyslogIdentifier={handler}" in argv
    # Without a log_dir from the loop, the folder is named by the escaped handler.
    [folder] = (tmp_path / "logs").iterdir()
    assert folder.name == systemd_executor.handler_fragment(handler)
    refused = SystemdExecutor().run(operation(tmp_path, "echo\0x"))
    assert refused.exit_status is None
    assert "NUL" in refused.reason
    assert len(fakes.calls("systemd-run")) == 1


def test_systemd_timeout_kills_the_cgroup(tmp_path: Path, fakes: Fakes) -> None:
    done = SystemdExecutor().run(operation(tmp_path, "sleep 30", timeout=1))
    assert done.timed_out
    assert done.exit_status is None
    assert not done.succeeded
    assert "cgroup was killed" in done.reason
    assert ["systemctl", "kill", "--signal=SIGKILL", done.unit] in [
        [os.path.basename(c[0]), *c[1:]] for c in fakes.calls("systemctl")
    ]


def test_systemd_unavailable_or_refusing(tmp_path: Path, fakes: Fakes, monkeypatch: Any) -> None:
    fakes.set_state(refuse="Failed to connect to bus: No such file or directory")
    with pytest.raises(SystemdUnavailable, match="cannot reach systemd"):
        SystemdExecutor().run(operation(tmp_path, "true"))
    fakes.set_state(refuse="Failed to start transient service unit: Invalid argument")
    refused = SystemdExecutor().run(operation(tmp_path, "true"))
    assert refused.exit_status is None
    assert "Invalid argument" in refused.reason
    (fakes.bin / "systemd-run").unlink()
    with pytest.raises(SystemdUnavailable, match="not installed"):
        SystemdExecutor().run(operation(tmp_path, "true"))


def unit_entry(
    op: Operation, active: str, short: str = "0123abcd", sub: str = "running"
) -> dict[str, str]:
    return {
        "name": unit_name(op, short),
        "active": active,
        "sub": sub,
        "description": systemd_executor.description(op),
    }


def test_systemd_running_and_wait_after_a_restart(tmp_path: Path, fakes: Fakes) -> None:
    enable = operation(tmp_path, "x")
    forged = 'evil #azagent:{"key":"forged"}'  # a handler name cannot forge the record
    install = operation(
        tmp_path, "y", handler=forged, operation="install", extension="first", sequence=2
    )
    done_op = operation(tmp_path, "z", operation="disable")
    fakes.set_state(
        units=[
            unit_entry(enable, "active"),
            unit_entry(install, "activating", "4567cdef"),
            unit_entry(done_op, "failed", "89ab0123"),
            {"name": "azure-ext-foreign.service", "active": "active", "description": "not ours"},
        ],
        show=[
            {"LoadState": "loaded", "ActiveState": "active"},
            {
                "LoadState": "loaded",
                "ActiveState": "failed",
                "Result": "exit-code",
                "ExecMainCode": "1",
                "ExecMainStatus": "2",
            },
        ],
    )
    executor = SystemdExecutor()
    assert list(executor.running()) == [enable.key, install.key]
    [listing] = fakes.calls("systemctl")
    assert "azure-ext-*" in listing
    assert "--state=activating,active,deactivating,reloading" in listing
    (tmp_path / "log").mkdir()
    (tmp_path / "log/enable.4.stdout").write_text("written before the restart\n")
    outcome = executor.wait(enable.key, 10)
    assert outcome is not None
    assert (outcome.exit_status, outcome.timed_out) == (2, False)
    assert outcome.operation.key == enable.key
    assert outcome.unit == unit_name(enable, "0123abcd")
    assert "written before the restart" in outcome.output
    assert executor.wait("nobody_1.0_enable_0", 1) is None


def test_systemd_wait_kills_what_outlives_its_bound(tmp_path: Path, fakes: Fakes) -> None:
    op = operation(tmp_path, "x")
    fakes.set_state(
        units=[unit_entry(op, "active")], show=[{"LoadState": "loaded", "ActiveState": "active"}]
    )
    start = time.monotonic()
    outcome = SystemdExecutor().wait(op.key, 0.5)
    assert time.monotonic() - start < 10
    assert outcome is not None
    assert outcome.timed_out
    kills = [c for c in fakes.calls("systemctl") if c[1] == "kill"]
    assert kills == [[kills[0][0], "kill", "--signal=SIGKILL", unit_name(op, "0123abcd")]]
    # A timed-out unit found after a restart: its leftovers are killed too.
    fakes.set_state(
        units=[unit_entry(op, "failed")],
        show=[
            {
                "LoadState": "loaded",
                "ActiveState": "failed",
                "Result": "timeout",
                "ExecMainCode": "2",
                "ExecMainStatus": "15",
            }
        ],
    )
    late = SystemdExecutor().wait(op.key, 5)
    assert late is not None
    assert late.timed_out
    assert len([c for c in fakes.calls("systemctl") if c[1] == "kill"]) == 2


def names(units: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(u["name"], u["active"]) for u in units]


def test_systemd_finished_units_stay_listed_and_earlier_runs_are_let_go(
    tmp_path: Path, fakes: Fakes
) -> None:
    executor = SystemdExecutor()
    other_handler = operation(tmp_path, "x", handler="Other.Handler")
    install = operation(tmp_path, "x", operation="install")
    in_flight = operation(tmp_path, "x")
    fakes.set_state(
        units=[
            unit_entry(other_handler, "active", "00000001", sub="exited"),
            unit_entry(install, "failed", "00000002", sub="failed"),
            # An enable still running (a twin from before a restart): never let go of.
            unit_entry(in_flight, "activating", "00000003", sub="start"),
        ],
        show=[{"LoadState": "not-found"}],
    )
    kept = names(fakes.units())
    first = executor.run(operation(tmp_path, "exit 0"))
    assert first.succeeded
    assert names(fakes.units()) == [*kept, (first.unit, "active")]
    # The same operation and sequence number again: a unit of its own, the last one let go.
    failed = executor.run(operation(tmp_path, "exit 4"))
    assert failed.unit != first.unit
    assert failed.exit_status == 4
    assert ["stop", first.unit] in [c[1:] for c in fakes.calls("systemctl")]
    assert names(fakes.units()) == [*kept, (failed.unit, "failed")]
    again = executor.run(operation(tmp_path, "exit 0"))
    assert ["reset-failed", failed.unit] in [c[1:] for c in fakes.calls("systemctl")]
    assert names(fakes.units()) == [*kept, (again.unit, "active")]
    # Each multi-config extension keeps its own latest unit.
    ext = executor.run(operation(tmp_path, "exit 0", extension="first"))
    assert names(fakes.units()) == [*kept, (again.unit, "active"), (ext.unit, "active")]


def test_systemd_running_tells_a_finished_oneshot_from_one_in_flight(
    tmp_path: Path, fakes: Fakes
) -> None:
    exited = operation(tmp_path, "x", sequence=1)
    failed = operation(tmp_path, "x", sequence=2)
    starting = operation(tmp_path, "x", sequence=3)
    stopping = operation(tmp_path, "x", sequence=5)
    fakes.set_state(
        units=[
            unit_entry(exited, "active", "00000001", sub="exited"),
            unit_entry(failed, "failed", "00000002", sub="failed"),
            unit_entry(starting, "activating", "00000003", sub="start"),
            unit_entry(stopping, "deactivating", "00000005", sub="stop-sigterm"),
        ],
        show=[{"LoadState": "not-found"}],
    )
    executor = SystemdExecutor()
    # A restart waits for what still runs, and does not run it twice; what ended is done.
    assert list(executor.running()) == [starting.key, stopping.key]
    fakes.set_state(
        units=[
            unit_entry(starting, "failed", "00000004", sub="failed"),
            unit_entry(starting, "activating", "00000003", sub="start"),
        ],
        show=[
            {"LoadState": "loaded", "ActiveState": "activating", "SubState": "start"},
            {
                "LoadState": "loaded",
                "ActiveState": "active",
                "SubState": "exited",
                "Result": "success",
                "ExecMainCode": "1",
                "ExecMainStatus": "0",
            },
        ],
    )
    outcome = executor.wait(starting.key, 10)
    assert outcome is not None
    assert outcome.succeeded
    # The unit in flight was the one waited for; the failed twin of an earlier run is let go.
    assert outcome.unit == unit_name(starting, "00000003")
    assert ["reset-failed", unit_name(starting, "00000004")] in [
        c[1:] for c in fakes.calls("systemctl")
    ]


def test_systemd_discard_lets_go_of_a_handlers_finished_units_only(
    tmp_path: Path, fakes: Fakes
) -> None:
    mine = [
        unit_entry(operation(tmp_path, "x"), "active", "00000001", sub="exited"),
        unit_entry(operation(tmp_path, "x", operation="install"), "failed", "00000002", "failed"),
        unit_entry(
            operation(tmp_path, "x", operation="disable"), "activating", "00000003", "start"
        ),
    ]
    others = [unit_entry(operation(tmp_path, "x", handler="Other.H"), "active", "0004", "exited")]
    fakes.set_state(units=[*mine, *others], show=[{"LoadState": "not-found"}])
    SystemdExecutor().discard(HANDLER)
    assert names(fakes.units()) == names([mine[2], *others])
    verbs = [c[1:] for c in fakes.calls("systemctl") if c[1] in ("stop", "reset-failed")]
    assert verbs == [["stop", mine[0]["name"]], ["reset-failed", mine[1]["name"]]]


def test_systemd_a_daemonizing_enable_returns_and_its_child_keeps_running(
    tmp_path: Path, fakes: Fakes
) -> None:
    pid_file = tmp_path / "daemon.pid"
    line = f"setsid sleep 30 >/dev/null 2>&1 </dev/null & echo $! > {pid_file}; echo forked"
    start = time.monotonic()
    done = SystemdExecutor().run(operation(tmp_path, line))
    try:
        assert time.monotonic() - start < 15
        assert done.succeeded, done
        assert "forked" in done.output
        pid = int(pid_file.read_text())
        assert not gone(pid)
        # Nothing killed the unit's cgroup: the daemon belongs to the finished enable.
        assert not [c for c in fakes.calls("systemctl") if c[1] in ("kill", "stop")]
        assert names(fakes.units()) == [(done.unit, "active")]
    finally:
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_systemd_output_reaches_the_journal_under_the_units_name(
    tmp_path: Path, fakes: Fakes
) -> None:
    sent: list[tuple[str, dict[str, str]]] = []
    op = operation(tmp_path, "echo 'line one'; echo 'line two' >&2; exit 3")
    done = SystemdExecutor(journal_send=lambda m, **f: sent.append((m, f))).run(op)
    [(message, fields)] = sent
    assert fields["OBJECT_SYSTEMD_UNIT"] == done.unit
    assert fields["SYSLOG_IDENTIFIER"] == HANDLER
    assert message.startswith(f"enable ({done.unit}): exit status 3\n")
    assert "line one" in message
    assert "line two" in message
    assert fakes.calls("systemd-cat") == []
    # No journal to send to: systemd-cat, under the handler's name.
    SystemdExecutor().run(op)
    [journal] = fakes.calls("systemd-cat")
    assert journal[1] == f"--identifier={HANDLER}"
