"""The certificate store: <Lib.Dir>/<THUMBPRINT>.crt/.prv, fetched from the WireServer.

Real certificates: WALinuxAgent's wire/certs.xml sample (one with its private
key, one without) and the emulator's generated ones, fetched over loopback.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from azfabric import keys
from azfabric.scenario import KeyPair, PublicKey
from azfabric.server import Fabric
from conftest import FIXTURES, snapshot
from provisioning_env import Scenario, make_vm

from azagent import certs, certstore, config
from azagent.certstore import CertStore, CertStoreError
from azagent.context import Context
from azagent.wireclient import WireClient
from azagent.wireserver import ConfigUris, GoalState

KEYED = "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"
PLAIN = "8979F1AC8C4215827BF3B5A403E6137B504D02A4"


def platform_items() -> list[certs.CertificateItem]:
    wire = FIXTURES / "walinuxagent/wire"
    blob = certs.parse_certificates_xml((wire / "certs.xml").read_bytes())
    return certs.parse_pfx(certs.decrypt_enveloped(blob, (wire / "trans_prv").read_bytes()))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- Storing and looking up -----------------------------------------------------------------


def test_store_and_look_up_round_trip(tmp_path: Path) -> None:
    items = {item.thumbprint: item for item in platform_items()}
    assert set(items) == {KEYED, PLAIN}
    store = CertStore(tmp_path / "var/lib/waagent")
    assert store.missing({KEYED: True, PLAIN: False}) == sorted([KEYED, PLAIN])

    written = store.store(items.values())
    assert sorted(written) == sorted([f"{KEYED}.crt", f"{KEYED}.prv", f"{PLAIN}.crt"])
    assert mode(store.directory) == 0o700
    for name in written:
        st = (store.directory / name).lstat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid()), name
    assert not [p for p in store.directory.iterdir() if p.name.startswith(".")]  # no temp left

    keyed = items[KEYED]
    assert keyed.private_key_pem is not None
    assert store.certificate(KEYED) == keyed.certificate_pem
    assert store.private_key(KEYED) == keyed.private_key_pem
    assert store.pair(KEYED) == (keyed.certificate_pem, keyed.private_key_pem)
    assert certs.thumbprint(store.certificate(PLAIN)) == PLAIN
    assert store.find_private_key(PLAIN) is None
    assert store.certificate_path(KEYED) == store.directory / f"{KEYED}.crt"
    assert store.private_key_path(KEYED) == store.directory / f"{KEYED}.prv"
    assert store.missing({KEYED: True, PLAIN: False}) == []
    assert store.missing({KEYED: True, PLAIN: True}) == [PLAIN]

    # Storing the same certificates again changes nothing.
    before = snapshot(tmp_path)
    assert store.store(items.values()) == []
    assert snapshot(tmp_path) == before


def test_a_stored_file_with_the_wrong_mode_or_content_is_rewritten(tmp_path: Path) -> None:
    items = platform_items()
    store = CertStore(tmp_path)
    store.store(items)
    loose = store.certificate_path(PLAIN)
    loose.chmod(0o644)
    stale = store.private_key_path(KEYED)
    stale.write_bytes(b"stale")
    assert sorted(store.store(items)) == sorted([loose.name, stale.name])
    assert mode(loose) == mode(stale) == 0o600
    assert stale.read_bytes() != b"stale"


def test_a_missing_thumbprint_is_an_error_naming_it(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.store(item for item in platform_items() if item.thumbprint == PLAIN)
    absent = "AB" * 20
    with pytest.raises(CertStoreError, match=f"certificate {absent} is not in Lib.Dir"):
        store.certificate(absent)
    with pytest.raises(CertStoreError, match=f"private key of certificate {PLAIN} is not"):
        store.private_key(PLAIN)
    with pytest.raises(CertStoreError, match=PLAIN):
        store.pair(PLAIN)
    assert store.find_certificate(absent) is None
    assert not store.has_certificate(absent)


@pytest.mark.parametrize(
    "hostile",
    [
        "../x",
        "../" + "A" * 37,
        KEYED.lower(),
        KEYED[:39],
        KEYED + "0",
        KEYED + "\n",
        " " + KEYED,
        KEYED[:38] + "/.",
        "",
        "G" * 40,
    ],
)
def test_only_a_thumbprint_can_name_a_file(tmp_path: Path, hostile: str) -> None:
    lib = tmp_path / "lib"
    store = CertStore(lib)
    store.store(platform_items())
    # What a path escape would find, were the name used as given.
    (tmp_path / "x.crt").write_text("outside\n")
    (tmp_path / "x.prv").write_text("outside\n")
    for lookup in (
        store.certificate_path,
        store.private_key_path,
        store.has_certificate,
        store.has_private_key,
        store.find_certificate,
        store.find_private_key,
        store.certificate,
        store.private_key,
    ):
        with pytest.raises(CertStoreError, match="is not a certificate thumbprint"):
            lookup(hostile)
    with pytest.raises(CertStoreError, match="is not a certificate thumbprint"):
        store.missing({hostile: False})
    item = platform_items()[0]
    forged = certs.CertificateItem(hostile, item.certificate_pem, item.private_key_pem)
    with pytest.raises(CertStoreError, match="is not a certificate thumbprint"):
        store.store([forged])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib", "x.crt", "x.prv"]


def test_normalize_accepts_what_documents_write() -> None:
    assert certstore.normalize_thumbprint(f" {KEYED.lower()}\n") == KEYED
    for bad in ("../x", KEYED[:39].lower(), "AB" * 32):
        with pytest.raises(CertStoreError, match="not a certificate thumbprint"):
            certstore.normalize_thumbprint(bad)


def test_a_symbolic_link_in_the_store_is_never_followed(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "lib")
    store.directory.mkdir(mode=0o700)
    secret = tmp_path / "shadow"
    secret.write_text("not a certificate\n")
    store.certificate_path(PLAIN).symlink_to(secret)
    assert not store.has_certificate(PLAIN)
    assert store.missing({PLAIN: False}) == [PLAIN]
    with pytest.raises(CertStoreError, match=f"{PLAIN}.crt in Lib.Dir is a symbolic link"):
        store.find_certificate(PLAIN)
    # Storing replaces the link itself; its target is left alone.
    store.store(item for item in platform_items() if item.thumbprint == PLAIN)
    assert not store.certificate_path(PLAIN).is_symlink()
    assert certs.thumbprint(store.certificate(PLAIN)) == PLAIN
    assert secret.read_text() == "not a certificate\n"


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.certificate_path(PLAIN).write_bytes(b"A" * (certstore.MAX_FILE_BYTES + 1))
    with pytest.raises(CertStoreError, match="larger than"):
        store.certificate(PLAIN)


# --- Fetching from the WireServer (the emulator on loopback) ----------------------------------


def with_certificates(goal: GoalState, certificates: str | None) -> GoalState:
    """``goal`` pointing to another certificates document (None: none)."""
    u = goal.uris
    uris = ConfigUris(
        hosting_environment=u.hosting_environment,
        shared_config=u.shared_config,
        extensions_config=u.extensions_config,
        full_config=u.full_config,
        certificates=certificates,
        config_name=u.config_name,
    )
    return GoalState(
        goal.incarnation, goal.container_id, goal.instance_id, uris, goal.expected_state
    )


def fabric_context(root: Path) -> Context:
    return Context(
        stage="test", root=root, config=config.load(root / "etc/waagent.conf", required=True)
    )


def test_fetch_all_stores_every_certificate_of_the_goal_state(root: Path) -> None:
    s = Scenario(
        public_keys=[
            PublicKey(path="/home/azureuser/.ssh/authorized_keys", fingerprint="generate")
        ],
        key_pairs=[KeyPair(path="/home/azureuser/.ssh/id_rsa")],
    )
    with Fabric(s) as fabric:
        ctx = fabric_context(make_vm(root, s, fabric).root)
        store = CertStore.of(ctx)
        assert store.directory == root / "var/lib/waagent"
        items = store.fetch_all(WireClient.from_context(ctx))
        asked = [r for r in fabric.requests if "certificates" in r.path]
        assert len(asked) == 1
        assert asked[0].header("x-ms-cipher-name") == "AES128_CBC"
        assert asked[0].header("x-ms-guest-agent-public-x509-cert")
        expected = {keys.thumbprint_of(c): c for c in s.certificates}
        assert len(expected) == 2
        assert {item.thumbprint for item in items} == set(expected)
        for thumb, certificate in expected.items():
            assert certs.thumbprint(store.certificate(thumb)) == thumb
            assert store.has_private_key(thumb) == certificate.with_key
        keyed = next(t for t, c in expected.items() if c.with_key)
        stored = certs.parse_pfx(
            certs.build_pfx([(store.certificate(keyed), store.private_key(keyed))])
        )
        assert stored[0].private_key_pem is not None  # the .prv belongs to the .crt
        # A goal state listing no certificates: nothing asked, nothing stored.
        goal = WireClient.from_context(ctx).goal_state()
        bare = with_certificates(goal, None)
        count = len(fabric.requests)
        assert certstore.fetch(WireClient.from_context(ctx), bare) == []
        assert not [r for r in fabric.requests[count:] if "certificates" in r.path]


def test_an_unusable_certificates_document_is_a_clear_error(root: Path) -> None:
    s = Scenario(key_pairs=[KeyPair(path="/home/azureuser/.ssh/id_rsa")])
    with Fabric(s) as fabric:
        ctx = fabric_context(make_vm(root, s, fabric).root)
        goal = WireClient.from_context(ctx).goal_state()
        # The hosting environment document is XML but not a CertificateFile.
        wrong = with_certificates(goal, goal.uris.hosting_environment)
        with pytest.raises(CertStoreError, match=r"^certificates: .*CertificateFile"):
            CertStore.of(ctx).fetch_all(WireClient.from_context(ctx), wrong)
        assert not (root / "var/lib/waagent").exists()


# --- The certificates stage over the store ------------------------------------------------------


def add_user(root: Path, name: str = "azureuser", uid: int = 1000) -> Path:
    etc = root / "etc"
    (etc / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\n{name}:x:{uid}:{uid}::/home/{name}:/bin/sh\n"
    )
    (etc / "group").write_text(f"root:x:0:\n{name}:x:{uid}:\n")
    home = root / "home" / name
    home.mkdir(parents=True)
    os.chown(home, uid, uid)
    return home


def key_scenario(**changes: object) -> Scenario:
    values: dict[str, object] = {
        "public_keys": [
            PublicKey(path="/home/azureuser/.ssh/authorized_keys", fingerprint="generate")
        ],
        "key_pairs": [KeyPair(path="/home/azureuser/.ssh/id_rsa")],
    }
    values.update(changes)
    return Scenario(**values)  # type: ignore[arg-type]


def test_dry_run_neither_fetches_nor_writes(root: Path) -> None:
    s = key_scenario()
    with Fabric(s) as fabric:
        vm = make_vm(root, s, fabric)
        add_user(root)
        assert vm.run("mount-ovf").returncode == 0
        before, asked = snapshot(root), len(fabric.requests)
        dry = vm.run("certificates", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would:" in dry.stdout
        assert "fetch the goal state's certificates from the WireServer" in dry.stdout
        assert "install the keys they carry for azureuser" in dry.stdout
        assert snapshot(root) == before
        assert len(fabric.requests) == asked  # not even the goal state


def test_keys_are_installed_again_from_the_store_without_the_network(root: Path) -> None:
    s = key_scenario()
    with Fabric(s) as fabric:
        vm = make_vm(root, s, fabric)
        home = add_user(root)
        assert vm.run("mount-ovf").returncode == 0
        assert vm.run("certificates").returncode == 0
        installed = (home / ".ssh/authorized_keys").read_text()
        (home / ".ssh/authorized_keys").unlink()
        asked = len(fabric.requests)
        dry = vm.run("certificates", "--dry-run")
        assert "add 1 key(s) to /home/azureuser/.ssh/authorized_keys" in dry.stdout
        again = vm.run("certificates")
        assert again.returncode == 0, again.stderr
        assert vm.result("certificates")["state"] == "done"
        assert (home / ".ssh/authorized_keys").read_text() == installed
        assert len(fabric.requests) == asked


def test_a_key_that_cannot_be_installed_stores_nothing(root: Path) -> None:
    s = key_scenario(key_pairs=[KeyPair(path="/root/.ssh/id_rsa")])
    with Fabric(s) as fabric:
        vm = make_vm(root, s, fabric)
        add_user(root)
        assert vm.run("mount-ovf").returncode == 0
        run = vm.run("certificates")
        assert run.returncode == 1, run.stderr
        assert "not inside the home directory" in vm.result("certificates")["reason"]
        assert not list((root / "var/lib/waagent").glob("*.crt"))
        assert not (root / "home/azureuser/.ssh").exists()


def test_a_fingerprint_that_is_no_thumbprint_fails_before_any_request(root: Path) -> None:
    s = key_scenario(
        public_keys=[PublicKey(path="/home/azureuser/.ssh/authorized_keys", fingerprint="AB" * 32)],
        key_pairs=[],
    )
    with Fabric(s) as fabric:
        vm = make_vm(root, s, fabric)
        add_user(root)
        assert vm.run("mount-ovf").returncode == 0
        asked = len(fabric.requests)
        run = vm.run("certificates")
        assert run.returncode == 1, run.stderr
        assert "is not a certificate thumbprint" in vm.result("certificates")["reason"]
        assert len(fabric.requests) == asked
