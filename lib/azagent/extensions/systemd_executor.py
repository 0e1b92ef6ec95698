"""The production executor: each handler command a transient systemd service.

An :class:`~azagent.extensions.executor.Operation` runs as
``azure-ext-<handler>-<operation>-<seq>-<id>.service`` (names escaped as
``systemd-escape`` does) in ``azure-vmextensions-<handler>.slice``, a
sub-slice of ``azure-vmextensions.slice`` (a ``-`` in a slice name nests it,
so the handler's own dashes are escaped as ``\\x2d``). ``systemctl
list-units 'azure-ext-*'`` lists the operations in flight and ``systemctl
status <unit>`` shows one, its exit status and its log.

Why a transient *service* with ``KillMode=process`` (not a scope, not
``KillMode=control-group``):

* A daemonizing extension (CustomScript forks a child that must outlive
  ``enable``) keeps its child, as under WALinuxAgent: with
  ``KillMode=control-group`` systemd would kill the child as soon as the
  command exits; ``KillMode=process`` leaves it in the unit's cgroup.
* A scope would keep the operation "running" as long as the daemon lives
  (a restarted service would wait for it), its ``RuntimeMaxSec=`` would then
  kill the daemon, it records no exit status, and its process is a child of
  ``systemd-run`` in our own cgroup. A service is started by PID 1: it
  survives a restart of the extension handler and records ``Result=`` and
  the exit status.
* The timeout: ``RuntimeMaxSec=`` (it applies to ``Type=simple``; it would
  do nothing for ``Type=oneshot``) stops the command with ``Result=timeout``,
  and the executor then sends SIGKILL to the whole cgroup (``systemctl kill``
  reaches every process of the unit whatever its KillMode), so a child that
  called ``setsid`` dies too, which WALinuxAgent's process-group kill misses.
  When the service is down at that moment, the leftovers die when
  :meth:`SystemdExecutor.wait` finds the unit after the restart.

The command is ``/bin/sh -c <shell_line>``, the handler's own command line
as one argument (``$`` doubled: systemd expands ``$VAR`` in ``ExecStart=``
of transient services, ``$$`` is a literal dollar). Its variables are the
contract's (``--setenv``) plus ``PATH``. stdout and stderr go to files in
the handler's log folder; when the command ends, their first 3200
characters go to ``CommandExecution.log``, the Outcome, and the journal
under the handler's name (``systemd-cat --identifier``; systemd's own
messages about the unit carry the unit's name: ``journalctl -u 'azure-ext-*'``).
Transient units that end well are unloaded at once: afterwards
``systemctl list-units 'azure-ext-*'`` shows only what runs or failed, and the
journal, ``CommandExecution.log`` and ``azagent extensions`` show the rest.

Every value from the goal state reaches systemd as one element of an
argument list (:func:`azagent.system.run`), never through a shell.
System floor: runs systemd-run, systemctl and systemd-cat.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Optional

from azagent import system
from azagent.errors import AzagentError, StageFailed
from azagent.extensions.direct_executor import (
    OUTPUT_LIMIT,
    append_command_log,
    head,
    output_files,
    summary,
)
from azagent.extensions.executor import OPERATIONS, Operation, Outcome

log = logging.getLogger("azagent")

UNIT_PREFIX = "azure-ext-"
SLICE = "azure-vmextensions.slice"
SLICE_PREFIX = "azure-vmextensions-"
# Between systemd's stop of a timed-out command and SIGKILL to its main process.
STOP_GRACE = 5
# How long past the operation's timeout systemd-run --wait may take before
# the executor gives up on it and kills the unit itself.
MARGIN = 30.0
# Polling an in-flight unit found after a restart.
POLL_FIRST = 0.2
POLL_MAX = 2.0
# The escaped handler name in a unit name (unit names end at 255 characters).
MAX_ESCAPED = 150
_TAG = " #azagent:"
_VALID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")
_RESULT = re.compile(r"Finished with result: (\S+)")
_MAIN = re.compile(r"Main processes terminated with: code=(\w+)/status=(\S+)")
_ACTIVE = ("active", "activating", "deactivating", "reloading")


class SystemdUnavailable(AzagentError):
    """systemd-run or systemctl cannot be used: no extension can run."""


def escape(text: str, *, slash: str = "-") -> str:
    """``text`` as ``systemd-escape`` writes it (without ``--path``).

    '/' becomes ``slash`` ('-' as systemd-escape does); every byte of a
    character other than ASCII letters, digits, ':', '_' and '.' (and a
    leading '.') becomes ``\\xHH``, so a '-' is ``\\x2d`` and never nests a
    slice.
    """
    out: list[str] = []
    for index, char in enumerate(text):
        if char == "/":
            out.append(slash)
        elif char in _VALID and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def handler_fragment(handler: str) -> str:
    """The escaped handler name in unit and slice names, bounded in length.

    A name whose escaped form is too long is cut (never inside an escape)
    and ends in a digest of the whole name, so two long names stay apart.
    """
    # '/' escaped too: a '-' it would become nests a slice.
    escaped = escape(handler, slash="\\x2f") or "_"
    if len(escaped) <= MAX_ESCAPED:
        return escaped
    digest = hashlib.sha256(handler.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    cut = escaped[: MAX_ESCAPED - 17]
    partial = cut.rfind("\\", len(cut) - 3)
    if partial != -1:
        cut = cut[:partial]
    return f"{cut}_{digest}"


def slice_name(handler: str) -> str:
    """``azure-vmextensions-<handler>.slice``, a sub-slice of azure-vmextensions.slice."""
    return f"{SLICE_PREFIX}{handler_fragment(handler)}.slice"


def unit_name(operation: Operation, short_id: str) -> str:
    """``azure-ext-<handler>-<operation>-<seq>-<id>.service``."""
    handler = handler_fragment(operation.handler)
    op = escape(operation.operation)
    return f"{UNIT_PREFIX}{handler}-{op}-{operation.sequence}-{short_id}.service"


def description(operation: Operation) -> str:
    """What ``systemctl status`` shows, ending in the record :meth:`running` reads back."""
    record = {
        "key": operation.key,
        "handler": operation.handler,
        "version": operation.version,
        "operation": operation.operation,
        "sequence": operation.sequence,
        "extension": operation.extension,
        "cwd": operation.cwd,
        "log_dir": operation.log_dir,
        "timeout": operation.timeout,
    }
    shown = f"Azure VM extension {operation.handler} {operation.version}: {operation.operation}"
    # The first tag is the record's: none can hide in the shown part.
    return (
        shown.replace("#", "?")
        + _TAG
        + json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    )


def _record(text: str) -> Optional[dict[str, Any]]:
    where = text.find(_TAG)
    if where == -1:
        return None
    try:
        record = json.loads(text[where + len(_TAG) :])
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return None
    return record


def _operation(record: dict[str, Any]) -> Operation:
    """An in-flight unit's operation, as far as its record tells (no shell line, no env)."""

    def text(name: str, default: str = "") -> str:
        value = record.get(name)
        return value if isinstance(value, str) else default

    sequence = record.get("sequence")
    timeout = record.get("timeout")
    return Operation(
        handler=text("handler"),
        version=text("version"),
        operation=text("operation"),
        shell_line="",
        cwd=text("cwd", "/"),
        timeout=float(timeout) if isinstance(timeout, (int, float)) else 0.0,
        extension=record.get("extension") if isinstance(record.get("extension"), str) else None,
        sequence=sequence if isinstance(sequence, int) else 0,
        log_dir=record.get("log_dir") if isinstance(record.get("log_dir"), str) else None,
    )


def _seconds(timeout: float) -> int:
    return max(1, math.ceil(timeout))


class SystemdExecutor:
    """Runs each operation as a transient service (see the module docstring).

    ``log_root`` is the handler log folders' parent when an operation names
    no ``log_dir``; ``path`` the PATH commands get.
    """

    def __init__(self, *, log_root: Path = Path("/var/log/azure"), path: str = system.PATH) -> None:
        self.log_root = log_root
        self.path = path

    # -- the argv ---------------------------------------------------------------

    def log_dir(self, operation: Operation) -> Path:
        if operation.log_dir:
            return Path(operation.log_dir)
        return self.log_root / handler_fragment(operation.handler)

    def argv(self, operation: Operation, unit: str) -> list[str]:
        """The systemd-run command for ``operation`` as unit ``unit``."""
        stdout, stderr = output_files(operation, self.log_dir(operation))
        argv = [
            "systemd-run",
            f"--unit={unit}",
            f"--slice={slice_name(operation.handler)}",
            f"--description={description(operation)}",
            "--wait",
            # simple, not exec (systemd 240): RHEL 8 has 239; /bin/sh is always there.
            "--service-type=simple",
            f"--working-directory={operation.cwd}",
            "-p",
            "KillMode=process",
            "-p",
            f"RuntimeMaxSec={_seconds(operation.timeout)}",
            "-p",
            f"TimeoutStopSec={STOP_GRACE}",
            "-p",
            f"SyslogIdentifier={operation.handler}",
            "-p",
            "StandardInput=null",
            "-p",
            f"StandardOutput=file:{stdout}",
            "-p",
            f"StandardError=file:{stderr}",
        ]
        if operation.cpu_quota_percent is not None:
            argv += ["-p", f"CPUQuota={int(operation.cpu_quota_percent)}%"]
        environment = {"PATH": self.path, **operation.environment}
        argv += [f"--setenv={name}={value}" for name, value in environment.items()]
        argv += ["--", "/bin/sh", "-c", operation.shell_line.replace("$", "$$")]
        return argv

    # -- running ----------------------------------------------------------------

    def run(self, operation: Operation) -> Outcome:
        refused = _refusal(operation)
        if refused:
            return Outcome(operation, exit_status=None, reason=refused)
        if system.which("systemd-run") is None or system.which("systemctl") is None:
            raise SystemdUnavailable("systemd-run or systemctl is not installed")
        unit = unit_name(operation, secrets.token_hex(4))
        log_dir = self.log_dir(operation)
        stdout, stderr = output_files(operation, log_dir)
        start = time.monotonic()
        try:
            log_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            for path in (stdout, stderr):  # empty, before systemd opens it for writing
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(path, flags, 0o600))
        except OSError as e:
            outcome = Outcome(
                operation,
                exit_status=None,
                unit=unit,
                reason=f"cannot prepare its log folder: {e.strerror or type(e).__name__}",
            )
            append_command_log(log_dir, operation, outcome)
            return outcome
        log.info(
            "running %s %s of %s as %s",
            operation.operation,
            operation.version,
            operation.handler,
            unit,
        )
        try:
            done = system.run(
                self.argv(operation, unit),
                timeout=operation.timeout + STOP_GRACE + MARGIN,
                check=False,
                what=f"{operation.operation} of {operation.handler}",
            )
        except StageFailed as e:
            # systemd-run --wait did not return: the unit is still there.
            outcome = self._killed(operation, unit, start, f"{e.reason}; killed")
        else:
            result, code, status = _ending(done.stderr)
            if result is None and done.returncode != 0 and "Running as unit" not in done.stderr:
                line = (done.stderr.strip().splitlines() or [""])[-1][:300]
                if "bus" in line.lower():
                    raise SystemdUnavailable(f"systemd-run cannot reach systemd: {line}")
                outcome = Outcome(
                    operation,
                    exit_status=None,
                    duration=time.monotonic() - start,
                    unit=unit,
                    reason=f"systemd-run refused {unit}: {line}",
                )
            else:
                outcome = self._finished(
                    operation,
                    unit=unit,
                    result=result,
                    code=code,
                    status=status,
                    returncode=done.returncode,
                    duration=time.monotonic() - start,
                )
        append_command_log(log_dir, operation, outcome)
        self._journal(operation, outcome)
        return outcome

    def _finished(
        self,
        operation: Operation,
        *,
        unit: str,
        result: Optional[str],
        code: Optional[str],
        status: Optional[str],
        returncode: int,
        duration: float,
    ) -> Outcome:
        timed_out = result == "timeout"
        if timed_out:
            self._kill(unit)  # KillMode=process left the rest of the cgroup
        exit_status: Optional[int] = None
        reason = ""
        if code == "exited" and status is not None and status.isdigit():
            exit_status = int(status)
        elif code in ("killed", "dumped"):
            reason = f"killed by signal {status}"
        elif code is None and result is None:
            exit_status = returncode
        if timed_out:
            exit_status = None
            reason = f"timed out after {operation.timeout:g} s: its cgroup was killed"
        elif result not in (None, "success", "exit-code", "signal", "core-dump") and not reason:
            reason = f"the unit ended with result {result}"
        return self._outcome(
            operation,
            unit=unit,
            exit_status=exit_status,
            timed_out=timed_out,
            duration=duration,
            reason=reason,
        )

    def _outcome(
        self,
        operation: Operation,
        *,
        unit: str,
        exit_status: Optional[int],
        timed_out: bool,
        duration: float,
        reason: str,
    ) -> Outcome:
        stdout, stderr = output_files(operation, self.log_dir(operation))
        return Outcome(
            operation,
            exit_status=exit_status,
            timed_out=timed_out,
            duration=duration,
            output=summary(head(stdout), head(stderr)),
            unit=unit,
            reason=reason,
        )

    def _killed(self, operation: Operation, unit: str, start: float, reason: str) -> Outcome:
        """Kill the unit's whole cgroup; the Outcome of an operation that ran out of time."""
        self._kill(unit)
        return self._outcome(
            operation,
            unit=unit,
            exit_status=None,
            timed_out=True,
            duration=time.monotonic() - start,
            reason=reason,
        )

    def _kill(self, unit: str) -> None:
        """SIGKILL to every process in the unit's cgroup (setsid children included)."""
        with suppress(StageFailed):
            system.run(
                ["systemctl", "kill", "--signal=SIGKILL", unit],
                check=False,
                timeout=30,
                what=f"kill {unit}",
            )

    def _journal(self, operation: Operation, outcome: Outcome) -> None:
        """The head of the output in the journal, under the handler's name."""
        if system.which("systemd-cat") is None:
            return
        ending = (
            "timed out"
            if outcome.timed_out
            else f"exit status {outcome.exit_status}"
            if outcome.exit_status is not None
            else outcome.reason
        )
        text = f"{operation.operation} ({outcome.unit}): {ending}\n{outcome.output}"
        with suppress(StageFailed):
            system.run(
                ["systemd-cat", f"--identifier={operation.handler}", "--priority=info"],
                stdin=text[: 2 * OUTPUT_LIMIT + 200],
                check=False,
                timeout=30,
                what="journal",
            )

    # -- after a restart ---------------------------------------------------------

    def _units(self, states: Optional[str]) -> list[tuple[str, str, dict[str, Any]]]:
        """(unit, active state, record) of azure-ext-* services in ``states`` (None: all)."""
        try:
            done = system.run(
                [
                    "systemctl",
                    "list-units",
                    "--plain",
                    "--no-legend",
                    "--no-pager",
                    "--full",
                    "--type=service",
                    f"--state={states}" if states else "--all",
                    f"{UNIT_PREFIX}*",
                ],
                timeout=30,
                what="list extension units",
            )
        except StageFailed as e:
            raise SystemdUnavailable(e.reason) from None
        found = []
        for line in done.stdout.splitlines():
            fields = line.lstrip("●* ").split(None, 4)
            if len(fields) < 5 or not fields[0].startswith(UNIT_PREFIX):
                continue
            record = _record(fields[4])
            if record is not None:
                found.append((fields[0], fields[2], record))
        return found

    def running(self) -> Sequence[str]:
        """Keys of operations whose command is still running (daemons left behind are not)."""
        keys: list[str] = []
        for _unit, _state, record in self._units("activating,active,deactivating,reloading"):
            if record["key"] not in keys:
                keys.append(record["key"])
        return keys

    def show(self, unit: str) -> dict[str, str]:
        done = system.run(
            [
                "systemctl",
                "show",
                "--property=LoadState,ActiveState,SubState,Result,ExecMainStatus,ExecMainCode",
                unit,
            ],
            check=False,
            timeout=30,
            what=f"show {unit}",
        )
        properties: dict[str, str] = {}
        for line in done.stdout.splitlines():
            name, _, value = line.partition("=")
            properties[name.strip()] = value.strip()
        return properties

    def wait(self, key: str, timeout: float) -> Optional[Outcome]:
        """Wait up to ``timeout`` for a unit found by :meth:`running`; kill it after that."""
        matches = [(u, r) for u, _s, r in self._units(None) if r["key"] == key]
        if not matches:
            return None
        unit, record = matches[-1]
        operation = _operation(record)
        start = time.monotonic()
        deadline = start + max(timeout, 0.0)
        delay = POLL_FIRST
        while True:
            properties = self.show(unit)
            if properties.get("ActiveState") not in _ACTIVE:
                break
            if time.monotonic() >= deadline:
                outcome = self._killed(
                    operation,
                    unit,
                    start,
                    f"still running after {timeout:g} s more: its cgroup was killed",
                )
                append_command_log(self.log_dir(operation), operation, outcome)
                return outcome
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, POLL_MAX)
        duration = time.monotonic() - start
        if properties.get("LoadState") in (None, "", "not-found"):
            outcome = self._outcome(
                operation,
                unit=unit,
                exit_status=None,
                timed_out=False,
                duration=duration,
                reason=f"it ended unobserved; journalctl -u {unit} shows how",
            )
        else:
            code = {"1": "exited", "2": "killed", "3": "dumped"}.get(
                properties.get("ExecMainCode", ""), properties.get("ExecMainCode")
            )
            outcome = self._finished(
                operation,
                unit=unit,
                result=properties.get("Result"),
                code=code,
                status=properties.get("ExecMainStatus"),
                returncode=1,
                duration=duration,
            )
        append_command_log(self.log_dir(operation), operation, outcome)
        return outcome


def _ending(stderr: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """systemd-run --wait's result, and how the main process ended (code, status)."""
    result = _RESULT.search(stderr)
    main = _MAIN.search(stderr)
    return (
        result.group(1) if result else None,
        main.group(1) if main else None,
        main.group(2) if main else None,
    )


def _refusal(operation: Operation) -> str:
    if operation.operation not in OPERATIONS:
        return f"unknown operation {operation.operation!r}"
    values = [operation.handler, operation.version, operation.cwd, operation.shell_line]
    values += [f"{k}={v}" for k, v in operation.environment.items()]
    if operation.log_dir:
        values.append(operation.log_dir)
    if any("\0" in v or "\n" in v for v in values):
        return "a value of the operation contains a NUL or a newline"
    if any(not k or "=" in k for k in operation.environment):
        return "an environment variable has no valid name"
    if not operation.cwd.startswith("/"):
        return f"the working directory {operation.cwd!r} is not absolute"
    return ""
