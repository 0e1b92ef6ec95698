"""The resource-disk stage on disk-image files in temporary roots.

No real device, mount, swap or udev is touched: the resource disk is a
regular file under the test root that /dev/disk/azure/resource points at (the
stage accepts a file only under --root, never a block device there), and
/proc and /sys are small fakes where a test needs them. Partitioning and
formatting are real (sfdisk, mkfs, mkntfs and ntfscp from ntfs-3g, on files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, STAGES, child_environment, run_stage, snapshot

from azagent import resourcedisk, swapfile

MIB = 1024 * 1024
DISK_SIZE = 64 * MIB
PART_START = MIB  # sfdisk's default alignment
UNIT = "run/systemd/system/mnt-resource.mount"
RESULT = "run/azagent/stages/resource-disk.json"
WARNING = "mnt/resource/DATALOSS_WARNING_README.txt"
SWAP = "mnt/resource/swapfile"

TOOLS = ("sfdisk", "blkid", "mkfs.ext4", "mkfs.ext3", "mkntfs", "ntfscp", "ntfsls", "mkswap")


@pytest.fixture(autouse=True)
def _tools() -> None:
    """Missing tools fail the tests (never skip them): tools/bootstrap installs them."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [tool for tool in TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: install fdisk, e2fsprogs, util-linux, ntfs-3g")


def sh(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def system_state(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """The tree without azagent's bookkeeping (result files, lock holder pid)."""
    own = ("run", "run/azagent")
    return {
        k: v for k, v in snapshot(root).items() if k not in own and not k.startswith("run/azagent/")
    }


def result(root: Path) -> dict[str, object]:
    data = json.loads((root / RESULT).read_text())
    assert isinstance(data, dict)
    return data


def make_disk(root: Path, name: str = "sdb", size: int = DISK_SIZE) -> Path:
    """An empty disk image at /dev/<name>, named the resource disk as udev would."""
    image = root / "dev" / name
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    link = root / "dev/disk/azure/resource"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"../../{name}")
    return image


def configure(root: Path, **settings: str) -> None:
    (root / "etc").mkdir(exist_ok=True)
    lines = [f"{key.replace('_', '.', 1)}={value}" for key, value in settings.items()]
    (root / "etc/waagent.conf").write_text("\n".join(lines) + "\n")


def splice(image: Path, offset: int, filesystem: Path) -> None:
    with open(filesystem, "rb") as source, open(image, "r+b") as target:
        target.seek(offset)
        target.write(source.read())


def ntfs_disk(image: Path, tmp_path: Path, files: dict[str, bytes], *, msr: bool = False) -> None:
    """The platform's layout: one NTFS partition (MBR type 7), or GPT with an MSR first."""
    if msr:
        script = (
            "label: gpt\n"
            f"size=16MiB, type={resourcedisk.MSR_GPT_TYPE}\n"
            f"type={resourcedisk.NTFS_PARTITION_TYPES[1]}\n"
        )
    else:
        script = "label: dos\n,,7\n"
    sh("sfdisk", "--quiet", str(image), stdin=script)
    table = json.loads(sh("sfdisk", "--json", str(image)))["partitiontable"]
    last = table["partitions"][-1]
    start, size = last["start"] * 512, last["size"] * 512
    volume = tmp_path / "ntfs.img"
    with open(volume, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["mkntfs", "-q", "-F", "-f", "-L", "Temporary Storage", str(volume)],
        capture_output=True,
        check=True,
    )
    for name, content in files.items():
        source = tmp_path / "ntfs-source"
        source.write_bytes(content)
        sh("ntfscp", "-f", str(volume), str(source), name)
    splice(image, start, volume)
    volume.unlink()


def ext4_partition(image: Path, tmp_path: Path, content: dict[str, bytes] | None = None) -> None:
    """One MBR type-83 partition holding ext4 (with ``content``), as an earlier run made it."""
    sh("sfdisk", "--quiet", str(image), stdin="label: dos\n,,83\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name, data in (content or {}).items():
        (tree / name).write_bytes(data)
    volume = tmp_path / "ext4.img"
    with open(volume, "wb") as f:
        f.truncate(DISK_SIZE - PART_START)
    sh("mkfs.ext4", "-q", "-F", "-d", str(tree), str(volume))
    splice(image, PART_START, volume)
    volume.unlink()


def partition_table(image: Path) -> tuple[str, list[tuple[int, int, str]]]:
    table = json.loads(sh("sfdisk", "--json", str(image)))["partitiontable"]
    return table["label"], [
        (p["start"] * 512, p["size"] * 512, p["type"]) for p in table["partitions"]
    ]


def filesystem_at(image: Path, offset: int) -> str:
    done = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", "-O", str(offset), str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def unit_text(
    what: str = "/dev/disk/azure/resource-part1", options: str = "defaults,nofail"
) -> str:
    return (
        "# Written by azagent's resource-disk stage from ResourceDisk.* in waagent.conf.\n"
        "# It lives in /run: at every boot the stage checks the disk again (it can come\n"
        "# back blank after a deallocation) and writes this unit again.\n"
        "[Unit]\n"
        "Description=Azure resource disk (temporary storage)\n"
        "Documentation=file:/usr/share/doc/azagent/README.md\n"
        "\n"
        "[Mount]\n"
        f"What={what}\n"
        "Where=/mnt/resource\n"
        "Type=ext4\n"
        f"Options={options}\n"
    )


def fake_os_disk(root: Path, disk: str = "sda") -> None:
    """/proc and /sys saying / is mounted from <disk>1 (8:1), as the kernel shows it."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw\n"
    )
    (root / "proc/swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
    partition = root / f"sys/block/{disk}/{disk}1"
    partition.mkdir(parents=True)
    (partition / "partition").write_text("1\n")
    (partition / "dev").write_text("8:1\n")
    (root / "sys/dev/block").mkdir(parents=True)
    (root / "sys/dev/block/8:1").symlink_to(f"../../block/{disk}/{disk}1")
    (root / "sys/class/block").mkdir(parents=True)
    (root / f"sys/class/block/{disk}1").symlink_to(f"../../block/{disk}/{disk}1")


# --- formatting ---------------------------------------------------------------------


def test_empty_disk_is_partitioned_formatted_and_given_a_mount_unit(root: Path) -> None:
    image = make_disk(root)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert partition_table(image) == ("dos", [(PART_START, DISK_SIZE - PART_START, "83")])
    assert filesystem_at(image, PART_START) == "ext4"
    unit = root / UNIT
    assert unit.read_text() == unit_text()
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    warning = root / WARNING
    assert warning.read_bytes() == resourcedisk.WARNING_TEXT
    assert b"TEMPORARY DISK" in warning.read_bytes()
    assert not (root / SWAP).exists()  # ResourceDisk.EnableSwap defaults to n
    recorded = result(root)
    assert recorded["state"] == "done"
    assert recorded["changes"][0].startswith(  # type: ignore[index]
        "partition /dev/sdb (one partition, MBR, type 83) and make ext4 on it; it held nothing"
    )
    assert "not mounting under --root" in run.stderr


def test_second_run_changes_nothing(root: Path) -> None:
    make_disk(root)
    configure(root, ResourceDisk_EnableSwap="y", ResourceDisk_SwapSizeMB="8")
    assert run_stage("resource-disk", "--root", str(root)).returncode == 0
    before = system_state(root)
    again = run_stage("resource-disk", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert system_state(root) == before
    assert result(root)["state"] == "nothing-to-do"
    assert "nothing to do" in again.stderr


def test_dry_run_writes_nothing(root: Path) -> None:
    image = make_disk(root)
    configure(root, ResourceDisk_EnableSwap="y", ResourceDisk_SwapSizeMB="8")
    before = snapshot(root)
    run = run_stage("resource-disk", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert snapshot(root) == before
    assert image.read_bytes() == bytes(DISK_SIZE)
    assert "would:" in run.stdout
    assert "partition /dev/sdb (one partition, MBR, type 83) and make ext4" in run.stdout
    assert "create the swap file /mnt/resource/swapfile (8 MiB, mode 0600)" in run.stdout


def test_fresh_ntfs_holding_only_the_warning_is_formatted(root: Path, tmp_path: Path) -> None:
    image = make_disk(root)
    ntfs_disk(image, tmp_path, {"DATALOSS_WARNING_README.txt": b"Temporary storage\r\n"})
    assert filesystem_at(image, PART_START) == "ntfs"
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert partition_table(image) == ("dos", [(PART_START, DISK_SIZE - PART_START, "83")])
    assert filesystem_at(image, PART_START) == "ext4"
    assert "it held a fresh NTFS holding only DATALOSS_WARNING_README.txt" in run.stderr
    assert (root / UNIT).read_text() == unit_text()


def test_gen2_layout_with_reserved_partition_is_formatted(root: Path, tmp_path: Path) -> None:
    image = make_disk(root)
    ntfs_disk(
        image,
        tmp_path,
        {"DATALOSS_WARNING_README.txt": b"x", "System Volume Information": b""},
        msr=True,
    )
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    label, parts = partition_table(image)
    assert (label, [p[2] for p in parts]) == ("dos", ["83"])
    assert filesystem_at(image, PART_START) == "ext4"


def test_ntfs_with_user_data_is_refused_and_left_byte_identical(root: Path, tmp_path: Path) -> None:
    image = make_disk(root)
    ntfs_disk(
        image,
        tmp_path,
        {"DATALOSS_WARNING_README.txt": b"x", "important.db": b"do not lose me"},
    )
    before = system_state(root)
    sha = digest(image)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    reason = (
        "refusing to format the resource disk /dev/sdb: its NTFS holds files besides "
        "DATALOSS_WARNING_README.txt: /important.db"
    )
    assert reason in run.stderr
    assert reason in str(result(root)["reason"])
    assert result(root)["state"] == "failed"
    assert digest(image) == sha
    assert system_state(root) == before  # no unit, no warning file, nothing


def test_ntfs_without_the_warning_but_with_files_is_refused(root: Path, tmp_path: Path) -> None:
    image = make_disk(root)
    ntfs_disk(image, tmp_path, {"notes.txt": b"mine"})
    sha = digest(image)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "/notes.txt" in run.stderr
    assert digest(image) == sha


def test_damaged_ntfs_is_refused(root: Path, tmp_path: Path) -> None:
    image = make_disk(root)
    ntfs_disk(image, tmp_path, {"DATALOSS_WARNING_README.txt": b"x"})
    with open(image, "r+b") as f:  # tear the $MFT record (blkid still sees an NTFS)
        f.seek(PART_START)
        boot = f.read(512)
        cluster = int.from_bytes(boot[0x0B:0x0D], "little") * boot[0x0D]
        f.seek(PART_START + int.from_bytes(boot[0x30:0x38], "little") * cluster + 510)
        f.write(b"\xde\xad")
    assert filesystem_at(image, PART_START) == "ntfs"
    sha = digest(image)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "its NTFS cannot be shown to be fresh" in run.stderr
    assert digest(image) == sha


def test_the_os_disk_is_never_touched(root: Path) -> None:
    """A link pointing at the disk holding / is refused, though the disk looks blank."""
    image = make_disk(root, name="sda")
    fake_os_disk(root, "sda")
    before = system_state(root)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "holds the root filesystem: that is the OS disk, never formatted" in run.stderr
    assert image.read_bytes() == bytes(DISK_SIZE)
    assert system_state(root) == before


def test_the_os_disk_under_lvm_is_never_touched(root: Path) -> None:
    """/ on dm-0, whose slave is sda2: sda is the OS disk all the same."""
    image = make_disk(root, name="sda")
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text("22 1 254:0 / / rw - ext4 /dev/mapper/vg-root rw\n")
    dm = root / "sys/block/dm-0"
    (dm / "slaves").mkdir(parents=True)
    (root / "sys/block/sda/sda2").mkdir(parents=True)
    (root / "sys/block/sda/sda2/partition").write_text("2\n")
    (root / "sys/class/block").mkdir(parents=True)
    (root / "sys/class/block/dm-0").symlink_to("../../block/dm-0")
    (root / "sys/class/block/sda2").symlink_to("../../block/sda/sda2")
    (dm / "slaves/sda2").symlink_to("../../sda/sda2")
    (root / "sys/dev/block").mkdir(parents=True)
    (root / "sys/dev/block/254:0").symlink_to("../../block/dm-0")
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "that is the OS disk" in run.stderr
    assert image.read_bytes() == bytes(DISK_SIZE)


def test_a_disk_mounted_elsewhere_is_refused(root: Path) -> None:
    image = make_disk(root, name="sdb")
    fake_os_disk(root, "sda")
    (root / "sys/block/sdb/sdb1").mkdir(parents=True)
    (root / "sys/block/sdb/sdb1/partition").write_text("1\n")
    (root / "sys/dev/block/8:17").symlink_to("../../block/sdb/sdb1")
    (root / "sys/class/block/sdb1").symlink_to("../../block/sdb/sdb1")
    with open(root / "proc/self/mountinfo", "a") as f:
        f.write("40 22 8:17 / /data rw - xfs /dev/sdb1 rw\n")
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "the resource disk /dev/sdb is in use: /dev/sdb1 is mounted at /data" in run.stderr
    assert image.read_bytes() == bytes(DISK_SIZE)


def test_existing_filesystem_is_mounted_not_formatted(root: Path, tmp_path: Path) -> None:
    image = make_disk(root)
    ext4_partition(image, tmp_path, {"cache.bin": b"still here"})
    sha = digest(image)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert digest(image) == sha
    assert (root / UNIT).read_text() == unit_text()
    assert not any("partition /dev/sdb" in c for c in result(root)["changes"])  # type: ignore[attr-defined]


def test_filesystem_on_the_whole_disk_is_mounted_from_the_disk(root: Path) -> None:
    image = make_disk(root)
    sh("mkfs.ext4", "-q", "-F", str(image))
    sha = digest(image)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert digest(image) == sha
    assert (root / UNIT).read_text() == unit_text(what="/dev/disk/azure/resource")


def test_another_filesystem_is_refused(root: Path, tmp_path: Path) -> None:
    image = make_disk(root)
    ext4_partition(image, tmp_path)
    configure(root, ResourceDisk_Filesystem="xfs")
    sha = digest(image)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "a dos partition table (1: type 83 ext4) and no xfs on partition 1" in run.stderr
    assert digest(image) == sha


def test_an_unfinished_format_is_finished(root: Path) -> None:
    """One Linux partition without any signature: what an interrupted run leaves."""
    image = make_disk(root)
    sh("sfdisk", "--quiet", str(image), stdin="label: dos\n,,83\n")
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "an unfinished format" in run.stderr
    assert filesystem_at(image, PART_START) == "ext4"


def test_two_partitions_are_refused(root: Path) -> None:
    image = make_disk(root)
    sh("sfdisk", "--quiet", str(image), stdin="label: dos\n,16MiB,83\n,,83\n")
    sha = digest(image)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "refusing to format" in run.stderr
    assert digest(image) == sha


def test_missing_mkfs_fails_before_touching_the_disk(root: Path) -> None:
    image = make_disk(root)
    configure(root, ResourceDisk_Filesystem="nosuchfs")
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "mkfs.nosuchfs is not installed" in run.stderr
    assert image.read_bytes() == bytes(DISK_SIZE)


def test_fstab_owning_the_mount_point_is_refused(root: Path) -> None:
    image = make_disk(root)
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text("# comment\nUUID=1234 /mnt/resource ext4 defaults 0 2\n")
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "/etc/fstab:2 already mounts /mnt/resource" in run.stderr
    assert image.read_bytes() == bytes(DISK_SIZE)


# --- when it does not apply --------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"ResourceDisk_Format": "n"}, "ResourceDisk.Format=n"),
        ({"ResourceDisk_Filesystem": "ntfs"}, "ResourceDisk.Filesystem=ntfs"),
    ],
)
def test_configuration_skips(root: Path, settings: dict[str, str], reason: str) -> None:
    image = make_disk(root)
    configure(root, **settings)
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "skipped"
    assert reason in str(result(root)["reason"])
    assert image.read_bytes() == bytes(DISK_SIZE)
    assert not (root / UNIT).exists()


def test_no_resource_disk_skips(root: Path) -> None:
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "skipped"
    assert "no resource disk" in str(result(root)["reason"])


def test_a_link_leading_out_of_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.img"
    with open(outside, "wb") as f:
        f.truncate(DISK_SIZE)
    link = root / "dev/disk/azure/resource"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(outside, link.parent))
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "leads outside --root" in run.stderr
    assert outside.read_bytes() == bytes(DISK_SIZE)


def test_an_absolute_link_stays_inside_the_root(root: Path) -> None:
    image = make_disk(root)
    link = root / "dev/disk/azure/resource"
    link.unlink()
    link.symlink_to("/dev/sdb")  # read as <root>/dev/sdb, never this machine's
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert filesystem_at(image, PART_START) == "ext4"


# --- the mount unit -----------------------------------------------------------------


def test_mount_options_and_mount_point(root: Path) -> None:
    make_disk(root)
    configure(
        root,
        ResourceDisk_MountPoint="/mnt/scratch-disk",
        ResourceDisk_MountOptions="nodev,nosuid",
    )
    assert run_stage("resource-disk", "--root", str(root)).returncode == 0
    unit = root / "run/systemd/system/mnt-scratch\\x2ddisk.mount"
    text = unit.read_text()
    assert "Where=/mnt/scratch-disk\n" in text
    assert "Options=nodev,nosuid,nofail\n" in text
    assert (root / "mnt/scratch-disk/DATALOSS_WARNING_README.txt").is_file()
    # A changed option rewrites the unit; nothing else.
    configure(
        root,
        ResourceDisk_MountPoint="/mnt/scratch-disk",
        ResourceDisk_MountOptions="nofail,noexec",
    )
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0
    assert result(root)["changes"] == [
        "write the mount unit /run/systemd/system/mnt-scratch\\x2ddisk.mount "
        "(/dev/disk/azure/resource-part1 on /mnt/scratch-disk, nofail,noexec)"
    ]


@pytest.mark.parametrize(
    "path", ["/mnt/resource", "/mnt/scratch-disk", "/data/.hidden/x y", "/srv/ré", "/mnt//a/"]
)
def test_unit_names_match_systemd_escape(path: str) -> None:
    expected = sh("systemd-escape", "--path", "--suffix=mount", path).strip()
    assert resourcedisk.unit_name(path) == expected


def test_mount_unit_is_accepted_by_systemd(root: Path) -> None:
    make_disk(root)
    assert run_stage("resource-disk", "--root", str(root)).returncode == 0
    done = subprocess.run(
        ["systemd-analyze", "verify", str(root / UNIT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


# --- swap ---------------------------------------------------------------------------

# Runs the stage with a umask that leaves new files world-readable, and records
# every os.open() of the swap file (flags, mode, and the file's mode the moment
# it exists) and, through Python's audit hooks, every chmod: the file must be
# created 0600 (O_EXCL) and never opened up.
AUDITED = """
import json, os, runpy, sys
os.umask(0)
log, stage = sys.argv[1], sys.argv[2]
events = []
swap_fds = set()
real_open, real_close = os.open, os.close
def observed_open(path, flags, mode=0o777, *args, **kwargs):
    fd = real_open(path, flags, mode, *args, **kwargs)
    if str(path).endswith("/swapfile"):
        # The mode the file has the moment it exists, before a byte is written.
        events.append(["open", str(path), flags, mode, os.fstat(fd).st_mode & 0o7777])
        swap_fds.add(fd)
    return fd
def observed_close(fd):
    swap_fds.discard(fd)
    return real_close(fd)
os.open, os.close = observed_open, observed_close
def hook(event, args):
    if event == "os.chmod" and (args[0] in swap_fds or str(args[0]).endswith("/swapfile")):
        events.append(["chmod", args[1]])
sys.addaudithook(hook)
sys.argv = [stage] + sys.argv[3:]
try:
    runpy.run_path(stage, run_name="__main__")
finally:
    with open(log, "w") as f:
        json.dump(events, f)
"""


def run_audited(
    tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], list[list[object]]]:
    log = tmp_path / "audit.json"
    env = child_environment()
    done = subprocess.run(
        [sys.executable, "-c", AUDITED, str(log), str(STAGES / "resource-disk"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        cwd=REPO,
    )
    return done, json.loads(log.read_text())


def test_swap_file_is_0600_from_its_first_byte_allocated_and_formatted(
    root: Path, tmp_path: Path
) -> None:
    make_disk(root)
    configure(root, ResourceDisk_EnableSwap="y", ResourceDisk_SwapSizeMB="16")
    done, events = run_audited(tmp_path, "--root", str(root))
    assert done.returncode == 0, done.stderr
    swap = root / SWAP
    creations = [e for e in events if e[0] == "open" and int(str(e[2])) & os.O_CREAT]
    assert len(creations) == 1
    _, path, flags, mode, mode_at_creation = creations[0]
    assert path == str(swap)
    assert int(str(flags)) & os.O_EXCL
    assert (mode, mode_at_creation) == (0o600, 0o600)
    chmods = [e[1] for e in events if e[0] == "chmod"]
    assert chmods == [0o600]  # the fchmod pinning it against the umask, nothing wider
    st = swap.stat()
    assert oct(st.st_mode & 0o7777) == "0o600"  # despite umask 0
    assert st.st_uid == os.getuid()
    assert st.st_size == 16 * MIB
    assert st.st_blocks * 512 >= 16 * MIB, "sparse"
    assert sh("blkid", "-p", "-o", "value", "-s", "TYPE", str(swap)).strip() == "swap"
    record = root / "mnt/resource" / swapfile.SWAP_RECORD
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert "not activating swap under --root" in done.stderr


def test_swap_file_written_with_zeros_where_fallocate_is_not_used(root: Path) -> None:
    make_disk(root)
    configure(
        root,
        ResourceDisk_Filesystem="ext3",
        ResourceDisk_EnableSwap="y",
        ResourceDisk_SwapSizeMB="8",
    )
    assert run_stage("resource-disk", "--root", str(root)).returncode == 0
    st = (root / SWAP).stat()
    assert (st.st_size, oct(st.st_mode & 0o777)) == (8 * MIB, "0o600")
    assert st.st_blocks * 512 >= 8 * MIB


def test_swap_file_is_resized(root: Path) -> None:
    make_disk(root)
    configure(root, ResourceDisk_EnableSwap="y", ResourceDisk_SwapSizeMB="8")
    assert run_stage("resource-disk", "--root", str(root)).returncode == 0
    configure(root, ResourceDisk_EnableSwap="y", ResourceDisk_SwapSizeMB="12")
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["changes"] == [
        "resize the swap file /mnt/resource/swapfile from 8 to 12 MiB"
    ]
    st = (root / SWAP).stat()
    assert (st.st_size, oct(st.st_mode & 0o777)) == (12 * MIB, "0o600")
    assert st.st_blocks * 512 >= 12 * MIB
    assert sh("blkid", "-p", "-o", "value", "-s", "TYPE", str(root / SWAP)).strip() == "swap"
    assert run_stage("resource-disk", "--root", str(root)).returncode == 0
    assert result(root)["state"] == "nothing-to-do"


def test_swap_it_did_not_create_is_left_alone(root: Path) -> None:
    make_disk(root)
    theirs = root / SWAP
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"someone else's swap")
    configure(root, ResourceDisk_EnableSwap="y", ResourceDisk_SwapSizeMB="8")
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "/mnt/resource/swapfile exists and azagent did not create it: left alone" in run.stderr
    assert theirs.read_bytes() == b"someone else's swap"
    # The disk was still formatted and given its unit before the refusal.
    assert (root / UNIT).exists()
    assert result(root)["state"] == "failed"
    # Turning swap off does not remove it either.
    configure(root, ResourceDisk_EnableSwap="n")
    assert run_stage("resource-disk", "--root", str(root)).returncode == 0
    assert theirs.read_bytes() == b"someone else's swap"


def test_swap_turned_off_removes_the_one_it_created(root: Path) -> None:
    make_disk(root)
    configure(root, ResourceDisk_EnableSwap="y", ResourceDisk_SwapSizeMB="8")
    assert run_stage("resource-disk", "--root", str(root)).returncode == 0
    configure(root, ResourceDisk_EnableSwap="n", ResourceDisk_SwapSizeMB="8")
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert not (root / SWAP).exists()
    assert not (root / "mnt/resource" / swapfile.SWAP_RECORD).exists()
    assert result(root)["changes"] == [
        "remove the swap file /mnt/resource/swapfile azagent created (no swap configured)"
    ]


def test_swap_encryption_is_reported_unsupported(root: Path) -> None:
    make_disk(root)
    configure(
        root,
        ResourceDisk_EnableSwap="y",
        ResourceDisk_SwapSizeMB="8",
        ResourceDisk_EnableSwapEncryption="y",
    )
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "ResourceDisk.EnableSwapEncryption=y is not supported yet" in run.stderr
    assert not (root / SWAP).exists()
    assert (root / UNIT).exists()


def test_swap_larger_than_the_disk_fails_cleanly(root: Path) -> None:
    """Under --root the swap file lands in the tree; ask for more than any disk has."""
    make_disk(root)
    configure(root, ResourceDisk_EnableSwap="y", ResourceDisk_SwapSizeMB=str(16 * 1024 * 1024))
    run = run_stage("resource-disk", "--root", str(root))
    assert run.returncode == 1
    assert "not enough space on /mnt/resource for a swap file" in run.stderr
    assert not (root / SWAP).exists()
