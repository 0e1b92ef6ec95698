"""What a handler finds when its commands run: files in its directory and variables.

The contract existing extensions rely on (EXTENSIONS.md sections 2, 4 and 6):

* ``HandlerEnvironment.json`` at the top of the handler directory, naming its
  log, config, status and events folders and its heartbeat file;
* ``config/<seq>.settings`` (multi-config ``config/<ext>.<seq>.settings``)
  with the public settings and the protected ones still encrypted, or an
  empty ``config/0.settings`` for a handler without settings;
* ``status/<seq>.status`` written by the extension, ``config/HandlerState``
  kept by the agent;
* the environment variables of each command.

File names are built from goal-state values only through :mod:`naming`'s
checks and are relative to the handler directory; :func:`inside` joins one to
that directory and refuses anything that would land outside it. Pure: no I/O.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Optional, Union

from azagent.errors import AzagentError
from azagent.extensions import handler as handler_manifest
from azagent.extensions import naming
from azagent.extensions.goalstate import Extension

# Where extensions log (Extension.LogDir in waagent.conf); one folder per handler.
DEFAULT_LOG_ROOT = "/var/log/azure"
HANDLER_ENVIRONMENT = "HandlerEnvironment.json"
HEARTBEAT = "heartbeat.log"
CONFIG_DIR = "config"
STATUS_DIR = "status"
EVENTS_DIR = "events"
# No settings: the empty settings file and the sequence number commands see.
DEFAULT_SEQ_NO = 0
NOT_RUN = "NOT_RUN"  # an exit code for a command that did not run

# Per-operation timeouts in seconds, as extensions have been written for.
TIMEOUTS = {
    handler_manifest.INSTALL: 900,
    handler_manifest.UPDATE: 900,
    handler_manifest.DISABLE: 900,
    handler_manifest.ENABLE: 300,
    handler_manifest.UNINSTALL: 300,
}


def operation_timeout(operation: str, limit: Optional[int] = None) -> float:
    """The timeout of ``operation``: the contract's, lowered to ``limit`` when that is lower.

    ``limit`` is Extensions.OperationTimeout (None: not set).
    """
    contract = TIMEOUTS[operation]
    return float(contract if limit is None else min(contract, limit))


# Features extensions may use (AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES).
EXTENSION_FEATURES = (("ExtensionTelemetryPipeline", "1.0"),)

_PREFIX = "AZURE_GUEST_AGENT"
ENV_EXTENSION_PATH = f"{_PREFIX}_EXTENSION_PATH"
ENV_EXTENSION_VERSION = f"{_PREFIX}_EXTENSION_VERSION"
ENV_WIRE_PROTOCOL_ADDRESS = f"{_PREFIX}_WIRE_PROTOCOL_ADDRESS"
ENV_SUPPORTED_FEATURES = f"{_PREFIX}_EXTENSION_SUPPORTED_FEATURES"
ENV_UNINSTALL_EXIT_CODE = f"{_PREFIX}_UNINSTALL_CMD_EXIT_CODE"
ENV_DISABLE_EXIT_CODE = f"{_PREFIX}_DISABLE_CMD_EXIT_CODE"
ENV_DISABLE_EXIT_CODES = f"{_PREFIX}_DISABLE_CMD_EXIT_CODES_MULTIPLE_EXTENSIONS"
ENV_UPDATING_FROM_VERSION = f"{_PREFIX}_UPDATING_FROM_VERSION"
ENV_SEQ_NO = "ConfigSequenceNumber"
ENV_EXTENSION_NAME = "ConfigExtensionName"
ENV_VERSION = "VERSION"

ExitCode = Union[int, str]


class PathRefused(AzagentError):
    """A path built from goal-state values would leave the handler directory."""


def _absolute(path: str, role: str) -> str:
    if not path.startswith("/") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise PathRefused(f"{role} {naming.quote(path)} is not an absolute path")
    return posixpath.normpath(path)


def inside(handler_dir: str, relative: str) -> str:
    """``relative`` under ``handler_dir``, refused when it would land anywhere else."""
    base = _absolute(handler_dir, "handler directory")
    if relative.startswith("/") or "\0" in relative:
        raise PathRefused(f"{naming.quote(relative)} is not relative to the handler directory")
    joined = posixpath.normpath(posixpath.join(base, relative))
    if joined == base or not joined.startswith(base.rstrip("/") + "/"):
        raise PathRefused(f"{naming.quote(relative)} leaves the handler directory")
    return joined


def log_dir(handler_name: str, log_root: str = DEFAULT_LOG_ROOT) -> str:
    """``/var/log/azure/<Name>``, where the handler's logs and events go."""
    return posixpath.join(_absolute(log_root, "log root"), naming.check_handler_name(handler_name))


def handler_environment(
    *, handler_name: str, handler_dir: str, log_root: str = DEFAULT_LOG_ROOT
) -> bytes:
    """The content of HandlerEnvironment.json."""
    logs = log_dir(handler_name, log_root)
    events = posixpath.join(logs, EVENTS_DIR)
    document = [
        {
            "name": naming.check_handler_name(handler_name),
            "version": 1.0,
            "handlerEnvironment": {
                "logFolder": logs,
                "configFolder": inside(handler_dir, CONFIG_DIR),
                "statusFolder": inside(handler_dir, STATUS_DIR),
                "heartbeatFile": inside(handler_dir, HEARTBEAT),
                "eventsFolder": events,
                # The name of the preview; extensions written then still read it.
                "eventsFolder_preview": events,
            },
        }
    ]
    return json.dumps(document).encode()


def _per_extension(
    extension: Optional[Extension], multi_config: bool, directory: str, suffix: str
) -> str:
    if extension is None:
        return f"{directory}/{DEFAULT_SEQ_NO}{suffix}"
    seq_no = naming.check_seq_no(extension.seq_no)
    if multi_config:
        name = naming.check_extension_name(extension.name)
        return f"{directory}/{name}.{seq_no}{suffix}"
    return f"{directory}/{seq_no}{suffix}"


def settings_file(extension: Optional[Extension], *, multi_config: bool) -> tuple[str, bytes]:
    """The settings file (relative to the handler directory) and its content.

    Without settings (``extension`` None) it is an empty ``config/0.settings``.
    Values the goal state left out are written as null: extensions have read
    them that way for years. The protected settings stay the encrypted text.
    """
    path = _per_extension(extension, multi_config, CONFIG_DIR, ".settings")
    if extension is None:
        return path, b""
    settings = {
        "publicSettings": extension.public_settings,
        "protectedSettings": extension.protected_settings,
        "protectedSettingsCertThumbprint": extension.thumbprint,
    }
    return path, json.dumps({"runtimeSettings": [{"handlerSettings": settings}]}).encode()


def status_file(extension: Optional[Extension], *, multi_config: bool) -> str:
    """Where the extension writes its status, relative to the handler directory."""
    return _per_extension(extension, multi_config, STATUS_DIR, ".status")


def handler_state_file(extension: Optional[Extension], *, multi_config: bool) -> str:
    """The agent's record of the handler's (or a multi-config extension's) state."""
    if multi_config and extension is not None:
        return f"{CONFIG_DIR}/{naming.check_extension_name(extension.name)}.HandlerState"
    return f"{CONFIG_DIR}/HandlerState"


def _exit_code(value: Optional[ExitCode]) -> str:
    return NOT_RUN if value is None else str(value)


def command_environment(
    *,
    operation: str,
    handler_dir: str,
    version: str,
    wire_address: str,
    extension: Optional[Extension] = None,
    multi_config: bool = False,
    uninstall_exit_code: Optional[ExitCode] = None,
    updating_from_version: Optional[str] = None,
    disable_exit_codes: Optional[Mapping[str, Optional[ExitCode]]] = None,
) -> dict[str, str]:
    """The variables a command of ``operation`` runs with, beyond the service's own.

    ``version`` is the installed version the command belongs to (for update:
    the version being updated to). ``uninstall_exit_code`` is what the old
    version's uninstall returned during an update (install and enable see
    NOT_RUN otherwise); ``disable_exit_codes`` maps each extension (the
    handler's name for single-config) to the old version's disable result.
    """
    if operation not in handler_manifest.OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    seq_no = DEFAULT_SEQ_NO if extension is None else naming.check_seq_no(extension.seq_no)
    environment = {
        ENV_EXTENSION_PATH: _absolute(handler_dir, "handler directory"),
        ENV_EXTENSION_VERSION: naming.check_version(version),
        ENV_WIRE_PROTOCOL_ADDRESS: wire_address,
        ENV_SEQ_NO: str(seq_no),
        ENV_SUPPORTED_FEATURES: json.dumps(
            [{"Key": key, "Value": value} for key, value in EXTENSION_FEATURES]
        ),
    }
    if multi_config and extension is not None:
        environment[ENV_EXTENSION_NAME] = naming.check_extension_name(extension.name)
    if operation in (handler_manifest.INSTALL, handler_manifest.ENABLE):
        environment[ENV_UNINSTALL_EXIT_CODE] = _exit_code(uninstall_exit_code)
    if operation == handler_manifest.UPDATE:
        environment[ENV_VERSION] = environment[ENV_EXTENSION_VERSION]
        if updating_from_version is not None:
            environment[ENV_UPDATING_FROM_VERSION] = naming.check_version(updating_from_version)
        codes = disable_exit_codes or {}
        if multi_config:
            environment[ENV_DISABLE_EXIT_CODES] = json.dumps(
                [
                    {"extensionName": name, "exitCode": _exit_code(code)}
                    for name, code in codes.items()
                ]
            )
        else:
            environment[ENV_DISABLE_EXIT_CODE] = _exit_code(next(iter(codes.values()), None))
    return environment
