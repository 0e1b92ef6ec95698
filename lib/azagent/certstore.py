"""The certificate store: the goal state's certificates in ``Lib.Dir``, by thumbprint.

The WireServer gives a VM its tenant certificates (those behind SSH keys
named by thumbprint, Key Vault secrets, the ones that decrypt extensions'
protected settings) only encrypted to a transport certificate the agent
sends along. :func:`fetch` makes that certificate and its key (in memory
only, one pair per fetch), asks for the goal state's ``Certificates``
document, decrypts the CMS envelope and reads the PFX in-process
(:mod:`azagent.certs`). :class:`CertStore` keeps each certificate as
``<Lib.Dir>/<THUMBPRINT>.crt`` and its private key as ``<THUMBPRINT>.prv``,
where extensions look for them, and reads them back.

Its callers: the certificates stage (keys given by thumbprint), the
certificate keys of :func:`azagent.sshkeys.plan_certificate_keys`, and the
extension handler (fetch and store everything, the key named in protected
settings, the paths handed to extensions).

* A thumbprint is exactly 40 upper-case hex digits (SHA-1 of the DER
  certificate, as the platform names it); every lookup refuses anything
  else, so no input can name a path outside ``Lib.Dir``.
  :func:`normalize_thumbprint` turns what a document says (any case,
  white space around) into one.
* ``Lib.Dir`` is created 0700; the files are written atomically, created
  0600 and owned by the agent (root) from the first byte.
* Reads refuse what is not a regular file (a symbolic link is never
  followed) and anything larger than a certificate can be.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from azagent.context import Context
from azagent.errors import AzagentError
from azagent.fsutil import atomic_write, ensure_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Optional

    # these import cryptography and requests: only fetch needs them
    from azagent.certs import CertificateItem
    from azagent.wireclient import WireClient
    from azagent.wireserver import GoalState

CERTIFICATE = ".crt"
PRIVATE_KEY = ".prv"
DIR_MODE = 0o700
FILE_MODE = 0o600
# A PEM certificate or RSA-16384 key is a few KiB; more is not ours.
MAX_FILE_BYTES = 256 * 1024
# What the agent asks the platform to encrypt with (x-ms-cipher-name).
CIPHER_NAME = "AES128_CBC"

_THUMBPRINT = re.compile(r"[0-9A-F]{40}")


class CertStoreError(AzagentError):
    """A thumbprint is malformed, or a certificate or key is not (or not readably) stored."""


def check_thumbprint(thumbprint: str) -> str:
    """``thumbprint`` itself if it is 40 upper-case hex digits, else :class:`CertStoreError`."""
    if not isinstance(thumbprint, str) or not _THUMBPRINT.fullmatch(thumbprint):
        shown = repr(thumbprint)[:50]
        raise CertStoreError(f"{shown} is not a certificate thumbprint (40 upper-case hex digits)")
    return thumbprint


def normalize_thumbprint(text: str) -> str:
    """The thumbprint a document means by ``text``: white space dropped, upper case, checked.

    OVF fingerprints and protected settings may spell it in lower case; the
    store's file names are upper case, as the platform's thumbprints are.
    """
    return check_thumbprint(text.strip().upper())


class CertStore:
    """The certificates and private keys stored in one directory (``Lib.Dir``)."""

    __slots__ = ("directory",)

    def __init__(self, directory: Path) -> None:
        self.directory: Final = directory

    @classmethod
    def of(cls, ctx: Context) -> CertStore:
        """The store of the system under ``ctx.root``."""
        return cls(ctx.lib_dir)

    # -- names ------------------------------------------------------------------

    def certificate_path(self, thumbprint: str) -> Path:
        """Where the certificate (PEM) of ``thumbprint`` is (or would be) stored."""
        return self.directory / (check_thumbprint(thumbprint) + CERTIFICATE)

    def private_key_path(self, thumbprint: str) -> Path:
        """Where the private key (PKCS#8 PEM) of ``thumbprint`` is (or would be) stored."""
        return self.directory / (check_thumbprint(thumbprint) + PRIVATE_KEY)

    # -- lookups ----------------------------------------------------------------

    def has_certificate(self, thumbprint: str) -> bool:
        return _is_regular(self.certificate_path(thumbprint))

    def has_private_key(self, thumbprint: str) -> bool:
        return _is_regular(self.private_key_path(thumbprint))

    def missing(self, wanted: Mapping[str, bool]) -> list[str]:
        """The thumbprints of ``wanted`` not stored, sorted.

        ``wanted`` maps a thumbprint to whether its private key is needed too.
        """
        return sorted(
            thumbprint
            for thumbprint, private in wanted.items()
            if not self.has_certificate(thumbprint)
            or (private and not self.has_private_key(thumbprint))
        )

    def find_certificate(self, thumbprint: str) -> Optional[bytes]:
        """The stored certificate of ``thumbprint`` (PEM), None when it is not stored."""
        return _read(self.certificate_path(thumbprint))

    def find_private_key(self, thumbprint: str) -> Optional[bytes]:
        """The stored private key of ``thumbprint`` (PEM), None when it is not stored."""
        return _read(self.private_key_path(thumbprint))

    def certificate(self, thumbprint: str) -> bytes:
        """The stored certificate of ``thumbprint``; an error naming it when it is not stored."""
        found = self.find_certificate(thumbprint)
        if found is None:
            raise CertStoreError(f"certificate {thumbprint} is not in Lib.Dir")
        return found

    def private_key(self, thumbprint: str) -> bytes:
        """The stored private key of ``thumbprint``; an error naming it when it is not stored."""
        found = self.find_private_key(thumbprint)
        if found is None:
            raise CertStoreError(f"the private key of certificate {thumbprint} is not in Lib.Dir")
        return found

    def pair(self, thumbprint: str) -> tuple[bytes, bytes]:
        """(certificate, private key) of ``thumbprint``; both must be stored."""
        return self.certificate(thumbprint), self.private_key(thumbprint)

    # -- writing ----------------------------------------------------------------

    def store(self, items: Iterable[CertificateItem]) -> list[str]:
        """Write each item's certificate and private key; the file names written.

        Files that already hold the same bytes with the right mode are left
        alone, so storing a goal state's certificates again changes nothing.
        """
        written: list[str] = []
        for item in items:
            thumbprint = check_thumbprint(item.thumbprint)
            files = [(self.certificate_path(thumbprint), item.certificate_pem)]
            if item.private_key_pem is not None:
                files.append((self.private_key_path(thumbprint), item.private_key_pem))
            for path, data in files:
                if _is_stored(path, data):
                    continue
                ensure_dir(self.directory, mode=DIR_MODE)
                atomic_write(path, data, mode=FILE_MODE)
                written.append(path.name)
        return written

    def fetch_all(
        self, client: WireClient, goal: Optional[GoalState] = None
    ) -> list[CertificateItem]:
        """Fetch every certificate of ``goal`` (default: the current one) and store them all."""
        items = fetch(client, goal)
        self.store(items)
        return items


def fetch(
    client: WireClient,
    goal: Optional[GoalState] = None,
    transport: Optional[tuple[bytes, bytes]] = None,
) -> list[CertificateItem]:
    """The certificates of ``goal`` (default: the current goal state), decrypted.

    Empty when the goal state lists no Certificates document (a PFX always
    holds at least one). WireServer failures are the client's
    ``WireServerError``; an unusable document is :class:`CertStoreError`.
    ``transport`` is the transport certificate and key to use (default: a
    fresh pair, made here).
    """
    from azagent import certs

    if goal is None:
        goal = client.goal_state()
    url = goal.uris.certificates
    if url is None:
        return []
    transport_cert, transport_key = transport or certs.generate_transport_certificate()
    document = client.document(
        url,
        headers={
            "x-ms-cipher-name": CIPHER_NAME,
            "x-ms-guest-agent-public-x509-cert": certs.certificate_header_value(transport_cert),
        },
    )
    try:
        blob = certs.parse_certificates_xml(document)
        return certs.parse_pfx(certs.decrypt_enveloped(blob, transport_key))
    except certs.CertificateError as e:
        raise CertStoreError(f"certificates: {e.reason}") from None


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise CertStoreError(f"cannot look at {path.name} in Lib.Dir: {e.strerror}") from None


def _read(path: Path) -> Optional[bytes]:
    """The content of a stored file; None if absent; never through a symbolic link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CertStoreError(f"{path.name} in Lib.Dir is a symbolic link") from None
        raise CertStoreError(f"cannot read {path.name} in Lib.Dir: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CertStoreError(f"{path.name} in Lib.Dir is not a regular file")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise CertStoreError(f"{path.name} in Lib.Dir is larger than {MAX_FILE_BYTES} bytes")
    return data


def _is_stored(path: Path, data: bytes) -> bool:
    """Whether ``path`` already holds ``data`` as a regular file only its writer can read."""
    try:
        st = os.lstat(path)
        current = _read(path) if stat.S_ISREG(st.st_mode) else None
    except (FileNotFoundError, CertStoreError):
        return False
    right = stat.S_IMODE(st.st_mode) == FILE_MODE and st.st_uid == os.geteuid()
    return right and current == data
