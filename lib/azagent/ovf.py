"""ovf-env.xml, the provisioning document on the platform's DVD.

One definition for both sides: :func:`parse_ovf` is what the provisioning
stages read, :func:`build_ovf` what the fabric emulator writes, and
``parse_ovf(build_ovf(p)) == p``. :func:`redacted_ovf` is the copy the agent
keeps on disk, without the password and customData.

The document is matched on namespace and local name, never on prefixes,
which differ between documents. Values are checked before anything acts on
them (HostName and UserName by the rules of :mod:`azagent.names`, a key path
stays under an absolute or ``$HOME`` prefix, ...); an error names the element
and the problem and never quotes a value, so that a password or customData
cannot reach a log line or a failure report through an error message. Only a
refused host or user name is quoted, escaped and truncated (``names.shown``).

Flags follow WALinuxAgent, so that an image behaves as it did under waagent:
``DisableSshPasswordAuthentication`` disables only when "true", and
``ProvisionGuestAgent`` turns the guest agent off only when "false" (absent,
empty or anything else leaves it on).
"""

from __future__ import annotations

import re

from azagent import names, xmlsafe
from azagent.errors import AzagentError, refusing
from azagent.redact import PLACEHOLDER, Secret, register

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

WHAT = "ovf-env.xml"
MAX_BYTES = xmlsafe.MAX_BYTES
VERSION = "1.0"
CONFIGURATION_SET_TYPE = "LinuxProvisioningConfiguration"
# Element names whose content the kept copy (redacted_ovf) must not hold.
SECRET_ELEMENTS = frozenset({"UserPassword", "CustomData"})

MAX_PATH = 4096
MAX_KEY_VALUE = 16384

# Patterns, compiled by re (and cached) when first used: compiling _NOT_XML
# alone takes milliseconds, and most stages that import this module check
# no document and build none.
# SHA-1 thumbprints today (40 digits); room for SHA-256/512 without a release.
_FINGERPRINT = r"[0-9A-Fa-f]{40,128}"
_VERSION = r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,3}"
_WORD = r"[A-Za-z0-9_.-]{1,64}"
# Characters XML 1.0 can carry (the Char production) minus CR, which every
# parser turns into LF: a value holding anything else cannot round-trip.
_NOT_XML = "[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"


class OvfError(AzagentError):
    """ovf-env.xml is well-formed XML but its content cannot be used."""


class PublicKey:
    """An SSH public key to authorize: its text, or a certificate thumbprint to resolve."""

    __slots__ = ("fingerprint", "path", "value")

    def __init__(self, path: str, fingerprint: str | None = None, value: str | None = None) -> None:
        self.path: Final = path
        self.fingerprint: Final = fingerprint
        self.value: Final = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return (self.path, self.fingerprint, self.value) == (
            other.path,
            other.fingerprint,
            other.value,
        )

    def __hash__(self) -> int:
        return hash((self.path, self.fingerprint, self.value))

    def __repr__(self) -> str:
        return (
            f"PublicKey(path={self.path!r}, fingerprint={self.fingerprint!r}, value={self.value!r})"
        )


class KeyPair:
    """A private key to install, from the WireServer certificate with this thumbprint."""

    __slots__ = ("fingerprint", "path")

    def __init__(self, fingerprint: str, path: str) -> None:
        self.fingerprint: Final = fingerprint
        self.path: Final = path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyPair):
            return NotImplemented
        return (self.fingerprint, self.path) == (other.fingerprint, other.path)

    def __hash__(self) -> int:
        return hash((self.fingerprint, self.path))

    def __repr__(self) -> str:
        return f"KeyPair(fingerprint={self.fingerprint!r}, path={self.path!r})"


class Provisioning:
    """What ovf-env.xml asks of the VM.

    ``password`` is a :class:`~azagent.redact.Secret`; ``custom_data_base64``
    is customData as the document carries it (base64 text), and
    :attr:`custom_data` its decoded bytes. Neither shows in ``repr()``.
    Fingerprints keep the document's case: compare them with ``.upper()``.
    """

    # The fields, in the order repr() shows them.
    FIELDS = (
        "hostname",
        "username",
        "password",
        "custom_data_base64",
        "disable_ssh_password_auth",
        "public_keys",
        "key_pairs",
        "provision_guest_agent",
        "provision_guest_proxy_agent",
        "preprovisioned_vm",
        "preprovisioned_vm_type",
        "version",
    )
    __slots__ = FIELDS

    def __init__(
        self,
        hostname: str,
        username: str,
        *,
        password: Secret | None = None,
        custom_data_base64: str | None = None,
        disable_ssh_password_auth: bool = False,
        public_keys: tuple[PublicKey, ...] = (),
        key_pairs: tuple[KeyPair, ...] = (),
        provision_guest_agent: bool = True,
        provision_guest_proxy_agent: bool = False,
        preprovisioned_vm: bool = False,
        preprovisioned_vm_type: str | None = None,
        version: str = VERSION,
    ) -> None:
        self.hostname: Final = hostname
        self.username: Final = username
        self.password: Final = password
        self.custom_data_base64: Final = custom_data_base64
        self.disable_ssh_password_auth: Final = disable_ssh_password_auth
        self.public_keys: Final = public_keys
        self.key_pairs: Final = key_pairs
        self.provision_guest_agent: Final = provision_guest_agent
        self.provision_guest_proxy_agent: Final = provision_guest_proxy_agent
        self.preprovisioned_vm: Final = preprovisioned_vm
        self.preprovisioned_vm_type: Final = preprovisioned_vm_type
        self.version: Final = version

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Provisioning):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        parts = []
        for name in self.FIELDS:
            value = getattr(self, name)
            if name in ("password", "custom_data_base64") and value is not None:
                parts.append(f"{name}={PLACEHOLDER}")
            else:
                parts.append(f"{name}={value!r}")
        return f"Provisioning({', '.join(parts)})"

    __str__ = __repr__

    @property
    def custom_data(self) -> bytes | None:
        """customData decoded, None when the document has none.

        Raises :class:`OvfError` when it is not base64: only the stages that
        use customData should fail on it, so it is decoded on request.
        """
        if self.custom_data_base64 is None:
            return None
        return decode_custom_data(self.custom_data_base64)


def decode_custom_data(text: str) -> bytes:
    """customData's bytes; line breaks and spaces in the base64 text are ignored."""
    import base64
    import binascii

    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise OvfError(f"{WHAT}: CustomData: not valid base64") from None


def encode_custom_data(data: bytes) -> str:
    """The base64 text of ``data``, for ``Provisioning(custom_data_base64=...)``."""
    import base64

    return base64.b64encode(data).decode("ascii")


# -- value checks: each returns the problem, or None when the value is fine ----


def _control(value: str) -> bool:
    return any(not c.isprintable() for c in value)


def fingerprint_problem(value: str) -> str | None:
    if not re.fullmatch(_FINGERPRINT, value):
        return "is not a certificate thumbprint (40 to 128 hexadecimal digits)"
    return None


def path_problem(value: str) -> str | None:
    if not value:
        return "is empty"
    if _control(value) or any(c.isspace() for c in value):
        return "contains a space or control character"
    if len(value) > MAX_PATH:
        return f"is {len(value)} characters long, at most {MAX_PATH} allowed"
    rest = value[len("$HOME") :] if value.startswith("$HOME/") else value
    if not rest.startswith("/") or rest.rstrip("/") == "":
        return "is neither an absolute path nor one under $HOME/"
    if ".." in rest.split("/"):
        return "contains a '..' component"
    return None


def key_value_problem(value: str) -> str | None:
    if _control(value):
        return "is not a single line of printable text"
    if value != value.strip():
        return "has leading or trailing spaces"
    if len(value) > MAX_KEY_VALUE:
        return f"is {len(value)} characters long, at most {MAX_KEY_VALUE} allowed"
    return None


def _check(where: str, problem: str | None) -> None:
    if problem:
        raise OvfError(f"{where}: {problem}")


def _name(check: Callable[[str, str], str], value: str, where: str) -> str:
    """``value`` through one of the :mod:`azagent.names` rules, refused as an OvfError."""
    try:
        return check(value, where)
    except names.InvalidName as e:
        raise OvfError(e.reason) from None


# -- parsing -------------------------------------------------------------------


def _text(element: xmlsafe.Element | None) -> str | None:
    """Stripped text of an optional element; None when absent, empty or xsi:nil."""
    if element is None or element.attribute(XSI_NS, "nil") == "true":
        return None
    return element.text(strip=True) or None


def _flag(element: xmlsafe.Element | None, *, when: str) -> bool:
    """True when the element's text is ``when``, case-insensitively."""
    text = _text(element)
    return text is not None and text.lower() == when


def _where(element: xmlsafe.Element) -> str:
    return f"{WHAT}: {element.path}"


def _required_text(parent: xmlsafe.Element, local: str) -> tuple[xmlsafe.Element, str]:
    element = parent.require(WA_NS, local)
    text = element.text(strip=True)
    if not text:
        raise OvfError(f"{_where(element)}: is empty")
    return element, text


def _public_key(element: xmlsafe.Element) -> PublicKey:
    path_element, path = _required_text(element, "Path")
    _check(_where(path_element), path_problem(path))
    fingerprint_element = element.child(WA_NS, "Fingerprint")
    fingerprint = _text(fingerprint_element)
    if fingerprint is not None and fingerprint_element is not None:
        _check(_where(fingerprint_element), fingerprint_problem(fingerprint))
    value_element = element.child(WA_NS, "Value")
    value = _text(value_element)
    if value is not None and value_element is not None:
        _check(_where(value_element), key_value_problem(value))
    if fingerprint is None and value is None:
        raise OvfError(f"{_where(element)}: has neither a Fingerprint nor a Value")
    return PublicKey(path=path, fingerprint=fingerprint, value=value)


def _key_pair(element: xmlsafe.Element) -> KeyPair:
    fingerprint_element, fingerprint = _required_text(element, "Fingerprint")
    _check(_where(fingerprint_element), fingerprint_problem(fingerprint))
    path_element, path = _required_text(element, "Path")
    _check(_where(path_element), path_problem(path))
    return KeyPair(fingerprint=fingerprint, path=path)


@refusing(OvfError, WHAT)
def parse_ovf(data: bytes) -> Provisioning:
    """The provisioning request in ovf-env.xml.

    Raises :class:`~azagent.xmlsafe.XmlError` when the bytes are not safe,
    well-formed XML of the expected structure, and :class:`OvfError` when a
    value is missing or invalid. Both are :class:`AzagentError`.
    """
    tree = xmlsafe.parse(data, what=WHAT, max_bytes=MAX_BYTES)
    environment = xmlsafe.Element.root(tree, what=WHAT)
    if not environment.is_(OVF_NS, "Environment"):
        raise OvfError(f"{WHAT}: the root element is not an OVF Environment")

    section = environment.require(WA_NS, "ProvisioningSection")
    version_element, version = _required_text(section, "Version")
    if not re.fullmatch(_VERSION, version):
        raise OvfError(f"{_where(version_element)}: is not a version number")
    config = section.require(WA_NS, "LinuxProvisioningConfigurationSet")
    set_type = config.child(WA_NS, "ConfigurationSetType")
    if set_type is not None and set_type.text(strip=True) != CONFIGURATION_SET_TYPE:
        raise OvfError(f"{_where(set_type)}: is not {CONFIGURATION_SET_TYPE}")

    # The password is taken verbatim (spaces may be part of it); its value
    # is registered for redaction as soon as it is wrapped, before a refused
    # name is quoted in an error.
    password_element = config.child(WA_NS, "UserPassword")
    password_text = password_element.text() if password_element is not None else ""
    password = Secret(password_text) if password_text else None

    hostname_element, hostname = _required_text(config, "HostName")
    _name(names.host_name, hostname, _where(hostname_element))
    username_element, username = _required_text(config, "UserName")
    _name(names.user_name, username, _where(username_element))

    custom_element = config.child(WA_NS, "CustomData")
    custom_text = custom_element.text() if custom_element is not None else ""
    custom_data = custom_text if custom_text.strip() else None
    if custom_data is not None:
        register(custom_data)

    public_keys: list[PublicKey] = []
    key_pairs: list[KeyPair] = []
    ssh = config.child(WA_NS, "SSH")
    if ssh is not None:
        for keys in ssh.children(WA_NS, "PublicKeys"):
            public_keys.extend(_public_key(k) for k in keys.children(WA_NS, "PublicKey"))
        for pairs in ssh.children(WA_NS, "KeyPairs"):
            key_pairs.extend(_key_pair(k) for k in pairs.children(WA_NS, "KeyPair"))

    settings: xmlsafe.Element | None = None
    platform = environment.child(WA_NS, "PlatformSettingsSection")
    if platform is not None:
        settings = platform.child(WA_NS, "PlatformSettings")
    provision_guest_agent = True
    provision_guest_proxy_agent = False
    preprovisioned_vm = False
    preprovisioned_vm_type: str | None = None
    if settings is not None:
        provision_guest_agent = not _flag(
            settings.child(WA_NS, "ProvisionGuestAgent"), when="false"
        )
        provision_guest_proxy_agent = _flag(
            settings.child(WA_NS, "ProvisionGuestProxyAgent"), when="true"
        )
        preprovisioned_vm = _flag(settings.child(WA_NS, "PreprovisionedVm"), when="true")
        # Two spellings exist in the wild: PROTOCOL.md's and cloud-init's
        # "VMType", azure-init's "VmType".
        type_element = settings.child(WA_NS, "PreprovisionedVMType") or settings.child(
            WA_NS, "PreprovisionedVmType"
        )
        preprovisioned_vm_type = _text(type_element)
        if (
            type_element is not None
            and preprovisioned_vm_type is not None
            and not re.fullmatch(_WORD, preprovisioned_vm_type)
        ):
            raise OvfError(f"{_where(type_element)}: is not a single word")

    return Provisioning(
        hostname=hostname,
        username=username,
        password=password,
        custom_data_base64=custom_data,
        disable_ssh_password_auth=_flag(
            config.child(WA_NS, "DisableSshPasswordAuthentication"), when="true"
        ),
        public_keys=tuple(public_keys),
        key_pairs=tuple(key_pairs),
        provision_guest_agent=provision_guest_agent,
        provision_guest_proxy_agent=provision_guest_proxy_agent,
        preprovisioned_vm=preprovisioned_vm,
        preprovisioned_vm_type=preprovisioned_vm_type,
        version=version,
    )


@refusing(OvfError, WHAT)
def redacted_ovf(data: bytes) -> bytes:
    """``data`` with the content of UserPassword and CustomData removed, all else kept.

    The result still parses: the password and customData then read as absent.
    """
    return xmlsafe.clear_elements(data, what=WHAT, local_names=SECRET_ELEMENTS, max_bytes=MAX_BYTES)


# -- building ------------------------------------------------------------------


def _validate(p: Provisioning) -> None:
    where = "Provisioning"
    _name(names.host_name, p.hostname, f"{where}.hostname")
    _name(names.user_name, p.username, f"{where}.username")
    _check(
        f"{where}.version", None if re.fullmatch(_VERSION, p.version) else "is not a version number"
    )
    if p.custom_data_base64 is not None and not p.custom_data_base64.strip():
        raise OvfError(f"{where}.custom_data_base64: is blank; use None for no customData")
    for i, key in enumerate(p.public_keys):
        _check(f"{where}.public_keys[{i}].path", path_problem(key.path))
        if key.fingerprint is not None:
            _check(f"{where}.public_keys[{i}].fingerprint", fingerprint_problem(key.fingerprint))
        if key.value is not None:
            _check(
                f"{where}.public_keys[{i}].value",
                key_value_problem(key.value) or ("is empty; use None" if not key.value else None),
            )
        if key.fingerprint is None and key.value is None:
            raise OvfError(f"{where}.public_keys[{i}]: has neither a fingerprint nor a value")
    for i, pair in enumerate(p.key_pairs):
        _check(f"{where}.key_pairs[{i}].fingerprint", fingerprint_problem(pair.fingerprint))
        _check(f"{where}.key_pairs[{i}].path", path_problem(pair.path))
    if p.preprovisioned_vm_type is not None and not re.fullmatch(_WORD, p.preprovisioned_vm_type):
        raise OvfError(f"{where}.preprovisioned_vm_type: is not a single word")


def _xml_text(where: str, value: str) -> str:
    if re.search(_NOT_XML, value):
        raise OvfError(f"{where}: holds a character XML cannot carry (control character or CR)")
    return value


def build_ovf(p: Provisioning, *, validate: bool = True) -> bytes:
    """ovf-env.xml for ``p``, shaped like the platform's (prefixes, namespaces, order).

    ``validate=False`` lets the emulator build documents the agent must
    refuse (a 300-character hostname, a bad thumbprint); values XML itself
    cannot carry are refused either way.
    """
    if validate:
        _validate(p)
    import xmltodict  # type: ignore[import-untyped,unused-ignore]

    def text(where: str, value: str) -> str:
        return _xml_text(f"Provisioning.{where}", value)

    config: dict[str, Any] = {
        "@xmlns": WA_NS,
        "@xmlns:i": XSI_NS,
        "ConfigurationSetType": CONFIGURATION_SET_TYPE,
        "HostName": text("hostname", p.hostname),
        "UserName": text("username", p.username),
    }
    if p.password is not None:
        config["UserPassword"] = text("password", p.password.reveal())
    config["DisableSshPasswordAuthentication"] = _bool(p.disable_ssh_password_auth)
    public_keys = []
    for i, key in enumerate(p.public_keys):
        entry: dict[str, str] = {}
        if key.fingerprint is not None:
            entry["Fingerprint"] = text(f"public_keys[{i}].fingerprint", key.fingerprint)
        entry["Path"] = text(f"public_keys[{i}].path", key.path)
        if key.value is not None:
            entry["Value"] = text(f"public_keys[{i}].value", key.value)
        public_keys.append(entry)
    key_pairs = [
        {
            "Fingerprint": text(f"key_pairs[{i}].fingerprint", pair.fingerprint),
            "Path": text(f"key_pairs[{i}].path", pair.path),
        }
        for i, pair in enumerate(p.key_pairs)
    ]
    config["SSH"] = {
        "PublicKeys": {"PublicKey": public_keys} if public_keys else None,
        "KeyPairs": {"KeyPair": key_pairs} if key_pairs else None,
    }
    if p.custom_data_base64 is not None:
        config["CustomData"] = text("custom_data_base64", p.custom_data_base64)

    settings: dict[str, Any] = {
        "wa:KmsServerHostname": "kms.core.windows.net",
        "wa:ProvisionGuestAgent": _bool(p.provision_guest_agent),
        "wa:GuestAgentPackageName": {"@xsi:nil": "true"},
        "wa:RetainWindowsPEPassInUnattend": "true",
        "wa:RetainOfflineServicingPassInUnattend": "true",
        "wa:PreprovisionedVm": _bool(p.preprovisioned_vm),
    }
    if p.preprovisioned_vm_type is not None:
        settings["wa:PreprovisionedVMType"] = text(
            "preprovisioned_vm_type", p.preprovisioned_vm_type
        )
    if p.provision_guest_proxy_agent:
        settings["wa:ProvisionGuestProxyAgent"] = "true"

    document = {
        "Environment": {
            "@xmlns": OVF_NS,
            "@xmlns:oe": OVF_NS,
            "@xmlns:wa": WA_NS,
            "@xmlns:xsi": XSI_NS,
            "wa:ProvisioningSection": {
                "wa:Version": text("version", p.version),
                "LinuxProvisioningConfigurationSet": config,
            },
            "wa:PlatformSettingsSection": {
                "wa:Version": VERSION,
                "wa:PlatformSettings": settings,
            },
        }
    }
    xml: str = xmltodict.unparse(document, encoding="utf-8", pretty=True, indent="  ")
    return xml.encode("utf-8") + b"\n"


def _bool(value: bool) -> str:
    return "true" if value else "false"
