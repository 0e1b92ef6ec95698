"""mount-ovf, custom-data, report-ready and report-failure against the emulated fabric."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from azfabric.scenario import Fault, KeyPair, PublicKey
from azfabric.server import Fabric
from conftest import snapshot
from provisioning_env import DVD, Scenario, Vm, make_vm

from azagent import kvp, provisioning
from azagent.config import Config, defaults
from azagent.context import Context
from azagent.errors import StageFailed

CUSTOM = "#!/bin/sh\necho customdata-was-here > ran.txt\n"


@pytest.fixture
def vm(root: Path) -> Iterator[Vm]:
    scenario = Scenario(hostname="prov-vm", username="alice", custom_data=CUSTOM)
    with Fabric(scenario) as fabric:
        yield make_vm(root, scenario, fabric)


def kvp_records(vm: Vm) -> list[tuple[str, str]]:
    return kvp.decode_pool((vm.root / "var/lib/hyperv/.kvp_pool_1").read_bytes())


# -- mount-ovf ----------------------------------------------------------------


def test_mount_ovf_saves_the_data_root_only(vm: Vm) -> None:
    run = vm.run("mount-ovf")
    assert run.returncode == 0, run.stderr
    state = vm.root / "run/azagent/provisioning.json"
    assert state.stat().st_mode & 0o777 == 0o600
    data = vm.state()
    assert data is not None
    assert (data["hostname"], data["username"], data["source"]) == ("prov-vm", "alice", "ovf")
    assert data["vm_id"] == vm.scenario.vm_id
    assert data["public_keys"][0]["value"] == vm.scenario.public_keys[0].value
    copy = vm.root / "var/lib/waagent/ovf-env.xml"
    assert copy.stat().st_mode & 0o777 == 0o600
    assert b"CustomData" in copy.read_bytes()
    assert b"IyEvYmlu" not in copy.read_bytes()  # customData's base64 is gone from the copy
    assert "IyEvYmlu" not in run.stderr


@pytest.mark.parametrize(
    ("scenario", "flagged"),
    [
        pytest.param(Scenario(username="alice"), set(), id="inline-key-only"),
        pytest.param(
            Scenario(
                username="alice",
                custom_data=CUSTOM,
                public_keys=[
                    PublicKey(path="/home/alice/.ssh/authorized_keys", fingerprint="generate")
                ],
            ),
            {"certificates", "custom-data"},
            id="thumbprint-key-and-custom-data",
        ),
        pytest.param(
            Scenario(username="alice", key_pairs=[KeyPair(path="/home/alice/.ssh/id_rsa")]),
            {"certificates"},
            id="key-pair",
        ),
    ],
)
def test_mount_ovf_flags_the_stages_that_have_work(
    root: Path, scenario: Scenario, flagged: set[str]
) -> None:
    """The units start certificates and custom-data only on these flags
    (ConditionPathExists=): without one the stage would only skip."""
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        assert vm.run("mount-ovf").returncode == 0
        for stage in ("certificates", "custom-data"):
            flag = root / f"run/azagent/{stage}-needed"
            assert flag.exists() == (stage in flagged), stage
            if stage not in flagged:
                dry = vm.run(stage, "--dry-run")
                assert dry.returncode == 0, dry.stderr
                assert "would skip" in dry.stdout, dry.stdout


def test_mount_ovf_second_run_and_dry_run_change_nothing(vm: Vm) -> None:
    before_any = snapshot(vm.root)
    dry = vm.run("mount-ovf", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert snapshot(vm.root) == before_any
    assert "save the provisioning data of alice@prov-vm" in dry.stdout
    assert vm.run("mount-ovf").returncode == 0
    before = {
        k: v
        for k, v in snapshot(vm.root).items()
        if "run/azagent/stages" not in k and "lock" not in k
    }
    again = vm.run("mount-ovf")
    assert again.returncode == 0, again.stderr
    after = {
        k: v
        for k, v in snapshot(vm.root).items()
        if "run/azagent/stages" not in k and "lock" not in k
    }
    assert after == before
    assert vm.result("mount-ovf")["state"] == "nothing-to-do"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><Environment>&a;</Environment>',
            "DOCTYPE",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://127.0.0.1:1/x.dtd"><Environment/>',
            "DOCTYPE",
        ),
        (b"<Environment>" + b"A" * (2 * 1024 * 1024) + b"</Environment>", "larger than"),
        (b"<Environment xmlns='urn:wrong'><ProvisioningSection/></Environment>", "ovf-env.xml"),
        (b"not xml at all", "not well-formed"),
    ],
    # Explicit: an id made of the 2 MiB document would reach every child's
    # environment (PYTEST_CURRENT_TEST) and stop exec with E2BIG.
    ids=["internal-entity", "external-dtd", "2MiB", "wrong-namespace", "not-xml"],
)
def test_mount_ovf_rejects_hostile_documents(vm: Vm, document: bytes, reason: str) -> None:
    (vm.root / DVD / "ovf-env.xml").write_bytes(document)
    run = vm.run("mount-ovf")
    assert run.returncode == 1
    assert reason in vm.result("mount-ovf")["reason"]
    assert vm.state() is None
    assert not (vm.root / "var/lib/waagent/ovf-env.xml").exists()


@pytest.mark.parametrize(
    ("hostname", "username", "reason"),
    [
        ("vm-1", "a;b", "UserName: 'a;b' is not a valid user name: it contains ';'"),
        ("vm-1", "Alice", "UserName: 'Alice' is not a valid user name: it contains 'A'"),
        ("vm_1", "alice", "HostName: 'vm_1' is not a valid hostname: it contains '_'"),
    ],
)
def test_mount_ovf_rejects_an_invalid_name_clearly(
    root: Path, hostname: str, username: str, reason: str
) -> None:
    """Refused where it enters, naming the element: nothing is handed to the later stages."""
    scenario = Scenario(hostname=hostname, username=username)
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        assert vm.run("mount-ovf").returncode == 1
        assert reason in vm.result("mount-ovf")["reason"]
        assert vm.state() is None
        assert not (root / "var/lib/waagent/ovf-env.xml").exists()


def test_mount_ovf_runs_once_per_vm(vm: Vm) -> None:
    lib = vm.root / "var/lib/waagent"
    lib.mkdir(parents=True)
    (lib / "provisioned").write_text(f"{vm.scenario.vm_id}\n")
    run = vm.run("mount-ovf")
    assert run.returncode == 0
    assert vm.result("mount-ovf")["state"] == "skipped"
    assert "already provisioned" in vm.result("mount-ovf")["reason"]
    assert vm.state() is None
    # A captured image booted as a new VM provisions again.
    (lib / "provisioned").write_text("00000000-0000-0000-0000-000000000001\n")
    assert vm.run("mount-ovf").returncode == 0
    assert vm.result("mount-ovf")["state"] == "done"


def test_gen1_byte_swapped_vm_id_is_the_same_vm(vm: Vm) -> None:
    vm_id = vm.scenario.vm_id or ""
    lib = vm.root / "var/lib/waagent"
    lib.mkdir(parents=True)
    (lib / "provisioned").write_text(provisioning.swap_uuid_groups(vm_id) + "\n")
    assert vm.run("mount-ovf").returncode == 0
    assert vm.result("mount-ovf")["state"] == "skipped"


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (["Provisioning.Enabled=n"], "Provisioning.Enabled=n"),
        (["Provisioning.Agent=disabled"], "Provisioning.Agent=disabled"),
        (["Provisioning.UseCloudInit=y"], "cloud-init"),
    ],
)
def test_provisioning_disabled_skips_cleanly(vm: Vm, lines: list[str], reason: str) -> None:
    vm.configure(*lines)
    assert vm.run("mount-ovf").returncode == 0
    assert vm.result("mount-ovf")["state"] == "skipped"
    assert reason in vm.result("mount-ovf")["reason"]
    assert vm.state() is None


def test_active_cloud_init_is_left_to_provision(vm: Vm) -> None:
    wants = vm.root / "etc/systemd/system/cloud-init.target.wants"
    wants.mkdir(parents=True)
    (wants / "cloud-init.service").symlink_to("/lib/systemd/system/cloud-init.service")
    assert vm.run("mount-ovf").returncode == 0
    assert "cloud-init" in vm.result("mount-ovf")["reason"]


def test_no_media_leaves_the_cue_for_imds(root: Path) -> None:
    scenario = Scenario()
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric, with_media=False)
        dry = vm.run("mount-ovf", "--dry-run")
        assert "no provisioning media" in dry.stdout
        assert not (root / "run/azagent/imds-needed").exists()
        assert vm.run("mount-ovf").returncode == 0
        assert vm.result("mount-ovf")["changes"][0].startswith("no provisioning media")
        assert (root / "run/azagent/imds-needed").exists()


# -- custom-data --------------------------------------------------------------


def test_custom_data_saved_root_only(vm: Vm) -> None:
    assert vm.run("mount-ovf").returncode == 0
    run = vm.run("custom-data")
    assert run.returncode == 0, run.stderr
    saved = vm.root / "var/lib/waagent/CustomData"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert saved.read_bytes().startswith(b"IyEvYmluL3No")  # kept base64 by default
    assert "customdata-was-here" not in run.stderr
    vm.configure("Provisioning.DecodeCustomData=y")
    assert vm.run("custom-data").returncode == 0
    assert saved.read_text() == CUSTOM
    again = vm.run("custom-data")
    assert again.returncode == 0
    assert vm.result("custom-data")["state"] == "nothing-to-do"


def test_custom_data_is_not_run_against_a_root(vm: Vm) -> None:
    assert vm.run("mount-ovf").returncode == 0
    vm.configure("Provisioning.DecodeCustomData=y", "Provisioning.ExecuteCustomData=y")
    assert vm.run("custom-data").returncode == 0
    assert not (vm.root / "var/lib/waagent/ran.txt").exists()


def _load_custom_data_stage() -> object:
    from conftest import load_stage

    return load_stage("custom-data")


def test_custom_data_execution_time_limit_and_status(tmp_path: Path) -> None:
    """The execution step itself, on a script of the test's own (the VM's job at boot)."""
    stage = _load_custom_data_stage()
    lib = tmp_path / "var/lib/waagent"
    lib.mkdir(parents=True)
    ctx = Context(stage="custom-data", root=tmp_path, config=defaults())
    script = lib / "CustomData"

    def write(text: str) -> None:
        script.write_text(text)
        os.chmod(script, 0o700)

    write("#!/bin/sh\necho ran > ran.txt\n")
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    stage.execute(ctx, str(script), digest, "/var/lib/waagent/CustomData.executed")  # type: ignore[attr-defined]
    assert (lib / "ran.txt").read_text() == "ran\n"
    assert (lib / "CustomData.executed").read_text().strip() == digest

    write("#!/bin/sh\nexit 7\n")
    with pytest.raises(StageFailed, match="exited with status 7"):
        stage.execute(ctx, str(script), "x", "/var/lib/waagent/m")  # type: ignore[attr-defined]

    write("#!/bin/sh\nsleep 30\n")
    short = Context(
        stage="custom-data", root=tmp_path, config=_config_with("Provisioning.CustomDataTimeout", 1)
    )
    with pytest.raises(StageFailed, match="did not finish within 1 s"):
        stage.execute(short, str(script), "x", "/var/lib/waagent/m")  # type: ignore[attr-defined]


def _config_with(name: str, value: object) -> object:
    base = defaults()
    return Config(
        values={**base.values, name: value},  # type: ignore[dict-item]
        origins=base.origins,
        warnings=base.warnings,
        files=base.files,
    )


# -- report-ready and report-failure ------------------------------------------


def test_report_ready_end_to_end(vm: Vm) -> None:
    ssh = vm.root / "etc/ssh"
    ssh.mkdir(parents=True)
    (ssh / "ssh_host_rsa_key.pub").write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 host\n")
    assert vm.run("mount-ovf").returncode == 0
    run = vm.run("report-ready")
    assert run.returncode == 0, run.stderr
    [report] = vm.fabric.health_reports
    assert report.state == "Ready"
    assert report.incarnation == vm.fabric.incarnation
    [properties] = vm.fabric.role_properties
    blob = base64.b64decode("AAAAB3NzaC1yc2EAAAADAQABAAABAQC7")
    expected = hashlib.md5(blob).hexdigest()  # noqa: S324 - the format ssh-keygen -E md5 prints
    assert expected.encode() in properties
    [(key, value)] = kvp_records(vm)
    assert key == "PROVISIONING_REPORT"
    fields = kvp.parse_provisioning_report(value)
    assert fields["result"] == "success"
    assert fields["vm_id"] == vm.scenario.vm_id
    assert "mount_ovf_ms" in fields
    assert (vm.root / "var/lib/waagent/provisioned").read_text().strip() == vm.scenario.vm_id
    # Once per VM.
    assert vm.run("report-ready").returncode == 0
    assert vm.result("report-ready")["state"] == "skipped"
    assert len(vm.fabric.health_reports) == 1


def test_report_ready_reports_a_failed_stage_instead(vm: Vm) -> None:
    assert vm.run("mount-ovf").returncode == 0
    failed = vm.root / "run/azagent/stages/create-user.json"
    failed.write_text(
        '{"stage": "create-user", "state": "failed", "reason": "invalid username \\"-rf\\""}'
    )
    run = vm.run("report-ready")
    assert run.returncode == 1
    [report] = vm.fabric.health_reports
    assert (report.state, report.substatus) == ("NotReady", "ProvisioningFailed")
    assert report.description == 'create-user: invalid username "-rf"'
    fields = kvp.parse_provisioning_report(kvp_records(vm)[0][1])
    assert fields["result"] == "error"
    assert "create-user" in fields["reason"]
    assert not (vm.root / "var/lib/waagent/provisioned").exists()


def test_report_failure_is_prompt_and_idempotent(vm: Vm) -> None:
    (vm.root / DVD / "ovf-env.xml").write_bytes(b"<broken")
    assert vm.run("mount-ovf").returncode == 1
    run = vm.run("report-failure")
    assert run.returncode == 0, run.stderr
    [report] = vm.fabric.health_reports
    assert report.state == "NotReady"
    assert report.description is not None
    assert report.description.startswith("mount-ovf: ovf-env.xml")
    assert vm.run("report-failure").returncode == 0
    assert len(vm.fabric.health_reports) == 1
    assert vm.result("report-failure")["state"] == "nothing-to-do"


def test_report_failure_with_nothing_failed_is_skipped(vm: Vm) -> None:
    assert vm.run("mount-ovf").returncode == 0
    assert vm.run("report-failure").returncode == 0
    assert vm.result("report-failure")["state"] == "skipped"
    assert vm.fabric.health_reports == []


@pytest.mark.parametrize("status", [500, 503, 429, 410])
def test_report_ready_retries_transient_errors(root: Path, status: int) -> None:
    scenario = Scenario(
        faults=[
            Fault(endpoint="wireserver", kind="status", path="comp=health", status=status, count=2)
        ]
    )
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        assert vm.run("mount-ovf").returncode == 0
        run = vm.run("report-ready")
        assert run.returncode == 0, run.stderr
        assert [r.state for r in fabric.health_reports] == ["Ready"]
        assert [r.status for r in fabric.requests if "comp=health" in r.path] == [
            status,
            status,
            200,
        ]


def test_report_ready_gives_up_at_the_deadline_with_a_reason(root: Path) -> None:
    scenario = Scenario(
        faults=[
            Fault(endpoint="wireserver", kind="status", path="goalstate", status=503, count=1000)
        ]
    )
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        vm.configure("Endpoint.RetryDeadline=2")
        assert vm.run("mount-ovf").returncode == 0
        run = vm.run("report-ready")
        assert run.returncode == 1
        reason = vm.result("report-ready")["reason"]
        assert "HTTP 503" in reason
        assert "gave up after" in reason


def test_report_ready_survives_garbage_and_timeouts(root: Path) -> None:
    scenario = Scenario(
        faults=[
            Fault(endpoint="wireserver", kind="delay", path="goalstate", seconds=3, count=1),
        ]
    )
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        vm.configure("Endpoint.RequestTimeout=1")
        assert vm.run("mount-ovf").returncode == 0
        run = vm.run("report-ready")
        assert run.returncode == 0, run.stderr
        assert [r.state for r in fabric.health_reports] == ["Ready"]
    garbage = Scenario(faults=[Fault(endpoint="wireserver", kind="garbage", path="goalstate")])
    other = root.parent / "other"
    other.mkdir()
    with Fabric(garbage) as fabric:
        vm = make_vm(other, garbage, fabric)
        assert vm.run("mount-ovf").returncode == 0
        run = vm.run("report-ready")
        assert run.returncode == 1
        assert "goal state" in vm.result("report-ready")["reason"]


# -- imds (no provisioning media) ---------------------------------------------


def mask(vm: Vm, *stages: str) -> None:
    units = vm.root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    lib_units = vm.root / "usr/lib/systemd/system"
    lib_units.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        (lib_units / f"azure-{stage}.service").write_text("[Service]\nExecStart=/bin/true\n")
        (units / f"azure-{stage}.service").symlink_to("/dev/null")


def test_imds_provisions_when_there_is_no_media(root: Path) -> None:
    scenario = Scenario(hostname="imds-vm", username="bob")
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric, with_media=False)
        mask(vm, "hostname", "create-user", "ssh-keys")
        assert vm.run("imds").returncode == 0
        assert vm.result("imds")["state"] == "skipped"  # mount-ovf has not asked for it
        run = vm.run("mount-ovf")
        assert run.returncode == 0, run.stderr
        assert vm.state() is None
        assert (root / "run/azagent/imds-needed").exists()
        run = vm.run("imds")
        assert run.returncode == 0, run.stderr
        data = vm.state()
        assert data is not None
        assert (data["source"], data["username"], data["hostname"]) == ("imds", "bob", "imds-vm")
        assert data["password_hash"] is None
        assert data["custom_data"] is None
        assert data["disable_password_auth"] is True
        assert data["public_keys"][0]["value"] == scenario.public_keys[0].value
        assert "no password, no customData" in run.stderr
        assert "masked" in run.stderr
        [imds_request] = [r for r in fabric.requests if r.endpoint == "imds"]
        assert imds_request.header("Metadata") == "true"
        assert vm.run("imds").returncode == 0
        assert vm.result("imds")["state"] == "nothing-to-do"


@pytest.mark.parametrize("masked", [(), ("create-user",)])
def test_imds_never_installs_keys_for_root(root: Path, masked: tuple[str, ...]) -> None:
    """IMDS names root as the administrator: create-user refuses it (or is masked), and
    the ssh-keys run imds starts afterwards installs nothing for root either."""
    from azfabric.scenario import PublicKey

    scenario = Scenario(
        hostname="imds-vm",
        username="root",
        public_keys=[PublicKey(path="/root/.ssh/authorized_keys")],
    )
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric, with_media=False)
        mask(vm, "hostname", *masked)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "root").mkdir(mode=0o700)
        assert vm.run("mount-ovf").returncode == 0
        before = snapshot(root / "root")
        run = vm.run("imds")
        assert run.returncode == 1, run.stderr
        reason = vm.result("imds")["reason"]
        assert "ssh-keys: the keys of root are not installed" in reason
        if not masked:
            assert "create-user: the provisioned user: 'root' is reserved" in reason
        assert vm.result("ssh-keys")["state"] == "failed"
        assert snapshot(root / "root") == before
        assert not (root / "root/.ssh").exists()


@pytest.mark.parametrize(
    ("hostname", "username", "reason"),
    [
        (
            "imds-vm",
            "Alice",
            "compute.osProfile.adminUsername: 'Alice' is not a valid user name: it contains 'A'",
        ),
        (
            "imds_vm",
            "bob",
            "compute.osProfile.computerName: 'imds_vm' is not a valid hostname: it contains '_'",
        ),
    ],
)
def test_imds_rejects_an_invalid_name_clearly(
    root: Path, hostname: str, username: str, reason: str
) -> None:
    scenario = Scenario(hostname=hostname, username=username)
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric, with_media=False)
        assert vm.run("mount-ovf").returncode == 0
        run = vm.run("imds")
        assert run.returncode == 1
        assert reason in vm.result("imds")["reason"]
        assert vm.state() is None
        for stage in ("hostname", "create-user", "ssh-keys"):  # not run: nothing to give them
            assert not (root / f"run/azagent/stages/{stage}.json").exists()


def test_a_refused_name_in_provisioning_json_is_still_reported(vm: Vm) -> None:
    """The stage that reads the hand-edited file fails; report-failure reports it."""
    assert vm.run("mount-ovf").returncode == 0
    state = vm.root / "run/azagent/provisioning.json"
    state.write_text(state.read_text().replace('"alice"', '"root\\n"'))
    assert vm.run("custom-data").returncode == 1
    assert vm.run("report-failure").returncode == 0, vm.result("report-failure")
    [report] = vm.fabric.health_reports
    assert report.state == "NotReady"
    assert report.description is not None
    assert report.description.startswith(
        "custom-data: /run/azagent/provisioning.json: username: 'root\\n' is not a valid user name"
    )


def test_imds_retries_while_metadata_is_not_ready(root: Path) -> None:
    scenario = Scenario(faults=[Fault(endpoint="imds", kind="status", status=404, count=2)])
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric, with_media=False)
        mask(vm, "hostname", "create-user", "ssh-keys")
        assert vm.run("mount-ovf").returncode == 0
        run = vm.run("imds")
        assert run.returncode == 0, run.stderr
        assert [r.status for r in fabric.requests if r.endpoint == "imds"] == [404, 404, 200]


def test_imds_failure_is_reported(root: Path) -> None:
    scenario = Scenario(faults=[Fault(endpoint="imds", kind="status", status=500, count=1000)])
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric, with_media=False)
        vm.configure("Endpoint.RetryDeadline=2")
        assert vm.run("mount-ovf").returncode == 0
        assert vm.run("imds").returncode == 1
        assert "IMDS" in vm.result("imds")["reason"]
        assert vm.run("report-failure").returncode == 0
        [report] = fabric.health_reports
        assert report.description is not None
        assert report.description.startswith("imds: IMDS")


def test_report_ready_without_provisioning_still_reports(vm: Vm) -> None:
    """mount-ovf masked (or provisioning disabled): the VM booted, so Ready."""
    run = vm.run("report-ready")
    assert run.returncode == 0, run.stderr
    assert [r.state for r in vm.fabric.health_reports] == ["Ready"]
    marker = vm.root / "var/lib/waagent/provisioned"
    assert marker.read_text().strip() == vm.scenario.vm_id


def test_report_ready_leaves_cloud_init_vms_alone(vm: Vm) -> None:
    vm.configure("Provisioning.UseCloudInit=y")
    assert vm.run("mount-ovf").returncode == 0
    assert vm.run("report-ready").returncode == 0
    assert vm.result("report-ready")["state"] == "skipped"
    assert vm.fabric.health_reports == []


def test_provision_guest_agent_false_leaves_the_flag(root: Path) -> None:
    scenario = Scenario(provision_guest_agent=False)
    with Fabric(scenario) as fabric:
        vm = make_vm(root, scenario, fabric)
        assert vm.run("mount-ovf").returncode == 0
        flag = root / "var/lib/waagent/guest-agent-disabled"
        assert flag.read_text() == "ProvisionGuestAgent=false\n"
        data = vm.state()
        assert data is not None
        assert data["provision_guest_agent"] is False


def test_a_root_never_reaches_the_real_platform(tmp_path: Path) -> None:
    """Under --root, an unconfigured endpoint is refused before any packet is sent."""
    from conftest import run_stage

    root = tmp_path / "image"
    (root / "sys/class/dmi/id").mkdir(parents=True)
    (root / "sys/class/dmi/id/product_uuid").write_text("00000000-0000-0000-0000-000000000001\n")
    run = run_stage("report-ready", "--root", str(root))
    assert run.returncode == 1
    assert "Endpoint.WireServer is not configured" in run.stderr
    assert "168.63.129.16" not in run.stderr
