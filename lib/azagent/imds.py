"""The IMDS ``/metadata/instance`` document: one definition for agent and emulator.

:func:`parse_instance` reads the JSON the Instance Metadata Service returns
(only the fields the agent uses, with their types checked);
:func:`build_instance` produces a document of the platform's shape for the
fabric emulator; given an :class:`Instance`'s fields as keywords, its document
parses back to that same Instance. Both are pure. :func:`fetch` is the one
function here that does I/O: it imports the HTTP transport when called, so
that importing this module stays cheap.

IMDS spells "not set" as an empty string (``"userData": ""``,
``"computerName": ""``); those read as None. Booleans are strings
(``"disablePasswordAuthentication": "true"``). No password and no customData
are ever available here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from azagent import names
from azagent.errors import AzagentError, refusing
from azagent.ovf import key_value_problem, path_problem

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

    from azagent.context import Context

API_VERSION = "2021-08-01"
PATH = "/metadata/instance"
WHAT = "IMDS instance metadata"
# The document is a few kB; userData (at most 64 KiB before base64) is its
# largest member.
MAX_BYTES = 1024 * 1024
MAX_VM_ID = 128
_SURROGATE = "[\ud800-\udfff]"  # compiled by re (and cached) when first used


class ImdsError(AzagentError):
    """The instance metadata could not be used; the message never quotes userData."""


class PublicKey:
    """An SSH public key from ``compute.publicKeys``."""

    __slots__ = ("key_data", "path")

    def __init__(self, key_data: str, path: str) -> None:
        self.key_data: Final = key_data
        self.path: Final = path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return (self.key_data, self.path) == (other.key_data, other.path)

    def __hash__(self) -> int:
        return hash((self.key_data, self.path))

    def __repr__(self) -> str:
        return f"PublicKey(key_data={self.key_data!r}, path={self.path!r})"


class Instance:
    """The members of ``/metadata/instance`` the agent uses.

    ``user_data`` is base64 text, as IMDS serves it; :meth:`decoded_user_data`
    decodes it. It is left out of ``repr()``.
    """

    # The fields, in the order of the constructor's parameters.
    FIELDS = (
        "vm_id",
        "name",
        "location",
        "vm_size",
        "computer_name",
        "admin_username",
        "disable_password_authentication",
        "public_keys",
        "user_data",
    )
    __slots__ = FIELDS

    def __init__(
        self,
        vm_id: str,
        name: str,
        location: str,
        vm_size: str,
        *,
        computer_name: str | None = None,
        admin_username: str | None = None,
        disable_password_authentication: bool | None = None,
        public_keys: tuple[PublicKey, ...] = (),
        user_data: str | None = None,
    ) -> None:
        self.vm_id: Final = vm_id
        self.name: Final = name
        self.location: Final = location
        self.vm_size: Final = vm_size
        self.computer_name: Final = computer_name
        self.admin_username: Final = admin_username
        self.disable_password_authentication: Final = disable_password_authentication
        self.public_keys: Final = public_keys
        self.user_data: Final = user_data

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        user_data = "None" if self.user_data is None else "<redacted>"
        return (
            f"Instance(vm_id={self.vm_id!r}, name={self.name!r}, location={self.location!r},"
            f" vm_size={self.vm_size!r}, computer_name={self.computer_name!r},"
            f" admin_username={self.admin_username!r},"
            f" disable_password_authentication={self.disable_password_authentication!r},"
            f" public_keys={self.public_keys!r}, user_data={user_data})"
        )

    __str__ = __repr__

    def decoded_user_data(self) -> bytes | None:
        """userData's bytes, None when there is none; ImdsError when it is not base64."""
        import base64
        import binascii

        if self.user_data is None:
            return None
        try:
            return base64.b64decode("".join(self.user_data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ImdsError(f"{WHAT}: compute.userData: not valid base64") from None

    def host_name(self) -> str:
        """The hostname to provision: computerName, else the VM's name.

        ``compute.name`` is not checked when the document is parsed: a VM's
        name may hold '_' or '.', fine for everything but a hostname. It is
        checked here, when it is about to become one.
        """
        if self.computer_name is not None:
            return _name(names.host_name, self.computer_name, "compute.osProfile.computerName")
        return _name(names.host_name, self.name, "compute.name (computerName is empty)")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # A key name is structure, not a value: naming it is safe.
            raise ImdsError(f"{WHAT}: member {key[:64]!r} appears more than once")
        result[key] = value
    return result


def _refuse_constant(_name: str) -> Any:
    raise ImdsError(f"{WHAT}: NaN and Infinity are not JSON")


def _load(data: bytes) -> Any:
    if not isinstance(data, bytes):
        raise TypeError(f"{WHAT}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_BYTES:
        raise ImdsError(f"{WHAT}: {len(data)} bytes, over the limit of {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ImdsError(f"{WHAT}: not valid UTF-8 (at byte {e.start})") from None
    import json

    try:
        return json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as e:
        # e.msg is json's fixed description; the document itself is not quoted.
        raise ImdsError(
            f"{WHAT}: not valid JSON ({e.msg}, line {e.lineno}, column {e.colno})"
        ) from None
    except RecursionError:
        raise ImdsError(f"{WHAT}: nested too deeply") from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImdsError(f"{WHAT}: {where}: expected an object, got {_kind(value)}")
    return value


def _string(parent: dict[str, Any], key: str, where: str) -> str | None:
    """An optional string member; absent or "" (IMDS's "not set") reads as None."""
    if key not in parent:
        return None
    value = parent[key]
    if not isinstance(value, str):
        raise ImdsError(f"{WHAT}: {where}.{key}: expected a string, got {_kind(value)}")
    if "\x00" in value:
        raise ImdsError(f"{WHAT}: {where}.{key}: contains a NUL character")
    if re.search(_SURROGATE, value):
        # JSON's "\ud800" escape: not a character, and no file or command could take it.
        raise ImdsError(f"{WHAT}: {where}.{key}: contains a lone surrogate, not a character")
    return value or None


def _required(parent: dict[str, Any], key: str, where: str) -> str:
    """A string member that must be present and not empty."""
    if key not in parent:
        raise ImdsError(f"{WHAT}: {where}.{key}: missing")
    value = _string(parent, key, where)
    if value is None:
        raise ImdsError(f"{WHAT}: {where}.{key}: is empty")
    return value


def _name(check: Callable[[str, str], str], value: str, field: str) -> str:
    """``value`` through one of the :mod:`azagent.names` rules, refused as an ImdsError."""
    try:
        return check(value, f"{WHAT}: {field}")
    except names.InvalidName as e:
        raise ImdsError(e.reason) from None


def _checked(
    parent: dict[str, Any], key: str, where: str, check: Callable[[str, str], str]
) -> str | None:
    value = _string(parent, key, where)
    return None if value is None else _name(check, value, f"{where}.{key}")


def _vm_id(value: str) -> str:
    # Not checked as a UUID: WALinuxAgent's own sample (imds/unicode.json)
    # carries a non-ASCII one, and the marker compares it as text anyway.
    if len(value) > MAX_VM_ID or any(c.isspace() or not c.isprintable() for c in value):
        raise ImdsError(
            f"{WHAT}: compute.vmId: not an identifier (at most {MAX_VM_ID} printable"
            " characters without spaces)"
        )
    return value


@refusing(ImdsError, WHAT)
def parse_instance(data: bytes) -> Instance:
    """The :class:`Instance` in an IMDS ``/metadata/instance`` response body."""
    document = _object(_load(data), "the document")
    compute = _object(document.get("compute"), "compute")

    vm_id = _required(compute, "vmId", "compute")
    name = _required(compute, "name", "compute")
    location = _required(compute, "location", "compute")
    vm_size = _required(compute, "vmSize", "compute")

    computer_name = admin_username = None
    disable_password_authentication: bool | None = None
    if "osProfile" in compute:
        profile = _object(compute["osProfile"], "compute.osProfile")
        where = "compute.osProfile"
        # The same rules as ovf-env.xml's: IMDS is the fallback source of the same values.
        computer_name = _checked(profile, "computerName", where, names.host_name)
        admin_username = _checked(profile, "adminUsername", where, names.user_name)
        flag = _string(profile, "disablePasswordAuthentication", where)
        if flag is not None:
            if flag.lower() not in ("true", "false"):
                raise ImdsError(
                    f'{WHAT}: {where}.disablePasswordAuthentication: expected "true" or "false"'
                )
            disable_password_authentication = flag.lower() == "true"

    public_keys: list[PublicKey] = []
    if "publicKeys" in compute:
        keys = compute["publicKeys"]
        if not isinstance(keys, list):
            raise ImdsError(f"{WHAT}: compute.publicKeys: expected an array, got {_kind(keys)}")
        for i, entry in enumerate(keys):
            where = f"compute.publicKeys[{i}]"
            key = _object(entry, where)
            key_data = _required(key, "keyData", where)
            path = _required(key, "path", where)
            for member, problem in (
                ("keyData", key_value_problem(key_data)),
                ("path", path_problem(path)),
            ):
                if problem:
                    raise ImdsError(f"{WHAT}: {where}.{member}: {problem}")
            public_keys.append(PublicKey(key_data=key_data, path=path))

    return Instance(
        vm_id=_vm_id(vm_id),
        name=name,
        location=location,
        vm_size=vm_size,
        computer_name=computer_name,
        admin_username=admin_username,
        disable_password_authentication=disable_password_authentication,
        public_keys=tuple(public_keys),
        user_data=_string(compute, "userData", "compute"),
    )


def fetch(ctx: Context) -> Instance:
    """``GET /metadata/instance`` from ``Endpoint.IMDS``, parsed; ImdsError with the reason.

    ``Metadata: true``, never through a proxy; each exchange bounded by
    Endpoint.RequestTimeout, retried (IMDS answers 404 and 410 while the VM's
    metadata is not ready, and 429 or 5xx when busy) until
    Endpoint.RetryDeadline.
    """
    from azagent.wireclient import WireClient

    try:
        client = WireClient.from_context(ctx, "IMDS")
        reply = client.request(
            "GET",
            f"{client.base_url}{PATH}?api-version={API_VERSION}",
            accept=(200,),
            retry=(404, 410),
        )
        return parse_instance(reply.body)
    except AzagentError as e:
        raise ImdsError(f"IMDS: {e.reason}") from None


def build_instance(
    *,
    vm_id: str,
    name: str,
    location: str,
    vm_size: str,
    computer_name: str | None = None,
    admin_username: str | None = None,
    disable_password_authentication: bool | None = None,
    public_keys: Iterable[PublicKey | tuple[str, str]] = (),
    user_data: str | None = None,
    private_address: str = "10.0.0.4",
    public_address: str = "",
    subnet: str = "10.0.0.0",
    prefix: int = 24,
    mac: str = "000D3A000000",
) -> dict[str, Any]:
    """A ``/metadata/instance`` document, shaped as IMDS serves it.

    The keywords are :class:`Instance`'s fields (``public_keys`` may also be
    ``(key_data, path)`` pairs) plus the one network interface's addresses.
    The members the agent does not read carry plausible fixed values, so that
    clients written against the real service find everything they look for.
    Nothing is validated: the emulator may serve what the agent must refuse.
    """
    keys = [k if isinstance(k, PublicKey) else PublicKey(*k) for k in public_keys]
    disable = disable_password_authentication
    compute: dict[str, Any] = {
        "azEnvironment": "AzurePublicCloud",
        "location": location,
        "name": name,
        "offer": "debian-12",
        "osProfile": {
            "adminUsername": admin_username or "",
            "computerName": computer_name or "",
            "disablePasswordAuthentication": "" if disable is None else str(disable).lower(),
        },
        "osType": "Linux",
        "placementGroupId": "",
        "platformFaultDomain": "0",
        "platformUpdateDomain": "0",
        "provider": "Microsoft.Compute",
        "publicKeys": [{"keyData": k.key_data, "path": k.path} for k in keys],
        "publisher": "Debian",
        "resourceGroupName": "azagent-tests",
        "sku": "12",
        "subscriptionId": "00000000-0000-0000-0000-000000000000",
        "tags": "",
        "userData": user_data or "",
        "version": "0.20240101.0",
        "vmId": vm_id,
        "vmScaleSetName": "",
        "vmSize": vm_size,
        "zone": "",
    }
    network = {
        "interface": [
            {
                "ipv4": {
                    "ipAddress": [
                        {"privateIpAddress": private_address, "publicIpAddress": public_address}
                    ],
                    "subnet": [{"address": subnet, "prefix": str(prefix)}],
                },
                "ipv6": {"ipAddress": []},
                "macAddress": mac,
            }
        ]
    }
    return {"compute": compute, "network": network}
