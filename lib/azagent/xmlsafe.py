"""Parse the platform's XML documents without trusting them.

Every XML document the agent reads (ovf-env.xml, goal state, certificates,
extension configuration) comes from outside the VM, and some carry a
password. This module is the one place that turns such bytes into a tree:

* refused before parsing: more than ``max_bytes``, not UTF-8, a declared
  encoding other than UTF-8, any ``<!DOCTYPE`` or ``<!ENTITY`` (no entity
  expansion, no external fetches: the platform never sends a DTD);
* refused while parsing: a DOCTYPE the byte check could not see, entity
  declarations and external references (the expat parser itself refuses);
* every error names the document (``what``) and the problem, never a byte of
  its content, since the content may be a password.

The tree is xmltodict's, namespace-aware: an element's key is
``"<namespace-uri>:<LocalName>"`` (``LocalName`` alone when it has no
namespace). The separator is ``:`` on purpose: a local name is an XML NCName
and can never contain a colon, so the *last* colon always splits the key
unambiguously, although namespace URIs contain colons themselves. Use
:func:`qname` and :func:`split_qname` rather than building keys by hand, and
:class:`Element` to walk the tree by namespace and local name, so that the
prefixes a document happens to use never matter.

xmltodict is imported only when a document is parsed (start-up budget).
"""

from __future__ import annotations

import re

from azagent.errors import AzagentError

# expat is imported where a document is parsed: a stage that imports a
# document's module may parse none, and every stage is a fresh process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, Union
    from xml.parsers import expat

    Value = Union[dict[str, Any], str, None]

SEPARATOR = ":"
# Large enough for any provisioning or goal-state document (customData is at
# most 64 KiB before base64); small enough to bound memory on hostile input.
MAX_BYTES = 1024 * 1024

_TEXT_KEY = "#text"
_ATTRIBUTE_PREFIX = "@"

# Patterns, compiled by re (and cached) when a document is first checked.
_DTD_MARKUP = rb"(?i)<!\s*(?:DOCTYPE|ENTITY)"
_DECLARATION = rb"\A(?:\xef\xbb\xbf)?<\?xml\s[^>]*?\?>"
_DECLARED_ENCODING = rb"""\sencoding\s*=\s*(["'])([A-Za-z0-9._-]*)\1"""


class XmlError(AzagentError):
    """An XML document could not be used; the message never quotes its content."""


class XmlTooLarge(XmlError):
    """The document is over the size cap."""


class XmlEncodingError(XmlError):
    """The document is not UTF-8 (or declares another encoding)."""


class XmlRefused(XmlError):
    """The document carries a DOCTYPE or an entity declaration."""


class XmlMalformed(XmlError):
    """The document is not well-formed XML (or namespace-well-formed)."""


class XmlStructureError(XmlError):
    """Well-formed XML, but an element is missing, repeated or of the wrong kind."""


def qname(namespace: str, local: str) -> str:
    """The tree key of element ``local`` in ``namespace`` ("" for none)."""
    return f"{namespace}{SEPARATOR}{local}" if namespace else local


def split_qname(key: str) -> tuple[str, str]:
    """``(namespace, local)`` of a tree key; the namespace is "" when there is none."""
    namespace, _, local = key.rpartition(SEPARATOR)
    return namespace, local


def _refuse_dtd(*_args: object) -> None:
    raise _DtdFound


def _refuse_external(*_args: object) -> int:
    raise _DtdFound


class _DtdFound(Exception):
    """Raised from inside expat; turned into XmlRefused with the document's name."""


class _GuardedExpat:
    """Stands in for the ``expat`` module in xmltodict: its parsers refuse DTDs.

    The byte check in :func:`check` already refuses ``<!DOCTYPE``; this is the
    second lock, in the parser itself, should a DOCTYPE ever get past it.
    """

    # Named as expat's function, since xmltodict calls expat.ParserCreate(...).
    @staticmethod
    def ParserCreate(
        encoding: str | None = None, namespace_separator: str | None = None
    ) -> expat.XMLParserType:
        from xml.parsers import expat

        parser = expat.ParserCreate(encoding, namespace_separator)
        parser.StartDoctypeDeclHandler = _refuse_dtd
        parser.EntityDeclHandler = _refuse_dtd
        parser.UnparsedEntityDeclHandler = _refuse_dtd
        parser.ExternalEntityRefHandler = _refuse_external
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        return parser


def check(data: bytes, *, what: str, max_bytes: int = MAX_BYTES) -> None:
    """Refuse, before any parsing, what no platform document ever contains."""
    if not isinstance(data, bytes):
        raise TypeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise XmlTooLarge(f"{what}: {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        # The exception's own text quotes the offending byte: keep only its position.
        raise XmlEncodingError(f"{what}: not valid UTF-8 (at byte {e.start})") from None
    declaration = re.match(_DECLARATION, data)
    if declaration:
        encoding = re.search(_DECLARED_ENCODING, declaration.group(0))
        if encoding and encoding.group(2).lower() not in (b"utf-8", b"utf8"):
            raise XmlEncodingError(f"{what}: declares an encoding other than UTF-8")
    if re.search(_DTD_MARKUP, data):
        raise XmlRefused(f"{what}: contains a DOCTYPE or entity declaration, which is refused")


def _malformed(what: str, error: expat.ExpatError) -> XmlMalformed:
    # ErrorString() is expat's fixed description of the error code; the
    # ExpatError text is the same, but building it ourselves guarantees that no
    # document content can ever slip into the message.
    from xml.parsers import expat

    problem = expat.ErrorString(error.code) or "syntax error"
    return XmlMalformed(
        f"{what}: not well-formed XML ({problem}, line {error.lineno}, column {error.offset})"
    )


def parse(data: bytes, *, what: str, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """The namespace-aware xmltodict tree of ``data``, or an :class:`XmlError`.

    ``what`` names the document in error messages ("ovf-env.xml"). Text is
    kept exactly as written (no whitespace stripping: a password may start or
    end with a space); :meth:`Element.text` strips on request.
    """
    check(data, what=what, max_bytes=max_bytes)
    from xml.parsers import expat

    import xmltodict  # type: ignore[import-untyped,unused-ignore]

    try:
        tree = xmltodict.parse(
            data,
            encoding="utf-8",
            expat=_GuardedExpat,
            process_namespaces=True,
            namespace_separator=SEPARATOR,
            disable_entities=True,
            strip_whitespace=False,
        )
    except _DtdFound:
        raise XmlRefused(f"{what}: contains a DTD or entity reference, which is refused") from None
    except expat.ExpatError as e:
        raise _malformed(what, e) from None
    except ValueError:
        # xmltodict's own entity guard; unreachable while DOCTYPE is refused first.
        raise XmlRefused(f"{what}: declares an entity, which is refused") from None
    except RecursionError:
        raise XmlMalformed(f"{what}: nested too deeply") from None
    if not isinstance(tree, dict) or len(tree) != 1:
        raise XmlMalformed(f"{what}: no root element")
    return tree


def _end_of_start_tag(data: bytes, start: int, what: str) -> int:
    """Index of the ``>`` closing the start tag at ``start`` (quotes may hold a ``>``)."""
    quote = 0
    for index in range(start, len(data)):
        byte = data[index]
        if quote:
            if byte == quote:
                quote = 0
        elif byte in (0x22, 0x27):  # " or '
            quote = byte
        elif byte == 0x3E:  # >
            return index
    raise XmlMalformed(f"{what}: unterminated start tag")  # expat says so first


def clear_elements(
    data: bytes, *, what: str, local_names: frozenset[str], max_bytes: int = MAX_BYTES
) -> bytes:
    """``data`` with the content of every element named in ``local_names`` removed.

    Matching is on the local name in any namespace, so that a prefix or a
    namespace nobody expected cannot keep a secret in. Everything else,
    including whitespace, comments and the elements' own tags and attributes,
    is kept byte for byte: ``<UserPassword>x</UserPassword>`` becomes
    ``<UserPassword></UserPassword>``.
    """
    check(data, what=what, max_bytes=max_bytes)
    from xml.parsers import expat

    parser = _GuardedExpat.ParserCreate("utf-8", SEPARATOR)
    spans: list[tuple[int, int]] = []
    state = {"depth": 0, "content": 0}

    def start(name: str, _attributes: object) -> None:
        if state["depth"]:
            state["depth"] += 1
            return
        if split_qname(name)[1] in local_names:
            tag_end = _end_of_start_tag(data, parser.CurrentByteIndex, what)
            if data[tag_end - 1] != 0x2F:  # not an empty-element tag <X/>
                state["depth"] = 1
                state["content"] = tag_end + 1

    def end(_name: str) -> None:
        if state["depth"]:
            state["depth"] -= 1
            if not state["depth"]:
                spans.append((state["content"], parser.CurrentByteIndex))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except _DtdFound:
        raise XmlRefused(f"{what}: contains a DTD or entity reference, which is refused") from None
    except expat.ExpatError as e:
        raise _malformed(what, e) from None
    pieces = []
    position = 0
    for begin, finish in spans:
        pieces.append(data[position:begin])
        position = finish
    pieces.append(data[position:])
    return b"".join(pieces)


class Element:
    """One element of a :func:`parse` tree, walked by namespace and local name.

    ``path`` (local names from the root, joined by ``/``) and ``what`` only
    serve error messages.
    """

    __slots__ = ("key", "path", "value", "what")

    def __init__(self, key: str, value: Value, path: str, what: str) -> None:
        self.key: Final = key
        self.value: Final = value
        self.path: Final = path
        self.what: Final = what

    @classmethod
    def root(cls, tree: dict[str, Any], *, what: str) -> Element:
        ((key, value),) = tree.items()
        return cls(key, value, split_qname(key)[1], what)

    @property
    def namespace(self) -> str:
        return split_qname(self.key)[0]

    @property
    def local(self) -> str:
        return split_qname(self.key)[1]

    def is_(self, namespace: str, local: str) -> bool:
        return self.key == qname(namespace, local)

    def _error(self, problem: str, path: str | None = None) -> XmlStructureError:
        return XmlStructureError(f"{self.what}: {path or self.path}: {problem}")

    def children(self, namespace: str, local: str) -> list[Element]:
        """Every child element with this name, in document order."""
        if not isinstance(self.value, dict):
            return []
        found = self.value.get(qname(namespace, local))
        if found is None and qname(namespace, local) not in self.value:
            return []
        values = found if isinstance(found, list) else [found]
        path = f"{self.path}/{local}"
        return [Element(qname(namespace, local), v, path, self.what) for v in values]

    def child(self, namespace: str, local: str) -> Element | None:
        """The child element with this name, None when absent; an error when repeated."""
        found = self.children(namespace, local)
        if len(found) > 1:
            raise self._error(f"appears {len(found)} times, expected once", found[0].path)
        return found[0] if found else None

    def require(self, namespace: str, local: str) -> Element:
        """The child element with this name; an error when absent or repeated."""
        found = self.child(namespace, local)
        if found is None:
            raise self._error("missing", f"{self.path}/{local}")
        return found

    def has_children(self) -> bool:
        return isinstance(self.value, dict) and any(
            not k.startswith(_ATTRIBUTE_PREFIX) and k != _TEXT_KEY for k in self.value
        )

    def text(self, *, strip: bool = False) -> str:
        """The element's text ("" when empty); an error when it holds elements."""
        if self.has_children():
            raise self._error("holds elements where text was expected")
        if self.value is None:
            text = ""
        elif isinstance(self.value, str):
            text = self.value
        else:
            text = str(self.value.get(_TEXT_KEY) or "")
        return text.strip() if strip else text

    def attribute(self, namespace: str, local: str) -> str | None:
        """The value of an attribute, None when absent."""
        if not isinstance(self.value, dict):
            return None
        value = self.value.get(_ATTRIBUTE_PREFIX + qname(namespace, local))
        return value if isinstance(value, str) else None
