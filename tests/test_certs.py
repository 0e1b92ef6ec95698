"""The certificates protocol: transport certificate, CMS envelope, PFX, CertificateFile.

The platform samples (WALinuxAgent's fixtures) prove the agent side; blobs made
by other producers (OpenSSL, cryptography) prove the reader is not just the
mirror of our own writer; hostile inputs prove every failure is a clean
CertificateError that never quotes a key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FIXTURES
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID

from azagent import certs
from azagent.certs import CertificateError

SAMPLES = FIXTURES / "walinuxagent"

WIRE_KEYED = "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"
WIRE_PLAIN = "8979F1AC8C4215827BF3B5A403E6137B504D02A4"

# DER of the algorithm identifiers, written out by hand so that the tests do not
# borrow the module's own encoder.
OID_RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d0101010500")
OID_RSAES_OAEP_DEFAULTS = bytes.fromhex("06092a864886f70d0101073000")
OID_AES128_CBC = bytes.fromhex("0609608648016503040102")
OID_DES3_CBC = bytes.fromhex("06082a864886f70d0307")
# KeyTransRecipientInfo version 2, then rid [0] IMPLICIT SubjectKeyIdentifier (20 bytes).
SKI_RECIPIENT = bytes.fromhex("0201028014")
OID_DATA = bytes.fromhex("2a864886f70d010701")  # content octets of id-data

# Made with OpenSSL 3.0 (an independent producer), never by this code:
#   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
#       -keyout k.pem -out c.pem -subj /CN=pbes2 -days 3650
#   openssl pkcs12 -export -inkey k.pem -in c.pem -passout pass: \
#       -keypbe AES-256-CBC -certpbe AES-256-CBC -macalg sha256
# PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) with the empty password, as newer
# Windows and OpenSSL write PFX files.
OPENSSL_PBES2_PFX = base64.b64decode(
    """
MIIEDAIBAzCCA8IGCSqGSIb3DQEHAaCCA7MEggOvMIIDqzCCAmIGCSqGSIb3DQEHBqCCAlMwggJP
AgEAMIICSAYJKoZIhvcNAQcBMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAgzVY4vjyJg
IQICCAAwDAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEGBcGLTdYoPCzVhW+jzbwwCAggHgYXM8
8/rMOkb5PWFx4H0UvfT2GSiKZyf7ehRE0/XG0IsFGItlv2QV211TjMMoJSp6oNep9gMou+xJ8XXE
S0MJx0toPC35NVC2trNmwo6jNWoTEfx/Wnxkrg1yAWBvhZR811eMBAeyc2NIAJO2KwCxgqFVwnU9
Z6+WkGcgY/Q5LrrjcMK3I9uu+dlGTSY3EF7IJRHtw3tl1OqQHKuYD4LmyA8t49YqRFHItEuDdG8q
jiF8s7IZ4u915fNz0DQcEZETChHtF/K6z4DtJ6p39lqJcvLaw/alCvrYVnZgPxSRaUxasHDMp+h1
aohS5Tyuh1TSrfwdblVYSiXpysyRmvtw6H4byMCPEq70CTbIn/c3gBpR6X4HIg1KBV4IklbdGkVc
7SQE8G80LImbPxGhld9uBBFOZvye4czU6W3WtoYEN2L1d02FYG7ZwFU3pOO6PVP7l9myt0O0e2KE
WlSNGoa1/wiGcWKEuUwYcoGhcvploP0XnnAZEB7hT97LZOrmDJ8ehijpKJpOuC/5QDm6eUsT36L4
of3ZKwuM5VD7PnIh7nc1iQ1+p6z7PPxyyDF/xJ6osWrv2XDyyotvoxBnsyWFjrWirNF1NjymXCk8
tybQbrdAXOiCSeYXnjVHg5WC2HyFMIIBQQYJKoZIhvcNAQcBoIIBMgSCAS4wggEqMIIBJgYLKoZI
hvcNAQwKAQKgge8wgewwVwYJKoZIhvcNAQUNMEowKQYJKoZIhvcNAQUMMBwECDw1DtN6kRlUAgII
ADAMBggqhkiG9w0CCQUAMB0GCWCGSAFlAwQBKgQQUSnjOW3LyWLv2/vLDhIKXASBkBVceaWuRaEk
M4sJl7E06ZtTLrtmuKJM3pgjoaqTAFWcX1ApGjL6i4Tayyoa3zCns2h0Z0FvN8N2NDcksxkawcp+
dFwX8NtDywYxYyXBmiebe8qp0Bd+cpuArspBFjrdM7+g0OJFBJ9LyS9YZa+5bCjh36HPQ5k2zBof
8DBDVo/2obefFu0i3BsWmI61zta/yjElMCMGCSqGSIb3DQEJFTEWBBQcGW0IceJyoG30rkTCn5s2
BJ0j1jBBMDEwDQYJYIZIAWUDBAIBBQAEIMCobFSqI7H8vrNh77B/FR37QqP5zDrCzGyC/4HH+rFm
BAh8JsYw94H9bgICCAA=
"""
)
OPENSSL_PBES2_THUMBPRINT = "1C196D0871E272A06DF4AE44C29F9B36049D23D6"


# --- helpers -------------------------------------------------------------------------


def sample(relative: str) -> bytes:
    return (SAMPLES / relative).read_bytes()


def unpack(document: bytes, transport_key: bytes) -> list[certs.CertificateItem]:
    return certs.parse_pfx(
        certs.decrypt_enveloped(certs.parse_certificates_xml(document), transport_key)
    )


def summary(items: list[certs.CertificateItem]) -> dict[str, bool]:
    return {item.thumbprint: item.private_key_pem is not None for item in items}


def assert_key_belongs_to_certificate(item: certs.CertificateItem) -> None:
    """The .prv really opens the .crt: same public key, and a signature verifies."""
    assert item.private_key_pem is not None
    assert item.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, clear
    key = serialization.load_pem_private_key(item.private_key_pem, password=None)
    public = x509.load_pem_x509_certificate(item.certificate_pem).public_key()
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == public.public_bytes(*spki)
    if isinstance(key, rsa.RSAPrivateKey):
        assert isinstance(public, rsa.RSAPublicKey)
        signature = key.sign(b"probe", padding.PKCS1v15(), hashes.SHA256())
        public.verify(signature, b"probe", padding.PKCS1v15(), hashes.SHA256())


def assert_clean(error: pytest.ExceptionInfo[CertificateError], *secrets: bytes) -> None:
    """A short fixed reason from our module: no chained traceback, no key material."""
    message = str(error.value)
    assert message
    assert len(message) < 120
    assert "PRIVATE KEY" not in message
    assert not re.search(r"[A-Za-z0-9+/]{24,}", message), message  # nothing base64-like
    for secret in secrets:
        for line in secret.decode().splitlines():
            if len(line) > 16:
                assert line not in message
    assert error.value.__cause__ is None
    assert error.value.__context__ is None or error.value.__suppress_context__
    assert Path(error.traceback[-1].path).name == "certs.py"


def self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Tenant:
    """Certificates a tenant might deploy: RSA and EC, with and without keys."""

    def __init__(self) -> None:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        plain_key = ec.generate_private_key(ec.SECP256R1())
        self.rsa = (self_signed(rsa_key, "tenant-rsa"), pem_key(rsa_key))
        self.ec = (self_signed(ec_key, "tenant-ec"), pem_key(ec_key))
        self.plain = self_signed(plain_key, "tenant-public-only")


@pytest.fixture(scope="module")
def tenant() -> Tenant:
    return Tenant()


@pytest.fixture(scope="module")
def transport() -> tuple[bytes, bytes]:
    return certs.generate_transport_certificate()


# --- the platform's samples -------------------------------------------------------------


def test_wire_sample_gives_the_documented_certificates() -> None:
    items = unpack(sample("wire/certs.xml"), sample("wire/trans_prv"))
    assert summary(items) == {WIRE_KEYED: True, WIRE_PLAIN: False}
    (keyed,) = [item for item in items if item.private_key_pem is not None]
    assert_key_belongs_to_certificate(keyed)
    for item in items:
        assert certs.thumbprint(item.certificate_pem) == item.thumbprint


def test_empty_format_is_read_as_pfx() -> None:
    items = unpack(sample("wire/certs_no_format_specified.xml"), sample("wire/trans_prv"))
    assert summary(items) == {WIRE_KEYED: True, WIRE_PLAIN: False}


def protected_settings_thumbprints(document: bytes) -> set[bytes]:
    return set(re.findall(rb'"protectedSettingsCertThumbprint":\s*"([0-9A-F]{40})"', document))


@pytest.mark.parametrize("goal_state", ["goal_state_1", "goal_state_2"])
def test_hibernate_goal_states_match_their_certificate_listing(goal_state: str) -> None:
    """OAEP + AES-128 samples, checked against the listing recorded beside them."""
    folder = f"hibernate/{goal_state}"
    items = unpack(sample(f"{folder}/Certificates.xml"), sample("hibernate/TransportPrivate.pem"))
    listed = json.loads(sample(f"{folder}/Certificates.json"))
    assert summary(items) == {entry["thumbprint"]: entry["hasPrivateKey"] for entry in listed}
    for item in items:
        if item.private_key_pem is not None:
            assert_key_belongs_to_certificate(item)
    # The extensions' protected settings are encrypted to a certificate we got a key for.
    wanted = protected_settings_thumbprints(sample(f"{folder}/ExtensionsConfig.xml"))
    assert wanted
    assert {t.encode() for t, has_key in summary(items).items() if has_key} >= wanted


@pytest.mark.parametrize("incarnation", [3, 4])
def test_tenant_certificate_rotation_delivers_the_certificate_extensions_need(
    incarnation: int,
) -> None:
    folder = "tenant_certificate_rotation"
    items = unpack(
        sample(f"{folder}/Certificates-incarnation-{incarnation}.xml"),
        sample(f"{folder}/TransportPrivate.pem"),
    )
    (wanted,) = protected_settings_thumbprints(
        sample(f"{folder}/ExtensionsConfig-incarnation-{incarnation}.xml")
    )
    assert summary(items) == {wanted.decode(): True, WIRE_PLAIN: False}
    for item in items:
        if item.private_key_pem is not None:
            assert_key_belongs_to_certificate(item)


def test_rotation_replaces_the_tenant_certificate() -> None:
    folder = "tenant_certificate_rotation"
    key = sample(f"{folder}/TransportPrivate.pem")
    before = summary(unpack(sample(f"{folder}/Certificates-incarnation-3.xml"), key))
    after = summary(unpack(sample(f"{folder}/Certificates-incarnation-4.xml"), key))
    assert before != after
    assert before[WIRE_PLAIN] is False
    assert after[WIRE_PLAIN] is False


@pytest.mark.parametrize(
    ("document", "certificate"),
    [
        ("wire/certs.xml", "wire/trans_cert"),
        ("hibernate/goal_state_1/Certificates.xml", "hibernate/TransportCert.pem"),
    ],
)
def test_we_name_the_recipient_as_the_platform_does(
    document: str, certificate: str, tenant: Tenant
) -> None:
    """The platform names the recipient by the standard SKI; the emulator must too."""
    public = x509.load_pem_x509_certificate(sample(certificate)).public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public).digest
    assert SKI_RECIPIENT + ski in certs.parse_certificates_xml(sample(document))
    assert SKI_RECIPIENT + ski in certs.build_enveloped_pfx(sample(certificate), [tenant.rsa])


def test_incorrect_certs_fails_cleanly() -> None:
    key = sample("wire/trans_prv")
    with pytest.raises(CertificateError) as error:
        unpack(sample("wire/incorrect-certs.xml"), key)
    assert "transport key" in str(error.value)
    assert_clean(error, key)


def test_non_pfx_format_is_refused() -> None:
    with pytest.raises(CertificateError, match="Format") as error:
        certs.parse_certificates_xml(sample("wire/certs_format_not_pfx.xml"))
    assert_clean(error)


@pytest.mark.parametrize(
    ("document", "wrong_key"),
    [
        ("wire/certs.xml", "hibernate/TransportPrivate.pem"),  # PKCS#1 v1.5, 3DES
        ("hibernate/goal_state_1/Certificates.xml", "wire/trans_prv"),  # OAEP, AES-128
    ],
)
def test_sample_with_the_wrong_transport_key_fails_cleanly(document: str, wrong_key: str) -> None:
    key = sample(wrong_key)
    with pytest.raises(CertificateError, match="transport key") as error:
        certs.decrypt_enveloped(certs.parse_certificates_xml(sample(document)), key)
    assert_clean(error, key)


# --- the transport certificate ---------------------------------------------------------------


def test_transport_certificate_is_what_the_platform_expects(transport: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = transport
    certificate = x509.load_pem_x509_certificate(cert_pem)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LinuxTransport")])
    assert certificate.subject == name
    assert certificate.issuer == name
    public = certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048
    assert certificate.signature_hash_algorithm is not None
    public.verify(  # self-signed
        certificate.signature,
        certificate.tbs_certificate_bytes,
        padding.PKCS1v15(),
        certificate.signature_hash_algorithm,
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    assert certificate.not_valid_before_utc < now
    assert certificate.not_valid_after_utc - now > datetime.timedelta(days=2 * 365)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.public_key().public_numbers() == public.public_numbers()


def test_each_transport_certificate_is_fresh(transport: tuple[bytes, bytes]) -> None:
    other = certs.generate_transport_certificate()
    assert other[0] != transport[0]
    assert other[1] != transport[1]


def test_header_value_is_one_line_of_base64_der() -> None:
    pem = sample("wire/trans_cert")
    value = certs.certificate_header_value(pem)
    assert value == "".join(line for line in pem.decode().splitlines() if "-----" not in line)
    assert "\n" not in value
    assert "-" not in value
    assert base64.b64decode(value) == x509.load_pem_x509_certificate(pem).public_bytes(
        serialization.Encoding.DER
    )


def test_thumbprint_is_uppercase_sha1_of_der_from_pem_or_der() -> None:
    pem = sample("wire/trans_cert")
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    expected = "FD4292D8F888DBA08C6139FFB0FFDF64CD60A732"  # openssl x509 -fingerprint -sha1
    assert certs.thumbprint(pem) == expected
    assert certs.thumbprint(der) == expected
    assert hashlib.sha1(der).hexdigest().upper() == expected  # noqa: S324


def test_thumbprint_of_garbage_is_a_certificate_error() -> None:
    with pytest.raises(CertificateError):
        certs.thumbprint(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("key_transport", ["oaep", "pkcs1v15"])
@pytest.mark.parametrize("cipher", ["aes128", "des3"])
def test_round_trip(
    key_transport: certs.KeyTransport,
    cipher: certs.ContentCipher,
    transport: tuple[bytes, bytes],
    tenant: Tenant,
) -> None:
    cert_pem, key_pem = transport
    blob = certs.build_enveloped_pfx(
        cert_pem, [tenant.rsa, (tenant.plain, None)], key_transport=key_transport, cipher=cipher
    )
    assert blob[:2] == b"\x30\x82"  # DER, definite length
    transport_oid = OID_RSAES_OAEP_DEFAULTS if key_transport == "oaep" else OID_RSA_ENCRYPTION
    cipher_oid = OID_AES128_CBC if cipher == "aes128" else OID_DES3_CBC
    assert transport_oid in blob
    assert cipher_oid in blob
    pfx = certs.decrypt_enveloped(blob, key_pem)
    items = certs.parse_pfx(pfx)
    assert summary(items) == {
        certs.thumbprint(tenant.rsa[0]): True,
        certs.thumbprint(tenant.plain): False,
    }
    assert_key_belongs_to_certificate(next(i for i in items if i.private_key_pem))
    # The PFX also opens with cryptography's own loader (which checks our MAC).
    key, certificate, others = pkcs12.load_key_and_certificates(pfx, None)
    assert key is not None
    assert certificate is not None
    assert len(others) == 1


def test_round_trip_through_the_certificates_document(
    transport: tuple[bytes, bytes], tenant: Tenant
) -> None:
    blob = certs.build_enveloped_pfx(transport[0], [tenant.rsa])
    document = certs.certificates_xml(7, base64.b64encode(blob).decode())
    assert certs.parse_certificates_xml(document) == blob
    items = certs.parse_pfx(certs.decrypt_enveloped(blob, transport[1]))
    assert summary(items) == {certs.thumbprint(tenant.rsa[0]): True}


def test_certificates_document_has_the_platform_shape() -> None:
    import xmltodict  # type: ignore[import-untyped,unused-ignore]

    ours = xmltodict.parse(certs.certificates_xml(12, "QUJD"))["CertificateFile"]
    theirs = xmltodict.parse(sample("wire/certs.xml"))["CertificateFile"]
    assert list(ours) == list(theirs)  # attributes and elements, in order
    assert ours["Version"] == theirs["Version"] == "2012-11-30"
    assert ours["Format"] == theirs["Format"] == "Pkcs7BlobWithPfxContents"
    assert ours["Incarnation"] == "12"
    assert ours["Data"] == "QUJD"


def test_pfx_keeps_every_private_key(tenant: Tenant) -> None:
    """A VM with several Key Vault certificates gets several keys in one PFX."""
    pfx = certs.build_pfx([tenant.rsa, (tenant.plain, None), tenant.ec])
    items = certs.parse_pfx(pfx)
    assert summary(items) == {
        certs.thumbprint(tenant.rsa[0]): True,
        certs.thumbprint(tenant.plain): False,
        certs.thumbprint(tenant.ec[0]): True,
    }
    for item in items:
        if item.private_key_pem is not None:
            assert_key_belongs_to_certificate(item)


def test_pfx_from_cryptography_serializer_parses(tenant: Tenant) -> None:
    key = serialization.load_pem_private_key(tenant.rsa[1], password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    pfx = pkcs12.serialize_key_and_certificates(
        b"tenant",
        key,
        x509.load_pem_x509_certificate(tenant.rsa[0]),
        [x509.load_pem_x509_certificate(tenant.plain)],
        serialization.NoEncryption(),
    )
    assert summary(certs.parse_pfx(pfx)) == {
        certs.thumbprint(tenant.rsa[0]): True,
        certs.thumbprint(tenant.plain): False,
    }


def test_pbes2_pfx_from_openssl_parses() -> None:
    items = certs.parse_pfx(OPENSSL_PBES2_PFX)
    assert summary(items) == {OPENSSL_PBES2_THUMBPRINT: True}
    assert_key_belongs_to_certificate(items[0])


@pytest.mark.skipif(
    not hasattr(pkcs7, "PKCS7EnvelopeBuilder"), reason="cryptography cannot encrypt CMS"
)
def test_issuer_and_serial_envelope_from_cryptography_decrypts(
    transport: tuple[bytes, bytes], tenant: Tenant
) -> None:
    """Another producer's EnvelopedData: issuerAndSerial recipient, PKCS#1 v1.5, AES-256."""
    from cryptography.hazmat.primitives.ciphers import algorithms

    pfx = certs.build_pfx([tenant.rsa])
    builder = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(pfx)
        .add_recipient(x509.load_pem_x509_certificate(transport[0]))
    )
    if hasattr(builder, "set_content_encryption_algorithm"):
        builder = builder.set_content_encryption_algorithm(algorithms.AES256)
    blob = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    assert certs.decrypt_enveloped(blob, transport[1]) == pfx


def test_encrypt_enveloped_serves_any_content(
    transport: tuple[bytes, bytes], tenant: Tenant
) -> None:
    """The emulator encrypts protected settings with the same envelope."""
    pfx = certs.build_pfx([tenant.rsa])
    blob = certs.encrypt_enveloped(transport[0], pfx, key_transport="pkcs1v15", cipher="des3")
    assert certs.decrypt_enveloped(blob, transport[1]) == pfx


@pytest.mark.parametrize("key_transport", ["oaep", "pkcs1v15"])
def test_wrong_private_key_fails_cleanly(
    key_transport: certs.KeyTransport, transport: tuple[bytes, bytes], tenant: Tenant
) -> None:
    blob = certs.build_enveloped_pfx(transport[0], [tenant.rsa], key_transport=key_transport)
    _, other_key = certs.generate_transport_certificate()
    with pytest.raises(CertificateError, match="transport key") as error:
        certs.decrypt_enveloped(blob, other_key)
    assert_clean(error, other_key, tenant.rsa[1])


@pytest.mark.parametrize(
    "key",
    [
        b"not a key",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        pem_key(ec.generate_private_key(ec.SECP256R1())),
    ],
    ids=["garbage", "bad-pem", "not-rsa"],
)
def test_unusable_transport_key_fails_cleanly(key: bytes) -> None:
    blob = certs.parse_certificates_xml(sample("wire/certs.xml"))
    with pytest.raises(CertificateError, match="transport private key") as error:
        certs.decrypt_enveloped(blob, key)
    assert_clean(error, key)


def test_item_repr_never_shows_the_key() -> None:
    items = unpack(sample("wire/certs.xml"), sample("wire/trans_prv"))
    for item in items:
        assert "PRIVATE" not in repr(item)
        assert "PRIVATE" not in str(item)


def test_builder_refuses_what_it_cannot_build(
    transport: tuple[bytes, bytes], tenant: Tenant
) -> None:
    with pytest.raises(ValueError, match="at least one"):
        certs.build_pfx([])
    with pytest.raises(ValueError, match="does not belong"):
        certs.build_pfx([(tenant.rsa[0], tenant.ec[1])])
    with pytest.raises(ValueError, match="unsupported"):
        certs.build_enveloped_pfx(transport[0], [tenant.rsa], cipher="rc2")  # type: ignore[arg-type]
    with pytest.raises(CertificateError, match="RSA"):
        certs.build_enveloped_pfx(tenant.ec[0], [tenant.rsa])
    with pytest.raises(CertificateError):
        certs.build_enveloped_pfx(b"not a certificate", [tenant.rsa])


# --- hostile input ------------------------------------------------------------------------------


def der(tag: int, value: bytes) -> bytes:
    size = len(value)
    if size < 0x80:
        return bytes([tag, size]) + value
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + value


def nested(depth: int) -> bytes:
    blob = der(0x05, b"")
    for _ in range(depth):
        blob = der(0x30, blob)
    return blob


def wire_blob() -> bytes:
    return certs.parse_certificates_xml(sample("wire/certs.xml"))


HOSTILE_DER: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "truncated"),
    "one-byte": (lambda: b"\x30", "truncated"),
    "truncated": (lambda: wire_blob()[:-1], "past the end"),
    "truncated-header": (lambda: wire_blob()[:3], "truncated"),
    "length-past-end": (lambda: b"\x30\x82\x10\x00" + bytes(16), "past the end"),
    "inner-length-past-end": (lambda: der(0x30, b"\x06\x7f" + bytes(4)), "past the end"),
    "huge-length": (lambda: b"\x30\x88" + b"\xff" * 8, "too large"),
    "indefinite-length": (lambda: b"\x30\x80\x05\x00\x00\x00", "indefinite"),
    "non-minimal-length": (lambda: b"\x30\x81\x02\x05\x00", "not minimal"),
    "trailing-bytes": (lambda: wire_blob() + b"\x00", "trailing"),
    "deep-nesting": (lambda: nested(200), "nested too deeply"),
    "high-tag-number": (lambda: b"\x1f\x81\x00\x00", "not supported"),
    "oversized": (lambda: b"\x30\x84\x00\x50\x00\x00" + bytes(0x500000), "too large"),
    "not-enveloped": (
        lambda: der(
            0x30, der(0x06, bytes.fromhex("2a864886f70d010701")) + der(0xA0, der(0x04, b""))
        ),
        "not EnvelopedData",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_DER))
def test_hostile_cms_fails_cleanly(case: str) -> None:
    make, reason = HOSTILE_DER[case]
    key = sample("wire/trans_prv")
    with pytest.raises(CertificateError, match=reason) as error:
        certs.decrypt_enveloped(make(), key)
    assert_clean(error, key)


def test_ciphertext_tampering_fails_cleanly() -> None:
    blob = bytearray(wire_blob())
    blob[-1] ^= 0xFF  # last block of the 3DES ciphertext: the padding breaks
    key = sample("wire/trans_prv")
    with pytest.raises(CertificateError) as error:
        certs.decrypt_enveloped(bytes(blob), key)
    assert_clean(error, key)


def pfx_with_iterations(count: int) -> bytes:
    """A PFX whose one shrouded key claims ``count`` PKCS#12 KDF iterations."""
    oid = bytes.fromhex
    iterations = der(0x02, count.to_bytes(count.bit_length() // 8 + 1, "big"))
    pbe = der(
        0x30, der(0x06, oid("2a864886f70d010c0103")) + der(0x30, der(0x04, bytes(8)) + iterations)
    )
    shrouded = der(0x30, pbe + der(0x04, bytes(16)))
    bag = der(0x30, der(0x06, oid("2a864886f70d010c0a0102")) + der(0xA0, shrouded))
    safe = der(0x30, der(0x06, oid("2a864886f70d010701")) + der(0xA0, der(0x04, der(0x30, bag))))
    auth = der(0x30, der(0x06, oid("2a864886f70d010701")) + der(0xA0, der(0x04, der(0x30, safe))))
    return der(0x30, der(0x02, b"\x03") + auth)


@pytest.mark.parametrize(
    ("pfx", "reason"),
    [
        (b"", "truncated"),
        (b"garbage that is not DER", "past the end"),
        (nested(200), "nested too deeply"),
        # Just over the cap (1,000,000): should the cap go, this fails in seconds, not hangs.
        (pfx_with_iterations(1_000_001), "iteration count"),
        (pfx_with_iterations(0), "iteration count"),
        (der(0x30, der(0x02, b"\x02") + der(0x30, b"")), "version"),
    ],
    ids=["empty", "garbage", "deep", "absurd-iterations", "zero-iterations", "version"],
)
def test_hostile_pfx_fails_cleanly(pfx: bytes, reason: str) -> None:
    with pytest.raises(CertificateError, match=reason) as error:
        certs.parse_pfx(pfx)
    assert_clean(error)


def test_truncated_pfx_fails_cleanly(tenant: Tenant) -> None:
    pfx = certs.build_pfx([tenant.rsa])
    with pytest.raises(CertificateError) as error:
        certs.parse_pfx(pfx[: len(pfx) // 2])
    assert_clean(error, tenant.rsa[1])


def document(data: str, *, prolog: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>{prolog}<CertificateFile><Version>2012-11-30'
        f"</Version><Incarnation>1</Incarnation><Format>Pkcs7BlobWithPfxContents</Format>"
        f"<Data>{data}</Data></CertificateFile>"
    ).encode()


HOSTILE_XML = {
    "garbage-base64": (document("MIIO!!not*base64"), "base64"),
    "truncated-base64": (document("MIIOgwYJKoZIhvcNAQcDoIIO"[:-1]), "base64"),
    "empty-data": (document(""), "Data"),
    "entity": (
        document("&x;", prolog='<!DOCTYPE CertificateFile [<!ENTITY x "QUJD">]>'),
        "DOCTYPE",
    ),
    "billion-laughs": (
        document(
            "&l2;",
            prolog='<!DOCTYPE c [<!ENTITY l0 "ha"><!ENTITY l1 "&l0;&l0;"><!ENTITY l2 "&l1;&l1;">]>',
        ),
        "DOCTYPE",
    ),
    "external-entity": (
        document("&x;", prolog='<!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/shadow">]>'),
        "DOCTYPE",
    ),
    "bare-doctype": (document("QUJD", prolog="<!DOCTYPE CertificateFile>"), "DOCTYPE"),
    "not-well-formed": (b"<CertificateFile><Data>QUJD</CertificateFile>", "well-formed"),
    "not-utf8": ("<CertificateFile><Data>é</Data></CertificateFile>".encode("latin-1"), "UTF-8"),
    "utf16": ("<CertificateFile/>".encode("utf-16"), "UTF-8"),
    "wrong-root": (b"<GoalState><Data>QUJD</Data></GoalState>", "CertificateFile"),
    "no-data": (b"<CertificateFile><Format/></CertificateFile>", "Data"),
    "two-data": (b"<CertificateFile><Data>QUJD</Data><Data>QUJD</Data></CertificateFile>", "Data"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_XML))
def test_hostile_certificates_document_fails_cleanly(case: str) -> None:
    data, reason = HOSTILE_XML[case]
    with pytest.raises(CertificateError, match=reason) as error:
        certs.parse_certificates_xml(data)
    assert_clean(error)
