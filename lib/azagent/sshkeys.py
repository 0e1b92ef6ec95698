"""SSH keys of the provisioned user: validation, placement and installation.

The platform names, for the user it provisions, public keys to authorize and
key pairs to install, each with a ``Path`` such as
``$HOME/alice/.ssh/authorized_keys`` (``$HOME`` is the home root,
``OS.HomeDir``). Three rules hold whatever the input:

* A public key is one OpenSSH public key line (type, base64 blob whose
  embedded type matches, optional comment). authorized_keys options
  (``command=``, ``from=``...) are refused: the platform has no business
  restricting or widening what a key may do, and accepting them would let a
  crafted request run commands. Error messages never quote key material.
* Keys go only to the user create-user accepted for this VM this boot
  (:func:`key_owner`), or, with create-user masked, to an existing account
  its rules accept: never root, a distribution's or a system account.
* Every path must name a file inside that user's home, and no symbolic link
  on the way is followed (:mod:`azagent.homefiles`): a home, ``.ssh``,
  directory or file that is, or becomes, a link is refused wherever it
  points. Above the home only a link root made is followed
  (``/home -> var/home``).
* Files are written atomically, created with their final owner (the user)
  and mode: directories 0700, authorized_keys and private keys 0600, public
  keys 0644. authorized_keys is merged: the user's other lines stay, in
  order, and a key already present (same type and blob) is not added again.

The ssh-keys stage installs the keys given inline (``Value``); the
certificates stage, with the WireServer certificates (:mod:`azagent.certstore`),
installs the public keys given only by ``Fingerprint`` and the key pairs
through :func:`plan_certificate_keys`. Both merge into the same files, so
their order does not matter. The conversions that need ``cryptography``
import it inside the function, so the ssh-keys stage never loads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

from azagent import names, provisioning, users
from azagent.certstore import CertStore, CertStoreError, normalize_thumbprint
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.homefiles import HomeFile, check_path, plan_files, read_existing
from azagent.journal import log
from azagent.plan import Action
from azagent.provisioning import Key, ProvisioningData
from azagent.results import STATE_DONE, STATE_NOTHING, read_result
from azagent.users import Account

TYPE_CHECKING = False
if TYPE_CHECKING:  # only types: the modules import cryptography, the stage must not
    from typing import Optional

    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

    from azagent.certs import CertificateItem


class SshKeyError(AzagentError):
    """A key or a key path cannot be used; the reason never carries key material."""


# --- Public key lines ---------------------------------------------------------------

_PLAIN_TYPES = (
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def _cert_name(plain: str) -> str:
    base, at, domain = plain.partition("@")
    return f"{base}-cert-v01@{domain if at else 'openssh.com'}"


# certificate type -> the plain type of the key it certifies
CERTIFICATE_TYPES: dict[str, str] = {_cert_name(t): t for t in _PLAIN_TYPES}
KEY_TYPES: frozenset[str] = frozenset(_PLAIN_TYPES) | frozenset(CERTIFICATE_TYPES)

# OpenSSH refuses key blobs over 16 KiB (SSHBUF_MAX_BIGNUM and friends keep
# real keys far below); a line is its base64 plus a comment.
MAX_BLOB_BYTES = 16 * 1024
MAX_LINE_CHARS = 32 * 1024
MIN_RSA_BITS = 1024  # OpenSSH's own floor (SSH_RSA_MINIMUM_MODULUS_SIZE)
MAX_RSA_BITS = 16384

_EC_POINT_BYTES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}


class _Blob:
    """A reader over the SSH wire encoding (RFC 4251 section 5)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, size: int) -> bytes:
        if size > len(self.data) - self.pos:
            raise ValueError("truncated key data")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def uint32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def uint64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def string(self) -> bytes:
        return self._take(self.uint32())

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise ValueError("negative number in key data")
        return int.from_bytes(raw, "big")

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def _key_fields(plain: str, blob: _Blob) -> None:
    """Read (and check) the public key fields of ``plain`` from ``blob``."""
    if plain == "ssh-rsa":
        exponent, modulus = blob.mpint(), blob.mpint()
        bits = modulus.bit_length()
        if exponent < 3 or exponent % 2 == 0:
            raise ValueError("the RSA public exponent is invalid")
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise ValueError(
                f"the RSA key has {bits} bits, {MIN_RSA_BITS} to {MAX_RSA_BITS} accepted"
            )
    elif plain == "ssh-dss":
        if not all(blob.mpint() for _ in range(4)):  # p, q, g, y
            raise ValueError("the DSA key has an empty parameter")
    elif plain.startswith(("ecdsa-sha2-", "sk-ecdsa-sha2-")):
        curve = plain.partition("@")[0].rsplit("-", 1)[1]
        if blob.string() != curve.encode():
            raise ValueError(f"the key's curve is not {curve}")
        point = blob.string()
        if len(point) != _EC_POINT_BYTES[curve] or point[0] != 4:
            raise ValueError(f"the key's {curve} point is malformed")
    elif plain in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        public = blob.string()
        if len(public) != 32:
            raise ValueError("the Ed25519 key is not 32 bytes")
    if plain.startswith("sk-") and not blob.string():  # the FIDO application
        raise ValueError("the security key's application is empty")


def _check_blob(declared: str, data: bytes) -> None:
    blob = _Blob(data)
    embedded = blob.string()
    if embedded != declared.encode():
        shown = embedded.decode("ascii") if embedded.decode("latin-1") in KEY_TYPES else "another"
        raise ValueError(f"declares {declared} but its key data is of {shown} type")
    plain = CERTIFICATE_TYPES.get(declared)
    if plain is None:
        _key_fields(declared, blob)
    else:
        blob.string()  # nonce
        _key_fields(plain, blob)
        blob.uint64()  # serial
        if blob.uint32() not in (1, 2):  # user or host certificate
            raise ValueError("the certificate is neither a user nor a host certificate")
        blob.string()  # key id
        blob.string()  # valid principals
        blob.uint64()  # valid after
        blob.uint64()  # valid before
        blob.string()  # critical options
        blob.string()  # extensions
        blob.string()  # reserved
        if not blob.string():
            raise ValueError("the certificate has no signature key")
        if not blob.string():
            raise ValueError("the certificate has no signature")
    if not blob.at_end():
        raise ValueError("the key data has trailing bytes")


def _skip_options(line: str) -> tuple[str, str]:
    """Split an authorized_keys line into (options, rest) as sshd does."""
    quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            break
        i += 1
    return line[:i], line[i:].lstrip(" \t")


# base64, binascii and hashlib are imported where keys are read: the
# certificates stage and a dry run may read none.


def _b64decode(text: str) -> bytes:
    import base64

    return base64.b64decode(text.encode("ascii"), validate=True)


def validate_public_key(line: str) -> str:
    """The normalized form of one OpenSSH public key line, or :class:`SshKeyError`.

    Leading and trailing white space (a CR/LF from the portal) is dropped,
    the blob is re-encoded canonically; the comment is kept.
    """
    import base64
    import binascii

    text = line.strip()
    if "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text:
        raise SshKeyError("is a private key, not a public key")
    if text.startswith("---- BEGIN SSH2 PUBLIC KEY"):
        raise SshKeyError("is in SSH2 (RFC 4716) format; give the one-line OpenSSH form")
    if not text:
        raise SshKeyError("is empty")
    if len(text) > MAX_LINE_CHARS:
        raise SshKeyError(f"is longer than {MAX_LINE_CHARS} characters")
    if any(c in text for c in "\n\r\0"):
        raise SshKeyError("is not a single line")
    tokens = text.split(None, 2)
    declared = tokens[0]
    if declared not in KEY_TYPES:
        if any(token in KEY_TYPES for token in text.split()):
            raise SshKeyError(
                "starts with authorized_keys options, which are not accepted from the platform"
            )
        raise SshKeyError(
            "does not start with a known SSH public key type "
            "(ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa, ...)"
        )
    if len(tokens) < 2:
        raise SshKeyError(f"has no key data after {declared}")
    try:
        blob = _b64decode(tokens[1])
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SshKeyError(f"{declared} key data is not valid base64") from None
    if len(blob) > MAX_BLOB_BYTES:
        raise SshKeyError(f"{declared} key data is larger than {MAX_BLOB_BYTES} bytes")
    try:
        _check_blob(declared, blob)
    except ValueError as e:
        raise SshKeyError(f"{declared} key is malformed: {e}") from None
    comment = tokens[2].strip() if len(tokens) > 2 else ""
    if any(not (c.isprintable() or c == "\t") for c in comment):
        raise SshKeyError("has a control character in its comment")
    canonical = base64.b64encode(blob).decode("ascii")
    return f"{declared} {canonical} {comment}" if comment else f"{declared} {canonical}"


def key_identity(line: str) -> Optional[tuple[str, bytes]]:
    """(type, blob) of an authorized_keys line, options allowed; None if it holds no key.

    Lenient on purpose: it reads the user's existing file to avoid adding a
    key twice, and must never fail on lines that are not ours.
    """
    import binascii

    text = line.strip()
    if not text or text.startswith("#"):
        return None
    first = text.split(None, 1)[0]
    if first not in KEY_TYPES:
        _, text = _skip_options(text)
    parts = text.split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        return None
    try:
        return parts[0], _b64decode(parts[1])
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def _certified_key(declared: str, data: bytes) -> bytes:
    """The blob of the plain key a certificate certifies (what ssh-keygen -l names)."""
    plain = CERTIFICATE_TYPES[declared]
    blob = _Blob(data)
    blob.string()  # type
    blob.string()  # nonce
    start = blob.pos
    _key_fields(plain, blob)
    return len(plain).to_bytes(4, "big") + plain.encode() + data[start : blob.pos]


def fingerprint(line: str) -> str:
    """``TYPE SHA256:...`` as ``ssh-keygen -l`` prints it: names a key without quoting it.

    For a certificate it is the certified key's fingerprint, as ssh-keygen shows.
    """
    identity = key_identity(line)
    if identity is None:
        raise SshKeyError("holds no public key")
    key_type, blob = identity
    if key_type in CERTIFICATE_TYPES:
        with contextlib.suppress(ValueError):  # malformed: name the whole blob
            blob = _certified_key(key_type, blob)
    import base64
    import hashlib

    digest = hashlib.sha256(blob).digest()
    return f"{key_type} SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _merge(existing: str, lines: Sequence[str]) -> tuple[str, list[str]]:
    present = {key_identity(old) for old in existing.splitlines()}
    merged = existing if not existing or existing.endswith("\n") else existing + "\n"
    added = []
    for line in lines:
        identity = key_identity(line)
        if identity is None or identity in present:
            continue
        present.add(identity)
        added.append(line)
        merged += line + "\n"
    return merged, added


def merge_authorized_keys(existing: str, lines: Sequence[str]) -> str:
    """``existing`` with each of ``lines`` appended unless its key is already there.

    The user's lines (comments, options, other keys) stay as they are and in
    order; the new ones follow in the order given.
    """
    return _merge(existing, lines)[0]


# --- Conversions that need cryptography ----------------------------------------------


def public_key_from_certificate(cert: bytes) -> str:
    """The public key of a certificate (PEM or DER) as an OpenSSH line, e.g. ``ssh-rsa ...``.

    The platform delivers fingerprint-only public keys as X.509 certificates
    (RSA in practice; EC and Ed25519 work the same way).
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(cert)
        else:
            certificate = x509.load_der_x509_certificate(cert)
        line = (
            certificate.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode("ascii")
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SshKeyError("the certificate or its public key cannot be used for SSH") from None
    return validate_public_key(line)


def _load_private_key(key: bytes) -> PrivateKeyTypes:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        if b"OPENSSH PRIVATE KEY" in key:
            return serialization.load_ssh_private_key(key, password=None)
        if key.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_private_key(key, password=None)
        return serialization.load_der_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SshKeyError("not an unencrypted private key usable for SSH") from None


def private_key_openssh(key: bytes) -> bytes:
    """A private key (PEM: PKCS#8, PKCS#1 or SEC1; DER; or OpenSSH) in OpenSSH format.

    The result differs between calls (the format has a random check
    number): compare keys with :func:`public_key_from_private`.
    """
    from cryptography.hazmat.primitives import serialization

    loaded = _load_private_key(key)
    try:
        return loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    except (ValueError, TypeError):
        raise SshKeyError("the private key's type cannot be written for SSH") from None


def public_key_from_private(key: bytes) -> str:
    """The OpenSSH public key line of a private key, (PEM, DER or OpenSSH)."""
    from cryptography.hazmat.primitives import serialization

    loaded = _load_private_key(key)
    try:
        line = (
            loaded.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode("ascii")
        )
    except (ValueError, TypeError):
        raise SshKeyError("the private key's type cannot be used for SSH") from None
    return validate_public_key(line)


# --- Where keys go ---------------------------------------------------------------------


def lookup_account(ctx: Context, username: str) -> Account:
    """The user's uid, gid and home from the root's /etc/passwd (create-user made it).

    The name passes the user name rule (:mod:`azagent.names`) first: key
    paths are resolved against it.
    """
    try:
        names.user_name(username, "the owner of the keys")
        account = users.accounts(ctx).get(username)
    except AzagentError as e:
        raise SshKeyError(e.reason) from None
    if account is None:
        raise SshKeyError(
            f"user {username} is not in /etc/passwd (the create-user stage did not create it)"
        )
    home = PurePosixPath(account.home)
    if not home.is_absolute() or ".." in home.parts or home == PurePosixPath("/"):
        raise SshKeyError(f"user {username} has an unusable home directory in /etc/passwd")
    return account


def _inside(path: PurePosixPath, directory: PurePosixPath) -> bool:
    return path != directory and directory in path.parents


def resolve_key_path(path_template: str, username: str, home_root: str, user_home: str) -> str:
    """The absolute path a platform ``Path`` names, refused unless it is inside ``user_home``.

    ``$HOME`` stands for the home root (``OS.HomeDir``): ``$HOME/<username>/...``
    is taken to mean the user's own home, wherever /etc/passwd puts it. An
    absolute path must name a file under ``user_home``. ``..`` is refused
    outright; see :mod:`azagent.homefiles` for symbolic links on disk.
    """
    if any(not c.isprintable() or c.isspace() for c in path_template):
        raise SshKeyError("contains a space or control character")
    home = PurePosixPath(user_home)
    if path_template.startswith("$HOME/"):
        rest = PurePosixPath(path_template[len("$HOME/") :])
        if rest.parts and rest.parts[0] == username:
            candidate = home.joinpath(*rest.parts[1:])
        else:
            candidate = PurePosixPath(home_root).joinpath(rest)
    elif path_template.startswith("/"):
        candidate = PurePosixPath(path_template)
    else:
        raise SshKeyError("is neither an absolute path nor one starting with $HOME/")
    if ".." in path_template.split("/") or "$" in str(candidate):
        raise SshKeyError("contains '..' or an unknown variable")
    if not _inside(candidate, home):
        raise SshKeyError(f"is not inside the home directory of {username} ({user_home})")
    return str(candidate)


# --- The account the keys are for --------------------------------------------------------


def key_owner(ctx: Context, data: ProvisioningData) -> Account:
    """The account the keys of ``data`` go to, refused unless create-user accepts it.

    Keys are placed only for the user create-user accepted (created or
    adopted) for this VM in this boot: it records that in
    :data:`azagent.provisioning.ACCEPTED_USER` as its last step, and its run
    must have succeeded. So whatever the order of the stages, a re-run by
    hand or a provisioning.json edited since, a user it refused, failed on
    or never looked at gets no key. When create-user did not run this boot
    (masked: the image manages users some other way), its rules are applied
    here: never root (nor any uid 0), never a distribution's account, never
    a system account unless ``Provisioning.AllowResetSysUser=y``.
    """
    name = data.username

    def refused(why: str) -> SshKeyError:
        return SshKeyError(f"the keys of {name} are not installed: {why}")

    try:
        users.check_name(name)
    except AzagentError as e:
        raise refused(e.reason) from None
    account = lookup_account(ctx, name)
    try:
        users.check_existing_account(ctx, account)
    except AzagentError as e:
        raise refused(e.reason) from None
    ran = read_result(ctx.root, "create-user")
    if ran is None:
        return account  # masked: its rules, applied above, are what counts
    if ran.state not in (STATE_DONE, STATE_NOTHING):
        reason = f": {ran.reason}" if ran.reason else ""
        raise refused(f"create-user's run this boot {ran.state}{reason}")
    accepted = provisioning.accepted_user(ctx)
    if accepted is None:
        raise refused(f"create-user has not accepted {name} for this VM this boot")
    if accepted.username != name:
        raise refused(f"create-user accepted {accepted.username} this boot, not {name}")
    if accepted.vm_id != data.vm_id:
        raise refused(f"create-user accepted {name} for another VM ({accepted.vm_id})")
    if accepted.uid != account.uid:
        raise refused(
            f"create-user accepted {name} with uid {accepted.uid}, "
            f"{users.ACCOUNTS} now gives uid {account.uid}"
        )
    return account


def authorized_keys_files(
    ctx: Context, account: Account, wanted: Sequence[tuple[str, str]]
) -> list[HomeFile]:
    """Merge validated (path, line) pairs into their authorized_keys files, one per path."""
    by_path: dict[str, list[str]] = {}
    for path, line in wanted:
        check_path(ctx.root, account, path)
        by_path.setdefault(path, []).append(line)
    files = []
    for path, lines in by_path.items():
        existing = read_existing(ctx.root, account, path)
        old = existing[0].decode("utf-8", "surrogateescape") if existing else ""
        merged, added = _merge(old, lines)
        if added:
            names = ", ".join(fingerprint(line) for line in added)
            summary = f"add {len(added)} key(s) to {path} for {account.name}: {names}"
        elif merged != old:
            summary = f"end {path} with a newline"
        else:
            summary = f"make {path} owned by {account.name} with mode 0600"
        files.append(HomeFile(path, merged.encode("utf-8", "surrogateescape"), 0o600, summary))
    return files


def _key_problem(index: int, key: Key, kind: str, problem: str) -> SshKeyError:
    return SshKeyError(f"{kind} #{index} (Path {key.path}): {problem}")


def _target(ctx: Context, account: Account, index: int, key: Key, kind: str) -> str:
    home_root = ctx.config.required_str("OS.HomeDir")
    try:
        return resolve_key_path(key.path, account.name, home_root, account.home)
    except SshKeyError as e:
        raise _key_problem(index, key, kind, f"path {e.reason}") from None


def plan_inline_keys(ctx: Context, data: ProvisioningData) -> list[Action]:
    """Install the public keys given with their ``Value`` (OVF or IMDS).

    Every key and path is checked before anything is planned, so a bad one
    fails the stage with nothing written.
    """
    inline = [(i, k) for i, k in enumerate(data.public_keys, start=1) if k.value is not None]
    deferred = len(data.public_keys) - len(inline) + len(data.key_pairs)
    if deferred:
        log.info(
            "%d key(s) given by certificate fingerprint are left to the certificates stage",
            deferred,
        )
    if not inline:
        return []
    account = key_owner(ctx, data)
    wanted = []
    for index, key in inline:
        assert key.value is not None
        try:
            line = validate_public_key(key.value)
        except SshKeyError as e:
            raise _key_problem(index, key, "public key", e.reason) from None
        path = _target(ctx, account, index, key, "public key")
        try:
            check_path(ctx.root, account, path)
        except AzagentError as e:
            raise _key_problem(index, key, "public key", e.reason) from None
        wanted.append((path, line))
    return plan_files(ctx, account, authorized_keys_files(ctx, account, wanted))


def plan_certificate_keys(
    ctx: Context,
    data: ProvisioningData,
    certificates: Optional[Iterable[CertificateItem]] = None,
) -> list[Action]:
    """Install the public keys given only by ``Fingerprint``, and the key pairs.

    For the certificates stage. ``certificates`` are the items it is about to
    store (so it can plan before writing them); without it, the certificate
    and key of each thumbprint come from the certificate store
    (:mod:`azagent.certstore`). A public key becomes an authorized_keys
    line; a key pair becomes the private key at its ``Path`` (OpenSSH
    format, 0600) and its public half at ``Path.pub`` (0644), both the
    user's. A thumbprint that is malformed or not available is an error
    naming the key and thumbprint.
    """
    by_print = {c.thumbprint.upper(): c for c in certificates} if certificates is not None else {}
    store = CertStore.of(ctx)

    def material(index: int, key: Key, kind: str, private: bool) -> tuple[str, Optional[bytes]]:
        """The thumbprint the key names and its certificate (or private key) if available."""
        try:
            thumbprint = normalize_thumbprint(key.fingerprint or "")
            if certificates is None:
                found = store.find_private_key if private else store.find_certificate
                return thumbprint, found(thumbprint)
        except CertStoreError as e:
            raise _key_problem(index, key, kind, e.reason) from None
        item = by_print.get(thumbprint)
        if item is None:
            return thumbprint, None
        return thumbprint, item.private_key_pem if private else item.certificate_pem

    by_fingerprint = [
        (i, k)
        for i, k in enumerate(data.public_keys, start=1)
        if k.value is None and k.fingerprint is not None
    ]
    if not by_fingerprint and not data.key_pairs:
        return []
    account = key_owner(ctx, data)

    wanted = []
    for index, key in by_fingerprint:
        thumbprint, cert = material(index, key, "public key", private=False)
        if cert is None:
            raise _key_problem(
                index, key, "public key", f"certificate {thumbprint} was not delivered"
            )
        try:
            line = public_key_from_certificate(cert)
        except SshKeyError as e:
            raise _key_problem(index, key, "public key", f"certificate {thumbprint}: {e}") from None
        path = _target(ctx, account, index, key, "public key")
        try:
            check_path(ctx.root, account, path)
        except AzagentError as e:
            raise _key_problem(index, key, "public key", e.reason) from None
        wanted.append((path, line))
    files = authorized_keys_files(ctx, account, wanted)

    for index, pair in enumerate(data.key_pairs, start=1):
        thumbprint, private = material(index, pair, "key pair", private=True)
        if private is None:
            raise _key_problem(
                index, pair, "key pair", f"the private key of {thumbprint} was not delivered"
            )
        try:
            openssh = private_key_openssh(private)
            public = public_key_from_private(private)
        except SshKeyError as e:
            raise _key_problem(index, pair, "key pair", f"{thumbprint}: {e}") from None
        path = _target(ctx, account, index, pair, "key pair")
        try:
            check_path(ctx.root, account, path)
            check_path(ctx.root, account, path + ".pub")
        except AzagentError as e:
            raise _key_problem(index, pair, "key pair", e.reason) from None
        name = fingerprint(public)

        def same_key(existing: bytes, public: str = public) -> bool:
            try:
                return public_key_from_private(existing) == public
            except SshKeyError:
                return False

        files.append(
            HomeFile(
                path,
                openssh,
                0o600,
                f"install the private key {name} as {path} for {account.name}",
                same=same_key,
            )
        )
        files.append(
            HomeFile(
                path + ".pub",
                (public + "\n").encode("ascii"),
                0o644,
                f"install the public key {name} as {path}.pub for {account.name}",
            )
        )
    return plan_files(ctx, account, files)
