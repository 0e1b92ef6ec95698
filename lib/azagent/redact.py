"""Keep secrets out of everything azagent writes for people to read.

Two complementary mechanisms, both applied by the log handlers and by every
writer of human-readable state (result files, status output):

* Values registered at run time with :func:`register` (a password read from
  the OVF, customData, a protected setting) are replaced wherever they occur,
  however a caller formatted them into a message.
* Patterns catch secrets nobody registered: PEM private keys, crypt(3) hashes,
  SAS query strings, and the OVF / extension fields that carry secrets.

:class:`Secret` wraps a value so that ``str()``, ``repr()`` and f-strings show
a placeholder; the clear value is only reachable through ``reveal()``.
"""

from __future__ import annotations

import re

PLACEHOLDER = "<redacted>"

# Shorter values would cause false positives all over ordinary text; every
# secret worth registering (password, customData, key) is longer.
_MIN_REGISTERED_LEN = 4

_registered: set[str] = set()

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys, any algorithm, including OpenSSH's own format.
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        "<redacted private key>",
    ),
    # crypt(3) hashes: $1$, $2a$/$2b$/$2y$, $5$, $6$, $y$ (yescrypt), $gy$, $7$.
    (
        re.compile(r"\$(?:1|2[abxy]|5|6|7|y|gy|sha1|md5)\$[./A-Za-z0-9$=,]{2,}"),
        "<redacted hash>",
    ),
    # Secret-bearing XML elements (OVF and extension documents), any prefix.
    (
        re.compile(
            r"<((?:[\w.-]+:)?(?:UserPassword|CustomData|UserData|ProtectedSettings"
            r"|protectedSettings|Data))(\s[^>]*)?>.*?</\1\s*>",
            re.DOTALL,
        ),
        r"<\1\2>" + PLACEHOLDER + r"</\1>",
    ),
    # Secret-bearing JSON members.
    (
        re.compile(
            r'("(?:protectedSettings|protected_settings|password|adminPassword|customData'
            r'|userData|privateKey)"\s*:\s*)"(?:[^"\\]|\\.)*"',
            re.IGNORECASE,
        ),
        r'\1"' + PLACEHOLDER + '"',
    ),
    # SAS tokens: a query string carrying a signature loses the whole query.
    (
        re.compile(r"\?([^\s\"'<>#]*&)?sig=[^\s\"'<>#]*", re.IGNORECASE),
        "?" + PLACEHOLDER,
    ),
    # Credentials in a URL: scheme://user:password@host.
    (
        re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/@:\"'<>]+:[^\s/@\"'<>]+@", re.IGNORECASE),
        r"\1" + PLACEHOLDER + "@",
    ),
    # A bare SAS signature or password assignment outside a URL.
    (
        re.compile(r"\b(sig|password|passwd)=[^\s&\"'<>]+", re.IGNORECASE),
        r"\1=" + PLACEHOLDER,
    ),
)


class Secret:
    """A value that must never be printed; ``reveal()`` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({PLACEHOLDER})"

    def __str__(self) -> str:
        return PLACEHOLDER

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def register(value: str) -> None:
    """Have every later call of :func:`redact` hide ``value``.

    Multi-line values are also registered line by line, since a message may
    quote only a part of them.
    """
    for part in (value, *value.splitlines()):
        candidate = part.strip()
        if len(candidate) >= _MIN_REGISTERED_LEN:
            _registered.add(candidate)


def forget_all() -> None:
    """Drop every registered value (for tests that need a clean slate)."""
    _registered.clear()


def redact(text: str) -> str:
    """Return ``text`` with every registered value and known secret replaced."""
    # Longest first, so that a registered value containing another is
    # replaced whole.
    for value in sorted(_registered, key=len, reverse=True):
        if value in text:
            text = text.replace(value, PLACEHOLDER)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
