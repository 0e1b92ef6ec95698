"""The certificates stage: keys delivered by thumbprint, fetched and installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from azfabric import keys
from azfabric.scenario import KeyPair, PublicKey
from azfabric.server import Fabric
from conftest import snapshot
from provisioning_env import Scenario, make_vm

from azagent import certs


def add_user(root: Path, name: str = "azureuser", uid: int = 1000) -> Path:
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\n{name}:x:{uid}:{uid}::/home/{name}:/bin/sh\n"
    )
    (etc / "group").write_text(f"root:x:0:\n{name}:x:{uid}:\n")
    home = root / "home" / name
    home.mkdir(parents=True)
    os.chown(home, uid, uid)
    return home


def scenario() -> Scenario:
    return Scenario(
        public_keys=[
            PublicKey(path="/home/azureuser/.ssh/authorized_keys", fingerprint="generate")
        ],
        key_pairs=[KeyPair(path="/home/azureuser/.ssh/id_rsa")],
    )


def test_fetches_stores_and_installs(root: Path) -> None:
    s = scenario()
    with Fabric(s) as fabric:
        vm = make_vm(root, s, fabric)
        home = add_user(root)
        assert vm.run("mount-ovf").returncode == 0
        dry_before = snapshot(root)
        dry = vm.run("certificates", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert snapshot(root) == dry_before
        run = vm.run("certificates")
        assert run.returncode == 0, run.stderr
        lib = root / "var/lib/waagent"
        expected = {keys.thumbprint_of(c): c for c in s.certificates}
        for thumb, certificate in expected.items():
            crt = lib / f"{thumb}.crt"
            assert crt.stat().st_mode & 0o777 == 0o600
            assert certs.thumbprint(crt.read_bytes()) == thumb
            assert (lib / f"{thumb}.prv").exists() == certificate.with_key
        authorized = (home / ".ssh/authorized_keys").read_text()
        assert authorized.startswith("ssh-rsa ")
        private = home / ".ssh/id_rsa"
        st = private.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (1000, 0o600)
        assert (home / ".ssh/id_rsa.pub").read_text().startswith("ssh-rsa ")
        assert "PRIVATE KEY" not in run.stderr
        assert "PRIVATE KEY" not in (root / "run/azagent/stages/certificates.json").read_text()
        requests = len(fabric.requests)
        again = vm.run("certificates")
        assert again.returncode == 0, again.stderr
        assert vm.result("certificates")["state"] == "nothing-to-do"
        assert len(fabric.requests) == requests  # stored: the WireServer is not asked again


def test_missing_thumbprint_fails_clearly(root: Path) -> None:
    s = scenario()
    with Fabric(s) as fabric:
        vm = make_vm(root, s, fabric)
        add_user(root)
        assert vm.run("mount-ovf").returncode == 0
        fabric.scenario.certificates.pop()  # the platform forgets one
        run = vm.run("certificates")
        assert run.returncode == 1
        assert "did not deliver" in vm.result("certificates")["reason"]
        assert not (root / "home/azureuser/.ssh/authorized_keys").exists()


def test_inline_keys_only_skip(root: Path) -> None:
    s = Scenario()
    with Fabric(s) as fabric:
        vm = make_vm(root, s, fabric)
        assert vm.run("mount-ovf").returncode == 0
        assert vm.run("certificates").returncode == 0
        assert vm.result("certificates")["state"] == "skipped"
        assert not [r for r in fabric.requests if "certificates" in r.path]


# --- Keys only for an account create-user accepts, never through a link ---------------------


def root_scenario() -> Scenario:
    return Scenario(
        username="root",
        public_keys=[PublicKey(path="/root/.ssh/authorized_keys", fingerprint="generate")],
        key_pairs=[KeyPair(path="/root/.ssh/id_rsa")],
    )


@pytest.mark.parametrize("create_user", ["refused", "masked"])
def test_no_keys_for_root(root: Path, create_user: str) -> None:
    """After create-user refused root (or with create-user masked), the keys the
    platform names by thumbprint for root are not installed: nothing is fetched."""
    s = root_scenario()
    with Fabric(s) as fabric:
        vm = make_vm(root, s, fabric)
        (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (root / "root").mkdir()
        assert vm.run("mount-ovf").returncode == 0, vm.result("mount-ovf")
        if create_user == "refused":
            results = root / "run/azagent/stages"
            (results / "create-user.json").write_text(
                '{"stage": "create-user", "state": "failed", "reason": "root is reserved"}'
            )
        before = snapshot(root / "root")
        run = vm.run("certificates")
        assert run.returncode == 1, run.stderr
        assert "the keys of root are not installed" in vm.result("certificates")["reason"]
        assert snapshot(root / "root") == before
        assert not [r for r in fabric.requests if "certificates" in r.path]


@pytest.mark.parametrize("target", ["../keys", "/etc"])
def test_a_key_pair_path_through_a_linked_directory_is_refused(root: Path, target: str) -> None:
    s = Scenario(key_pairs=[KeyPair(path="/home/azureuser/.ssh/more/id_rsa")])
    with Fabric(s) as fabric:
        vm = make_vm(root, s, fabric)
        home = add_user(root)
        (home / ".ssh").mkdir(mode=0o700)
        (home / "keys").mkdir()
        (home / ".ssh/more").symlink_to(target)
        assert vm.run("mount-ovf").returncode == 0
        before = snapshot(root)
        run = vm.run("certificates")
        assert run.returncode == 1, run.stderr
        reason = vm.result("certificates")["reason"]
        assert "key pair #1 (Path /home/azureuser/.ssh/more/id_rsa): " in reason
        assert "/home/azureuser/.ssh/more is a symbolic link" in reason
        after = snapshot(root)
        assert {k: v for k, v in after.items() if not k.startswith("run/")} == {
            k: v for k, v in before.items() if not k.startswith("run/")
        }
