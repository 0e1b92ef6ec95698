"""The plugin version manifest and the version a handler gets from it."""

from __future__ import annotations

import contextlib
import os

import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from azagent import extconf
from azagent.errors import AzagentError
from azagent.extensions import manifest
from azagent.extensions.manifest import ManifestError, NoMatchingVersion, parse_manifest, pick

SAMPLE = (FIXTURES / "walinuxagent/wire/manifest.xml").read_bytes()
FUZZ = settings(
    derandomize=True,
    max_examples=int(os.environ.get("AZAGENT_FUZZ_EXAMPLES", "40")),
    deadline=None,
)


def test_the_sample_manifest() -> None:
    parsed = parse_manifest(SAMPLE)
    assert [p.version for p in parsed.versions if not p.internal] == [
        "1.0.0", "1.1.0", "1.1.1", "1.2.0", "2.0.0", "2.1.0", "2.1.1", "2.2.0",
        "3.0", "3.1", "4.0.0.0", "4.0.0.1", "4.1.0.0",
    ]  # fmt: skip
    assert [p.version for p in parsed.versions if p.internal] == ["1.3.0", "2.3.0", "2.4.0"]
    assert [p.version for p in parsed.versions if p.disallow_major_upgrade] == ["2.1.0"]
    assert parsed.versions[0].uris == (
        "http://mock-goal-state/foo.bar/zar/OSTCExtensions.ExampleHandlerLinux__1.0.0",
    )


@pytest.mark.parametrize(
    ("requested", "picked"),
    [
        ("1.0", "1.0.0"),
        ("1.1", "1.1.1"),  # prefix: the highest 1.1.x
        ("1.1.0", "1.1.0"),
        ("2.1", "2.1.1"),
        ("3", "3.1"),
        ("4.0.0", "4.0.0.1"),
        ("4", "4.1.0.0"),
        ("1", "1.3.0"),  # internal versions are candidates too, as in WALinuxAgent
        ("2", "2.4.0"),
    ],
)
def test_the_highest_matching_version_wins(requested: str, picked: str) -> None:
    assert pick(parse_manifest(SAMPLE), requested).version == picked


def test_prefixes_match_whole_components() -> None:
    assert manifest.matches("1.3", "1.3.7")
    assert manifest.matches("1.3", "1.3")
    assert not manifest.matches("1.3", "1.30.0")
    assert not manifest.matches("1.3.0", "1.3")
    assert manifest.matches("1.03", "1.3.1")  # by value, as versions compare


def test_numeric_ordering_not_text() -> None:
    data = extconf.manifest_xml({"1.9.0": ["http://a/9"], "1.10.0": ["http://a/10"]})
    assert pick(parse_manifest(data), "1").version == "1.10.0"


def test_no_match_names_the_version() -> None:
    with pytest.raises(NoMatchingVersion) as caught:
        pick(parse_manifest(SAMPLE), "5.1")
    assert caught.value.reason.startswith("version 5.1 is not in the extension manifest")
    assert "1.0.0, 1.1.0" in caught.value.reason
    with pytest.raises(NoMatchingVersion, match=r"lists none"):
        pick(parse_manifest(extconf.manifest_xml({})), "1.0")


def test_exact_finds_the_installed_version() -> None:
    parsed = parse_manifest(SAMPLE)
    found = parsed.exact("2.1.0")
    assert found is not None
    assert found.disallow_major_upgrade
    assert parsed.exact("2.1") is None


def test_the_emulators_manifest_round_trips() -> None:
    data = extconf.manifest_xml(
        {"1.3.0": ["http://127.0.0.1:1/a.zip", "http://127.0.0.1:1/b.zip"], "1.4": []}
    )
    parsed = parse_manifest(data)
    assert [(p.version, p.uris) for p in parsed.versions] == [
        ("1.3.0", ("http://127.0.0.1:1/a.zip", "http://127.0.0.1:1/b.zip")),
        ("1.4", ()),
    ]


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"<Other/>", "root element is Other"),
        (b"<PluginVersionManifest><Plugins>", "not well-formed"),
        (
            b'<!DOCTYPE m [<!ENTITY a "aaaa">]><PluginVersionManifest/>',
            "DOCTYPE or entity declaration",
        ),
        (
            b"<PluginVersionManifest><Plugins><Plugin><Version>1.0/../x</Version></Plugin>"
            b"</Plugins></PluginVersionManifest>",
            "is not a dotted number",
        ),
        (
            b"<PluginVersionManifest><Plugins><Plugin></Plugin></Plugins></PluginVersionManifest>",
            "Version: missing",
        ),
        (
            b"<PluginVersionManifest><Plugins><Plugin><Version>1.0</Version><Uris>"
            b"<Uri>file:///etc/shadow</Uri></Uris></Plugin></Plugins></PluginVersionManifest>",
            "a URI of version 1.0 is not an http(s) URL",
        ),
        (b"<PluginVersionManifest>" + b" " * manifest.MAX_MANIFEST, "over the limit"),
    ],
)
def test_a_hostile_manifest_is_an_error(document: bytes, reason: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(document)
    assert reason in caught.value.reason


def test_a_bad_requested_version_is_an_error() -> None:
    with pytest.raises(AzagentError, match="requested version"):
        pick(parse_manifest(SAMPLE), "1.*")


@FUZZ
@given(
    st.tuples(st.integers(0, len(SAMPLE)), st.integers(0, 40), st.binary(max_size=12)).map(
        lambda t: SAMPLE[: t[0]] + t[2] + SAMPLE[t[0] + t[1] :]
    ),
    st.text(max_size=8),
)
def test_manifest_parser_raises_only_azagent_errors(data: bytes, requested: str) -> None:
    with contextlib.suppress(AzagentError):
        pick(parse_manifest(data), requested)
