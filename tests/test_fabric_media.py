"""The emulator's provisioning media and certificates, checked by azagent's own parsers."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO
from test_fabric import WIRE, call
from xmlshape import shape

from azagent import certs, ovf, wireserver

sys.path.insert(0, str(REPO / "tools"))
from azfabric import keys
from azfabric.scenario import KeyPair, PublicKey, Scenario, materialize
from azfabric.server import Fabric

SECRET_SCENARIO = {
    "hostname": "media-vm",
    "username": "alice",
    "password": "S3cret-passw0rd!",
    "disable_password_auth": False,
    "custom_data": "#!/bin/sh\necho customdata-ran\n",
}


def media(tmp_path: Path, *formats: str) -> dict[str, str]:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps(SECRET_SCENARIO))
    args = [sys.executable, str(REPO / "tools/fabric"), "media", "--scenario", str(scenario)]
    args += ["--out", str(tmp_path / "media")]
    for name in formats:
        args += ["--format", name]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    written: dict[str, str] = json.loads(done.stdout)
    return written


def check_document(data: bytes) -> None:
    parsed = ovf.parse_ovf(data)
    assert parsed.hostname == "media-vm"
    assert parsed.username == "alice"
    assert parsed.password is not None
    assert parsed.password.reveal() == "S3cret-passw0rd!"
    assert parsed.custom_data == b"#!/bin/sh\necho customdata-ran\n"
    assert parsed.disable_ssh_password_auth is False
    [key] = parsed.public_keys
    assert key.value is not None
    assert key.value.startswith("ssh-ed25519 ")
    assert key.path == "/home/alice/.ssh/authorized_keys"
    sample = (FIXTURES / "walinuxagent/ovf-env.xml").read_bytes()
    # Same elements and namespaces as the platform's, except the key pair this VM
    # lacks and the Fingerprint of a key given inline (only keys delivered as
    # certificates have one).
    missing = shape(sample) - shape(data)
    assert all("KeyPair" in path or path.endswith("}Fingerprint") for path in missing), missing
    assert shape(data) <= shape(sample)


def test_directory_media_is_private_and_parses(tmp_path: Path) -> None:
    written = media(tmp_path, "dir")
    document = Path(written["dir"]) / "ovf-env.xml"
    assert document.stat().st_mode & 0o777 == 0o600
    check_document(document.read_bytes())


@pytest.mark.parametrize("kind", ["udf", "iso9660"])
def test_images_carry_the_document(tmp_path: Path, kind: str) -> None:
    isoinfo = shutil.which("isoinfo")
    assert isoinfo is not None, "isoinfo comes with genisoimage (tools/bootstrap)"
    image = Path(media(tmp_path, kind)[kind])
    assert image.stat().st_mode & 0o777 == 0o600
    data = image.read_bytes()
    # A UDF image carries the NSR0x volume structure descriptors; plain ISO9660 does not.
    assert (b"NSR0" in data) == (kind == "udf")
    extracted = subprocess.run(
        [isoinfo, "-R", "-i", str(image), "-x", "/ovf-env.xml"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    check_document(extracted)


def test_same_materialized_scenario_gives_the_same_keys(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "tools/fabric"), "init", "--out", str(tmp_path / "vm")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    scenario = json.loads(done.stdout)["scenario"]
    value = json.loads(Path(scenario).read_text())["public_keys"][0]["value"]
    out = tmp_path / "media"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/fabric"),
            "media",
            "--scenario",
            scenario,
            "--out",
            str(out),
            "--format",
            "dir",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    parsed = ovf.parse_ovf((out / "ovf/ovf-env.xml").read_bytes())
    assert parsed.public_keys[0].value == value


# -- certificates ---------------------------------------------------------------


def certificate_scenario() -> Scenario:
    return materialize(
        Scenario(
            public_keys=[
                PublicKey(path="/home/azureuser/.ssh/authorized_keys", fingerprint="generate")
            ],
            key_pairs=[KeyPair(path="/home/azureuser/.ssh/id_rsa")],
        )
    )


def fetch_certificates(fabric: Fabric, transport_pem: bytes, cipher: str = "AES128_CBC") -> bytes:
    goal = wireserver.parse_goal_state(
        call(f"{fabric.urls['wireserver']}/machine/?comp=goalstate", headers=WIRE).body
    )
    assert goal.uris.certificates is not None
    headers = {
        **WIRE,
        "x-ms-cipher-name": cipher,
        "x-ms-guest-agent-public-x509-cert": certs.certificate_header_value(transport_pem),
    }
    reply = call(goal.uris.certificates, headers=headers)
    assert reply.status == 200
    sample = FIXTURES / "walinuxagent/wire/certs.xml"
    assert shape(reply.body) == shape(sample.read_bytes())
    return certs.parse_certificates_xml(reply.body)


def thumbprints(items: list[certs.CertificateItem]) -> dict[str, bool]:
    return {item.thumbprint: item.private_key_pem is not None for item in items}


def test_certificates_to_a_fresh_transport_certificate() -> None:
    scenario = certificate_scenario()
    expected = {keys.thumbprint_of(c): c.with_key for c in scenario.certificates}
    assert sorted(expected.values()) == [False, True]
    transport_cert, transport_key = certs.generate_transport_certificate()
    with Fabric(scenario) as fabric:
        for cipher in ("AES128_CBC", ""):
            blob = fetch_certificates(fabric, transport_cert, cipher)
            assert (
                thumbprints(certs.parse_pfx(certs.decrypt_enveloped(blob, transport_key)))
                == expected
            )
        # The thumbprints named in the OVF are the ones delivered.
        assert scenario.key_pairs[0].fingerprint in expected
        assert scenario.public_keys[0].fingerprint in expected


def test_certificates_to_the_fixture_transport_certificate() -> None:
    transport_cert = (FIXTURES / "walinuxagent/wire/trans_cert").read_bytes()
    transport_key = (FIXTURES / "walinuxagent/wire/trans_prv").read_bytes()
    scenario = certificate_scenario()
    with Fabric(scenario) as fabric:
        blob = fetch_certificates(fabric, transport_cert)
    items = certs.parse_pfx(certs.decrypt_enveloped(blob, transport_key))
    assert thumbprints(items) == {keys.thumbprint_of(c): c.with_key for c in scenario.certificates}


def test_certificates_need_the_transport_header() -> None:
    with Fabric(certificate_scenario()) as fabric:
        goal = wireserver.parse_goal_state(
            call(f"{fabric.urls['wireserver']}/machine/?comp=goalstate", headers=WIRE).body
        )
        assert goal.uris.certificates is not None
        assert call(goal.uris.certificates, headers=WIRE).status == 400
        bad = {
            **WIRE,
            "x-ms-guest-agent-public-x509-cert": base64.b64encode(b"not a certificate").decode(),
        }
        assert call(goal.uris.certificates, headers=bad).status == 400


def test_rotated_certificate_changes_thumbprints_and_incarnation() -> None:
    scenario = certificate_scenario()
    transport_cert, transport_key = certs.generate_transport_certificate()
    with Fabric(scenario) as fabric:
        before = set(
            thumbprints(
                certs.parse_pfx(
                    certs.decrypt_enveloped(
                        fetch_certificates(fabric, transport_cert), transport_key
                    )
                )
            )
        )
        incarnation = fabric.incarnation
        fabric.rotate_certificate()
        after = set(
            thumbprints(
                certs.parse_pfx(
                    certs.decrypt_enveloped(
                        fetch_certificates(fabric, transport_cert), transport_key
                    )
                )
            )
        )
        assert fabric.incarnation == incarnation + 1
        assert before.isdisjoint(after)
        assert scenario.key_pairs[0].fingerprint in after
