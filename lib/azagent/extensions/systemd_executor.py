"""The production executor: each handler command a transient systemd service.

An :class:`~azagent.extensions.executor.Operation` runs as
``azure-ext-<handler>-<operation>-<seq>-<id>.service`` (names escaped as
``systemd-escape`` does; ``<id>`` is random per run) in
``azure-vmextensions-<handler>.slice``, a sub-slice of
``azure-vmextensions.slice`` (a ``-`` in a slice name nests it, so the
handler's own dashes are escaped as ``\\x2d``). ``systemctl list-units
'azure-ext-*'`` lists each extension's operations, running or finished, and
``systemctl status <unit>`` shows one, its exit status and its log.

The unit: ``Type=oneshot`` with ``RemainAfterExit=yes`` and
``KillMode=process`` (not a scope, not ``KillMode=control-group``):

* It stays listed after the command ends: ``active (exited)`` when it exited
  0, ``failed`` otherwise (exit status, signal or timeout), so ``systemctl
  status`` shows how it ended and ``systemctl show`` gives the executor the
  exit status (``ExecMainStatus=``).
* A daemonizing extension (CustomScript forks a child that must outlive
  ``enable``) keeps its child, as under WALinuxAgent: ``KillMode=process``
  leaves it in the unit's cgroup, where ``systemctl status`` shows it, and
  ``RemainAfterExit=yes`` means the unit is never stopped when the command
  exits (a stop would be the moment a control-group kill mode strikes).
* ``systemd-run`` (without ``--no-block``) waits for the start job, which
  for a oneshot ends when the command exits or times out; ``--wait`` is not
  used: it waits for the unit to become inactive, which a
  ``RemainAfterExit=yes`` unit never does by itself.
* A scope would keep the operation "running" as long as the daemon lives (a
  restarted service would wait for it), records no exit status, and its
  process is a child of ``systemd-run`` in our own cgroup. A service is
  started by PID 1: it survives a restart of the extension handler.
* The timeout: ``TimeoutStartSec=`` (what bounds a oneshot; ``RuntimeMaxSec=``
  does nothing for it) stops the command with ``Result=timeout``, and the
  executor then sends SIGKILL to the whole cgroup (``systemctl kill``
  reaches every process of the unit whatever its KillMode), so a child that
  called ``setsid`` dies too, which WALinuxAgent's process-group kill misses.
  When the service is down at that moment, the leftovers die when
  :meth:`SystemdExecutor.wait` finds the unit after the restart.

Finished units do not pile up: each run has a unit name of its own (a re-run
of the same operation and sequence number never collides with the unit of
the last run, whose daemon may still hold it), and when it ends the units
of earlier runs of the same handler, extension and operation are let go
(``systemctl stop`` for an exited one, which with ``KillMode=process``
signals no daemon it left; ``systemctl reset-failed`` for a failed one), so
at most one unit per operation (install, enable, update, disable,
uninstall) and extension stays listed. :meth:`SystemdExecutor.discard` lets
go of all of a handler's finished units once it is uninstalled or removed.
A unit whose command still runs is never let go. After a restart of the
service, :meth:`SystemdExecutor.running` tells a command in flight
(``activating``) from a finished one (``active (exited)``, ``failed``).

The command is ``/bin/sh -c <shell_line>``, the handler's own command line
as one argument (``$`` doubled: systemd expands ``$VAR`` in ``ExecStart=``
of transient services, ``$$`` is a literal dollar). Its variables are the
contract's (``--setenv``) plus ``PATH``. stdout and stderr go to files in
the handler's log folder; when the command ends, their first 3200
characters go to ``CommandExecution.log``, the Outcome, and the journal
under the handler's name (``SYSLOG_IDENTIFIER``) and the unit's
(``OBJECT_SYSTEMD_UNIT``, sent by root through systemd-python, azagent.journal.send), so
``systemctl status <unit>`` and ``journalctl -u 'azure-ext-*'`` show them
beside systemd's own messages about the unit (without systemd-python:
``systemd-cat --identifier``, under the handler's name only).

Every value from the goal state reaches systemd as one element of an
argument list (:func:`azagent.system.run`), never through a shell.
System floor: runs systemd-run, systemctl and systemd-cat.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable, Optional

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
from azagent.journal import log

UNIT_PREFIX = "azure-ext-"
SLICE = "azure-vmextensions.slice"
SLICE_PREFIX = "azure-vmextensions-"
# Between systemd's stop of a timed-out command and SIGKILL to its main process.
STOP_GRACE = 5
# How long past the operation's timeout systemd-run may take before the
# executor gives up on it and kills the unit itself.
MARGIN = 30.0
# Polling an in-flight unit found after a restart.
POLL_FIRST = 0.2
POLL_MAX = 2.0
# systemd.journal.send's signature: the message, then FIELD=value keywords.
JournalSend = Callable[..., Any]
# The escaped handler name in a unit name (unit names end at 255 characters).
MAX_ESCAPED = 150
_TAG = " #azagent:"
_VALID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")
# ExecMainCode= of systemctl show: how the command ended (CLD_* of waitid).
_CODES = {"1": "exited", "2": "killed", "3": "dumped"}
_PROPERTIES = "LoadState,ActiveState,SubState,Result,ExecMainStatus,ExecMainCode"


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
    no ``log_dir``; ``path`` the PATH commands get; ``journal_send``
    :func:`azagent.journal.send` (systemd-python's sendv; tests pass a recorder), which
    puts the head of each operation's output in the journal with the unit's
    name (None: through systemd-cat, under the handler's name only).
    """

    def __init__(
        self,
        *,
        log_root: Path = Path("/var/log/azure"),
        path: str = system.PATH,
        journal_send: Optional[JournalSend] = None,
    ) -> None:
        self.log_root = log_root
        self.path = path
        self.journal_send = journal_send

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
            # The start job of a oneshot ends with its command: systemd-run waits for it.
            "--service-type=oneshot",
            f"--working-directory={operation.cwd}",
            "-p",
            "RemainAfterExit=yes",
            "-p",
            "KillMode=process",
            "-p",
            f"TimeoutStartSec={_seconds(operation.timeout)}",
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
        bound = operation.timeout + STOP_GRACE + MARGIN
        try:
            done = system.run(
                self.argv(operation, unit),
                timeout=bound,
                check=False,
                what=f"{operation.operation} of {operation.handler}",
            )
        except StageFailed as e:
            # systemd-run did not return: the unit is still there.
            outcome = self._killed(operation, unit, start, f"{e.reason}; killed")
        else:
            properties = self.show(unit)
            line = (done.stderr.strip().splitlines() or [""])[-1][:300]
            if _unloaded(properties) and done.returncode != 0 and "Job for" not in done.stderr:
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
                outcome = self._watch(
                    operation,
                    unit,
                    start,
                    bound - (time.monotonic() - start),
                    returncode=done.returncode,
                    late=f"timed out after {operation.timeout:g} s: its cgroup was killed",
                    first=properties,
                )
        append_command_log(log_dir, operation, outcome)
        self._journal(operation, outcome)
        self._let_go(operation, keep=unit)
        return outcome

    def _watch(
        self,
        operation: Operation,
        unit: str,
        start: float,
        bound: float,
        *,
        returncode: Optional[int],
        late: str,
        first: Optional[dict[str, str]] = None,
    ) -> Outcome:
        """Wait up to ``bound`` s for ``unit``'s command to end; kill its cgroup after that."""
        deadline = time.monotonic() + max(bound, 0.0)
        delay = POLL_FIRST
        properties = first if first is not None else self.show(unit)
        while _in_flight(properties.get("ActiveState"), properties.get("SubState")):
            if time.monotonic() >= deadline:
                return self._killed(operation, unit, start, late)
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, POLL_MAX)
            properties = self.show(unit)
        duration = time.monotonic() - start
        if _unloaded(properties):
            # Let go of by someone else (systemctl reset-failed, stop): systemd-run's
            # own exit status still says whether the start job succeeded.
            return self._outcome(
                operation,
                unit=unit,
                exit_status=0 if returncode == 0 else None,
                timed_out=False,
                duration=duration,
                reason=""
                if returncode == 0
                else f"it ended unobserved; journalctl -u {unit} shows how",
            )
        code = properties.get("ExecMainCode", "")
        return self._finished(
            operation,
            unit=unit,
            result=properties.get("Result"),
            code=_CODES.get(code, code or None),
            status=properties.get("ExecMainStatus"),
            duration=duration,
        )

    def _finished(
        self,
        operation: Operation,
        *,
        unit: str,
        result: Optional[str],
        code: Optional[str],
        status: Optional[str],
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
        if timed_out:
            exit_status = None
            reason = f"timed out after {operation.timeout:g} s: its cgroup was killed"
        elif result not in (None, "success", "exit-code", "signal", "core-dump") and not reason:
            reason = f"the unit ended with result {result}"
        elif exit_status is None and not reason:
            reason = f"systemd reported no exit status; journalctl -u {unit} shows how it ended"
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
        """The head of the output in the journal, under the handler's name and the unit's."""
        ending = (
            "timed out"
            if outcome.timed_out
            else f"exit status {outcome.exit_status}"
            if outcome.exit_status is not None
            else outcome.reason
        )
        text = f"{operation.operation} ({outcome.unit}): {ending}\n{outcome.output}"
        text = text[: 2 * OUTPUT_LIMIT + 200]
        if self.journal_send is not None:
            fields = {"PRIORITY": "6", "SYSLOG_IDENTIFIER": operation.handler}
            if outcome.unit:
                # A root sender naming the unit: systemctl status and journalctl -u show it.
                fields["OBJECT_SYSTEMD_UNIT"] = outcome.unit
            try:
                self.journal_send(text, **fields)
                return
            except (OSError, ValueError) as e:
                log.debug("cannot write to the journal: %s", e)
        if system.which("systemd-cat") is None:
            return
        with suppress(StageFailed):
            system.run(
                ["systemd-cat", f"--identifier={operation.handler}", "--priority=info"],
                stdin=text,
                check=False,
                timeout=30,
                what="journal",
            )

    # -- after a restart, and letting go ------------------------------------------

    def _units(self, states: Optional[str]) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(unit, active state, sub state, record) of azure-ext-* services in ``states``."""
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
                found.append((fields[0], fields[2], fields[3], record))
        return found

    def running(self) -> Sequence[str]:
        """Keys of operations whose command is still running (daemons left behind are not)."""
        keys: list[str] = []
        for _unit, active, sub, record in self._units("activating,active,deactivating,reloading"):
            if _in_flight(active, sub) and record["key"] not in keys:
                keys.append(record["key"])
        return keys

    def show(self, unit: str) -> dict[str, str]:
        """The unit's state and how its command ended; {} when systemctl cannot tell."""
        try:
            done = system.run(
                ["systemctl", "show", f"--property={_PROPERTIES}", unit],
                check=False,
                timeout=30,
                what=f"show {unit}",
            )
        except StageFailed as e:
            log.warning("cannot ask systemd about %s: %s", unit, e.reason)
            return {}
        properties: dict[str, str] = {}
        for line in done.stdout.splitlines():
            name, _, value = line.partition("=")
            properties[name.strip()] = value.strip()
        return properties

    def wait(self, key: str, timeout: float) -> Optional[Outcome]:
        """Wait up to ``timeout`` for a unit found by :meth:`running`; kill it after that."""
        matches = [(u, a, s, r) for u, a, s, r in self._units(None) if r["key"] == key]
        if not matches:
            return None
        live = [m for m in matches if _in_flight(m[1], m[2])]
        unit, _active, _sub, record = (live or matches)[-1]
        operation = _operation(record)
        outcome = self._watch(
            operation,
            unit,
            time.monotonic(),
            timeout,
            returncode=None,
            late=f"still running after {timeout:g} s more: its cgroup was killed",
        )
        append_command_log(self.log_dir(operation), operation, outcome)
        self._let_go(operation, keep=unit)
        return outcome

    def _let_go(self, operation: Operation, *, keep: str) -> None:
        """Let go of the finished units of earlier runs of ``operation`` (see the docstring)."""
        self._dispose(
            lambda record: (
                record.get("handler") == operation.handler
                and record.get("extension") == operation.extension
                and record.get("operation") == operation.operation
            ),
            keep=keep,
        )

    def discard(self, handler: str) -> None:
        """Let go of every finished unit of ``handler`` (uninstalled, or gone from the goal)."""
        self._dispose(lambda record: record.get("handler") == handler)

    def _dispose(self, chosen: Callable[[dict[str, Any]], bool], *, keep: str = "") -> None:
        try:
            units = self._units(None)
        except SystemdUnavailable as e:
            log.warning("cannot list extension units to let go of old ones: %s", e)
            return
        exited: list[str] = []
        failed: list[str] = []
        for unit, active, sub, record in units:
            if unit == keep or _in_flight(active, sub) or not chosen(record):
                continue
            if active == "active":
                exited.append(unit)
            elif active == "failed":
                failed.append(unit)
        for verb, names in (("stop", exited), ("reset-failed", failed)):
            if not names:
                continue
            log.debug("%s %s", verb, " ".join(names))
            with suppress(StageFailed):
                system.run(
                    ["systemctl", verb, *names],
                    check=False,
                    timeout=60,
                    what=f"{verb} finished extension units",
                )


def _in_flight(active: Optional[str], sub: Optional[str]) -> bool:
    """Whether a unit's command still runs: ``active (exited)`` is a finished oneshot."""
    if active in ("activating", "deactivating", "reloading"):
        return True
    return active == "active" and sub != "exited"


def _unloaded(properties: dict[str, str]) -> bool:
    return properties.get("LoadState") in (None, "", "not-found")


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
