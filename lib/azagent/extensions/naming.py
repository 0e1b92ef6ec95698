"""The goal-state values that become file, directory and unit names, and their rules.

A handler's name and version make its directory (``<Lib.Dir>/<Name>-<Version>``),
a multi-config extension's name and a sequence number make its settings and
status files (``config/<ext>.<seq>.settings``), a thumbprint makes the key file
an extension reads (``<Lib.Dir>/<THUMB>.prv``). All of them arrive from the
platform, so each is checked here against what real goal states carry before
anything joins it to a path: a name can never climb out of its directory,
hide in a dot file, or smuggle a control character into a unit name.

Every check raises :class:`NameRefused` with a reason that names the value's
role and quotes it only in a bounded, escaped form. Pure: no I/O.
"""

from __future__ import annotations

import re

from azagent.errors import AzagentError

# Publisher.Type names ("Microsoft.Azure.Extensions.CustomScript") and the
# extension resource names of multi-config handlers ("firstRunCommand") use
# letters, digits, '.', '_' and '-'. 128 characters is far above any real name
# and keeps "<Name>-<Version>" well inside a file name's 255 bytes.
MAX_NAME = 128
MAX_VERSION = 32
# Sequence numbers are 32-bit on the platform; a larger one is garbage.
MAX_SEQ_NO = 2**31 - 1
# Dependency levels are small integers (1, 2, 3 ...).
MAX_DEPENDENCY_LEVEL = 10_000
# Manifest and status blob URLs (a SAS URL is a few hundred characters).
MAX_URL = 4096

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)*")
# SHA-1 thumbprints are 40 hex digits; room for longer digests later.
_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40,128}")
_QUOTE_LIMIT = 80


class NameRefused(AzagentError):
    """A name, version, sequence number or thumbprint from the goal state is unusable."""


def quote(value: object) -> str:
    """``value`` for an error message: repr-escaped and cut, never raw control bytes."""
    text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 3] + "..."


def check_handler_name(name: object) -> str:
    """A handler name usable as the first part of ``<Name>-<Version>``."""
    return _check_name(name, "handler name")


def check_extension_name(name: object) -> str:
    """A multi-config extension name usable in ``<ext>.<seq>.settings``."""
    return _check_name(name, "extension name")


def _check_name(name: object, role: str) -> str:
    if not isinstance(name, str):
        raise NameRefused(f"{role} is not a string: {quote(name)}")
    if not name:
        raise NameRefused(f"{role} is empty")
    if len(name) > MAX_NAME:
        raise NameRefused(f"{role} is {len(name)} characters, over the limit of {MAX_NAME}")
    if not _NAME.fullmatch(name) or ".." in name:
        raise NameRefused(
            f"{role} {quote(name)} is refused: only letters, digits, '.', '_' and '-' are"
            " accepted, starting with a letter or digit, without '..'"
        )
    return name


def check_version(version: object, role: str = "version") -> str:
    """A dotted numeric version ("1.3", "2.1.6", "2.0.53.0")."""
    if not isinstance(version, str):
        raise NameRefused(f"{role} is not a string: {quote(version)}")
    if len(version) > MAX_VERSION or not _VERSION.fullmatch(version):
        raise NameRefused(f"{role} {quote(version)} is not a dotted number such as 1.3.0")
    return version


def version_key(version: str) -> tuple[int, ...]:
    """The numeric components of a checked version, for ordering ("1.10" > "1.9")."""
    return tuple(int(part) for part in check_version(version).split("."))


def check_seq_no(value: object, role: str = "sequence number") -> int:
    """A sequence number: a non-negative integer, or such an integer written as text."""
    return bounded_int(value, role, MAX_SEQ_NO)


def check_dependency_level(value: object) -> int:
    return bounded_int(value, "dependencyLevel", MAX_DEPENDENCY_LEVEL)


def bounded_int(value: object, role: str, maximum: int) -> int:
    if isinstance(value, bool):
        raise NameRefused(f"{role} is not a number: {quote(value)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit() and len(value) <= len(str(maximum)) + 2:
        number = int(value.strip())
    else:
        raise NameRefused(f"{role} is not a non-negative integer: {quote(value)}")
    if not 0 <= number <= maximum:
        raise NameRefused(f"{role} {number} is outside 0..{maximum}")
    return number


def check_thumbprint(value: object) -> str:
    """A certificate thumbprint: hex digits only (it names ``<THUMB>.crt`` and ``.prv``)."""
    if not isinstance(value, str) or not _THUMBPRINT.fullmatch(value):
        raise NameRefused(f"certificate thumbprint {quote(value)} is not a hex digest")
    return value


def handler_dir_name(name: str, version: str) -> str:
    """``<Name>-<Version>``, the handler's directory under Lib.Dir."""
    return f"{check_handler_name(name)}-{check_version(version)}"


def package_file_name(name: str, version: str) -> str:
    """``<Name>__<Version>.zip``, where the downloaded package is saved under Lib.Dir."""
    return f"{check_handler_name(name)}__{check_version(version)}.zip"


def check_url(value: object, role: str) -> str:
    """An http(s) URL the platform gave (a manifest, a package, the status blob).

    The value is never quoted in the reason: a URL may carry a SAS token.
    """
    if not isinstance(value, str):
        raise NameRefused(f"{role} is not a string")
    if len(value) > MAX_URL:
        raise NameRefused(f"{role} is {len(value)} characters, over the limit of {MAX_URL}")
    if not value.lower().startswith(("https://", "http://")):
        raise NameRefused(f"{role} is not an http(s) URL")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise NameRefused(f"{role} contains white space or control characters")
    return value
