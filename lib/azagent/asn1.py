"""A small, strict DER reader and writer: what the certificate exchange needs of ASN.1.

:mod:`azagent.certs` builds and reads the platform's CMS envelopes and PFX
files with these. They know tags, lengths, a few universal shapes
(AlgorithmIdentifier, ContentInfo) and the object identifiers the exchange
uses; what the elements mean is left to certs.

The reader is strict because every byte it sees comes from the network:
definite lengths only, minimal length encodings, single-byte tags, and a
bounded size and nesting depth checked in one pass before anything is
navigated. Every failure is a :class:`DerError` with a fixed reason naming
what was being read (``what``), never the data itself. Pure: no I/O, no
third-party imports.
"""

from __future__ import annotations

from azagent.errors import AzagentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

# Real certificates blobs are a few KiB; even hundreds of Key Vault
# certificates stay far below this.
MAX_SIZE = 4 * 1024 * 1024
# Real envelopes and PFX files nest fewer than 10 levels deep.
MAX_DEPTH = 32
# A PFX holds some ten elements per certificate or key (their own DER is
# opaque content here): hundreds of certificates stay far below this, and
# walking a blob of millions of tiny elements would take seconds.
MAX_ELEMENTS = 100_000

# Tags (single byte: class, constructed bit, number).
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
SEQUENCE = 0x30
SET = 0x31
CONSTRUCTED = 0x20
CONTEXT_0 = 0x80  # [0] IMPLICIT, primitive
EXPLICIT_0 = 0xA0  # [0], constructed
EXPLICIT_1 = 0xA1


class DerError(AzagentError):
    """DER input is malformed or beyond the reader's bounds; the reason never quotes it."""


# --- Writing ------------------------------------------------------------------


def oid(dotted: str) -> bytes:
    """The content octets of an OBJECT IDENTIFIER: what we write and compare."""
    arcs = [int(arc) for arc in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def tlv(tag: int, value: bytes) -> bytes:
    size = len(value)
    if size < 0x80:
        return bytes([tag, size]) + value
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + value


def seq(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def set_of(*items: bytes) -> bytes:
    """DER orders the members of a SET OF by their encodings."""
    return tlv(SET, b"".join(sorted(items)))


def integer(value: int) -> bytes:
    return tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def octets(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def algorithm(oid_octets: bytes, parameters: bytes | None = None) -> bytes:
    """An AlgorithmIdentifier; ``parameters`` are written as given (already DER)."""
    return seq(tlv(OID, oid_octets), parameters if parameters is not None else b"")


def content_info(content_type: bytes, content: bytes) -> bytes:
    return seq(tlv(OID, content_type), tlv(EXPLICIT_0, content))


# --- Object identifiers -------------------------------------------------------
# Content octets of the PKCS#1/#5/#7/#12, NIST and X.509 identifiers that the
# certificate exchange writes and compares; one spelling for certs and tests.

OID_DATA = oid("1.2.840.113549.1.7.1")
OID_ENVELOPED_DATA = oid("1.2.840.113549.1.7.3")
OID_ENCRYPTED_DATA = oid("1.2.840.113549.1.7.6")
OID_RSA_ENCRYPTION = oid("1.2.840.113549.1.1.1")
OID_RSAES_OAEP = oid("1.2.840.113549.1.1.7")
OID_MGF1 = oid("1.2.840.113549.1.1.8")
OID_DES3_CBC = oid("1.2.840.113549.3.7")
OID_AES128_CBC = oid("2.16.840.1.101.3.4.1.2")
OID_AES192_CBC = oid("2.16.840.1.101.3.4.1.22")
OID_AES256_CBC = oid("2.16.840.1.101.3.4.1.42")
OID_SHA1 = oid("1.3.14.3.2.26")
OID_SHA256 = oid("2.16.840.1.101.3.4.2.1")
OID_SHA384 = oid("2.16.840.1.101.3.4.2.2")
OID_SHA512 = oid("2.16.840.1.101.3.4.2.3")
OID_HMAC_SHA1 = oid("1.2.840.113549.2.7")
OID_HMAC_SHA256 = oid("1.2.840.113549.2.9")
OID_HMAC_SHA384 = oid("1.2.840.113549.2.10")
OID_HMAC_SHA512 = oid("1.2.840.113549.2.11")
OID_PBES2 = oid("1.2.840.113549.1.5.13")
OID_PBKDF2 = oid("1.2.840.113549.1.5.12")
OID_PBE_SHA1_3DES = oid("1.2.840.113549.1.12.1.3")
OID_KEY_BAG = oid("1.2.840.113549.1.12.10.1.1")
OID_SHROUDED_KEY_BAG = oid("1.2.840.113549.1.12.10.1.2")
OID_CERT_BAG = oid("1.2.840.113549.1.12.10.1.3")
OID_SAFE_CONTENTS_BAG = oid("1.2.840.113549.1.12.10.1.6")
OID_X509_CERTIFICATE = oid("1.2.840.113549.1.9.22.1")
OID_LOCAL_KEY_ID = oid("1.2.840.113549.1.9.21")


# --- Reading ------------------------------------------------------------------


class Tlv:
    """One DER element; ``encoded`` is the whole element, header included."""

    __slots__ = ("encoded", "header", "tag")

    def __init__(self, tag: int, encoded: bytes, header: int) -> None:
        self.tag: Final = tag
        self.encoded: Final = encoded
        self.header: Final = header

    @property
    def value(self) -> bytes:
        return self.encoded[self.header :]


def header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Tag, content start and content end of the element at ``pos``; strict DER."""
    if end - pos < 2:
        raise DerError("DER element is truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("DER tag is not supported")
    first = data[pos + 1]
    pos += 2
    if first == 0x80:
        raise DerError("DER indefinite length is not allowed")
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count > 4:
            raise DerError("DER length is too large")
        if end - pos < count:
            raise DerError("DER element is truncated")
        raw = data[pos : pos + count]
        size = int.from_bytes(raw, "big")
        if raw[0] == 0 or size < 0x80:
            raise DerError("DER length is not minimal")
        pos += count
    if size > end - pos:
        raise DerError("DER length points past the end of the data")
    return tag, pos, pos + size


def is_one_element(data: bytes) -> bool:
    """Whether ``data`` is exactly one element by its outer header (contents unchecked)."""
    try:
        return header(data, 0, len(data))[2] == len(data)
    except DerError:
        return False


def split(data: bytes) -> list[Tlv]:
    """The elements that exactly fill ``data`` (the content of a constructed value)."""
    elements = []
    pos = 0
    while pos < len(data):
        tag, start, end = header(data, pos, len(data))
        elements.append(Tlv(tag, data[pos:end], start - pos))
        pos = end
    return elements


def decode(data: bytes, what: str) -> Tlv:
    """Check that ``data`` is one well-formed DER element, bounded, and return it.

    The whole tree is walked up front (iteratively, with a depth limit) so that
    later navigation meets no surprise and a hostile blob costs at most one pass.
    """
    if len(data) > MAX_SIZE:
        raise DerError(f"{what} is too large")
    first_tag, content, end = header(data, 0, len(data))
    if end != len(data):
        raise DerError(f"{what} has trailing bytes")
    pending = [(content, end, 1)] if first_tag & CONSTRUCTED else []
    count = 1
    while pending:
        pos, stop, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise DerError(f"{what} is nested too deeply")
        while pos < stop:
            tag, start, pos = header(data, pos, stop)
            count += 1
            if count > MAX_ELEMENTS:
                raise DerError(f"{what} has more than {MAX_ELEMENTS} elements")
            if tag & CONSTRUCTED:
                pending.append((start, pos, depth + 1))
    return Tlv(first_tag, data, content)


def fields(element: Tlv, what: str, tag: int = SEQUENCE) -> list[Tlv]:
    """The members of a SEQUENCE (or of ``tag``); any other tag is malformed."""
    if element.tag != tag:
        raise DerError(f"{what} is malformed")
    return split(element.value)


def expect(element: Tlv, tag: int, what: str) -> bytes:
    """The content of ``element``, which must carry ``tag``."""
    if element.tag != tag:
        raise DerError(f"{what} is malformed")
    return element.value


def small_int(element: Tlv, what: str) -> int:
    """A non-negative INTEGER that fits 32 bits (versions, iteration counts)."""
    raw = expect(element, INTEGER, what)
    non_minimal = len(raw) > 1 and raw[0] == 0 and raw[1] < 0x80
    if not raw or len(raw) > 5 or raw[0] & 0x80 or non_minimal:
        raise DerError(f"{what} is malformed")
    value = int.from_bytes(raw, "big")
    if value >= 1 << 32:
        raise DerError(f"{what} is malformed")
    return value


def explicit(element: Tlv, tag: int, what: str) -> Tlv:
    """The single element inside an EXPLICIT context tag."""
    inner = fields(element, what, tag)
    if len(inner) != 1:
        raise DerError(f"{what} is malformed")
    return inner[0]


def read_content_info(element: Tlv, what: str) -> tuple[bytes, Tlv]:
    """(content type OID octets, content) of a ContentInfo."""
    parts = fields(element, what)
    if len(parts) != 2:
        raise DerError(f"{what} is malformed")
    return expect(parts[0], OID, what), explicit(parts[1], EXPLICIT_0, what)


def read_algorithm(element: Tlv, what: str) -> tuple[bytes, Tlv | None]:
    """(OID octets, parameters) of an AlgorithmIdentifier; NULL parameters read as None."""
    parts = fields(element, what)
    if not 1 <= len(parts) <= 2:
        raise DerError(f"{what} is malformed")
    oid_octets = expect(parts[0], OID, what)
    if len(parts) == 1 or parts[1].tag == NULL:
        return oid_octets, None
    return oid_octets, parts[1]


class Rounds:
    """The key derivation rounds a document may still ask for, counted before any is derived.

    A password-based encryption's iteration count is the work its reader
    must do: a hostile PFX asking for billions of rounds, in its MAC, its
    encrypted bags or each of its keys, would hold a stage for minutes.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, count: Tlv, what: str) -> None:
        """Take an INTEGER iteration count from what is left."""
        self.left -= small_int(count, what)
        if self.left < 0:
            raise DerError(f"{what}: iteration counts over {self.limit} rounds in all")

    def take_pbe(self, algorithm: Tlv, what: str) -> None:
        """Take the iteration count of a PKCS#12 PBE or PBES2 (PBKDF2) AlgorithmIdentifier."""
        oid, parameters = read_algorithm(algorithm, what)
        parts = fields(parameters, what) if parameters is not None else []
        if oid == OID_PBES2 and len(parts) == 2:
            kdf, kdf_parameters = read_algorithm(parts[0], what)
            ok = kdf == OID_PBKDF2 and kdf_parameters is not None
            parts = fields(kdf_parameters, what) if kdf_parameters is not None and ok else []
        if len(parts) < 2:  # (salt, iteration count, ...) in both
            raise DerError(f"{what} is malformed")
        self.take(parts[1], what)
