"""The test guest: a Debian bookworm image with azagent installed from its .deb.

Built once with mmdebstrap (no loop devices, no mounts: `mkfs.ext4 -d` turns
the tree into a disk image) and cached under .cache/vmtest/<key>/, where the
key hashes everything that goes into it: the package list, azagent's .deb
and the harness files. Each boot gets a copy-on-write overlay of it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

TOOLS = Path(__file__).resolve().parent.parent
REPO = TOOLS.parent
CACHE = REPO / ".cache/vmtest"
GUEST = Path(__file__).resolve().parent / "guest"

PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "python3",
    "openssh-server",
    "linux-image-amd64",
    "iproute2",
    "sudo",
    "e2fsprogs",
    "fdisk",
    "util-linux",
    "passwd",
    "ntfs-3g",
    "python3-requests",
    "python3-cryptography",
    "python3-xmltodict",
    "python3-systemd",
    "python3-pyudev",
)
# The initramfs only needs what mounts the OS disk; MODULES=list keeps it small.
INITRAMFS_MODULES = ("virtio_pci", "virtio_scsi", "sd_mod", "sr_mod", "ext4", "udf", "isofs")
MASKED = (
    "systemd-firstboot.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "fstrim.timer",
    "getty@tty1.service",
    "man-db.timer",
)
HOST_PACKAGES = ("qemu-system-x86", "qemu-utils", "mmdebstrap", "genisoimage", "socat", "ntfs-3g")


@dataclass(frozen=True)
class Image:
    disk: Path
    kernel: Path
    initrd: Path


def run(argv: list[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]


def ensure_host_packages() -> None:
    missing = [
        p
        for p in HOST_PACKAGES
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False
        ).stdout
        != "install ok installed"
    ]
    if missing:
        print(f"vmtest: installing {' '.join(missing)}", file=sys.stderr)
        run(["apt-get", "update", "-qq"])
        run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            stdout=subprocess.DEVNULL,
        )


def build_deb(out: Path) -> Path:
    done = subprocess.run(
        [sys.executable, str(TOOLS / "package-deb"), "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(done.stdout.strip())


def cache_key(deb: Optional[Path] = None) -> str:
    """Everything that goes into the image: package list, azagent's sources (or the
    given .deb), harness files."""
    digest = hashlib.sha256()
    digest.update(" ".join(PACKAGES + INITRAMFS_MODULES + MASKED).encode())
    if deb is not None:
        digest.update(deb.read_bytes())
    sources = [
        REPO / "setup.cfg",
        REPO / "pyproject.toml",
        REPO / "README.md",
        TOOLS / "install",
        TOOLS / "package-deb",
    ]
    for directory in ("lib/azagent", "stages", "units", "debian") if deb is None else ():
        sources += sorted(
            p for p in (REPO / directory).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
    for path in sources:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    for path in sorted(GUEST.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def customize(rootfs: Path, deb: Path) -> None:
    """Install azagent the way an image builder would, plus the harness's own files."""
    shutil.copy(deb, rootfs / "tmp/azagent.deb")
    # A path inside the image's chroot, not this machine's /tmp.
    run(["chroot", str(rootfs), "dpkg", "-i", "/tmp/azagent.deb"], stdout=subprocess.DEVNULL)  # noqa: S108
    (rootfs / "tmp/azagent.deb").unlink()
    # The package's postinst byte-compiles azagent (py3compile): the units'
    # sandbox keeps Python from writing bytecode at boot.
    site = rootfs / "usr/lib/python3/dist-packages/azagent"
    if not any(site.glob("__pycache__/*.pyc")):
        raise SystemExit(f"vmtest: installing the package left no bytecode in {site}")
    conf = rootfs / "etc/waagent.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    shutil.copy(GUEST / "90-vmtest.conf", conf / "90-vmtest.conf")
    shutil.copy(GUEST / "80-dhcp.network", rootfs / "etc/systemd/network/80-dhcp.network")
    for unit in ("vmtest-collect", "vmtest-config"):
        script = rootfs / "usr/local/sbin" / unit
        shutil.copy(GUEST / unit, script)
        script.chmod(0o755)
        shutil.copy(GUEST / f"{unit}.service", rootfs / f"etc/systemd/system/{unit}.service")
    run(
        [
            "chroot",
            str(rootfs),
            "systemctl",
            "enable",
            "-q",
            "vmtest-collect.service",
            "vmtest-config.service",
            "systemd-networkd.service",
        ]
    )
    run(["chroot", str(rootfs), "systemctl", "mask", "-q", *MASKED])
    (rootfs / "etc/hostname").write_text("debian-image\n")
    (rootfs / "etc/machine-id").write_text("")  # a generalized image: a new id every VM


def bootstrap(rootfs: Path, packages: tuple[str, ...]) -> None:
    """The base recipe: a minbase bookworm tree with ``packages`` and a small initramfs."""
    modules = rootfs.parent / "modules"
    modules.write_text("\n".join(INITRAMFS_MODULES) + "\n")
    run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--quiet",
            f"--include={','.join(packages)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            '--essential-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" && '
            'echo MODULES=list > "$1/etc/initramfs-tools/conf.d/vmtest.conf" && '
            f'cp {modules} "$1/etc/initramfs-tools/modules"',
            "bookworm",
            str(rootfs),
        ],
        stdout=subprocess.DEVNULL,
    )


def make_disk(rootfs: Path, staging: Path) -> None:
    """The kernel, initrd and the tree as an ext4 disk image in ``staging``."""
    staging.mkdir()
    boot = rootfs / "boot"
    shutil.copy(next(boot.glob("vmlinuz-*")), staging / "vmlinuz")
    shutil.copy(next(boot.glob("initrd.img-*")), staging / "initrd.img")
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "azagent-os",
            "-d",
            str(rootfs),
            str(staging / "base.raw"),
            "3G",
        ]
    )


def build(*, force: bool = False, deb: Optional[Path] = None) -> Image:
    """The guest image with azagent from this checkout, or from the package ``deb``."""
    ensure_host_packages()
    CACHE.mkdir(parents=True, exist_ok=True)
    key = cache_key(deb)
    target = CACHE / key
    image = Image(target / "base.raw", target / "vmlinuz", target / "initrd.img")
    if image.disk.exists() and not force:
        return image
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        deb = deb or build_deb(Path(tmp))
        print(f"vmtest: building the guest image {key} (about a minute)", file=sys.stderr)
        rootfs = Path(tmp) / "rootfs"
        bootstrap(rootfs, PACKAGES)
        customize(rootfs, deb)
        staging = Path(tmp) / key
        make_disk(rootfs, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    # Old images of other keys are dead weight.
    for other in CACHE.iterdir():
        if other.is_dir() and other.name != key and len(other.name) == 16:
            shutil.rmtree(other, ignore_errors=True)
    return image
