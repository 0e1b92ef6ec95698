"""The extensions goal state: WALinuxAgent's real samples, the emulator's builders, hostile input.

Both channels must give the same model for the same goal state (the
emulator's extconf builders are the test: build, parse, compare), a bad
handler must come back as that handler's error without hiding the others,
and nothing but an AzagentError may ever escape a parser.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from azagent import extconf
from azagent.errors import AzagentError
from azagent.extensions import goalstate
from azagent.extensions.goalstate import (
    ENABLED,
    FABRIC,
    ExtensionsGoalState,
    GoalStateError,
    Handler,
    parse_extensions_config,
    parse_vm_settings,
)

SAMPLES = FIXTURES / "walinuxagent"
XML_SAMPLES = sorted(
    [
        *SAMPLES.glob("wire/ext_conf*.xml"),
        *SAMPLES.glob("wire/multi-config/*.xml"),
        *SAMPLES.glob("wire/invalid_config/*.xml"),
        *SAMPLES.glob("hostgaplugin/ext_conf*.xml"),
    ]
)
JSON_SAMPLES = sorted(
    p for p in SAMPLES.glob("hostgaplugin/vm_settings*.json") if "parse_error" not in p.name
)
THUMB = "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"
# Few examples and a fixed seed keep the fast tier fast and repeatable;
# AZAGENT_FUZZ_EXAMPLES=2000 explores further by hand.
FUZZ_EXAMPLES = int(os.environ.get("AZAGENT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    derandomize=True,
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def xml(path: str, incarnation: int | None = None) -> ExtensionsGoalState:
    return parse_extensions_config((SAMPLES / path).read_bytes(), incarnation)


def vm(path: str, etag: str = "1234") -> ExtensionsGoalState:
    return parse_vm_settings((SAMPLES / path).read_bytes(), etag)


def names(goal: ExtensionsGoalState) -> list[str]:
    return [handler.name for handler in goal.handlers]


def by_name(goal: ExtensionsGoalState, name: str) -> Handler:
    found = goal.handler(name)
    assert found is not None, name
    return found


# --- the real samples ------------------------------------------------------------


@pytest.mark.parametrize("path", XML_SAMPLES, ids=lambda p: str(p.relative_to(SAMPLES)))
def test_every_extensions_config_sample_parses(path: Path) -> None:
    goal = parse_extensions_config(path.read_bytes())
    assert goal.channel == goalstate.WIRESERVER
    assert goal.source == FABRIC
    assert goal.id == f"incarnation_{goal.incarnation}"
    for handler in goal.handlers:
        if handler.error is None:
            assert handler.state in goalstate.HANDLER_STATES
            assert all(uri.startswith("http") for uri in handler.manifest_uris)


@pytest.mark.parametrize("path", JSON_SAMPLES, ids=lambda p: p.name)
def test_every_vm_settings_sample_parses(path: Path) -> None:
    goal = parse_vm_settings(path.read_bytes(), "abc")
    assert goal.id == "etag_abc"
    assert goal.channel == goalstate.HOSTGAPLUGIN
    assert all(handler.error is None for handler in goal.handlers)


def test_vm_settings_sample_in_detail() -> None:
    goal = vm("hostgaplugin/vm_settings.json", etag="7")
    assert goal.id == "etag_7"
    assert goal.source == goalstate.FAST_TRACK
    assert goal.created_ticks == 637726657706205299
    assert goal.svd_seq_no == 1
    assert goal.activity_id == "a33f6f53-43d6-4625-b322-1a39651a00c9"
    assert goal.hgap_version == "1.0.8.133"
    assert goal.on_hold is True
    assert goal.required_features == ("MultipleExtensionsPerHandler",)
    assert goal.status_blob_type == goalstate.BLOCK_BLOB
    assert goal.status_upload_blob is not None
    assert goal.status_upload_blob.startswith("https://dcrcl3a0xs.blob.core.windows.net/$system/")
    assert "&sig=" in goal.status_upload_blob
    assert names(goal) == [
        "Microsoft.Azure.Monitor.AzureMonitorLinuxAgent",
        "Microsoft.Azure.Security.Monitoring.AzureSecurityLinuxAgent",
        "Microsoft.Azure.Extensions.CustomScript",
        "Microsoft.CPlat.Core.RunCommandHandlerLinux",
        "Microsoft.OSTCExtensions.VMAccessForLinux",
    ]
    monitor = goal.handlers[0]
    assert monitor.version == "1.9.1"
    assert len(monitor.manifest_uris) == 3  # location, failover, one additional
    (settings_,) = monitor.extensions
    assert settings_.name == monitor.name
    assert settings_.public_settings == {"GCS_AUTO_CONFIG": True}  # a JSON string in vmSettings
    assert settings_.thumbprint == THUMB
    assert settings_.protected_settings is not None
    assert settings_.protected_settings.startswith("MIIBsAYJKoZIhvcNAQcDoIIBoTCCAZ0CAQAxggFp")
    assert by_name(goal, "Microsoft.Azure.Extensions.CustomScript").dependency_level == 1
    run_command = by_name(goal, "Microsoft.CPlat.Core.RunCommandHandlerLinux")
    assert run_command.is_multi_config
    assert [(e.name, e.seq_no, e.state, e.dependency_level) for e in run_command.extensions] == [
        ("MCExt1", 0, ENABLED, 2),
        ("MCExt2", 0, ENABLED, 1),
        ("MCExt3", 0, ENABLED, 0),
    ]
    vm_access = by_name(goal, "Microsoft.OSTCExtensions.VMAccessForLinux")
    assert vm_access.extensions[0].public_settings is None  # absent: null in the settings file


def test_extensions_config_sample_matches_its_vm_settings() -> None:
    """The hostgaplugin samples describe one goal state through both channels."""
    wire = xml("hostgaplugin/ext_conf.xml")
    fast = vm("hostgaplugin/vm_settings.json")
    assert wire.id == "incarnation_10"
    assert wire.svd_seq_no == 10
    assert wire.created_ticks == 637726657706205217
    assert names(wire) == names(fast)
    for a, b in zip(wire.handlers, fast.handlers):
        assert a.version == b.version
        assert a.manifest_uris == b.manifest_uris
        assert [(e.name, e.seq_no, e.public_settings) for e in a.extensions] == [
            (e.name, e.seq_no, e.public_settings) for e in b.extensions
        ]
    assert wire.status_upload_blob == fast.status_upload_blob  # &amp; unescaped


def test_settings_match_their_handler_regardless_of_case() -> None:
    goal = xml("wire/ext_conf_settings_case_mismatch.xml")
    assert len(goal.handlers) == 5
    for handler in goal.handlers:
        assert handler.error is None
        assert [e.public_settings for e in handler.extensions] == [{"foo": "bar"}]


def test_a_handler_without_settings_has_no_extensions() -> None:
    goal = xml("wire/ext_conf_no_settings.xml")
    (handler,) = goal.handlers
    assert handler.error is None
    assert handler.extensions == ()
    assert handler.version == "1.0"


def test_missing_metadata_and_blob_type_take_the_defaults() -> None:
    goal = xml("wire/ext_conf-no_gs_metadata.xml")
    assert goal.created_ticks == 0
    assert goal.activity_id == goal.correlation_id == goalstate.ZERO_GUID
    assert xml("wire/ext_conf_no_public.xml").status_blob_type == goalstate.BLOCK_BLOB
    assert xml("wire/ext_conf_no_extensions-page_blob.xml").status_blob_type == goalstate.PAGE_BLOB
    assert xml("wire/ext_conf_no_extensions-no_status_blob.xml").status_upload_blob is None
    assert vm("hostgaplugin/vm_settings-invalid_blob_type.json").status_blob_type == "BlockBlob"
    assert vm("hostgaplugin/vm_settings-no_status_upload_blob.json").status_upload_blob is None


def test_the_incarnation_comes_from_the_goal_state_when_given() -> None:
    assert xml("wire/ext_conf.xml", incarnation=42).id == "incarnation_42"
    assert xml("wire/ext_conf.xml").id == "incarnation_9"


def test_multi_config_with_disabled_extensions() -> None:
    goal = xml("wire/multi-config/ext_conf_mc_disabled_extensions.xml")
    handler = by_name(goal, "OSTCExtensions.ExampleHandlerLinux")
    assert handler.is_multi_config
    assert [(e.name, e.seq_no, e.state) for e in handler.extensions] == [
        ("firstExtension", 1, "disabled"),
        ("secondExtension", 2, "disabled"),
        ("thirdExtension", 99, "enabled"),
        ("fourthExtension", 101, "enabled"),
    ]


def test_multi_config_dependencies_are_per_extension() -> None:
    goal = xml("wire/multi-config/ext_conf_with_multi_config.xml")
    run_command = by_name(goal, "Microsoft.CPlat.Core.RunCommandHandlerWindows")
    assert {e.name: e.dependency_level for e in run_command.extensions} == {
        "firstRunCommand": 0,
        "secondRunCommand": 3,
        "thirdRunCommand": 4,
    }
    vm_access = by_name(goal, "Microsoft.Compute.VMAccessAgent")
    assert vm_access.extensions[0].thumbprint == "EE22B5ECAC6A83B581A7CAC1772BEBD0E016649F"
    assert goal.status_blob_type == goalstate.PAGE_BLOB


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("ext_conf_multiple_depends_on_for_single_handler.xml", "2 DependsOn, expected one"),
        ("ext_conf_multiple_runtime_settings_same_plugin.xml", "2 RuntimeSettings, expected one"),
        ("ext_conf_multiple_settings_for_same_handler.xml", "2 PluginSettings name this handler"),
        ("ext_conf_plugin_settings_version_mismatch.xml", "the handler is version 1.0.0"),
        ("ext_conf_single_and_multi_config_settings_same_plugin.xml", "both RuntimeSettings"),
    ],
)
def test_invalid_handler_configurations_are_that_handlers_error(path: str, reason: str) -> None:
    goal = xml(f"wire/invalid_config/{path}")
    bad = by_name(goal, "OSTCExtensions.ExampleHandlerLinux")
    assert bad.error is not None
    assert reason in bad.error
    assert bad.extensions == ()
    # The document's other handlers are untouched.
    assert all(h.error is None for h in goal.handlers if h is not bad)


def test_a_bad_handler_does_not_hide_the_good_one() -> None:
    goal = xml("wire/ext_conf_invalid_and_valid_handlers.xml")
    bad = by_name(goal, "OSTCExtensions.InvalidExampleHandlerLinux")
    good = by_name(goal, "OSTCExtensions.ValidExampleHandlerLinux")
    assert bad.error == "both RuntimeSettings and ExtensionRuntimeSettings are given"
    assert good.error is None
    assert good.extensions[0].public_settings == {"foo": "bar"}


def test_the_vm_settings_syntax_error_sample_is_a_document_error() -> None:
    with pytest.raises(GoalStateError, match=r"vmSettings: not valid JSON \(.* line 3 column 32\)"):
        vm("hostgaplugin/vm_settings-parse_error.json")


# --- which document wins ---------------------------------------------------------


def test_out_of_sync_vm_settings_lose_to_the_newer_extensions_config() -> None:
    wire = xml("hostgaplugin/ext_conf.xml")
    stale = vm("hostgaplugin/vm_settings-out-of-sync.json")
    assert stale.created_ticks < wire.created_ticks
    assert goalstate.choose(wire, stale) is wire
    fresh = vm("hostgaplugin/vm_settings.json")
    assert goalstate.choose(wire, fresh) is fresh


def test_vm_settings_from_fabric_are_ignored() -> None:
    wire = xml("hostgaplugin/ext_conf.xml")
    fabric = vm("hostgaplugin/vm_settings-fabric-no_thumbprints.json")
    assert fabric.created_ticks > wire.created_ticks
    assert goalstate.choose(wire, fabric) is wire
    assert goalstate.choose(None, fabric) is None
    assert goalstate.choose(None, fabric, current=wire) is wire


def test_a_tie_goes_to_extensions_config_and_nothing_goes_back_in_time() -> None:
    goal = extconf.ExtensionsGoalState(incarnation=2, plugins=(), status_upload_blob="")
    wire = parse_extensions_config(extconf.extensions_config_xml(goal))
    fast = parse_vm_settings(vm_settings_of(goal), "e")
    assert goalstate.choose(wire, fast) is wire
    newer = dataclasses.replace(fast, created_ticks=fast.created_ticks + 1)
    assert goalstate.choose(wire, None, current=newer) is newer
    assert goalstate.choose(None, None, current=newer) is newer
    assert goalstate.choose(None, None) is None


def test_unsupported_required_features() -> None:
    assert goalstate.unsupported_features(vm("hostgaplugin/vm_settings.json")) == ()
    assert goalstate.unsupported_features(xml("wire/ext_conf_required_features.xml")) == (
        "TestRequiredFeature1",
        "TestRequiredFeature2",
        "TestRequiredFeature3",
    )


def test_hgap_versions_that_serve_vm_settings() -> None:
    assert goalstate.hgap_supports_vm_settings("1.0.8.133")
    assert goalstate.hgap_supports_vm_settings("1.0.10.0")
    assert not goalstate.hgap_supports_vm_settings("1.0.8.116")
    assert not goalstate.hgap_supports_vm_settings(None)
    assert not goalstate.hgap_supports_vm_settings("garbage")


def test_processing_order_follows_dependency_levels() -> None:
    goal = xml("wire/multi-config/ext_conf_with_disabled_multi_config.xml")
    order = [
        (h.name.rsplit(".", 1)[-1], e.name if e else None)
        for h, e in goalstate.processing_order(goal)
    ]
    # thirdRunCommand is disabled (level 4): it goes first; then ascending levels.
    assert order[0] == ("RunCommandHandlerWindows", "thirdRunCommand")
    levels = [e.dependency_level for _, e in goalstate.processing_order(goal)[1:] if e]
    assert levels == sorted(levels)
    uninstall = Handler("A.B", "1.0", goalstate.UNINSTALL)
    enabled = Handler("C.D", "1.0", ENABLED)
    goal2 = ExtensionsGoalState(
        "x", "WireServer", FABRIC, 0, 0, "", "", None, "BlockBlob", (enabled, uninstall)
    )
    assert [h.name for h, _ in goalstate.processing_order(goal2)] == ["A.B", "C.D"]


# --- the emulator's builders round-trip -------------------------------------------


def vm_settings_of(goal: extconf.ExtensionsGoalState) -> bytes:
    return extconf.vm_settings_json(goal, vm_id="vm", vm_name="name", location="here")


def assert_same_goal_state(goal: extconf.ExtensionsGoalState) -> None:
    wire = parse_extensions_config(extconf.extensions_config_xml(goal))
    fast = parse_vm_settings(vm_settings_of(goal), "etag")
    assert wire.handlers == fast.handlers
    for a in (wire, fast):
        assert a.created_ticks == goal.created_ticks
        assert a.status_upload_blob == (goal.status_upload_blob or None)
        assert a.status_blob_type == goal.status_blob_type
        assert (a.activity_id, a.correlation_id) == (goal.activity_id, goal.correlation_id)
    assert wire.incarnation == goal.incarnation
    assert fast.svd_seq_no == goal.in_svd_seq_no
    for plugin, handler in zip(goal.plugins, wire.handlers):
        assert (handler.name, handler.version, handler.state) == (
            plugin.name,
            plugin.version,
            plugin.state,
        )
        assert handler.manifest_uris[0] == plugin.location
        if plugin.settings is None:
            assert handler.extensions == ()
            continue
        (extension,) = handler.extensions
        assert extension.seq_no == plugin.seq_no
        assert extension.public_settings == plugin.settings.public_settings
        assert extension.protected_settings == plugin.settings.protected_settings


def test_the_emulators_documents_round_trip() -> None:
    goal = extconf.ExtensionsGoalState(
        incarnation=3,
        plugins=(
            extconf.Plugin(
                "Microsoft.OSTCExtensions.Sample",
                "1.3.0",
                "http://127.0.0.1:8000/manifest.xml",
                seq_no=2,
                settings=extconf.HandlerSettings({"message": "hi"}, "MIIBase64==", THUMB),
                failover_location="http://127.0.0.1:8000/failover.xml",
            ),
            extconf.Plugin("Other.Ext", "2.0", "http://127.0.0.1:8000/m2.xml", state="uninstall"),
            extconf.Plugin(
                "Third.Ext",
                "1.0",
                "http://127.0.0.1:8000/m3.xml",
                state="disabled",
                seq_no=7,
                settings=extconf.HandlerSettings({"nested": {"a": [1, 2, None]}}),
            ),
        ),
        status_upload_blob="http://127.0.0.1:8000/blob/status?sv=1&sig=abc",
        status_blob_type="PageBlob",
        activity_id="11111111-2222-3333-4444-555555555555",
    )
    assert_same_goal_state(goal)
    wire = parse_extensions_config(extconf.extensions_config_xml(goal))
    assert wire.handlers[0].manifest_uris == (
        "http://127.0.0.1:8000/manifest.xml",
        "http://127.0.0.1:8000/failover.xml",
    )
    assert wire.handlers[2].extensions[0].state == goalstate.DISABLED


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
handler_names = st.from_regex(
    r"[A-Za-z][A-Za-z0-9_-]{0,8}(\.[A-Za-z0-9_-]{1,8}){0,3}", fullmatch=True
)
versions = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}", fullmatch=True)
plugins = st.builds(
    extconf.Plugin,
    name=handler_names,
    version=versions,
    location=st.just("http://127.0.0.1:1/manifest.xml"),
    state=st.sampled_from(goalstate.HANDLER_STATES),
    seq_no=st.integers(0, 2**31 - 1),
    settings=st.none()
    | st.builds(
        extconf.HandlerSettings,
        public_settings=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        protected_settings=st.none() | st.just("MIIB+/base64=="),
        thumbprint=st.just(THUMB),
    ),
)


@FUZZ
@given(
    st.lists(plugins, max_size=4, unique_by=lambda p: p.name.casefold()),
    st.sampled_from(goalstate.BLOB_TYPES),
    st.integers(0, 2**62),
)
def test_any_emulator_goal_state_round_trips(
    plugins_: list[extconf.Plugin], blob_type: str, ticks: int
) -> None:
    goal = extconf.ExtensionsGoalState(
        incarnation=5,
        plugins=tuple(plugins_),
        status_upload_blob="https://127.0.0.1/status?sig=x",
        status_blob_type=blob_type,
        created_ticks=ticks,
    )
    assert_same_goal_state(goal)


# --- hostile input ---------------------------------------------------------------


def minimal_vm_settings(**entry: Any) -> bytes:
    base: dict[str, Any] = {"name": "Good.Handler", "version": "1.0", "state": "enabled"}
    good = dict(base)
    bad = {**base, "name": "Bad.Handler", **entry}
    return json.dumps({"extensionGoalStates": [bad, good]}).encode()


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"name": "../../etc"}, "handler name '../../etc' is refused"),
        ({"name": "a/b"}, "handler name 'a/b' is refused"),
        ({"name": ".hidden"}, "is refused"),
        ({"name": 7}, "handler name is not a string"),
        ({"name": "x" * 200}, "over the limit of 128"),
        ({"version": "1.0; rm -rf /"}, "is not a dotted number"),
        ({"version": "../1"}, "is not a dotted number"),
        ({"state": "exploded"}, "state 'exploded' is not one of enabled, disabled, uninstall"),
        ({"location": "file:///etc/shadow"}, "location is not an http(s) URL"),
        ({"location": "http://a b"}, "white space"),
        ({"isMultiConfig": "yes"}, "isMultiConfig is not true or false"),
        ({"settings": {"a": 1}}, "settings is not a list of objects"),
        ({"settings": [{}, {}], "settingsSeqNo": 1}, "single-config handler with 2 settings"),
        ({"settings": [{}], "settingsSeqNo": -1}, "settingsSeqNo -1 is outside"),
        ({"settings": [{}], "settingsSeqNo": "1e9"}, "not a non-negative integer"),
        ({"settings": [{"publicSettings": "{not json"}], "settingsSeqNo": 0}, "not valid JSON"),
        ({"settings": [{"publicSettings": "[1]"}], "settingsSeqNo": 0}, "not a JSON object"),
        (
            {"settings": [{"protectedSettings": "MIIsecret"}], "settingsSeqNo": 0},
            "name no certificate thumbprint",
        ),
        (
            {
                "settings": [
                    {"protectedSettings": "MIIsecret", "protectedSettingsCertThumbprint": "../k"}
                ],
                "settingsSeqNo": 0,
            },
            "is not a hex digest",
        ),
        (
            {
                "isMultiConfig": True,
                "settings": [{"extensionName": "../x", "seqNo": 1}],
            },
            "extension name '../x' is refused",
        ),
        (
            {
                "isMultiConfig": True,
                "settings": [
                    {"extensionName": "a", "seqNo": 1},
                    {"extensionName": "A", "seqNo": 2},
                ],
            },
            "appears more than once",
        ),
        ({"dependsOn": [{"dependencyLevel": "high"}], "settings": []}, "dependencyLevel"),
    ],
)
def test_a_hostile_vm_settings_entry_is_its_handlers_error(
    entry: dict[str, Any], reason: str
) -> None:
    goal = parse_vm_settings(minimal_vm_settings(**entry), "e")
    bad, good = goal.handlers
    assert bad.error is not None
    assert reason in bad.error, bad.error
    assert "MIIsecret" not in bad.error
    assert good.error is None
    assert good.name == "Good.Handler"


def test_an_error_handler_keeps_the_extensions_it_could_name() -> None:
    data = minimal_vm_settings(
        isMultiConfig=True,
        settings=[
            {"extensionName": "first", "seqNo": 3, "publicSettings": '{"a": 1}'},
            {"extensionName": "second", "seqNo": 4, "publicSettings": "{broken"},
        ],
    )
    bad = parse_vm_settings(data, "e").handlers[0]
    assert bad.error is not None
    assert "second" in bad.error
    assert [(e.name, e.seq_no, e.public_settings) for e in bad.extensions] == [
        ("first", 3, None),
        ("second", 4, None),
    ]


def test_a_handler_named_twice_is_an_error_both_times() -> None:
    entry = {"name": "Same.Name", "version": "1.0", "state": "enabled"}
    twice = {**entry, "name": "same.NAME"}
    data = json.dumps({"extensionGoalStates": [entry, twice]}).encode()
    assert [h.error for h in parse_vm_settings(data, "e").handlers] == [
        "the goal state names this handler more than once"
    ] * 2


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"[]", "not a JSON object"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b'{"extensionGoalStates": {}}', "extensionGoalStates is not a list"),
        (b'{"extensionGoalStates": [1]}', "extensionGoalStates[0] is not an object"),
        (b'{"statusUploadBlob": "x"}', "statusUploadBlob is not an object"),
        (b'{"statusUploadBlob": {}}', "statusUploadBlob has no value"),
        (b'{"statusUploadBlob": {"value": "ftp://x"}}', "not an http(s) URL"),
        (b'{"extensionsLastModifiedTickCount": "soon"}', "creation ticks"),
        (b'{"requiredFeatures": [{"nom": 1}]}', "requiredFeatures"),
        (b"[" * 100_000, "not valid JSON"),
        (b" " * (goalstate.MAX_DOCUMENT + 1), "over the limit"),
    ],
)
def test_a_broken_vm_settings_document_is_an_error(document: bytes, reason: str) -> None:
    with pytest.raises(GoalStateError) as caught:
        parse_vm_settings(document, "e")
    assert reason in caught.value.reason


def test_vm_settings_need_a_usable_etag() -> None:
    with pytest.raises(GoalStateError, match="ETag"):
        parse_vm_settings(b"{}", "")
    with pytest.raises(GoalStateError, match="ETag"):
        parse_vm_settings(b"{}", "a\nb")


EXTENSIONS_CONFIG = """<?xml version="1.0" encoding="utf-8"?>
<Extensions goalStateIncarnation="1">
<Plugins>{plugins}</Plugins>
<PluginSettings>{settings}</PluginSettings>
<StatusUploadBlob statusBlobType="BlockBlob">https://x/status?sig=s</StatusUploadBlob>
</Extensions>"""


def xml_config(plugins: str, settings_: str = "") -> bytes:
    return EXTENSIONS_CONFIG.format(plugins=plugins, settings=settings_).encode()


def test_hostile_extensions_config_entries_are_errors_of_their_handler() -> None:
    data = xml_config(
        '<Plugin name="../evil" version="1.0" state="enabled" location="http://m"/>'
        '<Plugin name="Bad.Version" version="1.0/.." state="enabled"/>'
        '<Plugin name="Bad.Seq" version="1.0" state="enabled"/>'
        '<Plugin name="Good.One" version="1.0" state="enabled" location="http://m"/>',
        '<Plugin name="Bad.Seq" version="1.0"><RuntimeSettings seqNo="x">{}</RuntimeSettings>'
        "</Plugin>",
    )
    goal = parse_extensions_config(data)
    errors = {h.name: h.error for h in goal.handlers}
    assert errors["../evil"] is not None
    assert "is refused" in errors["../evil"]
    assert errors["Bad.Version"] is not None
    assert "dotted number" in errors["Bad.Version"]
    assert errors["Bad.Seq"] == "seqNo is not a non-negative integer: 'x'"
    assert errors["Good.One"] is None


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><Extensions>&e;</Extensions>',
            "DOCTYPE or entity declaration, which is refused",
        ),
        (b"<Extensions><Plugins>", "not well-formed"),
        (b"<Goal/>", "root element is Goal, expected Extensions"),
        (b"<Extensions/>", "no incarnation"),
        (b'<Extensions goalStateIncarnation="-1"/>', "goalStateIncarnation"),
        (
            b'<Extensions goalStateIncarnation="1"><Plugins/><Plugins/></Extensions>',
            "appears 2 times",
        ),
        (
            b'<Extensions goalStateIncarnation="1"><StatusUploadBlob>file:///x'
            b"</StatusUploadBlob></Extensions>",
            "StatusUploadBlob is not an http(s) URL",
        ),
        (b"<Extensions>" + b" " * goalstate.MAX_DOCUMENT + b"</Extensions>", "over the limit"),
    ],
)
def test_a_broken_extensions_config_is_an_error(document: bytes, reason: str) -> None:
    with pytest.raises(GoalStateError) as caught:
        parse_extensions_config(document)
    assert reason in caught.value.reason


def test_secrets_stay_out_of_reprs_and_errors() -> None:
    goal = xml("wire/ext_conf.xml")
    extension = goal.handlers[0].extensions[0]
    assert extension.protected_settings == "MIICWgYJK"
    text = repr(goal)
    assert "MIICWgYJK" not in text
    assert "sig=" not in text
    data = xml_config(
        '<Plugin name="A.B" version="1.0" state="enabled"/>',
        '<Plugin name="A.B" version="1.0"><RuntimeSettings seqNo="0">'
        '{"runtimeSettings":[{"handlerSettings":{"protectedSettings":"TopSecretCMS",'
        '"protectedSettingsCertThumbprint":"nothex"}}]}</RuntimeSettings></Plugin>',
    )
    error = parse_extensions_config(data).handlers[0].error
    assert error is not None
    assert "TopSecretCMS" not in error
    assert "hex digest" in error


# --- nothing but AzagentError escapes ---------------------------------------------

VOCABULARY = [
    "name",
    "version",
    "state",
    "settings",
    "settingsSeqNo",
    "seqNo",
    "extensionName",
    "extensionState",
    "isMultiConfig",
    "publicSettings",
    "protectedSettings",
    "protectedSettingsCertThumbprint",
    "dependsOn",
    "dependencyLevel",
    "location",
    "additionalLocations",
    "statusUploadBlob",
    "value",
    "statusBlobType",
    "extensionGoalStates",
    "requiredFeatures",
    "inSvdSeqNo",
    "extensionsLastModifiedTickCount",
]
keyed = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.sampled_from(["enabled", "1.0", "Ok.Name", "http://x", THUMB, "{}", '{"a":1}', "../x"])
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(VOCABULARY) | st.text(max_size=5), inner, max_size=6)
    ),
    max_leaves=25,
)


def mutations(sample: bytes) -> st.SearchStrategy[bytes]:
    """The sample with a slice replaced by random bytes: near-valid documents."""
    return st.tuples(st.integers(0, len(sample)), st.integers(0, 64), st.binary(max_size=16)).map(
        lambda t: sample[: t[0]] + t[2] + sample[t[0] + t[1] :]
    )


entry_lists: st.SearchStrategy[Any] = st.lists(
    st.dictionaries(st.sampled_from(VOCABULARY), keyed), max_size=3
)
vm_settings_documents: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"extensionGoalStates": entry_lists},
    optional={
        "statusUploadBlob": keyed,
        "requiredFeatures": keyed,
        "extensionsLastModifiedTickCount": keyed,
        "inSvdSeqNo": keyed,
    },
)


@FUZZ
@given(keyed | vm_settings_documents)
def test_vm_settings_parser_raises_only_azagent_errors(document: Any) -> None:
    with contextlib.suppress(AzagentError):
        parse_vm_settings(json.dumps(document).encode(), "etag")


@FUZZ
@given(mutations((SAMPLES / "hostgaplugin/vm_settings.json").read_bytes()))
def test_vm_settings_parser_survives_mutated_samples(data: bytes) -> None:
    with contextlib.suppress(AzagentError):
        parse_vm_settings(data, "etag")


@FUZZ
@given(
    mutations((SAMPLES / "wire/multi-config/ext_conf_with_multi_config.xml").read_bytes())
    | mutations((SAMPLES / "wire/ext_conf.xml").read_bytes())
)
def test_extensions_config_parser_raises_only_azagent_errors(data: bytes) -> None:
    with contextlib.suppress(AzagentError):
        parse_extensions_config(data)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["name", "version", "state", "location", "failoverlocation"]),
            st.text(max_size=12).filter(lambda s: all(c.isprintable() for c in s)),
        ),
        max_size=5,
    ),
    st.text(max_size=40),
    st.sampled_from(["seqNo", "name", "state", "dependencyLevel"]),
    st.text(max_size=6),
)
def test_extensions_config_parser_survives_random_plugins(
    attributes: list[tuple[str, str]], runtime: str, attribute: str, value: str
) -> None:
    from xml.sax.saxutils import escape, quoteattr

    attrs = " ".join(f"{k}={quoteattr(v)}" for k, v in dict(attributes).items())
    name = dict(attributes).get("name", "")
    data = xml_config(
        f"<Plugin {attrs}/>",
        f'<Plugin name={quoteattr(name)} version="1.0"><DependsOn {attribute}={quoteattr(value)}/>'
        f"<ExtensionRuntimeSettings {attribute}={quoteattr(value)}>{escape(runtime)}"
        "</ExtensionRuntimeSettings></Plugin>",
    )
    with contextlib.suppress(AzagentError):
        parse_extensions_config(data)
