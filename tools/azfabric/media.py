"""Provisioning media: the scenario's ovf-env.xml as a directory, a UDF and an ISO9660 image.

The images are made with Debian's genisoimage (no loop device, no mount):
``-udf`` gives a UDF bridge image, which is what Azure attaches; the plain
ISO9660 image is for hardened guests that blacklist the udf module.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

from azagent import ovf
from azagent.redact import Secret
from azfabric.scenario import Scenario

LABEL = "rd_rdfe_stable"


class MediaError(Exception):
    """The media could not be written; the message says why."""


def provisioning(scenario: Scenario) -> ovf.Provisioning:
    """The OVF provisioning document this scenario's VM receives."""
    custom = None
    if scenario.custom_data is not None:
        custom = base64.b64encode(scenario.custom_data.encode()).decode()
    return ovf.Provisioning(
        hostname=scenario.hostname,
        username=scenario.username,
        password=Secret(scenario.password) if scenario.password is not None else None,
        custom_data_base64=custom,
        disable_ssh_password_auth=scenario.disable_password_auth,
        public_keys=tuple(
            ovf.PublicKey(path=k.path, fingerprint=k.fingerprint, value=k.value)
            for k in scenario.public_keys
        ),
        key_pairs=tuple(
            ovf.KeyPair(fingerprint=k.fingerprint or "", path=k.path) for k in scenario.key_pairs
        ),
        provision_guest_agent=scenario.provision_guest_agent,
    )


def ovf_env(scenario: Scenario) -> bytes:
    # Scenarios may describe invalid VMs on purpose (a bad username, to test
    # failure reporting): build what the platform would send, unvalidated.
    return ovf.build_ovf(provisioning(scenario), validate=False)


def _genisoimage(*args: str) -> None:
    tool = shutil.which("genisoimage")
    if tool is None:
        raise MediaError(
            "genisoimage is missing (Debian package genisoimage; tools/bootstrap installs it)"
        )
    done = subprocess.run(
        [tool, "-quiet", *args], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise MediaError(f"genisoimage failed: {done.stderr.strip()}")


def write(scenario: Scenario, out: Path, *, formats: list[str]) -> dict[str, Path]:
    """Write the media into ``out``; returns what was written, by format."""
    out.mkdir(parents=True, exist_ok=True)
    tree = out / "ovf"
    tree.mkdir(exist_ok=True)
    document = tree / "ovf-env.xml"
    # It may hold a password: readable by the owner only.
    document.touch(mode=0o600)
    document.chmod(0o600)
    document.write_bytes(ovf_env(scenario))
    written: dict[str, Path] = {}
    if "dir" in formats:
        written["dir"] = tree
    if "udf" in formats:
        image = out / "ovf-udf.iso"
        _genisoimage("-udf", "-J", "-r", "-V", LABEL, "-o", str(image), str(tree))
        image.chmod(0o600)
        written["udf"] = image
    if "iso9660" in formats:
        image = out / "ovf-iso9660.iso"
        _genisoimage("-J", "-r", "-V", LABEL, "-o", str(image), str(tree))
        image.chmod(0o600)
        written["iso9660"] = image
    return written
