"""What a handler finds: HandlerEnvironment.json, settings files, file names, variables.

Also the naming rules every goal-state value passes before it becomes part of
a path: no value from the platform may place a file outside the handler's
directory.
"""

from __future__ import annotations

import json
import os
import posixpath

import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from azagent.errors import AzagentError
from azagent.extensions import environment, goalstate, naming
from azagent.extensions.environment import PathRefused, inside
from azagent.extensions.goalstate import Extension

HANDLER_DIR = "/var/lib/waagent/Microsoft.OSTCExtensions.Sample-1.3.0"
THUMB = "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"
FUZZ = settings(
    derandomize=True,
    max_examples=int(os.environ.get("AZAGENT_FUZZ_EXAMPLES", "40")),
    deadline=None,
)


def test_handler_environment() -> None:
    document = json.loads(
        environment.handler_environment(
            handler_name="Microsoft.OSTCExtensions.Sample", handler_dir=HANDLER_DIR
        )
    )
    assert document == [
        {
            "name": "Microsoft.OSTCExtensions.Sample",
            "version": 1.0,
            "handlerEnvironment": {
                "logFolder": "/var/log/azure/Microsoft.OSTCExtensions.Sample",
                "configFolder": f"{HANDLER_DIR}/config",
                "statusFolder": f"{HANDLER_DIR}/status",
                "heartbeatFile": f"{HANDLER_DIR}/heartbeat.log",
                "eventsFolder": "/var/log/azure/Microsoft.OSTCExtensions.Sample/events",
                "eventsFolder_preview": "/var/log/azure/Microsoft.OSTCExtensions.Sample/events",
            },
        }
    ]


def test_settings_file_of_a_real_goal_state() -> None:
    goal = goalstate.parse_extensions_config(
        (FIXTURES / "walinuxagent/wire/ext_conf.xml").read_bytes()
    )
    extension = goal.handlers[0].extensions[0]
    path, content = environment.settings_file(extension, multi_config=False)
    assert path == "config/0.settings"
    assert json.loads(content) == {
        "runtimeSettings": [
            {
                "handlerSettings": {
                    "publicSettings": {"foo": "bar"},
                    "protectedSettings": "MIICWgYJK",  # still encrypted
                    "protectedSettingsCertThumbprint": THUMB,
                }
            }
        ]
    }


def test_settings_without_public_settings_write_null() -> None:
    _, content = environment.settings_file(
        Extension("E", 5, protected_settings="MIIx", thumbprint=THUMB), multi_config=False
    )
    assert json.loads(content)["runtimeSettings"][0]["handlerSettings"]["publicSettings"] is None


def test_no_settings_is_an_empty_zero_settings_file() -> None:
    assert environment.settings_file(None, multi_config=False) == ("config/0.settings", b"")
    assert environment.status_file(None, multi_config=False) == "status/0.status"


def test_multi_config_file_names() -> None:
    extension = Extension("firstRunCommand", 12)
    assert environment.settings_file(extension, multi_config=True)[0] == (
        "config/firstRunCommand.12.settings"
    )
    assert (
        environment.status_file(extension, multi_config=True) == "status/firstRunCommand.12.status"
    )
    assert environment.handler_state_file(extension, multi_config=True) == (
        "config/firstRunCommand.HandlerState"
    )
    assert environment.handler_state_file(extension, multi_config=False) == "config/HandlerState"
    assert environment.status_file(extension, multi_config=False) == "status/12.status"


@pytest.mark.parametrize(
    "extension",
    [
        Extension("../../../etc/cron.d/x", 1),
        Extension("a/b", 1),
        Extension("..", 1),
        Extension(".bashrc", 1),
        Extension("ok", -1),
        Extension("ok\n", 1),
    ],
)
def test_a_goal_state_value_never_makes_a_path_outside(extension: Extension) -> None:
    with pytest.raises(naming.NameRefused):
        environment.settings_file(extension, multi_config=True)
    with pytest.raises(naming.NameRefused):
        environment.status_file(extension, multi_config=True)


def test_inside_refuses_what_leaves_the_handler_directory() -> None:
    assert inside(HANDLER_DIR, "config/0.settings") == f"{HANDLER_DIR}/config/0.settings"
    for relative in ("../x", "config/../../x", "/etc/passwd", ".", "", "a\0b"):
        with pytest.raises(PathRefused):
            inside(HANDLER_DIR, relative)
    with pytest.raises(PathRefused, match="not an absolute path"):
        inside("relative/dir", "config")


def test_command_environment_for_enable() -> None:
    variables = environment.command_environment(
        operation="enable",
        handler_dir=HANDLER_DIR,
        version="1.3.0",
        wire_address="168.63.129.16",
        extension=Extension("Microsoft.OSTCExtensions.Sample", 7),
    )
    assert variables == {
        "AZURE_GUEST_AGENT_EXTENSION_PATH": HANDLER_DIR,
        "AZURE_GUEST_AGENT_EXTENSION_VERSION": "1.3.0",
        "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS": "168.63.129.16",
        "ConfigSequenceNumber": "7",
        "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES": (
            '[{"Key": "ExtensionTelemetryPipeline", "Value": "1.0"}]'
        ),
        "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE": "NOT_RUN",
    }


def test_command_environment_without_settings_and_for_multi_config() -> None:
    plain = environment.command_environment(
        operation="disable", handler_dir=HANDLER_DIR, version="1.3.0", wire_address="w"
    )
    assert plain["ConfigSequenceNumber"] == "0"
    assert "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE" not in plain
    assert "ConfigExtensionName" not in plain
    multi = environment.command_environment(
        operation="install",
        handler_dir=HANDLER_DIR,
        version="1.3.0",
        wire_address="w",
        extension=Extension("second", 2),
        multi_config=True,
        uninstall_exit_code=3,
    )
    assert multi["ConfigExtensionName"] == "second"
    assert multi["AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"] == "3"


def test_command_environment_for_update() -> None:
    single = environment.command_environment(
        operation="update",
        handler_dir=HANDLER_DIR,
        version="1.4.0",
        wire_address="w",
        updating_from_version="1.3.0",
        disable_exit_codes={"Microsoft.OSTCExtensions.Sample": 0},
    )
    assert single["VERSION"] == "1.4.0"
    assert single["AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"] == "1.3.0"
    assert single["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"] == "0"
    multi = environment.command_environment(
        operation="update",
        handler_dir=HANDLER_DIR,
        version="1.4.0",
        wire_address="w",
        multi_config=True,
        disable_exit_codes={"a": 1, "b": None},
    )
    assert json.loads(multi["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODES_MULTIPLE_EXTENSIONS"]) == [
        {"extensionName": "a", "exitCode": "1"},
        {"extensionName": "b", "exitCode": "NOT_RUN"},
    ]


def test_timeouts_per_operation() -> None:
    assert environment.TIMEOUTS == {
        "install": 900,
        "update": 900,
        "disable": 900,
        "enable": 300,
        "uninstall": 300,
    }


def test_operation_timeout_only_lowers_the_contracts() -> None:
    assert environment.operation_timeout("install") == 900.0
    assert environment.operation_timeout("install", 20) == 20.0
    assert environment.operation_timeout("enable", 600) == 300.0


# --- naming ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Microsoft.Azure.Extensions.CustomScript",
        "Microsoft.AKS.Compute.AKS-Engine.Linux.Billing",
        "OSTCExtensions.ExampleHandlerLinux",
        "firstRunCommand",
        "MCExt1",
        "a_b",
    ],
)
def test_real_names_are_accepted(name: str) -> None:
    assert naming.check_handler_name(name) == name
    assert naming.check_extension_name(name) == name


def test_directory_and_package_names() -> None:
    assert naming.handler_dir_name("Microsoft.Azure.Extensions.CustomScript", "2.1.6") == (
        "Microsoft.Azure.Extensions.CustomScript-2.1.6"
    )
    assert naming.package_file_name("A.B", "1.0") == "A.B__1.0.zip"
    with pytest.raises(naming.NameRefused):
        naming.handler_dir_name("A.B", "1.0/../../x")


def test_versions_order_by_number() -> None:
    assert naming.version_key("1.10") > naming.version_key("1.9.9")
    for bad in ("", "1.", ".1", "1..2", "v1", "1.0-beta", "1" * 40):
        with pytest.raises(naming.NameRefused):
            naming.check_version(bad)


def test_thumbprints_are_hex() -> None:
    assert naming.check_thumbprint(THUMB) == THUMB
    for bad in ("../../etc/shadow", THUMB[:-1] + "G", "ABC", 5):
        with pytest.raises(naming.NameRefused):
            naming.check_thumbprint(bad)


@FUZZ
@given(st.text(max_size=30), st.integers(-5, 2**40))
def test_every_accepted_name_stays_inside(name: str, seq_no: int) -> None:
    try:
        relative, _ = environment.settings_file(Extension(name, seq_no), multi_config=True)
    except AzagentError:
        return
    joined = inside(HANDLER_DIR, relative)
    assert posixpath.dirname(joined) == f"{HANDLER_DIR}/config"
    assert "\n" not in joined
    assert "\0" not in joined


@FUZZ
@given(st.text(max_size=20), st.text(max_size=12))
def test_every_accepted_handler_directory_is_one_plain_name(name: str, version: str) -> None:
    try:
        directory = naming.handler_dir_name(name, version)
    except AzagentError:
        return
    assert "/" not in directory
    assert not directory.startswith(".")
    assert posixpath.normpath(f"/var/lib/waagent/{directory}") == f"/var/lib/waagent/{directory}"
