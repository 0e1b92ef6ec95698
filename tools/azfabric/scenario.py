"""A scenario: one file describing the VM the emulated fabric presents.

JSON (or TOML on Python >= 3.11). Everything has a default, so an empty
scenario is a working VM with one user and one generated SSH key. Material
that is not given (VM id, SSH keys, certificates) is generated once by
:func:`materialize`; ``tools/fabric init`` writes the materialized scenario so
that ``serve`` and ``media`` agree on the same keys.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

MAX_SCENARIO_BYTES = 4 * 1024 * 1024
ENDPOINTS = ("wireserver", "hostgaplugin", "imds", "blob")
# status: answer `status` (with a Retry-After header when `retry_after` is set); delay: wait
# `seconds`, then answer; drop: close without an answer; hang: no answer for `seconds` (a stall
# before the headers), then a close; blackhole: close without an answer, then accept no
# connection on the endpoint for `seconds` (connects time out); garbage: the request takes
# effect, the answer is a 200 with a junk body; trickle: the whole answer, headers too, in 50
# pieces spread over `seconds`; stall: headers and `body_bytes` of the body (default half),
# then silence for `seconds` before closing; reset: the same, then a TCP reset; truncate:
# headers announcing the whole body, `body_bytes` of it, then a clean close.
FAULT_KINDS = (
    "status",
    "delay",
    "drop",
    "hang",
    "blackhole",
    "garbage",
    "trickle",
    "stall",
    "reset",
    "truncate",
)
TIMELINE_ACTIONS = (
    "new_incarnation",
    "rotate_certificate",
    "add_extension",
    "remove_extension",  # the handler vanishes from the goal state (no uninstall)
    "new_container",
    "new_settings",  # sequence number + 1, settings replaced where given
    "update_version",  # the requested version changes
    "set_state",  # enabled, disabled, or uninstall (how the platform removes an extension)
)
EXTENSION_STATES = ("enabled", "disabled", "uninstall")
STATUS_BLOB_TYPES = ("BlockBlob", "PageBlob")
# The emulator holds packages in memory; real handlers are a few MB, the biggest ~100 MB.
MAX_PACKAGE_BYTES = 256 * 1024 * 1024
# The certificate protected settings are encrypted to unless an extension names one.
PROTECTED_SETTINGS_CERTIFICATE = "protected-settings"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_VERSION = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ScenarioError(ValueError):
    """The scenario file is invalid; the message names the field."""


@dataclass
class PublicKey:
    path: str
    value: Optional[str] = None  # OpenSSH public key line; None: delivered as a certificate
    fingerprint: Optional[str] = None  # thumbprint of the certificate carrying it
    private_key: Optional[str] = None  # generated keys keep theirs, for tests to log in


@dataclass
class KeyPair:
    path: str
    fingerprint: Optional[str] = None


@dataclass
class Certificate:
    """A certificate in the WireServer's Certificates blob (PEM).

    ``with_key``: whether its private key goes into the blob too (a KeyPair)
    or only the certificate (a PublicKey given by fingerprint). The scenario
    keeps the key either way, so tests can log in with it.
    """

    name: str
    with_key: bool = True
    cert_pem: Optional[str] = None
    key_pem: Optional[str] = None


@dataclass
class ExtensionVersion:
    """One version the handler's manifest lists, with its own package."""

    version: str
    package: Optional[str] = None  # a zip file, served byte for byte
    files: dict[str, str] = field(default_factory=dict)  # else a zip of these files


@dataclass
class ExtensionConfig:
    """One named extension of a multi-config handler (ExtensionRuntimeSettings)."""

    name: str
    seq_no: int = 0
    state: str = "enabled"
    public_settings: dict[str, Any] = field(default_factory=dict)
    protected_settings: Optional[dict[str, Any]] = None
    dependency_level: Optional[int] = None


@dataclass
class Extension:
    name: str  # Publisher.Type
    version: str = "1.0.0"  # the requested version (a prefix of a manifest version works)
    state: str = "enabled"
    seq_no: int = 0
    public_settings: dict[str, Any] = field(default_factory=dict)
    protected_settings: Optional[dict[str, Any]] = None
    # A zip file served byte for byte (relative: to the scenario file's directory).
    package: Optional[str] = None
    # Files of the handler package, zipped by the emulator; a minimal working handler
    # when neither files nor package is given.
    files: dict[str, str] = field(default_factory=dict)
    # The versions the manifest lists, each its own package; empty: just `version`
    # with the package above.
    versions: list[ExtensionVersion] = field(default_factory=list)
    dependency_level: Optional[int] = None
    # Multi-config: the handler's named extensions, each with its own settings.
    configs: list[ExtensionConfig] = field(default_factory=list)
    # The name of the scenario certificate protected settings are encrypted to
    # (made, with its key, when missing); default PROTECTED_SETTINGS_CERTIFICATE.
    certificate: Optional[str] = None

    def manifest_versions(self) -> list[ExtensionVersion]:
        """What the manifest lists: ``versions``, else the one version with this package."""
        if self.versions:
            return [
                v
                if (v.package or v.files)
                else ExtensionVersion(v.version, self.package, self.files)
                for v in self.versions
            ]
        return [ExtensionVersion(self.version, self.package, self.files)]

    def has_protected_settings(self) -> bool:
        return self.protected_settings is not None or any(
            c.protected_settings is not None for c in self.configs
        )


@dataclass
class Fault:
    endpoint: str
    kind: str
    path: str = ""  # regular expression searched in "METHOD path?query"
    count: int = 1  # how many matching requests it hits
    skip: int = 0  # matching requests let through first
    status: int = 503
    seconds: float = 1.0  # delay, the whole trickle, a stall's or hang's silence, a blackhole
    retry_after: Optional[str] = None  # status: a Retry-After header (seconds or an HTTP date)
    body_bytes: Optional[int] = None  # stall, reset, truncate: body bytes sent first (half)


@dataclass
class TimelineEvent:
    action: str
    after_seconds: Optional[float] = None
    after_health_reports: Optional[int] = None
    after_status_uploads: Optional[int] = None
    extension: Optional[Extension] = None  # add_extension
    name: Optional[str] = None  # the extension the other extension actions change
    config: Optional[str] = None  # new_settings, set_state: one extension of a multi-config handler
    version: Optional[str] = None  # update_version
    state: Optional[str] = None  # set_state
    public_settings: Optional[dict[str, Any]] = None  # new_settings (None: unchanged)
    protected_settings: Optional[dict[str, Any]] = None  # new_settings (None: unchanged)

    @property
    def triggers(self) -> list[str]:
        given = {
            "after_seconds": self.after_seconds,
            "after_health_reports": self.after_health_reports,
            "after_status_uploads": self.after_status_uploads,
        }
        return [name for name, value in given.items() if value is not None]


@dataclass
class Scenario:
    hostname: str = "azagent-vm"
    username: str = "azureuser"
    password: Optional[str] = None
    disable_password_auth: bool = True
    custom_data: Optional[str] = None
    public_keys: list[PublicKey] = field(default_factory=list)
    key_pairs: list[KeyPair] = field(default_factory=list)
    certificates: list[Certificate] = field(default_factory=list)
    provision_guest_agent: bool = True
    extensions: list[Extension] = field(default_factory=list)
    status_blob_type: str = "BlockBlob"  # or PageBlob
    timeline: list[TimelineEvent] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    vm_id: Optional[str] = None
    container_id: Optional[str] = None
    role_instance: str = "azagent-vm_IN_0"
    location: str = "eastus"
    vm_size: str = "Standard_D2s_v5"
    incarnation: int = 1
    private_address: str = "10.0.2.15"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _check_keys(where: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {', '.join(unknown)}")


def _typed(where: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ScenarioError(f"{where}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        raise ScenarioError(f"{where}: expected {getattr(kind, '__name__', kind)}")
    return value


def _build(cls: type, where: str, data: Any) -> Any:
    """Build dataclass ``cls`` from a mapping, checking names and simple types."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: expected an object")
    fields = dataclasses.fields(cls)
    _check_keys(where, data, {f.name for f in fields})
    nested = {
        "public_keys": PublicKey,
        "key_pairs": KeyPair,
        "certificates": Certificate,
        "extensions": Extension,
        "versions": ExtensionVersion,
        "configs": ExtensionConfig,
        "timeline": TimelineEvent,
        "faults": Fault,
    }
    values: dict[str, Any] = {}
    for name, value in data.items():
        here = f"{where}.{name}"
        if name in nested and isinstance(value, list):
            values[name] = [_build(nested[name], f"{here}[{i}]", v) for i, v in enumerate(value)]
        elif name == "extension" and value is not None:
            values[name] = _build(Extension, here, value)
        else:
            values[name] = value
    try:
        return cls(**values)
    except TypeError as e:
        raise ScenarioError(f"{where}: {e}") from None


def _validate(scenario: Scenario) -> None:
    # Scenarios may describe invalid VMs on purpose (to test failure reports):
    # only refuse what would break the documents or the emulator itself.
    for name in ("hostname", "username"):
        if any(c in getattr(scenario, name) for c in "\0\n\r"):
            raise ScenarioError(f"{name}: contains a control character")
    for i, fault in enumerate(scenario.faults):
        if fault.endpoint not in ENDPOINTS:
            raise ScenarioError(f"faults[{i}].endpoint: one of {', '.join(ENDPOINTS)}")
        if fault.kind not in FAULT_KINDS:
            raise ScenarioError(f"faults[{i}].kind: one of {', '.join(FAULT_KINDS)}")
        _typed(f"faults[{i}].count", fault.count, int)
        _typed(f"faults[{i}].status", fault.status, int)
        _typed(f"faults[{i}].seconds", fault.seconds, (int, float))
        if not 0 <= fault.seconds <= 600:
            raise ScenarioError(f"faults[{i}].seconds: between 0 and 600")
        if fault.retry_after is not None:
            _typed(f"faults[{i}].retry_after", fault.retry_after, str)
            if not fault.retry_after.strip() or any(c in fault.retry_after for c in "\r\n\0"):
                raise ScenarioError(f"faults[{i}].retry_after: seconds or an HTTP date")
        if fault.body_bytes is not None:
            _typed(f"faults[{i}].body_bytes", fault.body_bytes, int)
            if fault.body_bytes < 0:
                raise ScenarioError(f"faults[{i}].body_bytes: 0 or more")
        try:
            re.compile(fault.path)
        except re.error as e:
            raise ScenarioError(f"faults[{i}].path: not a regular expression: {e}") from None
    if scenario.status_blob_type not in STATUS_BLOB_TYPES:
        raise ScenarioError(f"status_blob_type: one of {', '.join(STATUS_BLOB_TYPES)}")
    for i, event in enumerate(scenario.timeline):
        _validate_event(f"timeline[{i}]", event)
    for i, extension in enumerate(scenario.extensions):
        _validate_extension(f"extensions[{i}]", extension)


def _validate_event(where: str, event: TimelineEvent) -> None:
    if event.action not in TIMELINE_ACTIONS:
        raise ScenarioError(f"{where}.action: one of {', '.join(TIMELINE_ACTIONS)}")
    if len(event.triggers) != 1:
        raise ScenarioError(
            f"{where}: give exactly one of after_seconds, after_health_reports, "
            "after_status_uploads"
        )
    if event.action == "add_extension":
        if event.extension is None:
            raise ScenarioError(f"{where}: add_extension needs an extension")
        _validate_extension(f"{where}.extension", event.extension)
    changes = ("remove_extension", "new_settings", "update_version", "set_state")
    if event.action in changes and not event.name:
        raise ScenarioError(f"{where}: {event.action} needs a name")
    if event.action == "update_version" and not _VERSION.fullmatch(event.version or ""):
        raise ScenarioError(f"{where}: update_version needs a version (letters, digits, '.')")
    if event.action == "set_state" and event.state not in EXTENSION_STATES:
        raise ScenarioError(f"{where}.state: one of {', '.join(EXTENSION_STATES)}")
    for name in ("public_settings", "protected_settings"):
        if getattr(event, name) is not None:
            _typed(f"{where}.{name}", getattr(event, name), dict)


def _validate_extension(where: str, extension: Extension) -> None:
    if not _NAME.fullmatch(extension.name):
        raise ScenarioError(f"{where}.name: letters, digits, '.', '_', '-'")
    if not _VERSION.fullmatch(extension.version):
        raise ScenarioError(f"{where}.version: letters, digits, '.', '_', '-'")
    if extension.state not in EXTENSION_STATES:
        raise ScenarioError(f"{where}.state: enabled, disabled or uninstall")
    _typed(f"{where}.seq_no", extension.seq_no, int)
    _typed(f"{where}.public_settings", extension.public_settings, dict)
    if extension.protected_settings is not None:
        _typed(f"{where}.protected_settings", extension.protected_settings, dict)
    if extension.dependency_level is not None:
        _typed(f"{where}.dependency_level", extension.dependency_level, int)
    if extension.package is not None and extension.files:
        raise ScenarioError(f"{where}: give package or files, not both")
    seen: set[str] = set()
    for j, version in enumerate(extension.versions):
        here = f"{where}.versions[{j}]"
        if not _VERSION.fullmatch(version.version):
            raise ScenarioError(f"{here}.version: letters, digits, '.', '_', '-'")
        if version.version in seen:
            raise ScenarioError(f"{here}.version: {version.version} is listed twice")
        seen.add(version.version)
        if version.package is not None and version.files:
            raise ScenarioError(f"{here}: give package or files, not both")
    names: set[str] = set()
    for j, config in enumerate(extension.configs):
        here = f"{where}.configs[{j}]"
        if not _NAME.fullmatch(config.name):
            raise ScenarioError(f"{here}.name: letters, digits, '.', '_', '-'")
        if config.name in names:
            raise ScenarioError(f"{here}.name: {config.name} is listed twice")
        names.add(config.name)
        if config.state not in EXTENSION_STATES:
            raise ScenarioError(f"{here}.state: enabled, disabled or uninstall")
        _typed(f"{here}.seq_no", config.seq_no, int)
        _typed(f"{here}.public_settings", config.public_settings, dict)
        if config.dependency_level is not None:
            _typed(f"{here}.dependency_level", config.dependency_level, int)


def _resolve_packages(scenario: Scenario, base: Path) -> None:
    """Make package paths absolute (relative ones are the scenario file's) and check them."""
    for extension in _all_extensions(scenario):
        owners: list[Extension | ExtensionVersion] = [extension, *extension.versions]
        for owner in owners:
            if owner.package is None:
                continue
            path = base / Path(owner.package).expanduser()
            if not path.is_file():
                raise ScenarioError(f"extension {extension.name}: no package file {path}")
            owner.package = str(path.resolve())


def parse(text: bytes, *, source: str = "scenario") -> Scenario:
    if len(text) > MAX_SCENARIO_BYTES:
        raise ScenarioError(f"{source}: larger than {MAX_SCENARIO_BYTES} bytes")
    data: Any
    if source.endswith(".toml"):
        try:
            import tomllib  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise ScenarioError(f"{source}: TOML needs Python 3.11; use JSON") from None
        try:
            data = tomllib.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ScenarioError(f"{source}: {e}") from None
    else:
        try:
            data = json.loads(text.decode("utf-8")) if text.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ScenarioError(f"{source}: {e}") from None
    scenario: Scenario = _build(Scenario, source, data)
    _validate(scenario)
    return scenario


def load(path: Optional[Path]) -> Scenario:
    """Read a scenario file; None gives the default VM."""
    if path is None:
        return Scenario()
    scenario = parse(path.read_bytes(), source=str(path))
    _resolve_packages(scenario, path.resolve().parent)
    return scenario


def home_path(scenario: Scenario, name: str) -> str:
    return f"/home/{scenario.username}/.ssh/{name}"


def materialize(scenario: Scenario) -> Scenario:
    """Fill in every generated value: VM id, SSH keys, certificates.

    Idempotent: a materialized scenario is returned unchanged, so the same
    file gives the same keys to ``serve`` and ``media``.
    """
    from azfabric import keys

    if scenario.vm_id is None:
        scenario.vm_id = str(uuid.uuid4())
    if scenario.container_id is None:
        scenario.container_id = str(uuid.uuid4())
    if not scenario.public_keys and not scenario.key_pairs:
        scenario.public_keys.append(PublicKey(path=home_path(scenario, "authorized_keys")))
    for public in scenario.public_keys:
        if public.value is None and public.fingerprint is None:
            # A key given inline, with its private half kept for logging in.
            private, public.value = keys.generate_ssh_key()
            public.private_key = private
        elif public.value is None and public.fingerprint == "generate":
            certificate = keys.generate_certificate(f"ssh-{len(scenario.certificates)}")
            certificate.with_key = False
            scenario.certificates.append(certificate)
            public.fingerprint = keys.thumbprint_of(certificate)
    for pair in scenario.key_pairs:
        if pair.fingerprint is None or pair.fingerprint == "generate":
            certificate = keys.generate_certificate(f"keypair-{len(scenario.certificates)}")
            scenario.certificates.append(certificate)
            pair.fingerprint = keys.thumbprint_of(certificate)
    add_protected_settings_certificates(scenario, _all_extensions(scenario))
    for certificate in scenario.certificates:
        if certificate.cert_pem is None:
            generated = keys.generate_certificate(certificate.name)
            certificate.cert_pem, certificate.key_pem = generated.cert_pem, generated.key_pem
    return scenario


def add_protected_settings_certificates(scenario: Scenario, extensions: list[Extension]) -> bool:
    """Add the certificates (with keys) that protected settings of ``extensions`` name.

    The platform encrypts protected settings to a tenant certificate it also
    delivers, with its key, in the goal state's Certificates: a scenario gets
    one without asking. Returns whether any was added.
    """
    from azfabric import keys

    named = {e.name: e.certificate for e in extensions}
    wanted = {
        extension.certificate or PROTECTED_SETTINGS_CERTIFICATE
        for extension in extensions
        if extension.has_protected_settings()
    }
    wanted |= {
        named.get(event.name or "") or PROTECTED_SETTINGS_CERTIFICATE
        for event in scenario.timeline
        if event.protected_settings is not None
    }
    missing = sorted(wanted - {c.name for c in scenario.certificates})
    scenario.certificates += [keys.generate_certificate(name) for name in missing]
    return bool(missing)


def _all_extensions(scenario: Scenario) -> list[Extension]:
    """The scenario's extensions, those the timeline adds included."""
    later = [e.extension for e in scenario.timeline if e.extension is not None]
    return [*scenario.extensions, *later]
