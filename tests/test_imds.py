"""IMDS /metadata/instance: WALinuxAgent's samples, the emulator's documents, bad input."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import FIXTURES

from azagent import imds
from azagent.errors import AzagentError
from azagent.imds import ImdsError, Instance, PublicKey

SAMPLES = FIXTURES / "walinuxagent/imds"
USER_DATA = base64.b64encode(b"#cloud-config\nsecret: user-data-value\n").decode()


def sample(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((SAMPLES / name).read_bytes())
    return document


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


def test_valid_sample() -> None:
    instance = imds.parse_instance((SAMPLES / "valid.json").read_bytes())
    assert instance == Instance(
        vm_id="e7fdbfc4-2deb-4a4e-8615-ea6aaf50162e",
        name="health",
        location="westus",
        vm_size="Standard_D2_V2",
    )
    # This older api-version sample has no osProfile, keys or userData.
    assert instance.computer_name is None
    assert instance.admin_username is None
    assert instance.disable_password_authentication is None
    assert instance.public_keys == ()
    assert instance.decoded_user_data() is None


def test_unicode_sample() -> None:
    instance = imds.parse_instance((SAMPLES / "unicode.json").read_bytes())
    assert instance.name == "h\u00e9alth"
    assert instance.location == "w\u00e9stus"
    # Not a UUID: vmId is compared as text, so the sample must still parse.
    assert instance.vm_id == "\u00e97fdbfc4-2d\u00e9b-4a4\u00e9-8615-\u00e9a6aaf50162\u00e9"


def full() -> Instance:
    return Instance(
        vm_id="0b9f1e4c-7a51-4d0b-9b5e-2f3c8f1d6a77",
        name="vm-01",
        location="westeurope",
        vm_size="Standard_B2s",
        computer_name="vm-01.internal",
        admin_username="alice",
        disable_password_authentication=True,
        public_keys=(
            PublicKey(
                key_data="ssh-ed25519 AAAAC3 alice@laptop", path="/home/alice/.ssh/authorized_keys"
            ),
            PublicKey(
                key_data="ssh-rsa AAAAB3 alice@desk", path="/home/alice/.ssh/authorized_keys"
            ),
        ),
        user_data=USER_DATA,
    )


def fields(instance: Instance) -> dict[str, Any]:
    return {name: getattr(instance, name) for name in Instance.FIELDS}


def replaced(instance: Instance, **changes: Any) -> Instance:
    """``instance`` with ``changes`` to some of its fields."""
    return Instance(**{**fields(instance), **changes})


@pytest.mark.parametrize(
    "instance",
    [
        full(),
        replaced(full(), disable_password_authentication=False),
        Instance(vm_id="v", name="n", location="l", vm_size="s"),
    ],
)
def test_build_parse_round_trip(instance: Instance) -> None:
    document = imds.build_instance(**fields(instance))
    assert imds.parse_instance(encode(document)) == instance


def test_build_accepts_key_pairs_as_tuples() -> None:
    document = imds.build_instance(
        vm_id="v", name="n", location="l", vm_size="s", public_keys=[("ssh-ed25519 AAAA", "/k")]
    )
    assert document["compute"]["publicKeys"] == [{"keyData": "ssh-ed25519 AAAA", "path": "/k"}]


def test_built_document_has_the_samples_shape() -> None:
    built = imds.build_instance(**fields(full()))
    reference = sample("valid.json")
    assert set(built) == {"compute", "network"}

    def same_shape(ours: Any, theirs: Any, where: str) -> None:
        assert type(ours) is type(theirs), where
        if isinstance(theirs, dict):
            assert set(theirs) <= set(ours), (where, set(theirs) - set(ours))
            for key in theirs:
                same_shape(ours[key], theirs[key], f"{where}.{key}")
        elif isinstance(theirs, list) and theirs:
            same_shape(ours[0], theirs[0], f"{where}[0]")

    same_shape(built, reference, "")
    # And the newer members the agent reads, with IMDS's types (strings).
    profile = built["compute"]["osProfile"]
    assert profile == {
        "adminUsername": "alice",
        "computerName": "vm-01.internal",
        "disablePasswordAuthentication": "true",
    }
    assert built["compute"]["userData"] == USER_DATA


def test_user_data_decodes_on_request() -> None:
    instance = imds.parse_instance(encode(imds.build_instance(**fields(full()))))
    assert instance.decoded_user_data() == b"#cloud-config\nsecret: user-data-value\n"
    broken = replaced(instance, user_data="not base64!")
    with pytest.raises(ImdsError, match=r"compute\.userData: not valid base64"):
        broken.decoded_user_data()


def test_repr_hides_user_data() -> None:
    instance = full()
    assert USER_DATA not in repr(instance)
    assert USER_DATA not in str(instance)
    assert "user_data=<redacted>" in repr(instance)
    assert "alice" in repr(instance)


def document(**compute: Any) -> dict[str, Any]:
    """The full document, with members of compute replaced (None: removed)."""
    built = imds.build_instance(**fields(full()))
    for key, value in compute.items():
        if value is None:
            del built["compute"][key]
        else:
            built["compute"][key] = value
    return built


def profile(**members: Any) -> dict[str, Any]:
    base = document()["compute"]["osProfile"]
    return {**base, **members}


BAD: list[Any] = [
    pytest.param(encode([1, 2]), "the document: expected an object, got an array", id="top-array"),
    pytest.param(encode({"network": {}}), "compute: expected an object, got null", id="no-compute"),
    pytest.param(
        encode({"compute": []}), "compute: expected an object, got an array", id="compute-list"
    ),
    pytest.param(encode(document(vmId=None)), "compute.vmId: missing", id="no-vmid"),
    pytest.param(encode(document(vmId="")), "compute.vmId: is empty", id="empty-vmid"),
    pytest.param(
        encode(document(vmId=12)), "compute.vmId: expected a string, got a number", id="vmid-number"
    ),
    pytest.param(encode(document(vmId="a b")), "compute.vmId: not an identifier", id="vmid-space"),
    pytest.param(
        encode(document(vmId="v" * 129)), "compute.vmId: not an identifier", id="vmid-long"
    ),
    pytest.param(
        encode(document(name=["x"])),
        "compute.name: expected a string, got an array",
        id="name-list",
    ),
    pytest.param(encode(document(vmSize=None)), "compute.vmSize: missing", id="no-vmsize"),
    pytest.param(
        encode(document(location=True)),
        "compute.location: expected a string, got a boolean",
        id="loc",
    ),
    pytest.param(
        encode(document(osProfile="x")), "compute.osProfile: expected an object", id="profile-str"
    ),
    pytest.param(
        encode(document(osProfile=profile(disablePasswordAuthentication=True))),
        "disablePasswordAuthentication: expected a string, got a boolean",
        id="flag-json-bool",
    ),
    pytest.param(
        encode(document(osProfile=profile(disablePasswordAuthentication="yes"))),
        'disablePasswordAuthentication: expected "true" or "false"',
        id="flag-yes",
    ),
    pytest.param(
        encode(document(osProfile=profile(adminUsername="ali\nce"))),
        "osProfile.adminUsername: 'ali\\nce' is not a valid user name: it contains '\\n'",
        id="username-newline",
    ),
    pytest.param(
        encode(document(osProfile=profile(adminUsername="Alice"))),
        "compute.osProfile.adminUsername: 'Alice' is not a valid user name: it contains 'A'"
        " (upper case is not accepted): only a-z, 0-9, '_' and '-' are accepted",
        id="username-upper",
    ),
    pytest.param(
        encode(document(osProfile=profile(adminUsername="a;b"))),
        "compute.osProfile.adminUsername: 'a;b' is not a valid user name: it contains ';'",
        id="username-semicolon",
    ),
    pytest.param(
        encode(document(osProfile=profile(computerName="web_1"))),
        "compute.osProfile.computerName: 'web_1' is not a valid hostname: it contains '_'",
        id="hostname-underscore",
    ),
    pytest.param(
        encode(document(osProfile=profile(adminUsername="ali\x00ce"))),
        "osProfile.adminUsername: contains a NUL",
        id="username-nul",
    ),
    pytest.param(
        encode(document(osProfile=profile(computerName="h" * 300))),
        "osProfile.computerName: " + repr("h" * 40) + "... (300 characters) is not a valid"
        " hostname: it is 300 characters long, at most 253 allowed",
        id="hostname-300",
    ),
    pytest.param(
        encode(document(publicKeys={})),
        "compute.publicKeys: expected an array, got an object",
        id="keys",
    ),
    pytest.param(
        encode(document(publicKeys=["k"])),
        "publicKeys[0]: expected an object, got a string",
        id="key",
    ),
    pytest.param(
        encode(document(publicKeys=[{"path": "/k"}])),
        "publicKeys[0].keyData: missing",
        id="no-keydata",
    ),
    pytest.param(
        encode(document(publicKeys=[{"keyData": "ssh-rsa A", "path": "rel/k"}])),
        "publicKeys[0].path: is neither an absolute path",
        id="relative-path",
    ),
    pytest.param(
        encode(document(publicKeys=[{"keyData": "ssh-rsa A\ncommand=x ssh-rsa B", "path": "/k"}])),
        "publicKeys[0].keyData: is not a single line",
        id="two-line-key",
    ),
    pytest.param(
        encode(document(userData=5)),
        "compute.userData: expected a string, got a number",
        id="userdata",
    ),
    pytest.param(
        b'{"compute": {"vmId": "a", "vmId": "b"}}', "member 'vmId' appears more than once", id="dup"
    ),
    pytest.param(b'{"compute": NaN}', "NaN and Infinity are not JSON", id="nan"),
    pytest.param(encode(document())[:-5], "not valid JSON", id="truncated"),
    pytest.param(b"", "not valid JSON", id="empty"),
    pytest.param(b'{"compute": "\xff"}', "not valid UTF-8 (at byte 13)", id="latin-1"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deep"),
    pytest.param(b" " * (imds.MAX_BYTES + 1), "over the limit", id="oversized"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_bad_documents_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ImdsError) as caught:
        imds.parse_instance(data)
    assert message in str(caught.value)
    assert str(caught.value).startswith("IMDS instance metadata: ")
    assert USER_DATA not in str(caught.value)
    assert isinstance(caught.value, AzagentError)


def test_the_hostname_is_computer_name_else_the_vms_name() -> None:
    assert full().host_name() == "vm-01.internal"
    unnamed = replaced(full(), computer_name=None)
    assert unnamed.host_name() == "vm-01"
    # A VM's name may hold '_': fine for the document, not for a hostname.
    document = imds.build_instance(**fields(replaced(unnamed, name="web_1")))
    instance = imds.parse_instance(encode(document))
    assert instance.name == "web_1"
    with pytest.raises(ImdsError) as caught:
        instance.host_name()
    assert str(caught.value) == (
        "IMDS instance metadata: compute.name (computerName is empty): 'web_1' is not a valid"
        " hostname: it contains '_': only ASCII letters, digits, '-' and '.' between labels"
        " are accepted"
    )


def test_empty_strings_mean_not_set() -> None:
    data = encode(
        document(
            userData="",
            osProfile={
                "adminUsername": "",
                "computerName": "",
                "disablePasswordAuthentication": "",
            },
        )
    )
    instance = imds.parse_instance(data)
    assert instance.user_data is None
    assert instance.admin_username is None
    assert instance.computer_name is None
    assert instance.disable_password_authentication is None


def test_flag_is_case_insensitive() -> None:
    data = encode(document(osProfile=profile(disablePasswordAuthentication="False")))
    assert imds.parse_instance(data).disable_password_authentication is False


def test_protocol_modules_stay_light() -> None:
    """A stage importing them pays for neither HTTP, crypto nor XML until it parses XML."""
    code = "import sys, azagent.imds, azagent.kvp, azagent.ovf; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout
    for heavy in ("requests", "cryptography", "xmltodict", "urllib3"):
        assert f"'{heavy}'" not in loaded, heavy
