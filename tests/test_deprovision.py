"""azagent deprovision on an image tree: what the seed lists, confirmation, --user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, run_cli

STATE = ("provisioned", "ovf-env.xml", "CustomData", "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9.prv")


def image(root: Path) -> Path:
    (root / "etc/ssh").mkdir(parents=True)
    for name in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key"):
        (root / "etc/ssh" / name).write_text("key\n")
    (root / "etc/ssh/sshd_config").write_text("PasswordAuthentication no\n")
    (root / "etc/resolv.conf").write_text("nameserver 168.63.129.16\n")
    (root / "etc/hostname").write_text("web-1\n")
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n"
    )
    (root / "etc/group").write_text("root:x:0:\nalice:x:1000:\n")
    (root / "etc/shadow").write_text("root:$6$salt$hash:19000:0:99999:7:::\nalice:!:19000::::::\n")
    (root / "etc/gshadow").write_text("root:*::\nalice:!::\n")
    os.chmod(root / "etc/shadow", 0o640)
    (root / "home/alice/.ssh").mkdir(parents=True)
    (root / "var/lib/dhcp").mkdir(parents=True)
    (root / "var/lib/dhcp/dhclient.eth0.leases").write_text("lease {}\n")
    lib = root / "var/lib/waagent"
    lib.mkdir(parents=True)
    for name in STATE:
        (lib / name).write_text("x\n")
    # WALinuxAgent's sample names its user "UserName", which the user name rule
    # refuses: the copy names alice, the user on disk.
    sample = (FIXTURES / "walinuxagent/ovf-env.xml").read_bytes()
    (lib / "ovf-env.xml").write_bytes(sample.replace(b">UserName<", b">alice<"))
    return root


def test_dry_run_lists_everything_and_changes_nothing(root: Path) -> None:
    image(root)
    run = run_cli("deprovision", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    for expected in (
        "delete the SSH host key /etc/ssh/ssh_host_rsa_key",
        "empty /etc/resolv.conf",
        "delete the DHCP lease /var/lib/dhcp/dhclient.eth0.leases",
        "reset the hostname to localhost.localdomain",
        "delete azagent state /var/lib/waagent/provisioned",
    ):
        assert expected in run.stdout
    assert "root's password" not in run.stdout  # Provisioning.DeleteRootPassword=n
    assert (root / "etc/hostname").read_text() == "web-1\n"
    assert (root / "var/lib/waagent/provisioned").exists()


def test_refuses_without_a_terminal_or_force(root: Path) -> None:
    image(root)
    run = run_cli("-deprovision", "--root", str(root))
    assert run.returncode == 1
    assert "--force" in run.stderr
    assert (root / "etc/hostname").read_text() == "web-1\n"


def test_confirmation_no_changes_nothing(root: Path) -> None:
    image(root)
    if shutil.which("script") is None:
        pytest.skip("script(1) (util-linux) is not installed")
    done = subprocess.run(
        ["script", "-qec", f"{sys.executable} -m azagent deprovision --root {root}", "/dev/null"],
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Do you want to proceed" in done.stdout
    assert (root / "etc/hostname").read_text() == "web-1\n"


def test_force_deprovisions_and_a_second_run_has_nothing_left(root: Path) -> None:
    image(root)
    (root / "etc/waagent.conf").write_text("Provisioning.DeleteRootPassword=y\n")
    run = run_cli("deprovision", "--force", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert list((root / "etc/ssh").iterdir()) == [root / "etc/ssh/sshd_config"]
    assert (root / "etc/resolv.conf").read_text() == ""
    assert (root / "etc/hostname").read_text() == "localhost.localdomain\n"
    assert not (root / "var/lib/dhcp/dhclient.eth0.leases").exists()
    assert list((root / "var/lib/waagent").iterdir()) == []
    shadow = (root / "etc/shadow").read_text().splitlines()
    assert shadow[0].startswith("root:*:")
    assert (root / "etc/shadow").stat().st_mode & 0o777 == 0o640
    assert (root / "home/alice").exists()  # without --user the user stays
    again = run_cli("deprovision", "--force", "--root", str(root))
    assert again.returncode == 0
    assert "nothing to do" in again.stdout


def test_resolv_conf_link_is_left_alone(root: Path) -> None:
    image(root)
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    run = run_cli("deprovision", "--root", str(root), "--dry-run")
    assert "resolv.conf is a link" in run.stdout
    assert "empty /etc/resolv.conf" not in run.stdout


def test_deprovision_user_deletes_the_last_provisioned_user(root: Path) -> None:
    image(root)
    for path in (root / "home/alice", root / "home/alice/.ssh"):
        os.chown(path, 1000, 1000)
    run = run_cli("-deprovision+user", "-force", "--root", str(root))
    assert run.returncode == 0, run.stderr + run.stdout
    assert "delete the user alice and its home directory" in run.stdout
    assert "alice" not in (root / "etc/passwd").read_text()
    assert not (root / "home/alice").exists()


def test_deprovision_user_deletes_no_user_the_name_rule_refuses(root: Path) -> None:
    """A copy naming "UserName" (upper case) was never provisioned by azagent: nobody
    is deleted, even when an account of that name exists."""
    image(root)
    lib = root / "var/lib/waagent"
    shutil.copy(FIXTURES / "walinuxagent/ovf-env.xml", lib / "ovf-env.xml")
    for name in ("passwd", "group", "shadow", "gshadow"):
        path = root / "etc" / name
        path.write_text(path.read_text().replace("alice", "UserName"))
    run = run_cli("-deprovision+user", "-force", "--root", str(root))
    assert run.returncode == 0, run.stderr + run.stdout
    assert "delete the user" not in run.stdout
    assert "no user to delete" in run.stdout
    assert "UserName:x:1000" in (root / "etc/passwd").read_text()
