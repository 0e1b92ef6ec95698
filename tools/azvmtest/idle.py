"""``tools/vmtest bench --idle SECONDS``: the extension handler's idle footprint.

After a boot with one enabled extension (WALinuxAgent's sample handler with a
public setting), once the emulator has received that extension's success
status, the bench reads the handler's unit twice inside the guest, SECONDS
apart, over the SSH session it keeps open, and takes the difference:

- azagent: ``azure-extensions.service``, its main process is the handler;
- waagent: ``walinuxagent.service``, the handler is its ``-run-exthandlers``
  process (the main process is the daemon that starts it).

Each reading is the guest's uptime, the unit's main PID and cgroup, the
cgroup's ``memory.current`` and ``cpu.stat`` usage, and ``/proc/<pid>/stat``
and the command line of every process in the cgroup. This module parses the
readings and turns two of them into figures (pure: tested without a guest).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

UNITS = {"azagent": "azure-extensions.service", "waagent": "walinuxagent.service"}
# The handler's process within the unit, by a word of its command line (None: the main process).
HANDLER_ARG: dict[str, Optional[str]] = {"azagent": None, "waagent": "-run-exthandlers"}
BOUND = 300.0  # seconds after the VM is usable for the extension's success status
SAMPLE_END = "bench-idle-end"
MIB = 1024 * 1024


def sample_command(unit: str) -> str:
    """Shell (bash, any user) that prints one reading of ``unit``, one fact a line."""
    return (
        f"iu={unit}; echo uptime=$(cut -d' ' -f1 /proc/uptime);"
        " echo clk_tck=$(getconf CLK_TCK); echo pagesize=$(getconf PAGESIZE);"
        " echo mainpid=$(systemctl show -p MainPID --value $iu);"
        " cg=$(systemctl show -p ControlGroup --value $iu); echo cgroup=$cg;"
        ' if [ -n "$cg" ]; then d=/sys/fs/cgroup$cg;'
        " echo memory.current=$(cat $d/memory.current 2>/dev/null);"
        " echo cpu.usage_usec=$(sed -n 's/^usage_usec //p' $d/cpu.stat 2>/dev/null);"
        " for p in $(cat $d/cgroup.procs 2>/dev/null); do"
        ' echo "stat $(cat /proc/$p/stat 2>/dev/null)";'
        " echo \"cmd $p $(tr '\\0' ' ' </proc/$p/cmdline 2>/dev/null)\"; done; fi;"
        f" echo {SAMPLE_END}"
    )


@dataclass
class Process:
    pid: int
    comm: str
    starttime: int  # clock ticks after boot: with the pid, the process's identity
    cpu_ticks: int  # utime + stime
    rss_pages: int
    cmdline: str = ""


@dataclass
class Reading:
    uptime: float
    clk_tck: int
    pagesize: int
    main_pid: int
    cgroup: str
    memory_current: Optional[int]  # bytes; None when the memory controller is off
    cgroup_cpu_usec: Optional[int]
    processes: dict[int, Process] = field(default_factory=dict)


def parse_stat(line: str) -> Process:
    """One /proc/<pid>/stat line (the command name may hold spaces and parentheses)."""
    head, paren, tail = line.strip().rpartition(")")
    pid_text, open_paren, comm = head.partition(" (")
    if not paren or not open_paren:
        raise ValueError(f"not a /proc/<pid>/stat line: {line[:80]!r}")
    rest = tail.split()
    # rest[0] is field 3 (state): utime 14, stime 15, starttime 22, rss 24.
    if len(rest) < 22:
        raise ValueError(f"a /proc/<pid>/stat line with {len(rest) + 2} fields: {line[:80]!r}")
    return Process(
        pid=int(pid_text),
        comm=comm,
        starttime=int(rest[19]),
        cpu_ticks=int(rest[11]) + int(rest[12]),
        rss_pages=int(rest[21]),
    )


def _int(text: str) -> Optional[int]:
    return int(text) if text.strip().isdigit() else None


def parse_reading(text: str) -> Reading:
    """A reading as sample_command printed it; ValueError when it is not whole."""
    facts: dict[str, str] = {}
    processes: dict[int, Process] = {}
    commands: dict[int, str] = {}
    ended = False
    for line in text.splitlines():
        if line.strip() == SAMPLE_END:
            ended = True
            break
        if line.startswith("stat "):
            if line[5:].strip():  # empty: the process ended between listing and reading
                process = parse_stat(line[5:])
                processes[process.pid] = process
        elif line.startswith("cmd "):
            number, _, command = line[4:].partition(" ")
            if number.isdigit():
                commands[int(number)] = command.strip()
        elif "=" in line:
            key, _, value = line.partition("=")
            facts[key.strip()] = value.strip()
    if not ended:
        raise ValueError("the reading is cut short")
    for pid, command in commands.items():
        if pid in processes:
            processes[pid].cmdline = command
    try:
        return Reading(
            uptime=float(facts["uptime"]),
            clk_tck=int(facts["clk_tck"]),
            pagesize=int(facts["pagesize"]),
            main_pid=int(facts.get("mainpid") or 0),
            cgroup=facts.get("cgroup", ""),
            memory_current=_int(facts.get("memory.current", "")),
            cgroup_cpu_usec=_int(facts.get("cpu.usage_usec", "")),
            processes=processes,
        )
    except (KeyError, ValueError) as e:
        raise ValueError(f"the reading lacks {e}") from None


def handler_pid(agent: str, reading: Reading) -> Optional[int]:
    """The extension handler's process in the reading (None: not running)."""
    arg = HANDLER_ARG[agent]
    if arg is None:
        return reading.main_pid if reading.main_pid in reading.processes else None
    found = [p.pid for p in reading.processes.values() if arg in p.cmdline.split()]
    return found[0] if len(found) == 1 else None


@dataclass
class Idle:
    """The footprint over one window; sizes in MiB, CPU in seconds."""

    window: Optional[float] = None  # the guest's uptime between the two readings
    handler_rss: Optional[float] = None  # the handler process, at the end
    unit_rss: Optional[float] = None  # every process in the unit's cgroup, at the end
    unit_memory: Optional[float] = None  # the cgroup's memory.current, at the end
    handler_cpu: Optional[float] = None  # the handler process, in the window
    unit_cpu: Optional[float] = None  # the cgroup (its processes, ended ones too), in the window
    requests: Optional[int] = None  # requests the emulator received in the window
    processes: int = 0  # in the unit's cgroup at the end
    status_after: Optional[float] = None  # the success status, seconds from qemu start
    failures: list[str] = field(default_factory=list)


def footprint(agent: str, before: Reading, after: Reading, requests: int) -> Idle:
    """The figures of one window from its two readings."""
    idle = Idle(window=round(after.uptime - before.uptime, 2), requests=requests)
    idle.processes = len(after.processes)
    pages = sum(p.rss_pages for p in after.processes.values())
    idle.unit_rss = round(pages * after.pagesize / MIB, 1)
    if after.memory_current is not None:
        idle.unit_memory = round(after.memory_current / MIB, 1)
    if before.cgroup_cpu_usec is not None and after.cgroup_cpu_usec is not None:
        idle.unit_cpu = round((after.cgroup_cpu_usec - before.cgroup_cpu_usec) / 1e6, 3)
    if before.cgroup != after.cgroup or not after.cgroup:
        idle.failures.append(f"the unit's cgroup changed: {before.cgroup!r} -> {after.cgroup!r}")
    first, last = handler_pid(agent, before), handler_pid(agent, after)
    if first is None or last is None:
        idle.failures.append(
            f"no extension handler process in {UNITS[agent]} "
            f"(before: {first}, after: {last}; {sorted(after.processes)})"
        )
        return idle
    start, end = before.processes[first], after.processes[last]
    if (first, start.starttime) != (last, end.starttime):
        idle.failures.append(f"the handler process changed in the window: {first} -> {last}")
        return idle
    idle.handler_rss = round(end.rss_pages * after.pagesize / MIB, 1)
    idle.handler_cpu = round((end.cpu_ticks - start.cpu_ticks) / after.clk_tck, 2)
    return idle


def sample_succeeded(document: Any, name: str, seq: int, message: str) -> bool:
    """A status document shows handler ``name`` Ready, ``seq`` a success echoing ``message``
    (the sample handler puts its public setting ``message`` in its status)."""
    aggregate = document.get("aggregateStatus") if isinstance(document, dict) else None
    entries = aggregate.get("handlerAggregateStatus") if isinstance(aggregate, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("handlerName") != name:
            continue
        runtime = entry.get("runtimeSettingsStatus")
        if not isinstance(runtime, dict):
            continue
        settings = runtime.get("settingsStatus")
        status = settings.get("status") if isinstance(settings, dict) else None
        if (
            entry.get("status") == "Ready"
            and runtime.get("sequenceNumber") == seq
            and isinstance(status, dict)
            and status.get("status") == "success"
            and status.get("formattedMessage", {}).get("message") == message
        ):
            return True
    return False


FIELDS = (
    "handler_rss",
    "unit_rss",
    "unit_memory",
    "handler_cpu",
    "unit_cpu",
    "requests",
    "window",
)


def summary(idles: Sequence[Idle]) -> dict[str, object]:
    """Medians over an agent's windows that did not fail, as --json writes them."""
    good = [i for i in idles if not i.failures]
    entry: dict[str, object] = {}
    for name in FIELDS:
        values = [v for i in good if (v := getattr(i, name)) is not None]
        entry[name] = round(statistics.median(values), 3) if values else None
    entry["windows"] = len(good)
    return entry


def table(result: dict[str, dict[str, object]]) -> str:
    """One row per agent that has idle figures (result: bench.summary's, with "idle")."""

    def cell(value: object, digits: int = 1) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "-"
        return f"{value:g}" if digits == 0 else f"{value:.{digits}f}"

    lines = [
        "| agent | unit | handler RSS MiB | unit RSS MiB | unit memory.current MiB "
        "| handler CPU s | unit CPU s | requests | window s | windows |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for agent, entry in result.items():
        idle = entry.get("idle")
        if not isinstance(idle, dict):
            continue
        lines.append(
            f"| {agent} | {UNITS.get(agent, '-')} | {cell(idle.get('handler_rss'))} "
            f"| {cell(idle.get('unit_rss'))} | {cell(idle.get('unit_memory'))} "
            f"| {cell(idle.get('handler_cpu'), 2)} | {cell(idle.get('unit_cpu'), 2)} "
            f"| {cell(idle.get('requests'), 0)} | {cell(idle.get('window'))} "
            f"| {idle.get('windows')} |"
        )
    return "\n".join(lines)
