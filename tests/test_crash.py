"""Crash at every step, and a second run that changes nothing.

Crash at every step: each stage that changes something under ``--root`` is
killed with SIGKILL at each of its crash points in turn (the runner's test
hook ``AZAGENT_TEST_CRASH_AT``, azagent.fsutil.crash_point: before every step
of the plan, between writing a temporary file and renaming it, right after
making a directory, after every command, after allocating the swap file and
before copying a new filesystem's first MiB into a disk image), then run
again without the hook. The tree must then equal, byte for byte
(modes and owners included), what one uninterrupted run leaves, and the run
after the crash must succeed. Each stage starts from the tree a full
provisioning leaves just before it (the provisioning stages, in unit order,
against the emulated fabric), or from the tree its own tests build
(kernel-tune, network, firewall, resource-disk).

What may legitimately differ between two runs, and nothing else, is
normalized before comparing (:func:`normalized`, which says why for each):
timestamps and pids azagent records, and what is random by design (salts,
generated keys, filesystem and swap UUIDs).

Second run changes nothing: after a full provisioning (and each of the other
stages' own setups), every stage run again leaves every byte of the tree
unchanged but its own result file, which says nothing-to-do or skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
from azfabric.scenario import KeyPair, PublicKey
from azfabric.server import Fabric
from conftest import Run, add_scsi_disk, run_stage, snapshot
from provisioning_env import Scenario, make_vm
from test_boot import unit_order
from test_create_user import debian_root

from azagent import kvp, passwords
from azagent.stage import CRASH_AT_ENV

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="useradd and owners need root")

PASSWORD = "Crash-T3st-Password"  # noqa: S105 - a test password
CUSTOM = "#!/bin/sh\necho crash-test\n"
ENV = {"AZAGENT_LOCK_TIMEOUT": "5"}

Tree = dict[str, tuple[int, int, int, "bytes | str"]]


# -- what may differ between two runs -----------------------------------------------


def _results(content: bytes) -> bytes:
    """A stage result: its timestamps and duration are the run's, and so are its
    changes and state (the run after a crash makes only what is left, or
    nothing): the test checks the state on its own."""
    document = json.loads(content)
    failed = document["state"] == "failed"
    return json.dumps([document["stage"], failed, document["exit_status"]]).encode()


def _host_key_pair(tree: Path, name: str, content: bytes) -> bytes:
    """ssh-keygen makes new host keys each run: keep only the name (it says the type)
    and whether the private and public halves belong together."""
    from cryptography.hazmat.primitives import serialization

    private = name[: -len(".pub")] if name.endswith(".pub") else name
    try:
        key = serialization.load_ssh_private_key((tree / private).read_bytes(), password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        line = (tree / f"{private}.pub").read_bytes().split()
        matches = line[:2] == public.split()[:2]
    except (OSError, ValueError):
        matches = False
    return f"<host key {name}, pair matches: {matches}>".encode()


def _openssh_private(content: bytes) -> bytes:
    """An OpenSSH private key file carries a random check number: keep the key itself."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(content, password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return b"<private key of " + public + b">"


def _shadow(content: bytes) -> bytes:
    """shadow: the day of the last change is today's (it may roll over mid-test); a
    hash of PASSWORD has a random salt: whether it verifies is what counts."""
    lines = []
    for line in content.decode().splitlines():
        fields = line.split(":")
        if len(fields) >= 3:
            if fields[1].startswith("$") and passwords.verify(PASSWORD, fields[1], "6"):
                fields[1] = "<hash of PASSWORD>"
            fields[2] = "<day>"
        lines.append(":".join(fields))
    return "\n".join(lines).encode()


def _provisioning_json(content: bytes) -> bytes:
    """mount-ovf hashes the password with a random salt (reused once saved)."""
    document = json.loads(content)
    hashed = document.get("password_hash")
    if hashed and passwords.verify(PASSWORD, hashed, "6"):
        document["password_hash"] = "<hash of PASSWORD>"  # noqa: S105 - a placeholder
    return json.dumps(document, sort_keys=True).encode()


def _kvp_pool(content: bytes) -> bytes:
    """The PROVISIONING_REPORT record carries the time it was written."""
    records = [
        (key, re.sub(r"\|timestamp=[^|]*", "|timestamp=<now>", value))
        for key, value in kvp.decode_pool(content)
    ]
    return json.dumps(records).encode()


def _random_device(tree: Path, content: bytes) -> bytes:
    """kernel-tune feeds Hyper-V's seed to /dev/random (here a regular file standing in
    for the device) at least once per boot: killed after feeding, before its
    note, it feeds it again. Mixing a seed in twice is harmless; feeding it
    never (the note first) would not be."""
    table = (tree / "sys/firmware/acpi/tables/OEM0").read_bytes()
    times, rest = divmod(len(content), len(table)) if table else (0, len(content))
    if times >= 1 and not rest and content == table * times:
        return b"<the OEM0 table, fed at least once>"
    return content


SWAP_UUID = slice(1036, 1052)  # the swap header's UUID (struct swap_header_v1_2)


def _swap_file(content: bytes) -> bytes:
    """mkswap gives the swap area a random UUID."""
    return content[: SWAP_UUID.start] + bytes(16) + content[SWAP_UUID.stop :]


def _disk_image(path: Path) -> bytes:
    """mkfs gives a filesystem random UUIDs and its creation time: keep the partition
    table, the filesystem type on partition 1 and whether e2fsck finds it clean."""
    table = subprocess.run(
        ["sfdisk", "--json", str(path)], capture_output=True, text=True, check=False, timeout=60
    ).stdout
    if not table:
        return b"<no partition table>"
    parts = json.loads(table)["partitiontable"]
    described = [(p["start"], p["size"], p["type"]) for p in parts.get("partitions", [])]
    if not described:
        return f"<{parts['label']}: no partitions>".encode()
    offset = described[0][0] * 512
    kind = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", "-O", str(offset), str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout.strip()
    clean = None
    if kind.startswith("ext"):
        check = subprocess.run(
            ["e2fsck", "-fn", f"{path}?offset={offset}"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        clean = check.returncode == 0
    return json.dumps([parts["label"], described, kind, clean]).encode()


def _content(tree: Path, name: str, content: bytes) -> bytes:
    base = name.rsplit("/", 1)[-1]
    if name.startswith("run/azagent/stages/") and name.endswith(".json"):
        return _results(content)
    if name.startswith("run/azagent/lock/"):
        return b"<pid of the last holder>"  # which process held the lock last
    if re.fullmatch(r"ssh_host_\w+_key(\.pub)?", base):
        return _host_key_pair(tree / name.rsplit("/", 1)[0], base, content)
    if content.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        return _openssh_private(content)
    if name in ("etc/shadow", "etc/shadow-"):
        return _shadow(content)
    if name == "run/azagent/provisioning.json":
        return _provisioning_json(content)
    if name == "var/lib/hyperv/.kvp_pool_1":
        return _kvp_pool(content)
    if name == "dev/random":
        return _random_device(tree, content)
    if base == "swapfile":
        return _swap_file(content)
    if name == "dev/sdb" and len(content) > 1024 * 1024:
        return _disk_image(tree / name)
    return content


def normalized(tree: Path) -> Tree:
    """snapshot(tree) without what legitimately differs from run to run."""
    return {
        name: (
            mode,
            uid,
            gid,
            _content(tree, name, content) if isinstance(content, bytes) else content,
        )
        for name, (mode, uid, gid, content) in snapshot(tree).items()
    }


def difference(expected: Tree, found: Tree) -> list[str]:
    """What differs, one line per path, contents shown short."""

    def shown(entry: Optional[tuple[int, int, int, bytes | str]]) -> str:
        if entry is None:
            return "absent"
        mode, uid, gid, content = entry
        text = repr(content[:100]) + ("..." if len(content) > 100 else "")
        return f"{mode:o} {uid}:{gid} {text}"

    lines = []
    for name in sorted(expected.keys() | found.keys()):
        if expected.get(name) != found.get(name):
            lines.append(
                f"  {name}: expected {shown(expected.get(name))}, found {shown(found.get(name))}"
            )
    return lines


# -- trees ----------------------------------------------------------------------------


def copy_tree(source: Path, target: Path) -> Path:
    """A copy keeping owners, modes, links and holes (cp -a)."""
    subprocess.run(["cp", "-a", str(source), str(target)], check=True, timeout=120)
    return target


def result_state(root: Path, stage: str) -> str:
    state: str = json.loads((root / f"run/azagent/stages/{stage}.json").read_text())["state"]
    return state


def stage_run(stage: str, root: Path, crash_at: Optional[int] = None) -> Run:
    env = dict(ENV)
    if crash_at is not None:
        env[CRASH_AT_ENV] = str(crash_at)
    return run_stage(stage, "--root", str(root), env=env)


@dataclass
class Setup:
    """A tree and the stages it runs, in order; ``before[stage]`` is the tree just
    before that stage runs."""

    name: str
    stages: list[str]
    before: dict[str, Path]
    after: Path


def prepare(
    name: str, pristine: Path, stages: list[str], work: Path, failing: tuple[str, ...] = ()
) -> Setup:
    """Run ``stages`` in order on a copy of ``pristine``, keeping the tree before each.

    imds runs only where mount-ovf left its cue (ConditionPathExists= of its
    unit); the stages in ``failing`` are expected to fail.
    """
    before = {}
    current = copy_tree(pristine, work / f"{name}-run")
    ran = []
    for stage in stages:
        if stage == "imds" and not (current / "run/azagent/imds-needed").exists():
            continue
        before[stage] = copy_tree(current, work / f"{name}-before-{stage}")
        run = stage_run(stage, current)
        assert run.returncode == (1 if stage in failing else 0), f"{stage}: {run.stderr}"
        ran.append(stage)
    return Setup(name, ran, before, current)


# The provisioning stages of a first boot, in the order of their units.
PROVISIONING = unit_order()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash")


def image(root: Path) -> None:
    """A Debian-like image with sshd, host keys, /etc/hosts and /etc/hostname."""
    root.mkdir()
    debian_root(root)
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
    (root / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
    for kind in ("rsa", "ed25519"):
        (root / f"etc/ssh/ssh_host_{kind}_key").write_text(f"the image's {kind} key\n")
        (root / f"etc/ssh/ssh_host_{kind}_key.pub").write_text(f"ssh-{kind} image\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n")
    (root / "etc/hostname").write_text("debian\n")


@pytest.fixture(scope="module")
def provisioned(work: Path) -> Iterator[Setup]:
    """A Debian-like image provisioned from the DVD against the emulated fabric."""
    scenario = Scenario(
        hostname="crash-vm",
        username="alice",
        password=PASSWORD,
        disable_password_auth=False,
        custom_data=CUSTOM,
        public_keys=[
            PublicKey(path="/home/alice/.ssh/authorized_keys"),
            PublicKey(path="/home/alice/.ssh/authorized_keys", fingerprint="generate"),
        ],
        key_pairs=[KeyPair(path="/home/alice/.ssh/id_rsa")],
    )
    with Fabric(scenario) as fabric:
        root = work / "provisioning"
        image(root)
        vm = make_vm(root, scenario, fabric)
        vm.configure(
            "Provisioning.DecodeCustomData=y",
            "Provisioning.RegenerateSshHostKeyPair=y",
            "Provisioning.DeleteRootPassword=y",
            "OS.SshClientAliveInterval=120",
            "Provisioning.SshHostKeyPairType=ed25519",  # the fastest to make, many times
        )
        yield prepare("provisioning", root, PROVISIONING, work)


@pytest.fixture(scope="module")
def from_imds(work: Path) -> Iterator[Setup]:
    """The same image without provisioning media: the imds stage provisions it."""
    scenario = Scenario(hostname="imds-vm", username="bob")
    with Fabric(scenario) as fabric:
        root = work / "imds"
        image(root)
        vm = make_vm(root, scenario, fabric, with_media=False)
        vm.configure("Provisioning.SshHostKeyPairType=ed25519")
        yield prepare("imds", root, PROVISIONING, work)


@pytest.fixture(scope="module")
def failing(work: Path) -> Iterator[Setup]:
    """A user name the rules refuse: mount-ovf fails, report-failure reports it."""
    scenario = Scenario(username="-rf")
    with Fabric(scenario) as fabric:
        root = work / "failing"
        image(root)
        make_vm(root, scenario, fabric)
        yield prepare("failing", root, ["mount-ovf", "report-failure"], work, ("mount-ovf",))


def kernel_tune_root(root: Path) -> None:
    add_scsi_disk(root, "sda", "Msft", "Virtual Disk", "30")
    add_scsi_disk(root, "sdb", "Msft", "Virtual Disk", "300")
    tables = root / "sys/firmware/acpi/tables"
    tables.mkdir(parents=True)
    (tables / "OEM0").write_bytes(b"OEM0" + bytes(32) + bytes(range(1, 65)))
    (root / "dev").mkdir()
    (root / "dev/random").write_bytes(b"")  # a regular file standing in for the device
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text("2.6.32-100.el6.x86_64\n")
    (root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz ro quiet\n")
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/grub").write_text('GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="quiet"\n')


PINNED = (
    'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="00:0d:3a:12:34:56", '
    'KERNEL=="eth*", NAME="eth0"\n'
)


def booted(root: Path) -> None:
    """/run/azagent as the first stages of the boot leave it (network and resource-disk
    run after kernel-tune): the runner's own first writes are crashed in the others."""
    (root / "run/azagent/lock").mkdir(parents=True)
    (root / "run/azagent/stages").mkdir()


def network_root(root: Path) -> None:
    booted(root)
    (root / "sys/class/net/eth0").mkdir(parents=True)
    (root / "sys/class/net/eth0/ifindex").write_text("2\n")
    (root / "proc/net").mkdir(parents=True)
    # eth0's default route and the host route to the WireServer (what a
    # DHCP client applying option 121 makes): nothing to run under --root.
    (root / "proc/net/route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t10813FA8\t0101000A\t0007\t0\t0\t100\tFFFFFFFF\t0\t0\t0\n"
    )
    (root / "var/lib/dhcp").mkdir(parents=True)
    (root / "var/lib/dhcp/dhclient.eth0.leases").write_text(
        'lease {\n  interface "eth0";\n  fixed-address 10.0.1.4;\n  option routers 10.0.1.1;\n'
        "  option unknown-245 a8:3f:81:10;\n  expire never;\n}\n"
    )
    (root / "etc/udev/rules.d").mkdir(parents=True)
    (root / "etc/udev/rules.d/70-persistent-net.rules").write_text(PINNED)
    (root / "etc/udev/rules.d/75-persistent-net-generator.rules").write_text(
        'ACTION=="add", SUBSYSTEM=="net", IMPORT{program}="write_net_rules"\n'
    )


def firewall_root(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/waagent.conf").write_text("OS.EnableFirewall=y\n")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/nft").write_text("#!/bin/sh\nexit 1\n")
    (root / "usr/sbin/nft").chmod(0o755)


def resource_disk_root(root: Path) -> None:
    booted(root)
    (root / "dev/disk/azure").mkdir(parents=True)
    with open(root / "dev/sdb", "wb") as f:
        f.truncate(32 * 1024 * 1024)
    (root / "dev/disk/azure/resource").symlink_to("../../sdb")
    (root / "etc").mkdir()
    (root / "etc/waagent.conf").write_text("ResourceDisk.EnableSwap=y\nResourceDisk.SwapSizeMB=8\n")


OTHERS: dict[str, Callable[[Path], None]] = {
    "kernel-tune": kernel_tune_root,
    "network": network_root,
    "firewall": firewall_root,
    "resource-disk": resource_disk_root,
}


@pytest.fixture(scope="module")
def others(work: Path) -> dict[str, Setup]:
    setups = {}
    for stage, build in OTHERS.items():
        root = work / stage
        root.mkdir()
        build(root)
        setups[stage] = prepare(stage, root, [stage], work)
    return setups


def setup_of(request: pytest.FixtureRequest, stage: str) -> Setup:
    if stage in OTHERS:
        setups: dict[str, Setup] = request.getfixturevalue("others")
        return setups[stage]
    fixture = {"imds": "from_imds", "report-failure": "failing"}.get(stage, "provisioned")
    setup: Setup = request.getfixturevalue(fixture)
    return setup


# -- crash at every step --------------------------------------------------------------

# Every stage that changes something under --root, and the fewest crash
# points each must show (so that a hook that stopped working fails here).
CRASHING = {
    "mount-ovf": 4,
    "hostname": 4,
    "create-user": 6,
    "ssh-keys": 6,
    "certificates": 4,
    "custom-data": 2,
    "report-ready": 2,
    "imds": 3,
    "report-failure": 2,
    "kernel-tune": 6,
    "network": 4,
    "firewall": 2,
    "resource-disk": 6,
}


WORKERS = max(1, min(2, os.cpu_count() or 1))  # crash points run side by side


@dataclass
class Rerun:
    where: str  # the crash point, as the hook named it
    run: Run  # the run after the crash
    state: str  # what it recorded
    tree: Tree  # normalized


def crash_and_rerun(stage: str, base: Path, tree: Path, point: int) -> Rerun:
    """Kill ``stage`` at crash point ``point`` on a copy of ``base``, then run it again."""
    copy_tree(base, tree)
    try:
        crashed = stage_run(stage, tree, crash_at=point)
        where = re.search(rf"crash point {point}: (.*): SIGKILL", crashed.stderr)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        assert where is not None, crashed.stderr
        again = stage_run(stage, tree)
        return Rerun(where.group(1), again, result_state(tree, stage), normalized(tree))
    finally:
        shutil.rmtree(tree, ignore_errors=True)


@pytest.mark.parametrize("stage", list(CRASHING))
def test_crash_at_every_step_then_rerun_ends_as_one_run(
    request: pytest.FixtureRequest, work: Path, stage: str
) -> None:
    setup = setup_of(request, stage)
    base = setup.before[stage]
    reference = copy_tree(base, work / f"{stage}-reference")
    # Armed past its last crash point, the run is an uninterrupted one that
    # counts them.
    run = stage_run(stage, reference, crash_at=10**6)
    assert run.returncode == 0, run.stderr
    counted = re.search(r"azagent test hook: (\d+) crash points passed", run.stderr)
    assert counted is not None, run.stderr
    crash_points = int(counted.group(1))
    print(f"{stage}: {crash_points} crash points")  # the README's figures (pytest -s)
    assert crash_points >= CRASHING[stage], f"{stage}: only {crash_points} crash points"
    expected = normalized(reference)
    # After a crash, the run that finishes the job may find all of it done:
    # it says what a second run says.
    second = stage_run(stage, reference)
    assert second.returncode == 0, second.stderr
    states = {"done", "nothing-to-do", result_state(reference, stage)}

    failures = []
    with ThreadPoolExecutor(WORKERS) as pool:
        runs = {
            point: pool.submit(crash_and_rerun, stage, base, work / f"{stage}-crash-{point}", point)
            for point in range(1, crash_points + 1)
        }
        for point, future in runs.items():
            rerun = future.result(timeout=600)
            problems = difference(expected, rerun.tree)
            if rerun.run.returncode != 0:
                problems.insert(
                    0, f"  the run after it exited {rerun.run.returncode}: {rerun.run.stderr}"
                )
            elif rerun.state not in states:
                problems.insert(0, f"  the run after it says {rerun.state}")
            if problems:
                failures.append(f"crash point {point} ({rerun.where}):\n" + "\n".join(problems))
    assert not failures, f"{stage}: {len(failures)} of {crash_points} crash points:\n" + "\n".join(
        failures
    )


HOOK_PROBE = """
import os, sys
from pathlib import Path
from azagent import fsutil, stage
os.environ[stage.CRASH_AT_ENV] = "1"
stage._arm_test_crash(Path(sys.argv[1]))
fsutil.crash_point("probe")
print("alive")
"""


@pytest.mark.parametrize(("root", "killed"), [("/", False), ("/tmp/azagent-test-root", True)])
def test_the_hook_fires_only_under_another_root(root: str, killed: bool) -> None:
    """Units run with the root /: there the hook is ignored, whatever the environment."""
    done = subprocess.run(
        [sys.executable, "-c", HOOK_PROBE, root],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if killed:
        assert done.returncode == -signal.SIGKILL
        assert "crash point 1: probe: SIGKILL" in done.stderr
    else:
        assert (done.returncode, done.stdout) == (0, "alive\n")
        assert f"{CRASH_AT_ENV} is a test hook, ignored when the root is /" in done.stderr


# -- a second run changes nothing -------------------------------------------------------


@pytest.mark.parametrize("media", ["dvd", "imds"])
def test_second_run_of_every_provisioning_stage_changes_nothing(
    request: pytest.FixtureRequest, media: str
) -> None:
    """After a first boot (from the DVD, or from IMDS), every provisioning stage again."""
    setup: Setup = request.getfixturevalue("provisioned" if media == "dvd" else "from_imds")
    tree = setup.after
    before = snapshot(tree)
    for stage in setup.stages:
        run = stage_run(stage, tree)
        assert run.returncode == 0, f"{stage}: {run.stderr}"
    after = snapshot(tree)
    assert_unchanged_but_results(before, after, setup.stages, tree)


@pytest.mark.parametrize("stage", list(OTHERS))
def test_second_run_changes_nothing(others: dict[str, Setup], stage: str) -> None:
    tree = others[stage].after
    before = snapshot(tree)
    run = stage_run(stage, tree)
    assert run.returncode == 0, run.stderr
    assert_unchanged_but_results(before, snapshot(tree), [stage], tree)


def assert_unchanged_but_results(before: Tree, after: Tree, stages: list[str], tree: Path) -> None:
    """Every path as it was, but the stages' result files (timestamps, state) and the
    pid in their lock files; each result says nothing-to-do or skipped."""
    own = {f"run/azagent/stages/{stage}.json" for stage in stages}
    own |= {f"run/azagent/lock/{stage}.lock" for stage in stages}
    changed = sorted(
        name
        for name in before.keys() | after.keys()
        if before.get(name) != after.get(name) and name not in own
    )
    assert changed == []
    for name in own:
        assert before[name][:3] == after[name][:3], name  # mode and owner
    states = {stage: result_state(tree, stage) for stage in stages}
    assert {
        s: state for s, state in states.items() if state not in ("nothing-to-do", "skipped")
    } == {}
