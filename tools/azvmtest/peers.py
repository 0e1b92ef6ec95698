"""The bench's guest images of the peers: cloud-init, WALinuxAgent, and no agent at all.

Each variant is the test guest's base recipe (image.bootstrap with image.PACKAGES)
plus the peer's Debian package, configured and patched so that it runs against
the emulator. The peers hard-code the platform's addresses; here every one of
them is replaced by the guest-side address that qemu forwards to the emulator on
the host's loopback (boot.WIRESERVER_IP, boot.IMDS_IP), each replacement checked
to happen exactly once, and the patched modules are recompiled in the image.
Nothing in a bench guest is configured with a real platform address.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from azvmtest import image
from azvmtest.boot import IMDS_IP, WIRESERVER_IP

REAL_WIRESERVER = "168.63.129.16"
REAL_IMDS = "169.254.169.254"
DIST = "usr/lib/python3/dist-packages"
AGENTS = ("azagent", "cloud-init", "waagent", "none")


class PatchError(RuntimeError):
    """A replacement did not find its text exactly as expected: the peer changed."""


@dataclass(frozen=True)
class Replace:
    """Replace ``old`` by ``new`` in ``path`` (relative to the image root), ``count`` times."""

    path: str
    old: str
    new: str
    count: int = 1


def route_entry(ip: str) -> str:
    """An IPv4 address as the kernel's /proc/net/route prints it (little-endian hex)."""
    return "".join(f"{int(octet):02X}" for octet in reversed(ip.split(".")))


def replace_exactly(text: str, change: Replace) -> str:
    found = text.count(change.old)
    if found != change.count:
        raise PatchError(f"{change.path}: expected {change.count} of {change.old!r}, found {found}")
    return text.replace(change.old, change.new)


def patch_tree(root: Path, changes: tuple[Replace, ...]) -> list[str]:
    """Apply ``changes`` under ``root``; all or nothing. Returns one line per change."""
    texts: dict[str, str] = {}
    for change in changes:
        path = root / change.path
        if change.path not in texts:
            try:
                texts[change.path] = path.read_text()
            except OSError as e:
                raise PatchError(f"{change.path}: {e.strerror}") from e
        texts[change.path] = replace_exactly(texts[change.path], change)
    for name, text in texts.items():
        (root / name).write_text(text)
    return [f"{c.path}: {c.old} -> {c.new}" for c in changes]


# -- the variants -------------------------------------------------------------------

CLOUDINIT = f"{DIST}/cloudinit/sources"
WAAGENT = f"{DIST}/azurelinuxagent/common"

PATCHES: dict[str, tuple[Replace, ...]] = {
    "cloud-init": (
        Replace(
            f"{CLOUDINIT}/helpers/azure.py",
            f'DEFAULT_WIRESERVER_ENDPOINT = "{REAL_WIRESERVER}"',
            f'DEFAULT_WIRESERVER_ENDPOINT = "{WIRESERVER_IP}"',
        ),
        Replace(
            f"{CLOUDINIT}/DataSourceAzure.py",
            f'IMDS_URL = "http://{REAL_IMDS}/metadata"',
            f'IMDS_URL = "http://{IMDS_IP}/metadata"',
        ),
    ),
    "waagent": (
        Replace(
            f"{WAAGENT}/utils/restutil.py",
            f"KNOWN_WIRESERVER_IP = '{REAL_WIRESERVER}'",
            f"KNOWN_WIRESERVER_IP = '{WIRESERVER_IP}'",
        ),
        Replace(
            f"{WAAGENT}/dhcp.py",
            f"KNOWN_WIRESERVER_IP_ENTRY = '{route_entry(REAL_WIRESERVER)}'",
            f"KNOWN_WIRESERVER_IP_ENTRY = '{route_entry(WIRESERVER_IP)}'",
        ),
        Replace(
            f"{WAAGENT}/protocol/imds.py",
            f"IMDS_ENDPOINT = '{REAL_IMDS}'",
            f"IMDS_ENDPOINT = '{IMDS_IP}'",
        ),
        Replace(
            f"{WAAGENT}/protocol/metadata_server_migration_util.py",
            f'_KNOWN_METADATASERVER_IP = "{REAL_IMDS}"',
            f'_KNOWN_METADATASERVER_IP = "{IMDS_IP}"',
        ),
        # Debian's default hands provisioning to cloud-init.
        Replace("etc/waagent.conf", "Provisioning.Agent=cloud-init", "Provisioning.Agent=waagent"),
        # Host keys of one type, as azagent's test configuration (90-vmtest.conf) has them.
        Replace(
            "etc/waagent.conf",
            "Provisioning.SshHostKeyPairType=auto",
            "Provisioning.SshHostKeyPairType=ed25519",
        ),
    ),
}

# Files added to the image, by variant.
FILES: dict[str, dict[str, str]] = {
    "cloud-init": {
        "etc/cloud/cloud.cfg.d/90-bench.cfg": (
            "# The bench: the Azure datasource only; the minimal image has no locales;\n"
            "# host keys of one type, as azagent's test configuration has them.\n"
            "datasource_list: [ Azure ]\n"
            "locale: C.UTF-8\n"
            "ssh_genkeytypes: [ ed25519 ]\n"
        ),
    },
    "waagent": {
        # The unit requires Hyper-V; qemu is not.
        "etc/systemd/system/walinuxagent.service.d/90-bench.conf": (
            "[Unit]\nConditionVirtualization=\n"
        ),
        # waagent learns the WireServer from DHCP option 245 or a host route to it;
        # qemu's DHCP sends no option 245.
        "etc/systemd/network/80-dhcp.network.d/90-wireserver-route.conf": (
            f"[Route]\nDestination={WIRESERVER_IP}/32\n"
        ),
    },
}

PACKAGES: dict[str, tuple[str, ...]] = {
    "cloud-init": ("cloud-init",),
    "waagent": ("waagent", "eject"),
    "none": (),
}
UNITS: dict[str, tuple[str, ...]] = {
    "cloud-init": (),
    "waagent": ("walinuxagent.service",),
    "none": ("ssh.service",),
}
USER = "alice"


@dataclass(frozen=True)
class Variant:
    name: str
    image: image.Image
    key: str
    changes: tuple[str, ...]  # every change made to the peer, one line each
    versions: str  # the peer's package and version


def cache_key(name: str, public_key: str) -> str:
    """What goes into the variant: the base recipe, the peer's packages, patches, files and
    the code that applies them (not this whole file: an edit elsewhere keeps the images)."""
    digest = hashlib.sha256()
    digest.update(" ".join(image.PACKAGES + image.INITRAMFS_MODULES + image.MASKED).encode())
    recipe = (name, PACKAGES[name], PATCHES.get(name), FILES.get(name), UNITS[name], USER)
    digest.update(repr(recipe).encode())
    if name == "none":
        digest.update(public_key.encode())
    for function in (customize, patch_tree, replace_exactly, image.bootstrap, image.make_disk):
        digest.update(inspect.getsource(function).encode())
    digest.update((image.GUEST / "80-dhcp.network").read_bytes())
    return digest.hexdigest()[:16]


def customize(name: str, rootfs: Path, public_key: str) -> list[str]:
    """Configure and patch the peer in ``rootfs``; returns the list of changes."""
    changes = patch_tree(rootfs, PATCHES.get(name, ()))
    compiled = sorted({c.path for c in PATCHES.get(name, ()) if c.path.endswith(".py")})
    if compiled:
        # The guest's own interpreter writes the bytecode the guest will load.
        image.run(
            ["chroot", str(rootfs), "python3", "-m", "py_compile", *(f"/{p}" for p in compiled)]
        )
        changes += [f"{p}: recompiled" for p in compiled]
    for path, text in FILES.get(name, {}).items():
        target = rootfs / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        changes.append(f"{path}: added: " + text.strip().replace("\n", " | "))
    if name == "none":
        image.run(["chroot", str(rootfs), "useradd", "-m", "-s", "/bin/bash", USER])
        ssh = rootfs / "home" / USER / ".ssh"
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text(public_key + "\n")
        image.run(["chroot", str(rootfs), "chown", "-R", f"{USER}:{USER}", f"/home/{USER}/.ssh"])
        changes.append(f"user {USER} with the bench's SSH key baked in")
    shutil.copy(image.GUEST / "80-dhcp.network", rootfs / "etc/systemd/network/80-dhcp.network")
    image.run(
        ["chroot", str(rootfs), "systemctl", "enable", "-q", "systemd-networkd.service",
         *UNITS[name]]
    )  # fmt: skip
    image.run(["chroot", str(rootfs), "systemctl", "mask", "-q", *image.MASKED])
    (rootfs / "etc/hostname").write_text("debian-image\n")
    (rootfs / "etc/machine-id").write_text("")
    return changes


def package_versions(rootfs: Path, name: str) -> str:
    if not PACKAGES[name]:
        return "no agent"
    done = subprocess.run(
        ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", PACKAGES[name][0]],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().replace("\t", " ")


def build(name: str, public_key: str, *, force: bool = False) -> Variant:
    """The variant's image, from the cache when its key matches."""
    image.ensure_host_packages()
    image.CACHE.mkdir(parents=True, exist_ok=True)
    key = cache_key(name, public_key)
    target = image.CACHE / f"bench-{name}-{key}"
    built = image.Image(target / "base.raw", target / "vmlinuz", target / "initrd.img")
    if not built.disk.exists() or force:
        with tempfile.TemporaryDirectory(dir=image.CACHE) as tmp:
            print(f"bench: building the {name} image {key} (a few minutes)", file=sys.stderr)
            rootfs = Path(tmp) / "rootfs"
            image.bootstrap(rootfs, image.PACKAGES + PACKAGES[name])
            changes = customize(name, rootfs, public_key)
            versions = package_versions(rootfs, name)
            staging = Path(tmp) / "staging"
            image.make_disk(rootfs, staging)
            (staging / "changes.txt").write_text("".join(c + "\n" for c in changes))
            (staging / "versions.txt").write_text(versions + "\n")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        for other in image.CACHE.glob(f"bench-{name}-*"):
            if other != target:
                shutil.rmtree(other, ignore_errors=True)
    return Variant(
        name,
        built,
        key,
        tuple((target / "changes.txt").read_text().splitlines()),
        (target / "versions.txt").read_text().strip(),
    )
