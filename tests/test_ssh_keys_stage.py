"""The ssh-keys stage, run as boot runs it, against temporary roots."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import run_stage, snapshot
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from azagent import config, provisioning
from azagent.context import Context
from azagent.provisioning import Key, ProvisioningData

UID, GID = 4242, 4343
RESULT = "run/azagent/stages/ssh-keys.json"
AUTHORIZED = "home/alice/.ssh/authorized_keys"
DROPIN = "etc/ssh/sshd_config.d/10-azagent.conf"
DEBIAN_SSHD_CONFIG = """\
# This is the sshd server system-wide configuration file.
Include /etc/ssh/sshd_config.d/*.conf
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem\tsftp\t/usr/lib/openssh/sftp-server
"""


def ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        pytest.fail("ssh-keygen is missing: install openssh-client")
    return found


def public_line(key: object, comment: str = "") -> str:
    text: str = (
        key.public_key()  # type: ignore[attr-defined]
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return f"{text} {comment}" if comment else text


def ed25519_line(comment: str = "") -> str:
    return public_line(ed25519.Ed25519PrivateKey.generate(), comment)


def make_system(
    root: Path,
    *,
    sshd_config: str | None = DEBIAN_SSHD_CONFIG,
    waagent_conf: str = "Provisioning.SshHostKeyPairType=ed25519\n",
) -> None:
    """An image after create-user: alice with her home, an SSH server with old host keys."""
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        f"alice:x:{UID}:{GID}:Alice:/home/alice:/bin/bash\n"
        f"bob:x:{UID + 1}:{GID + 1}:Bob:/home/bob:/bin/bash\n"
    )
    for user, uid, gid in (("alice", UID, GID), ("bob", UID + 1, GID + 1)):
        home = root / "home" / user
        home.mkdir(parents=True, mode=0o750)
        os.chown(home, uid, gid)
    (root / "etc/waagent.conf").write_text(waagent_conf)
    if sshd_config is not None:
        ssh = root / "etc/ssh"
        ssh.mkdir()
        (ssh / "sshd_config").write_text(sshd_config)
        for name in ("ssh_host_rsa_key", "ssh_host_ecdsa_key", "ssh_host_ed25519_key"):
            (ssh / name).write_text("image private key\n")
            (ssh / name).chmod(0o600)
            (ssh / f"{name}.pub").write_text("image public key\n")
        (ssh / "ssh_host_rsa_key-cert.pub").write_text("image host certificate\n")


def provide(
    root: Path,
    *keys: Key,
    vm_id: str = "vm-1",
    disable_password_auth: bool = True,
    username: str = "alice",
) -> None:
    """What mount-ovf hands over: this boot's provisioning data."""
    ctx = Context(stage="test", root=root, config=config.defaults())
    provisioning.save(
        ctx,
        ProvisioningData(
            vm_id=vm_id,
            source="ovf",
            hostname="vm",
            username=username,
            disable_password_auth=disable_password_auth,
            public_keys=keys,
        ),
    )


def inline(value: str, path: str = "$HOME/alice/.ssh/authorized_keys") -> Key:
    return Key(path=path, value=value)


def result(root: Path) -> dict[str, object]:
    data = json.loads((root / RESULT).read_text())
    assert isinstance(data, dict)
    return data


def system_state(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """The tree without azagent's bookkeeping (lock, result, the run directories)."""
    return {
        k: v
        for k, v in snapshot(root).items()
        if k not in ("run", "run/azagent") and not k.startswith("run/azagent/")
    }


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def key_type(path: Path) -> str:
    done = subprocess.run(
        [ssh_keygen(), "-l", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.split()[-1]  # "(ED25519)"


# --- Happy path and the contract ---------------------------------------------------------


def test_installs_keys_configures_sshd_and_replaces_host_keys(root: Path) -> None:
    make_system(root)
    first, second = ed25519_line("alice@laptop"), public_line(rsa.generate_private_key(65537, 2048))
    provide(
        root,
        inline(first),
        inline(f"  {second}\r\n", path="/home/alice/.ssh/authorized_keys"),
        inline(first),  # the same key twice is written once
    )
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr

    authorized = root / AUTHORIZED
    assert authorized.read_text() == f"{first}\n{second}\n"
    assert mode_owner(authorized) == (0o600, UID, GID)
    assert mode_owner(authorized.parent) == (0o700, UID, GID)
    assert mode_owner(root / "home/alice") == (0o750, UID, GID)  # the home is left alone

    dropin = root / DROPIN
    assert dropin.read_text().splitlines()[-3:] == [
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "ClientAliveInterval 180",
    ]
    assert mode_owner(dropin) == (0o644, 0, 0)
    assert (root / "etc/ssh/sshd_config").read_text() == DEBIAN_SSHD_CONFIG

    ssh = root / "etc/ssh"
    assert sorted(p.name for p in ssh.glob("ssh_host_*")) == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]
    assert mode_owner(ssh / "ssh_host_ed25519_key") == (0o600, 0, 0)
    assert mode_owner(ssh / "ssh_host_ed25519_key.pub") == (0o644, 0, 0)
    assert key_type(ssh / "ssh_host_ed25519_key.pub") == "(ED25519)"
    assert not list(ssh.glob(".azagent-*"))  # no scratch directory left behind

    recorded = result(root)
    assert recorded["state"] == "done"
    changes = recorded["changes"]
    assert isinstance(changes, list)
    assert changes[0].startswith(
        "add 2 key(s) to /home/alice/.ssh/authorized_keys for alice: ssh-ed25519 SHA256:"
    )
    assert changes[1] == (
        "replace the image's 7 SSH host key file(s) with a new ed25519 SSH host key in /etc/ssh"
    )
    assert "10-azagent.conf" in changes[2]
    assert "not checking /etc/ssh/sshd_config with sshd -t: --root is not /" in run.stderr


def test_second_run_changes_nothing(root: Path) -> None:
    make_system(root)
    provide(root, inline(ed25519_line()))
    assert run_stage("ssh-keys", "--root", str(root)).returncode == 0
    before = system_state(root)
    again = run_stage("ssh-keys", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert system_state(root) == before  # host keys included: made once per VM
    assert result(root)["state"] == "nothing-to-do"
    assert "nothing to do" in again.stderr


def test_dry_run_writes_nothing(root: Path) -> None:
    make_system(root)
    provide(root, inline(ed25519_line()))
    before = snapshot(root)
    run = run_stage("ssh-keys", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert snapshot(root) == before
    assert "would:" in run.stdout
    assert "authorized_keys" in run.stdout
    assert "10-azagent.conf" in run.stdout


def test_without_provisioning_data_it_skips(root: Path) -> None:
    make_system(root)
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert result(root)["state"] == "skipped"
    assert system_state(root) == before


def test_existing_keys_are_kept_and_not_duplicated(root: Path) -> None:
    make_system(root)
    mine, theirs = ed25519_line("mine"), ed25519_line("platform")
    ssh = root / "home/alice/.ssh"
    ssh.mkdir(mode=0o755)  # from the image's skeleton, too open and root's
    existing = f"# my keys\nrestrict {mine}\n{theirs.rsplit(' ', 1)[0]} other-comment\n"
    (ssh / "authorized_keys").write_text(existing)
    provide(root, inline(theirs), inline(ed25519_line("new")))
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    text = (ssh / "authorized_keys").read_text()
    assert text.startswith(existing)
    assert text.count(theirs.split()[1]) == 1
    assert text.endswith(" new\n")
    assert mode_owner(ssh) == (0o700, UID, GID)
    assert mode_owner(ssh / "authorized_keys") == (0o600, UID, GID)


def test_only_a_wrong_mode_is_fixed(root: Path) -> None:
    make_system(root)
    key = ed25519_line()
    provide(root, inline(key))
    assert run_stage("ssh-keys", "--root", str(root)).returncode == 0
    (root / AUTHORIZED).chmod(0o644)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert mode_owner(root / AUTHORIZED) == (0o600, UID, GID)
    assert (root / AUTHORIZED).read_text() == key + "\n"
    assert result(root)["changes"] == [
        "make /home/alice/.ssh/authorized_keys owned by alice with mode 0600"
    ]


# --- Refusals: nothing half-written ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("ssh-rsa AAAANOTAREALKEY== foo@bar.local", "ssh-rsa key data is not valid base64"),
        (
            'command="/bin/sh" {good}',
            "starts with authorized_keys options, which are not accepted from the platform",
        ),
        (
            "ssh-rsa {good_blob}",
            "ssh-rsa key is malformed: declares ssh-rsa but its key data is of ssh-ed25519 type",
        ),
        ("ssh-dsa {good_blob}", "does not start with a known SSH public key type"),
    ],
)
def test_an_invalid_key_fails_the_stage_naming_its_index(
    root: Path, value: str, reason: str
) -> None:
    make_system(root)
    good = ed25519_line()
    provide(root, inline(good), inline(value.format(good=good, good_blob=good.split()[1])))
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1
    expected = f"public key #2 (Path $HOME/alice/.ssh/authorized_keys): {reason}"
    assert expected in run.stderr
    recorded = result(root)
    assert recorded["state"] == "failed"
    assert expected in str(recorded["reason"])
    assert system_state(root) == before  # not even the valid first key, nor sshd


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("$HOME/../../etc/cron.d/x", "contains '..'"),
        ("/etc/passwd", "not inside the home directory of alice"),
        ("/home/bob/.ssh/authorized_keys", "not inside the home directory of alice"),
        ("$HOME/bob/.ssh/authorized_keys", "not inside the home directory of alice"),
        ("/home/alice", "not inside the home directory of alice"),
    ],
)
def test_paths_outside_the_home_fail_the_stage(root: Path, path: str, reason: str) -> None:
    make_system(root)
    provide(root, inline(ed25519_line(), path=path))
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1
    assert f"public key #1 (Path {path}): path " in run.stderr
    assert reason in run.stderr
    assert system_state(root) == before


@pytest.mark.parametrize("target", ["/etc/cron.d", "../bob/.ssh", "/root/.ssh", "keys"])
def test_a_linked_ssh_directory_fails_the_stage(root: Path, target: str) -> None:
    """Outside the home or inside it: the user owns the home and can swap a link, so
    none is followed."""
    make_system(root)
    for directory in ("etc/cron.d", "home/bob/.ssh", "root/.ssh", "home/alice/keys"):
        (root / directory).mkdir(parents=True)
    (root / "home/alice/.ssh").symlink_to(target)
    provide(root, inline(ed25519_line()))
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1, run.stderr
    assert (
        "public key #1 (Path $HOME/alice/.ssh/authorized_keys): "
        "/home/alice/.ssh is a symbolic link, which azagent does not follow here"
    ) in run.stderr
    assert system_state(root) == before
    assert not [
        p
        for d in ("etc/cron.d", "home/bob/.ssh", "root/.ssh", "home/alice/keys")
        for p in (root / d).iterdir()
    ]


def test_a_hard_linked_authorized_keys_is_refused(root: Path) -> None:
    """A user who can hard-link a root file into ~/.ssh must not get its content copied."""
    make_system(root)
    secret = root / "home/alice/secret"
    secret.write_text("not the user's\n")
    (root / "home/alice/.ssh").mkdir()
    os.link(secret, root / AUTHORIZED)
    provide(root, inline(ed25519_line()))
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1
    assert "has 2 hard links" in run.stderr
    assert (root / AUTHORIZED).read_text() == "not the user's\n"


def test_a_missing_user_fails_with_the_reason(root: Path) -> None:
    """create-user ran (and said done), yet the user is missing: a failure."""
    make_system(root)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    provide(root, inline(ed25519_line()))
    results = root / "run/azagent/stages"
    results.mkdir(parents=True, exist_ok=True)
    (results / "create-user.json").write_text('{"stage": "create-user", "state": "done"}')
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1
    assert "user alice is not in /etc/passwd" in run.stderr


HOSTILE_USERS = [
    ("../etc", "'../etc' is not a valid user name: it contains '.', '/'"),
    ("root\n", "'root\\n' is not a valid user name: it contains '\\n'"),
    ("a;b", "'a;b' is not a valid user name: it contains ';'"),
    ("a" * 300, f"'{'a' * 40}'... (300 characters) is not a valid user name: it is 300"),
    ("Alice", "'Alice' is not a valid user name: it contains 'A' (upper case is not accepted)"),
]


@pytest.mark.parametrize(("username", "reason"), HOSTILE_USERS, ids=lambda v: ascii(v)[:20])
def test_a_hand_edited_user_name_fails_the_stage_and_writes_nothing(
    root: Path, username: str, reason: str
) -> None:
    """provisioning.json is read back through the user name rule: nothing is written,
    not even the sshd settings or host keys, which do not depend on the user."""
    make_system(root)
    # Even an account of that name (uid 0, home /etc) gets nothing.
    (root / "etc/passwd").write_text(
        (root / "etc/passwd").read_text() + f"{username}:x:0:0::/etc:/bin/sh\n"
    )
    provide(root, inline(ed25519_line()))
    state = root / "run/azagent/provisioning.json"
    document = json.loads(state.read_text())
    document["username"] = username
    state.write_text(json.dumps(document))
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1
    assert f"/run/azagent/provisioning.json: username: {reason}" in run.stderr
    assert reason in str(result(root)["reason"])
    assert system_state(root) == before
    assert state.read_text() == json.dumps(document)


def test_a_masked_create_user_leaves_the_users_keys_out(root: Path) -> None:
    """create-user did not run (masked): users are managed elsewhere; sshd is still set."""
    make_system(root)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    provide(root, inline(ed25519_line()))
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "create-user did not run this boot" in run.stderr
    assert not (root / "home/alice/.ssh").exists()
    assert (
        root / "etc/ssh/sshd_config.d/10-azagent.conf"
    ).exists() or "PasswordAuthentication" in (root / "etc/ssh/sshd_config").read_text()


# --- Keys only for an account create-user accepts ------------------------------------------

# name: (its /etc/passwd line, its home under the root, why create-user refuses it)
SYSTEM_ACCOUNTS = {
    "root": (
        "root:x:0:0:root:/root:/bin/bash",
        "root",
        "'root' is reserved for the system",
    ),
    "daemon": (
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
        "usr/sbin",
        "'daemon' is reserved for the system",
    ),
    "svc": (
        "svc:x:500:500:a site service:/var/lib/svc:/bin/sh",
        "var/lib/svc",
        "user 'svc' is an existing system account (uid 500 < UID_MIN 1000)",
    ),
    "toor": ("toor:x:0:0:root again:/root:/bin/sh", "root", "user 'toor' has uid 0"),
}


def add_account(root: Path, name: str) -> None:
    line, home, _ = SYSTEM_ACCOUNTS[name]
    passwd = root / "etc/passwd"
    if name not in passwd.read_text():
        passwd.write_text(passwd.read_text() + line + "\n")
    fields = line.split(":")
    (root / home).mkdir(parents=True, exist_ok=True)
    os.chown(root / home, int(fields[2]), int(fields[3]))


def create_user_ran(root: Path, state: str, reason: str = "") -> None:
    """What the runner records for create-user's run this boot."""
    results = root / "run/azagent/stages"
    results.mkdir(parents=True, exist_ok=True)
    document = {"stage": "create-user", "state": state, "reason": reason}
    (results / "create-user.json").write_text(json.dumps(document))


def accept(root: Path, username: str = "alice", vm_id: str = "vm-1", uid: int = UID) -> None:
    """What create-user records when it accepts the user (created or adopted)."""
    ctx = Context(stage="create-user", root=root, config=config.defaults())
    provisioning.record_accepted_user(ctx, username, vm_id, uid)


@pytest.mark.parametrize("create_user", ["refused", "masked"])
@pytest.mark.parametrize("name", sorted(SYSTEM_ACCOUNTS))
def test_no_keys_for_an_account_create_user_refuses(
    root: Path, name: str, create_user: str
) -> None:
    """At boot ssh-keys runs after create-user refused the user (it only Wants= it), or
    create-user is masked: either way root, a distribution's account, a system account
    and a second uid 0 get no key, and nothing at all is written."""
    make_system(root)
    add_account(root, name)
    provide(
        root,
        inline(ed25519_line(), path=f"$HOME/{name}/.ssh/authorized_keys"),
        username=name,
    )
    if create_user == "refused":
        create_user_ran(root, "failed", f"the reason create-user gave for {name}")
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1, run.stderr
    assert f"the keys of {name} are not installed: " in run.stderr
    if create_user == "masked":
        assert SYSTEM_ACCOUNTS[name][2] in run.stderr  # create-user's own rule, applied here
    assert f"the keys of {name} are not installed" in str(result(root)["reason"])
    assert system_state(root) == before
    assert not (root / SYSTEM_ACCOUNTS[name][1] / ".ssh").exists()


@pytest.mark.parametrize("home", ["/root", "/root/", "//root"])
def test_no_keys_into_roots_home_through_another_account(root: Path, home: str) -> None:
    """An ordinary uid whose home is root's: its keys would let that key log in as root."""
    make_system(root)
    (root / "root").mkdir(mode=0o700)
    passwd = root / "etc/passwd"
    passwd.write_text(passwd.read_text() + f"mallory:x:1500:1500::{home}:/bin/sh\n")
    provide(
        root, inline(ed25519_line(), path="$HOME/mallory/.ssh/authorized_keys"), username="mallory"
    )
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1, run.stderr
    assert "the keys of mallory are not installed" in run.stderr
    assert system_state(root) == before


def test_allow_reset_sys_user_lets_a_system_account_have_its_keys(root: Path) -> None:
    """create-user masked: its rules still decide, and they accept svc with
    Provisioning.AllowResetSysUser=y; never a uid 0 account."""
    make_system(root, waagent_conf="Provisioning.AllowResetSysUser=y\n")
    add_account(root, "svc")
    key = ed25519_line()
    provide(root, inline(key, path="$HOME/svc/.ssh/authorized_keys"), username="svc")
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / "var/lib/svc/.ssh/authorized_keys").read_text() == key + "\n"

    add_account(root, "toor")
    provide(root, inline(key, path="$HOME/toor/.ssh/authorized_keys"), username="toor")
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1
    assert "the keys of toor are not installed: user 'toor' has uid 0" in run.stderr
    assert system_state(root) == before


def test_keys_follow_create_users_acceptance(root: Path) -> None:
    make_system(root)
    key = ed25519_line()
    provide(root, inline(key))
    create_user_ran(root, "done")
    accept(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / AUTHORIZED).read_text() == key + "\n"


@pytest.mark.parametrize(
    ("state", "accepted"),
    [
        ("done", None),  # ran, yet recorded no user: not this provisioning's acceptance
        ("done", ("bob", "vm-1", UID + 1)),  # provisioning.json edited since
        ("done", ("alice", "vm-0", UID)),  # another VM
        ("nothing-to-do", ("alice", "vm-1", UID + 7)),  # alice is another account now
        ("failed", ("alice", "vm-1", UID)),  # a later run refused: the record is stale
        ("failed", None),  # failed after a partial run, before accepting
        ("skipped", None),
    ],
)
def test_no_keys_without_create_users_acceptance_of_this_user_and_vm(
    root: Path, state: str, accepted: tuple[str, str, int] | None
) -> None:
    make_system(root)
    provide(root, inline(ed25519_line()))
    create_user_ran(root, state, "the reason create-user gave")
    if accepted is not None:
        accept(root, *accepted)
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1, run.stderr
    assert "the keys of alice are not installed: create-user" in run.stderr
    assert system_state(root) == before


# --- No link is followed on the way to the keys ----------------------------------------------


@pytest.mark.parametrize("target", ["/etc", "/home/bob", "bob", "/root"])
def test_a_home_that_is_a_symbolic_link_gets_nothing(root: Path, target: str) -> None:
    make_system(root)
    (root / "root").mkdir()
    (root / "home/alice").rmdir()
    (root / "home/alice").symlink_to(target)
    provide(root, inline(ed25519_line()))
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1, run.stderr
    assert "/home/alice is a symbolic link" in run.stderr
    assert system_state(root) == before


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("others can write /tmp", "/tmp is writable by others"),
        ("bob owns /tmp/x", f"/tmp/x is owned by uid {UID + 1}"),
    ],
)
def test_a_home_root_linked_where_others_write_gets_nothing(
    root: Path, case: str, reason: str
) -> None:
    """/home -> /tmp/x: whoever can write there could have made alice's home."""
    make_system(root)
    tmp = root / "tmp"
    tmp.mkdir()
    (root / "home").rename(tmp / "x")
    if case == "others can write /tmp":
        tmp.chmod(0o1777)
    else:
        os.chown(tmp / "x", UID + 1, GID + 1)
    (root / "home").symlink_to("/tmp/x")
    provide(root, inline(ed25519_line()))
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1, run.stderr
    recorded = str(result(root)["reason"])
    assert "the symbolic link /home" in recorded
    assert reason in recorded
    assert system_state(root) == before


def test_a_home_root_linked_by_root_is_followed(root: Path) -> None:
    """Fedora Atomic, RHEL image mode: /home -> var/home, root's own layout."""
    make_system(root)
    (root / "var").mkdir()
    (root / "home").rename(root / "var/home")
    (root / "home").symlink_to("var/home")
    key = ed25519_line()
    provide(root, inline(key))
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / "var/home/alice/.ssh/authorized_keys").read_text() == key + "\n"
    assert mode_owner(root / "var/home/alice/.ssh/authorized_keys") == (0o600, UID, GID)


def test_authorized_keys_linked_to_shadow_is_neither_read_nor_replaced(
    root: Path,
) -> None:
    make_system(root)
    shadow = root / "etc/shadow"
    shadow.write_text("root:$6$salt$not-for-alice:19000:0:99999:7:::\n")
    shadow.chmod(0o640)
    ssh = root / "home/alice/.ssh"
    ssh.mkdir(mode=0o700)
    os.chown(ssh, UID, GID)
    (ssh / "authorized_keys").symlink_to("/etc/shadow")
    provide(root, inline(ed25519_line()))
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1, run.stderr
    assert "/home/alice/.ssh/authorized_keys is a symbolic link" in run.stderr
    assert "not-for-alice" not in run.stderr
    assert system_state(root) == before


@pytest.mark.parametrize("target", ["/etc", "../keys", "/home/bob"])
def test_a_key_path_through_a_linked_directory_is_refused(root: Path, target: str) -> None:
    make_system(root)
    ssh = root / "home/alice/.ssh"
    ssh.mkdir(mode=0o700)
    os.chown(ssh, UID, GID)
    (root / "home/alice/keys").mkdir()
    (ssh / "more").symlink_to(target)
    provide(root, inline(ed25519_line(), path="$HOME/alice/.ssh/more/authorized_keys"))
    before = system_state(root)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 1, run.stderr
    assert (
        "public key #1 (Path $HOME/alice/.ssh/more/authorized_keys): "
        "/home/alice/.ssh/more is a symbolic link"
    ) in run.stderr
    assert system_state(root) == before


# --- sshd settings -------------------------------------------------------------------------


def test_without_include_sshd_config_itself_is_edited(root: Path) -> None:
    original = (
        "Port 22\n"
        "#PasswordAuthentication yes\n"
        "PasswordAuthentication yes\n"
        "ClientAliveInterval 0\n"
        "Match User bob\n"
        "\tPasswordAuthentication no\n"
    )
    make_system(
        root,
        sshd_config=original,
        waagent_conf="Provisioning.RegenerateSshHostKeyPair=n\nOS.SshClientAliveInterval=60\n",
    )
    (root / "etc/ssh/sshd_config").chmod(0o600)
    provide(root, inline(ed25519_line()), disable_password_auth=False)
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / "etc/ssh/sshd_config").read_text() == (
        "# Set by azagent when this VM was provisioned (ssh-keys stage).\n"
        "KbdInteractiveAuthentication yes\n"
        "Port 22\n"
        "#PasswordAuthentication yes\n"
        "PasswordAuthentication yes\n"
        "ClientAliveInterval 60\n"
        "Match User bob\n"
        "\tPasswordAuthentication no\n"
    )
    assert mode_owner(root / "etc/ssh/sshd_config") == (0o600, 0, 0)  # kept
    assert not (root / "etc/ssh/sshd_config.d").exists()
    assert (root / "etc/ssh/ssh_host_rsa_key").read_text() == "image private key\n"
    assert "sshd_config (it includes no sshd_config.d/*.conf)" in run.stderr
    before = system_state(root)
    assert run_stage("ssh-keys", "--root", str(root)).returncode == 0
    assert system_state(root) == before


def test_a_setting_above_the_include_is_edited_in_place(root: Path) -> None:
    original = "PasswordAuthentication yes\n" + DEBIAN_SSHD_CONFIG
    make_system(root, sshd_config=original)
    (root / "etc/ssh/sshd_config.d").mkdir()
    (root / "etc/ssh/sshd_config.d/50-cloud-init.conf").write_text("PasswordAuthentication yes\n")
    (root / "etc/ssh/sshd_config.d/05-site.conf").write_text("ClientAliveInterval 30\n")
    provide(root, inline(ed25519_line()))
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    main = (root / "etc/ssh/sshd_config").read_text()
    assert main == "PasswordAuthentication no\n" + DEBIAN_SSHD_CONFIG
    assert (root / DROPIN).exists()
    # The administrator's earlier drop-in wins, and the log says so.
    assert "sshd_config.d/05-site.conf sorts before 10-azagent.conf" in run.stderr
    assert "clientaliveinterval" in run.stderr


def test_password_authentication_follows_the_platform(root: Path) -> None:
    make_system(root)
    provide(root, inline(ed25519_line()), disable_password_auth=False)
    assert run_stage("ssh-keys", "--root", str(root)).returncode == 0
    text = (root / DROPIN).read_text()
    assert "PasswordAuthentication yes\n" in text
    assert "KbdInteractiveAuthentication yes\n" in text


def test_no_ssh_server_means_only_the_keys(root: Path) -> None:
    make_system(root, sshd_config=None)
    provide(root, inline(ed25519_line()))
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (root / AUTHORIZED).exists()
    assert not (root / "etc/ssh").exists()
    assert "no /etc/ssh/sshd_config: no SSH server to configure" in run.stderr


# --- Host keys ------------------------------------------------------------------------------


def test_auto_makes_every_default_type(root: Path) -> None:
    make_system(root, waagent_conf="Provisioning.SshHostKeyPairType=auto\n")
    provide(root, inline(ed25519_line()))
    run = run_stage("ssh-keys", "--root", str(root))
    assert run.returncode == 0, run.stderr
    ssh = root / "etc/ssh"
    for name, kind in (("rsa", "(RSA)"), ("ecdsa", "(ECDSA)"), ("ed25519", "(ED25519)")):
        private = ssh / f"ssh_host_{name}_key"
        assert mode_owner(private) == (0o600, 0, 0)
        assert private.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        assert key_type(private.with_name(private.name + ".pub")) == kind
    assert not (ssh / "ssh_host_rsa_key-cert.pub").exists()  # it certified the old key


def test_default_configuration_makes_one_rsa_key(root: Path) -> None:
    make_system(root, waagent_conf="")
    provide(root, inline(ed25519_line()))
    assert run_stage("ssh-keys", "--root", str(root)).returncode == 0
    ssh = root / "etc/ssh"
    assert sorted(p.name for p in ssh.glob("ssh_host_*")) == [
        "ssh_host_rsa_key",
        "ssh_host_rsa_key.pub",
    ]
    assert key_type(ssh / "ssh_host_rsa_key.pub") == "(RSA)"


def test_host_keys_are_kept_when_regeneration_is_off(root: Path) -> None:
    make_system(root, waagent_conf="Provisioning.RegenerateSshHostKeyPair=n\n")
    provide(root, inline(ed25519_line()))
    assert run_stage("ssh-keys", "--root", str(root)).returncode == 0
    assert len(list((root / "etc/ssh").glob("ssh_host_*"))) == 7


def test_a_new_vm_from_the_same_disk_gets_new_host_keys(root: Path) -> None:
    make_system(root)
    provide(root, inline(ed25519_line()), vm_id="vm-1")
    assert run_stage("ssh-keys", "--root", str(root)).returncode == 0
    public = root / "etc/ssh/ssh_host_ed25519_key.pub"
    first = public.read_text()
    assert (root / "var/lib/waagent/ssh-host-keys").read_text() == "vm-1\n"
    provide(root, inline(ed25519_line()), vm_id="vm-2")  # captured, booted as a new VM
    assert run_stage("ssh-keys", "--root", str(root)).returncode == 0
    assert public.read_text() != first


# --- Secrets --------------------------------------------------------------------------------


def test_no_private_key_reaches_stderr_or_the_result(root: Path) -> None:
    make_system(root, waagent_conf="Provisioning.SshHostKeyPairType=auto\n")
    provide(root, inline(ed25519_line()))
    run = run_stage("ssh-keys", "--root", str(root), "-v")
    assert run.returncode == 0, run.stderr
    recorded = (root / RESULT).read_text()
    host_keys = [p.read_text() for p in (root / "etc/ssh").glob("ssh_host_*_key")]
    assert len(host_keys) == 3
    for private in host_keys:
        for body in private.splitlines()[1:-1]:
            assert body not in run.stderr
            assert body not in run.stdout
            assert body not in recorded

    # A private key handed over as a public key: refused, never echoed.
    leaked = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        .decode()
    )
    provide(root, inline(leaked), vm_id="vm-2")
    run = run_stage("ssh-keys", "--root", str(root), "-v")
    assert run.returncode == 1
    assert "public key #1 (Path $HOME/alice/.ssh/authorized_keys): is a private key" in run.stderr
    recorded = (root / RESULT).read_text()
    for body in leaked.splitlines()[1:-1]:
        assert body[:16] not in run.stderr
        assert body[:16] not in recorded
    assert "PRIVATE" not in run.stderr


@pytest.mark.parametrize(
    ("states", "running"),
    [
        ("inactive\ninactive\n", None),
        ("inactive\nactive\n", "sshd.service"),
        ("active\ninactive\n", "ssh.service"),
        ("", None),  # systemd not answering
    ],
)
def test_the_running_ssh_server_is_one_question_to_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, states: str, running: str | None
) -> None:
    """Both unit names in one systemctl call: every process costs at boot."""
    from azagent import sshd

    calls = tmp_path / "calls"
    fake = tmp_path / "bin/systemctl"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\nprintf '{states}'\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    assert sshd.running_unit() == running
    assert calls.read_text() == "is-active ssh.service sshd.service\n"
