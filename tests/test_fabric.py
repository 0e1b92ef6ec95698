"""The fabric emulator, observed by a plain HTTP client, compared with real samples."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import pytest
from conftest import FIXTURES, REPO
from xmlshape import shape

from azagent import wireserver

sys.path.insert(0, str(REPO / "tools"))
from azfabric.scenario import Extension, Fault, KeyPair, Scenario, TimelineEvent
from azfabric.server import Fabric

WIRE = {"x-ms-agent-name": "azagent-test", "x-ms-version": "2012-11-30"}
HGAP_VERSION = {"x-ms-version": "2015-09-01"}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def call(
    url: str,
    method: str = "GET",
    headers: Optional[dict[str, str]] = None,
    body: bytes = b"",
    timeout: float = 10,
) -> Reply:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with Fabric(Scenario(extensions=[Extension(name="Test.Publisher.Handler")])) as running:
        yield running


def goal_state(fabric: Fabric) -> wireserver.GoalState:
    reply = call(f"{fabric.urls['wireserver']}/machine/?comp=goalstate", headers=WIRE)
    assert reply.status == 200
    return wireserver.parse_goal_state(reply.body)


def report(fabric: Fabric, state: str = "Ready", incarnation: Optional[int] = None) -> Reply:
    goal = goal_state(fabric)
    body = wireserver.health_xml(
        wireserver.HealthReport(
            incarnation if incarnation is not None else goal.incarnation,
            goal.container_id,
            goal.instance_id,
            state,
            "ProvisioningFailed" if state == "NotReady" else None,
            "it broke" if state == "NotReady" else None,
        )
    )
    return call(
        f"{fabric.urls['wireserver']}/machine?comp=health",
        "POST",
        {**WIRE, "Content-Type": "text/xml; charset=utf-8"},
        body,
    )


# -- WireServer ------------------------------------------------------------


def test_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Fabric(host="0.0.0.0")  # noqa: S104 - the point is that it is refused


def test_versions_has_the_fixture_shape(fabric: Fabric) -> None:
    reply = call(f"{fabric.urls['wireserver']}/?comp=versions")
    assert reply.status == 200
    assert shape(reply.body) == shape(
        (FIXTURES / "walinuxagent/wire/version_info.xml").read_bytes()
    )
    assert wireserver.parse_versions(reply.body).preferred == "2012-11-30"


def test_default_vm_without_certificates_has_no_certificates_uri(fabric: Fabric) -> None:
    reply = call(f"{fabric.urls['wireserver']}/machine/?comp=goalstate", headers=WIRE)
    sample = FIXTURES / "walinuxagent/hibernate/goal_state_1/GoalState.xml"
    missing = shape(sample.read_bytes()) - shape(reply.body)
    assert missing == {
        "/GoalState/Container/RoleInstanceList/RoleInstance/Configuration/Certificates"
    }
    assert wireserver.parse_goal_state(reply.body).uris.certificates is None


def test_goal_state_documents_have_the_platform_shapes() -> None:
    scenario = Scenario(
        key_pairs=[KeyPair(path="/home/azureuser/.ssh/id_rsa")],
        extensions=[Extension(name="Test.Publisher.Handler")],
    )
    with Fabric(scenario) as fabric:
        check_documents(fabric)


def check_documents(fabric: Fabric) -> None:
    reply = call(f"{fabric.urls['wireserver']}/machine/?comp=goalstate", headers=WIRE)
    sample = FIXTURES / "walinuxagent/hibernate/goal_state_1"
    assert shape(reply.body) == shape((sample / "GoalState.xml").read_bytes())
    goal = wireserver.parse_goal_state(reply.body)
    # The URIs point back at the address the client used.
    assert goal.uris.shared_config.startswith(fabric.urls["wireserver"] + "/machine/")
    documents = {
        "HostingEnvironmentConfig.xml": goal.uris.hosting_environment,
        "SharedConfig.xml": goal.uris.shared_config,
        "ExtensionsConfig.xml": goal.uris.extensions_config,
    }
    for name, uri in documents.items():
        assert uri is not None
        document = call(uri, headers=WIRE)
        assert document.status == 200, name
        theirs = shape((sample / name).read_bytes())
        ours = shape(document.body)
        if name == "ExtensionsConfig.xml":
            # The artifacts profile blob is optional (only for on-hold VMs).
            theirs.discard("/Extensions/InVMArtifactsProfileBlob")
        assert ours == theirs, name


def test_required_headers_are_enforced(fabric: Fabric) -> None:
    base = fabric.urls["wireserver"]
    assert call(f"{base}/machine/?comp=goalstate").status == 400
    assert (
        call(f"{base}/machine/?comp=goalstate", headers={"x-ms-version": "2012-11-30"}).status
        == 400
    )
    assert call(f"{base}/machine/?comp=goalstate", headers=WIRE).status == 200


def test_health_reports_are_recorded_and_checked(fabric: Fabric) -> None:
    assert report(fabric, "NotReady").status == 200
    assert report(fabric, "Ready").status == 200
    assert [(r.state, r.substatus, r.description) for r in fabric.health_reports] == [
        ("NotReady", "ProvisioningFailed", "it broke"),
        ("Ready", None, None),
    ]
    # A stale incarnation is refused with 410, malformed XML with 400.
    assert report(fabric, "Ready", incarnation=fabric.incarnation + 5).status == 410
    malformed = call(
        f"{fabric.urls['wireserver']}/machine?comp=health", "POST", WIRE, b"<Health><oops>"
    )
    assert malformed.status == 400
    entity = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><Health>&a;</Health>'
    assert (
        call(f"{fabric.urls['wireserver']}/machine?comp=health", "POST", WIRE, entity).status == 400
    )
    assert len(fabric.health_reports) == 2


def test_new_incarnation_makes_old_reports_stale(fabric: Fabric) -> None:
    old = goal_state(fabric)
    fabric.new_incarnation()
    assert goal_state(fabric).incarnation == old.incarnation + 1
    assert report(fabric, "Ready", incarnation=old.incarnation).status == 410
    stale_config = call(old.uris.shared_config, headers=WIRE)
    assert stale_config.status == 410


def test_role_properties_and_telemetry(fabric: Fabric) -> None:
    goal = goal_state(fabric)
    body = wireserver.role_properties_xml(goal.container_id, goal.instance_id, "ABCDEF")
    reply = call(f"{fabric.urls['wireserver']}/machine?comp=roleProperties", "POST", WIRE, body)
    assert reply.status == 202
    assert fabric.role_properties == [body]
    telemetry = call(
        f"{fabric.urls['wireserver']}/machine?comp=telemetrydata", "POST", WIRE, b"<x/>"
    )
    assert telemetry.status == 200


# -- HostGAPlugin and blob store -------------------------------------------


def hgap_headers(fabric: Fabric) -> dict[str, str]:
    goal = goal_state(fabric)
    return {
        **HGAP_VERSION,
        "x-ms-containerid": goal.container_id,
        "x-ms-host-config-name": goal.uris.config_name,
    }


def test_hostgaplugin_versions_and_vm_settings_etag(fabric: Fabric) -> None:
    base = fabric.urls["hostgaplugin"]
    assert "2015-09-01" in json.loads(call(f"{base}/versions").body)
    headers = hgap_headers(fabric)
    first = call(f"{base}/vmSettings", headers=headers)
    assert first.status == 200
    etag = first.headers["ETag"]
    settings = json.loads(first.body)
    sample = json.loads((FIXTURES / "walinuxagent/hostgaplugin/vm_settings.json").read_bytes())
    assert set(settings) == set(sample)
    assert set(settings["extensionGoalStates"][0]) <= set(sample["extensionGoalStates"][0])
    assert [e["name"] for e in settings["extensionGoalStates"]] == ["Test.Publisher.Handler"]
    assert call(f"{base}/vmSettings", headers={**headers, "if-none-match": etag}).status == 304
    fabric.remove_extension("Test.Publisher.Handler")
    changed = call(f"{base}/vmSettings", headers={**headers, "if-none-match": etag})
    assert changed.status == 200
    assert json.loads(changed.body)["extensionGoalStates"] == []
    assert call(f"{base}/vmSettings", headers=HGAP_VERSION).status == 400


def test_extension_artifacts_directly_and_through_the_hostgaplugin(fabric: Fabric) -> None:
    goal = goal_state(fabric)
    assert goal.uris.extensions_config is not None
    config = call(goal.uris.extensions_config, headers=WIRE).body.decode()
    manifest_url = config.split('location="', 1)[1].split('"', 1)[0]
    manifest = call(manifest_url)
    assert manifest.status == 200
    assert shape(manifest.body) <= shape((FIXTURES / "walinuxagent/wire/manifest.xml").read_bytes())
    package_url = manifest.body.decode().split("<Uri>", 1)[1].split("</Uri>", 1)[0]
    direct = call(package_url)
    assert direct.status == 200
    assert direct.body.startswith(b"PK")
    proxied = call(
        f"{fabric.urls['hostgaplugin']}/extensionArtifact",
        headers={**hgap_headers(fabric), "x-ms-artifact-location": package_url},
    )
    assert proxied.body == direct.body


def status_blob_url(fabric: Fabric) -> str:
    goal = goal_state(fabric)
    assert goal.uris.extensions_config is not None
    config = call(goal.uris.extensions_config, headers=WIRE).body.decode()
    url = config.split("<StatusUploadBlob", 1)[1].split(">", 1)[1].split("<", 1)[0]
    return url.replace("&amp;", "&")


def test_block_blob_status_upload(fabric: Fabric) -> None:
    url = status_blob_url(fabric)
    path = urlsplit(url).path
    reply = call(
        url, "PUT", {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2014-02-14"}, b'{"v":1}'
    )
    assert reply.status == 201
    assert bytes(fabric.blobs[path].data) == b'{"v":1}'
    unsigned = url.split("?", 1)[0]
    assert call(unsigned, "PUT", {"x-ms-blob-type": "BlockBlob"}, b"x").status == 403


def test_page_blob_semantics(fabric: Fabric) -> None:
    url = status_blob_url(fabric)
    path = urlsplit(url).path
    create = {"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": "1024"}
    assert call(url, "PUT", create).status == 201
    page = b"s" * 512
    ok = call(
        f"{url}&comp=page",
        "PUT",
        {"x-ms-range": "bytes=512-1023", "x-ms-page-write": "update"},
        page,
    )
    assert ok.status == 201
    assert bytes(fabric.blobs[path].data) == bytes(512) + page
    misaligned = call(f"{url}&comp=page", "PUT", {"x-ms-range": "bytes=1-512"}, page)
    assert misaligned.status == 400
    beyond = call(f"{url}&comp=page", "PUT", {"x-ms-range": "bytes=1024-1535"}, page)
    assert beyond.status == 416
    unaligned_create = {"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": "1000"}
    assert call(url, "PUT", unaligned_create).status == 400


def test_status_through_the_hostgaplugin(fabric: Fabric) -> None:
    url = status_blob_url(fabric)
    content = b'{"aggregateStatus": {}}'
    document = {
        "requestUri": url,
        "headers": [{"headerName": "x-ms-blob-type", "headerValue": "BlockBlob"}],
        "content": base64.b64encode(content).decode(),
    }
    reply = call(
        f"{fabric.urls['hostgaplugin']}/status",
        "PUT",
        {**hgap_headers(fabric), "Content-Type": "application/json"},
        json.dumps(document).encode(),
    )
    assert reply.status == 201
    assert bytes(fabric.blobs[urlsplit(url).path].data) == content


# -- faults, timeline, observation -----------------------------------------


def faulty(*faults: Fault) -> Fabric:
    return Fabric(Scenario(faults=list(faults))).start()


def test_fault_status_n_times_then_normal() -> None:
    fabric = faulty(
        Fault(endpoint="wireserver", kind="status", path="comp=versions", status=503, count=2)
    )
    try:
        url = f"{fabric.urls['wireserver']}/?comp=versions"
        assert [call(url).status for _ in range(3)] == [503, 503, 200]
        assert [r.fault for r in fabric.requests] == ["status", "status", None]
    finally:
        fabric.stop()


def test_fault_skip_lets_the_first_requests_through() -> None:
    fabric = faulty(
        Fault(endpoint="wireserver", kind="status", path="versions", status=500, skip=1)
    )
    try:
        url = f"{fabric.urls['wireserver']}/?comp=versions"
        assert [call(url).status for _ in range(3)] == [200, 500, 200]
    finally:
        fabric.stop()


def test_fault_delay() -> None:
    fabric = faulty(Fault(endpoint="wireserver", kind="delay", seconds=0.5))
    try:
        start = time.monotonic()
        assert call(f"{fabric.urls['wireserver']}/?comp=versions").status == 200
        assert time.monotonic() - start >= 0.5
    finally:
        fabric.stop()


def test_fault_dropped_connection() -> None:
    fabric = faulty(Fault(endpoint="imds", kind="drop"))
    try:
        with pytest.raises(
            (http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)
        ):
            call(
                f"{fabric.urls['imds']}/metadata/instance?api-version=2021-08-01",
                headers={"Metadata": "true"},
            )
    finally:
        fabric.stop()


def test_fault_garbage_body() -> None:
    fabric = faulty(Fault(endpoint="wireserver", kind="garbage", path="goalstate"))
    try:
        reply = call(f"{fabric.urls['wireserver']}/machine/?comp=goalstate", headers=WIRE)
        assert reply.status == 200
        with pytest.raises(Exception, match="goal state"):
            wireserver.parse_goal_state(reply.body)
    finally:
        fabric.stop()


def test_fault_slow_trickle_sends_the_body_slowly() -> None:
    fabric = faulty(Fault(endpoint="wireserver", kind="trickle", path="versions", seconds=1.0))
    try:
        url = f"{fabric.urls['wireserver']}/?comp=versions"
        start = time.monotonic()
        slow = call(url)
        assert time.monotonic() - start >= 1.0
        assert wireserver.parse_versions(slow.body).preferred == "2012-11-30"
        start = time.monotonic()
        assert call(url).status == 200  # the fault hit only once
        assert time.monotonic() - start < 1.0
    finally:
        fabric.stop()


def raw_get(url: str, timeout: float) -> tuple[bytes, str]:
    """The bytes a plain socket receives for a GET of ``url``, and how the stream ended."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received, "reset"
            except socket.timeout:
                return received, "silence"
            if not chunk:
                return received, "closed"
            received += chunk
        return received, "silence"


def announced_and_sent(received: bytes) -> tuple[int, int]:
    head, _, body = received.partition(b"\r\n\r\n")
    [length] = [
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    return length, len(body)


@pytest.mark.parametrize(
    ("kind", "ending"), [("stall", "silence"), ("reset", "reset"), ("truncate", "closed")]
)
def test_body_faults_send_half_the_body_then_misbehave(kind: str, ending: str) -> None:
    fabric = faulty(Fault(endpoint="wireserver", kind=kind, path="versions", seconds=30))
    try:
        url = f"{fabric.urls['wireserver']}/?comp=versions"
        start = time.monotonic()
        received, how = raw_get(url, timeout=1.5)
        assert how == ending
        if kind != "stall":
            assert time.monotonic() - start < 1.5
        announced, sent = announced_and_sent(received)
        assert announced > 0
        assert sent == announced // 2
        assert [r.fault for r in fabric.requests] == [kind]
        assert call(url).status == 200  # the fault hit only once
    finally:
        start = time.monotonic()
        fabric.stop()
        assert time.monotonic() - start < 5  # a stalled answer does not hold the emulator up


def test_timeline_after_health_reports_and_after_seconds() -> None:
    scenario = Scenario(
        timeline=[
            TimelineEvent(action="new_incarnation", after_health_reports=1),
            TimelineEvent(
                action="add_extension", after_seconds=0.3, extension=Extension(name="Later.Ext")
            ),
        ]
    )
    with Fabric(scenario) as fabric:
        start = fabric.incarnation
        assert report(fabric).status == 200
        assert fabric.incarnation == start + 1
        assert fabric.wait_for(
            lambda: any(e.name == "Later.Ext" for e in fabric.extensions), timeout=5
        )
        assert fabric.incarnation == start + 2


def test_request_log_redacts_secrets(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    with Fabric(Scenario(), log_path=log) as fabric:
        url = status_blob_url(fabric)
        call(url, "PUT", {"x-ms-blob-type": "BlockBlob"}, b"<UserPassword>hunter2</UserPassword>")
        assert "sig=" in fabric.requests[-1].path  # the Python view keeps everything for tests
    text = log.read_text()
    assert "hunter2" not in text
    assert "sig=" not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert [e["endpoint"] for e in entries][-1] == "blob"
    printed = subprocess.run(
        [sys.executable, str(REPO / "tools/fabric"), "log", str(log), "--bodies"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "PUT" in printed
    assert "hunter2" not in printed


# -- IMDS ------------------------------------------------------------------


def test_imds_requires_the_metadata_header(fabric: Fabric) -> None:
    base = f"{fabric.urls['imds']}/metadata/instance"
    assert call(f"{base}?api-version=2021-08-01").status == 400
    assert call(base, headers={"Metadata": "true"}).status == 400
    proxied = call(
        f"{base}?api-version=2021-08-01", headers={"Metadata": "true", "X-Forwarded-For": "1.2.3.4"}
    )
    assert proxied.status == 400


def test_imds_document_matches_the_scenario(fabric: Fabric) -> None:
    reply = call(
        f"{fabric.urls['imds']}/metadata/instance?api-version=2021-08-01",
        headers={"Metadata": "true"},
    )
    assert reply.status == 200
    document = json.loads(reply.body)
    assert document["compute"]["vmId"] == fabric.scenario.vm_id
    assert document["compute"]["osProfile"]["adminUsername"] == "azureuser"
    [key] = document["compute"]["publicKeys"]
    assert key["keyData"] == fabric.scenario.public_keys[0].value
    sample = json.loads((FIXTURES / "walinuxagent/imds/valid.json").read_bytes())
    assert set(sample) <= set(document)
    compute = call(
        f"{fabric.urls['imds']}/metadata/instance/compute/vmId?api-version=2021-08-01&format=text",
        headers={"Metadata": "true"},
    )
    assert compute.body.decode() == fabric.scenario.vm_id


# -- the command line ------------------------------------------------------


def test_serve_prints_urls_first_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tools/fabric"), "serve", "--log", str(tmp_path / "log.jsonl")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        urls = json.loads(process.stdout.readline())
        for name in ("wireserver", "hostgaplugin", "imds", "blob"):
            assert urlsplit(urls[name]).hostname == "127.0.0.1"
        assert call(f"{urls['wireserver']}/?comp=versions").status == 200
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
        assert process.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["requests"] == 1
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_init_materializes_keys_privately(tmp_path: Path) -> None:
    out = tmp_path / "vm"
    subprocess.run(
        [sys.executable, str(REPO / "tools/fabric"), "init", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    scenario = json.loads((out / "scenario.json").read_text())
    assert (out / "scenario.json").stat().st_mode & 0o777 == 0o600
    assert (out / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert scenario["public_keys"][0]["value"].startswith("ssh-ed25519 ")
    assert "OPENSSH PRIVATE KEY" in (out / "id_ed25519").read_text()


def test_bad_scenario_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"faults": [{"endpoint": "dns", "kind": "status"}]}))
    done = subprocess.run(
        [sys.executable, str(REPO / "tools/fabric"), "serve", "--scenario", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "faults[0].endpoint" in done.stderr


def test_kvp_command_decodes_a_pool_file(tmp_path: Path) -> None:
    from azagent import kvp

    pool = tmp_path / ".kvp_pool_1"
    report = kvp.provisioning_report(
        result="success",
        timestamp=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        vm_id="e7fdbfc4-2deb-4a4e-8615-ea6aaf50162e",
    )
    records = kvp.encode_record("Other", "x") + kvp.encode_record("PROVISIONING_REPORT", report)
    pool.write_bytes(records)
    done = subprocess.run(
        [sys.executable, str(REPO / "tools/fabric"), "kvp", str(pool)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "Other=x"
    assert lines[1].startswith("PROVISIONING_REPORT=result=success|")
    assert "vm_id=e7fdbfc4-2deb-4a4e-8615-ea6aaf50162e" in lines[1]
    pool.write_bytes(b"short")
    bad = subprocess.run(
        [sys.executable, str(REPO / "tools/fabric"), "kvp", str(pool)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0
    assert ".kvp_pool_1" in bad.stderr
