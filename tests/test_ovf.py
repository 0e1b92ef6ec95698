"""ovf-env.xml: WALinuxAgent's samples, build/parse round trips, hostile documents."""

from __future__ import annotations

import difflib
import io
import re
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from conftest import FIXTURES

from azagent import ovf, redact, xmlsafe
from azagent.errors import AzagentError
from azagent.ovf import KeyPair, OvfError, Provisioning, PublicKey
from azagent.redact import Secret

SAMPLES = FIXTURES / "walinuxagent"
FINGERPRINT = "EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62"

# Secrets planted in hostile documents: no error message may ever show them.
PASSWORD = "Pw-9f3Kx!hunter2"  # noqa: S105 - planted in test documents
CUSTOM_DATA = "c2VjcmV0LWN1c3RvbS1kYXRhLXBheWxvYWQ="


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    redact.forget_all()
    yield
    redact.forget_all()


def replaced(p: Provisioning, **changes: object) -> Provisioning:
    """``p`` with ``changes`` to some of its fields."""
    values = {name: getattr(p, name) for name in Provisioning.FIELDS}
    return Provisioning(**{**values, **changes})  # type: ignore[arg-type]


def original(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def sample(name: str) -> bytes:
    """A WALinuxAgent sample with a user name the rule accepts.

    The samples name their user "UserName", which the user name rule
    refuses (upper case; see test_the_samples_user_name_is_refused): every
    other value is the sample's own.
    """
    return original(name).replace(
        b"<UserName>UserName</UserName>", b"<UserName>username</UserName>"
    )


# -- WALinuxAgent's samples ----------------------------------------------------


def test_sample_parses_to_its_values() -> None:
    p = ovf.parse_ovf(sample("ovf-env.xml"))
    assert p.version == "1.0"
    assert p.hostname == "HostName"
    assert p.username == "username"
    assert p.password is not None
    assert p.password.reveal() == "UserPassword"
    assert p.custom_data_base64 == "CustomData"
    assert p.disable_ssh_password_auth is False
    assert p.public_keys == (
        PublicKey(
            path="$HOME/UserName/.ssh/authorized_keys",
            fingerprint=FINGERPRINT,
            value="ssh-rsa AAAANOTAREALKEY== foo@bar.local",
        ),
    )
    assert p.key_pairs == (KeyPair(fingerprint=FINGERPRINT, path="$HOME/UserName/.ssh/id_rsa"),)
    assert p.provision_guest_agent is False
    assert p.preprovisioned_vm is False
    assert p.preprovisioned_vm_type is None
    assert p.provision_guest_proxy_agent is False


def test_the_samples_user_name_is_refused() -> None:
    """ "UserName" is upper case: refused where it enters, naming the element and why."""
    for name in ("ovf-env.xml", "ovf-env-2.xml", "ovf-env-3.xml", "ovf-env-4.xml"):
        with pytest.raises(OvfError) as caught:
            ovf.parse_ovf(original(name))
        assert str(caught.value) == (
            "ovf-env.xml: Environment/ProvisioningSection/LinuxProvisioningConfigurationSet/"
            "UserName: 'UserName' is not a valid user name: it contains 'N', 'U' (upper case"
            " is not accepted): only a-z, 0-9, '_' and '-' are accepted"
        )


def test_samples_differ_only_in_provision_guest_agent() -> None:
    """What the four samples are for: the text of ProvisionGuestAgent."""
    base = original("ovf-env.xml").decode().splitlines()
    for name, text in [
        ("ovf-env-2.xml", "true"),
        ("ovf-env-3.xml", ""),
        ("ovf-env-4.xml", "bad data"),
    ]:
        other = original(name).decode().splitlines()
        changed = [
            line
            for line in difflib.unified_diff(base, other, lineterm="", n=0)
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
        ]
        assert changed == [
            "-\t\t\t<wa:ProvisionGuestAgent>false</wa:ProvisionGuestAgent>",
            f"+\t\t\t<wa:ProvisionGuestAgent>{text}</wa:ProvisionGuestAgent>",
        ], name


@pytest.mark.parametrize(
    ("name", "enabled"),
    [
        ("ovf-env.xml", False),  # "false": no extension handler on this VM
        ("ovf-env-2.xml", True),  # "true"
        ("ovf-env-3.xml", True),  # empty: waagent leaves the agent on
        ("ovf-env-4.xml", True),  # "bad data": only "false" turns it off
    ],
)
def test_provision_guest_agent_follows_waagent(name: str, enabled: bool) -> None:
    p = ovf.parse_ovf(sample(name))
    assert p.provision_guest_agent is enabled
    # Everything else is the same document.
    base = ovf.parse_ovf(sample("ovf-env.xml"))
    assert p == replaced(base, provision_guest_agent=enabled)


def test_sample_custom_data_is_not_base64_and_says_so_only_when_decoded() -> None:
    p = ovf.parse_ovf(sample("ovf-env.xml"))  # parsing succeeds
    with pytest.raises(OvfError) as caught:
        _ = p.custom_data
    assert str(caught.value) == "ovf-env.xml: CustomData: not valid base64"


@pytest.mark.parametrize("name", ["ovf-env.xml", "ovf-env-2.xml", "ovf-env-3.xml", "ovf-env-4.xml"])
def test_samples_round_trip(name: str) -> None:
    p = ovf.parse_ovf(sample(name))
    assert ovf.parse_ovf(ovf.build_ovf(p)) == p


# -- building ------------------------------------------------------------------


def full() -> Provisioning:
    return Provisioning(
        hostname="vm-01.example.internal",
        username="alice_adm",
        password=Secret(" <p&ss>\"word' "),
        custom_data_base64=ovf.encode_custom_data(b"#!/bin/sh\necho hi\n\x00\xff"),
        disable_ssh_password_auth=True,
        public_keys=(
            PublicKey(path="/home/alice_adm/.ssh/authorized_keys", value="ssh-ed25519 AAAAC3 a@b"),
            PublicKey(path="$HOME/alice_adm/.ssh/authorized_keys", fingerprint=FINGERPRINT),
            PublicKey(
                path="$HOME/alice_adm/.ssh/authorized_keys",
                fingerprint=FINGERPRINT.lower(),
                value="ssh-rsa AAAAB3 <x&y>",
            ),
        ),
        key_pairs=(
            KeyPair(fingerprint=FINGERPRINT, path="$HOME/alice_adm/.ssh/id_rsa"),
            KeyPair(fingerprint="A" * 64, path="/home/alice_adm/.ssh/id_ecdsa"),
        ),
        provision_guest_agent=False,
        provision_guest_proxy_agent=True,
        preprovisioned_vm=True,
        preprovisioned_vm_type="Savable",
    )


def test_build_parse_round_trip() -> None:
    p = full()
    data = ovf.build_ovf(p)
    assert ovf.parse_ovf(data) == p
    assert ovf.parse_ovf(data).custom_data == b"#!/bin/sh\necho hi\n\x00\xff"
    # Escaped, not raw: the password's markup characters never reach the XML as markup.
    assert b"&lt;p&amp;ss&gt;" in data


def test_build_parse_round_trip_minimal() -> None:
    p = Provisioning(hostname="h", username="u")
    assert ovf.parse_ovf(ovf.build_ovf(p)) == p


def shape(data: bytes) -> list[tuple[str, ...]]:
    """Namespace declarations, elements and attribute names, in document order."""
    events: list[tuple[str, ...]] = []
    for event, item in ET.iterparse(io.BytesIO(data), events=("start-ns", "start")):  # noqa: S314
        if event == "start-ns":
            prefix, uri = item
            events.append(("xmlns", prefix, uri))
        else:
            assert isinstance(item, ET.Element)
            events.append(("element", item.tag, *sorted(item.attrib)))
    return events


def test_built_document_has_the_platforms_shape() -> None:
    """Same elements, namespaces, prefix declarations and attributes, in the same order."""
    for name in ("ovf-env.xml", "ovf-env-2.xml"):
        original = sample(name)
        built = ovf.build_ovf(ovf.parse_ovf(original))
        assert shape(built) == shape(original)
        # The prefixes themselves, too (the agent must not rely on them, but
        # the emulator should look like the platform).
        assert b"<wa:ProvisioningSection>" in built
        assert b"<LinuxProvisioningConfigurationSet xmlns=" in built


def test_build_refuses_invalid_values_unless_asked() -> None:
    bad = Provisioning(hostname="h" * 300, username="alice", password=Secret(PASSWORD))
    with pytest.raises(OvfError, match=r"Provisioning\.hostname: .* it is 300 characters long"):
        ovf.build_ovf(bad)
    # The emulator builds what the agent must refuse.
    data = ovf.build_ovf(bad, validate=False)
    with pytest.raises(OvfError, match=r"HostName: .* it is 300 characters long"):
        ovf.parse_ovf(data)


@pytest.mark.parametrize("password", ["a\x01b", "a\rb", "a\ud800b", "\x00"])
def test_build_refuses_what_xml_cannot_carry(password: str) -> None:
    with pytest.raises(OvfError) as caught:
        ovf.build_ovf(
            Provisioning(hostname="h", username="u", password=Secret(password)), validate=False
        )
    assert "Provisioning.password" in str(caught.value)
    assert password not in str(caught.value)


# -- namespaces, not prefixes --------------------------------------------------

OTHER_PREFIXES = b"""<?xml version="1.0" encoding="utf-8"?>
<ns0:Environment xmlns:ns0="http://schemas.dmtf.org/ovf/environment/1"
    xmlns:ns1="http://schemas.microsoft.com/windowsazure">
  <ns1:ProvisioningSection>
    <ns1:Version>1.0</ns1:Version>
    <ns1:LinuxProvisioningConfigurationSet>
      <ns1:ConfigurationSetType>LinuxProvisioningConfiguration</ns1:ConfigurationSetType>
      <ns1:HostName>
        other-host
      </ns1:HostName>
      <ns1:UserName>bob</ns1:UserName>
      <ns1:DisableSshPasswordAuthentication>TRUE</ns1:DisableSshPasswordAuthentication>
      <ns1:SSH><ns1:PublicKeys><ns1:PublicKey>
        <ns1:Path>/home/bob/.ssh/authorized_keys</ns1:Path>
        <ns1:Value>ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 bob@laptop</ns1:Value>
      </ns1:PublicKey></ns1:PublicKeys></ns1:SSH>
    </ns1:LinuxProvisioningConfigurationSet>
  </ns1:ProvisioningSection>
  <ns1:PlatformSettingsSection>
    <ns1:PlatformSettings>
      <ns1:PreprovisionedVm>True</ns1:PreprovisionedVm>
      <ns1:PreprovisionedVMType>Running</ns1:PreprovisionedVMType>
      <ns1:ProvisionGuestProxyAgent>true</ns1:ProvisionGuestProxyAgent>
    </ns1:PlatformSettings>
  </ns1:PlatformSettingsSection>
</ns0:Environment>
"""


def test_prefixes_do_not_matter() -> None:
    p = ovf.parse_ovf(OTHER_PREFIXES)
    assert p == Provisioning(
        hostname="other-host",
        username="bob",
        disable_ssh_password_auth=True,  # "TRUE": case-insensitive, as waagent
        public_keys=(
            PublicKey(
                path="/home/bob/.ssh/authorized_keys",
                value="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 bob@laptop",
            ),
        ),
        preprovisioned_vm=True,
        preprovisioned_vm_type="Running",
        provision_guest_proxy_agent=True,
    )


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        (b"<ns1:PreprovisionedVmType>Savable</ns1:PreprovisionedVmType>", "Savable"),
        (b'<ns1:PreprovisionedVMType xsi:nil="true"/>', None),
        (b"<ns1:PreprovisionedVMType></ns1:PreprovisionedVMType>", None),
    ],
)
def test_preprovisioned_vm_type_spellings(element: bytes, expected: str | None) -> None:
    data = re.sub(
        rb"<ns1:PreprovisionedVMType>.*?</ns1:PreprovisionedVMType>", element, OTHER_PREFIXES
    )
    data = data.replace(
        b"<ns0:Environment ",
        b'<ns0:Environment xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ',
    )
    assert ovf.parse_ovf(data).preprovisioned_vm_type == expected


def test_preprovisioned_vm_type_must_be_a_word() -> None:
    data = OTHER_PREFIXES.replace(b">Running<", b">Run ning<")
    with pytest.raises(
        OvfError, match="PlatformSettings/PreprovisionedVMType: is not a single word"
    ):
        ovf.parse_ovf(data)


def test_absent_flags_take_waagents_defaults() -> None:
    # No DisableSshPasswordAuthentication: password login stays enabled; no
    # PlatformSettingsSection: the guest agent is provisioned.
    data = re.sub(
        rb"<ns1:DisableSsh.*?</ns1:DisableSshPasswordAuthentication>", b"", OTHER_PREFIXES
    )
    data = re.sub(
        rb"<ns1:PlatformSettingsSection>.*</ns1:PlatformSettingsSection>", b"", data, flags=re.S
    )
    p = ovf.parse_ovf(data)
    assert p.disable_ssh_password_auth is False
    assert p.provision_guest_agent is True
    assert p.preprovisioned_vm is False


def test_an_element_in_the_wrong_namespace_does_not_count() -> None:
    data = OTHER_PREFIXES.replace(
        b"<ns1:UserName>bob</ns1:UserName>", b'<UserName xmlns="urn:elsewhere">bob</UserName>'
    )
    with pytest.raises(
        xmlsafe.XmlStructureError, match="LinuxProvisioningConfigurationSet/UserName: missing"
    ):
        ovf.parse_ovf(data)


# -- hostile documents ---------------------------------------------------------

TEMPLATE = """<?xml version="1.0" encoding="utf-8"?>
@DOCTYPE@<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
    xmlns:wa="http://schemas.microsoft.com/windowsazure">
  <wa:ProvisioningSection>
    <wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure">
      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
      <HostName>@HOSTNAME@</HostName>
      <UserName>@USERNAME@</UserName>
      <UserPassword>@PASSWORD@</UserPassword>
      <SSH><PublicKeys><PublicKey>
        <Fingerprint>@FINGERPRINT@</Fingerprint>
        <Path>@PATH@</Path>
      </PublicKey></PublicKeys></SSH>
      <CustomData>@CUSTOM@</CustomData>
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
</Environment>
"""


def document(**fields: str) -> bytes:
    values = {
        "DOCTYPE": "",
        "HOSTNAME": "good-host",
        "USERNAME": "alice",
        "PASSWORD": PASSWORD,
        "FINGERPRINT": FINGERPRINT,
        "PATH": "$HOME/alice/.ssh/authorized_keys",
        "CUSTOM": CUSTOM_DATA,
    }
    values.update({k.upper(): v for k, v in fields.items()})
    text = TEMPLATE
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text.encode("utf-8")


def test_template_is_valid() -> None:
    p = ovf.parse_ovf(document())
    assert p.username == "alice"
    assert p.password == Secret(PASSWORD)
    assert p.custom_data == b"secret-custom-data-payload"


BILLION_LAUGHS = """<!DOCTYPE Environment [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
"""
EXTERNAL = '<!DOCTYPE Environment [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'

HOSTILE = [
    pytest.param(
        document(doctype=BILLION_LAUGHS, username="&lol3;"),
        xmlsafe.XmlRefused,
        "DOCTYPE",
        id="billion-laughs",
    ),
    pytest.param(
        document(doctype=EXTERNAL, username="&xxe;"),
        xmlsafe.XmlRefused,
        "DOCTYPE",
        id="external-entity",
    ),
    pytest.param(
        document(doctype='<!DOCTYPE Environment SYSTEM "http://127.0.0.1:9/ovf.dtd">\n'),
        xmlsafe.XmlRefused,
        "DOCTYPE",
        id="external-dtd",
    ),
    pytest.param(
        document(doctype="<!doctype Environment>\n"),
        xmlsafe.XmlRefused,
        "DOCTYPE",
        id="doctype-lowercase",
    ),
    pytest.param(
        document(custom=CUSTOM_DATA + "A" * ovf.MAX_BYTES),
        xmlsafe.XmlTooLarge,
        "over the limit",
        id="oversized",
    ),
    pytest.param(
        document(hostname="h\u00e9te").decode().encode("latin-1"),
        xmlsafe.XmlEncodingError,
        "UTF-8",
        id="latin-1",
    ),
    pytest.param(
        document().decode().encode("utf-16"), xmlsafe.XmlEncodingError, "UTF-8", id="utf-16"
    ),
    pytest.param(
        document().replace(b'encoding="utf-8"', b'encoding="iso-8859-1"'),
        xmlsafe.XmlEncodingError,
        "declares an encoding",
        id="declared-latin-1",
    ),
    pytest.param(document()[:-40], xmlsafe.XmlMalformed, "not well-formed", id="truncated"),
    pytest.param(
        document(username="ali</UserName><UserName>ce"),
        xmlsafe.XmlStructureError,
        "UserName: appears 2 times",
        id="duplicate-username",
    ),
    pytest.param(
        document(username="ali\x00ce"), xmlsafe.XmlMalformed, "not well-formed", id="username-nul"
    ),
    pytest.param(
        document(username="ali&#0;ce"),
        xmlsafe.XmlMalformed,
        "not well-formed",
        id="username-nul-ref",
    ),
    pytest.param(
        document(username="ali\nce"),
        OvfError,
        "UserName: 'ali\\nce' is not a valid user name: it contains '\\n'",
        id="username-newline",
    ),
    pytest.param(
        document(username="ali&#10;ce"),
        OvfError,
        "UserName: 'ali\\nce' is not a valid user name: it contains '\\n'",
        id="username-newline-ref",
    ),
    pytest.param(
        document(username="root:x:0"),
        OvfError,
        "UserName: 'root:x:0' is not a valid user name: it contains ':'",
        id="username-colon",
    ),
    pytest.param(
        document(username="-rf"),
        OvfError,
        "UserName: '-rf' is not a valid user name: it starts with '-'",
        id="username-dash",
    ),
    pytest.param(
        document(username="u" * 33),
        OvfError,
        "UserName: " + repr("u" * 33) + " is not a valid user name: it is 33 characters long,"
        " at most 32 allowed",
        id="username-long",
    ),
    pytest.param(document(username=""), OvfError, "UserName: is empty", id="username-empty"),
    pytest.param(
        document(username="Alice"),
        OvfError,
        "UserName: 'Alice' is not a valid user name: it contains 'A' (upper case",
        id="username-upper",
    ),
    pytest.param(
        document(username="../etc"),
        OvfError,
        "UserName: '../etc' is not a valid user name: it contains '.', '/'",
        id="username-dotdot",
    ),
    pytest.param(
        document(username="alice$"),
        OvfError,
        "UserName: 'alice$' is not a valid user name: it contains '$'",
        id="username-dollar",
    ),
    pytest.param(
        document(hostname="h" * 300),
        OvfError,
        "HostName: " + repr("h" * 40) + "... (300 characters) is not a valid hostname:"
        " it is 300 characters long, at most 253 allowed",
        id="hostname-300",
    ),
    pytest.param(
        document(hostname="a" * 64 + ".example"),
        OvfError,
        "HostName: " + repr("a" * 40) + "... (72 characters) is not a valid hostname:"
        " a label is 64 characters long, at most 63 allowed",
        id="label-64",
    ),
    pytest.param(
        document(hostname="bad_host"),
        OvfError,
        "HostName: 'bad_host' is not a valid hostname: it contains '_'",
        id="hostname-underscore",
    ),
    pytest.param(
        document(hostname="-lead"),
        OvfError,
        "HostName: '-lead' is not a valid hostname: the label '-lead' starts or ends with '-'",
        id="hostname-dash",
    ),
    pytest.param(
        document(hostname="a..b"),
        OvfError,
        "HostName: 'a..b' is not a valid hostname: it has an empty label",
        id="hostname-empty-label",
    ),
    pytest.param(
        document(hostname="web."),
        OvfError,
        "HostName: 'web.' is not a valid hostname: it ends with a dot",
        id="hostname-trailing-dot",
    ),
    pytest.param(
        document(hostname="10.0.0.4"),
        OvfError,
        "HostName: '10.0.0.4' is not a valid hostname: it is all digits",
        id="hostname-address",
    ),
    pytest.param(
        document(fingerprint="EB0C0AB4"),
        OvfError,
        "Fingerprint: is not a certificate",
        id="fingerprint-short",
    ),
    pytest.param(
        document(fingerprint="ZZ" + FINGERPRINT[2:]),
        OvfError,
        "Fingerprint: is not a certificate",
        id="fingerprint-hex",
    ),
    pytest.param(
        document(path="alice/.ssh/authorized_keys"),
        OvfError,
        "Path: is neither",
        id="path-relative",
    ),
    pytest.param(
        document(path="$HOMEalice/x"), OvfError, "Path: is neither", id="path-home-no-slash"
    ),
    pytest.param(
        document(path="$HOME/../../etc/shadow"), OvfError, "Path: contains a '..'", id="path-dotdot"
    ),
    pytest.param(
        document(path="/home/a b/.ssh/k"), OvfError, "Path: contains a space", id="path-space"
    ),
    pytest.param(document(path=""), OvfError, "Path: is empty", id="path-empty"),
]


@pytest.mark.parametrize(("data", "error", "message"), HOSTILE)
def test_hostile_documents_are_refused_without_leaking_secrets(
    data: bytes, error: type[AzagentError], message: str
) -> None:
    with pytest.raises(error) as caught:
        ovf.parse_ovf(data)
    assert message in str(caught.value)
    assert str(caught.value).startswith("ovf-env.xml: ")
    # Nothing that reaches a log (message, repr, a formatted traceback) carries a secret.
    shown = "".join(traceback.format_exception(type(caught.value), caught.value, caught.tb))
    for text in (str(caught.value), repr(caught.value), shown):
        assert PASSWORD not in text
        assert CUSTOM_DATA not in text
        assert "secret-custom-data" not in text


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (rb"<HostName>.*?</HostName>", "LinuxProvisioningConfigurationSet/HostName: missing"),
        (rb"<UserName>.*?</UserName>", "LinuxProvisioningConfigurationSet/UserName: missing"),
        (rb"<wa:Version>.*?</wa:Version>", "ProvisioningSection/Version: missing"),
        (
            rb"<LinuxProvisioningConfigurationSet .*</LinuxProvisioningConfigurationSet>",
            "ProvisioningSection/LinuxProvisioningConfigurationSet: missing",
        ),
        (
            rb"<wa:ProvisioningSection>.*</wa:ProvisioningSection>",
            "Environment/ProvisioningSection: missing",
        ),
        (rb"<Path>.*?</Path>", "PublicKey/Path: missing"),
    ],
)
def test_missing_required_elements(remove: bytes, message: str) -> None:
    data = re.sub(remove, b"", document(), flags=re.S)
    with pytest.raises(xmlsafe.XmlStructureError) as caught:
        ovf.parse_ovf(data)
    assert message in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"<wa:Version>1.0<", b"<wa:Version>one<", "Version: is not a version number"),
        (b"<HostName>good-host<", b"<HostName>  <", "HostName: is empty"),
        (
            b">LinuxProvisioningConfiguration<",
            b">WindowsProvisioningConfiguration<",
            "is not LinuxProv",
        ),
        (
            b"<Fingerprint>" + FINGERPRINT.encode() + b"</Fingerprint>",
            b"",
            "neither a Fingerprint nor a Value",
        ),
        (b"<HostName>good-host", b"<HostName><x>good-host</x>", "HostName: holds elements"),
        (
            b"<UserPassword>" + PASSWORD.encode(),
            b"<UserPassword><b/>" + PASSWORD.encode(),
            "UserPassword: holds",
        ),
    ],
)
def test_invalid_content(old: bytes, new: bytes, message: str) -> None:
    data = document().replace(old, new)
    assert data != document()
    with pytest.raises(AzagentError) as caught:
        ovf.parse_ovf(data)
    assert message in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_the_root_must_be_an_ovf_environment() -> None:
    data = document().replace(b"<Environment xmlns=", b"<Other xmlns=")
    data = data.replace(b"</Environment>", b"</Other>")
    with pytest.raises(OvfError, match="the root element is not an OVF Environment"):
        ovf.parse_ovf(data)


def test_the_parser_refuses_a_dtd_even_when_the_byte_check_misses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(xmlsafe, "_DTD_MARKUP", re.compile(rb"(?!)"))
    for doctype in (BILLION_LAUGHS, EXTERNAL, "<!DOCTYPE Environment>\n"):
        with pytest.raises(xmlsafe.XmlRefused):
            ovf.parse_ovf(document(doctype=doctype))
        with pytest.raises(xmlsafe.XmlRefused):
            ovf.redacted_ovf(document(doctype=doctype))


def test_errors_are_azagent_errors() -> None:
    for error in (xmlsafe.XmlRefused, xmlsafe.XmlTooLarge, xmlsafe.XmlMalformed, OvfError):
        assert issubclass(error, AzagentError)


# -- secrets stay hidden -------------------------------------------------------


def test_repr_and_str_hide_password_and_custom_data() -> None:
    p = ovf.parse_ovf(document())
    for text in (repr(p), str(p), f"{p}", f"{p!r}", repr([p]), str(p.password)):
        assert PASSWORD not in text
        assert CUSTOM_DATA not in text
    assert "password=<redacted>" in repr(p)
    assert "custom_data_base64=<redacted>" in repr(p)
    assert "good-host" in repr(p)  # the rest is still shown
    assert "password=None" in repr(Provisioning(hostname="h", username="u"))


def test_parsed_secrets_are_registered_for_redaction() -> None:
    ovf.parse_ovf(document())
    assert PASSWORD not in redact.redact(f"chpasswd alice:{PASSWORD} failed")
    assert CUSTOM_DATA not in redact.redact(f"data {CUSTOM_DATA} end")


def test_redacted_copy_keeps_everything_but_the_secrets() -> None:
    for name in ("ovf-env.xml", "ovf-env-2.xml", "ovf-env-3.xml", "ovf-env-4.xml"):
        original = sample(name)
        kept = ovf.redacted_ovf(original)
        assert kept == original.replace(
            b"<UserPassword>UserPassword</UserPassword>", b"<UserPassword></UserPassword>"
        ).replace(b"<CustomData>CustomData</CustomData>", b"<CustomData></CustomData>")
        assert ovf.parse_ovf(kept) == replaced(
            ovf.parse_ovf(original), password=None, custom_data_base64=None
        )


def test_redaction_finds_secrets_however_they_are_written() -> None:
    data = document(
        password=f"<![CDATA[{PASSWORD}]]>",
        custom=f"<!-- x --><inner a='>'>{CUSTOM_DATA}</inner>",
    ).replace(
        b"</LinuxProvisioningConfigurationSet>",
        b'<az:UserPassword xmlns:az="urn:any" note="a>b">'
        + PASSWORD.encode()
        + b"</az:UserPassword><UserPassword/><CustomData></CustomData>"
        + b"</LinuxProvisioningConfigurationSet>",
    )
    kept = ovf.redacted_ovf(data)
    assert PASSWORD.encode() not in kept
    assert CUSTOM_DATA.encode() not in kept
    assert b'<az:UserPassword xmlns:az="urn:any" note="a>b"></az:UserPassword>' in kept
    assert b"<UserPassword/><CustomData></CustomData>" in kept
    assert b"<HostName>good-host</HostName>" in kept
    xmlsafe.parse(kept, what="kept copy")  # still well-formed


def test_redaction_refuses_what_parsing_refuses() -> None:
    with pytest.raises(xmlsafe.XmlRefused):
        ovf.redacted_ovf(document(doctype=BILLION_LAUGHS))
    with pytest.raises(xmlsafe.XmlMalformed):
        ovf.redacted_ovf(document()[:-40])


# -- xmlsafe helpers -----------------------------------------------------------


def test_qualified_names_split_on_the_last_colon() -> None:
    key = xmlsafe.qname("http://schemas.microsoft.com/windowsazure", "HostName")
    assert key == "http://schemas.microsoft.com/windowsazure:HostName"
    assert xmlsafe.split_qname(key) == ("http://schemas.microsoft.com/windowsazure", "HostName")
    assert xmlsafe.split_qname("plain") == ("", "plain")
    assert xmlsafe.qname("", "plain") == "plain"


def test_element_walks_by_namespace() -> None:
    tree = xmlsafe.parse(
        b'<r xmlns="urn:a" xmlns:b="urn:b" xmlns:x="urn:x"><k x:at="v"> t </k><b:k/><m/><m/></r>',
        what="doc",
    )
    root = xmlsafe.Element.root(tree, what="doc")
    assert root.is_("urn:a", "r")
    k = root.require("urn:a", "k")
    assert k.text() == " t "
    assert k.text(strip=True) == "t"
    assert k.attribute("urn:x", "at") == "v"
    assert k.attribute("", "at") is None
    other = root.require("urn:b", "k")
    assert other.text() == ""
    assert root.child("urn:c", "k") is None
    assert len(root.children("urn:a", "m")) == 2
    with pytest.raises(xmlsafe.XmlStructureError, match="doc: r/m: appears 2 times"):
        root.child("urn:a", "m")
    with pytest.raises(xmlsafe.XmlStructureError, match="doc: r/z: missing"):
        root.require("urn:a", "z")


def test_xmlsafe_refuses_non_bytes() -> None:
    with pytest.raises(TypeError):
        xmlsafe.parse("<a/>", what="doc")  # type: ignore[arg-type]


def test_xmlsafe_size_cap_is_the_callers() -> None:
    with pytest.raises(xmlsafe.XmlTooLarge, match="doc: 9 bytes, over the limit of 8 bytes"):
        xmlsafe.parse(b"<a>x</a> ", what="doc", max_bytes=8)
    assert xmlsafe.parse(b"<a>x</a>", what="doc", max_bytes=8) == {"a": "x"}


def test_malformed_xml_message_has_position_not_content() -> None:
    with pytest.raises(xmlsafe.XmlMalformed) as caught:
        xmlsafe.parse(b"<a>\n<secret-" + PASSWORD.encode() + b"></a>", what="doc")
    assert re.fullmatch(r"doc: not well-formed XML \(.+, line \d+, column \d+\)", str(caught.value))
    assert PASSWORD not in str(caught.value)
