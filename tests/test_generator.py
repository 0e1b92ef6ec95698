"""units/azagent-generator: a stage the configuration turns off starts no process.

The generator (POSIX sh) reads waagent.conf at boot and writes drop-ins whose
condition fails for the stages that would only say "skipped". These tests
run it against temporary roots and check each decision against the stage
itself (its dry run must say it would skip), so the two cannot drift apart.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, STAGES, child_environment, run_stage

GENERATOR = REPO / "units/azagent-generator"
DROPIN = "50-azagent-config.conf"

# unit -> (stage executable, extra environment) whose dry run must agree.
STAGE_OF = {
    "azure-firewall.service": ("firewall", {}),
    "azure-scvmm.service": ("scvmm", {}),
    "azure-resource-disk.service": ("resource-disk", {}),
    "azure-mount-ovf.service": ("mount-ovf", {}),
    "azure-report-ready.service": ("report-ready", {}),
    "azure-hostname-monitor.path": ("hostname", {"AZAGENT_HOSTNAME_MONITOR": "1"}),
}


def generate(root: Path, out: Path) -> dict[str, str]:
    """Run the generator on ROOT's /etc; {unit: its drop-in's condition line}."""
    shell = shutil.which("sh")
    assert shell is not None
    done = subprocess.run(
        [shell, str(GENERATOR), str(out), str(out) + "-early", str(out) + "-late"],
        env={**child_environment(), "AZAGENT_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    found = {}
    for dropin in sorted(out.glob(f"*.d/{DROPIN}")):
        [condition] = [line for line in dropin.read_text().splitlines() if line.startswith("Cond")]
        found[dropin.parent.name.removesuffix(".d")] = condition
    return found


def write_config(root: Path, text: str, dropins: dict[str, str] | None = None) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/waagent.conf").write_text(
        "Endpoint.WireServer=http://127.0.0.1:9\nEndpoint.IMDS=http://127.0.0.1:9\n" + text
    )
    for name, body in (dropins or {}).items():
        (root / "etc/waagent.conf.d").mkdir(exist_ok=True)
        (root / "etc/waagent.conf.d" / name).write_text(body)


def assert_stages_agree(root: Path, skipped: dict[str, str]) -> None:
    """Every unit the generator skips would only have said "skipped"."""
    for unit in skipped:
        stage, env = STAGE_OF[unit]
        done = run_stage(stage, "--root", str(root), "--dry-run", env=env)
        assert done.returncode == 0, done.stderr
        assert "would skip" in done.stdout, (unit, done.stdout)


CASES = [
    pytest.param(
        "",
        {},
        {"azure-firewall.service", "azure-scvmm.service"},
        id="defaults",
    ),
    pytest.param(
        "OS.EnableFirewall = y # on\nDetectScvmmEnv=Y\n",
        {},
        set(),
        id="firewall-and-scvmm-on",
    ),
    pytest.param(
        "Provisioning.Enabled=n\nResourceDisk.Format=n\nProvisioning.MonitorHostName=n\n",
        {},
        {
            "azure-firewall.service",
            "azure-scvmm.service",
            "azure-mount-ovf.service",
            "azure-resource-disk.service",
            "azure-hostname-monitor.path",
        },
        id="provisioning-and-disk-off",
    ),
    pytest.param(
        "Provisioning.Agent=waagent\nResourceDisk.Filesystem=NTFS\n",
        {"50-site.conf": "Provisioning.Agent=cloud-init\n"},
        {
            "azure-firewall.service",
            "azure-scvmm.service",
            "azure-mount-ovf.service",
            "azure-report-ready.service",
            "azure-resource-disk.service",
        },
        id="cloud-init-by-drop-in",
    ),
    pytest.param(
        "Provisioning.UseCloudInit=y\nProvisioning.Enabled=n\n",
        {},
        {"azure-firewall.service", "azure-scvmm.service", "azure-mount-ovf.service"},
        id="disabled-wins-over-cloud-init-so-ready-is-reported",
    ),
    pytest.param(
        "OS.EnableFirewall=n\n",
        {"10-a.conf": "OS.EnableFirewall=y\n", "20-b.conf": "DetectScvmmEnv=y\n"},
        set(),
        id="later-drop-in-wins",
    ),
]


@pytest.mark.parametrize(("config", "dropins", "expected"), CASES)
def test_generator_skips_what_the_stage_would_skip(
    tmp_path: Path, config: str, dropins: dict[str, str], expected: set[str]
) -> None:
    root = tmp_path / "root"
    write_config(root, config, dropins)
    skipped = generate(root, tmp_path / "out")
    assert set(skipped) == expected
    assert_stages_agree(root, skipped)


def test_generator_without_a_configuration_uses_the_defaults(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert set(generate(root, tmp_path / "out")) == {
        "azure-firewall.service",
        "azure-scvmm.service",
    }


def test_firewall_still_runs_to_remove_recorded_rules(tmp_path: Path) -> None:
    """OS.EnableFirewall=n skips the unit only while no rules are recorded."""
    root = tmp_path / "root"
    write_config(root, "OS.EnableFirewall=n\n")
    skipped = generate(root, tmp_path / "out")
    assert skipped["azure-firewall.service"] == "ConditionPathExists=/run/azagent/firewall.rules"


@pytest.mark.parametrize(
    "config",
    [
        pytest.param("OS.EnableFirewall=maybe\nDetectScvmmEnv=n\n", id="bad-boolean"),
        pytest.param("Provisioning.Agent=Cloud-Init\nProvisioning.Enabled=n\n", id="bad-agent"),
    ],
)
def test_a_value_the_stage_would_refuse_is_left_to_the_stage(tmp_path: Path, config: str) -> None:
    """The stage fails on it and reports; the generator must not hide that."""
    root = tmp_path / "root"
    write_config(root, config)
    skipped = generate(root, tmp_path / "out")
    assert "azure-firewall.service" not in skipped or "maybe" not in config
    assert "azure-mount-ovf.service" not in skipped
    done = run_stage("firewall", "--root", str(root), "--dry-run")
    assert done.returncode == 1  # the stage reports the bad value itself


def test_an_unreadable_configuration_decides_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/waagent.conf").mkdir(parents=True)  # a directory where the file belongs
    assert generate(root, tmp_path / "out") == {}


def test_a_skipped_units_own_drop_in_condition_fails(tmp_path: Path) -> None:
    """The "never" condition names the drop-in itself, so it fails while that exists."""
    root = tmp_path / "root"
    write_config(root, "")
    out = tmp_path / "out"
    skipped = generate(root, out)
    condition = skipped["azure-scvmm.service"]
    assert condition == f"ConditionPathExists=!{out}/azure-scvmm.service.d/{DROPIN}"
    assert (out / f"azure-scvmm.service.d/{DROPIN}").is_file()


def verify_unit_lines(tmp_path: Path, lines: list[str]) -> None:
    """systemd-analyze verify accepts a unit holding these generated [Unit] lines."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: tools/bootstrap installs it")
    unit = tmp_path / "azure-generated-check.service"
    unit.write_text(
        "[Unit]\nDescription=generated lines\nDocumentation=file:/dev/null\n"
        + "\n".join(lines)
        + f"\n[Service]\nType=oneshot\nExecStart={STAGES}/kernel-tune\n"
    )
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_accepts_the_drop_ins(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_config(root, "Provisioning.Enabled=n\nResourceDisk.Format=n\n")
    skipped = generate(root, tmp_path / "out")
    verify_unit_lines(tmp_path, list(skipped.values()))


EXECUTE = "azure-custom-data.service.d/50-azagent-execute.conf"


def custom_data_ordering(out: Path) -> list[str]:
    """The custom-data unit's dependency lines the generator added, if any."""
    dropin = out / EXECUTE
    if not dropin.exists():
        return []
    return [line for line in dropin.read_text().splitlines() if line.startswith(("After", "Want"))]


def test_saving_customdata_waits_for_nothing_but_the_provisioning_data() -> None:
    """The unit itself is ordered after mount-ovf alone: it is not on Ready's path.

    Not even after imds: that job waits for the network on every boot (its
    condition is checked only when it would start), and IMDS has no customData."""
    unit = (REPO / "units/azure-custom-data.service").read_text()
    dependencies = [line for line in unit.splitlines() if line.startswith(("After=", "Wants="))]
    assert dependencies == [
        "Wants=azure-mount-ovf.service",
        "After=azure-mount-ovf.service",
    ]


@pytest.mark.parametrize(
    ("config", "ordered"),
    [
        pytest.param("", False, id="default-n"),
        pytest.param("Provisioning.ExecuteCustomData=n\n", False, id="n"),
        pytest.param("Provisioning.ExecuteCustomData = y # run it\n", True, id="y"),
        pytest.param("Provisioning.ExecuteCustomData=perhaps\n", True, id="not-a-boolean"),
    ],
)
def test_customdata_that_may_run_waits_for_what_a_script_relies_on(
    tmp_path: Path, config: str, ordered: bool
) -> None:
    root = tmp_path / "root"
    write_config(root, config)
    out = tmp_path / "out"
    generate(root, out)
    expected = [
        "Wants=network-online.target",
        "After=network-online.target azure-create-user.service azure-ssh-keys.service",
        "After=azure-hostname.service azure-certificates.service",
    ]
    assert custom_data_ordering(out) == (expected if ordered else [])


def test_an_unreadable_configuration_still_orders_customdata_as_a_script_expects(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "etc/waagent.conf").mkdir(parents=True)
    out = tmp_path / "out"
    assert generate(root, out) == {}
    assert "After=network-online.target" in " ".join(custom_data_ordering(out))


def test_systemd_analyze_verify_accepts_the_customdata_ordering(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_config(root, "Provisioning.ExecuteCustomData=y\n")
    generate(root, tmp_path / "out")
    ordering = custom_data_ordering(tmp_path / "out")
    assert ordering
    verify_unit_lines(tmp_path, ordering)
