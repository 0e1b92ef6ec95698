"""create-user, run for real against temporary roots.

useradd and usermod get ``--prefix <root>`` and chpasswd ``--root <root>``,
so the distribution's own tools edit the root's /etc/passwd, group, shadow and
gshadow and create the home there; the host's accounts are never touched (an
autouse fixture checks it). visudo checks the sudoers drop-in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import run_stage, snapshot
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from azagent import passwords
from azagent.provisioning import Key, ProvisioningData

STAGE = "create-user"
RESULT = f"run/azagent/stages/{STAGE}.json"
STATE = "run/azagent/provisioning.json"
SUDOERS = "etc/sudoers.d/waagent"
PHRASE = "Tr0ub4dor&3-provisioning"
# Made once per test session, as mount-ovf makes it once per VM.
HASH = passwords.hash_password(PHRASE, "6", 10)
ROOT_HASH = "$6$rootsalt$" + "R" * 86
SHADOW_GID = 42
NAME = "/run/azagent/provisioning.json: username: "
VM_ID = "5e1f0c6a-0000-4000-8000-000000000001"
ACCEPTED = "/run/azagent/accepted-user.json"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="useradd needs root (chown)")


@pytest.fixture(autouse=True)
def host_accounts_untouched() -> Iterator[None]:
    files = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
    before = {f: Path(f).read_bytes() for f in files if Path(f).exists()}
    sudoers = sorted(os.listdir("/etc/sudoers.d")) if Path("/etc/sudoers.d").is_dir() else []
    yield
    assert {f: Path(f).read_bytes() for f in before} == before
    after = sorted(os.listdir("/etc/sudoers.d")) if Path("/etc/sudoers.d").is_dir() else []
    assert after == sudoers


def write(path: Path, text: str, mode: int = 0o644, gid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chown(path, 0, gid)
    path.chmod(mode)


def debian_root(root: Path, *, admin_group: str = "sudo", extra_users: str = "") -> Path:
    """The account files of a fresh Debian-like image, plus ``extra_users`` passwd lines."""
    write(
        root / "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "bin:x:2:2:bin:/bin:/usr/sbin/nologin\n"
        "svc:x:500:500:a site service:/var/lib/svc:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" + extra_users,
    )
    write(
        root / "etc/group",
        "root:x:0:\ndaemon:x:1:\nbin:x:2:\n"
        f"{admin_group}:x:27:\nshadow:x:{SHADOW_GID}:\nsvc:x:500:\nusers:x:100:\n"
        "nogroup:x:65534:\n",
    )
    write(
        root / "etc/shadow",
        f"root:{ROOT_HASH}:19000:0:99999:7:::\n"
        "daemon:*:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"
        "svc:!:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
        mode=0o640,
        gid=SHADOW_GID,
    )
    write(
        root / "etc/gshadow",
        f"root:*::\ndaemon:*::\nbin:*::\n{admin_group}:*::\nshadow:*::\nsvc:!::\n"
        "users:*::\nnogroup:*::\n",
        mode=0o640,
        gid=SHADOW_GID,
    )
    write(root / "etc/login.defs", "UID_MIN 1000\nUID_MAX 60000\nGID_MIN 1000\nGID_MAX 60000\n")
    write(root / "etc/skel/.bashrc", "# the image's skeleton\n")
    write(root / "bin/bash", "#!/bin/true\n", mode=0o755)
    (root / "etc/sudoers.d").mkdir(mode=0o755)
    return root


def provision(
    root: Path,
    username: str = "alice",
    password_hash: Optional[str] = HASH,
    public_keys: tuple[Key, ...] = (),
) -> None:
    """provisioning.json as mount-ovf writes it, with ``username`` put in as a hand edit
    would: ProvisioningData itself holds no name the rule refuses."""
    data = ProvisioningData(
        vm_id=VM_ID,
        source="ovf",
        hostname="vm-1",
        username="placeholder",
        password_hash=password_hash,
        disable_password_auth=password_hash is None,
        public_keys=public_keys,
    )
    document = json.loads(data.to_json())
    document["username"] = username
    write(root / STATE, json.dumps(document), mode=0o600)


def configure(root: Path, *lines: str) -> None:
    write(root / "etc/waagent.conf", "\n".join(lines) + "\n")


def run(root: Path, *args: str) -> Any:
    return run_stage(STAGE, "--root", str(root), *args, env={"AZAGENT_LOCK_TIMEOUT": "5"})


def result(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / RESULT).read_text())
    return data


def system_state(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """The tree without the runner's bookkeeping (result files, lock holder pid)."""
    return {k: v for k, v in snapshot(root).items() if not k.startswith("run") or k == STATE}


def records(root: Path, name: str) -> dict[str, list[str]]:
    """The lines of one account file, by their first field."""
    return {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc" / name).read_text().splitlines()
        if line
    }


def test_creates_the_user_with_home_groups_password_and_sudo(root: Path) -> None:
    debian_root(root)
    provision(root)
    done = run(root)
    assert done.returncode == 0, done.stderr

    user = records(root, "passwd")["alice"]
    uid, gid = int(user[2]), int(user[3])
    assert uid >= 1000
    assert user[5:] == ["/home/alice", "/bin/bash"]
    groups = records(root, "group")
    assert groups["alice"][2] == str(gid)  # a private group
    assert groups["sudo"][3].split(",") == ["alice"]
    assert records(root, "shadow")["alice"][1] == HASH
    assert records(root, "shadow")["root"][1] == ROOT_HASH  # DeleteRootPassword is off

    home = root / "home/alice"
    assert (home.stat().st_uid, home.stat().st_gid) == (uid, gid)
    assert (home / ".bashrc").read_text() == "# the image's skeleton\n"  # the root's skel
    assert (home / ".bashrc").stat().st_uid == uid

    sudoers = root / SUDOERS
    assert sudoers.read_text() == "alice ALL=(ALL) ALL\n"
    st = sudoers.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o440, 0, 0)
    assert not [p for p in sudoers.parent.iterdir() if p.name != "waagent"]

    recorded = result(root)
    assert recorded["state"] == "done"
    assert recorded["changes"] == [
        "create user alice (home /home/alice, shell /bin/bash, member of sudo)",
        "set the password of alice (hash from the provisioning data)",
        "grant alice sudo with the user's password in /etc/sudoers.d/waagent",
        f"record alice as the user accepted for VM {VM_ID} ({ACCEPTED}: only its keys are"
        " installed)",
    ]
    accepted = root / ACCEPTED.lstrip("/")
    assert json.loads(accepted.read_text()) == {
        "username": "alice",
        "vm_id": VM_ID,
        "uid": uid,
    }
    st = accepted.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)


def test_second_run_changes_nothing(root: Path) -> None:
    debian_root(root)
    provision(root)
    configure(root, "Provisioning.DeleteRootPassword=y")
    assert run(root).returncode == 0
    before = system_state(root)
    again = run(root)
    assert again.returncode == 0, again.stderr
    assert system_state(root) == before
    assert "nothing to do" in again.stderr
    assert result(root)["state"] == "nothing-to-do"


def test_dry_run_writes_nothing(root: Path) -> None:
    debian_root(root)
    provision(root)
    configure(root, "Provisioning.DeleteRootPassword=y")
    before = snapshot(root)
    done = run(root, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert snapshot(root) == before
    assert "create user alice" in done.stdout
    assert "set the password of alice" in done.stdout
    assert "grant alice sudo" in done.stdout
    assert "erase root's password" in done.stdout


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        # Reserved for the system: create-user's own check.
        ("root", "the provisioned user: 'root' is reserved for the system"),
        ("daemon", "the provisioned user: 'daemon' is reserved for the system"),
        ("nobody", "the provisioned user: 'nobody' is reserved for the system"),
        # The user name rule, applied when provisioning.json is read.
        ("-rf", f"{NAME}'-rf' is not a valid user name: it starts with '-'"),
        (
            "a" * 300,
            f"{NAME}'{'a' * 40}'... (300 characters) is not a valid user name:"
            " it is 300 characters long, at most 32 allowed",
        ),
        ("a" * 33, "it is 33 characters long, at most 32 allowed"),
        ("a;b", f"{NAME}'a;b' is not a valid user name: it contains ';': only a-z, 0-9"),
        ("Alice", f"{NAME}'Alice' is not a valid user name: it contains 'A' (upper case"),
        ("1alice", f"{NAME}'1alice' is not a valid user name: it starts with '1'"),
        ("al ice", f"{NAME}'al ice' is not a valid user name: it contains ' '"),
        ("a$b", f"{NAME}'a$b' is not a valid user name: it contains '$'"),
        ("alice$", f"{NAME}'alice$' is not a valid user name: it contains '$'"),
        ("../etc", f"{NAME}'../etc' is not a valid user name: it contains '.', '/'"),
        ("root\n", f"{NAME}'root\\n' is not a valid user name: it contains '\\n'"),
        ("", f"{NAME}'' is not a valid user name: it is empty"),
    ],
)
def test_invalid_names_fail_with_their_reason_and_write_nothing(
    root: Path, username: str, reason: str
) -> None:
    debian_root(root)
    provision(root, username)
    before = system_state(root)
    done = run(root)
    assert done.returncode == 1
    assert reason in done.stderr
    assert system_state(root) == before
    recorded = result(root)
    assert recorded["state"] == "failed"
    assert reason in recorded["reason"]


def test_names_at_the_limits_are_accepted(root: Path) -> None:
    debian_root(root)
    name = "_a-" + "b" * 28 + "9"  # 32 characters, '_' first
    provision(root, name)
    done = run(root)
    assert done.returncode == 0, done.stderr
    assert name in records(root, "passwd")
    assert (root / SUDOERS).read_text() == f"{name} ALL=(ALL) ALL\n"


def test_an_existing_system_account_is_refused(root: Path) -> None:
    debian_root(root)
    provision(root, "svc")
    before = system_state(root)
    done = run(root)
    assert done.returncode == 1
    reason = "user 'svc' is an existing system account (uid 500 < UID_MIN 1000)"
    assert reason in done.stderr
    assert "Provisioning.AllowResetSysUser=y" in done.stderr
    assert system_state(root) == before


def test_an_existing_system_account_is_reused_with_allow_reset_sys_user(root: Path) -> None:
    debian_root(root)
    provision(root, "svc")
    configure(root, "Provisioning.AllowResetSysUser=y")
    passwd_before = records(root, "passwd")
    done = run(root)
    assert done.returncode == 0, done.stderr
    assert records(root, "passwd") == passwd_before  # updated, never recreated
    assert records(root, "shadow")["svc"][1] == HASH
    assert "svc" in records(root, "group")["sudo"][3].split(",")
    assert (root / SUDOERS).read_text() == "svc ALL=(ALL) ALL\n"
    assert not (root / "home/svc").exists()
    assert result(root)["changes"] == [
        "add user svc to group sudo",
        "set the password of svc (hash from the provisioning data)",
        "grant svc sudo with the user's password in /etc/sudoers.d/waagent",
        f"record svc as the user accepted for VM {VM_ID} ({ACCEPTED}: only its keys are installed)",
    ]
    assert run(root).returncode == 0
    assert result(root)["state"] == "nothing-to-do"


def test_uid_min_comes_from_the_roots_login_defs(root: Path) -> None:
    debian_root(root)
    write(root / "etc/login.defs", "UID_MIN 500\nGID_MIN 5000\n")
    provision(root, "svc")
    assert run(root).returncode == 0  # uid 500 is not below UID_MIN 500 here
    provision(root, "bob")
    assert run(root).returncode == 0
    assert int(records(root, "group")["bob"][2]) >= 5000  # useradd read it too


def test_no_password_means_locked_password_and_nopasswd_sudo(root: Path) -> None:
    debian_root(root)
    provision(root, password_hash=None)
    done = run(root)
    assert done.returncode == 0, done.stderr
    field = records(root, "shadow")["alice"][1]
    assert field.startswith("!")
    assert "$" not in field
    assert (root / SUDOERS).read_text() == "alice ALL=(ALL) NOPASSWD: ALL\n"
    assert run(root).returncode == 0
    assert result(root)["state"] == "nothing-to-do"


def test_an_existing_users_password_is_locked_when_none_is_given(root: Path) -> None:
    debian_root(root, extra_users="carol:x:1500:1500::/home/carol:/bin/bash\n")
    with open(root / "etc/shadow", "a") as f:
        f.write("carol:$6$old$oldhash:19000:0:99999:7:::\n")
    with open(root / "etc/group", "a") as f:
        f.write("carol:x:1500:\n")
    provision(root, "carol", password_hash=None)
    done = run(root)
    assert done.returncode == 0, done.stderr
    assert records(root, "shadow")["carol"][1] == "!$6$old$oldhash"
    assert "lock the password of carol: none was provided, SSH keys only" in result(root)["changes"]
    assert run(root).returncode == 0
    assert result(root)["state"] == "nothing-to-do"


def test_a_new_hash_replaces_the_old_one_and_sudo_follows(root: Path) -> None:
    debian_root(root)
    provision(root, password_hash=None)
    assert run(root).returncode == 0
    provision(root)
    done = run(root)
    assert done.returncode == 0, done.stderr
    assert records(root, "shadow")["alice"][1] == HASH
    assert (root / SUDOERS).read_text() == "alice ALL=(ALL) ALL\n"
    assert result(root)["changes"] == [
        "set the password of alice (hash from the provisioning data)",
        "grant alice sudo with the user's password in /etc/sudoers.d/waagent",
    ]


def test_delete_root_password_erases_it_once(root: Path) -> None:
    debian_root(root)
    provision(root)
    configure(root, "Provisioning.DeleteRootPassword=y")
    done = run(root)
    assert done.returncode == 0, done.stderr
    assert records(root, "shadow")["root"][1] == "*"
    assert ROOT_HASH not in (root / "etc/shadow").read_text()
    assert (
        "erase root's password in /etc/shadow (Provisioning.DeleteRootPassword=y)"
        in (result(root)["changes"])
    )
    again = run(root)
    assert again.returncode == 0
    assert result(root)["state"] == "nothing-to-do"


@pytest.mark.parametrize("field", ["!", "!!", "*", "!*", "*LOCK*"])
def test_delete_root_password_leaves_an_erased_one_alone(root: Path, field: str) -> None:
    debian_root(root)
    shadow = root / "etc/shadow"
    write(
        shadow,
        shadow.read_text().replace(ROOT_HASH, field),
        mode=0o640,
        gid=SHADOW_GID,
    )
    provision(root)
    configure(root, "Provisioning.DeleteRootPassword=y")
    assert run(root).returncode == 0
    assert records(root, "shadow")["root"][1] == field
    assert not [c for c in result(root)["changes"] if "root" in c]


def test_the_wheel_group_on_rhel_like_images(root: Path) -> None:
    debian_root(root, admin_group="wheel")
    provision(root)
    assert run(root).returncode == 0
    assert records(root, "group")["wheel"][3] == "alice"


def test_no_admin_group_still_gives_sudo_through_the_dropin(root: Path) -> None:
    debian_root(root, admin_group="staff")
    provision(root)
    assert run(root).returncode == 0
    assert records(root, "group")["staff"][3] == ""
    assert (root / SUDOERS).read_text() == "alice ALL=(ALL) ALL\n"


def test_other_users_sudoers_lines_are_kept(root: Path) -> None:
    debian_root(root)
    write(
        root / SUDOERS,
        "bob ALL=(ALL) NOPASSWD: ALL\nalice ALL=(ALL) NOPASSWD: ALL\n",
        mode=0o440,
    )
    provision(root)
    assert run(root).returncode == 0
    assert (root / SUDOERS).read_text() == "bob ALL=(ALL) NOPASSWD: ALL\nalice ALL=(ALL) ALL\n"


def test_content_visudo_refuses_is_never_installed(root: Path) -> None:
    if shutil.which("visudo") is None:
        pytest.fail("visudo is missing: install the Debian package sudo")
    debian_root(root)
    broken = "bob ALL=(ALL\n"
    write(root / SUDOERS, broken, mode=0o440)
    provision(root)
    done = run(root)
    assert done.returncode == 1
    assert "/etc/sudoers.d/waagent: visudo refuses the new content: " in done.stderr
    assert "syntax error" in done.stderr
    assert (root / SUDOERS).read_text() == broken
    assert sorted(p.name for p in (root / "etc/sudoers.d").iterdir()) == ["waagent"]


def test_sudoers_dir_is_created_when_missing(root: Path) -> None:
    debian_root(root)
    (root / "etc/sudoers.d").rmdir()
    configure(root, "OS.SudoersDir=/etc/sudo-dropins")
    provision(root)
    assert run(root).returncode == 0
    directory = root / "etc/sudo-dropins"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert (directory / "waagent").read_text() == "alice ALL=(ALL) ALL\n"


def test_home_goes_under_os_homedir(root: Path) -> None:
    debian_root(root)
    configure(root, "OS.HomeDir=/srv/users")
    provision(root)
    assert run(root).returncode == 0
    assert records(root, "passwd")["alice"][5] == "/srv/users/alice"
    assert (root / "srv/users/alice/.bashrc").exists()


def test_sh_when_the_image_has_no_bash(root: Path) -> None:
    debian_root(root)
    (root / "bin/bash").unlink()
    provision(root)
    assert run(root).returncode == 0
    assert records(root, "passwd")["alice"][6] == "/bin/sh"


def test_a_group_of_the_same_name_without_the_user_fails_cleanly(root: Path) -> None:
    debian_root(root)
    with open(root / "etc/group", "a") as f:
        f.write("alice:x:2000:\n")
    provision(root)
    before = system_state(root)
    done = run(root)
    assert done.returncode == 1
    assert "a group named 'alice' exists without a user of that name" in done.stderr
    assert system_state(root) == before


def test_a_hash_is_never_written_into_passwd(root: Path) -> None:
    """chpasswd puts the hash in /etc/passwd when the account is not shadowed."""
    debian_root(root, extra_users="dave:legacy:1600:1600::/home/dave:/bin/bash\n")
    provision(root, "dave")
    done = run(root)
    assert done.returncode == 1
    assert "the account is not shadowed" in done.stderr
    assert HASH not in (root / "etc/passwd").read_text()
    assert result(root)["changes"] == []  # refused before anything changed


def test_a_hash_is_never_written_into_a_world_readable_shadow(root: Path) -> None:
    debian_root(root)
    (root / "etc/shadow").chmod(0o644)
    provision(root)
    before = system_state(root)
    done = run(root)
    assert done.returncode == 1
    assert "set the password of alice: /etc/shadow is world-readable" in done.stderr
    assert system_state(root) == before  # refused before anything changed


def test_skipped_without_provisioning_data(root: Path) -> None:
    debian_root(root)
    before = system_state(root)
    done = run(root)
    assert done.returncode == 0, done.stderr
    assert result(root)["state"] == "skipped"
    assert system_state(root) == before


def test_the_hash_appears_only_in_root_only_files_and_never_in_output(root: Path) -> None:
    debian_root(root)
    provision(root)
    configure(root, "Provisioning.DeleteRootPassword=y")
    runs = [run(root, "-v", "--dry-run"), run(root, "-v"), run(root, "-v")]
    # Also a failing run, whose reason and stderr carry a command's output.
    write(root / SUDOERS, "bob ALL=(ALL\n", mode=0o440)
    runs.append(run(root, "-v"))
    assert runs[-1].returncode == 1

    secrets = [HASH, HASH.split("$")[3], PHRASE]
    for done in runs:
        for secret in secrets:
            assert secret not in done.stdout
            assert secret not in done.stderr
        assert not re.search(r"\$6\$[./0-9A-Za-z]{4,}", done.stdout + done.stderr)
    assert HASH.split("$")[3] not in (root / RESULT).read_text()

    holders = set()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            assert PHRASE.encode() not in content, path
            if HASH.split("$")[3].encode() in content:
                holders.add(str(path.relative_to(root)))
                assert not path.stat().st_mode & 0o004, f"{path} is world-readable"
    # /etc/shadow- is shadow-utils' backup of the previous shadow.
    assert holders <= {"etc/shadow", "etc/shadow-", STATE}
    assert "etc/shadow" in holders


# --- ssh-keys installs keys only for the account create-user accepted ----------------------


def public_key(comment: str = "platform") -> str:
    line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return f"{line} {comment}"


def keys_for(name: str) -> tuple[Key, ...]:
    return (Key(path=f"$HOME/{name}/.ssh/authorized_keys", value=public_key()),)


def ssh_keys(root: Path) -> Any:
    return run_stage("ssh-keys", "--root", str(root), env={"AZAGENT_LOCK_TIMEOUT": "5"})


@pytest.mark.parametrize(
    ("username", "configuration", "reason"),
    [
        ("root", "", "the provisioned user: 'root' is reserved for the system"),
        (
            "svc",
            "",
            "user 'svc' is an existing system account (uid 500 < UID_MIN 1000)",
        ),
        ("toor", "Provisioning.AllowResetSysUser=y", "user 'toor' has uid 0"),
    ],
)
def test_ssh_keys_installs_nothing_for_a_user_create_user_refused(
    root: Path, username: str, configuration: str, reason: str
) -> None:
    """Boot order: create-user refuses, ssh-keys runs anyway (Wants=, not Requires=)."""
    debian_root(root, extra_users="toor:x:0:0:root again:/root:/bin/bash\n")
    configure(root, configuration)
    for home in ("root", "var/lib/svc"):
        (root / home).mkdir(parents=True)
    os.chown(root / "var/lib/svc", 500, 500)
    provision(root, username, public_keys=keys_for(username))
    before = system_state(root)
    done = run(root)
    assert done.returncode == 1
    assert reason in done.stderr
    keys = ssh_keys(root)
    assert keys.returncode == 1, keys.stderr
    assert f"the keys of {username} are not installed" in keys.stderr
    assert system_state(root) == before
    assert not (root / "root/.ssh").exists()
    assert not (root / "var/lib/svc/.ssh").exists()


def test_a_uid_0_account_is_never_reused(root: Path) -> None:
    debian_root(root, extra_users="toor:x:0:0:root again:/root:/bin/bash\n")
    configure(root, "Provisioning.AllowResetSysUser=y")
    provision(root, "toor")
    before = system_state(root)
    done = run(root)
    assert done.returncode == 1
    assert "user 'toor' has uid 0: it is root, never provisioned" in done.stderr
    assert system_state(root) == before


def test_an_account_with_roots_home_is_never_reused(root: Path) -> None:
    debian_root(root, extra_users="mallory:x:1500:1500::/root:/bin/bash\n")
    (root / "root").mkdir(mode=0o700)
    provision(root, "mallory")
    before = system_state(root)
    done = run(root)
    assert done.returncode == 1
    assert "user 'mallory' has the home of root (/root)" in done.stderr
    assert system_state(root) == before


def test_keys_wait_for_a_create_user_run_that_completes(root: Path) -> None:
    """create-user fails after creating the user (visudo refuses the drop-in): no keys.
    Fixed and run again by hand, it accepts alice, and ssh-keys installs them."""
    if shutil.which("visudo") is None:
        pytest.fail("visudo is missing: install the Debian package sudo")
    debian_root(root)
    write(root / SUDOERS, "bob ALL=(ALL\n", mode=0o440)
    provision(root, public_keys=keys_for("alice"))
    done = run(root)
    assert done.returncode == 1
    assert "alice" in records(root, "passwd")  # created before the failure
    keys = ssh_keys(root)
    assert keys.returncode == 1, keys.stderr
    assert "the keys of alice are not installed: create-user" in keys.stderr
    assert not (root / "home/alice/.ssh").exists()

    (root / SUDOERS).unlink()
    done = run(root)
    assert done.returncode == 0, done.stderr
    keys = ssh_keys(root)
    assert keys.returncode == 0, keys.stderr
    authorized = root / "home/alice/.ssh/authorized_keys"
    assert authorized.read_text().startswith("ssh-ed25519 ")
    uid = int(records(root, "passwd")["alice"][2])
    assert authorized.stat().st_uid == uid
    # A second run of both changes nothing.
    before = system_state(root)
    assert run(root).returncode == 0
    assert result(root)["state"] == "nothing-to-do"
    assert ssh_keys(root).returncode == 0
    assert system_state(root) == before


@pytest.mark.parametrize("other", ["root", "carol"])
def test_keys_stop_when_provisioning_json_names_another_user_later(root: Path, other: str) -> None:
    """create-user accepted alice; the file now names another account it never looked at."""
    debian_root(root, extra_users="carol:x:1500:1500::/home/carol:/bin/bash\n")
    for home, uid in (("root", 0), ("home/carol", 1500)):
        (root / home).mkdir(parents=True)
        os.chown(root / home, uid, uid)
    provision(root, "alice", public_keys=keys_for("alice"))
    assert run(root).returncode == 0
    provision(root, other, public_keys=keys_for(other))  # edited by hand, create-user not rerun
    before = system_state(root)
    keys = ssh_keys(root)
    assert keys.returncode == 1, keys.stderr
    assert f"the keys of {other} are not installed" in keys.stderr
    assert system_state(root) == before


# --- The home useradd fills is never reached through a link it should not follow ----------


def test_a_home_that_is_a_symbolic_link_is_refused(root: Path) -> None:
    """useradd would keep an existing "home" and ssh-keys would fill it."""
    debian_root(root)
    (root / "home").mkdir()
    (root / "home/alice").symlink_to("../etc")
    provision(root)
    before = system_state(root)
    done = run(root)
    assert done.returncode == 1
    assert "/home/alice is a symbolic link" in done.stderr
    assert system_state(root) == before
    assert "alice" not in records(root, "passwd")


def test_a_home_root_linked_where_others_write_is_refused(root: Path) -> None:
    """/home -> ../tmp/x with /tmp writable by everyone: useradd would fill what others made."""
    debian_root(root)
    tmp = root / "tmp"
    (tmp / "x").mkdir(parents=True)
    tmp.chmod(0o1777)
    (root / "home").symlink_to("tmp/x")  # relative: the host's /tmp is never reached
    provision(root)
    before = system_state(root)
    done = run(root)
    assert done.returncode == 1
    assert "/tmp is writable by others" in done.stderr
    assert "the symbolic link /home" in done.stderr
    assert system_state(root) == before
    assert not list((tmp / "x").iterdir())


def test_a_home_root_linked_by_root_is_followed(root: Path) -> None:
    """Fedora Atomic, RHEL image mode: /home -> var/home."""
    debian_root(root)
    (root / "var/home").mkdir(parents=True)
    (root / "home").symlink_to("var/home")
    provision(root)
    done = run(root)
    assert done.returncode == 0, done.stderr
    assert (root / "var/home/alice/.bashrc").exists()
