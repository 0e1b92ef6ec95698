"""User and host names: one rule each, wherever a name enters or is handed on.

A name is checked where it enters (ovf-env.xml, IMDS, /etc/hostname) and
again where a stage reads it back from another stage's hand-off
(/run/azagent/provisioning.json), always by the same rule, so that what the
parsers accept is exactly what create-user, ssh-keys and hostname can act on.
Pure: no I/O.

User names: 1 to 32 characters of ``a-z``, ``0-9``, ``_`` and ``-``, the
first one ``a-z`` or ``_``. That is what every distribution's tools take by
default: useradd refuses more than 32 characters (the utmp field), Debian's
adduser wants ``NAME_REGEX="^[a-z][-a-z0-9_]*\\$?$"``, upstream shadow-utils
``[a-z_][a-z0-9_-]*[$]?``, and Azure's own clients refuse upper case, ``$``
first and most punctuation for a Linux admin user. Debian's useradd itself
takes ``..``, ``a;b`` and ``Alice``, so the tool is no guard. Left out on
purpose: upper case (a login name is case-sensitive and Azure's clients
refuse it), ``.`` (accepted by some useradd builds only) and the trailing
``$`` of Samba machine accounts (never an administrator; a key path holding
``$`` would read as a variable). Reserved and existing system accounts
(root, daemon, ...) are not a matter of syntax: create-user refuses them
against the image's own /etc/passwd.

Hostnames: an RFC 1123 DNS name. Dot-separated labels of ASCII letters,
digits and ``-`` (not first or last), 1 to 63 characters each, at most 253
in all, no trailing dot (Azure refuses one in a computer name, and
/etc/hostname takes none), not all digits (resolvers would read it as an
address). An internationalized name is given in its ``xn--`` form. A name
longer than the kernel's 64 bytes (:data:`HOST_NAME_MAX`) is valid: the
hostname stage then sets its first label as the running name and keeps the
whole name in /etc/hosts.

Nothing is normalized: the name is returned as given or refused with a
reason. Folding ``Alice`` to ``alice`` or dropping a trailing dot would make
the VM act on a name its owner did not give. The reason names the field,
what is wrong (which characters, which length) and what is accepted; the
value itself only through :func:`shown`, escaped and truncated, so that a
control character or a megabyte of text never reaches a log line, a result
file or the failure report as it is.
"""

from __future__ import annotations

import re

from azagent.errors import AzagentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

USER_NAME_MAX = 32  # useradd's limit (the utmp user field)
HOST_NAME_MAX = 64  # the kernel's limit for the running name (sethostname(2)), without the NUL
LABEL_MAX = 63  # RFC 1035
DNS_NAME_MAX = 253  # RFC 1035, in its text form without a trailing dot
SHOWN_MAX = 40  # characters of a refused value quoted in a reason
LISTED_MAX = 5  # distinct refused characters listed in a reason

_USER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_USER_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz_")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")

USER_CHARS_TEXT = "a-z, 0-9, '_' and '-'"
HOST_CHARS_TEXT = "ASCII letters, digits, '-' and '.' between labels"


class InvalidName(AzagentError):
    """A user or host name azagent will not act on; the reason names the field and why."""


def shown(value: object) -> str:
    """``value`` as a reason may quote it: escaped to ASCII, at most SHOWN_MAX characters."""
    if not isinstance(value, str):
        # Names come from XML and JSON: a non-string is a JSON value.
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "a boolean"
        if isinstance(value, (int, float)):
            return "a number"
        return "an array" if isinstance(value, list) else f"a {type(value).__name__}"
    if len(value) <= SHOWN_MAX:
        return ascii(value)
    return f"{value[:SHOWN_MAX]!a}... ({len(value)} characters)"


def _listed(characters: set[str]) -> str:
    ordered = sorted(characters)
    text = ", ".join(ascii(c) for c in ordered[:LISTED_MAX])
    return text + (", ..." if len(ordered) > LISTED_MAX else "")


def user_name_problem(value: object) -> Optional[str]:
    """What is wrong with ``value`` as a user name, or None when the rule accepts it."""
    if not isinstance(value, str):
        return "it is not a string"
    if not value:
        return "it is empty"
    if len(value) > USER_NAME_MAX:
        return f"it is {len(value)} characters long, at most {USER_NAME_MAX} allowed"
    bad = set(value) - _USER_CHARS
    if bad:
        upper = " (upper case is not accepted)" if any(c.isupper() for c in bad) else ""
        return f"it contains {_listed(bad)}{upper}: only {USER_CHARS_TEXT} are accepted"
    if value[0] not in _USER_FIRST:
        return f"it starts with {value[0]!a}: the first character must be a-z or '_'"
    return None


def host_name_problem(value: object) -> Optional[str]:
    """What is wrong with ``value`` as a hostname, or None when the rule accepts it."""
    if not isinstance(value, str):
        return "it is not a string"
    if not value:
        return "it is empty"
    if len(value) > DNS_NAME_MAX:
        return f"it is {len(value)} characters long, at most {DNS_NAME_MAX} allowed"
    bad = set(value) - _HOST_CHARS
    if bad:
        idn = (
            " (give an internationalized name in its xn-- form)"
            if any(not c.isascii() for c in bad)
            else ""
        )
        return f"it contains {_listed(bad)}: only {HOST_CHARS_TEXT} are accepted{idn}"
    if value.endswith("."):
        return "it ends with a dot: give the name without it"
    labels = value.split(".")
    for label in labels:
        if not label:
            return "it has an empty label (a leading dot or two dots in a row)"
        if len(label) > LABEL_MAX:
            return f"a label is {len(label)} characters long, at most {LABEL_MAX} allowed"
        if not _LABEL.fullmatch(label):
            return f"the label {label[:SHOWN_MAX]!a} starts or ends with '-'"
    if all(label.isdigit() for label in labels):
        return "it is all digits, which resolvers read as an IP address"
    return None


def user_name(value: object, field: str) -> str:
    """``value`` when it is a valid user name, else InvalidName naming ``field`` and why."""
    problem = user_name_problem(value)
    if problem is not None or not isinstance(value, str):
        raise InvalidName(f"{field}: {shown(value)} is not a valid user name: {problem}")
    return value


def host_name(value: object, field: str) -> str:
    """``value`` when it is a valid hostname, else InvalidName naming ``field`` and why."""
    problem = host_name_problem(value)
    if problem is not None or not isinstance(value, str):
        raise InvalidName(f"{field}: {shown(value)} is not a valid hostname: {problem}")
    return value
