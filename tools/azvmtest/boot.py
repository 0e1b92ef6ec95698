"""One boot of the test guest under qemu (TCG), against the emulated fabric.

The guest sees what an Azure VM sees: the OVF DVD (UDF) as a SCSI CD-ROM at
LUN 2, the OS disk at SCSI id 0 and the resource disk at SCSI id 1 (vendor
Msft, model Virtual Disk), the chassis asset tag and VM id of an Azure VM,
and the WireServer, HostGAPlugin, IMDS and blob store of the emulator through
qemu's restricted user network (guestfwd to loopback on the host: the guest
reaches nothing else). Results come back through a 9p share.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from azfabric import media
from azfabric.scenario import Scenario, materialize
from azfabric.server import Fabric

from azvmtest.image import Image

AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
WIRESERVER_IP = "10.0.2.100"
IMDS_IP = "10.0.2.101"
BLOB_IP = "10.0.2.102"
# The OS disk by its label: sda/sdb naming follows the order the SCSI scan
# finds the disks in, which is not stable. scsi_mod.scan=sync: the disks exist
# as soon as virtio_scsi has loaded. (initramfs-tools' rootdelay= would sleep
# its whole length on every boot.)
KERNEL_ARGS = (
    "root=LABEL=azagent-os rw console=ttyS0 mitigations=off quiet loglevel=3 panic=1 "
    "scsi_mod.scan=sync"
)
# The guest's initramfs gave up on its root disk: a slow host, not azagent.
ROOT_NOT_FOUND = "Gave up waiting for root file system device"


@dataclass
class BootSpec:
    name: str
    scenario: Scenario
    media: bool = True
    resource_disk: Optional[str] = "empty"  # empty, ntfs-warning, ntfs-data or None
    kernel_args: tuple[str, ...] = ()
    disk: Optional[Path] = None  # an OS disk overlay from an earlier boot
    ssh: bool = False
    secrets: tuple[str, ...] = ()
    timeout: float = 300.0
    # waagent.conf lines for this boot only ("Extensions.Enabled=n"): the guest's
    # vmtest-config writes them to a drop-in from `vmtest.waagent=` kernel arguments.
    config: tuple[str, ...] = ()
    # Called once the boot finished, before the guest collects its results: the
    # host changes the fabric (a new goal state) and waits for the guest to act.
    while_up: Optional[Callable[[BootResult], None]] = None


@dataclass
class BootResult:
    spec: BootSpec
    workdir: Path
    fabric: Fabric
    started: float
    ready_after: Optional[float] = None  # seconds from qemu start to the first health report
    up_after: Optional[float] = None
    ssh_output: str = ""
    ssh_status: Optional[int] = None
    exit_status: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    @property
    def share(self) -> Path:
        return self.workdir / "share"

    @property
    def os_disk(self) -> Path:
        return self.spec.disk or self.workdir / "os.qcow2"

    def text(self, name: str) -> str:
        try:
            return (self.share / name).read_text(errors="replace")
        except OSError:
            return ""

    def units(self) -> dict[str, dict[str, str]]:
        """`systemctl show` of the azure-* units (and a few others), by unit."""
        units: dict[str, dict[str, str]] = {}
        current: dict[str, str] = {}
        for line in [*self.text("units.txt").splitlines(), ""]:
            if not line.strip():
                if "Id" in current:
                    units[current["Id"]] = current
                current = {}
                continue
            key, _, value = line.partition("=")
            current[key] = value
        return units

    def stage(self, name: str) -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads(
                (self.share / "stages" / f"{name}.json").read_text()
            )
        except (OSError, ValueError):
            return {}
        return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_resource_disk(path: Path, kind: str) -> None:
    """A 1 GiB resource disk: empty, or NTFS as Azure delivers it (with or without user data)."""
    with open(path, "wb") as f:
        f.truncate(1024 * 1024 * 1024)
    if kind == "empty":
        return
    # One MBR partition of type 7 (NTFS) from 1 MiB, as the platform formats it.
    subprocess.run(
        ["sfdisk", "-q", str(path)], input="label: dos\nstart=2048, type=7\n", text=True, check=True
    )
    part = path.with_suffix(".part")
    with open(part, "wb") as f:
        f.truncate(1024 * 1024 * 1024 - 2048 * 512)
    subprocess.run(
        ["mkntfs", "-q", "-F", "-Q", "-s", "512", "-L", "Temporary Storage", str(part)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    warning = path.parent / "DATALOSS_WARNING_README.txt"
    warning.write_text("WARNING: THIS IS A TEMPORARY DISK.\r\n")
    subprocess.run(
        ["ntfscp", "-f", "-q", str(part), str(warning), "DATALOSS_WARNING_README.txt"], check=True
    )
    if kind == "ntfs-data":
        precious = path.parent / "precious.txt"
        precious.write_text("the user's data\n")
        subprocess.run(["ntfscp", "-f", "-q", str(part), str(precious), "precious.txt"], check=True)
    with open(part, "rb") as source, open(path, "r+b") as target:
        target.seek(2048 * 512)
        shutil.copyfileobj(source, target)
    part.unlink()


def qemu_command(
    image: Image, result: BootResult, urls: dict[str, str], ssh_port: int
) -> list[str]:
    spec = result.spec
    work = result.workdir

    def forward(ip: str, port: int, url: str) -> str:
        target = url.removeprefix("http://")
        return f"guestfwd=tcp:{ip}:{port}-cmd:socat STDIO TCP:{target}"

    netdev = ",".join(
        [
            "user,id=n0,restrict=on",
            forward(WIRESERVER_IP, 80, urls["wireserver"]),
            forward(WIRESERVER_IP, 32526, urls["hostgaplugin"]),
            forward(IMDS_IP, 80, urls["imds"]),
            forward(BLOB_IP, 80, urls["blob"]),
            f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        ]
    )
    vm_id = spec.scenario.vm_id or ""
    command = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "qemu64",
        "-smp",
        "2",
        "-m",
        "1024",
        "-M",
        "pc",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        " ".join(
            [KERNEL_ARGS, *spec.kernel_args, *(f"vmtest.waagent={line}" for line in spec.config)]
        ),
        "-uuid",
        vm_id,
        "-smbios",
        "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine",
        "-smbios",
        f"type=3,manufacturer=Microsoft Corporation,asset={AZURE_ASSET_TAG}",
        "-serial",
        f"file:{work / 'console.log'}",
        "-device",
        "virtio-scsi-pci,id=scsi0",
        "-drive",
        f"file={result.os_disk},format=qcow2,if=none,id=os,cache=unsafe",
        "-device",
        "scsi-hd,drive=os,bus=scsi0.0,scsi-id=0,lun=0,vendor=Msft,product=Virtual Disk,serial=os0",
        "-netdev",
        netdev,
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
        "-virtfs",
        f"local,path={result.share},mount_tag=results,security_model=none,id=results",
    ]
    if spec.resource_disk is not None:
        command += [
            "-drive",
            f"file={work / 'resource.raw'},format=raw,if=none,id=res,cache=unsafe",
            "-device",
            "scsi-hd,drive=res,bus=scsi0.0,scsi-id=1,lun=0,"
            "vendor=Msft,product=Virtual Disk,serial=res0",
        ]
    if spec.media:
        command += [
            "-drive",
            f"file={work / 'media/ovf-udf.iso'},format=raw,if=none,id=dvd,media=cdrom,readonly=on",
            "-device",
            "scsi-cd,drive=dvd,bus=scsi0.0,scsi-id=0,lun=2,vendor=Msft,product=Virtual DVD-ROM",
        ]
    return command


def ssh_argv(
    key: Path,
    port: int,
    target: str,
    command: str,
    *,
    connect_timeout: int,
    extra: Sequence[str] = (),
) -> list[str]:
    """ssh to the guest's forwarded port with ``key``: no prompts, no host key kept."""
    options = [
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        f"ConnectTimeout={connect_timeout}",
        *extra,
        "LogLevel=ERROR",
    ]
    return (
        ["ssh", "-i", str(key), "-p", str(port)]
        + [word for option in options for word in ("-o", option)]
        + [target, command]
    )


def ssh(result: BootResult, port: int, deadline: float) -> None:
    key = result.workdir / "id_ed25519"
    private = result.spec.scenario.public_keys[0].private_key or ""
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private)
    command = ssh_argv(
        key,
        port,
        f"{result.spec.scenario.username}@127.0.0.1",
        "id; hostname; sudo -n true; echo sudo-status=$?",
        connect_timeout=20,
    )
    while time.monotonic() < deadline:
        done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
        result.ssh_status, result.ssh_output = done.returncode, done.stdout + done.stderr
        if done.returncode == 0:
            return
        time.sleep(3)


def run_boot(image: Image, spec: BootSpec, workdir: Path) -> BootResult:
    materialize(spec.scenario)
    workdir.mkdir(parents=True, exist_ok=True)
    share = workdir / "share"
    if share.exists():
        shutil.rmtree(share)
    share.mkdir(mode=0o777)
    if spec.secrets:
        (share / "secrets").write_text("".join(s + "\n" for s in spec.secrets))
    if spec.media:
        media.write(spec.scenario, workdir / "media", formats=["udf"])
    if spec.disk is None:
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(image.disk),
                "-F",
                "raw",
                str(workdir / "os.qcow2"),
            ],
            check=True,
        )
    if spec.resource_disk is not None:
        make_resource_disk(workdir / "resource.raw", spec.resource_disk)
    advertise = {
        "wireserver": f"http://{WIRESERVER_IP}",
        "hostgaplugin": f"http://{WIRESERVER_IP}:32526",
        "imds": f"http://{IMDS_IP}",
        "blob": f"http://{BLOB_IP}",
    }
    # The documents name the guest's addresses; qemu forwards them to where we listen.
    fabric = Fabric(spec.scenario, advertise=advertise, log_path=workdir / "requests.jsonl").start()
    urls = fabric.listening
    ssh_port = free_port()
    result = BootResult(spec, workdir, fabric, started=time.monotonic())
    with open(workdir / "qemu.log", "w") as log:
        qemu = subprocess.Popen(
            qemu_command(image, result, urls, ssh_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = result.started + spec.timeout
        while time.monotonic() < deadline and qemu.poll() is None:
            if result.ready_after is None and fabric.health_reports:
                result.ready_after = time.monotonic() - result.started
            if (share / "up").exists():
                result.up_after = time.monotonic() - result.started
                break
            time.sleep(0.2)
        if result.ready_after is None and fabric.health_reports:
            result.ready_after = time.monotonic() - result.started
        if spec.ssh and qemu.poll() is None:
            ssh(result, ssh_port, min(deadline, time.monotonic() + 120))
        if spec.while_up is not None and result.up_after is not None and qemu.poll() is None:
            try:
                spec.while_up(result)
            except Exception as e:  # the guest must still collect and power off
                result.notes.append(f"while up: {type(e).__name__}: {e}")
        (share / "go").write_text("go\n")
        try:
            result.exit_status = qemu.wait(timeout=max(30.0, deadline + 120 - time.monotonic()))
        except subprocess.TimeoutExpired:
            result.notes.append("qemu did not power off in time: killed")
    finally:
        if qemu.poll() is None:
            os.killpg(qemu.pid, signal.SIGKILL)
            qemu.wait(timeout=30)
        fabric.stop()
    return result
