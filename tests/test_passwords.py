"""Password hashes: right format and salt, and accepted by implementations we did not write.

The hashes are checked three independent ways: the published test vectors
(Drepper's SHA-crypt specification, crypt_blowfish's test suite), OpenSSL's
``openssl passwd`` (its own MD5/SHA-crypt code), and, where Python still has
it (<= 3.12), the ``crypt`` module, which calls the system's libcrypt for
every method including bcrypt.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

import pytest
from conftest import REPO

from azagent import passwords
from azagent.errors import StageFailed
from azagent.redact import redact

OPENSSL = shutil.which("openssl")
PASSWORDS = [
    "",
    "a",
    "Hello world!",
    "correct horse battery staple",
    "pässwörd ✓",
    "x" * 15,
    "x" * 16,
    "x" * 17,
    "y" * 31,
    "y" * 32,
    "y" * 33,
    "z" * 64,
    "z" * 65,
    "w" * 123,
]


def system_crypt() -> Optional[Callable[[str, str], Optional[str]]]:
    """The standard library's crypt.crypt (Python <= 3.12), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
    function: Callable[[str, str], Optional[str]] = crypt.crypt
    return function


def openssl_passwd(password: str, method: str, salt: str) -> str:
    """``openssl passwd -<method>``, the password on stdin."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    done = subprocess.run(
        [OPENSSL, "passwd", f"-{method}", "-salt", salt, "-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


def split(hashed: str) -> tuple[str, str, str]:
    """(method, salt, digest) of a $id$salt$digest hash."""
    match = re.fullmatch(r"\$(1|5|6)\$([./0-9A-Za-z]*)\$([./0-9A-Za-z]+)", hashed)
    assert match, hashed
    return match.group(1), match.group(2), match.group(3)


# --- The built-in SHA-crypt and MD5-crypt against published vectors ---------


@pytest.mark.parametrize(
    ("password", "setting", "expected"),
    [
        # Drepper, "Unix crypt using SHA-256 and SHA-512", test vectors.
        (
            "Hello world!",
            "$5$saltstring",
            "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        ),
        (
            "Hello world!",
            "$6$saltstring",
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLi"
            "BFdcbYEdFCoEOfaS35inz1",
        ),
        (
            "Hello world!",
            "$6$rounds=10000$saltstringsaltstring",
            "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/Ur"
            "jmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
        ),
        (
            "This is just a test",
            "$5$rounds=5000$toolongsaltstring",
            "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5",
        ),
        ("password", "$1$saltsalt", "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"),
    ],
)
def test_builtin_crypt_matches_published_vectors(
    password: str, setting: str, expected: str
) -> None:
    assert passwords.crypt_pure(password, setting) == expected


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    ("method", "salt"), [("1", "abcdefgh"), ("5", "Q/x9"), ("6", "a.B/9zZ0a.B/9zZ0")]
)
def test_builtin_crypt_matches_openssl(password: str, method: str, salt: str) -> None:
    if not password and method != "1":
        pytest.skip("openssl passwd prints <NULL> for an empty SHA-crypt password")
    setting = f"${method}${salt}"
    assert passwords.crypt_pure(password, setting) == openssl_passwd(password, method, salt)


@pytest.mark.parametrize("password", PASSWORDS)
def test_builtin_crypt_matches_the_system_libcrypt(password: str) -> None:
    crypt = system_crypt()
    if crypt is None:
        pytest.skip("no crypt module on this Python")
    for setting in ("$1$", "$1$12345678", "$5$s", "$5$0123456789abcdef", "$6$rounds=1000$x"):
        assert passwords.crypt_pure(password, setting) == crypt(password, setting), setting


# --- hash_password ----------------------------------------------------------


@pytest.mark.parametrize("crypt_id", ["1", "5", "6"])
@pytest.mark.parametrize("salt_length", [1, 2, 8, 10, 16])
def test_sha_and_md5_hashes_have_the_requested_salt_and_verify(
    crypt_id: str, salt_length: int
) -> None:
    phrase = "Azure-Provisioning 1!"
    hashed = passwords.hash_password(phrase, crypt_id, salt_length)
    method, salt, _ = split(hashed)
    assert method == crypt_id
    # MD5-crypt reads at most 8 salt characters.
    assert len(salt) == (min(salt_length, 8) if crypt_id == "1" else salt_length)
    assert openssl_passwd(phrase, crypt_id, salt) == hashed
    assert openssl_passwd(phrase + "x", crypt_id, salt) != hashed
    crypt = system_crypt()
    if crypt is not None:
        assert crypt(phrase, hashed) == hashed


def test_bcrypt_hash_is_canonical_cost_12_and_verifies() -> None:
    phrase = "Azure-Provisioning 1!"
    hashed = passwords.hash_password(phrase, "2a", 10)
    match = re.fullmatch(r"\$2a\$12\$([./A-Za-z0-9]{22})([./A-Za-z0-9]{31})", hashed)
    assert match, hashed
    # 16 random bytes leave 4 unused bits in the last salt character; a
    # non-canonical salt would come back altered in the hash.
    assert match.group(1)[-1] in ".Oeu"
    assert passwords.verify(phrase, hashed, "2a")
    assert not passwords.verify(phrase + "x", hashed, "2a")
    crypt = system_crypt()
    if crypt is not None:
        assert crypt(phrase, hashed) == hashed


def test_libcrypt_bcrypt_matches_published_vector() -> None:
    # crypt_blowfish's own test vector.
    hashed = passwords.crypt_with_libcrypt("U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.")
    if hashed is None:
        pytest.skip("no libxcrypt with bcrypt on this system")
    assert hashed == "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"


@pytest.mark.parametrize("crypt_id", ["1", "2a", "5", "6"])
def test_every_call_draws_a_new_salt(crypt_id: str) -> None:
    hashes = [passwords.hash_password("same password", crypt_id, 16) for _ in range(8)]
    salts = {h.split("$")[3][:22] if crypt_id == "2a" else h.split("$")[2] for h in hashes}
    assert len(salts) == len(hashes)
    assert len(set(hashes)) == len(hashes)


def test_md5_settings_carry_at_most_8_salt_characters() -> None:
    assert len(passwords.crypt_setting("1", 16)) == len("$1$") + 8
    assert len(passwords.crypt_setting("1", 3)) == len("$1$") + 3
    assert len(passwords.crypt_setting("6", 16)) == len("$6$") + 16


def test_salt_characters_come_from_the_whole_crypt_alphabet() -> None:
    salts = "".join(passwords.crypt_setting("6", 16)[3:] for _ in range(200))
    assert set(salts) <= set(passwords.CRYPT_ALPHABET)
    # 3200 draws from 64 characters: every one shows up unless the draw is biased.
    assert set(salts) == set(passwords.CRYPT_ALPHABET)


@pytest.mark.parametrize(
    ("crypt_id", "salt_length", "reason"),
    [
        ("7", 10, "unknown Provisioning.PasswordCryptId '7'"),
        ("", 10, "unknown Provisioning.PasswordCryptId ''"),
        ("6", 0, "Provisioning.PasswordCryptSaltLength=0 is out of range"),
        ("5", 17, "Provisioning.PasswordCryptSaltLength=17 is out of range"),
    ],
)
def test_bad_settings_fail_with_a_reason(crypt_id: str, salt_length: int, reason: str) -> None:
    with pytest.raises(StageFailed, match=re.escape(reason)):
        passwords.hash_password("a password", crypt_id, salt_length)


def test_a_nul_in_the_password_is_refused() -> None:
    with pytest.raises(passwords.PasswordHashError, match="NUL"):
        passwords.hash_password("pass\0word", "6", 10)


def test_password_and_hash_are_registered_for_redaction() -> None:
    phrase = "Very-Secret-Password-42"
    hashed = passwords.hash_password(phrase, "6", 10)
    text = redact(f"user typed {phrase} and got {hashed}")
    assert phrase not in text
    assert hashed not in text
    assert hashed.split("$")[3] not in text


def test_without_libcrypt_sha_still_works_and_bcrypt_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(passwords, "_libcrypt", lambda: None)
    hashed = passwords.hash_password("fallback password", "6", 12)
    _, salt, _ = split(hashed)
    assert openssl_passwd("fallback password", "6", salt) == hashed
    assert passwords.verify("fallback password", hashed, "6")
    with pytest.raises(passwords.PasswordHashError, match="needs libxcrypt"):
        passwords.hash_password("fallback password", "2a", 10)


def test_verify_wants_the_configured_method() -> None:
    hashed = passwords.hash_password("pw-one", "6", 10)
    assert passwords.verify("pw-one", hashed, "6")
    assert not passwords.verify("pw-two", hashed, "6")
    assert not passwords.verify("pw-one", hashed, "5")
    assert not passwords.verify("pw-one", "$6$broken", "6")
    assert not passwords.verify("pw-one", "*", "6")


def test_works_without_the_crypt_module(tmp_path: Path) -> None:
    """Python 3.13 has no crypt module: the hash must not need it."""
    script = (
        "import sys; sys.modules['crypt'] = None; sys.modules['_crypt'] = None\n"
        "from azagent import passwords\n"
        "print(passwords.hash_password('no crypt module', '6', 10))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO / "lib")},
    )
    assert done.returncode == 0, done.stderr
    _, salt, _ = split(done.stdout.strip())
    assert openssl_passwd("no crypt module", "6", salt) == done.stdout.strip()
