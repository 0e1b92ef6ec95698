"""SSH keys and sshd settings, the library side: pure checks and conversions.

Public keys come from independent producers (ssh-keygen, cryptography, blobs
written out by hand from PROTOCOL.sshkey) and the verdicts are cross-checked
against ssh-keygen itself where it can judge. Every rejection is checked not
to quote key material.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from conftest import FIXTURES, snapshot
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from azagent import certs, config, homefiles, sshd, sshkeys
from azagent.context import Context
from azagent.homefiles import HomeFileError
from azagent.provisioning import Key, ProvisioningData
from azagent.sshkeys import SshKeyError
from azagent.users import Account

UID, GID = 4242, 4343
# The two certificates of WALinuxAgent's wire/certs.xml: with and without a private key.
KEYED = "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"
PLAIN = "8979F1AC8C4215827BF3B5A403E6137B504D02A4"


def ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        pytest.fail("ssh-keygen is missing: install openssh-client")
    return found


def string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def line(blob: bytes, comment: str = "") -> str:
    key_type = blob[4 : 4 + struct.unpack(">I", blob[:4])[0]].decode()
    text = f"{key_type} {base64.b64encode(blob).decode()}"
    return f"{text} {comment}" if comment else text


def openssh_public(key: object) -> str:
    public = key.public_key()  # type: ignore[attr-defined]
    return str(
        public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
    )


def blob_of(text: str) -> bytes:
    return base64.b64decode(text.split()[1])


# --- Keys of every type ----------------------------------------------------------------


def sk_ed25519() -> str:
    pk = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return line(string(b"sk-ssh-ed25519@openssh.com") + string(pk) + string(b"ssh:"), "yubikey")


def sk_ecdsa() -> str:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return line(
        string(b"sk-ecdsa-sha2-nistp256@openssh.com")
        + string(b"nistp256")
        + string(point)
        + string(b"ssh:")
    )


def mpint(value: int) -> bytes:
    return string(value.to_bytes(value.bit_length() // 8 + 1, "big"))


def dss() -> str:
    """Written out by hand: cryptography is deprecating DSA in the SSH format."""
    numbers = dsa.generate_private_key(1024).private_numbers()  # noqa: S505 - ssh-dss is 1024
    public = numbers.public_numbers
    p, q, g = public.parameter_numbers.p, public.parameter_numbers.q, public.parameter_numbers.g
    return line(string(b"ssh-dss") + mpint(p) + mpint(q) + mpint(g) + mpint(public.y))


def plain_keys() -> dict[str, str]:
    return {
        "ssh-rsa": openssh_public(rsa.generate_private_key(65537, 2048)) + " alice@laptop",
        "ssh-dss": dss(),
        "ecdsa-sha2-nistp256": openssh_public(ec.generate_private_key(ec.SECP256R1())),
        "ecdsa-sha2-nistp384": openssh_public(ec.generate_private_key(ec.SECP384R1())),
        "ecdsa-sha2-nistp521": openssh_public(ec.generate_private_key(ec.SECP521R1())),
        "ssh-ed25519": openssh_public(ed25519.Ed25519PrivateKey.generate()) + " a b  c",
        "sk-ssh-ed25519@openssh.com": sk_ed25519(),
        "sk-ecdsa-sha2-nistp256@openssh.com": sk_ecdsa(),
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A public key of every type and a certificate of each, signed by ssh-keygen."""
    work = tmp_path_factory.mktemp("keys")
    ca = work / "ca"
    subprocess.run(
        [ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True, timeout=30
    )
    result = plain_keys()
    for index, (key_type, text) in enumerate(list(result.items())):
        public = work / f"key{index}.pub"
        public.write_text(text + "\n")
        subprocess.run(
            [ssh_keygen(), "-q", "-s", str(ca), "-I", "test", "-n", "alice", str(public)],
            check=True,
            timeout=30,
            capture_output=True,
        )
        certificate = (work / f"key{index}-cert.pub").read_text().strip()
        assert certificate.split()[0] == sshkeys._cert_name(key_type)
        result[certificate.split()[0]] = certificate
    return result


def test_every_openssh_type_is_known() -> None:
    assert len(sshkeys.KEY_TYPES) == 16
    assert "sk-ssh-ed25519-cert-v01@openssh.com" in sshkeys.KEY_TYPES
    assert "ecdsa-sha2-nistp521-cert-v01@openssh.com" in sshkeys.KEY_TYPES


def test_valid_keys_of_every_type_are_accepted(keys: dict[str, str], tmp_path: Path) -> None:
    assert set(keys) == sshkeys.KEY_TYPES
    for key_type, text in keys.items():
        assert sshkeys.validate_public_key(text) == text, key_type
        # ssh-keygen agrees they are keys (the hand-made security keys included).
        path = tmp_path / "k.pub"
        path.write_text(text + "\n")
        done = subprocess.run(
            [ssh_keygen(), "-l", "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, (key_type, done.stderr)
        assert done.stdout.split()[1] == sshkeys.fingerprint(text).split()[1], key_type


def test_normalization_strips_line_ends_and_recodes_the_blob(keys: dict[str, str]) -> None:
    text = keys["ssh-ed25519"]
    assert sshkeys.validate_public_key(f"  {text}\r\n") == text
    bare = " ".join(text.split()[:2])
    assert sshkeys.validate_public_key(bare + "\t") == bare


def rsa_blob(bits: int, exponent: int = 65537) -> bytes:
    modulus = (1 << (bits - 1)) | 1
    return (
        string(b"ssh-rsa")
        + string(exponent.to_bytes(3, "big"))
        + string(b"\x00" + modulus.to_bytes(bits // 8, "big"))
    )


def rejected_cases(keys: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Input -> (what it is, a word the reason must contain)."""
    ed = keys["ssh-ed25519"]
    ed_blob = blob_of(ed)
    ed_b64 = ed.split()[1]
    private = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )
    pkcs8 = (
        rsa.generate_private_key(65537, 2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return {
        f'command="/bin/sh" {ed}': ("forced command option", "options"),
        f'no-pty,from="10.0.0.0/8" {ed}': ("restriction options", "options"),
        f"restrict {ed}": ("restrict option", "options"),
        private: ("OpenSSH private key", "private key"),
        pkcs8: ("PKCS#8 private key", "private key"),
        pkcs8.splitlines()[1]: ("a line of a private key", "known SSH public key type"),
        f"ssh-rsa {ed_b64}": ("declared type differs from the blob", "ssh-ed25519"),
        f"ssh-foo {ed_b64}": ("unknown type", "known SSH public key type"),
        f"rsa-sha2-256 {ed_b64}": ("a signature algorithm is not a key type", "known"),
        "ssh-ed25519": ("type without key data", "no key data"),
        f"ssh-ed25519 {ed_b64[:-4]}": ("truncated base64", "base64"),
        f"ssh-ed25519 {ed_b64}!": ("base64 with junk", "base64"),
        line(ed_blob[:-3]): ("truncated blob", "truncated"),
        line(ed_blob + b"\x00"): ("trailing bytes", "trailing"),
        line(rsa_blob(768)): ("768-bit RSA", "768 bits"),
        line(rsa_blob(2048, exponent=65536)): ("even RSA exponent", "exponent"),
        line(string(b"ecdsa-sha2-nistp256") + string(b"nistp384") + string(b"\x04" * 97)): (
            "curve name mismatch",
            "curve",
        ),
        line(string(b"sk-ssh-ed25519@openssh.com") + string(b"\x01" * 32) + string(b"")): (
            "security key without application",
            "application",
        ),
        f"{ed}\nssh-ed25519 {ed_b64}": ("two lines", "single line"),
        f"{ed} comment\0nul": ("NUL", "single line"),
        f"{ed} bell\x07": ("control character in the comment", "control"),
        "": ("empty", "empty"),
        "---- BEGIN SSH2 PUBLIC KEY ----": ("RFC 4716 format", "SSH2"),
        f"ssh-ed25519 {'A' * 40000}": ("oversized", "longer"),
    }


def test_invalid_keys_are_rejected_without_quoting_them(keys: dict[str, str]) -> None:
    ed_b64 = keys["ssh-ed25519"].split()[1]
    for text, (what, expected) in rejected_cases(keys).items():
        with pytest.raises(SshKeyError) as caught:
            sshkeys.validate_public_key(text)
        reason = caught.value.reason
        assert expected in reason, (what, reason)
        assert ed_b64[:16] not in reason, what
        for part in text.split():
            if len(part) > 20 and part not in sshkeys.KEY_TYPES:
                assert part[:20] not in reason, what


def test_key_identity_reads_the_users_lines_leniently(keys: dict[str, str]) -> None:
    ed = keys["ssh-ed25519"]
    identity = ("ssh-ed25519", blob_of(ed))
    assert sshkeys.key_identity(ed) == identity
    assert sshkeys.key_identity(f'command="echo a b",no-pty {ed}') == identity
    assert sshkeys.key_identity(f'from="a\\" b" {ed}') == identity
    assert sshkeys.key_identity("# ssh-ed25519 comment") is None
    assert sshkeys.key_identity("garbage") is None
    assert sshkeys.key_identity("") is None


def test_merge_keeps_the_users_lines_and_never_duplicates(keys: dict[str, str]) -> None:
    ed, rsa_key, ecdsa = keys["ssh-ed25519"], keys["ssh-rsa"], keys["ecdsa-sha2-nistp256"]
    existing = f"# my keys\nno-pty {ed}\n\nnot a key\n{rsa_key}"
    merged = sshkeys.merge_authorized_keys(existing, [ecdsa, rsa_key, ecdsa, ed])
    assert merged == f"# my keys\nno-pty {ed}\n\nnot a key\n{rsa_key}\n{ecdsa}\n"
    assert sshkeys.merge_authorized_keys(merged, [ecdsa, ed]) == merged
    assert sshkeys.merge_authorized_keys("", [ed]) == f"{ed}\n"


# --- Paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "home", "expected"),
    [
        ("$HOME/alice/.ssh/authorized_keys", "/home/alice", "/home/alice/.ssh/authorized_keys"),
        ("/home/alice/.ssh/authorized_keys", "/home/alice", "/home/alice/.ssh/authorized_keys"),
        ("/home/alice//.ssh/./id_rsa", "/home/alice", "/home/alice/.ssh/id_rsa"),
        # $HOME/<user> is the user's home wherever /etc/passwd puts it.
        ("$HOME/alice/.ssh/authorized_keys", "/data/alice", "/data/alice/.ssh/authorized_keys"),
    ],
)
def test_key_paths_inside_the_home_are_accepted(template: str, home: str, expected: str) -> None:
    assert sshkeys.resolve_key_path(template, "alice", "/home", home) == expected


@pytest.mark.parametrize(
    "template",
    [
        "$HOME/../../etc/cron.d/x",
        "$HOME/alice/../../etc/passwd",
        "/home/alice/.ssh/../../../etc/shadow",
        "/etc/passwd",
        "/home/bob/.ssh/authorized_keys",
        "$HOME/bob/.ssh/authorized_keys",
        "/home/alicex/.ssh/authorized_keys",
        "/home/alice",
        "$HOME/alice",
        "$HOME/alice/",
        ".ssh/authorized_keys",
        "~/.ssh/authorized_keys",
        "$HOME",
        "$USER/.ssh/authorized_keys",
        "/home/alice/.ssh/authorized keys",
        "/home/alice/.ssh/authorized_keys\n",
        "",
    ],
)
def test_key_paths_outside_the_home_are_refused(template: str) -> None:
    with pytest.raises(SshKeyError):
        sshkeys.resolve_key_path(template, "alice", "/home", "/home/alice")


def make_root(tmp_path: Path) -> tuple[Path, Account]:
    root = tmp_path / "root"
    home = root / "home/alice"
    home.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\nalice:x:{UID}:{GID}:Alice:/home/alice:/bin/bash\n"
    )
    os.chown(home, UID, GID)
    return root, Account("alice", "x", UID, GID, "/home/alice", "/bin/bash")


AUTHORIZED = "/home/alice/.ssh/authorized_keys"


@pytest.mark.parametrize(
    "link",
    [
        "keys",
        "/home/alice/keys",
        "/etc",
        "../../etc",
        "/home/bob/.ssh",
        "/",
        "../..",
        ".ssh",
    ],
)
def test_a_linked_ssh_directory_is_refused_wherever_it_points(tmp_path: Path, link: str) -> None:
    root, account = make_root(tmp_path)
    (root / "home/alice/keys").mkdir()
    (root / "home/alice/.ssh").symlink_to(link)
    with pytest.raises(HomeFileError, match=r"^/home/alice/\.ssh is a symbolic link"):
        homefiles.check_path(root, account, AUTHORIZED)


def test_a_linked_authorized_keys_file_is_refused(tmp_path: Path) -> None:
    root, account = make_root(tmp_path)
    (root / "home/alice/.ssh").mkdir()
    (root / "home/alice/.ssh/authorized_keys").symlink_to("/etc/passwd")
    with pytest.raises(HomeFileError, match=f"^{AUTHORIZED} is a symbolic link"):
        homefiles.check_path(root, account, AUTHORIZED)


@pytest.mark.parametrize("link", ["/etc", "../bob", "/home/alice"])
def test_a_home_that_is_a_link_is_refused(tmp_path: Path, link: str) -> None:
    root, account = make_root(tmp_path)
    (root / "home/alice").rmdir()
    (root / "home/alice").symlink_to(link)
    with pytest.raises(HomeFileError, match="alice: /home/alice is a symbolic link"):
        homefiles.check_path(root, account, AUTHORIZED)


def test_a_home_of_another_user_is_refused(tmp_path: Path) -> None:
    root, account = make_root(tmp_path)
    os.chown(root / "home/alice", UID + 1, GID)
    with pytest.raises(HomeFileError, match=f"is owned by uid {UID + 1}"):
        homefiles.check_path(root, account, AUTHORIZED)


def test_a_home_root_linked_by_root_is_followed(tmp_path: Path) -> None:
    """Fedora Atomic, RHEL image mode: /home -> var/home, made by root."""
    root, account = make_root(tmp_path)
    (root / "var").mkdir()
    (root / "home").rename(root / "var/home")
    (root / "home").symlink_to("var/home")
    fd = homefiles.open_home(root, account)
    try:
        assert os.path.samestat(os.fstat(fd), (root / "var/home/alice").stat())
    finally:
        os.close(fd)
    homefiles.check_path(root, account, AUTHORIZED)


@pytest.mark.parametrize("case", ["group-writable", "link of a user", "too many links"])
def test_a_home_root_link_someone_else_could_make_is_refused(tmp_path: Path, case: str) -> None:
    root, account = make_root(tmp_path)
    (root / "var").mkdir()
    (root / "home").rename(root / "var/home")
    (root / "home").symlink_to("var/home")
    if case == "group-writable":
        (root / "var").chmod(0o775)
        reason = "/var is writable by its group: the symbolic link /home is not followed"
    elif case == "link of a user":
        os.lchown(root / "home", UID, GID)
        reason = f"the symbolic link /home is owned by uid {UID}: not followed"
    else:
        (root / "home").unlink()
        (root / "home").symlink_to("home")
        reason = "too many levels of symbolic links"
    with pytest.raises(HomeFileError, match=reason):
        homefiles.check_path(root, account, AUTHORIZED)


# --- A link swapped in after planning, or while applying -----------------------------------


def planned_inline(tmp_path: Path) -> tuple[Path, list[object]]:
    root, _ = make_root(tmp_path)
    ctx = Context(stage="ssh-keys", root=root, config=config.defaults())
    line = openssh_public(ed25519.Ed25519PrivateKey.generate())
    data = ProvisioningData(
        vm_id="vm",
        source="ovf",
        hostname="h",
        username="alice",
        public_keys=(Key(path="$HOME/alice/.ssh/authorized_keys", value=line),),
    )
    for directory in ("etc/cron.d", "home/bob/.ssh", "tmp/x"):
        (root / directory).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    actions: list[object] = list(sshkeys.plan_inline_keys(ctx, data))
    assert actions
    return root, actions


def swap_ssh(root: Path) -> None:
    (root / "home/alice/.ssh").mkdir()
    os.chown(root / "home/alice/.ssh", UID, GID)
    (root / "home/alice/.ssh").rename(root / "home/alice/moved")
    (root / "home/alice/.ssh").symlink_to("/etc/cron.d")


def swap_home(root: Path) -> None:
    (root / "home/alice").rmdir()
    (root / "home/alice").symlink_to("/home/bob")


def swap_home_root(root: Path) -> None:
    (root / "home").rename(root / "tmp/x/home")
    (root / "home").symlink_to("/tmp/x/home")


@pytest.mark.parametrize(
    ("swap", "reason"),
    [
        (swap_ssh, "/home/alice/.ssh is a symbolic link"),
        (swap_home, "/home/alice is a symbolic link"),
        (swap_home_root, "/tmp is writable by others"),
    ],
)
def test_a_link_swapped_in_after_planning_is_refused_when_applying(
    tmp_path: Path, swap: Callable[[Path], None], reason: str
) -> None:
    root, actions = planned_inline(tmp_path)
    swap(root)
    before = snapshot(root)
    with pytest.raises(HomeFileError, match=reason):
        apply(actions)
    assert snapshot(root) == before


def test_a_directory_swapped_while_writing_keeps_the_write_where_it_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is written within the descriptor of the directory walked to: replacing
    that directory by a link once it is open changes nothing about where it lands."""
    root, actions = planned_inline(tmp_path)
    real_write = homefiles.atomic_write_at

    def swap_then_write(fd: int, name: str, data: bytes, **kwargs: object) -> None:
        ssh = root / "home/alice/.ssh"
        ssh.rename(root / "home/alice/moved")
        ssh.symlink_to("/etc/cron.d")
        real_write(fd, name, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(homefiles, "atomic_write_at", swap_then_write)
    apply(actions)
    assert not list((root / "etc/cron.d").iterdir())
    written = root / "home/alice/moved/authorized_keys"
    assert written.read_text().startswith("ssh-ed25519 ")
    st = written.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, UID, GID)


def test_account_comes_from_the_roots_passwd(tmp_path: Path) -> None:
    root, account = make_root(tmp_path)
    ctx = Context(stage="test", root=root, config=config.defaults())
    assert sshkeys.lookup_account(ctx, "alice") == account
    with pytest.raises(SshKeyError, match="bob is not in /etc/passwd"):
        sshkeys.lookup_account(ctx, "bob")


# --- Conversions (cryptography) ------------------------------------------------------------


def self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ssh")])
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def platform_items() -> list[certs.CertificateItem]:
    """The two certificates of WALinuxAgent's wire/certs.xml sample, decrypted."""
    wire = FIXTURES / "walinuxagent/wire"
    der = certs.parse_certificates_xml((wire / "certs.xml").read_bytes())
    pfx = certs.decrypt_enveloped(der, (wire / "trans_prv").read_bytes())
    return certs.parse_pfx(pfx)


def test_platform_certificate_to_ssh_rsa_agrees_with_ssh_keygen(tmp_path: Path) -> None:
    items = platform_items()
    assert {i.thumbprint for i in items} >= {KEYED, PLAIN}
    for item in items:
        ours = sshkeys.public_key_from_certificate(item.certificate_pem)
        assert ours.startswith("ssh-rsa ")
        spki = tmp_path / f"{item.thumbprint}.pem"
        spki.write_bytes(
            x509.load_pem_x509_certificate(item.certificate_pem)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        theirs = subprocess.run(
            [ssh_keygen(), "-i", "-m", "PKCS8", "-f", str(spki)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        assert ours.split()[:2] == theirs.split()[:2]


def test_certificate_conversion_keeps_the_key_material() -> None:
    key = rsa.generate_private_key(65537, 2048)
    pem = self_signed(key)
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    for form in (pem, der):
        text = sshkeys.public_key_from_certificate(form)
        loaded = serialization.load_ssh_public_key(text.encode())
        assert isinstance(loaded, rsa.RSAPublicKey)
        assert loaded.public_numbers() == key.public_key().public_numbers()
    ec_key = ec.generate_private_key(ec.SECP384R1())
    assert sshkeys.public_key_from_certificate(self_signed(ec_key)).startswith(
        "ecdsa-sha2-nistp384 "
    )
    with pytest.raises(SshKeyError, match="cannot be used"):
        sshkeys.public_key_from_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n")


@pytest.mark.parametrize(
    "private_format",
    [
        serialization.PrivateFormat.PKCS8,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.PrivateFormat.OpenSSH,
    ],
)
def test_private_keys_become_openssh_keys_ssh_keygen_reads(
    tmp_path: Path, private_format: serialization.PrivateFormat
) -> None:
    key = rsa.generate_private_key(65537, 2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    )
    converted = sshkeys.private_key_openssh(pem)
    assert converted.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    path = tmp_path / "id_rsa"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, converted)
    os.close(fd)
    public = subprocess.run(
        [ssh_keygen(), "-y", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    assert sshkeys.public_key_from_private(pem) == public == openssh_public(key)


def test_unusable_private_keys_fail_without_quoting_them() -> None:
    key = rsa.generate_private_key(65537, 2048)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    for data in (encrypted, b"garbage", encrypted[:200]):
        with pytest.raises(SshKeyError) as caught:
            sshkeys.private_key_openssh(data)
        assert "PRIVATE" not in caught.value.reason
        assert encrypted.decode().splitlines()[1][:20] not in caught.value.reason


# --- The certificates stage's entry point ---------------------------------------------------


def lib_root(tmp_path: Path) -> tuple[Context, list[certs.CertificateItem]]:
    root, _ = make_root(tmp_path)
    ctx = Context(stage="certificates", root=root, config=config.defaults())
    items = platform_items()
    lib = root / "var/lib/waagent"
    lib.mkdir(parents=True, mode=0o700)
    for item in items:
        (lib / f"{item.thumbprint}.crt").write_bytes(item.certificate_pem)
        if item.private_key_pem is not None:
            (lib / f"{item.thumbprint}.prv").write_bytes(item.private_key_pem)
    return ctx, items


def certificate_data(**changes: object) -> ProvisioningData:
    values: dict[str, object] = {
        "vm_id": "vm",
        "source": "ovf",
        "hostname": "h",
        "username": "alice",
        "public_keys": (
            Key(
                path="$HOME/alice/.ssh/authorized_keys",
                fingerprint="8979f1ac8c4215827bf3b5a403e6137b504d02a4",
            ),
        ),
        "key_pairs": (
            Key(
                path="/home/alice/.ssh/id_rsa",
                fingerprint="F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9",
            ),
        ),
    }
    values.update(changes)
    return ProvisioningData(**values)  # type: ignore[arg-type]


def apply(actions: list[object]) -> list[str]:
    summaries = []
    for action in actions:
        summaries.append(action.summary)  # type: ignore[attr-defined]
        action.apply()  # type: ignore[attr-defined]
    return summaries


@pytest.mark.parametrize("source", ["lib-dir", "items"])
def test_certificate_keys_and_key_pairs_are_installed(tmp_path: Path, source: str) -> None:
    ctx, items = lib_root(tmp_path)
    given = items if source == "items" else None
    data = certificate_data()
    by_print = {i.thumbprint: i for i in items}
    private_pem = by_print[KEYED].private_key_pem
    assert private_pem is not None

    summaries = apply(sshkeys.plan_certificate_keys(ctx, data, given))  # type: ignore[arg-type]
    ssh = ctx.root / "home/alice/.ssh"
    authorized = (ssh / "authorized_keys").read_text()
    expected_line = sshkeys.public_key_from_certificate(by_print[PLAIN].certificate_pem)
    assert authorized == expected_line + "\n"
    private = (ssh / "id_rsa").read_bytes()
    assert private.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    public = sshkeys.public_key_from_private(private_pem)
    assert (ssh / "id_rsa.pub").read_text() == public + "\n"
    assert sshkeys.public_key_from_private(private) == public
    for name, mode in (
        ("", 0o700),
        ("authorized_keys", 0o600),
        ("id_rsa", 0o600),
        ("id_rsa.pub", 0o644),
    ):
        st = (ssh / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, UID, GID), name
    # No summary carries key material.
    body = private_pem.decode().splitlines()[1]
    assert not any(body[:16] in s or "PRIVATE" in s for s in summaries)
    # Once installed, nothing more to do, although OpenSSH key files differ per write.
    assert sshkeys.plan_certificate_keys(ctx, data, given) == []  # type: ignore[arg-type]


def test_a_missing_certificate_names_the_key_and_thumbprint(tmp_path: Path) -> None:
    ctx, _ = lib_root(tmp_path)
    (ctx.root / f"var/lib/waagent/{KEYED}.prv").unlink()
    with pytest.raises(SshKeyError, match=r"key pair #1 \(Path /home/alice/.ssh/id_rsa\): the"):
        sshkeys.plan_certificate_keys(ctx, certificate_data())
    missing = certificate_data(
        public_keys=(Key(path="$HOME/alice/.ssh/authorized_keys", fingerprint="AB" * 20),),
        key_pairs=(),
    )
    with pytest.raises(SshKeyError, match=f"public key #1 .*certificate {'AB' * 20} was not"):
        sshkeys.plan_certificate_keys(ctx, missing)
    assert not (ctx.root / "home/alice/.ssh").exists()


def test_certificate_keys_are_read_through_the_store(tmp_path: Path) -> None:
    """Only a thumbprint names a file in Lib.Dir, and a symbolic link there is not followed."""
    ctx, _ = lib_root(tmp_path)
    hostile = certificate_data(
        public_keys=(Key(path="$HOME/alice/.ssh/authorized_keys", fingerprint="AB" * 32),),
        key_pairs=(),
    )
    with pytest.raises(SshKeyError, match=r"public key #1 .*is not a certificate thumbprint"):
        sshkeys.plan_certificate_keys(ctx, hostile)
    lib = ctx.root / "var/lib/waagent"
    (lib / f"{PLAIN}.crt").unlink()
    (lib / f"{PLAIN}.crt").symlink_to(lib / f"{KEYED}.crt")
    with pytest.raises(SshKeyError, match=rf"public key #1 .*{PLAIN}.crt in Lib.Dir is a symbolic"):
        sshkeys.plan_certificate_keys(ctx, certificate_data())
    assert not (ctx.root / "home/alice/.ssh").exists()


def test_key_pair_paths_are_confined_too(tmp_path: Path) -> None:
    ctx, _ = lib_root(tmp_path)
    escaping = certificate_data(
        key_pairs=(
            Key(path="/root/.ssh/id_rsa", fingerprint="F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"),
        )
    )
    with pytest.raises(SshKeyError, match=r"key pair #1 .*not inside the home directory"):
        sshkeys.plan_certificate_keys(ctx, escaping)


def test_fingerprint_keys_are_not_the_inline_stages_business(tmp_path: Path) -> None:
    ctx, _ = lib_root(tmp_path)
    assert sshkeys.plan_inline_keys(ctx, certificate_data()) == []


# --- sshd_config editing -----------------------------------------------------------------------

SETTINGS = sshd.wanted_settings(True, 180)


def test_set_directives_replaces_the_first_global_occurrence() -> None:
    text = (
        "# comment\n"
        "Port 22\n"
        "PasswordAuthentication yes\n"
        "passwordauthentication yes\n"
        "ClientAliveInterval=30\n"
        "Match User bob\n"
        "  PasswordAuthentication yes\n"
    )
    lines = text.splitlines(keepends=True)
    edited = sshd.set_directives(text, SETTINGS, limit=sshd.global_end(lines), insert=True)
    assert edited == (
        "# comment\n"
        "# Set by azagent when this VM was provisioned (ssh-keys stage).\n"
        "KbdInteractiveAuthentication no\n"
        "Port 22\n"
        "PasswordAuthentication no\n"
        "passwordauthentication yes\n"
        "ClientAliveInterval 180\n"
        "Match User bob\n"
        "  PasswordAuthentication yes\n"
    )
    again = edited.splitlines(keepends=True)
    assert (
        sshd.set_directives(edited, SETTINGS, limit=sshd.global_end(again), insert=True) == edited
    )


def test_set_directives_on_a_file_of_comments_appends() -> None:
    edited = sshd.set_directives("# nothing\n# here", SETTINGS, limit=2, insert=True)
    assert edited.startswith("# nothing\n# here\n# Set by azagent")
    assert edited.endswith("ClientAliveInterval 180\n")


@pytest.mark.parametrize(
    ("include", "covered"),
    [
        ("Include /etc/ssh/sshd_config.d/*.conf", True),
        ("Include sshd_config.d/*.conf", True),
        ('include "/etc/ssh/sshd_config.d/*.conf" /etc/other', True),
        ("Include=/etc/ssh/sshd_config.d/*", True),
        ("Include /etc/ssh/sshd_config.d/50-*.conf", False),
        ("Include /etc/ssh/other.d/*.conf", False),
        ("# Include /etc/ssh/sshd_config.d/*.conf", False),
        ("Match all\nInclude /etc/ssh/sshd_config.d/*.conf", False),
    ],
)
def test_covering_include(include: str, covered: bool) -> None:
    lines = f"Port 22\n{include}\n".splitlines(keepends=True)
    found = sshd.covering_include(lines, "/etc/ssh", "/etc/ssh/sshd_config.d/10-azagent.conf")
    assert (found is not None) == covered


def fake_sshd(tmp_path: Path, stderr: str, status: int) -> str:
    script = tmp_path / "sshd"
    script.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit {status}\n")
    script.chmod(0o755)
    return str(script)


def test_check_config_reports_what_sshd_refuses(tmp_path: Path) -> None:
    config_file = tmp_path / "sshd_config"
    config_file.write_text("Bogus yes\n")
    refusing = fake_sshd(tmp_path, f"{config_file} line 1: Bad configuration option: Bogus", 255)
    assert sshd.check_config(refusing, config_file) == (
        f"{config_file} line 1: Bad configuration option: Bogus"
    )
    accepting = fake_sshd(tmp_path, "", 0)
    assert sshd.check_config(accepting, config_file) is None
    # Before ssh.service created /run/sshd, sshd -t cannot judge: not an error.
    early = fake_sshd(tmp_path, "Missing privilege separation directory: /run/sshd", 255)
    assert sshd.check_config(early, config_file) is None


def test_host_key_types() -> None:
    assert sshd.host_key_types("auto") == ("rsa", "ecdsa", "ed25519")
    assert sshd.host_key_types("ed25519") == ("ed25519",)
