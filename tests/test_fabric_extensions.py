"""The emulator's extension goal states, packages, protected settings and status uploads.

What an extension handler meets on Azure, served on loopback: the real
WALinuxAgent sample handler served byte for byte, manifests with several
versions, dependencyLevel and multi-config handlers, protected settings that
``openssl smime`` decrypts exactly as handlers do, goal-state changes while a
client polls, and every status upload recorded and decoded.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import pytest
from azfabric import keys
from azfabric.scenario import (
    PROTECTED_SETTINGS_CERTIFICATE,
    Extension,
    ExtensionConfig,
    ExtensionVersion,
    Fault,
    Scenario,
    ScenarioError,
    load,
    parse,
)
from azfabric.server import Fabric
from conftest import FIXTURES, REPO
from provisioning_env import make_vm
from test_certstore import fabric_context
from test_fabric import WIRE, call, goal_state, hgap_headers
from xmlshape import shape

from azagent import asn1
from azagent.certstore import CertStore
from azagent.wireclient import WireClient

SAMPLE_ZIP = FIXTURES / "walinuxagent/ext/sample_ext-1.3.0.zip"
SAMPLE = "OSTCExtensions.ExampleHandlerLinux"
MULTI = "Contoso.Test.MultiConfig"
SECRET = {"commandToExecute": "echo s3cr3t-value", "storageAccountKey": "a2V5LWtleS1rZXk="}


# -- helpers ---------------------------------------------------------------


def extensions_config(fabric: Fabric) -> bytes:
    uri = goal_state(fabric).uris.extensions_config
    assert uri is not None
    reply = call(uri, headers=WIRE)
    assert reply.status == 200
    return reply.body


def vm_settings(fabric: Fabric, etag: Optional[str] = None) -> tuple[int, str, Any]:
    headers = hgap_headers(fabric)
    if etag is not None:
        headers["if-none-match"] = etag
    reply = call(f"{fabric.urls['hostgaplugin']}/vmSettings", headers=headers)
    document = json.loads(reply.body) if reply.status == 200 else None
    return reply.status, reply.headers.get("ETag", ""), document


def plugins(config: bytes) -> dict[str, ET.Element]:
    root = ET.fromstring(config)  # noqa: S314 - the emulator's own document
    return {p.attrib["name"]: p for p in root.iterfind("Plugins/Plugin")}


def plugin_settings(config: bytes) -> dict[str, ET.Element]:
    root = ET.fromstring(config)  # noqa: S314 - the emulator's own document
    return {p.attrib["name"]: p for p in root.iterfind("PluginSettings/Plugin")}


def handler_settings(text: Optional[str]) -> dict[str, Any]:
    assert text is not None
    settings: dict[str, Any] = json.loads(text)["runtimeSettings"][0]["handlerSettings"]
    return settings


def manifest(fabric: Fabric, name: str) -> dict[str, list[str]]:
    location = plugins(extensions_config(fabric))[name].attrib["location"]
    reply = call(location)
    assert reply.status == 200
    root = ET.fromstring(reply.body)  # noqa: S314 - the emulator's own document
    return {
        p.findtext("Version", ""): [u.text or "" for u in p.iterfind("Uris/Uri")]
        for p in root.iterfind("Plugins/Plugin")
    }


def rich_scenario() -> Scenario:
    """Single- and multi-config handlers, dependency levels, protected settings, page blob."""
    return Scenario(
        status_blob_type="PageBlob",
        extensions=[
            Extension(
                name=SAMPLE,
                version="1.3.0",
                package=str(SAMPLE_ZIP),
                seq_no=3,
                public_settings={"message": "hello from the emulator"},
                protected_settings=SECRET,
                dependency_level=1,
            ),
            Extension(
                name=MULTI,
                version="2.0.1",
                configs=[
                    ExtensionConfig(
                        name="first",
                        seq_no=1,
                        public_settings={"message": "first"},
                        protected_settings={"token": "first-secret"},
                        dependency_level=2,
                    ),
                    ExtensionConfig(name="second", seq_no=4, state="disabled", dependency_level=3),
                ],
            ),
        ],
    )


# -- packages and manifests ------------------------------------------------


def test_the_sample_handler_is_served_byte_for_byte() -> None:
    scenario = Scenario(
        extensions=[Extension(name=SAMPLE, version="1.3.0", package=str(SAMPLE_ZIP))]
    )
    with Fabric(scenario) as fabric:
        listed = manifest(fabric, SAMPLE)
        assert list(listed) == ["1.3.0"]
        [url] = listed["1.3.0"]
        direct = call(url)
        assert direct.status == 200
        assert direct.body == SAMPLE_ZIP.read_bytes()
        through_hgap = call(
            f"{fabric.urls['hostgaplugin']}/extensionArtifact",
            headers={**hgap_headers(fabric), "x-ms-artifact-location": url},
        )
        assert through_hgap.status == 200
        assert through_hgap.body == SAMPLE_ZIP.read_bytes()


def test_a_scenario_file_names_its_package_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    shutil.copy(SAMPLE_ZIP, tmp_path / "pkg/sample.zip")
    file = tmp_path / "scenario.json"
    file.write_text(json.dumps({"extensions": [{"name": SAMPLE, "package": "pkg/sample.zip"}]}))
    scenario = load(file)
    assert scenario.extensions[0].package == str((tmp_path / "pkg/sample.zip").resolve())
    with Fabric(scenario) as fabric:
        [url] = manifest(fabric, SAMPLE)["1.0.0"]
        assert call(url).body == SAMPLE_ZIP.read_bytes()
    file.write_text(json.dumps({"extensions": [{"name": SAMPLE, "package": "missing.zip"}]}))
    with pytest.raises(ScenarioError, match=r"missing\.zip"):
        load(file)
    done = subprocess.run(
        [sys.executable, str(REPO / "tools/fabric"), "serve", "--scenario", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "missing.zip" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_manifest_lists_every_version_with_its_own_package() -> None:
    scenario = Scenario(
        extensions=[
            Extension(
                name=SAMPLE,
                version="1.1",  # a prefix, as the platform may request
                versions=[
                    ExtensionVersion("1.0.0", files={"HandlerManifest.json": "[]", "v": "1.0.0"}),
                    ExtensionVersion("1.1.5", files={"HandlerManifest.json": "[]", "v": "1.1.5"}),
                    ExtensionVersion("1.3.0", package=str(SAMPLE_ZIP)),
                ],
            )
        ]
    )
    with Fabric(scenario) as fabric:
        config = extensions_config(fabric)
        assert plugins(config)[SAMPLE].attrib["version"] == "1.1"
        location = plugins(config)[SAMPLE].attrib["location"]
        theirs = shape((FIXTURES / "walinuxagent/wire/manifest.xml").read_bytes())
        assert shape(call(location).body) <= theirs
        listed = manifest(fabric, SAMPLE)
        assert sorted(listed) == ["1.0.0", "1.1.5", "1.3.0"]
        packages = {version: call(urls[0]).body for version, urls in listed.items()}
        assert len(set(packages.values())) == 3  # each version its own zip
        assert packages["1.3.0"] == SAMPLE_ZIP.read_bytes()
        for version in ("1.0.0", "1.1.5"):
            with zipfile.ZipFile(io.BytesIO(packages[version])) as archive:
                assert archive.read("v").decode() == version


def test_extension_artifact_faults_target_the_package_alone() -> None:
    scenario = Scenario(
        extensions=[Extension(name=SAMPLE, version="1.3.0", package=str(SAMPLE_ZIP))],
        faults=[
            Fault(
                endpoint="hostgaplugin",
                kind="status",
                status=500,
                path=r"extensionArtifact.*__1\.3\.0\.zip",
            )
        ],
    )
    with Fabric(scenario) as fabric:
        location = plugins(extensions_config(fabric))[SAMPLE].attrib["location"]
        [url] = manifest(fabric, SAMPLE)["1.3.0"]
        artifact = f"{fabric.urls['hostgaplugin']}/extensionArtifact"
        headers = hgap_headers(fabric)
        assert call(artifact, headers={**headers, "x-ms-artifact-location": location}).status == 200
        assert call(artifact, headers={**headers, "x-ms-artifact-location": url}).status == 500
        again = call(artifact, headers={**headers, "x-ms-artifact-location": url})
        assert (again.status, again.body) == (200, SAMPLE_ZIP.read_bytes())
        assert [r.fault for r in fabric.requests if r.endpoint == "hostgaplugin"].count(
            "status"
        ) == 1


# -- one goal state, two documents -----------------------------------------


def test_vm_settings_and_extensions_config_describe_one_goal_state() -> None:
    with Fabric(rich_scenario()) as fabric:
        config = extensions_config(fabric)
        _, _, settings = vm_settings(fabric)
        root = ET.fromstring(config)  # noqa: S314 - the emulator's own document
        metadata = root.find("InVMGoalStateMetaData")
        assert metadata is not None
        assert int(metadata.attrib["createdOnTicks"]) == settings["extensionsLastModifiedTickCount"]
        blob = root.find("StatusUploadBlob")
        assert blob is not None
        assert blob.attrib["statusBlobType"] == "PageBlob"
        assert settings["statusUploadBlob"] == {"statusBlobType": "PageBlob", "value": blob.text}
        assert root.findtext("RequiredFeatures/RequiredFeature/Name") == (
            "MultipleExtensionsPerHandler"
        )
        assert settings["requiredFeatures"] == [{"name": "MultipleExtensionsPerHandler"}]

        listed, ordered = plugins(config), plugin_settings(config)
        by_name = {e["name"]: e for e in settings["extensionGoalStates"]}
        assert list(listed) == list(by_name) == [SAMPLE, MULTI]
        for name, entry in by_name.items():
            for attribute in ("version", "state", "location"):
                assert listed[name].attrib[attribute] == entry[attribute], (name, attribute)

        # The single-config handler: its settings, dependency level and protected settings.
        sample = by_name[SAMPLE]
        runtime = ordered[SAMPLE].find("RuntimeSettings")
        assert runtime is not None
        assert runtime.attrib["seqNo"] == "3" == str(sample["settingsSeqNo"])
        ours = handler_settings(runtime.text)
        [theirs] = sample["settings"]
        assert ours["publicSettings"] == json.loads(theirs["publicSettings"])
        assert ours["protectedSettings"] == theirs["protectedSettings"]  # encrypted once
        assert ours["protectedSettingsCertThumbprint"] == theirs["protectedSettingsCertThumbprint"]
        depends = ordered[SAMPLE].find("DependsOn")
        assert depends is not None
        assert depends.attrib["dependencyLevel"] == "1"
        assert sample["dependsOn"] == [{"dependsOnExtension": [], "dependencyLevel": 1}]

        # The multi-config handler: one ExtensionRuntimeSettings per extension.
        multi = by_name[MULTI]
        assert multi["isMultiConfig"] is True
        xml_configs = {
            e.attrib["name"]: e for e in ordered[MULTI].iterfind("ExtensionRuntimeSettings")
        }
        json_configs = {s["extensionName"]: s for s in multi["settings"]}
        assert list(xml_configs) == list(json_configs) == ["first", "second"]
        for name, element in xml_configs.items():
            assert element.attrib["seqNo"] == str(json_configs[name]["seqNo"])
            assert element.attrib["state"] == json_configs[name]["extensionState"]
            xml_settings = handler_settings(element.text)
            assert xml_settings["publicSettings"] == json.loads(
                json_configs[name]["publicSettings"]
            )
            assert xml_settings.get("protectedSettings") == json_configs[name].get(
                "protectedSettings"
            )
        assert json_configs["second"]["extensionState"] == "disabled"
        levels = {
            d.attrib["name"]: (
                d.attrib["dependencyLevel"],
                [(o.attrib.get("handler"), o.attrib.get("extension")) for o in d],
            )
            for d in ordered[MULTI].iterfind("DependsOn")
        }
        assert levels == {
            "first": ("2", [(SAMPLE, None)]),
            "second": ("3", [(SAMPLE, None), (MULTI, "first")]),
        }
        assert multi["dependsOn"][1] == {
            "dependsOnExtension": [{"handler": SAMPLE}, {"extension": "first", "handler": MULTI}],
            "dependencyLevel": 3,
            "name": "second",
        }

        # Both documents have the platform's shapes: nothing we send is unknown to them.
        samples = FIXTURES / "walinuxagent"
        known = set().union(
            *(
                shape((samples / name).read_bytes())
                for name in (
                    "hibernate/goal_state_1/ExtensionsConfig.xml",
                    "wire/ext_conf_sequencing.xml",
                    "wire/multi-config/ext_conf_with_multi_config_dependencies.xml",
                )
            )
        )
        assert shape(config) <= known
        sample_settings = json.loads((samples / "hostgaplugin/vm_settings.json").read_bytes())
        sample_entries = sample_settings["extensionGoalStates"]
        known_keys = set().union(*(set(e) for e in sample_entries))
        assert set(sample) <= known_keys
        assert set(multi) <= known_keys
        [run_command] = [e for e in sample_entries if e.get("isMultiConfig")]
        settings_keys = set().union(*(set(s) for e in sample_entries for s in e["settings"]))
        assert set(json_configs["first"]) <= settings_keys
        assert set(multi["dependsOn"][0]) == set(run_command["dependsOn"][0])


def test_default_documents_are_unchanged_by_the_new_features() -> None:
    """A plain extension gets no DependsOn, RequiredFeatures or isMultiConfig."""
    with Fabric(Scenario(extensions=[Extension(name="Test.Publisher.Handler")])) as fabric:
        config = extensions_config(fabric)
        _, _, settings = vm_settings(fabric)
        assert b"DependsOn" not in config
        assert b"RequiredFeatures" not in config
        assert b'statusBlobType="BlockBlob"' in config
        [entry] = settings["extensionGoalStates"]
        assert "dependsOn" not in entry
        assert "isMultiConfig" not in entry
        assert settings["requiredFeatures"] == []


# -- protected settings ----------------------------------------------------


def test_protected_settings_come_with_their_certificate_and_key() -> None:
    """No certificate in the scenario: the emulator makes one and delivers it, key included."""
    scenario = Scenario(extensions=[Extension(name=SAMPLE, protected_settings=SECRET)])
    with Fabric(scenario) as fabric:
        [certificate] = fabric.scenario.certificates
        assert certificate.name == PROTECTED_SETTINGS_CERTIFICATE
        assert certificate.with_key
        assert goal_state(fabric).uris.certificates is not None
        settings = handler_settings(
            plugin_settings(extensions_config(fabric))[SAMPLE].findtext("RuntimeSettings")
        )
        assert settings["protectedSettingsCertThumbprint"] == keys.thumbprint_of(certificate)
        assert "s3cr3t" not in json.dumps(settings)
        # A handler added later names a certificate of its own: it gets it too.
        fabric.add_extension(
            Extension(name="Later.Handler", protected_settings={"x": "y"}, certificate="later")
        )
        assert {c.name for c in fabric.scenario.certificates} == {
            PROTECTED_SETTINGS_CERTIFICATE,
            "later",
        }
        assert call(goal_state(fabric).uris.extensions_config or "", headers=WIRE).status == 200


def recipient_shape(blob: bytes) -> dict[str, Any]:
    """What matters of a protected-settings envelope, read with azagent's DER reader."""
    content_type, body = asn1.read_content_info(asn1.decode(blob, "blob"), "blob")
    version, recipients, encrypted = asn1.fields(body, "enveloped")
    [recipient] = asn1.fields(recipients, "recipients", asn1.SET)
    r_version, issuer_serial, transport, key = asn1.fields(recipient, "recipient")
    issuer, serial = asn1.fields(issuer_serial, "issuer and serial")
    data_type, cipher, ciphertext = asn1.fields(encrypted, "content")
    cipher_oid, iv = asn1.read_algorithm(cipher, "cipher")
    transport_oid, parameters = asn1.read_algorithm(transport, "transport")
    return {
        "content_type": content_type,
        "version": asn1.small_int(version, "version"),
        "recipient_version": asn1.small_int(r_version, "version"),
        "issuer_and_serial": (issuer.tag, serial.tag),
        "key_transport": (transport_oid, parameters),
        "encrypted_key": (key.tag, len(key.value)),
        "data": asn1.expect(data_type, asn1.OID, "data"),
        "cipher": (cipher_oid, iv.tag if iv else None, len(iv.value) if iv else 0),
        "ciphertext": ciphertext.tag,
    }


def test_protected_settings_have_the_envelope_of_the_platform_samples() -> None:
    sample = (FIXTURES / "walinuxagent/wire/ext_conf_multiple_extensions.xml").read_text()
    [theirs, *_] = [
        handler_settings(p.findtext("RuntimeSettings"))
        for p in ET.fromstring(sample).iterfind("PluginSettings/Plugin")  # noqa: S314
    ]
    with Fabric(Scenario(extensions=[Extension(name=SAMPLE, protected_settings=SECRET)])) as f:
        ours = handler_settings(
            plugin_settings(extensions_config(f))[SAMPLE].findtext("RuntimeSettings")
        )
    expected = recipient_shape(base64.b64decode(theirs["protectedSettings"]))
    assert expected["version"] == 0
    assert expected["cipher"] == (asn1.OID_DES3_CBC, asn1.OCTET_STRING, 8)
    assert recipient_shape(base64.b64decode(ours["protectedSettings"])) == expected


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_smime_decrypts_protected_settings_as_handlers_do(tmp_path: Path) -> None:
    """The certificate store fetches the goal state's certificates; handlers' command decrypts."""
    scenario = rich_scenario()
    with Fabric(scenario) as fabric:
        root = tmp_path / "root"
        ctx = fabric_context(make_vm(root, scenario, fabric).root)
        store = CertStore.of(ctx)
        store.fetch_all(WireClient.from_context(ctx))
        config = extensions_config(fabric)
        _, _, settings = vm_settings(fabric)
    ordered = plugin_settings(config)
    sealed = [
        (handler_settings(ordered[SAMPLE].findtext("RuntimeSettings")), SECRET),
        (
            handler_settings(ordered[MULTI].findtext("ExtensionRuntimeSettings[@name='first']")),
            {"token": "first-secret"},
        ),
    ]
    from_vm_settings = [s for e in settings["extensionGoalStates"] for s in e["settings"]]
    assert {s["protectedSettings"] for s, _ in sealed} <= {
        s.get("protectedSettings") for s in from_vm_settings
    }
    for handler, expected in sealed:
        thumbprint = handler["protectedSettingsCertThumbprint"]
        blob = tmp_path / f"{thumbprint}.p7m"
        blob.write_bytes(base64.b64decode(handler["protectedSettings"]))
        done = subprocess.run(
            [
                "openssl",
                "smime",
                "-decrypt",
                "-inform",
                "DER",
                "-recip",
                str(store.certificate_path(thumbprint)),
                "-inkey",
                str(store.private_key_path(thumbprint)),
                "-in",
                str(blob),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout) == expected


# -- timeline: the goal state changes while a client polls -----------------


def test_new_settings_update_version_and_uninstall_while_polling() -> None:
    scenario = Scenario(
        extensions=[
            Extension(name=SAMPLE, version="1.3.0", public_settings={"message": "one"}),
            Extension(name=MULTI, configs=[ExtensionConfig("a"), ExtensionConfig("b", seq_no=7)]),
        ]
    )
    with Fabric(scenario) as fabric:
        status, etag, _ = vm_settings(fabric)
        assert status == 200
        assert vm_settings(fabric, etag)[0] == 304
        incarnation = fabric.incarnation

        assert fabric.new_settings(SAMPLE, public_settings={"message": "two"}) == 1
        status, etag2, document = vm_settings(fabric, etag)
        assert (status, etag2 != etag) == (200, True)
        assert vm_settings(fabric, etag2)[0] == 304
        assert goal_state(fabric).incarnation == incarnation + 1
        [sample, _] = document["extensionGoalStates"]
        assert sample["settingsSeqNo"] == 1
        assert json.loads(sample["settings"][0]["publicSettings"]) == {"message": "two"}
        runtime = plugin_settings(extensions_config(fabric))[SAMPLE].find("RuntimeSettings")
        assert runtime is not None
        assert runtime.attrib["seqNo"] == "1"
        assert handler_settings(runtime.text)["publicSettings"] == {"message": "two"}

        # One extension of a multi-config handler: only its own number moves.
        assert fabric.new_settings(MULTI, config="b") == 8
        configs = plugin_settings(extensions_config(fabric))[MULTI]
        assert [e.attrib["seqNo"] for e in configs.iterfind("ExtensionRuntimeSettings")] == [
            "0",
            "8",
        ]

        fabric.update_version(SAMPLE, "1.4.0")
        assert plugins(extensions_config(fabric))[SAMPLE].attrib["version"] == "1.4.0"
        assert sorted(manifest(fabric, SAMPLE)) == ["1.3.0", "1.4.0"]  # both stay downloadable

        fabric.set_extension_state(SAMPLE, "uninstall")
        _, etag3, document = vm_settings(fabric, etag2)
        assert document["extensionGoalStates"][0]["state"] == "uninstall"
        assert plugins(extensions_config(fabric))[SAMPLE].attrib["state"] == "uninstall"
        assert goal_state(fabric).incarnation == incarnation + 4
        assert vm_settings(fabric, etag3)[0] == 304


def test_timeline_actions_from_a_scenario_file() -> None:
    scenario = parse(
        json.dumps(
            {
                "extensions": [{"name": SAMPLE, "version": "1.3.0"}],
                "timeline": [
                    {
                        "action": "new_settings",
                        "name": SAMPLE,
                        "after_status_uploads": 1,
                        "protected_settings": {"later": "secret"},
                    },
                    {
                        "action": "update_version",
                        "name": SAMPLE,
                        "version": "1.3.1",
                        "after_status_uploads": 2,
                    },
                    {
                        "action": "set_state",
                        "name": SAMPLE,
                        "state": "disabled",
                        "after_seconds": 0.2,
                    },
                ],
            }
        ).encode()
    )
    with Fabric(scenario) as fabric:
        # The certificate for settings that only come later is there from the start.
        assert [c.name for c in fabric.scenario.certificates] == [PROTECTED_SETTINGS_CERTIFICATE]
        assert fabric.wait_for(lambda: fabric.extension(SAMPLE).state == "disabled", timeout=5)
        start = fabric.incarnation
        put_block(fabric, status_document({SAMPLE: "success"}))
        assert fabric.incarnation == start + 1
        assert fabric.extension(SAMPLE).seq_no == 1
        settings = handler_settings(
            plugin_settings(extensions_config(fabric))[SAMPLE].findtext("RuntimeSettings")
        )
        assert settings["protectedSettingsCertThumbprint"] == keys.thumbprint_of(
            fabric.scenario.certificates[0]
        )
        put_block(fabric, status_document({SAMPLE: "success"}))
        assert fabric.extension(SAMPLE).version == "1.3.1"
        assert fabric.incarnation == start + 2


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"action": "update_version", "name": SAMPLE, "after_seconds": 1}, "version"),
        ({"action": "set_state", "name": SAMPLE, "state": "gone", "after_seconds": 1}, "state"),
        ({"action": "new_settings", "after_seconds": 1}, "needs a name"),
        (
            {
                "action": "new_settings",
                "name": SAMPLE,
                "after_seconds": 1,
                "after_status_uploads": 1,
            },
            "exactly one",
        ),
    ],
)
def test_bad_timeline_events_are_named(event: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse(json.dumps({"timeline": [event]}).encode())


@pytest.mark.parametrize(
    ("extension", "message"),
    [
        ({"name": SAMPLE, "package": "a.zip", "files": {"x": "y"}}, "package or files"),
        ({"name": SAMPLE, "versions": [{"version": "1.0"}, {"version": "1.0"}]}, "twice"),
        ({"name": SAMPLE, "configs": [{"name": "a", "state": "on"}]}, r"configs\[0\]\.state"),
        ({"name": SAMPLE, "dependency_level": "1"}, "dependency_level"),
    ],
)
def test_bad_extensions_are_named(extension: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse(json.dumps({"extensions": [extension]}).encode())
    with pytest.raises(ScenarioError, match="status_blob_type"):
        parse(json.dumps({"status_blob_type": "AppendBlob"}).encode())


# -- status uploads --------------------------------------------------------


def status_document(handlers: dict[str, str], message: str = "enabled") -> bytes:
    """A status blob as WALinuxAgent writes it (EXTENSIONS.md 7)."""
    document = {
        "version": "1.1",
        "timestampUTC": "2026-01-01T00:00:00Z",
        "aggregateStatus": {
            "guestAgentStatus": {
                "version": "9.9.9",
                "status": "Ready",
                "formattedMessage": {"lang": "en-US", "message": "Guest Agent is running"},
            },
            "handlerAggregateStatus": [
                {
                    "handlerName": name,
                    "handlerVersion": "1.3.0",
                    "status": "Ready",
                    "code": 0,
                    "useExactVersion": True,
                    "runtimeSettingsStatus": {
                        "settingsStatus": {
                            "status": {
                                "name": name,
                                "operation": "Enable",
                                "status": state,
                                "code": 0,
                                "formattedMessage": {"lang": "en-US", "message": message},
                            },
                            "version": 1.0,
                            "timestampUTC": "2026-01-01T00:00:00Z",
                        },
                        "sequenceNumber": 0,
                    },
                }
                for name, state in handlers.items()
            ],
        },
        "guestOSInfo": None,
        "supportedFeatures": [],
    }
    return json.dumps(document).encode()


def blob_url(fabric: Fabric) -> str:
    root = ET.fromstring(extensions_config(fabric))  # noqa: S314 - the emulator's own document
    url = root.findtext("StatusUploadBlob")
    assert url is not None
    return url


def put_block(fabric: Fabric, content: bytes) -> None:
    reply = call(
        blob_url(fabric),
        "PUT",
        {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2014-02-14"},
        content,
    )
    assert reply.status == 201


def put_pages(fabric: Fabric, content: bytes, pad: bytes = b"\0", page: int = 4 << 20) -> int:
    """Create a page blob and write it in pages of at most ``page`` bytes; the uploads seen."""
    url = blob_url(fabric)
    size = -(-len(content) // 512) * 512
    padded = content.ljust(size, pad)
    create = {"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": str(size)}
    assert call(url, "PUT", create).status == 201
    seen = []
    for start in range(0, size, page):
        chunk = padded[start : start + page]
        headers = {"x-ms-range": f"bytes={start}-{start + len(chunk) - 1}"}
        assert call(f"{url}&comp=page", "PUT", headers, chunk).status == 201
        seen.append(len(fabric.status_uploads))
    return seen[0]


def put_through_hgap(
    fabric: Fabric, headers: dict[str, str], content: Optional[bytes], suffix: str = ""
) -> None:
    document: dict[str, Any] = {
        "requestUri": blob_url(fabric) + suffix,
        "headers": [{"headerName": k, "headerValue": v} for k, v in headers.items()],
    }
    if content is not None:
        document["content"] = base64.b64encode(content).decode()
    reply = call(
        f"{fabric.urls['hostgaplugin']}/status",
        "PUT",
        {**hgap_headers(fabric), "Content-Type": "application/json"},
        json.dumps(document, sort_keys=True).encode(),
    )
    assert reply.status == 201


def test_status_uploads_are_recorded_block_page_and_through_the_hostgaplugin() -> None:
    with Fabric(Scenario(extensions=[Extension(name=SAMPLE)])) as fabric:
        first = status_document({SAMPLE: "transitioning"})
        put_block(fabric, first)
        assert put_pages(fabric, status_document({SAMPLE: "success"})) == 2
        # Through the HostGAPlugin as WALinuxAgent does: a page blob padded with spaces.
        hgap = status_document({SAMPLE: "success", "Other.Handler": "error"})
        size = -(-len(hgap) // 512) * 512
        put_through_hgap(
            fabric,
            {"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": str(size)},
            None,
        )
        assert len(fabric.status_uploads) == 2  # created, not written yet
        put_through_hgap(
            fabric,
            {"x-ms-range": f"bytes=0-{size - 1}", "x-ms-page-write": "update"},
            hgap.ljust(size),
            "&comp=page",
        )
        put_through_hgap(fabric, {"x-ms-blob-type": "BlockBlob"}, b"not json")

        uploads = fabric.status_uploads
        assert [(u.via, u.blob_type) for u in uploads] == [
            ("direct", "BlockBlob"),
            ("direct", "PageBlob"),
            ("hostgaplugin", "PageBlob"),
            ("hostgaplugin", "BlockBlob"),
        ]
        assert [u.content for u in uploads[:3]] == [
            first,
            status_document({SAMPLE: "success"}),
            hgap,
        ]
        assert uploads[2].document == json.loads(hgap)
        assert (uploads[3].document, uploads[3].error) == (None, "not JSON")


def test_a_page_blob_status_counts_once_all_its_pages_are_written() -> None:
    with Fabric(Scenario()) as fabric:
        content = status_document({SAMPLE: "success"}, message="x" * 1200)
        assert len(content) > 1024
        assert put_pages(fabric, content, page=512) == 0  # the first page alone is not a status
        [upload] = fabric.status_uploads
        assert upload.content == content


def test_log_status_prints_each_handlers_latest_status_redacted(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    with Fabric(Scenario(), log_path=log) as fabric:
        put_block(fabric, status_document({SAMPLE: "transitioning", MULTI: "success"}))
        leaked = "see https://x.blob.core.windows.net/c/b?sv=1&sig=TOPSECRET"
        put_pages(fabric, status_document({SAMPLE: "error"}, message=leaked))

    def fabric_log(*args: str) -> str:
        return subprocess.run(
            [sys.executable, str(REPO / "tools/fabric"), "log", str(log), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    printed = fabric_log("--status")
    assert "status uploads: 2 (direct 2); last via direct as PageBlob" in printed
    lines = {line.split(" ", 1)[0]: line for line in printed.splitlines()}
    assert "Ready code 0, sequence 0, Enable error" in lines[SAMPLE]
    assert "Enable success" in lines[MULTI]  # not in the last upload: its latest status
    assert "TOPSECRET" not in printed
    assert "<redacted>" in lines[SAMPLE]
    as_json = json.loads(fabric_log("--status", "--json"))
    assert as_json["uploads"] == 2
    assert (
        as_json["handlers"][SAMPLE]["runtimeSettingsStatus"]["settingsStatus"]["status"]["status"]
        == "error"
    )
    assert "TOPSECRET" not in json.dumps(as_json)
    assert "TOPSECRET" not in log.read_text()


# -- /HealthService --------------------------------------------------------


def test_health_service_observations_are_answered_and_recorded() -> None:
    observations = {
        "Api": "reporttargethealth",
        "Version": "1.0",
        "Source": "WALinuxAgent",
        "Observations": [
            {
                "ObservationName": "GuestAgentPluginHeartbeat",
                "IsHealthy": True,
                "Description": "",
                "Value": "",
            }
        ],
    }
    with Fabric(Scenario()) as fabric:
        url = f"{fabric.urls['wireserver']}/HealthService"
        # WALinuxAgent posts it without the WireServer's x-ms-* headers.
        headers = {"Content-Type": "application/json"}
        reply = call(url, "POST", headers, json.dumps(observations).encode())
        assert (reply.status, reply.body) == (200, b"")
        assert fabric.health_service == [observations]
        assert call(url, "POST", headers, b"{not json").status == 400
        assert len(fabric.health_service) == 1


def test_wait_for_sees_status_uploads() -> None:
    with Fabric(Scenario()) as fabric:
        start = time.monotonic()
        assert not fabric.wait_for(lambda: bool(fabric.status_uploads), timeout=0.3)
        assert time.monotonic() - start >= 0.3
        put_block(fabric, status_document({SAMPLE: "success"}))
        assert fabric.wait_for(lambda: bool(fabric.status_uploads), timeout=1)
        assert urlsplit(blob_url(fabric)).path == fabric.status_uploads[0].path
