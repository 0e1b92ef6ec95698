"""HandlerManifest.json: what a handler package says about itself.

Element [0] of the JSON list at the top of the package (samples:
tests/fixtures/walinuxagent/ext/handler_manifest/):
``handlerManifest{installCommand, enableCommand, disableCommand,
uninstallCommand, updateCommand, reportHeartbeat, continueOnUpdateFailure,
supportsMultipleExtensions, updateMode}`` and, beside it,
``resourceLimits{cpuQuotaPercentage, services[{name, cpuQuotaPercentage}]}``.

The package is not trusted: a command must name a file inside the handler
directory (a leading "/" is dropped, as extensions have always relied on; no
"..", no control characters, nothing shell-active in the path), and every
other field has a type. Anything else is a :class:`HandlerManifestError` with
a reason (status code 1003). Pure: no I/O.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from azagent.errors import AzagentError
from azagent.extensions.naming import quote

INSTALL = "install"
ENABLE = "enable"
DISABLE = "disable"
UNINSTALL = "uninstall"
UPDATE = "update"
OPERATIONS = (INSTALL, ENABLE, DISABLE, UNINSTALL, UPDATE)

MAX_HANDLER_MANIFEST = 256 * 1024
MAX_COMMAND = 1024
# A CPU quota is a percentage of one CPU: 200 is two CPUs.
MAX_CPU_QUOTA = 100 * 1024

# The command's executable is a relative path of plain characters: nothing the
# shell would expand, since the line goes through /bin/sh -c.
_PATH = re.compile(r"[A-Za-z0-9._+/-]+")
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]+")
_WHAT = "HandlerManifest.json"


class HandlerManifestError(AzagentError):
    """HandlerManifest.json is missing a part, malformed or hostile."""


@dataclass(frozen=True)
class Command:
    """One operation's command: a path in the handler directory and its arguments."""

    path: str  # relative to the handler directory, no leading "/", no ".."
    arguments: str = ""  # the rest of the line, as written

    def shell_line(self, handler_dir: str) -> str:
        """The line for ``/bin/sh -c``, the executable under ``handler_dir``."""
        executable = shlex.quote(f"{handler_dir.rstrip('/')}/{self.path}")
        return f"{executable} {self.arguments}" if self.arguments else executable


@dataclass(frozen=True)
class ServiceLimit:
    """A service the extension starts itself, with the CPU quota it asks for."""

    name: str
    cpu_quota: Optional[int] = None  # percent of one CPU


@dataclass(frozen=True)
class HandlerManifest:
    commands: Mapping[str, Command]  # by operation; an operation may be missing
    name: str = ""
    version: str = ""
    report_heartbeat: bool = False
    continue_on_update_failure: bool = False
    supports_multiple_extensions: bool = False
    update_with_install: bool = True  # updateMode absent or UpdateWithInstall
    cpu_quota: Optional[int] = None  # resourceLimits.cpuQuotaPercentage
    services: tuple[ServiceLimit, ...] = ()

    def command(self, operation: str) -> Command:
        """The command of ``operation``; an error naming the missing field."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        found = self.commands.get(operation)
        if found is None:
            raise HandlerManifestError(f"{_WHAT} has no {operation}Command")
        return found


def parse_command(value: object, field: str) -> Command:
    """A command as HandlerManifest.json writes it ("bin/shim install")."""
    if not isinstance(value, str):
        raise HandlerManifestError(f"{_WHAT}: {field} is not a string")
    if len(value) > MAX_COMMAND:
        raise HandlerManifestError(
            f"{_WHAT}: {field} is {len(value)} characters, over the limit of {MAX_COMMAND}"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise HandlerManifestError(f"{_WHAT}: {field} contains control characters")
    line = value.strip().lstrip("/")
    path, _, arguments = line.partition(" ")
    if not path:
        raise HandlerManifestError(f"{_WHAT}: {field} is empty")
    if not _PATH.fullmatch(path):
        raise HandlerManifestError(
            f"{_WHAT}: {field} names {quote(path)}: only letters, digits and . _ + - / are"
            " accepted in the path of a command"
        )
    parts = path.split("/")
    if ".." in parts:
        raise HandlerManifestError(f"{_WHAT}: {field} leaves the handler directory ('..')")
    if parts[-1] in ("", "."):
        raise HandlerManifestError(f"{_WHAT}: {field} names a directory, not a file")
    return Command(path=path, arguments=arguments.strip())


def parse_handler_manifest(data: bytes) -> HandlerManifest:
    if not isinstance(data, bytes):
        raise HandlerManifestError(f"{_WHAT}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_HANDLER_MANIFEST:
        raise HandlerManifestError(
            f"{_WHAT}: {len(data)} bytes, over the limit of {MAX_HANDLER_MANIFEST}"
        )
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise HandlerManifestError(f"{_WHAT}: not valid UTF-8 (at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise HandlerManifestError(
            f"{_WHAT}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    except (ValueError, RecursionError):
        raise HandlerManifestError(f"{_WHAT}: not valid JSON") from None
    if not isinstance(document, list) or not document or not isinstance(document[0], dict):
        raise HandlerManifestError(f"{_WHAT}: not a list starting with an object")
    top = document[0]
    body = top.get("handlerManifest")
    if not isinstance(body, dict):
        raise HandlerManifestError(f"{_WHAT}: handlerManifest is missing or not an object")
    commands = {
        operation: parse_command(body[f"{operation}Command"], f"{operation}Command")
        for operation in OPERATIONS
        if body.get(f"{operation}Command") is not None
    }
    update_mode = body.get("updateMode")
    if update_mode is not None and not isinstance(update_mode, str):
        raise HandlerManifestError(f"{_WHAT}: updateMode is not a string")
    cpu_quota, services = _resource_limits(top.get("resourceLimits"))
    return HandlerManifest(
        commands=commands,
        name=_text(top.get("name")),
        version=_text(top.get("version")),
        report_heartbeat=_boolean(body.get("reportHeartbeat")),
        continue_on_update_failure=_boolean(body.get("continueOnUpdateFailure")),
        supports_multiple_extensions=_boolean(body.get("supportsMultipleExtensions")),
        update_with_install=update_mode is None or update_mode.lower() == "updatewithinstall",
        cpu_quota=cpu_quota,
        services=services,
    )


def _boolean(value: object) -> bool:
    """true, or the string "true" in any case (older manifests); anything else is false."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"


def _text(value: object) -> str:
    """name and version are informational; 1.0 (a number in real manifests) becomes "1.0"."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return str(value)[:128]


def _whole(value: str | float) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    return value.strip().isdigit() and len(value) < 10


def _quota(value: object, field: str) -> Optional[int]:
    if value is None:
        return None
    number: Any = value
    if isinstance(value, (str, float)) and _whole(value):
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int):
        raise HandlerManifestError(f"{_WHAT}: {field} is not a whole percentage: {quote(value)}")
    if not 1 <= number <= MAX_CPU_QUOTA:
        raise HandlerManifestError(f"{_WHAT}: {field} {number} is outside 1..{MAX_CPU_QUOTA}")
    return number


def _resource_limits(value: object) -> tuple[Optional[int], tuple[ServiceLimit, ...]]:
    if value is None:
        return None, ()
    if not isinstance(value, dict):
        raise HandlerManifestError(f"{_WHAT}: resourceLimits is not an object")
    cpu_quota = _quota(value.get("cpuQuotaPercentage"), "resourceLimits.cpuQuotaPercentage")
    services = value.get("services") or []
    if not isinstance(services, list):
        raise HandlerManifestError(f"{_WHAT}: resourceLimits.services is not a list")
    limits = []
    for index, service in enumerate(services):
        field = f"resourceLimits.services[{index}]"
        if not isinstance(service, dict):
            raise HandlerManifestError(f"{_WHAT}: {field} is not an object")
        name = service.get("name")
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= 255
            or not _UNIT.fullmatch(name)
            or name[0] in "-."
        ):
            raise HandlerManifestError(f"{_WHAT}: {field}.name {quote(name)} is not a unit name")
        limits.append(
            ServiceLimit(
                name, _quota(service.get("cpuQuotaPercentage"), f"{field}.cpuQuotaPercentage")
            )
        )
    return cpu_quota, tuple(limits)
