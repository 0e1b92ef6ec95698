"""The WireServer certificates: transport certificate, CMS envelope and PFX.

The agent fetches the goal state's Certificates URI with its transport
certificate in a header; the platform answers with a ``CertificateFile`` whose
``Data`` is a CMS EnvelopedData encrypted to that certificate's key, holding a
password-less PKCS#12 (PFX) with the tenant's certificates and private keys
(PROTOCOL.md 4.4). This module is both ends of that exchange: the agent
decrypts and unpacks, the fabric emulator builds the same blob, so there is one
definition of the format. It never runs openssl and never touches the OS.

Why our own small DER code (:mod:`azagent.asn1`): ``cryptography``'s CMS
decryption refuses the platform's subjectKeyIdentifier recipients, the
distributions ship versions that predate it, and its PKCS#12 loader returns
only one private key where a VM with several Key Vault certificates gets
several. Reading is strict (definite lengths, minimal encodings, bounded size,
depth and iteration counts) because every byte here comes from the network;
every failure is a :class:`CertificateError` with a fixed reason that never
carries key material.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, Literal
from xml.sax.saxutils import escape

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.padding import PKCS7
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from azagent import asn1, xmlsafe
from azagent.errors import AzagentError, refusing

if TYPE_CHECKING:  # the alias is newer (40) than some distributions' cryptography
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

try:  # cryptography >= 43 files 3DES under "decrepit"; the platform still uses it.
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - the distributions' older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

KeyTransport = Literal["oaep", "pkcs1v15"]
ContentCipher = Literal["aes128", "des3"]

FORMAT_PFX = "Pkcs7BlobWithPfxContents"
TRANSPORT_SUBJECT = "LinuxTransport"

# Real documents are a few KiB; even hundreds of Key Vault certificates stay
# far below this (the DER inside is bounded by asn1.MAX_SIZE).
_MAX_XML = 8 * 1024 * 1024
# The platform uses 2000; a hostile count must not stall the boot.
_MAX_ITERATIONS = 1_000_000
# And summed over a PFX's MAC, encrypted bags and keys: about a second of work.
_MAX_PFX_ROUNDS = 1_000_000
_TRANSPORT_VALIDITY = datetime.timedelta(days=3 * 365)
# PKCS#12 passwords are BMPStrings with a terminating NUL, so the platform's
# "no password" is two zero bytes (checked against the samples' MAC).
_EMPTY_BMP_PASSWORD = b"\x00\x00"
_PFX_ITERATIONS = 2000


class CertificateError(AzagentError):
    """The certificates document, its CMS envelope or its PFX is unusable."""


@contextmanager
def _der_errors() -> Iterator[None]:
    """The DER reader's errors leave the public functions as CertificateErrors."""
    try:
        yield
    except asn1.DerError as e:
        raise CertificateError(e.reason) from None


class CertificateItem:
    """One certificate of the PFX and its private key, if it holds one (``repr`` hides it)."""

    __slots__ = ("certificate_pem", "private_key_pem", "thumbprint")

    def __init__(
        self, thumbprint: str, certificate_pem: bytes, private_key_pem: bytes | None = None
    ) -> None:
        self.thumbprint: Final = thumbprint
        self.certificate_pem: Final = certificate_pem
        self.private_key_pem: Final = private_key_pem


# name, key size in bytes, block size in bytes
_CIPHERS: dict[bytes, tuple[str, int, int]] = {
    asn1.OID_DES3_CBC: ("des3", 24, 8),
    asn1.OID_AES128_CBC: ("aes", 16, 16),
    asn1.OID_AES192_CBC: ("aes", 24, 16),
    asn1.OID_AES256_CBC: ("aes", 32, 16),
}
_HASHES: dict[bytes, type[hashes.HashAlgorithm]] = {
    asn1.OID_SHA1: hashes.SHA1,
    asn1.OID_SHA256: hashes.SHA256,
    asn1.OID_SHA384: hashes.SHA384,
    asn1.OID_SHA512: hashes.SHA512,
}
_HMACS: dict[bytes, type[hashes.HashAlgorithm]] = {
    asn1.OID_HMAC_SHA1: hashes.SHA1,
    asn1.OID_HMAC_SHA256: hashes.SHA256,
    asn1.OID_HMAC_SHA384: hashes.SHA384,
    asn1.OID_HMAC_SHA512: hashes.SHA512,
}


# --- Symmetric pieces -----------------------------------------------------------


def _block_cipher(name: str, key: bytes) -> BlockCipherAlgorithm:
    if name == "des3":
        return TripleDES(key)
    return algorithms.AES(key)


def _cbc_decrypt(name: str, key: bytes, iv: bytes, data: bytes, reason: str) -> bytes:
    """CBC-decrypt and strip PKCS#7 padding; a wrong key nearly always fails here."""
    algorithm = _block_cipher(name, key)
    if not data or len(data) % (algorithm.block_size // 8):
        raise CertificateError(reason)
    decryptor = Cipher(algorithm, modes.CBC(iv)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = PKCS7(algorithm.block_size).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CertificateError(reason) from None


def _cbc_encrypt(name: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    algorithm = _block_cipher(name, key)
    padder = PKCS7(algorithm.block_size).padder()
    encryptor = Cipher(algorithm, modes.CBC(iv)).encryptor()
    return encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()


def _pkcs12_kdf(password: bytes, salt: bytes, purpose: int, iterations: int, size: int) -> bytes:
    """RFC 7292 appendix B.2 with SHA-1: the PBE key/IV and MAC key derivation.

    ``purpose`` is 1 for a key, 2 for an IV, 3 for a MAC key. cryptography does
    not expose it, and its handling of the empty password differs by version.
    """
    v, u = 64, 20

    def fill(data: bytes) -> bytes:
        if not data:
            return b""
        length = v * -(-len(data) // v)
        return (data * (length // len(data) + 1))[:length]

    block = bytearray(fill(salt) + fill(password))
    prefix = bytes([purpose]) * v
    out = b""
    while len(out) < size:
        digest = prefix + bytes(block)
        for _ in range(iterations):
            digest = hashlib.sha1(digest).digest()  # noqa: S324 - RFC 7292 fixes SHA-1
        out += digest
        addend = int.from_bytes((digest * (v // u + 1))[:v], "big") + 1
        for start in range(0, len(block), v):
            total = (int.from_bytes(block[start : start + v], "big") + addend) % (1 << (8 * v))
            block[start : start + v] = total.to_bytes(v, "big")
    return out[:size]


def _iterations(element: asn1.Tlv, what: str) -> int:
    count = asn1.small_int(element, what)
    if not 1 <= count <= _MAX_ITERATIONS:
        raise CertificateError(f"{what} has an unreasonable iteration count")
    return count


def _pbe_decrypt(algorithm: asn1.Tlv, data: bytes, what: str) -> bytes:
    """Decrypt PFX content protected with the empty password.

    The platform uses PKCS#12's SHA-1/3DES scheme; PBES2 (PBKDF2 + AES or 3DES)
    is what newer Windows and OpenSSL write, so both are accepted.
    """
    reason = f"{what} could not be decrypted"
    oid, parameters = asn1.read_algorithm(algorithm, what)
    if parameters is None:
        raise CertificateError(f"{what} is malformed")
    if oid == asn1.OID_PBE_SHA1_3DES:
        parts = asn1.fields(parameters, what)
        if len(parts) != 2:
            raise CertificateError(f"{what} is malformed")
        salt = asn1.expect(parts[0], asn1.OCTET_STRING, what)
        count = _iterations(parts[1], what)
        key = _pkcs12_kdf(_EMPTY_BMP_PASSWORD, salt, 1, count, 24)
        iv = _pkcs12_kdf(_EMPTY_BMP_PASSWORD, salt, 2, count, 8)
        return _cbc_decrypt("des3", key, iv, data, reason)
    if oid != asn1.OID_PBES2:
        raise CertificateError(f"{what} uses an unsupported encryption")
    parts = asn1.fields(parameters, what)
    if len(parts) != 2:
        raise CertificateError(f"{what} is malformed")
    kdf_oid, kdf_parameters = asn1.read_algorithm(parts[0], what)
    cipher_oid, iv_element = asn1.read_algorithm(parts[1], what)
    if kdf_oid != asn1.OID_PBKDF2 or kdf_parameters is None or cipher_oid not in _CIPHERS:
        raise CertificateError(f"{what} uses an unsupported encryption")
    name, key_size, block_size = _CIPHERS[cipher_oid]
    iv = asn1.expect(iv_element, asn1.OCTET_STRING, what) if iv_element else b""
    kdf_parts = asn1.fields(kdf_parameters, what)
    if not 2 <= len(kdf_parts) <= 4 or len(iv) != block_size:
        raise CertificateError(f"{what} is malformed")
    salt = asn1.expect(kdf_parts[0], asn1.OCTET_STRING, what)
    count = _iterations(kdf_parts[1], what)
    prf: type[hashes.HashAlgorithm] = hashes.SHA1
    for extra in kdf_parts[2:]:
        if extra.tag == asn1.INTEGER:
            if asn1.small_int(extra, what) != key_size:
                raise CertificateError(f"{what} is malformed")
        else:
            prf_oid, _ = asn1.read_algorithm(extra, what)
            if prf_oid not in _HMACS:
                raise CertificateError(f"{what} uses an unsupported encryption")
            prf = _HMACS[prf_oid]
    # PBES2 inside PKCS#12 takes the password as plain bytes: empty.
    key = PBKDF2HMAC(prf(), key_size, salt, count).derive(b"")
    return _cbc_decrypt(name, key, iv, data, reason)


def _pbe_encrypt(data: bytes) -> tuple[bytes, bytes]:
    """Encrypt as the platform does (SHA-1/3DES PBE, empty password).

    Returns the AlgorithmIdentifier and the ciphertext.
    """
    salt = os.urandom(8)
    key = _pkcs12_kdf(_EMPTY_BMP_PASSWORD, salt, 1, _PFX_ITERATIONS, 24)
    iv = _pkcs12_kdf(_EMPTY_BMP_PASSWORD, salt, 2, _PFX_ITERATIONS, 8)
    algorithm = asn1.algorithm(
        asn1.OID_PBE_SHA1_3DES, asn1.seq(asn1.octets(salt), asn1.integer(_PFX_ITERATIONS))
    )
    return algorithm, _cbc_encrypt("des3", key, iv, data)


# --- Loading keys and certificates ------------------------------------------------


def _load_certificate(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateError("not a valid certificate") from None


def _load_private_key(data: bytes) -> PrivateKeyTypes:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError("not a valid unencrypted private key") from None


def _public_der(owner: PrivateKeyTypes | x509.Certificate) -> bytes | None:
    """SubjectPublicKeyInfo of a certificate's or private key's public key.

    None for key types cryptography cannot express, which then match nothing.
    """
    try:
        return owner.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _sha1(der: bytes) -> bytes:
    """Thumbprints and key ids name a certificate; they protect nothing (FIPS allows this)."""
    return hashlib.sha1(der, usedforsecurity=False).digest()


def _certificate_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _private_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- Transport certificate ----------------------------------------------------------


def self_signed_certificate(
    common_name: str, validity: datetime.timedelta = _TRANSPORT_VALIDITY
) -> tuple[bytes, bytes]:
    """A fresh self-signed RSA-2048 certificate and its key: (certificate PEM, PKCS#8 key PEM).

    It starts a day in the past because a freshly booted VM's clock may lag.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key)


def generate_transport_certificate() -> tuple[bytes, bytes]:
    """A fresh ``CN=LinuxTransport`` certificate and key (see self_signed_certificate).

    The platform encrypts the certificates blob to this key, so it is made per
    agent and never leaves the VM.
    """
    return self_signed_certificate(TRANSPORT_SUBJECT)


def certificate_header_value(cert_pem: bytes) -> str:
    """The ``x-ms-guest-agent-public-x509-cert`` header: base64 DER, one line, no armour."""
    return base64.b64encode(_certificate_der(_load_certificate(cert_pem))).decode("ascii")


def thumbprint(cert: bytes) -> str:
    """SHA-1 of the DER certificate in upper-case hex: the platform's name for it.

    Accepts PEM or DER; file names (``<thumbprint>.crt``) and OVF fingerprints use it.
    """
    return _sha1(_certificate_der(_load_certificate(cert))).hex().upper()


def _subject_key_identifier(certificate: x509.Certificate) -> bytes:
    """How the platform names the recipient: the certificate's SKI extension.

    Without one, the RFC 5280 method-1 value (SHA-1 of the subjectPublicKey bit
    string), which is also what the samples' SKI extensions hold.
    """
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
    return extension.value.digest


# --- PFX ------------------------------------------------------------------------------


def build_pfx(items: Sequence[tuple[bytes, bytes | None]]) -> bytes:
    """A password-less PFX shaped like the platform's, for the fabric emulator.

    ``items`` are (certificate PEM/DER, private key PEM/DER or None). Keys go in
    3DES-shrouded key bags, certificates in one encrypted bag, each key tied to
    its certificate by a localKeyId; a SHA-1 MAC with the empty password closes
    it, so ``openssl pkcs12`` and Windows read it too. Unlike cryptography's
    serializer this holds any number of keys, as a real VM's PFX can.
    """
    if not items:
        raise ValueError("a PFX needs at least one certificate")
    key_bags: list[bytes] = []
    cert_bags: list[bytes] = []
    for cert_data, key_data in items:
        certificate = _load_certificate(cert_data)
        der = _certificate_der(certificate)
        attributes = b""
        if key_data is not None:
            key = _load_private_key(key_data)
            if _public_der(key) != _public_der(certificate):
                raise ValueError("a private key does not belong to its certificate")
            local_key_id = asn1.seq(
                asn1.tlv(asn1.OID, asn1.OID_LOCAL_KEY_ID), asn1.set_of(asn1.octets(_sha1(der)))
            )
            attributes = asn1.set_of(local_key_id)
            key_bags.append(_safe_bag(asn1.OID_SHROUDED_KEY_BAG, _shrouded_key(key), attributes))
        cert_bag = asn1.seq(
            asn1.tlv(asn1.OID, asn1.OID_X509_CERTIFICATE),
            asn1.tlv(asn1.EXPLICIT_0, asn1.octets(der)),
        )
        cert_bags.append(_safe_bag(asn1.OID_CERT_BAG, cert_bag, attributes))
    safes = []
    if key_bags:
        safes.append(asn1.content_info(asn1.OID_DATA, asn1.octets(asn1.seq(*key_bags))))
    algorithm, encrypted = _pbe_encrypt(asn1.seq(*cert_bags))
    encrypted_content_info = asn1.seq(
        asn1.tlv(asn1.OID, asn1.OID_DATA), algorithm, asn1.tlv(asn1.CONTEXT_0, encrypted)
    )
    safes.append(
        asn1.content_info(
            asn1.OID_ENCRYPTED_DATA, asn1.seq(asn1.integer(0), encrypted_content_info)
        )
    )
    authenticated_safe = asn1.seq(*safes)
    return asn1.seq(
        asn1.integer(3),
        asn1.content_info(asn1.OID_DATA, asn1.octets(authenticated_safe)),
        _mac_data(authenticated_safe),
    )


def _safe_bag(bag_id: bytes, value: bytes, attributes: bytes) -> bytes:
    return asn1.seq(asn1.tlv(asn1.OID, bag_id), asn1.tlv(asn1.EXPLICIT_0, value), attributes)


def _shrouded_key(key: PrivateKeyTypes) -> bytes:
    """EncryptedPrivateKeyInfo of ``key`` under the empty password."""
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    algorithm, encrypted = _pbe_encrypt(pkcs8)
    return asn1.seq(algorithm, asn1.octets(encrypted))


def _mac_data(authenticated_safe: bytes) -> bytes:
    """The PFX's HMAC-SHA-1 under the empty password, keyed by the PKCS#12 KDF."""
    salt = os.urandom(20)
    mac_key = _pkcs12_kdf(_EMPTY_BMP_PASSWORD, salt, 3, _PFX_ITERATIONS, 20)
    mac = hmac.new(mac_key, authenticated_safe, hashlib.sha1).digest()
    return asn1.seq(
        asn1.seq(asn1.algorithm(asn1.OID_SHA1, asn1.tlv(asn1.NULL, b"")), asn1.octets(mac)),
        asn1.octets(salt),
        asn1.integer(_PFX_ITERATIONS),
    )


def _bag_keys(safe_contents: asn1.Tlv, rounds: asn1.Rounds) -> list[PrivateKeyTypes]:
    """Every private key in a SafeContents (plain or shrouded key bags)."""
    keys: list[PrivateKeyTypes] = []
    for bag in asn1.fields(safe_contents, "PFX bag list"):
        parts = asn1.fields(bag, "PFX bag")
        if not 2 <= len(parts) <= 3:
            raise CertificateError("PFX bag is malformed")
        bag_id = asn1.expect(parts[0], asn1.OID, "PFX bag")
        value = asn1.explicit(parts[1], asn1.EXPLICIT_0, "PFX bag")
        if bag_id == asn1.OID_KEY_BAG:
            keys.append(_load_private_key(value.encoded))
        elif bag_id == asn1.OID_SHROUDED_KEY_BAG:
            shrouded = asn1.fields(value, "PFX key bag")
            if len(shrouded) != 2:
                raise CertificateError("PFX key bag is malformed")
            data = asn1.expect(shrouded[1], asn1.OCTET_STRING, "PFX key bag")
            rounds.take_pbe(shrouded[0], "PFX key bag")
            keys.append(_load_private_key(_pbe_decrypt(shrouded[0], data, "PFX key bag")))
        elif bag_id == asn1.OID_SAFE_CONTENTS_BAG:
            keys.extend(_bag_keys(value, rounds))  # depth is bounded by asn1.decode
    return keys


def _pfx_private_keys(pfx: bytes) -> list[PrivateKeyTypes]:
    """All private keys of the PFX, read with our own (strict) DER walker.

    Keys sit in the unencrypted part of the PFX (as in every platform sample);
    certificates are left to cryptography's loader, whose rounds are counted first.
    """
    parts = asn1.fields(asn1.decode(pfx, "PFX"), "PFX")
    if not 2 <= len(parts) <= 3 or asn1.small_int(parts[0], "PFX version") != 3:
        raise CertificateError("PFX version is not supported")
    content_type, content = asn1.read_content_info(parts[1], "PFX")
    if content_type != asn1.OID_DATA:
        raise CertificateError("PFX integrity mode is not supported")
    rounds = asn1.Rounds(_MAX_PFX_ROUNDS)
    mac = asn1.fields(parts[2], "PFX MAC") if len(parts) == 3 else []
    if len(mac) == 3:  # mac, macSalt, iterations (DEFAULT 1)
        rounds.take(mac[2], "PFX MAC")
    authenticated_safe = asn1.expect(content, asn1.OCTET_STRING, "PFX")
    safe = asn1.fields(asn1.decode(authenticated_safe, "PFX content"), "PFX content")
    infos = [asn1.read_content_info(info, "PFX content") for info in safe]
    for content_type, content in infos:
        if content_type == asn1.OID_ENCRYPTED_DATA:  # (version, (type, algorithm, data))
            encrypted = asn1.fields(asn1.fields(content, "PFX bag")[-1], "PFX encrypted bag")
            rounds.take_pbe(encrypted[1], "PFX encrypted bag")
    keys: list[PrivateKeyTypes] = []
    for content_type, content in infos:
        if content_type == asn1.OID_DATA:
            safe_contents = asn1.expect(content, asn1.OCTET_STRING, "PFX content")
            keys.extend(_bag_keys(asn1.decode(safe_contents, "PFX bag list"), rounds))
    return keys


@refusing(CertificateError, "PFX")
@_der_errors()
def parse_pfx(pfx: bytes) -> list[CertificateItem]:
    """The certificates of a password-less PFX, each with its private key if present.

    Keys are matched to certificates by public key, not by localKeyId, because
    that is what makes a ``.prv`` usable with its ``.crt``. cryptography's
    loader reads the certificates (and checks the MAC); our walker finds every
    key, since the loader returns only the first.
    """
    keys = _pfx_private_keys(pfx)
    try:
        first_key, certificate, others = pkcs12.load_key_and_certificates(pfx, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError("PFX could not be read") from None
    if first_key is not None:
        keys.append(first_key)
    by_public: dict[bytes, PrivateKeyTypes] = {}
    for key in keys:
        public = _public_der(key)
        if public is not None:
            by_public.setdefault(public, key)
    items: list[CertificateItem] = []
    seen: set[str] = set()
    for cert in ([certificate] if certificate is not None else []) + list(others):
        der = _certificate_der(cert)
        thumb = _sha1(der).hex().upper()
        if thumb in seen:
            continue
        seen.add(thumb)
        public = _public_der(cert)
        matched = by_public.get(public) if public is not None else None
        items.append(
            CertificateItem(
                thumbprint=thumb,
                certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
                private_key_pem=_private_pem(matched) if matched is not None else None,
            )
        )
    if not items:
        raise CertificateError("PFX holds no certificate")
    return items


# --- CMS EnvelopedData ---------------------------------------------------------------


def build_enveloped_pfx(
    recipient_certificate: bytes,
    items: Sequence[tuple[bytes, bytes | None]],
    *,
    key_transport: KeyTransport = "oaep",
    cipher: ContentCipher = "aes128",
) -> bytes:
    """The platform's certificates blob: a PFX of ``items`` in CMS EnvelopedData (DER).

    The defaults match the newer samples (RSAES-OAEP, AES-128-CBC); ``pkcs1v15``
    and ``des3`` give the older ones. The emulator base64-encodes the result
    into ``Data``.
    """
    return encrypt_enveloped(
        recipient_certificate, build_pfx(items), key_transport=key_transport, cipher=cipher
    )


def encrypt_enveloped(
    recipient_certificate: bytes,
    content: bytes,
    *,
    key_transport: KeyTransport = "oaep",
    cipher: ContentCipher = "aes128",
) -> bytes:
    """CMS EnvelopedData (DER) of ``content`` for one RSA recipient, as the platform writes it.

    Version 2, one KeyTransRecipientInfo naming the recipient by
    subjectKeyIdentifier, RSAES-OAEP with SHA-1 and empty (default) parameters
    or PKCS#1 v1.5. Used for the certificates blob and for the protected
    settings the emulator encrypts to a tenant certificate; ``openssl cms
    -decrypt`` reads both.
    """
    if key_transport not in ("oaep", "pkcs1v15") or cipher not in ("aes128", "des3"):
        raise ValueError("unsupported key transport or cipher")
    recipient = _load_certificate(recipient_certificate)
    public = recipient.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise CertificateError("the recipient certificate does not hold an RSA key")
    if cipher == "aes128":
        cipher_oid, name, key_size, block_size = asn1.OID_AES128_CBC, "aes", 16, 16
    else:
        cipher_oid, name, key_size, block_size = asn1.OID_DES3_CBC, "des3", 24, 8
    content_key = os.urandom(key_size)
    iv = os.urandom(block_size)
    if key_transport == "oaep":
        transport = asn1.algorithm(asn1.OID_RSAES_OAEP, asn1.seq())
        encrypted_key = public.encrypt(content_key, _oaep(hashes.SHA1, hashes.SHA1))
    else:
        transport = asn1.algorithm(asn1.OID_RSA_ENCRYPTION, asn1.tlv(asn1.NULL, b""))
        encrypted_key = public.encrypt(content_key, padding.PKCS1v15())
    recipient_info = asn1.seq(
        asn1.integer(2),
        asn1.tlv(asn1.CONTEXT_0, _subject_key_identifier(recipient)),
        transport,
        asn1.octets(encrypted_key),
    )
    encrypted_content_info = asn1.seq(
        asn1.tlv(asn1.OID, asn1.OID_DATA),
        asn1.algorithm(cipher_oid, asn1.octets(iv)),
        asn1.tlv(asn1.CONTEXT_0, _cbc_encrypt(name, content_key, iv, content)),
    )
    enveloped = asn1.seq(asn1.integer(2), asn1.set_of(recipient_info), encrypted_content_info)
    return asn1.content_info(asn1.OID_ENVELOPED_DATA, enveloped)


def _oaep(digest: type[hashes.HashAlgorithm], mgf: type[hashes.HashAlgorithm]) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=mgf()), algorithm=digest(), label=None)


def _oaep_parameters(parameters: asn1.Tlv | None) -> padding.OAEP:
    """RSAES-OAEP-params; all absent (the platform's choice) means SHA-1 and MGF1-SHA-1."""
    digest: type[hashes.HashAlgorithm] = hashes.SHA1
    mgf: type[hashes.HashAlgorithm] = hashes.SHA1
    if parameters is None:
        return _oaep(digest, mgf)
    what = "OAEP parameters"
    for part in asn1.fields(parameters, what):
        if part.tag == asn1.EXPLICIT_0:
            oid, _ = asn1.read_algorithm(asn1.explicit(part, asn1.EXPLICIT_0, what), what)
            if oid not in _HASHES:
                raise CertificateError("OAEP hash is not supported")
            digest = _HASHES[oid]
        elif part.tag == asn1.EXPLICIT_1:
            oid, inner = asn1.read_algorithm(asn1.explicit(part, asn1.EXPLICIT_1, what), what)
            if oid != asn1.OID_MGF1 or inner is None:
                raise CertificateError("OAEP mask generation is not supported")
            mgf_oid, _ = asn1.read_algorithm(inner, what)
            if mgf_oid not in _HASHES:
                raise CertificateError("OAEP hash is not supported")
            mgf = _HASHES[mgf_oid]
        else:
            raise CertificateError("OAEP label is not supported")
    return _oaep(digest, mgf)


class _Recipient:
    __slots__ = ("encrypted_key", "subject_key_identifier", "transport")

    def __init__(self, ski: bytes | None, transport: padding.AsymmetricPadding, key: bytes) -> None:
        self.subject_key_identifier: Final = ski  # None: named by issuer and serial number
        self.transport: Final = transport
        self.encrypted_key: Final = key


def _read_recipient(element: asn1.Tlv) -> _Recipient:
    what = "CMS recipient"
    parts = asn1.fields(element, what)
    if len(parts) != 4:
        raise CertificateError(f"{what} is malformed")
    version = asn1.small_int(parts[0], what)
    if parts[1].tag == asn1.CONTEXT_0 and version == 2:
        ski: bytes | None = parts[1].value
    elif parts[1].tag == asn1.SEQUENCE and version == 0:
        ski = None
    else:
        raise CertificateError(f"{what} is malformed")
    oid, parameters = asn1.read_algorithm(parts[2], what)
    transport: padding.AsymmetricPadding
    if oid == asn1.OID_RSA_ENCRYPTION:
        transport = padding.PKCS1v15()
    elif oid == asn1.OID_RSAES_OAEP:
        transport = _oaep_parameters(parameters)
    else:
        raise CertificateError("CMS key transport is not supported")
    return _Recipient(ski, transport, asn1.expect(parts[3], asn1.OCTET_STRING, what))


def _read_encrypted_content(element: asn1.Tlv) -> tuple[str, int, bytes, bytes]:
    """Cipher name, key size, IV and ciphertext of the EncryptedContentInfo."""
    what = "CMS encrypted content"
    parts = asn1.fields(element, what)
    if len(parts) != 3:
        raise CertificateError(f"{what} is missing")
    asn1.expect(parts[0], asn1.OID, what)
    oid, parameters = asn1.read_algorithm(parts[1], what)
    if oid not in _CIPHERS:
        raise CertificateError("CMS content cipher is not supported")
    name, key_size, block_size = _CIPHERS[oid]
    iv = asn1.expect(parameters, asn1.OCTET_STRING, what) if parameters is not None else b""
    if len(iv) != block_size:
        raise CertificateError(f"{what} is malformed")
    return name, key_size, iv, asn1.expect(parts[2], asn1.CONTEXT_0, what)


def _load_transport_key(private_key_pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError("transport private key could not be read") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError("transport private key is not an RSA key")
    return key


@refusing(CertificateError, "CMS blob")
@_der_errors()
def decrypt_enveloped(der: bytes, private_key_pem: bytes) -> bytes:
    """The content (the PFX) of a CMS EnvelopedData encrypted to the transport key.

    Recipients named by our subjectKeyIdentifier are tried first, then the
    others, since a transport certificate with an unusual SKI is still ours. A
    wrong key fails on the RSA step, the CBC padding or the DER shape of the
    result (PKCS#1 v1.5 decryption may return random bytes instead of failing),
    so the content must be one DER element, as a PFX is.
    """
    key = _load_transport_key(private_key_pem)
    content_type, body = asn1.read_content_info(asn1.decode(der, "CMS blob"), "CMS blob")
    if content_type != asn1.OID_ENVELOPED_DATA:
        raise CertificateError("CMS blob is not EnvelopedData")
    parts = asn1.fields(body, "CMS EnvelopedData")
    if len(parts) < 3 or asn1.small_int(parts[0], "CMS version") > 4:
        raise CertificateError("CMS EnvelopedData is malformed")
    rest = parts[2:] if parts[1].tag == asn1.EXPLICIT_0 else parts[1:]  # skip originatorInfo
    if len(rest) not in (2, 3) or (len(rest) == 3 and rest[2].tag != asn1.EXPLICIT_1):
        raise CertificateError("CMS EnvelopedData is malformed")
    recipients = [
        _read_recipient(r)
        for r in asn1.fields(rest[0], "CMS recipients", asn1.SET)
        if r.tag == asn1.SEQUENCE
    ]
    if not recipients:
        raise CertificateError("CMS blob has no key transport recipient")
    name, key_size, iv, data = _read_encrypted_content(rest[1])
    ours = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    recipients.sort(key=lambda r: r.subject_key_identifier != ours)
    for recipient in recipients:
        try:
            content_key = key.decrypt(recipient.encrypted_key, recipient.transport)
        except ValueError:
            continue
        if len(content_key) != key_size:
            continue
        try:
            content = _cbc_decrypt(name, content_key, iv, data, "wrong key")
        except CertificateError:
            continue
        if asn1.is_one_element(content):
            return content
    raise CertificateError("certificates blob cannot be decrypted with the transport key")


# --- The CertificateFile document -------------------------------------------------------


@refusing(CertificateError, "certificates document")
def parse_certificates_xml(xml: bytes) -> bytes:
    """The decoded ``Data`` of a WireServer ``CertificateFile`` document.

    The document is untrusted: :mod:`azagent.xmlsafe` refuses DOCTYPE and entity
    declarations, other encodings and oversized input before expat sees it.
    ``Format`` may be empty (older hosts); any other format is not ours to read.
    """
    what = "certificates document"
    try:
        root = xmlsafe.Element.root(xmlsafe.parse(xml, what=what, max_bytes=_MAX_XML), what=what)
        if not root.is_("", "CertificateFile"):
            raise CertificateError(f"{what} is not a CertificateFile")
        blob_format = root.child("", "Format")
        if blob_format is not None and blob_format.text(strip=True) not in ("", FORMAT_PFX):
            raise CertificateError(f"{what} has an unsupported Format")
        data = root.require("", "Data").text()
    except xmlsafe.XmlError as e:  # its messages never quote the document
        raise CertificateError(str(e)) from None
    try:
        blob = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError("certificates Data is not valid base64") from None
    if not blob:
        raise CertificateError(f"{what} has no Data")
    return blob


def certificates_xml(incarnation: int, data_b64: str) -> bytes:
    """A ``CertificateFile`` document as the WireServer serves it (for the emulator).

    ``Data`` is wrapped at 64 characters, as the platform sends it: OpenSSL's
    S/MIME reader (which some agents feed it to) fails on very long lines.
    """
    compact = "".join(data_b64.split())
    wrapped = "\n".join(compact[i : i + 64] for i in range(0, len(compact), 64))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<CertificateFile xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        ' xsi:noNamespaceSchemaLocation="certificates10.xsd">\n'
        "  <Version>2012-11-30</Version>\n"
        f"  <Incarnation>{int(incarnation)}</Incarnation>\n"
        f"  <Format>{FORMAT_PFX}</Format>\n"
        f"  <Data>{escape(wrapped)}</Data>\n"
        "</CertificateFile>\n"
    ).encode()
