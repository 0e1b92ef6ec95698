"""``tools/vmtest bench``: azagent, cloud-init, WALinuxAgent and no agent, side by side.

Every agent boots the same Debian 12 base image (its own variant, see peers.py)
under the same qemu settings against the same emulated fabric and scenario
(user, password, SSH key, hostname, customData), boots interleaved
(a, c, w, n, a, c, w, n, ...). Per boot, in seconds from qemu's start, all seen
from the host:

- lease: the first DHCPACK that qemu's DHCP server sends the guest, as it
  appears in qemu's packet dump of the guest's network (``-object filter-dump``),
  polled every 0.1 s;
- ready: the arrival of the first accepted health report (Ready) at the emulator;
- ssh: the first SSH login with the scenario's key that runs a command (polled
  from the host once the lease is seen; the moment the guest's first output line
  arrives);
- cpu: the CPU time systemd accounted to the agent's units (stopped ones too),
  read over SSH at the moment the VM is usable, usable = max(ready, ssh).

With ``--idle SECONDS`` (off by default), azagent and waagent boot with one
enabled extension instead, and after the boot figures the bench measures the
extension handler's footprint over SECONDS once the extension reported
success (idle.py).

The same packet dump proves that nothing in the guest sent a packet to a real
platform address. The limit is the bare image's ssh plus the cost of one
goal-state request and one health report, made from inside that guest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from azfabric import media
from azfabric.scenario import Extension, PublicKey, Scenario
from azfabric.server import Fabric

from azvmtest import idle, image, peers
from azvmtest.boot import (
    IMDS_IP,
    WIRESERVER_IP,
    BootResult,
    BootSpec,
    free_port,
    qemu_command,
    ssh_argv,
)

BOUND = 300.0  # seconds from qemu start for a boot to be usable
POLL = 0.1
# The agent's units, by glob, whose CPU time counts (stopped ones included).
UNIT_GLOBS = {
    "azagent": ("azure-*.service",),
    "cloud-init": ("cloud-init*.service", "cloud-config.service", "cloud-final.service"),
    "waagent": ("walinuxagent*.service", "waagent*.service"),
    "none": (),
}
FORBIDDEN = {peers.REAL_WIRESERVER, peers.REAL_IMDS}
LOGIN_MARK = "bench-login-ok"
READ_END = "bench-read-end"
# The MAC of the one interface in the emulated IMDS's network metadata: cloud-init
# configures the network from it and waits for a NIC with that address.
NIC_MAC = "00:0d:3a:00:00:00"


# -- the guest's packets (pure) --------------------------------------------------------


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def pcap_packets(data: bytes) -> list[tuple[float, bytes]]:
    """(timestamp, frame) of each whole record of a pcap file (a partial last one is left)."""
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        endian = "<"
    elif magic == b"\xa1\xb2\xc3\xd4":
        endian = ">"
    else:
        raise ValueError("not a pcap file")
    packets = []
    offset = 24
    while offset + 16 <= len(data):
        sec, usec, length, _ = struct.unpack_from(endian + "IIII", data, offset)
        if offset + 16 + length > len(data):
            break
        packets.append((sec + usec / 1e6, data[offset + 16 : offset + 16 + length]))
        offset += 16 + length
    return packets


def is_dhcp_ack(frame: bytes) -> bool:
    """An Ethernet frame carrying a DHCPACK (UDP 67 -> 68, option 53 = 5)."""
    if len(frame) < 14 + 20 + 8 + 240 or frame[12:14] != b"\x08\x00":
        return False
    ihl = (frame[14] & 0x0F) * 4
    if frame[14 + 9] != 17:
        return False
    udp = 14 + ihl
    sport, dport = struct.unpack_from("!HH", frame, udp)
    if (sport, dport) != (67, 68):
        return False
    options = udp + 8 + 236
    if frame[options : options + 4] != b"\x63\x82\x53\x63":
        return False
    i = options + 4
    while i < len(frame):
        code = frame[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(frame):
            break
        size = frame[i + 1]
        if code == 53 and size >= 1 and i + 2 < len(frame):
            return frame[i + 2] == 5
        i += 2 + size
    return False


def destination(frame: bytes) -> Optional[str]:
    """The IPv4 address a frame is for: an IPv4 packet's destination, an ARP query's target."""
    if len(frame) >= 34 and frame[12:14] == b"\x08\x00":
        return _ip(frame[30:34])
    if len(frame) >= 42 and frame[12:14] == b"\x08\x06":
        return _ip(frame[38:42])
    return None


def forbidden_packets(packets: list[tuple[float, bytes]]) -> list[str]:
    """Each address of a real platform endpoint that a frame on the guest's network was for."""
    return sorted({d for _, f in packets if (d := destination(f)) in FORBIDDEN})


# -- figures (pure) ------------------------------------------------------------------


@dataclass
class Boot:
    agent: str
    round: int
    lease: Optional[float] = None
    ready: Optional[float] = None
    ssh: Optional[float] = None
    cpu: Optional[float] = None
    units: int = 0
    extra: Optional[float] = None  # none only: one goal-state request + one health report
    failures: list[str] = field(default_factory=list)
    idle: Optional[idle.Idle] = None  # --idle: the extension handler's footprint

    @property
    def usable(self) -> Optional[float]:
        if self.agent == "none":
            return self.ssh
        if self.ready is None or self.ssh is None:
            return None
        return max(self.ready, self.ssh)


def median(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def summary(boots: Sequence[Boot]) -> dict[str, dict[str, object]]:
    """Medians per agent, as --json writes them."""
    result: dict[str, dict[str, object]] = {}
    for agent in dict.fromkeys(b.agent for b in boots):
        mine = [b for b in boots if b.agent == agent]
        fields = ("lease", "ssh") if agent == "none" else ("lease", "ready", "ssh", "cpu")
        entry: dict[str, object] = {f: median([getattr(b, f) for b in mine]) for f in fields}
        entry["usable"] = median([b.usable for b in mine])
        entry["boots"] = len([b for b in mine if not b.failures])
        idles = [b.idle for b in mine if b.idle is not None]
        if idles:
            entry["idle"] = idle.summary(idles)
        entry["samples"] = [
            {k: v for k, v in asdict(b).items() if k not in ("agent",)} for b in mine
        ]
        result[agent] = entry
    return result


def limit(boots: Sequence[Boot]) -> Optional[float]:
    """The bare image's ssh plus one goal-state request and one health report (medians)."""
    bare = [b for b in boots if b.agent == "none"]
    ssh, extra = median([b.ssh for b in bare]), median([b.extra for b in bare])
    return None if ssh is None or extra is None else round(ssh + extra, 2)


def table(result: dict[str, dict[str, object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.1f}" if isinstance(value, (int, float)) else "-"

    lines = [
        "| agent | lease | ready | ssh | usable = max(ready, ssh) | CPU until usable | boots |",
        "|---|---|---|---|---|---|---|",
    ]
    for agent, entry in result.items():
        lines.append(
            f"| {agent} | {cell(entry.get('lease'))} | {cell(entry.get('ready'))} "
            f"| {cell(entry.get('ssh'))} | {cell(entry.get('usable'))} "
            f"| {cell(entry.get('cpu'))} | {entry.get('boots')} |"
        )
    return "\n".join(lines)


def ratios(result: dict[str, dict[str, object]], bound: Optional[float]) -> list[str]:
    """azagent's time to usable against each peer's and the limit."""
    ours = result.get("azagent", {}).get("usable")
    lines: list[str] = []
    if not isinstance(ours, (int, float)):
        return lines
    for peer in ("cloud-init", "waagent"):
        theirs = result.get(peer, {}).get("usable")
        if isinstance(theirs, (int, float)) and theirs > 0:
            lines.append(f"azagent usable / {peer} usable = {ours / theirs:.2f}")
    if bound is not None:
        lines.append(f"azagent usable - limit = {ours - bound:+.1f} s")
    return lines


def cpu_seconds(show: str) -> tuple[float, int, list[str]]:
    """Sum CPUUsageNSec over `systemctl show` blocks; (seconds, units, units without figure)."""
    total, counted, missing = 0, 0, []
    for block in show.strip().split("\n\n"):
        values = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        if "Id" not in values:
            continue
        raw = values.get("CPUUsageNSec", "")
        if raw.isdigit():
            total += int(raw)
            counted += 1
        elif values.get("ActiveState") not in ("inactive", "") or values.get(
            "InactiveExitTimestampMonotonic", "0"
        ) not in ("0", ""):
            missing.append(values["Id"])  # it ran, but systemd has no figure
    return total / 1e9, counted, missing


# -- one boot -------------------------------------------------------------------------


def _units(agent: str) -> str:
    """Shell that sets $u to the agent's units by name, loaded or not (list-units knows
    the loaded ones, list-unit-files the rest)."""
    globs = " ".join(f"'{g}'" for g in UNIT_GLOBS[agent])
    return (
        f"u=$( (systemctl list-units --all --plain --no-legend {globs};"
        f" systemctl list-unit-files --no-legend {globs}) | cut -d' ' -f1 | sort -u)"
    )


SHOW = (
    "systemctl show -p Id,ActiveState,CPUUsageNSec,CPUAccounting,InactiveExitTimestampMonotonic $u"
)


def _session_command(agent: str, idle_unit: Optional[str] = None) -> str:
    """Log in and say so; then print the accounting each time the host sends a line.

    The session stays open and knows the units already, so that the host reads the
    accounting the moment the VM becomes usable: one `systemctl show`, no new login.
    With ``idle_unit``, the line "idle" asks for a reading of that unit instead."""
    if not UNIT_GLOBS[agent]:
        return f"echo {LOGIN_MARK}"
    if idle_unit is not None:
        return (
            f"echo {LOGIN_MARK}; {_units(agent)}; while read -r what; do"
            f' if [ "$what" = idle ]; then {idle.sample_command(idle_unit)};'
            f" else {SHOW}; echo {READ_END}; fi; done"
        )
    return f"echo {LOGIN_MARK}; {_units(agent)}; while read -r _; do {SHOW}; echo {READ_END}; done"


def _remote_cpu_command(agent: str) -> str:
    return f"echo {LOGIN_MARK}; {_units(agent)}; {SHOW}"


def _limit_command() -> str:
    """From the bare guest: one goal-state request, then one health report (bash /dev/tcp)."""
    headers = "x-ms-version: 2012-11-30\\r\\nx-ms-agent-name: bench\\r\\n"
    return (
        "body=$(cat); s=$(date +%s%N); exec 3<>/dev/tcp/" + WIRESERVER_IP + "/80;"
        " printf 'GET /machine/?comp=goalstate HTTP/1.0\\r\\n" + headers + "\\r\\n' >&3;"
        " gs=$(cat <&3);"
        " exec 4<>/dev/tcp/" + WIRESERVER_IP + "/80;"
        " printf 'POST /machine/?comp=health HTTP/1.0\\r\\n"
        + headers
        + "Content-Type: text/xml; charset=utf-8\\r\\nContent-Length: %d\\r\\n\\r\\n%s'"
        ' "${#body}" "$body" >&4; hs=$(head -n1 <&4); e=$(date +%s%N);'
        ' echo "goalstate=$(echo "$gs" | head -n1 | tr -d "\\r")";'
        ' echo "health=$(echo "$hs" | tr -d "\\r")";'
        " echo extra-ns=$((e - s))"
    )


def _ssh_argv(key: Path, port: int, command: str) -> list[str]:
    return ssh_argv(
        key,
        port,
        f"{peers.USER}@127.0.0.1",
        command,
        connect_timeout=10,
        extra=("ServerAliveInterval=5", "ServerAliveCountMax=6"),
    )


class Run:
    """One boot's live state: qemu, the emulator, the packet dump."""

    def __init__(
        self, boot: Boot, workdir: Path, key: Path, idle_unit: Optional[str] = None
    ) -> None:
        self.boot = boot
        self.idle_unit = idle_unit
        self.workdir = workdir
        self.key = key
        self.pcap = workdir / "net.pcap"
        self.started = 0.0
        self.wall_started = 0.0
        self.session: Optional[subprocess.Popen[str]] = None

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def watch_lease(self) -> None:
        if self.boot.lease is not None:
            return
        try:
            packets = pcap_packets(self.pcap.read_bytes())
        except (OSError, ValueError):
            return
        if any(is_dhcp_ack(frame) for _, frame in packets):
            self.boot.lease = self.now()

    def watch(self, stop: threading.Event) -> threading.Thread:
        """Poll the packet dump every POLL seconds in a thread of its own, so that
        nothing the host waits for (an SSH attempt) delays seeing the lease."""

        def loop() -> None:
            while self.boot.lease is None and not stop.wait(POLL):
                self.watch_lease()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def login(self, port: int) -> Optional[float]:
        """One login attempt with the session command; keeps the session when it works."""
        process = subprocess.Popen(
            _ssh_argv(self.key, port, _session_command(self.boot.agent, self.idle_unit)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        first = process.stdout.readline()
        if first.strip() == LOGIN_MARK:
            self.session = process
            return self.now()
        self.close(process)
        (self.workdir / "login.txt").write_text(first)
        return None

    def read_accounting(self) -> Optional[str]:
        """The agent's `systemctl show` through the open session (None: it is gone)."""
        return self.ask("", READ_END)

    def ask(self, line: str, end: str) -> Optional[str]:
        """Send ``line`` to the open session; its answer before the line ``end`` (None: the
        session is gone before it)."""
        process = self.session
        if process is None or process.stdin is None or process.stdout is None:
            return None
        try:
            process.stdin.write(line + "\n")
            process.stdin.flush()
        except OSError:
            return None
        lines: list[str] = []
        for got in process.stdout:
            if got.strip() == end:
                return "".join(lines)
            lines.append(got)
        return None

    def close(self, process: Optional[subprocess.Popen[str]] = None) -> None:
        process = process or self.session
        if process is None:
            return
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    def ssh(self, port: int, command: str, stdin: str = "") -> tuple[Optional[float], str]:
        """(seconds from qemu start when the first line came, output) of one login."""
        with subprocess.Popen(
            _ssh_argv(self.key, port, command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write(stdin)
            process.stdin.close()
            first = process.stdout.readline()
            at = self.now() if first.strip() == LOGIN_MARK else None
            rest = process.stdout.read()
            try:
                status = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                status = -1
        return (at if status == 0 else None), first + rest


def run_boot(
    variant: peers.Variant,
    scenario: Scenario,
    boot: Boot,
    workdir: Path,
    key: Path,
    *,
    idle_window: Optional[float] = None,
) -> Boot:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "share").mkdir(mode=0o777, exist_ok=True)
    media.write(scenario, workdir / "media", formats=["udf"])
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(variant.image.disk), "-F", "raw",
         str(workdir / "os.qcow2")],
        check=True,
    )  # fmt: skip
    advertise = {
        "wireserver": f"http://{WIRESERVER_IP}",
        "hostgaplugin": f"http://{WIRESERVER_IP}:32526",
        "imds": f"http://{IMDS_IP}",
        "blob": "http://10.0.2.102",
    }
    fabric = Fabric(scenario, advertise=advertise, log_path=workdir / "requests.jsonl").start()
    idle_unit = idle.UNITS.get(boot.agent) if idle_window is not None else None
    kernel_args: tuple[str, ...] = ("systemd.mask=vmtest-collect.service",)
    spec = BootSpec(boot.agent, scenario, resource_disk=None, kernel_args=kernel_args)
    ssh_port = free_port()
    run = Run(boot, workdir, key, idle_unit)
    holder = BootResult(spec, workdir, fabric, started=0.0)
    command = qemu_command(variant.image, holder, fabric.listening, ssh_port)
    nic = "virtio-net-pci,netdev=n0,romfile="
    command[command.index(nic)] = f"{nic},mac={NIC_MAC}"
    command += ["-object", f"filter-dump,id=dump0,netdev=n0,file={run.pcap}"]
    with open(workdir / "qemu.log", "w") as log:
        run.wall_started = time.time()
        run.started = time.monotonic()
        qemu = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _measure(run, fabric, qemu, ssh_port)
        if idle_window is not None and idle_unit is not None and not boot.failures:
            _measure_idle(run, fabric, ssh_port, idle_window)
    finally:
        if run.session is not None:
            run.session.kill()
            run.close()
        if qemu.poll() is None:
            os.killpg(qemu.pid, signal.SIGKILL)
            qemu.wait(timeout=30)
        fabric.stop()
    try:
        leaked = forbidden_packets(pcap_packets(run.pcap.read_bytes()))
    except (OSError, ValueError) as e:
        leaked = [f"(the packet dump is unreadable: {e})"]
    if leaked:
        boot.failures.append(f"the guest sent packets to {', '.join(leaked)}")
    return boot


def _ready_time(run: Run, fabric: Fabric) -> Optional[float]:
    """When the first accepted health report saying Ready arrived (NotReady ones do not count)."""
    from azagent import wireserver

    for request in list(fabric.requests):
        if "comp=health" not in request.path or request.method != "POST" or request.status != 200:
            continue
        try:
            state = wireserver.parse_health(request.body).state
        except ValueError:
            continue
        if state == "Ready":
            return round(request.time - run.wall_started, 2)
    return None


def _login(run: Run, qemu: subprocess.Popen[bytes], port: int, deadline: float) -> None:
    """SSH attempts from the lease on, until one logs in (its output kept in login.txt)."""
    while time.monotonic() < deadline and qemu.poll() is None:
        if run.boot.lease is None:
            time.sleep(POLL)
            continue
        at = run.login(port)
        if at is not None:
            run.boot.ssh = at
            return
        time.sleep(0.5)


def _measure(run: Run, fabric: Fabric, qemu: subprocess.Popen[bytes], port: int) -> None:
    boot = run.boot
    deadline = run.started + BOUND
    wants_ready = boot.agent != "none"
    stop = threading.Event()
    watcher = run.watch(stop)
    try:
        _login(run, qemu, port, deadline)
    finally:
        stop.set()
        watcher.join(timeout=10)
    login = run.workdir / "login.txt"
    output = login.read_text() if login.exists() else ""
    if boot.ssh is None:
        boot.failures.append(f"no SSH login within {BOUND:.0f} s: {output.strip()[-300:]}")
    while wants_ready and boot.ready is None and time.monotonic() < deadline:
        run.watch_lease()
        boot.ready = _ready_time(run, fabric)
        time.sleep(POLL)
    run.watch_lease()
    if wants_ready and boot.ready is None:
        boot.failures.append(f"no Ready health report within {BOUND:.0f} s")
    if boot.lease is None:
        boot.failures.append("no DHCPACK in the guest's packet dump")
    if boot.failures:
        return
    if boot.agent == "none":
        _measure_extra(run, fabric, port)
        return
    # Usable now (the loop above waited for Ready): read the accounting at this moment.
    asked = run.now()
    read = run.read_accounting()
    how = f"asked at {asked} s, answered at {run.now()} s through the first session"
    if read is None:
        # The session is gone (an agent restarted sshd with new host keys): log in again.
        for _ in range(60):
            at, output = run.ssh(port, _remote_cpu_command(boot.agent))
            if at is not None:
                read, how = output.partition("\n")[2], f"read at {at} s by a new login"
                break
            time.sleep(0.5)
    (run.workdir / "cpu.txt").write_text(f"# {how}\n{read}")
    cpu, units, missing = cpu_seconds(read or "")
    boot.cpu, boot.units = round(cpu, 2), units
    if missing or units == 0:
        boot.failures.append(f"no CPU figure from systemd for {missing or 'any unit'}")


def _measure_extra(run: Run, fabric: Fabric, port: int) -> None:
    """One goal-state request and one health report from the bare guest, timed inside it."""
    from azagent import wireserver

    report = wireserver.HealthReport(
        incarnation=fabric.incarnation,
        container_id=fabric.container_id,
        instance_id=fabric.scenario.role_instance,
        state="Ready",
    )
    body = wireserver.health_xml(report).decode()
    _, output = run.ssh(port, f"echo {LOGIN_MARK}; " + _limit_command(), stdin=body)
    (run.workdir / "extra.txt").write_text(output)
    for line in output.splitlines():
        if line.startswith("extra-ns="):
            run.boot.extra = round(int(line.partition("=")[2]) / 1e9, 3)
    if run.boot.extra is None or "200" not in output:
        run.boot.failures.append(f"the limit's requests failed: {output.strip()[-300:]}")


# -- --idle: the extension handler's footprint -----------------------------------------

IDLE_MESSAGE = "bench idle footprint"


def idle_extension() -> Extension:
    """The one enabled extension: WALinuxAgent's sample handler with a public setting."""
    from azvmtest import scenarios

    return Extension(
        name=scenarios.SAMPLE,
        version="1.3.0",
        package=str(scenarios.SAMPLE_ZIP),
        public_settings={"message": IDLE_MESSAGE},
    )


def _succeeded_at(fabric: Fabric) -> Optional[float]:
    """The (wall) time of the first status upload with the sample handler's success."""
    from azvmtest import scenarios

    for upload in list(fabric.status_uploads):
        if idle.sample_succeeded(upload.document, scenarios.SAMPLE, 0, IDLE_MESSAGE):
            return upload.time
    return None


def _guest_log_command(agent: str, unit: str) -> str:
    """What the login user may read of the handler's doings (waagent's log is world-readable)."""
    logs = (
        "tail -n 80 /var/log/waagent.log"
        if agent == "waagent"
        # The extension's commands, each a transient unit (they stay listed once ended).
        else "ls -la /var/log/azure; systemctl list-units --all --no-pager 'azure-ext-*'"
    )
    return (
        f"echo {LOGIN_MARK}; {logs} 2>&1; systemctl status {unit} --no-pager -n 40 2>&1;"
        f" sudo -n journalctl -u {unit} -n 80 --no-pager 2>&1; ls -la /var/lib/waagent 2>&1"
    )


def _idle_reading(run: Run, port: int) -> tuple[Optional[str], str]:
    """One reading of the handler's unit: (text, how), through the open session or a new login."""
    assert run.idle_unit is not None
    answer = run.ask("idle", idle.SAMPLE_END)
    if answer is not None:
        return answer + idle.SAMPLE_END + "\n", "the first session"
    for _ in range(20):
        at, output = run.ssh(port, f"echo {LOGIN_MARK}; " + idle.sample_command(run.idle_unit))
        if at is not None:
            return output.partition("\n")[2], f"a new login at {at} s"
        time.sleep(0.5)
    return None, "no login"


def _measure_idle(run: Run, fabric: Fabric, port: int, window: float) -> None:
    """Wait for the extension's success status, then read the handler's unit twice,
    ``window`` seconds apart; the figures go to ``run.boot.idle``, a failure fails the boot."""
    boot, unit = run.boot, run.idle_unit
    assert unit is not None
    found = fabric.wait_for(lambda: _succeeded_at(fabric) is not None, timeout=idle.BOUND)
    figures = idle.Idle()
    evidence = run.workdir / "idle.txt"
    if not found:
        _, log = run.ssh(port, _guest_log_command(boot.agent, unit))
        (run.workdir / "idle-guest.txt").write_text(log)
        uploads = len(fabric.status_uploads)
        tail = "; ".join(log.strip().splitlines()[-3:])
        figures.failures.append(
            f"no success status of the sample extension within {idle.BOUND:.0f} s after the VM"
            f" was usable ({uploads} status upload(s)); the guest's last lines: {tail[-400:]}"
        )
    else:
        succeeded = _succeeded_at(fabric)
        assert succeeded is not None
        figures.status_after = round(succeeded - run.wall_started, 2)
        first, how_first = _idle_reading(run, port)
        started = time.time()
        time.sleep(window)
        ended = time.time()
        last, how_last = _idle_reading(run, port)
        requests = len([r for r in list(fabric.requests) if started <= r.time <= ended])
        evidence.write_text(
            f"# before ({how_first}; host {started:.2f})\n{first}"
            f"# after ({how_last}; host {ended:.2f})\n{last}"
        )
        try:
            if first is None or last is None:
                raise ValueError("the guest gave no reading")
            before, after = idle.parse_reading(first), idle.parse_reading(last)
        except ValueError as e:
            figures.failures.append(f"unreadable reading of {unit}: {e}")
        else:
            status_after = figures.status_after
            figures = idle.footprint(boot.agent, before, after, requests)
            figures.status_after = status_after
        _, log = run.ssh(port, _guest_log_command(boot.agent, unit))
        (run.workdir / "idle-guest.txt").write_text(log)
    boot.idle = figures
    boot.failures += [f"idle: {f}" for f in figures.failures]


# -- the command ----------------------------------------------------------------------


def bench_key() -> tuple[Path, str]:
    """The bench's SSH key pair (one for every boot and the bare image), made once."""
    from azfabric import keys

    directory = image.CACHE / "bench-key"
    private, public = directory / "id_ed25519", directory / "id_ed25519.pub"
    if not (private.exists() and public.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        secret, line = keys.generate_ssh_key()
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        public.write_text(line + "\n")
    return private, public.read_text().strip()


def conditions(variants: dict[str, peers.Variant]) -> list[str]:
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    load = os.getloadavg()
    lines = [
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"qemu: {qemu[0] if qemu else 'unknown'}; -accel tcg -cpu qemu64 -smp 2 -m 1024 -M pc,"
        f" virtio-net mac {NIC_MAC}, no resource disk, the OVF DVD",
        f"host: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    ]
    for name, variant in variants.items():
        lines.append(f"image {name}: {variant.key} ({variant.versions})")
    return lines


def main(
    agents: Sequence[str],
    boots: int,
    json_path: Optional[Path],
    deb: Optional[Path],
    idle_window: Optional[float] = None,
) -> int:
    from azvmtest import scenarios

    unknown = [a for a in agents if a not in peers.AGENTS]
    if unknown or not agents or boots < 1:
        print(f"bench: unknown agent(s) {unknown}; choose from {','.join(peers.AGENTS)}")
        return 2
    if idle_window is not None and not any(a in idle.UNITS for a in agents):
        print(f"bench: --idle measures {' and '.join(idle.UNITS)}; none of them is in --agents")
        return 2
    key, public = bench_key()
    variants: dict[str, peers.Variant] = {}
    for agent in agents:
        if agent == "azagent":
            built = image.build(deb=deb)
            variants[agent] = peers.Variant(
                agent, built, built.disk.parent.name, (), "azagent from this checkout's .deb"
            )
        else:
            variants[agent] = peers.build(agent, public)
    for name, variant in variants.items():
        if variant.changes:
            print(f"changes made to the {name} image:")
            for change in variant.changes:
                print(f"  {change}")
    scenario = scenarios.default_scenario(
        public_keys=[
            PublicKey(
                path=f"/home/{peers.USER}/.ssh/authorized_keys",
                value=public,
                private_key=key.read_text(),
            )
        ]
    )
    with_extension = dataclasses.replace(scenario, extensions=[idle_extension()])
    before = conditions(variants)
    if idle_window is not None:
        before.append(
            f"idle: {' and '.join(a for a in agents if a in idle.UNITS)} boot with one enabled"
            f" extension ({scenarios.SAMPLE} 1.3.0, public setting message={IDLE_MESSAGE!r});"
            f" a window of {idle_window:g} s from the emulator's receipt of its success status"
        )
    for line in before:
        print(line)
    workdir = Path(tempfile.mkdtemp(prefix="vmtest-bench-"))
    results: list[Boot] = []
    for round_ in range(1, boots + 1):
        for agent in agents:
            boot = Boot(agent, round_)
            measured = idle_window is not None and agent in idle.UNITS
            run_boot(
                variants[agent],
                with_extension if measured else scenario,
                boot,
                workdir / f"{round_}-{agent}",
                key,
                idle_window=idle_window if measured else None,
            )
            results.append(boot)
            shown = ", ".join(
                f"{name} {value:.1f}"
                for name in ("lease", "ready", "ssh", "usable", "cpu")
                if (value := getattr(boot, name)) is not None
            )
            print(
                f"round {round_} {agent}: {shown}"
                + (f"; extra {boot.extra:.3f} s" if boot.extra else ""),
                flush=True,
            )
            if boot.idle is not None and not boot.idle.failures:
                figures = boot.idle
                print(
                    f"  idle {figures.window} s from the status at {figures.status_after} s:"
                    f" handler RSS {figures.handler_rss} MiB, unit RSS {figures.unit_rss} MiB,"
                    f" memory.current {figures.unit_memory} MiB, handler CPU"
                    f" {figures.handler_cpu} s, unit CPU {figures.unit_cpu} s,"
                    f" {figures.requests} requests",
                    flush=True,
                )
            for failure in boot.failures:
                print(f"  FAILED: {failure}", flush=True)
    result = summary(results)
    print()
    print(table(result))
    bound = limit(results)
    if bound is not None:
        print(f"limit (none's ssh + one goal-state request + one health report): {bound:.1f} s")
    for line in ratios(result, bound):
        print(line)
    if idle_window is not None:
        print()
        print(f"idle footprint over {idle_window:g} s after the extension's success (medians):")
        print(idle.table(result))
    load = os.getloadavg()
    print(f"host load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    failed = [b for b in results if b.failures]
    print(f"evidence in {workdir}; {len(failed)} failed boot(s) of {len(results)}")
    return 1 if failed else 0
