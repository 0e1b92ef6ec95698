"""The emulator's documents, built from the VM state with azagent's protocol modules."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote, urlsplit

from azagent import extconf, wireserver
from azfabric.scenario import (
    MAX_PACKAGE_BYTES,
    PROTECTED_SETTINGS_CERTIFICATE,
    Extension,
    ExtensionVersion,
    ScenarioError,
)

if TYPE_CHECKING:
    from azfabric.server import Fabric, FabricHandler

# Status blobs live here in the blob store; what is PUT below it is a status upload.
STATUS_PATH = "/status/"
STATUS_SAS = (
    "sv=2018-03-28&sr=b&sk=system-1&sig=ZmFicmljLWVtdWxhdG9y&se=9999-01-01T00%3A00%3A00Z&sp=rw"
)

HANDLER_MANIFEST = [
    {
        "version": 1.0,
        "handlerManifest": {
            "installCommand": "handler.sh install",
            "uninstallCommand": "handler.sh uninstall",
            "updateCommand": "handler.sh update",
            "enableCommand": "handler.sh enable",
            "disableCommand": "handler.sh disable",
            "rebootAfterInstall": False,
            "reportHeartbeat": False,
            "updateMode": "UpdateWithInstall",
            "continueOnUpdateFailure": False,
            "supportsMultipleExtensions": False,
        },
    }
]

# A minimal extension: logs each command and reports success for the
# current sequence number, reading its folders from HandlerEnvironment.json.
HANDLER_SCRIPT = """#!/bin/sh
set -eu
cd "$(dirname "$0")"
echo "$(date -u +%FT%TZ) $1 seq=${ConfigSequenceNumber:-none}" >> commands.log
[ "$1" = enable ] || exit 0
python3 - "$ConfigSequenceNumber" <<'PY'
import json, sys, time
env = json.load(open("HandlerEnvironment.json"))[0]["handlerEnvironment"]
status = [{"version": "1.0", "timestampUTC": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "status": {"name": "fabric-emulator-extension", "operation": "Enable",
                      "status": "success", "code": 0,
                      "formattedMessage": {"lang": "en-US", "message": "enabled"}}}]
with open(f"{env['statusFolder']}/{sys.argv[1]}.status", "w") as f:
    json.dump(status, f)
PY
"""


def _zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if name.endswith(".sh") else 0o644) << 16
            archive.writestr(info, text)
    return buffer.getvalue()


def handler_files(files: dict[str, str]) -> dict[str, str]:
    if files:
        return dict(files)
    return {
        "HandlerManifest.json": json.dumps(HANDLER_MANIFEST, indent=2),
        "handler.sh": HANDLER_SCRIPT,
    }


def package_bytes(version: ExtensionVersion) -> bytes:
    """The package of one version: the zip file as it is, else a zip of its files."""
    if version.package is None:
        return _zip(handler_files(version.files))
    path = Path(version.package)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PACKAGE_BYTES + 1)
    except OSError as e:
        raise ScenarioError(f"package {path}: {e.strerror}") from None
    if len(data) > MAX_PACKAGE_BYTES:
        raise ScenarioError(f"package {path}: larger than {MAX_PACKAGE_BYTES} bytes")
    return data


class Artifacts:
    """Manifests and handler packages of the scenario's extensions, by blob path.

    What was published once stays, as in a real storage account: a handler
    removed from the goal state can still be downloaded.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    @staticmethod
    def manifest_path(extension: Extension) -> str:
        return f"/extensions/{quote(extension.name)}/manifest.xml"

    @staticmethod
    def package_path(extension: Extension, version: Optional[str] = None) -> str:
        name = quote(extension.name)
        return f"/extensions/{name}/{name}__{quote(version or extension.version)}.zip"

    GA_MANIFEST = "/ga/manifest.xml"

    def publish(self, fabric: Fabric) -> None:
        base = fabric.base_url("blob")
        # The guest agent family manifest: azagent updates by package, so it lists nothing.
        self.files[self.GA_MANIFEST] = extconf.manifest_xml({})
        for extension in fabric.extensions:
            listed: dict[str, list[str]] = {}
            for version in extension.manifest_versions():
                package = self.package_path(extension, version.version)
                self.files[package] = package_bytes(version)
                listed[version.version] = [f"{base}{package}"]
            self.files[self.manifest_path(extension)] = extconf.manifest_xml(listed)

    def lookup(self, fabric: Fabric, location: str) -> Optional[bytes]:
        return self.files.get(urlsplit(location).path)


def _protected(
    fabric: Fabric,
    extension: Extension,
    seq_no: int,
    config: str,
    settings: Optional[dict[str, Any]],
) -> tuple[Optional[str], Optional[str]]:
    """Encrypt protected settings to the extension's certificate, as the platform does.

    The same settings of the same sequence number encrypt once: ExtensionsConfig
    and vmSettings of one goal state carry the same blob, and a client polling
    an unchanged goal state sees unchanged documents.
    """
    if settings is None:
        return None, None
    from azfabric import keys

    wanted = extension.certificate or PROTECTED_SETTINGS_CERTIFICATE
    certificate = next((c for c in fabric.scenario.certificates if c.name == wanted), None)
    if certificate is None or certificate.cert_pem is None:
        raise ValueError(f"extension {extension.name}: no certificate {wanted}")
    thumbprint = keys.thumbprint_of(certificate)
    content = json.dumps(settings, sort_keys=True)
    key = (extension.name, config, seq_no, thumbprint, content)
    if key not in fabric.sealed:
        blob = keys.encrypt_protected_settings(certificate.cert_pem.encode(), content.encode())
        fabric.sealed[key] = base64.b64encode(blob).decode()
    return fabric.sealed[key], thumbprint


def _levels(fabric: Fabric) -> list[tuple[int, extconf.Dependency]]:
    """Every ordered handler (or extension of a multi-config one) with its level."""
    levels: list[tuple[int, extconf.Dependency]] = []
    for extension in fabric.extensions:
        if extension.dependency_level is not None and not extension.configs:
            levels.append((extension.dependency_level, (extension.name, None)))
        levels += [
            (config.dependency_level, (extension.name, config.name))
            for config in extension.configs
            if config.dependency_level is not None
        ]
    return levels


def _depends_on(fabric: Fabric, level: Optional[int]) -> tuple[extconf.Dependency, ...]:
    """What an extension at ``level`` waits for: everything on a lower level."""
    if level is None:
        return ()
    return tuple(dependency for lower, dependency in _levels(fabric) if lower < level)


def _plugin(fabric: Fabric, extension: Extension, base: str) -> extconf.Plugin:
    configs = []
    for config in extension.configs:
        protected, thumbprint = _protected(
            fabric, extension, config.seq_no, config.name, config.protected_settings
        )
        configs.append(
            extconf.MultiConfigExtension(
                name=config.name,
                seq_no=config.seq_no,
                state=config.state,
                settings=extconf.HandlerSettings(config.public_settings, protected, thumbprint),
                dependency_level=config.dependency_level,
                depends_on=_depends_on(fabric, config.dependency_level),
            )
        )
    # A multi-config handler's settings are its extensions'; its own are not sent.
    own = None if extension.configs else extension.protected_settings
    protected, thumbprint = _protected(fabric, extension, extension.seq_no, "", own)
    return extconf.Plugin(
        name=extension.name,
        version=extension.version,
        location=f"{base}{Artifacts.manifest_path(extension)}",
        state=extension.state,
        seq_no=extension.seq_no,
        settings=extconf.HandlerSettings(extension.public_settings, protected, thumbprint),
        dependency_level=extension.dependency_level,
        depends_on=_depends_on(fabric, extension.dependency_level),
        extensions=tuple(configs),
    )


def status_blob_url(fabric: Fabric) -> str:
    return f"{fabric.base_url('blob')}{STATUS_PATH}{fabric.scenario.vm_id}.status?{STATUS_SAS}"


def extensions_goal_state(fabric: Fabric) -> extconf.ExtensionsGoalState:
    base = fabric.base_url("blob")
    plugins = tuple(_plugin(fabric, extension, base) for extension in fabric.extensions)
    multi_config = any(plugin.extensions for plugin in plugins)
    return extconf.ExtensionsGoalState(
        incarnation=fabric.incarnation,
        plugins=plugins,
        status_upload_blob=status_blob_url(fabric),
        status_blob_type=fabric.scenario.status_blob_type,
        in_svd_seq_no=fabric.incarnation,
        created_ticks=fabric.goal_state_ticks,
        ga_manifest=f"{base}{Artifacts.GA_MANIFEST}",
        required_features=("MultipleExtensionsPerHandler",) if multi_config else (),
    )


def extensions_config(fabric: Fabric, handler: FabricHandler) -> bytes:
    return extconf.extensions_config_xml(
        extensions_goal_state(fabric), location=fabric.scenario.location
    )


def vm_settings(fabric: Fabric) -> bytes:
    return extconf.vm_settings_json(
        extensions_goal_state(fabric),
        vm_id=fabric.scenario.vm_id or "",
        vm_name=fabric.scenario.hostname,
        location=fabric.scenario.location,
    )


def certificates(fabric: Fabric, transport_header: str, cipher_name: str) -> bytes:
    """The Certificates document, encrypted to the transport certificate the client sent."""
    from azagent import certs

    try:
        transport = base64.b64decode(transport_header, validate=True)
    except ValueError:
        raise ValueError("transport certificate is not base64") from None
    items = [
        (c.cert_pem.encode(), c.key_pem.encode() if (c.with_key and c.key_pem) else None)
        for c in fabric.scenario.certificates
        if c.cert_pem
    ]
    # The platform honours the cipher the client names; without one it uses 3DES.
    try:
        blob = certs.build_enveloped_pfx(
            transport,
            items,
            key_transport="oaep",
            cipher="aes128" if cipher_name == "AES128_CBC" else "des3",
        )
    except certs.CertificateError as e:
        raise ValueError(str(e)) from None
    return certs.certificates_xml(fabric.incarnation, base64.b64encode(blob).decode())


def parse_health(body: bytes) -> wireserver.HealthReport:
    try:
        return wireserver.parse_health(body)
    except Exception as e:  # any parse failure is the client's malformed XML
        raise ValueError(str(e)) from None


def imds_instance(fabric: Fabric) -> dict[str, Any]:
    from azagent import imds

    scenario = fabric.scenario
    return imds.build_instance(
        vm_id=scenario.vm_id or "",
        name=scenario.hostname,
        computer_name=scenario.hostname,
        admin_username=scenario.username,
        disable_password_authentication=scenario.disable_password_auth,
        public_keys=[(k.value, k.path) for k in scenario.public_keys if k.value],
        location=scenario.location,
        vm_size=scenario.vm_size,
        private_address=scenario.private_address,
    )
