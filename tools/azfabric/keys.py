"""Key and certificate generation for scenarios (the emulator side only)."""

from __future__ import annotations

import datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from azagent import certs
from azfabric.scenario import Certificate


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
