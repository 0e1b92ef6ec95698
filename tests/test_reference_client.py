"""The fabric emulator, driven by a client nobody here wrote: Debian's waagent.

tools/fetch-waagent unpacks Debian's ``waagent`` package (WALinuxAgent) into
.cache/ without installing it; tests/waagent_driver.py then runs its own
WireServer protocol code (version check, goal state, certificates decrypted
with its own transport key and openssl, health and role properties reports)
in a subprocess, under Debian's python3, with a private lib directory and
configuration, against an emulator on loopback. What waagent ends up with is
compared with the scenario. The tests skip only when the package (or the
python3-distro it depends on) cannot be had.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from azfabric import documents
from azfabric.keys import generate_certificate, thumbprint_of
from azfabric.scenario import (
    PROTECTED_SETTINGS_CERTIFICATE,
    Extension,
    KeyPair,
    PublicKey,
    Scenario,
)
from azfabric.server import Fabric
from azfabric.status import handler_statuses
from test_fabric_extensions import MULTI, SAMPLE, SECRET, rich_scenario

FETCH = REPO / "tools" / "fetch-waagent"
DRIVER = Path(__file__).resolve().parent / "waagent_driver.py"
DEBIAN_PYTHON = Path("/usr/bin/python3")  # the interpreter Debian's package is built for
MARKER = ".fetch-waagent-complete"
DRIVER_TIMEOUT = 90  # seconds; the driver's own watchdog, the subprocess gets a margin
FAILURE = "reference client says <no> & stops"  # escaped by waagent, parsed by the emulator
ROLE_THUMBPRINT = "0123456789ABCDEF0123456789ABCDEF01234567"
HOST_STATE = (Path("/var/lib/waagent"), Path("/var/log/waagent.log"))


@dataclass
class Waagent:
    pythonpath: Path  # holds the azurelinuxagent package
    python: str
    package: str  # "waagent 2.7.3.0-4.1"


@pytest.fixture(scope="module")
def waagent() -> Waagent:
    done = subprocess.run(
        [sys.executable, str(FETCH)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        pytest.skip(f"Debian's waagent package cannot be had: {reason[0]}")
    pythonpath = Path(done.stdout.strip().splitlines()[-1])
    assert (pythonpath / "azurelinuxagent" / "__init__.py").is_file(), done.stdout
    markers = [p / MARKER for p in pythonpath.parents if (p / MARKER).is_file()]
    package = markers[0].read_text().strip() if markers else "waagent (unknown version)"
    for python in (str(DEBIAN_PYTHON), sys.executable):
        probe = subprocess.run(
            [python, "-c", "import distro"], capture_output=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return Waagent(pythonpath, python, package)
    pytest.skip("waagent needs the distro module (Debian: python3-distro), not installed here")


def drive(
    waagent: Waagent,
    fabric: Fabric,
    workdir: Path,
    *,
    fast_track: bool = False,
    role_thumbprint: str = "",
    status: bool = False,
) -> dict[str, Any]:
    """Run waagent's client through tests/waagent_driver.py; its result document."""
    before = [path.exists() for path in HOST_STATE]
    # waagent takes the WireServer as "host" (port 80) and finds the HostGAPlugin
    # at host:32526; "host:port" works for the WireServer alone.
    wireserver = urlsplit(fabric.urls["wireserver"])
    endpoint = str(wireserver.hostname) if wireserver.port == 80 else wireserver.netloc
    workdir.mkdir(mode=0o700)
    out = workdir / "result.json"
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k not in ("PYTHONPATH", "PYTHONHOME")
    }
    environment.update(
        PYTHONPATH=str(waagent.pythonpath),
        PYTHONDONTWRITEBYTECODE="1",  # leave the extracted package as dpkg-deb wrote it
        no_proxy="*",
    )
    command = [
        waagent.python,
        str(DRIVER),
        "--endpoint",
        endpoint,
        "--workdir",
        str(workdir),
        "--out",
        str(out),
        "--timeout",
        str(DRIVER_TIMEOUT),
    ]
    if fast_track:
        command.append("--fast-track")
    if role_thumbprint:
        command += ["--role-thumbprint", role_thumbprint]
    if status:
        command.append("--status")
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT + 60,
        env=environment,
        cwd=workdir,
        check=False,
    )
    assert done.returncode == 0, f"driver failed:\n{done.stdout}\n{done.stderr}"
    assert out.is_file(), f"driver wrote no result:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(out.read_text())
    log = workdir / "waagent.log"
    result["log"] = log.read_text(errors="replace") if log.is_file() else ""
    assert "fatal" not in result, result["fatal"]
    # Nothing of the host's own waagent state appeared, nothing real was dialled.
    assert [path.exists() for path in HOST_STATE] == before
    assert result["blocked"] == [], f"waagent tried to reach {result['blocked']} (blocked)"
    assert result["lib_dir"] == str(workdir / "lib")
    return result


def value(result: dict[str, Any], name: str) -> Any:
    """The value of one driver step, or a failure that shows waagent's error and log."""
    step = result["steps"].get(name)
    assert step is not None, f"step {name} did not run; steps: {sorted(result['steps'])}"
    if not step["ok"]:
        # waagent's log records start with a timestamp; continuation lines carry openssl's stderr.
        records = re.split(r"\n(?=\d{4}-\d\d-\d\dT)", result["log"])
        errors = [r for r in records if " ERROR " in r[:60] or " WARNING " in r[:60]]
        log_tail = "\n".join(errors[-8:])
        pytest.fail(
            f"waagent step {name}: {step['error']}\n{step.get('traceback', '')}\n"
            f"waagent log (errors and warnings):\n{log_tail}"
        )
    return step["value"]


def waagent_requests(fabric: Fabric, endpoint: str = "wireserver") -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in fabric.requests if r.endpoint == endpoint]


# -- the tests -------------------------------------------------------------


def test_versions_goal_state_and_health_reports(waagent: Waagent, tmp_path: Path) -> None:
    scenario = Scenario(extensions=[Extension(name="Test.Publisher.Handler", version="1.2.3")])
    with Fabric(scenario) as fabric:
        result = drive(waagent, fabric, tmp_path / "waagent", role_thumbprint=ROLE_THUMBPRINT)
        requests = waagent_requests(fabric)

        assert result["agent_version"] in waagent.package
        value(result, "detect")
        assert requests[0] == ("GET", "/?comp=versions", 200)
        goal = value(result, "goal_state")
        assert goal["incarnation"] == str(fabric.incarnation)
        assert goal["container_id"] == fabric.container_id
        assert goal["role_instance_id"] == fabric.scenario.role_instance
        assert goal["vm_name"] == fabric.scenario.role_instance
        assert goal["role_config_name"].startswith(f"{fabric.deployment}.{fabric.incarnation}.")
        assert value(result, "certificates") == []
        extensions = value(result, "extensions")
        assert extensions["source"] == "ExtensionsGoalStateFromExtensionsConfig"
        assert (extensions["names"], extensions["versions"]) == (
            ["Test.Publisher.Handler"],
            ["1.2.3"],
        )
        assert extensions["status_upload_blob"].startswith(fabric.urls["blob"] + "/status/")
        assert not any("comp=certificates" in path for _, path, _ in requests)

        value(result, "not_ready")
        value(result, "ready")
        reports = [(r.state, r.substatus, r.description) for r in fabric.health_reports]
        assert reports == [("NotReady", "ProvisioningFailed", FAILURE), ("Ready", None, None)]
        assert fabric.health_reports[-1].state == "Ready"
        assert fabric.health_reports[-1].incarnation == fabric.incarnation
        assert len(fabric.role_properties) == 1
        assert f'value="{ROLE_THUMBPRINT}"' in fabric.role_properties[0].decode()
        # waagent's every request was answered with success.
        assert [r for r in requests if r[2] >= 300] == []


def check_certificates(result: dict[str, Any], fabric: Fabric, lib: Path) -> None:
    """waagent's thumbprints and files are the scenario's certificates, keys where given."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    expected = {thumbprint_of(c): c for c in fabric.scenario.certificates}
    with_key = {t for t, c in expected.items() if c.with_key}
    value(result, "detect")
    assert value(result, "certificates") == sorted(expected)
    files = set(result["lib_files"])
    assert {f[:-4] for f in files if f.endswith(".crt")} == set(expected)
    assert {f[:-4] for f in files if f.endswith(".prv")} == with_key
    for thumbprint, certificate in expected.items():
        assert certificate.cert_pem is not None
        theirs = x509.load_pem_x509_certificate((lib / f"{thumbprint}.crt").read_bytes())
        ours = x509.load_pem_x509_certificate(certificate.cert_pem.encode())
        assert theirs == ours
        if thumbprint in with_key:
            key = serialization.load_pem_private_key((lib / f"{thumbprint}.prv").read_bytes(), None)
            spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            assert key.public_key().public_bytes(*spki) == ours.public_key().public_bytes(*spki)


def certificate_scenario() -> Scenario:
    return Scenario(
        key_pairs=[KeyPair(path="/home/azureuser/.ssh/id_rsa")],
        public_keys=[
            PublicKey(path="/home/azureuser/.ssh/authorized_keys", fingerprint="generate")
        ],
    )


def test_certificates_decrypted_by_waagent(waagent: Waagent, tmp_path: Path) -> None:
    with Fabric(certificate_scenario()) as fabric:
        assert len(fabric.scenario.certificates) == 2
        assert {c.with_key for c in fabric.scenario.certificates} == {True, False}
        result = drive(waagent, fabric, tmp_path / "waagent")

        [fetch] = [r for r in fabric.requests if "comp=certificates" in r.path]
        assert fetch.status == 200
        assert fetch.header("x-ms-guest-agent-public-x509-cert")
        check_certificates(result, fabric, tmp_path / "waagent" / "lib")
        value(result, "ready")
        assert fabric.health_reports[-1].state == "Ready"


def test_a_blob_for_another_transport_key_is_noticed(
    waagent: Waagent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above has teeth: a blob encrypted to the wrong key fails it."""
    stranger = generate_certificate("not-the-agent")
    assert stranger.cert_pem is not None
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(stranger.cert_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    honest = documents.certificates

    def misdirected(fabric: Fabric, transport_header: str, cipher_name: str) -> bytes:
        return honest(fabric, base64.b64encode(der).decode(), cipher_name)

    monkeypatch.setattr(documents, "certificates", misdirected)
    with Fabric(certificate_scenario()) as fabric:
        result = drive(waagent, fabric, tmp_path / "waagent")
        assert [r.status for r in fabric.requests if "comp=certificates" in r.path] == [200]
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check_certificates(result, fabric, tmp_path / "waagent" / "lib")
        assert not [f for f in result["lib_files"] if f.endswith((".crt", ".prv"))]


def platform_address() -> str:
    """A loopback address of this test's own where ports 80 and 32526 are free, or skip."""
    a, b, c = (1 + secrets.randbelow(254) for _ in range(3))
    address = f"127.{a}.{b}.{c}"
    for port in (80, 32526):
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError as e:
                pytest.skip(f"cannot listen on {address}:{port} as the platform does: {e}")
    return address


def test_fast_track_vm_settings_agree_with_extensions_config(
    waagent: Waagent, tmp_path: Path
) -> None:
    """waagent derives the HostGAPlugin as <WireServer host>:32526, so give it that.

    On its own loopback address the emulator listens on 80 and 32526 as the
    platform does; waagent then fetches vmSettings from the emulated
    HostGAPlugin and compares them with ExtensionsConfig, with its own code.
    """
    scenario = Scenario(
        extensions=[Extension(name="Test.Publisher.Handler", public_settings={"greeting": "hi"})]
    )
    ports = {"wireserver": 80, "hostgaplugin": 32526}
    with Fabric(scenario, host=platform_address(), ports=ports) as fabric:
        assert urlsplit(fabric.urls["wireserver"]).port == 80
        result = drive(waagent, fabric, tmp_path / "waagent", fast_track=True)
        value(result, "detect")
        assert ("GET", "/vmSettings", 200) in waagent_requests(fabric, "hostgaplugin")
        value(result, "fast_track_consistency")
        extensions = value(result, "extensions")
        assert extensions["source"] == "ExtensionsGoalStateFromVmSettings"
        assert extensions["names"] == ["Test.Publisher.Handler"]
        value(result, "ready")
        assert fabric.health_reports[-1].state == "Ready"


# -- extensions: waagent's own parsing, certificates and status upload ------


def check_extension_details(extensions: dict[str, Any], fabric: Fabric) -> None:
    """waagent parsed every handler, setting, state and dependency level the scenario has."""
    thumbprint = {c.name: thumbprint_of(c) for c in fabric.scenario.certificates}[
        PROTECTED_SETTINGS_CERTIFICATE
    ]
    assert extensions["status_upload_blob_type"] == "PageBlob"
    assert extensions["required_features"] == ["MultipleExtensionsPerHandler"]
    details = {d["name"]: d for d in extensions["details"]}
    assert list(details) == [SAMPLE, MULTI]
    sample, multi = details[SAMPLE], details[MULTI]
    assert (sample["version"], sample["state"], sample["multi_config"]) == (
        "1.3.0",
        "enabled",
        False,
    )
    [settings] = sample["settings"]
    assert {k: v for k, v in settings.items() if k != "protected"} == {
        "name": SAMPLE,
        "seq_no": 3,
        "state": "enabled",
        "public": {"message": "hello from the emulator"},
        "thumbprint": thumbprint,
        "dependency_level": 1,
    }
    assert multi["multi_config"] is True
    assert [
        (s["name"], s["seq_no"], s["state"], s["public"], s["thumbprint"], s["dependency_level"])
        for s in multi["settings"]
    ] == [
        ("first", 1, "enabled", {"message": "first"}, thumbprint, 2),
        ("second", 4, "disabled", {}, None, 3),
    ]


def decrypt_as_handlers_do(extensions: dict[str, Any], lib: Path) -> list[Any]:
    """Each protected setting waagent parsed, decrypted with the key waagent stored."""
    decrypted = []
    for extension in extensions["details"]:
        for settings in extension["settings"]:
            if settings["protected"] is None:
                continue
            thumbprint = settings["thumbprint"]
            done = subprocess.run(
                [
                    "openssl",
                    "smime",
                    "-decrypt",
                    "-inform",
                    "DER",
                    "-recip",
                    str(lib / f"{thumbprint}.crt"),
                    "-inkey",
                    str(lib / f"{thumbprint}.prv"),
                ],
                input=base64.b64decode(settings["protected"]),
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()
            decrypted.append(json.loads(done.stdout))
    return decrypted


def check_status_upload(fabric: Fabric, via: str) -> None:
    """waagent's own status blob reached the emulator, decoded."""
    [upload] = fabric.status_uploads
    assert (upload.via, upload.blob_type, upload.error) == (via, "PageBlob", None)
    assert upload.document is not None
    handlers = {h["handlerName"]: h for h in handler_statuses(upload.document)}
    assert set(handlers) == {SAMPLE, MULTI}
    status = handlers[SAMPLE]["runtimeSettingsStatus"]
    assert status["sequenceNumber"] == 3
    assert status["settingsStatus"]["status"]["formattedMessage"]["message"] == (
        "hello from the emulator"
    )
    agent = upload.document["aggregateStatus"]["guestAgentStatus"]
    assert agent["status"] == "Ready"


def test_waagent_reads_protected_settings_and_uploads_status_directly(
    waagent: Waagent, tmp_path: Path
) -> None:
    with Fabric(rich_scenario()) as fabric:
        result = drive(waagent, fabric, tmp_path / "waagent", status=True)
        check_certificates(result, fabric, tmp_path / "waagent" / "lib")
        extensions = value(result, "extensions")
        assert extensions["source"] == "ExtensionsGoalStateFromExtensionsConfig"
        check_extension_details(extensions, fabric)
        assert decrypt_as_handlers_do(extensions, tmp_path / "waagent" / "lib") == [
            SECRET,
            {"token": "first-secret"},
        ]
        # No HostGAPlugin on <WireServer host>:32526 here: waagent falls back to the SAS URL.
        value(result, "status_upload")
        check_status_upload(fabric, "direct")


def test_fast_track_extensions_status_and_health_service(waagent: Waagent, tmp_path: Path) -> None:
    """vmSettings with multi-config, dependencies and protected settings; status via HGAP."""
    ports = {"wireserver": 80, "hostgaplugin": 32526}
    with Fabric(rich_scenario(), host=platform_address(), ports=ports) as fabric:
        result = drive(waagent, fabric, tmp_path / "waagent", fast_track=True, status=True)
        extensions = value(result, "extensions")
        assert extensions["source"] == "ExtensionsGoalStateFromVmSettings"
        check_extension_details(extensions, fabric)
        value(result, "fast_track_consistency")  # waagent's own comparison of the two documents
        assert decrypt_as_handlers_do(extensions, tmp_path / "waagent" / "lib") == [
            SECRET,
            {"token": "first-secret"},
        ]
        value(result, "status_upload")
        check_status_upload(fabric, "hostgaplugin")
        value(result, "health_service")
        # waagent reports on its own too (its HostGAPlugin status upload); the last is the step's.
        observed = [
            (report["Source"], o["ObservationName"], o["IsHealthy"])
            for report in fabric.health_service
            for o in report["Observations"]
        ]
        assert ("WALinuxAgent", "GuestAgentPluginStatus", True) in observed  # our PUT /status
        assert observed[-1] == ("WALinuxAgent", "GuestAgentPluginHeartbeat", True)
        posts = [r for r in waagent_requests(fabric) if r[1] == "/HealthService"]
        assert posts == [("POST", "/HealthService", 200)] * len(fabric.health_service)
