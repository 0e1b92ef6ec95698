"""Every parser of input from outside the agent, under generated and crafted hostile input.

Two properties, for each parser (ovf-env.xml, the WireServer's documents, the
certificates document and its CMS/PFX, the IMDS document, waagent.conf, DHCP
leases, KVP records and reports, the name rules, and the hand-off and result
files the stages read back):

- no exception escapes but the project's own (AzagentError and its
  subclasses); the lease readers, whose contract is to skip what they cannot
  read, raise nothing at all;
- no input takes more than a bounded time: hypothesis' deadline for the
  generated inputs, and a wall-clock bound for crafted worst cases (deep
  nesting, entity bombs, a million attributes, megabyte lines, quadratic
  traps, key derivations that ask for billions of rounds).

Generated inputs mix raw bytes, the fixtures (tests/fixtures) with bytes
replaced, cut, repeated or spliced with tokens that parsers trip on, and
structured documents built by the project's own builders with generated field
values. ``derandomize=True``: CI sees the same examples on every run;
``AZAGENT_FUZZ_EXAMPLES=5000`` explores further, with new random examples on
every run (a failure prints the ``@reproduce_failure`` line that replays it).

No parser exists yet for ExtensionsConfig, vmSettings, manifests,
HandlerManifest.json or extension status files (the extension handler is a
later issue); their XML goes through xmlsafe, which is covered here with the
ExtensionsConfig and manifest fixtures.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from types import FrameType, ModuleType
from typing import Any, Callable, Optional
from xml.sax.saxutils import escape

import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from azagent import (
    asn1,
    certs,
    config,
    imds,
    kvp,
    names,
    ovf,
    provisioning,
    redact,
    results,
    wireserver,
    xmlsafe,
)
from azagent.errors import AzagentError, refusing

leases: ModuleType
try:  # the lease readers are moving from network to dhcp
    from azagent import dhcp as leases  # type: ignore[attr-defined,no-redef,unused-ignore]
except ImportError:
    from azagent import network as leases

WALA = FIXTURES / "walinuxagent"
EXPLORE = os.environ.get("AZAGENT_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(EXPLORE or "120"),
    derandomize=EXPLORE is None,  # exploring: new random examples on every run
    print_blob=True,
    database=None,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# What a crafted worst case may take, with room for a busy machine: the slowest
# (a PFX spending its whole key derivation budget) takes about a second, the
# traps this catches took minutes.
WORST_CASE_SECONDS = 5.0
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _forget_registered_secrets() -> Iterator[None]:
    """Parsers register passwords and customData for redaction; generated ones go away."""
    yield
    redact.forget_all()


def holds(parse: Callable[..., object], *args: object) -> None:
    """Run a parser: a result or an AzagentError; any other exception fails the test."""
    with suppress(AzagentError):
        parse(*args)


def quietly(parse: Callable[..., object], *args: object) -> None:
    """Run a reader that skips what it cannot read: nothing may escape at all."""
    parse(*args)


# -- generic strategies ----------------------------------------------------------

# What parsers trip on: markup, quotes, escapes, bad UTF-8, digits Python's
# int() reads differently from str.isdigit(), numbers too large for a float.
TOKENS = [
    b"<",
    b">",
    b"&",
    b"&amp;",
    b"&#0;",
    b"&#xD800;",
    b"]]>",
    b"<![CDATA[x]]>",
    b"<!-- x -->",
    b"<?x y?>",
    b"<!DOCTYPE x>",
    b'"',
    b"'",
    b"\\",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",  # a UTF-16 surrogate in UTF-8
    "\u00b2".encode(),  # SUPERSCRIPT TWO: isdigit(), but int() refuses it
    "\u0661\u0662".encode(),  # Arabic-Indic digits: int() reads them
    b"9" * 400,
    b"1e999",
    b"-1",
    b"NaN",
    b"Infinity",
    b"\n",
    b"\r\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b";",
    b"=",
    b":",
    b",",
    b"|",
    b"#",
    b"lease {",
    b"\\ud800",
    b"%",
    b"$HOME/../",
]
TEXTS = [
    "",
    " ",
    "\u00b2",
    "\u0661\u0662",
    "9" * 30,
    "-1",
    "0",
    "true",
    "TRUE",
    "false",
    "None",
    "null",
    "a" * 300,
    "$HOME/../x",
    "/",
    "..",
    "root",
    "\uff21\uff22",
    "\u200b",
    "xn--",
    "a;b",
    "$(reboot)",
    "\U0001f600",
    "1.0",
    "0x10",
    "1e9",
]
texts = st.one_of(st.text(max_size=40), st.sampled_from(TEXTS))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few bytes replaced, inserted, cut, repeated or swapped for a token."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            data.extend(draw(st.binary(max_size=16)))
            continue
        start = draw(st.integers(0, len(data) - 1))
        end = draw(st.integers(start, min(len(data), start + 64)))
        kind = draw(st.sampled_from(("replace", "insert", "cut", "repeat", "token")))
        if kind == "replace":
            data[start:end] = draw(st.binary(min_size=end - start, max_size=end - start))
        elif kind == "insert":
            data[start:start] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "cut":
            del data[start:end]
        elif kind == "repeat":
            data[start:start] = data[start:end] * draw(st.integers(1, 8))
        else:
            data[start:end] = draw(st.sampled_from(TOKENS))
    return bytes(data)


@st.composite
def xml_text_replaced(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A well-formed seed with one element's text (or one attribute) replaced by generated text."""
    document = draw(st.sampled_from(seeds)).decode("utf-8")
    spans = [m.span(1) for m in re.finditer(r">([^<]*)<", document)]
    spans += [m.span(1) for m in re.finditer(r'="([^"]*)"', document)]
    start, end = draw(st.sampled_from(spans))
    text = escape(draw(texts), {'"': "&quot;"})
    return (document[:start] + text + document[end:]).encode("utf-8")


def some_input(seeds: list[bytes], *, xml: bool = False) -> st.SearchStrategy[bytes]:
    strategies = [st.binary(max_size=2048), mutated(seeds)]
    if xml:
        strategies.append(xml_text_replaced(seeds))
    return st.one_of(*strategies)


# -- time bound for crafted cases ---------------------------------------------------


class TookTooLong(Exception):
    """Raised from the alarm: the parser ran past the bound."""


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Fail with TookTooLong when the block runs longer than ``seconds`` (main thread only).

    The alarm interrupts Python code; a call into C that never returns is
    caught when it does, by the elapsed time check below.
    """

    def alarm(_signum: int, _frame: Optional[FrameType]) -> None:
        raise TookTooLong(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"took {elapsed:.1f} s"


# -- seeds from the fixtures -------------------------------------------------------------


def fixture(*parts: str) -> bytes:
    return WALA.joinpath(*parts).read_bytes()


OVF_SEEDS = [fixture(name) for name in ("ovf-env.xml", "ovf-env-2.xml", "ovf-env-3.xml")]
OVF_SEEDS.append(
    ovf.build_ovf(
        ovf.Provisioning(
            hostname="vm-1",
            username="alice",
            password=redact.Secret("Pass-word1"),
            custom_data_base64=ovf.encode_custom_data(b"#!/bin/sh\n"),
            public_keys=(
                ovf.PublicKey(path="/home/alice/.ssh/authorized_keys", value="ssh-rsa A"),
            ),
            key_pairs=(ovf.KeyPair(fingerprint="A" * 40, path="$HOME/.ssh/id_rsa"),),
            preprovisioned_vm=True,
            preprovisioned_vm_type="Savable",
        )
    )
)
GOAL_STATE_SEEDS = [
    fixture("wire", "goal_state.xml"),
    fixture("wire", "goal_state_no_certs.xml"),
    fixture("hibernate", "goal_state_1", "GoalState.xml"),
]
VERSIONS_SEEDS = [fixture("wire", "version_info.xml")]
HEALTH_SEEDS = [
    wireserver.health_xml(
        wireserver.HealthReport(
            incarnation=1,
            container_id="c",
            instance_id="i",
            state=wireserver.NOT_READY,
            substatus=wireserver.SUBSTATUS_FAILED,
            description="a reason",
        )
    )
]
CERTIFICATES_SEEDS = [
    fixture("wire", name)
    for name in ("certs.xml", "certs_format_not_pfx.xml", "certs_no_format_specified.xml")
] + [fixture("hibernate", "goal_state_1", "Certificates.xml")]
TRANSPORT_KEY = fixture("wire", "trans_prv")
CMS_SEEDS = [certs.parse_certificates_xml(fixture("wire", "certs.xml"))]
PFX_SEEDS = [certs.decrypt_enveloped(CMS_SEEDS[0], TRANSPORT_KEY)]
OTHER_XML_SEEDS = [
    fixture("wire", name)
    for name in ("ext_conf.xml", "manifest.xml", "hosting_env.xml", "shared_config.xml")
] + [fixture("hibernate", "goal_state_1", "ExtensionsConfig.xml")]
IMDS_SEEDS = [fixture("imds", "valid.json"), fixture("imds", "unicode.json")]
IMDS_SEEDS.append(
    json.dumps(
        imds.build_instance(
            vm_id="0b1f2e3d-0000-4000-8000-000000000001",
            name="vm-1",
            location="westus",
            vm_size="Standard_B1s",
            computer_name="vm-1",
            admin_username="alice",
            disable_password_authentication=True,
            public_keys=[("ssh-rsa A", "/home/alice/.ssh/authorized_keys")],
            user_data=base64.b64encode(b"hello").decode(),
        )
    ).encode()
)
CONFIG_SEEDS = [fixture("test_waagent.conf")]
DHCLIENT_SEEDS = [
    fixture(name) for name in ("dhcp.leases", "dhcp.leases.custom.dns", "dhcp.leases.multi")
]
NETWORKD_SEEDS = [
    b"# This is private data. Do not parse.\nADDRESS=10.0.1.4\nROUTER=10.0.1.1\n"
    b"CLASSLESS_ROUTES=168.63.129.16/32,10.0.1.1 0.0.0.0/0,10.0.1.1\nOPTION_245=a83f8110\n",
    b"ROUTES=0.0.0.0/0,10.0.1.1\nOPTION_245=0a000001\n",
    json.dumps(
        {
            "Private_Options": [{"Option": 245, "Data": "a83f8110"}],
            "Router": ["10.0.1.1"],
            "Classless_Routes": [
                {
                    "DestinationString": "168.63.129.16",
                    "DestinationPrefixLength": 32,
                    "GatewayString": "10.0.1.1",
                },
                {
                    "Destination": [0, 0, 0, 0],
                    "DestinationPrefixLength": 0,
                    "Gateway": [10, 0, 1, 1],
                },
            ],
        }
    ).encode(),
]
DEVICE_STATE_SEEDS = [
    b"[device]\nmanaged=true\n[dhcp4]\nunknown_245=a8:3f:81:10\n",
    b"[device]\nmanaged=true\nprivate_245=a83f8110\n",
]
KVP_SEEDS = [
    kvp.encode_record("PROVISIONING_REPORT", "result=success|agent=azagent")
    + kvp.encode_record("key", "value")
]
REPORT_SEEDS = [
    kvp.provisioning_report(
        result=kvp.ERROR,
        reason="a|b c",
        vm_id="v",
        timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc),
    ).encode(),
    b"result=success|agent=azagent|timestamp=2024-01-01T00:00:00Z",
]
PROVISIONING_SEEDS = [
    provisioning.ProvisioningData(
        vm_id="v",
        source="ovf",
        hostname="vm-1",
        username="alice",
        password_hash="$6$salt$hash",  # noqa: S106 - a test hash
        public_keys=(provisioning.Key(path="/home/alice/.ssh/authorized_keys", value="ssh-rsa A"),),
        key_pairs=(provisioning.Key(path="/home/alice/.ssh/id_rsa", fingerprint="A" * 40),),
        custom_data="aGVsbG8=",
        notes=("a note",),
    ).to_json()
]
RESULT_SEEDS = [
    results.Result.of_run("hostname", "done", 1.0, 2.0, reason="r", changes=("c",)).to_json()
]


def lease_text(data: bytes) -> str:
    # The readers decode with "replace"; so does this.
    return data.decode("utf-8", "replace")


# -- XML documents ---------------------------------------------------------------------


@FUZZ
@given(some_input(OVF_SEEDS, xml=True))
def test_ovf(data: bytes) -> None:
    holds(ovf.parse_ovf, data)
    holds(ovf.redacted_ovf, data)


@FUZZ
@given(
    st.builds(
        ovf.Provisioning,
        hostname=texts,
        username=texts,
        password=st.none() | texts.map(redact.Secret),
        custom_data_base64=st.none() | texts,
        disable_ssh_password_auth=st.booleans(),
        public_keys=st.lists(
            st.builds(
                ovf.PublicKey, path=texts, fingerprint=st.none() | texts, value=st.none() | texts
            ),
            max_size=3,
        ).map(tuple),
        key_pairs=st.lists(st.builds(ovf.KeyPair, fingerprint=texts, path=texts), max_size=3).map(
            tuple
        ),
        provision_guest_agent=st.booleans(),
        preprovisioned_vm=st.booleans(),
        preprovisioned_vm_type=st.none() | texts,
        version=texts,
    )
)
def test_ovf_built_with_generated_values(wanted: ovf.Provisioning) -> None:
    """The emulator's builder with any values: the agent reads it or refuses it, nothing else."""
    try:
        document = ovf.build_ovf(wanted, validate=False)
    except ovf.OvfError:
        return  # a value XML cannot carry
    try:
        parsed = ovf.parse_ovf(document)
    except AzagentError:
        return
    if parsed.custom_data_base64 is not None:
        holds(lambda: parsed.custom_data)


@FUZZ
@given(some_input(GOAL_STATE_SEEDS, xml=True))
def test_goal_state(data: bytes) -> None:
    holds(wireserver.parse_goal_state, data)


@FUZZ
@given(some_input(VERSIONS_SEEDS + HEALTH_SEEDS, xml=True))
def test_versions_and_health(data: bytes) -> None:
    holds(wireserver.parse_versions, data)
    holds(wireserver.parse_health, data)


@FUZZ
@given(some_input(OTHER_XML_SEEDS, xml=True))
def test_xml_of_documents_without_a_parser_yet(data: bytes) -> None:
    """ExtensionsConfig, manifests, HostingEnvironmentConfig, SharedConfig: xmlsafe and a walk."""

    def walk(data: bytes) -> None:
        root = xmlsafe.Element.root(xmlsafe.parse(data, what="document"), what="document")
        pending = [root]
        while pending:
            element = pending.pop()
            element.attribute("", "name")
            if isinstance(element.value, dict):
                for key in element.value:
                    if not key.startswith(("@", "#")):
                        namespace, local = xmlsafe.split_qname(key)
                        pending.extend(element.children(namespace, local))
            else:
                element.text(strip=True)

    holds(walk, data)


# -- certificates ---------------------------------------------------------------------------


@FUZZ
@given(some_input(CERTIFICATES_SEEDS, xml=True))
def test_certificates_document(data: bytes) -> None:
    holds(certs.parse_certificates_xml, data)


# A few DER shapes the CMS and PFX readers walk into: random trees of elements.
der_trees = st.recursive(
    st.builds(
        asn1.tlv,
        st.sampled_from([asn1.INTEGER, asn1.OCTET_STRING, asn1.OID, asn1.NULL, asn1.CONTEXT_0]),
        st.binary(max_size=24),
    )
    | st.sampled_from(
        [
            asn1.tlv(asn1.OID, oid)
            for oid in (
                asn1.OID_DATA,
                asn1.OID_ENVELOPED_DATA,
                asn1.OID_ENCRYPTED_DATA,
                asn1.OID_RSA_ENCRYPTION,
                asn1.OID_RSAES_OAEP,
                asn1.OID_AES256_CBC,
                asn1.OID_PBES2,
                asn1.OID_PBKDF2,
                asn1.OID_PBE_SHA1_3DES,
                asn1.OID_SHROUDED_KEY_BAG,
                asn1.OID_KEY_BAG,
                asn1.OID_SAFE_CONTENTS_BAG,
                asn1.OID_CERT_BAG,
            )
        ]
        + [asn1.integer(n) for n in (0, 2, 3, 2048, 2**31)]
    ),
    lambda children: (
        st.builds(
            lambda tag, items: asn1.tlv(tag, b"".join(items)),
            st.sampled_from([asn1.SEQUENCE, asn1.SET, asn1.EXPLICIT_0, asn1.EXPLICIT_1]),
            st.lists(children, max_size=4),
        )
        | st.builds(asn1.octets, children)
    ),
    max_leaves=24,
)
pfx_shaped = st.builds(
    lambda version, safe, mac: asn1.seq(
        asn1.integer(version), asn1.content_info(asn1.OID_DATA, asn1.octets(safe)), mac
    ),
    st.sampled_from([3, 2]),
    der_trees,
    der_trees,
)
cms_shaped = st.builds(
    lambda body: asn1.content_info(asn1.OID_ENVELOPED_DATA, body),
    der_trees,
)


@FUZZ
@given(st.one_of(some_input(PFX_SEEDS), der_trees, pfx_shaped))
def test_pfx(data: bytes) -> None:
    holds(certs.parse_pfx, data)


@settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 3))  # an RSA decryption each
@given(st.one_of(some_input(CMS_SEEDS), der_trees, cms_shaped))
def test_cms_envelope(data: bytes) -> None:
    holds(certs.decrypt_enveloped, data, TRANSPORT_KEY)


# -- JSON documents --------------------------------------------------------------------------


@st.composite
def imds_with_a_member_replaced(draw: st.DrawFn) -> bytes:
    document = json.loads(draw(st.sampled_from(IMDS_SEEDS)))
    compute = document["compute"]
    targets: list[tuple[Any, Any]] = [(document, "compute")]
    targets += [(compute, key) for key in compute]
    for container_key in ("osProfile",):
        if isinstance(compute.get(container_key), dict):
            targets += [(compute[container_key], key) for key in compute[container_key]]
    for key in compute.get("publicKeys") or []:
        targets += [(key, member) for member in key]
    parent, key = draw(st.sampled_from(targets))
    if draw(st.booleans()):
        parent[key] = draw(json_values)
    else:
        del parent[key]
    return json.dumps(document).encode()


@FUZZ
@given(st.one_of(some_input(IMDS_SEEDS), imds_with_a_member_replaced()))
def test_imds(data: bytes) -> None:
    try:
        instance = imds.parse_instance(data)
    except AzagentError:
        return
    holds(instance.decoded_user_data)
    holds(instance.host_name)


@FUZZ
@given(
    st.one_of(
        some_input(PROVISIONING_SEEDS),
        json_values.map(lambda value: json.dumps(value).encode()),
    )
)
def test_provisioning_handoff(data: bytes) -> None:
    holds(provisioning.ProvisioningData.from_json, data)


@FUZZ
@given(st.one_of(some_input(RESULT_SEEDS), json_values.map(lambda v: json.dumps(v).encode())))
def test_stage_results(data: bytes) -> None:
    holds(results.Result.from_json, data)


# -- waagent.conf ---------------------------------------------------------------------------

config_lines = st.lists(
    st.builds(
        lambda key, sep, value, comment: f"{key}{sep}{value}{comment}",
        st.sampled_from([key.name for key in config.KEYS]) | texts,
        st.sampled_from(["=", " = ", "", "=="]),
        texts,
        st.sampled_from(["", "#", " # note", "#=x"]),
    ),
    max_size=8,
).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.one_of(some_input(CONFIG_SEEDS), config_lines))
def test_waagent_conf(data: bytes) -> None:
    try:
        loaded = config.loads(data)
    except AzagentError:
        return
    # What was accepted renders and reads back the same.
    rendered = "\n".join(
        f"{key.name}={key.format(loaded.values[key.name])}" for key in config.KEYS
    ).encode()
    assert config.loads(rendered).values == loaded.values


# -- DHCP leases ------------------------------------------------------------------------------

dhclient_statements = st.one_of(
    texts.map(lambda t: f'interface "{t}"'),
    st.one_of(st.binary(max_size=6).map(lambda b: ":".join(f"{x:x}" for x in b)), texts).map(
        lambda v: f"option unknown-245 {v}"
    ),
    texts.map(lambda t: f'option unknown-245 "{t}"'),
    st.lists(texts, max_size=4).map(lambda v: f"option routers {','.join(v)}"),
    st.lists(st.integers(-1, 300) | texts, max_size=12).map(
        lambda v: f"option rfc3442-classless-static-routes {','.join(map(str, v))}"
    ),
    st.one_of(
        texts,
        st.integers().map(lambda n: f"epoch {n}"),
        st.sampled_from(["never", "0 never", "4 2152/07/23 23:27:10", "4 2015/13/40 99:99:99"]),
    ).map(lambda v: f"expire {v}"),
    texts,
)
dhclient_files = st.lists(
    st.lists(dhclient_statements, max_size=6).map(
        lambda s: "lease {\n  " + ";\n  ".join(s) + ";\n}"
    ),
    max_size=3,
).map(lambda blocks: "\n".join(blocks).encode("utf-8"))
networkd_files = st.one_of(
    st.lists(
        st.builds(
            lambda key, value: f"{key}={value}",
            st.sampled_from(["OPTION_245", "ROUTER", "CLASSLESS_ROUTES", "ROUTES", "ADDRESS"]),
            texts,
        ),
        max_size=5,
    ).map(lambda lines: "\n".join(lines).encode("utf-8")),
    st.fixed_dictionaries(
        {},
        optional={
            "Private_Options": json_values
            | st.lists(st.fixed_dictionaries({"Option": json_values, "Data": json_values})),
            "Router": json_values,
            "Classless_Routes": json_values
            | st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "DestinationString": json_values,
                        "Destination": json_values,
                        "DestinationPrefixLength": json_values,
                        "GatewayString": json_values,
                        "Gateway": json_values,
                    },
                )
            ),
        },
    ).map(lambda value: json.dumps(value).encode()),
)


@FUZZ
@given(st.one_of(some_input(DHCLIENT_SEEDS), dhclient_files))
def test_dhclient_leases(data: bytes) -> None:
    quietly(leases.parse_dhclient_leases, lease_text(data))


@FUZZ
@given(st.one_of(some_input(NETWORKD_SEEDS), networkd_files))
def test_networkd_leases(data: bytes) -> None:
    quietly(leases.parse_networkd_lease, lease_text(data))


@FUZZ
@given(some_input(DEVICE_STATE_SEEDS))
def test_networkmanager_device_state(data: bytes) -> None:
    quietly(leases.parse_device_state, lease_text(data))


# -- KVP and names ------------------------------------------------------------------------------


@FUZZ
@given(
    st.one_of(
        some_input(KVP_SEEDS),
        st.lists(
            st.builds(
                kvp.encode_record,
                st.text(
                    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20
                ),
                st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=200),
            ),
            max_size=3,
        ).map(b"".join),
    )
)
def test_kvp_pool(data: bytes) -> None:
    holds(kvp.decode_pool, data)


@FUZZ
@given(st.one_of(some_input(REPORT_SEEDS), st.lists(texts).map("|".join).map(str.encode)))
def test_kvp_report(data: bytes) -> None:
    holds(kvp.parse_provisioning_report, data.decode("utf-8", "replace"))


@FUZZ
@given(st.one_of(texts, json_values, st.text()))
def test_names(value: object) -> None:
    holds(names.user_name, value, "field")
    holds(names.host_name, value, "field")
    names.shown(value)


# -- crafted worst cases --------------------------------------------------------------------


def deep_xml(depth: int) -> bytes:
    return b"<a>" * depth + b"</a>" * depth


def pfx_with(*, mac_iterations: int = 2000, key_iterations: int = 2000, key_bags: int = 0) -> bytes:
    """A PFX shaped like the platform's whose key derivations ask for ``*_iterations`` rounds.

    Its shrouded keys are real (one EC key, encrypted once, repeated), so that
    a reader derives the key of every bag in turn, as for a genuine PFX.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    salt = b"\x01" * 8
    bags = []
    if key_bags:
        pkcs8 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        password = b"\x00\x00"  # PKCS#12's empty password
        key = certs._pkcs12_kdf(password, salt, 1, key_iterations, 24)
        iv = certs._pkcs12_kdf(password, salt, 2, key_iterations, 8)
        algorithm = asn1.algorithm(
            asn1.OID_PBE_SHA1_3DES, asn1.seq(asn1.octets(salt), asn1.integer(key_iterations))
        )
        shrouded = asn1.seq(algorithm, asn1.octets(certs._cbc_encrypt("des3", key, iv, pkcs8)))
        bag = asn1.seq(
            asn1.tlv(asn1.OID, asn1.OID_SHROUDED_KEY_BAG), asn1.tlv(asn1.EXPLICIT_0, shrouded)
        )
        bags = [bag] * key_bags
    safe = asn1.seq(asn1.content_info(asn1.OID_DATA, asn1.octets(asn1.seq(*bags))))
    mac = asn1.seq(
        asn1.seq(asn1.algorithm(asn1.OID_SHA1, asn1.tlv(asn1.NULL, b"")), asn1.octets(b"\0" * 20)),
        asn1.octets(salt),
        asn1.integer(mac_iterations),
    )
    return asn1.seq(asn1.integer(3), asn1.content_info(asn1.OID_DATA, asn1.octets(safe)), mac)


def pfx_with_encrypted_data(iterations: int, mac_iterations: Optional[int] = None) -> bytes:
    """A PFX whose encrypted certificate bag asks for ``iterations`` rounds (OpenSSL's part)."""
    salt = b"\x01" * 8
    algorithm = asn1.algorithm(
        asn1.OID_PBE_SHA1_3DES, asn1.seq(asn1.octets(salt), asn1.integer(iterations))
    )
    encrypted = asn1.seq(
        asn1.integer(0),
        asn1.seq(
            asn1.tlv(asn1.OID, asn1.OID_DATA), algorithm, asn1.tlv(asn1.CONTEXT_0, b"\0" * 16)
        ),
    )
    safe = asn1.seq(asn1.content_info(asn1.OID_ENCRYPTED_DATA, encrypted))
    parts = [asn1.integer(3), asn1.content_info(asn1.OID_DATA, asn1.octets(safe))]
    if mac_iterations is not None:
        digest = asn1.seq(
            asn1.algorithm(asn1.OID_SHA1, asn1.tlv(asn1.NULL, b"")), asn1.octets(b"\0" * 20)
        )
        parts.append(asn1.seq(digest, asn1.octets(salt), asn1.integer(mac_iterations)))
    return asn1.seq(*parts)


def deep_der(depth: int) -> bytes:
    data = asn1.tlv(asn1.NULL, b"")
    for _ in range(depth):
        data = asn1.seq(data)
    return data


def goal_state_with_incarnation(text: str) -> bytes:
    return re.sub(
        rb"<Incarnation>[^<]*</Incarnation>",
        f"<Incarnation>{text}</Incarnation>".encode(),
        GOAL_STATE_SEEDS[0],
    )


XML_PARSERS: dict[str, Callable[[bytes], object]] = {
    "ovf": ovf.parse_ovf,
    "redacted-ovf": ovf.redacted_ovf,
    "goal-state": wireserver.parse_goal_state,
    "versions": wireserver.parse_versions,
    "health": wireserver.parse_health,
    "certificates": certs.parse_certificates_xml,
}
XML_WORST = {
    "deep-nesting": lambda: deep_xml(100_000),
    "billion-laughs": lambda: (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            b'<!ENTITY %s "%s">' % (bytes([98 + i]), (b"&%s;" % bytes([97 + i])) * 10)
            for i in range(9)
        )
        + b"]><l>&j;</l>"
    ),
    "entity-in-internal-subset-only": lambda: (
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    ),
    "many-attributes": lambda: b"<a " + b" ".join(b'a%d=""' % i for i in range(80_000)) + b"/>",
    "many-namespaces": lambda: (
        b"<a " + b" ".join(b'xmlns:p%d="urn:%d"' % (i, i) for i in range(40_000)) + b"/>"
    ),
    "many-siblings": lambda: b"<a>" + b"<b/>" * 100_000 + b"</a>",
    "long-line": lambda: b"<a>" + b"x" * (MIB - 16) + b"</a>",
    "long-name": lambda: b"<" + b"a" * (MIB - 16) + b"/>",
    "over-the-size-limit": lambda: b"<a>" + b"x" * (9 * MIB) + b"</a>",
    "unicode-digit-incarnation": lambda: goal_state_with_incarnation("\u00b2"),
    "arabic-digit-incarnation": lambda: goal_state_with_incarnation("\u0661"),
}


@pytest.mark.parametrize("parser", XML_PARSERS, ids=list(XML_PARSERS))
@pytest.mark.parametrize("case", XML_WORST, ids=list(XML_WORST))
def test_xml_worst_cases(parser: str, case: str) -> None:
    data = XML_WORST[case]()
    with bounded(WORST_CASE_SECONDS):
        holds(XML_PARSERS[parser], data)


OTHER_WORST: dict[str, tuple[Callable[..., object], Callable[[], Any], Callable[..., None]]] = {
    "imds-deep": (imds.parse_instance, lambda: b"[" * 200_000 + b"]" * 200_000, holds),
    "imds-huge-number": (imds.parse_instance, lambda: b'{"compute": ' + b"1" * 5000 + b"}", holds),
    "imds-many-members": (
        imds.parse_instance,
        lambda: json.dumps({f"k{i}": i for i in range(60_000)}).encode(),
        holds,
    ),
    "imds-long-string": (
        imds.parse_instance,
        lambda: json.dumps({"compute": {"vmId": "x" * (MIB - 64)}}).encode(),
        holds,
    ),
    "imds-surrogate": (
        imds.parse_instance,
        lambda: IMDS_SEEDS[2].replace(b'"vm-1"', b'"\\ud800"', 1),
        holds,
    ),
    "handoff-deep": (
        provisioning.ProvisioningData.from_json,
        lambda: b"[" * 200_000 + b"]" * 200_000,
        holds,
    ),
    "result-deep": (results.Result.from_json, lambda: b"[" * 200_000 + b"]" * 200_000, holds),
    "pfx-deep": (certs.parse_pfx, lambda: deep_der(asn1.MAX_DEPTH + 1), holds),
    "pfx-many-elements": (
        certs.parse_pfx,
        lambda: asn1.seq(*[asn1.tlv(asn1.NULL, b"")] * (asn1.MAX_SIZE // 2 - 16)),
        holds,
    ),
    "pfx-mac-iterations": (certs.parse_pfx, lambda: pfx_with(mac_iterations=2**31 - 1), holds),
    "pfx-many-costly-keys": (
        certs.parse_pfx,
        lambda: pfx_with(key_iterations=500_000, key_bags=64),
        holds,
    ),
    "pfx-encrypted-iterations": (
        certs.parse_pfx,
        lambda: pfx_with_encrypted_data(2**31 - 1),
        holds,
    ),
    "cms-deep": (
        lambda data: certs.decrypt_enveloped(data, TRANSPORT_KEY),
        lambda: deep_der(asn1.MAX_DEPTH + 1),
        holds,
    ),
    "config-long-line": (config.loads, lambda: b"OS.SshDir=/" + b"a" * (MIB - 16), holds),
    "config-many-lines": (config.loads, lambda: b"Unknown.Key=1\n" * 70_000, holds),
    "config-many-equals": (config.loads, lambda: b"=" * (MIB - 1), holds),
    "config-over-the-size-limit": (config.loads, lambda: b"#" * (MIB + 1), holds),
    "dhclient-open-blocks": (
        leases.parse_dhclient_leases,
        lambda: "lease {\n" * 130_000,
        quietly,
    ),
    "dhclient-backslashes": (
        leases.parse_dhclient_leases,
        lambda: 'lease {\n option unknown-245 "' + "\\a" * 500_000 + '";\n expire never;\n}\n',
        quietly,
    ),
    "dhclient-quotes": (leases.parse_dhclient_leases, lambda: "lease {" + '"' * MIB, quietly),
    "dhclient-huge-epoch": (
        leases.parse_dhclient_leases,
        lambda: "lease {\n expire epoch " + "9" * 400 + ";\n}\n",
        quietly,
    ),
    "dhclient-long-line": (leases.parse_dhclient_leases, lambda: "x" * MIB, quietly),
    "networkd-deep-json": (
        leases.parse_networkd_lease,
        lambda: '{"Router": ' + "[" * 100_000 + "]" * 100_000 + "}",
        quietly,
    ),
    "networkd-infinite-prefix": (
        leases.parse_networkd_lease,
        lambda: (
            '{"Classless_Routes": [{"DestinationString": "10.0.0.0",'
            ' "DestinationPrefixLength": Infinity, "GatewayString": "10.0.0.1"}]}'
        ),
        quietly,
    ),
    "networkd-long-line": (leases.parse_networkd_lease, lambda: "OPTION_245=" + "a" * MIB, quietly),
    "device-state-long-line": (
        leases.parse_device_state,
        lambda: "unknown_245=" + "1:" * 500_000,
        quietly,
    ),
    "kvp-large-pool": (kvp.decode_pool, lambda: b"\xff" * (kvp.RECORD_SIZE * 400), holds),
    "kvp-many-fields": (kvp.parse_provisioning_report, lambda: "a=b|" * 250_000, holds),
    "names-long": (lambda value: names.host_name(value, "f"), lambda: "a" * MIB, holds),
    "names-many-characters": (
        lambda value: names.user_name(value, "f"),
        lambda: "".join(map(chr, range(0x20, 0x3000))),
        holds,
    ),
}


@pytest.mark.parametrize("case", OTHER_WORST, ids=list(OTHER_WORST))
def test_worst_cases(case: str) -> None:
    parse, build, run = OTHER_WORST[case]
    data = build()
    with bounded(WORST_CASE_SECONDS):
        run(parse, data)


# -- the class fixes, one by one ------------------------------------------------------------


def test_refusing_names_the_document_never_the_input() -> None:
    with pytest.raises(ovf.OvfError) as error, refusing(ovf.OvfError, "ovf-env.xml"):
        int("Secret-Passw0rd")
    assert str(error.value) == "ovf-env.xml: holds a value that cannot be read (ValueError)"
    document = refusing(ovf.OvfError, "ovf-env.xml")
    with pytest.raises(ovf.OvfError, match=r"^ovf-env\.xml: nested too deeply$"), document:
        raise RecursionError
    with pytest.raises(imds.ImdsError, match="its own reason"), document:
        raise imds.ImdsError("its own reason")
    with pytest.raises(OSError, match="not about the input"), document:
        raise OSError("not about the input")


def test_an_incarnation_is_ascii_digits() -> None:
    """str.isdigit() takes SUPERSCRIPT TWO (int() then raised) and ARABIC-INDIC ONE (read as 1)."""
    for digits in ("\u00b2", "\u0661"):
        with pytest.raises(xmlsafe.XmlStructureError, match="Incarnation: not a number"):
            wireserver.parse_goal_state(goal_state_with_incarnation(digits))
    assert wireserver.parse_goal_state(goal_state_with_incarnation("12")).incarnation == 12


def test_imds_refuses_a_lone_surrogate() -> None:
    document = IMDS_SEEDS[2].replace(b'"westus"', b'"west\\ud800"', 1)
    with pytest.raises(imds.ImdsError, match=r"compute\.location: contains a lone surrogate"):
        imds.parse_instance(document)


def test_a_pfx_asking_for_too_many_rounds_is_refused_before_any() -> None:
    too_many = "iteration counts over 1000000 rounds in all"
    with pytest.raises(certs.CertificateError, match=f"PFX MAC: {too_many}"):
        certs.parse_pfx(pfx_with(mac_iterations=2**31 - 1))
    with pytest.raises(certs.CertificateError, match=f"encrypted bag: {too_many}"):
        certs.parse_pfx(pfx_with_encrypted_data(2**31 - 1))
    # Each under the limit, too many in all.
    with pytest.raises(certs.CertificateError, match=too_many):
        certs.parse_pfx(pfx_with_encrypted_data(600_000, mac_iterations=600_000))
    # The platform's own PFX (2000 rounds each) is read as before.
    assert certs.parse_pfx(PFX_SEEDS[0])


def test_an_unclosed_dhclient_block_ends_the_file() -> None:
    text = 'lease {\n  interface "eth0";\n  expire never;\n}\nlease {\n  expire never;\n'
    found = leases.parse_dhclient_leases(text)
    assert [lease.interface for lease in found] == ["eth0"]  # the unclosed block ends the file
