"""User and host names: the one rule each, and every place a name enters or is handed on.

The table of names goes through the rule itself and then through each
entry point (ovf-env.xml, IMDS, provisioning.json, create-user's check,
ssh-keys' account lookup): each must accept exactly what the rule accepts,
so that no name passes one place and fails a later one.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from conftest import REPO

from azagent import config, imds, names, ovf, provisioning, sshkeys, users, xmlsafe
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.provisioning import ProvisioningData

GOOD_USERS = [
    "alice",
    "a",
    "_svc",
    "alice_adm",
    "web-admin",
    "a1",
    "azureuser",
    "a" * 32,
    "_a-" + "b" * 29,
]
BAD_USERS: list[tuple[Any, str]] = [
    ("Alice", "it contains 'A' (upper case is not accepted): only a-z, 0-9, '_' and '-'"),
    ("ALICE", "it contains 'A', 'C', 'E', 'I', 'L' (upper case is not accepted)"),
    ("../etc", "it contains '.', '/': only a-z, 0-9, '_' and '-' are accepted"),
    ("root\n", "it contains '\\n'"),
    ("a;b", "it contains ';'"),
    ("a" * 300, "it is 300 characters long, at most 32 allowed"),
    ("a" * 33, "it is 33 characters long, at most 32 allowed"),
    ("", "it is empty"),
    ("-rf", "it starts with '-': the first character must be a-z or '_'"),
    ("1alice", "it starts with '1'"),
    ("123", "it starts with '1'"),
    ("al ice", "it contains ' '"),
    ("alice$", "it contains '$'"),
    ("a$b", "it contains '$'"),
    ("al.ice", "it contains '.'"),
    ("a:b", "it contains ':'"),
    ("a,b", "it contains ','"),
    ("a/b", "it contains '/'"),
    ("al\u00efce", "it contains '\\xef'"),
    ("a\x00b", "it contains '\\x00'"),
    ("a\x1b[31mb", "it contains '\\x1b', '['"),
    ("a\u202eb", "it contains '\\u202e'"),
    (" alice", "it contains ' '"),
    ("!@#%^&*()", "it contains '!', '#', '%', '&', '(', ...:"),
    (None, "it is not a string"),
    (42, "it is not a string"),
]
GOOD_HOSTS = [
    "web-1",
    "WebServer01",
    "x",
    "1web",
    "a" * 63,
    "web-1.contoso.com",
    "localhost",
    "xn--bcher-kva",
    "Alice",
    "123a",
    ".".join(["a" * 63] * 3) + "." + "b" * 61,  # 253 characters
]
BAD_HOSTS: list[tuple[Any, str]] = [
    ("", "it is empty"),
    ("web_1", "it contains '_': only ASCII letters, digits, '-' and '.' between labels"),
    ("../etc", "it contains '/'"),
    ("root\n", "it contains '\\n'"),
    ("a;b", "it contains ';'"),
    ("a" * 300, "it is 300 characters long, at most 253 allowed"),
    ("x" * 254, "it is 254 characters long, at most 253 allowed"),
    ("a" * 64, "a label is 64 characters long, at most 63 allowed"),
    ("web.", "it ends with a dot: give the name without it"),
    ("web.contoso.com.", "it ends with a dot"),
    (".web", "it has an empty label"),
    ("web..contoso", "it has an empty label"),
    ("-web", "the label '-web' starts or ends with '-'"),
    ("web-", "the label 'web-' starts or ends with '-'"),
    ("web.-x.com", "the label '-x' starts or ends with '-'"),
    ("10.0.0.4", "it is all digits, which resolvers read as an IP address"),
    ("123", "it is all digits"),
    (
        "w\u00e9b",
        "it contains '\\xe9': only ASCII letters, digits, '-' and '.' between labels"
        " are accepted (give an internationalized name in its xn-- form)",
    ),
    ("web 1", "it contains ' '"),
    ("web$(id)", "it contains '$', '(', ')'"),
    ("web\x00", "it contains '\\x00'"),
    (None, "it is not a string"),
    (["web"], "it is not a string"),
]


def ids(value: Any) -> str:
    return ascii(value)[:30]


# -- the rules -------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_USERS, ids=ids)
def test_good_user_names_come_back_as_given(name: str) -> None:
    assert names.user_name(name, "field") == name
    assert names.user_name_problem(name) is None


@pytest.mark.parametrize(("name", "problem"), BAD_USERS, ids=ids)
def test_bad_user_names_are_refused_with_the_field_and_why(name: Any, problem: str) -> None:
    with pytest.raises(names.InvalidName) as caught:
        names.user_name(name, "ovf-env.xml: UserName")
    reason = caught.value.reason
    assert reason.startswith(
        f"ovf-env.xml: UserName: {names.shown(name)} is not a valid user name: "
    )
    assert problem in reason
    assert isinstance(caught.value, AzagentError)
    assert reason.isprintable()
    assert reason.isascii()


@pytest.mark.parametrize("name", GOOD_HOSTS, ids=ids)
def test_good_hostnames_come_back_as_given(name: str) -> None:
    assert names.host_name(name, "field") == name
    assert names.host_name_problem(name) is None


@pytest.mark.parametrize(("name", "problem"), BAD_HOSTS, ids=ids)
def test_bad_hostnames_are_refused_with_the_field_and_why(name: Any, problem: str) -> None:
    with pytest.raises(names.InvalidName) as caught:
        names.host_name(name, "/etc/hostname")
    reason = caught.value.reason
    assert reason.startswith(f"/etc/hostname: {names.shown(name)} is not a valid hostname: ")
    assert problem in reason
    assert reason.isprintable()
    assert reason.isascii()


def test_a_refused_value_is_shown_escaped_and_truncated() -> None:
    assert names.shown("alice") == "'alice'"
    assert names.shown("root\n") == "'root\\n'"
    assert names.shown("\x1b]0;owned\x07") == "'\\x1b]0;owned\\x07'"
    assert names.shown("\u202eevil") == "'\\u202eevil'"
    assert names.shown("a" * 300) == "'" + "a" * 40 + "'... (300 characters)"
    assert names.shown(None) == "null"
    assert names.shown(7) == "a number"
    assert names.shown(True) == "a boolean"
    assert names.shown(["x"]) == "an array"
    # A megabyte of hostile text makes a short reason.
    with pytest.raises(names.InvalidName) as caught:
        names.user_name("\n" * 1_000_000, "f")
    assert len(caught.value.reason) < 200
    with pytest.raises(names.InvalidName) as caught:
        names.host_name("\x00" * 100 + "a;b" * 10_000, "f")
    assert len(caught.value.reason) < 300


def test_the_kernel_limit_is_not_a_reason_to_refuse() -> None:
    """Longer than the kernel's 64 bytes is valid: the hostname stage uses the first label."""
    long = "web-1." + "a" * 60 + ".example"
    assert len(long) > names.HOST_NAME_MAX
    assert names.host_name(long, "f") == long


def test_the_module_is_pure() -> None:
    """No I/O: it imports only re, typing and the error types."""
    tree = ast.parse((REPO / "lib/azagent/names.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported == {"__future__", "re", "typing", "azagent.errors"}


# -- every entry point agrees with the rule -------------------------------------------

USER_TABLE = GOOD_USERS + [name for name, _ in BAD_USERS if isinstance(name, str)]
HOST_TABLE = GOOD_HOSTS + [name for name, _ in BAD_HOSTS if isinstance(name, str)]


def ovf_document(hostname: str = "vm-1", username: str = "alice") -> bytes:
    return (
        ovf.build_ovf(ovf.Provisioning(hostname="vm-1", username="alice"))
        .replace(b"<HostName>vm-1</HostName>", f"<HostName>{escape(hostname)}</HostName>".encode())
        .replace(b"<UserName>alice</UserName>", f"<UserName>{escape(username)}</UserName>".encode())
    )


def imds_document(**profile: str) -> bytes:
    document = imds.build_instance(
        vm_id="v", name="vm-1", location="l", vm_size="s", computer_name="vm-1",
        admin_username="alice",
    )  # fmt: skip
    document["compute"]["osProfile"].update(profile)
    return json.dumps(document).encode()


def handed_off(**values: Any) -> bytes:
    document = {"vm_id": "v", "source": "ovf", "hostname": "vm-1", "username": "alice"}
    document.update(values)
    return json.dumps(document).encode()


def accepted(call: Any) -> bool:
    try:
        call()
    except AzagentError:
        return False
    return True


@pytest.mark.parametrize("name", USER_TABLE, ids=ids)
def test_every_entry_point_takes_exactly_the_user_names_the_rule_takes(
    name: str, tmp_path: Path
) -> None:
    verdict = names.user_name_problem(name) is None
    if name == name.strip():  # XML text is stripped: " alice" is alice there
        assert accepted(lambda: ovf.parse_ovf(ovf_document(username=name))) is verdict
    if name:  # IMDS spells "not set" as ""
        assert accepted(lambda: imds.parse_instance(imds_document(adminUsername=name))) is verdict
    assert accepted(lambda: ProvisioningData.from_json(handed_off(username=name))) is verdict
    if name not in users.RESERVED_NAMES:
        assert accepted(lambda: users.check_name(name)) is verdict
    # ssh-keys: an accepted name is looked up (and is not in this empty root's passwd).
    ctx = Context(stage="test", root=tmp_path, config=config.defaults())
    with pytest.raises(sshkeys.SshKeyError) as caught:
        sshkeys.lookup_account(ctx, name)
    assert ("is not a valid user name" not in caught.value.reason) is verdict


@pytest.mark.parametrize("name", HOST_TABLE, ids=ids)
def test_every_entry_point_takes_exactly_the_hostnames_the_rule_takes(name: str) -> None:
    verdict = names.host_name_problem(name) is None
    if name == name.strip():
        assert accepted(lambda: ovf.parse_ovf(ovf_document(hostname=name))) is verdict
    if name:
        assert accepted(lambda: imds.parse_instance(imds_document(computerName=name))) is verdict
    assert accepted(lambda: ProvisioningData.from_json(handed_off(hostname=name))) is verdict


def test_the_parsers_name_the_field() -> None:
    with pytest.raises(ovf.OvfError) as caught_ovf:
        ovf.parse_ovf(ovf_document(username="Alice"))
    assert str(caught_ovf.value).startswith(
        "ovf-env.xml: Environment/ProvisioningSection/LinuxProvisioningConfigurationSet/"
        "UserName: 'Alice' is not a valid user name: it contains 'A'"
    )
    with pytest.raises(imds.ImdsError) as caught_imds:
        imds.parse_instance(imds_document(adminUsername="Alice"))
    assert str(caught_imds.value).startswith(
        "IMDS instance metadata: compute.osProfile.adminUsername: 'Alice' is not a valid"
        " user name: it contains 'A'"
    )
    with pytest.raises(names.InvalidName) as caught_state:
        ProvisioningData.from_json(handed_off(username="Alice"))
    assert str(caught_state.value).startswith(
        "/run/azagent/provisioning.json: username: 'Alice' is not a valid user name"
    )
    with pytest.raises(names.InvalidName) as caught_state:
        ProvisioningData.from_json(handed_off(hostname="../etc"))
    assert str(caught_state.value).startswith(
        "/run/azagent/provisioning.json: hostname: '../etc' is not a valid hostname"
    )


def test_a_refused_name_in_xml_that_xml_cannot_carry_is_still_refused() -> None:
    """Control characters other than tab and LF never reach the rule: XML refuses them."""
    with pytest.raises(xmlsafe.XmlError):
        ovf.parse_ovf(ovf_document(username="a\x1bb"))


def test_provisioning_data_never_holds_a_refused_name() -> None:
    with pytest.raises(names.InvalidName, match=r"^username: 'Alice' is not a valid user name"):
        ProvisioningData(vm_id="v", source="ovf", hostname="vm-1", username="Alice")
    with pytest.raises(names.InvalidName, match=r"^hostname: 'vm_1' is not a valid hostname"):
        ProvisioningData(vm_id="v", source="ovf", hostname="vm_1", username="alice")


def test_reports_still_name_the_vm_when_provisioning_json_is_refused(tmp_path: Path) -> None:
    ctx = Context(stage="test", root=tmp_path, config=config.defaults())
    state = tmp_path / provisioning.STATE_PATH.lstrip("/")
    state.parent.mkdir(parents=True)
    state.write_bytes(handed_off(vm_id="vm-from-data", username="Alice"))
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text("VM-FROM-FIRMWARE\n")
    with pytest.raises(names.InvalidName):
        provisioning.load(ctx)
    assert provisioning.report_vm_id(ctx) == "vm-from-firmware"
    state.write_bytes(handed_off(vm_id="vm-from-data"))
    assert provisioning.report_vm_id(ctx) == "vm-from-data"
