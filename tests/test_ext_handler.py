"""HandlerManifest.json: WALinuxAgent's samples, real-world command shapes, hostile packages."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from azagent.errors import AzagentError
from azagent.extensions import handler
from azagent.extensions.handler import (
    Command,
    HandlerManifestError,
    parse_command,
    parse_handler_manifest,
)

SAMPLES = FIXTURES / "walinuxagent/ext/handler_manifest"
FUZZ = settings(
    derandomize=True,
    max_examples=int(os.environ.get("AZAGENT_FUZZ_EXAMPLES", "40")),
    deadline=None,
)


def manifest(body: dict[str, Any], **top: Any) -> bytes:
    commands = {f"{op}Command": f"{op}.sh" for op in handler.OPERATIONS}
    return json.dumps(
        [{"name": "X", "version": 1.0, "handlerManifest": {**commands, **body}, **top}]
    ).encode()


@pytest.mark.parametrize(
    ("sample", "flags"),
    [
        ("valid_manifest.json", (True, True, True)),
        ("manifest_boolean_fields_strings.json", (True, True, True)),  # "true", "True"
        ("manifest_boolean_fields_false.json", (False, False, False)),
        ("manifest_boolean_fields_invalid.json", (False, False, False)),  # "invalid", 1
        ("manifest_no_optional_fields.json", (False, False, False)),
    ],
)
def test_the_samples(sample: str, flags: tuple[bool, bool, bool]) -> None:
    parsed = parse_handler_manifest((SAMPLES / sample).read_bytes())
    assert (
        parsed.report_heartbeat,
        parsed.continue_on_update_failure,
        parsed.supports_multiple_extensions,
    ) == flags
    assert parsed.command(handler.INSTALL) == Command("install_cmd")
    assert parsed.command(handler.UPDATE) == Command("update_cmd")
    assert parsed.name == "ExampleHandlerLinux"
    assert parsed.version == "1.0"
    assert parsed.update_with_install  # no updateMode: install runs after update


@pytest.mark.parametrize(
    ("written", "path", "arguments"),
    [
        ("bin/custom-script-shim install", "bin/custom-script-shim", "install"),  # CustomScript
        ("extension_shim.sh -c ./vmaccess.py -i", "extension_shim.sh", "-c ./vmaccess.py -i"),
        ("./shim.sh -install", "./shim.sh", "-install"),
        ("/scripts/enable.sh", "scripts/enable.sh", ""),  # the leading "/" is not the root
        ("//x.py  --flag ", "x.py", "--flag"),
    ],
)
def test_real_command_shapes(written: str, path: str, arguments: str) -> None:
    assert parse_command(written, "enableCommand") == Command(path, arguments)


def test_the_shell_line_runs_the_file_in_the_handler_directory(tmp_path: Path) -> None:
    handler_dir = tmp_path / "Sample Handler-1.0"  # a space must not split the path
    (handler_dir / "bin").mkdir(parents=True)
    script = handler_dir / "bin" / "run.sh"
    script.write_text('#!/bin/sh\necho "ran with $1"\n')
    script.chmod(0o755)
    line = parse_command("/bin/run.sh first", "enableCommand").shell_line(str(handler_dir))
    done = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, check=True)
    assert done.stdout == "ran with first\n"


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("../../../bin/sh -c id", "leaves the handler directory"),
        ("bin/../../x", "leaves the handler directory"),
        ("run.sh\nreboot", "control characters"),
        ("run.sh\0", "control characters"),
        ("", "is empty"),
        ("/", "is empty"),
        ("$(reboot)", "only letters, digits"),
        ("`id`.sh", "only letters, digits"),
        ("x;reboot", "only letters, digits"),
        ("bin/", "names a directory"),
        ("./", "names a directory"),
        ("a" * 2000, "over the limit of 1024"),
        (17, "is not a string"),
    ],
)
def test_hostile_commands_are_refused(written: object, reason: str) -> None:
    with pytest.raises(HandlerManifestError) as caught:
        parse_command(written, "installCommand")
    assert reason in caught.value.reason
    assert "installCommand" in caught.value.reason


def test_update_mode() -> None:
    assert parse_handler_manifest(manifest({"updateMode": "UpdateWithInstall"})).update_with_install
    assert parse_handler_manifest(manifest({"updateMode": "updatewithinstall"})).update_with_install
    assert not parse_handler_manifest(
        manifest({"updateMode": "UpdateWithoutInstall"})
    ).update_with_install


def test_resource_limits() -> None:
    parsed = parse_handler_manifest(
        manifest(
            {},
            resourceLimits={
                "cpuQuotaPercentage": 25,
                "services": [
                    {"name": "mdsd.service", "cpuQuotaPercentage": "10"},
                    {"name": "amacoreagent"},
                ],
            },
        )
    )
    assert parsed.cpu_quota == 25
    assert parsed.services == (
        handler.ServiceLimit("mdsd.service", 10),
        handler.ServiceLimit("amacoreagent", None),
    )


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"cpuQuotaPercentage": "lots"}, "is not a whole percentage"),
        ({"cpuQuotaPercentage": 0}, "outside 1.."),
        ({"cpuQuotaPercentage": True}, "is not a whole percentage"),
        ({"services": [{"name": "../x.service"}]}, "is not a unit name"),
        ({"services": [{"name": "-x"}]}, "is not a unit name"),
        ({"services": [{"name": "a b.service"}]}, "is not a unit name"),
        ({"services": "x"}, "services is not a list"),
        ([], "resourceLimits is not an object"),
    ],
)
def test_bad_resource_limits(limits: Any, reason: str) -> None:
    with pytest.raises(HandlerManifestError, match="resourceLimits") as caught:
        parse_handler_manifest(manifest({}, resourceLimits=limits))
    assert reason in caught.value.reason


def test_a_missing_command_is_an_error_when_asked_for() -> None:
    data = json.dumps([{"handlerManifest": {"enableCommand": "enable.sh"}}]).encode()
    parsed = parse_handler_manifest(data)
    assert parsed.command(handler.ENABLE).path == "enable.sh"
    with pytest.raises(HandlerManifestError, match=r"HandlerManifest\.json has no updateCommand"):
        parsed.command(handler.UPDATE)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{", "not valid JSON"),
        (b"\xff", "not valid UTF-8"),
        (b"{}", "not a list starting with an object"),
        (b"[]", "not a list starting with an object"),
        (b"[1]", "not a list starting with an object"),
        (b"[{}]", "handlerManifest is missing"),
        (b'[{"handlerManifest": []}]', "handlerManifest is missing or not an object"),
        (b'[{"handlerManifest": {"updateMode": 1}}]', "updateMode is not a string"),
        (b"[" * 50_000, "not valid JSON"),
        (b" " * (handler.MAX_HANDLER_MANIFEST + 1), "over the limit"),
    ],
)
def test_a_broken_handler_manifest_is_an_error(data: bytes, reason: str) -> None:
    with pytest.raises(HandlerManifestError) as caught:
        parse_handler_manifest(data)
    assert reason in caught.value.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "installCommand",
                    "enableCommand",
                    "updateMode",
                    "reportHeartbeat",
                    "services",
                    "cpuQuotaPercentage",
                    "name",
                    "resourceLimits",
                    "handlerManifest",
                ]
            )
            | st.text(max_size=4),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@FUZZ
@given(json_values)
def test_handler_manifest_parser_raises_only_azagent_errors(document: Any) -> None:
    try:
        parsed = parse_handler_manifest(json.dumps([document]).encode())
        for operation in parsed.commands:
            parsed.command(operation).shell_line("/var/lib/waagent/X-1.0")
    except AzagentError:
        pass


@FUZZ
@given(st.text(max_size=40))
def test_every_accepted_command_stays_in_the_handler_directory(written: str) -> None:
    try:
        command = parse_command(written, "enableCommand")
    except AzagentError:
        return
    resolved = os.path.normpath(os.path.join("/lib/X-1.0", command.path))
    assert resolved.startswith("/lib/X-1.0/")
    assert "\n" not in command.shell_line("/lib/X-1.0")
