"""What each kind of configuration string accepts: one Rule per kind of value.

Pure: regular expressions and string checks, no I/O. :mod:`azagent.config`
declares each key with its Rule.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final, Optional

# -- what each kind of string value accepts -----------------------------------------
#
# Every string key declares its Rule, matched to where its values are used, so
# that nothing read from the file becomes more than the one name or address it
# stands for:
#
# - paths are joined under --root, written into unit files (``Where=``, where
#   '%' starts a specifier), expanded as glob patterns (deprovision's
#   ``<OS.SshDir>/ssh_host_*key*``, ``<Lib.Dir>/...``) and passed in an
#   installer's argv (``-p <DVD.MountPoint>``, which the installer may hand to
#   a shell): letters, digits and ``. _ - +`` only;
# - a filesystem type becomes ``mkfs.<type>`` and ``Type=`` of the mount unit;
# - mount options become ``Options=`` of the mount unit;
# - hosts and URLs are requests' targets, the firewall's address and the proxy
#   URL: a host name or an IP literal, and nothing but scheme, host and port.

_MAX_PATH = 4095  # PATH_MAX less its NUL
_MAX_COMPONENT = 255  # NAME_MAX


# Patterns, compiled by re (and cached) when first used: compiling runs in
# Python and each stage is a fresh process at boot, while most
# configurations set none of the keys these check.
_PATH_CHARACTER = r"[A-Za-z0-9._+/-]"
_HOST_CHARACTER = r"[A-Za-z0-9._:\[\]-]"
_URL_CHARACTER = r"[\x21-\x7e]"  # printable ASCII, no space
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_FILESYSTEM = r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}"
_MOUNT_OPTION = r"[A-Za-z][A-Za-z0-9._-]*(?:=[A-Za-z0-9._:/+@-]*)?"
_WORD = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"


def _first_outside(value: str, allowed: str) -> str | None:
    """The first character of ``value`` that ``allowed`` does not match, as repr shows it."""
    for c in value:
        if not re.fullmatch(allowed, c):
            return repr(c)
    return None


def _path_problem(value: str) -> str | None:
    bad = _first_outside(value, _PATH_CHARACTER)
    if bad is not None:
        return f"it contains {bad}"
    if not value.startswith("/"):
        return "it does not start with '/'"
    if len(value) > _MAX_PATH:
        return f"it is longer than {_MAX_PATH} characters"
    parts = value[1:].split("/")
    if parts[-1] == "":  # one trailing '/' names the same directory
        parts.pop()
    if not parts:
        return "it is the root directory itself"
    for part in parts:
        if not part:
            return "it has an empty component ('//')"
        if part in (".", ".."):
            return f"it has a {part!r} component"
        if len(part) > _MAX_COMPONENT:
            return f"a component is longer than {_MAX_COMPONENT} characters"
    return None


def _host_problem(value: str, *, brackets: bool) -> str | None:
    """A DNS name or an IP literal; an IPv6 one in brackets when ``brackets`` says so."""
    import ipaddress  # here: most configurations name no host

    bad = _first_outside(value, _HOST_CHARACTER)  # '%' too: no IPv6 zone index
    if bad is not None:
        return f"it contains {bad}"
    if value.startswith("[") or value.endswith("]"):
        if not (value.startswith("[") and value.endswith("]")):
            return "its brackets are unbalanced"
        try:
            ipaddress.IPv6Address(value[1:-1])
        except ValueError:
            return "its brackets do not hold an IPv6 address"
        return None
    if ":" in value:
        if brackets:
            return "an IPv6 address must be in brackets"
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return "it is not an IPv6 address"
        return None
    if len(value) > 253:
        return "it is longer than 253 characters"
    labels = (value[:-1] if value.endswith(".") else value).split(".")
    bad = next((label for label in labels if not re.fullmatch(_HOST_LABEL, label)), None)
    if bad is not None:
        return f"it has a label {bad[:64]!r}"
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return "it is not an IPv4 address"
    return None


def _url_problem(value: str) -> str | None:
    bad = _first_outside(value, _URL_CHARACTER)
    if bad is not None:
        return f"it contains {bad}"
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https"):
        return "its scheme is not http or https"
    if rest.endswith("/"):
        rest = rest[:-1]
    bad = next((c for c in "/?#@\\" if c in rest), None)
    if bad is not None:
        return f"it has {bad!r}: a path, query, fragment or user"
    host, port = rest, None
    if rest.startswith("[") and "]:" in rest:
        host, _, port = rest.partition("]:")
        host += "]"
    elif not rest.startswith("[") and ":" in rest:
        host, _, port = rest.partition(":")
    if not host:
        return "it has no host"
    problem = _host_problem(host, brackets=True)
    if problem is not None:
        return f"its host: {problem}"
    if port is not None and not (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        return f"its port {port[:16]!r} is not from 1 to 65535"
    return None


def _mount_options_problem(value: str) -> str | None:
    if len(value) > 512:
        return "it is longer than 512 characters"
    bad = next((o for o in value.split(",") if not re.fullmatch(_MOUNT_OPTION, o)), None)
    if bad is not None:
        return f"it has the option {bad[:64]!r}" if bad else "it has an empty option"
    return None


class Rule:
    """A kind of string value: what it accepts, said once for every key of that kind."""

    __slots__ = ("accepts", "normal", "problem")

    def __init__(
        self,
        accepts: str,  # "expected <accepts>" in error messages
        problem: Callable[[str], Optional[str]],  # what is wrong with a value, or None
        normal: Callable[[str], str] = str,  # the form a valid value is kept in
    ) -> None:
        self.accepts: Final = accepts
        self.problem: Final = problem
        self.normal: Final = normal


PATH = Rule(
    "an absolute path: normalized, under '/', of letters, digits, '.', '_', '-' and '+'"
    " (without '..', '.' or empty components, whitespace, shell or glob metacharacters)",
    _path_problem,
    lambda value: value.rstrip("/"),
)
FILESYSTEM = Rule(
    "a single word naming a filesystem type, such as ext4 or xfs (a letter or digit, then"
    " letters, digits, '.', '_' or '-', at most 32 characters)",
    lambda value: None if re.fullmatch(_FILESYSTEM, value) else "",
)
MOUNT_OPTIONS = Rule(
    "a comma-separated list of mount(8) options without spaces, such as noatime,nodev"
    " (each a name of letters, digits, '.', '_' and '-', optionally with '=' and a value of"
    " letters, digits, '.', '_', ':', '/', '+', '@' and '-')",
    _mount_options_problem,
)
HOST = Rule(
    "a host name or IP address, such as proxy.example.com, 10.0.0.1 or 2001:db8::1",
    lambda value: _host_problem(value, brackets=False),
)
URL = Rule(
    "an http:// or https:// base URL such as http://127.0.0.1:8080 (scheme, host and port only)",
    _url_problem,
)
WORD = Rule(
    "a single word of letters, digits, '.', '_', '+' or '-'",
    lambda value: None if re.fullmatch(_WORD, value) else "",
)
