"""The emulator's documents, built from the VM state with azagent's protocol modules."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote, urlsplit

from azagent import extconf, wireserver
from azfabric.scenario import Extension

if TYPE_CHECKING:
    from azfabric.server import Fabric, FabricHandler

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


def handler_files(extension: Extension) -> dict[str, str]:
    if extension.files:
        return dict(extension.files)
    return {
        "HandlerManifest.json": json.dumps(HANDLER_MANIFEST, indent=2),
        "handler.sh": HANDLER_SCRIPT,
    }


class Artifacts:
    """Manifests and handler packages of the scenario's extensions, by blob path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    @staticmethod
    def manifest_path(extension: Extension) -> str:
        return f"/extensions/{quote(extension.name)}/manifest.xml"

    @staticmethod
    def package_path(extension: Extension) -> str:
        name = quote(extension.name)
        return f"/extensions/{name}/{name}__{quote(extension.version)}.zip"

    GA_MANIFEST = "/ga/manifest.xml"

    def publish(self, fabric: Fabric) -> None:
        base = fabric.base_url("blob")
        # The guest agent family manifest: azagent updates by package, so it lists nothing.
        self.files[self.GA_MANIFEST] = extconf.manifest_xml({})
        for extension in fabric.extensions:
            package = self.package_path(extension)
            self.files[package] = _zip(handler_files(extension))
            self.files[self.manifest_path(extension)] = extconf.manifest_xml(
                {extension.version: [f"{base}{package}"]}
            )

    def lookup(self, fabric: Fabric, location: str) -> Optional[bytes]:
        return self.files.get(urlsplit(location).path)


def _protected(fabric: Fabric, extension: Extension) -> tuple[Optional[str], Optional[str]]:
    """Encrypt protected settings to the first certificate with a key, as the platform does."""
    if extension.protected_settings is None:
        return None, None
    from azagent import certs
    from azfabric import keys

    for certificate in fabric.scenario.certificates:
        if certificate.with_key and certificate.cert_pem:
            content = json.dumps(extension.protected_settings).encode()
            blob = certs.encrypt_enveloped(certificate.cert_pem.encode(), content)
            return base64.b64encode(blob).decode(), keys.thumbprint_of(certificate)
    raise ValueError(
        f"extension {extension.name} has protected settings but no certificate has a key"
    )


def extensions_goal_state(fabric: Fabric) -> extconf.ExtensionsGoalState:
    base = fabric.base_url("blob")
    plugins = []
    for extension in fabric.extensions:
        protected, thumbprint = _protected(fabric, extension)
        plugins.append(
            extconf.Plugin(
                name=extension.name,
                version=extension.version,
                location=f"{base}{Artifacts.manifest_path(extension)}",
                state=extension.state,
                seq_no=extension.seq_no,
                settings=extconf.HandlerSettings(
                    public_settings=extension.public_settings,
                    protected_settings=protected,
                    thumbprint=thumbprint,
                ),
            )
        )
    return extconf.ExtensionsGoalState(
        incarnation=fabric.incarnation,
        plugins=tuple(plugins),
        status_upload_blob=f"{base}/status/{fabric.scenario.vm_id}.status?{STATUS_SAS}",
        in_svd_seq_no=fabric.incarnation,
        created_ticks=fabric.goal_state_ticks,
        ga_manifest=f"{base}{Artifacts.GA_MANIFEST}",
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
