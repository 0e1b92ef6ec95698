"""Keys, certificates and protected settings for scenarios (the emulator side only)."""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.padding import PKCS7

from azagent import asn1, certs
from azfabric.scenario import Certificate

try:  # cryptography >= 43 files 3DES under "decrepit"; protected settings still use it.
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - the distributions' older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES


def generate_ssh_key() -> tuple[str, str]:
    """An Ed25519 key: (OpenSSH private key PEM, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, f"{public} fabric-emulator"


def generate_certificate(name: str) -> Certificate:
    """A self-signed RSA-2048 certificate, as the platform delivers tenant keys."""
    cert_pem, key_pem = certs.self_signed_certificate(name, datetime.timedelta(days=365 * 3))
    return Certificate(name=name, cert_pem=cert_pem.decode(), key_pem=key_pem.decode())


def thumbprint_of(certificate: Certificate) -> str:
    assert certificate.cert_pem is not None
    return certs.thumbprint(certificate.cert_pem.encode())


def encrypt_protected_settings(cert_pem: bytes, content: bytes) -> bytes:
    """``content`` as the platform encrypts protected settings: PKCS#7 EnvelopedData (DER).

    The form of WALinuxAgent's ext_conf samples, the only one extensions read
    (they run ``openssl smime -decrypt -inform DER -recip <THUMB>.crt -inkey
    <THUMB>.prv``): version 0, one recipient named by the certificate's issuer
    and serial number, RSA PKCS#1 v1.5 key transport, 3DES-CBC content. Not the
    certificates blob's form (:func:`azagent.certs.encrypt_enveloped`), which
    names its recipient by subjectKeyIdentifier; the agent never encrypts
    either, so this lives with the emulator.
    """
    certificate = x509.load_pem_x509_certificate(cert_pem)
    public = certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("protected settings need a certificate with an RSA key")
    content_key, iv = os.urandom(24), os.urandom(8)
    padder = PKCS7(64).padder()
    encryptor = Cipher(TripleDES(content_key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    issuer_and_serial = asn1.seq(
        certificate.issuer.public_bytes(), asn1.integer(certificate.serial_number)
    )
    recipient = asn1.seq(
        asn1.integer(0),
        issuer_and_serial,
        asn1.algorithm(asn1.OID_RSA_ENCRYPTION, asn1.tlv(asn1.NULL, b"")),
        asn1.octets(public.encrypt(content_key, padding.PKCS1v15())),
    )
    encrypted_content = asn1.seq(
        asn1.tlv(asn1.OID, asn1.OID_DATA),
        asn1.algorithm(asn1.OID_DES3_CBC, asn1.octets(iv)),
        asn1.tlv(asn1.CONTEXT_0, encrypted),
    )
    enveloped = asn1.seq(asn1.integer(0), asn1.set_of(recipient), encrypted_content)
    return asn1.content_info(asn1.OID_ENVELOPED_DATA, enveloped)
