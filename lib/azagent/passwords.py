"""crypt(3) password hashes for /etc/shadow, without Python's ``crypt`` module.

``crypt`` left the standard library in Python 3.13, and the agent must run
there. :func:`hash_password` asks libxcrypt, through ctypes, for the hash: it
is the library that ``login``, ``su``, ``sshd`` (via PAM) and ``chpasswd``
use to *verify* the hash later, so what it produces is by construction what
they accept, and it is the only place bcrypt is available without a
third-party package. It is called through ``crypt_rn``, whose caller-sized
``struct crypt_data`` makes it reentrant and lets the library refuse a
buffer that is too small instead of overrunning it. The soname is
``libcrypt.so.2`` on Fedora-derived distributions (RHEL 9 ships
``libcrypt.so.1`` only in libxcrypt-compat) and ``libcrypt.so.1`` on Debian
and Ubuntu; both are tried.

Where libxcrypt is absent (or predates ``crypt_rn``, as glibc's own
libcrypt did) or refuses a method, the SHA-crypt (``5``, ``6``) and MD5-crypt
(``1``) algorithms fall back to the short pure-Python implementations below,
which follow Drepper's and Kamp's reference code and are tested against
libxcrypt, ``openssl passwd`` and the published test vectors. bcrypt
(``2a``) is long and subtle to implement, so it has no fallback: it fails
with a reason naming the missing library.

Salts come from the operating system's random source (:func:`os.urandom`,
through :class:`random.SystemRandom`, which is what :mod:`secrets` uses;
``secrets`` itself would load hmac and OpenSSL's hashlib at every first
boot, a cost under emulation: hashlib and hmac are imported only by the
pure-Python fallback and by :func:`verify`). SHA-crypt uses its default 5000 rounds (no
``rounds=`` field), as ``chpasswd`` and the ``crypt`` module did, so the hash
is what an image's own tools would produce. MD5-crypt keeps at most 8 salt
characters (the algorithm reads no more); bcrypt always takes 16 random bytes
(22 characters) and reads at most 72 bytes of the password.
"""

from __future__ import annotations

import base64
import os

from azagent.errors import StageFailed
from azagent.redact import register

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

# crypt(3)'s base-64 alphabet (salts, SHA-crypt and MD5-crypt output).
CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# bcrypt's own alphabet, in a different order.
BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_STANDARD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

CRYPT_IDS = ("1", "2a", "5", "6")
MIN_SALT_LENGTH = 1
MAX_SALT_LENGTH = 16
MD5_MAX_SALT = 8
# About 0.2 s per hash on a current core: the cost is paid at every login
# and sudo, and OWASP's floor is 10.
BCRYPT_COST = 12
SHA_ROUNDS = 5000
MD5_ROUNDS = 1000

LIBCRYPT_SONAMES = ("libcrypt.so.2", "libcrypt.so.1")
# sizeof(struct crypt_data) is 32768 in libxcrypt; crypt_rn refuses a
# smaller buffer rather than overrunning it.
CRYPT_DATA_SIZE = 32768


class PasswordHashError(StageFailed):
    """The password could not be hashed as configured."""


def hash_password(password: str, crypt_id: str, salt_length: int) -> str:
    """A crypt(3) hash of ``password`` for /etc/shadow (Provisioning.PasswordCryptId).

    ``crypt_id`` is ``1`` (MD5), ``2a`` (bcrypt), ``5`` (SHA-256) or ``6``
    (SHA-512); ``salt_length`` (1-16, Provisioning.PasswordCryptSaltLength)
    applies to 1, 5 and 6. Both the password and the hash are registered for
    redaction.
    """
    register(password)
    if "\0" in password:
        raise PasswordHashError("the password contains a NUL character")
    setting = crypt_setting(crypt_id, salt_length)
    hashed = crypt_with_libcrypt(password, setting)
    if hashed is None:
        if crypt_id == "2a":
            raise PasswordHashError(
                "Provisioning.PasswordCryptId=2a (bcrypt) needs libxcrypt "
                f"({' or '.join(LIBCRYPT_SONAMES)} with crypt_rn), which is missing "
                "or refuses bcrypt; use 6 (SHA-512)"
            )
        hashed = crypt_pure(password, setting)
    register(hashed)
    return hashed


def verify(password: str, hashed: str, crypt_id: str) -> bool:
    """Whether ``hashed`` is a ``crypt_id`` hash of ``password``.

    mount-ovf keeps the previous hash when the password did not change, so
    that a re-run does not make create-user rewrite /etc/shadow with a fresh
    salt; a hash of another method than the configured one does not count.
    """
    if "\0" in password or not hashed.startswith(f"${crypt_id}$"):
        return False
    candidate = crypt_with_libcrypt(password, hashed)
    if candidate is None and crypt_id != "2a":
        try:
            candidate = crypt_pure(password, hashed)
        except (PasswordHashError, ValueError):
            return False
    import hmac

    return candidate is not None and hmac.compare_digest(candidate.encode(), hashed.encode())


def crypt_setting(crypt_id: str, salt_length: int) -> str:
    """The method prefix and a fresh random salt, e.g. ``$6$Jx1q0f9pZb``."""
    if crypt_id == "2a":
        return f"$2a${BCRYPT_COST:02d}${_bcrypt_salt(os.urandom(16))}"
    if crypt_id not in CRYPT_IDS:
        raise PasswordHashError(
            f"unknown Provisioning.PasswordCryptId {crypt_id!r}: expected one of "
            + ", ".join(CRYPT_IDS)
        )
    if not MIN_SALT_LENGTH <= salt_length <= MAX_SALT_LENGTH:
        raise PasswordHashError(
            f"Provisioning.PasswordCryptSaltLength={salt_length} is out of range: "
            f"expected {MIN_SALT_LENGTH} to {MAX_SALT_LENGTH}"
        )
    if crypt_id == "1":
        salt_length = min(salt_length, MD5_MAX_SALT)
    import random

    choose = random.SystemRandom().choice
    salt = "".join(choose(CRYPT_ALPHABET) for _ in range(salt_length))
    return f"${crypt_id}${salt}"


def _bcrypt_salt(raw: bytes) -> str:
    """16 bytes in bcrypt's base 64: 22 characters, the last one canonical."""
    standard = base64.b64encode(raw).decode("ascii").rstrip("=")
    return standard.translate(str.maketrans(_STANDARD_B64, BCRYPT_ALPHABET))


# --- libxcrypt ------------------------------------------------------------

_crypt_rn: Optional[Callable[..., Any]] = None
_looked_up = False


def _libcrypt() -> Optional[Callable[..., Any]]:
    """libxcrypt's crypt_rn, or None when this system has no usable libcrypt."""
    global _crypt_rn, _looked_up
    if _looked_up:
        return _crypt_rn
    _looked_up = True
    import ctypes

    for soname in LIBCRYPT_SONAMES:
        try:
            library = ctypes.CDLL(soname, use_errno=True)
            function = library.crypt_rn
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_char_p
        function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
        _crypt_rn = function
        break
    return _crypt_rn


def crypt_with_libcrypt(password: str, setting: str) -> Optional[str]:
    """libxcrypt's hash of ``password`` for ``setting``; None if unavailable or refused."""
    function = _libcrypt()
    if function is None:
        return None
    import ctypes

    data: ctypes.Array[ctypes.c_char] = ctypes.create_string_buffer(CRYPT_DATA_SIZE)
    try:
        result = function(password.encode(), setting.encode(), data, CRYPT_DATA_SIZE)
        hashed = None if result is None else bytes(result).decode("ascii")
    finally:
        # The buffer held a copy of the password; do not leave it to the heap.
        ctypes.memset(data, 0, CRYPT_DATA_SIZE)
    # libxcrypt marks failures with a leading '*' where it does not return NULL.
    method = setting[: setting.find("$", 1) + 1]
    if hashed is None or hashed.startswith("*") or not hashed.startswith(method):
        return None
    return hashed


# --- Pure Python: SHA-crypt and MD5-crypt -----------------------------------


def crypt_pure(password: str, setting: str) -> str:
    """SHA-crypt (``$5$``, ``$6$``) or MD5-crypt (``$1$``) of ``password``, in Python."""
    parts = setting.split("$")
    if len(parts) < 3 or parts[0] != "":
        raise PasswordHashError("malformed crypt setting")
    method = parts[1]
    key = password.encode()
    if method in ("5", "6"):
        rounds = SHA_ROUNDS
        custom_rounds = False
        salt_field = parts[2]
        if salt_field.startswith("rounds=") and len(parts) >= 4:
            rounds = max(1000, min(999_999_999, int(salt_field[len("rounds=") :])))
            custom_rounds = True
            salt_field = parts[3]
        return _sha_crypt(method, key, salt_field[:16].encode(), rounds, custom_rounds)
    if method == "1":
        return _md5_crypt(key, parts[2][:MD5_MAX_SALT].encode())
    raise PasswordHashError(f"no built-in implementation of crypt method ${method}$")


def _encode64(value: int, length: int) -> str:
    """``length`` characters of ``value``, least significant 6 bits first."""
    out = []
    for _ in range(length):
        out.append(CRYPT_ALPHABET[value & 0x3F])
        value >>= 6
    return "".join(out)


def _repeat(source: bytes, length: int) -> bytes:
    """``source`` repeated and cut to ``length`` bytes."""
    return (source * (length // len(source) + 1))[:length]


def _sha_crypt(method: str, key: bytes, salt: bytes, rounds: int, custom_rounds: bool) -> str:
    """Drepper's SHA-crypt, https://www.akkadia.org/drepper/SHA-crypt.txt."""
    import hashlib

    name = "sha256" if method == "5" else "sha512"

    def digest(*chunks: bytes) -> bytes:
        h = hashlib.new(name)
        for chunk in chunks:
            h.update(chunk)
        return h.digest()

    size = hashlib.new(name).digest_size
    alternate = digest(key, salt, key)
    a = hashlib.new(name)
    a.update(key + salt + _repeat(alternate, len(key)))
    n = len(key)
    while n:
        a.update(alternate if n & 1 else key)
        n >>= 1
    current = a.digest()

    p_bytes = _repeat(digest(key * len(key)), len(key))
    s_bytes = _repeat(digest(salt * (16 + current[0])), len(salt))
    for i in range(rounds):
        c = hashlib.new(name)
        c.update(p_bytes if i & 1 else current)
        if i % 3:
            c.update(s_bytes)
        if i % 7:
            c.update(p_bytes)
        c.update(current if i & 1 else p_bytes)
        current = c.digest()

    # Bytes are emitted in groups of three, in the order the reference
    # implementation fixes: a third of the digest apart, rotated per group.
    third = size // 3
    encoded = []
    for i in range(third):
        group = (i, i + third, i + 2 * third)
        shift = i % 3 if size == 64 else (-i) % 3
        b2, b1, b0 = group[shift:] + group[:shift]
        encoded.append(_encode64(current[b2] << 16 | current[b1] << 8 | current[b0], 4))
    if size == 64:
        encoded.append(_encode64(current[63], 2))
    else:
        encoded.append(_encode64(current[31] << 8 | current[30], 3))
    prefix = f"${method}$" + (f"rounds={rounds}$" if custom_rounds else "")
    return prefix + salt.decode("ascii") + "$" + "".join(encoded)


def _md5_crypt(key: bytes, salt: bytes) -> str:
    """Poul-Henning Kamp's MD5-crypt, as in FreeBSD and glibc."""
    import hashlib

    magic = b"$1$"
    alternate = hashlib.md5(key + salt + key, usedforsecurity=False).digest()
    h = hashlib.md5(key + magic + salt, usedforsecurity=False)
    h.update(_repeat(alternate, len(key)))
    n = len(key)
    while n:
        h.update(b"\0" if n & 1 else key[:1])
        n >>= 1
    current = h.digest()
    for i in range(MD5_ROUNDS):
        c = hashlib.md5(usedforsecurity=False)
        c.update(key if i & 1 else current)
        if i % 3:
            c.update(salt)
        if i % 7:
            c.update(key)
        c.update(current if i & 1 else key)
        current = c.digest()
    groups = ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))
    encoded = [_encode64(current[a] << 16 | current[b] << 8 | current[c], 4) for a, b, c in groups]
    encoded.append(_encode64(current[11], 2))
    return "$1$" + salt.decode("ascii") + "$" + "".join(encoded)
