"""waagent.conf: documented defaults, the real sample, drop-ins and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES, run_cli

from azagent import config
from azagent.errors import ConfigError

SAMPLE = FIXTURES / "walinuxagent/test_waagent.conf"

# The sample configuration of the seed README, which lists the documented defaults.
SEED_DEFAULTS = """\
Provisioning.Enabled=y
Provisioning.UseCloudInit=n
Provisioning.DeleteRootPassword=n
Provisioning.RegenerateSshHostKeyPair=y
Provisioning.SshHostKeyPairType=rsa
Provisioning.MonitorHostName=y
Provisioning.DecodeCustomData=n
Provisioning.ExecuteCustomData=n
Provisioning.AllowResetSysUser=n
Provisioning.PasswordCryptId=6
Provisioning.PasswordCryptSaltLength=10
ResourceDisk.Format=y
ResourceDisk.Filesystem=ext4
ResourceDisk.MountPoint=/mnt/resource
ResourceDisk.MountOptions=None
ResourceDisk.EnableSwap=n
ResourceDisk.SwapSizeMB=0
LBProbeResponder=y
Logs.Verbose=n
OS.AllowHTTP=n
OS.EnableRDMA=n
OS.RootDeviceScsiTimeout=300
OS.EnableFIPS=n
OS.OpensslPath=None
OS.SshDir=/etc/ssh
HttpProxy.Host=None
HttpProxy.Port=None
AutoUpdate.Enabled=y
"""

# Keys PROTOCOL.md lists beyond the seed's.
EXTRA_KEYS = [
    "OS.EnableFirewall",
    "Provisioning.Agent",
    "OS.SshClientAliveInterval",
    "OS.HomeDir",
    "OS.SudoersDir",
    "Lib.Dir",
    "DVD.MountPoint",
    "Extension.LogDir",
    "Extensions.Enabled",
    "Extensions.GoalStatePeriod",
    "Logs.Collect",
    "Logs.CollectPeriod",
    "DetectScvmmEnv",
]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def test_seed_sample_equals_the_defaults(tmp_path: Path) -> None:
    """Every key of the seed's sample file is known and its value is our default."""
    loaded = config.load(write(tmp_path / "waagent.conf", SEED_DEFAULTS))
    assert loaded.warnings == ()
    defaults = config.defaults()
    for line in SEED_DEFAULTS.splitlines():
        name = line.split("=")[0]
        assert loaded.values[name] == defaults.values[name], name
        assert loaded.origins[name].endswith(
            f"waagent.conf:{SEED_DEFAULTS.splitlines().index(line) + 1}"
        )


def test_typed_defaults() -> None:
    defaults = config.defaults()
    assert defaults.get_bool("Provisioning.Enabled") is True
    assert defaults.get_bool("ResourceDisk.EnableSwap") is False
    assert defaults.get_int("ResourceDisk.SwapSizeMB") == 0
    assert defaults.get_int("OS.RootDeviceScsiTimeout") == 300
    assert defaults.get_int("HttpProxy.Port") is None
    assert defaults.get_str("ResourceDisk.MountOptions") is None
    assert defaults.get_str("Provisioning.PasswordCryptId") == "6"
    for name in EXTRA_KEYS:
        assert name in config.KEYS_BY_NAME, name
    with pytest.raises(TypeError):
        defaults.get_int("Provisioning.Enabled")


def test_endpoints_are_configurable(tmp_path: Path) -> None:
    loaded = config.load(
        write(
            tmp_path / "waagent.conf",
            "Endpoint.WireServer=http://127.0.0.1:8080\n"
            "Endpoint.IMDS=http://127.0.0.1:8081/\n"
            "Endpoint.HostGAPlugin=http://[::1]:32526\n",
        )
    )
    assert loaded.get_str("Endpoint.WireServer") == "http://127.0.0.1:8080"
    assert loaded.get_str("Endpoint.IMDS") == "http://127.0.0.1:8081/"
    assert loaded.get_str("Endpoint.HostGAPlugin") == "http://[::1]:32526"


def test_real_sample_file() -> None:
    """WALinuxAgent's own test file: end-of-line comments, junk lines, unknown keys."""
    loaded = config.load(SAMPLE, required=True)
    assert loaded.get_bool("Provisioning.DeleteRootPassword") is True
    assert loaded.get_str("Provisioning.SshHostKeyPairType") == "rsa"
    assert loaded.get_bool("Provisioning.DecodeCustomData") is False
    assert loaded.get_bool("OS.EnableFIPS") is True
    assert loaded.get_int("OS.SshClientAliveInterval") == 42
    assert loaded.get_str("OS.SshDir") == "/notareal/path"
    assert loaded.get_str("Provisioning.Agent") == "auto"
    # Commented-out keys keep their defaults.
    assert loaded.get_str("Provisioning.PasswordCryptId") == "6"
    assert loaded.origins["Provisioning.PasswordCryptId"] == "default"
    assert loaded.origins["OS.SshClientAliveInterval"] == f"{SAMPLE}:86"
    assert loaded.warnings == (
        f"{SAMPLE}:6: ignoring a line that is not Key=Value",
        f"{SAMPLE}:7: ignoring unknown key 'FauxKey1'",
        f"{SAMPLE}:8: ignoring unknown key 'FauxKey2'",
        f"{SAMPLE}:9: ignoring unknown key 'FauxKey3'",
    )


def test_show_configuration_prints_every_key_with_its_origin() -> None:
    result = run_cli("show-configuration", "--config", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(config.KEYS)
    shown = {line.split(" = ")[0]: line for line in lines}
    assert set(shown) == set(config.KEYS_BY_NAME)
    assert shown["OS.SshClientAliveInterval"].split("#")[0].strip().endswith("= 42")
    assert shown["OS.SshClientAliveInterval"].endswith(f"# {SAMPLE}:86")
    assert shown["HttpProxy.Host"].endswith("# default")
    assert "FauxKey1" in result.stderr
    assert "test_waagent.conf:7" in result.stderr


def test_waagent_spelling_of_show_configuration(root: Path) -> None:
    write(root / "etc/waagent.conf", "ResourceDisk.SwapSizeMB=2048\n")
    result = run_cli("-show-configuration", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert "ResourceDisk.SwapSizeMB = 2048" in result.stdout
    assert f"{root}/etc/waagent.conf:1" in result.stdout


def test_dropins_in_lexical_order_later_wins(tmp_path: Path) -> None:
    main = write(tmp_path / "waagent.conf", "ResourceDisk.SwapSizeMB=1\nLogs.Verbose=n\n")
    write(tmp_path / "waagent.conf.d/20-swap.conf", "ResourceDisk.SwapSizeMB=20\n")
    write(tmp_path / "waagent.conf.d/10-swap.conf", "ResourceDisk.SwapSizeMB=10\nLogs.Verbose=y\n")
    write(tmp_path / "waagent.conf.d/30-ignored.conf.disabled", "ResourceDisk.SwapSizeMB=30\n")
    loaded = config.load(main)
    assert loaded.get_int("ResourceDisk.SwapSizeMB") == 20
    assert loaded.origins["ResourceDisk.SwapSizeMB"] == f"{tmp_path}/waagent.conf.d/20-swap.conf:1"
    assert loaded.get_bool("Logs.Verbose") is True
    assert loaded.files == (
        str(main),
        f"{tmp_path}/waagent.conf.d/10-swap.conf",
        f"{tmp_path}/waagent.conf.d/20-swap.conf",
    )


def test_dropins_apply_without_a_main_file(tmp_path: Path) -> None:
    write(tmp_path / "waagent.conf.d/50-x.conf", "ResourceDisk.EnableSwap=y\n")
    assert config.load(tmp_path / "waagent.conf").get_bool("ResourceDisk.EnableSwap") is True


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    assert config.load(tmp_path / "waagent.conf").values == config.defaults().values
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "waagent.conf", required=True)


def test_none_and_case(tmp_path: Path) -> None:
    loaded = config.load(
        write(
            tmp_path / "waagent.conf",
            "OS.RootDeviceScsiTimeout=None\nAutoUpdate.Enabled=Y\n  HttpProxy.Port = 3128  \n",
        )
    )
    assert loaded.get_int("OS.RootDeviceScsiTimeout") is None
    assert loaded.get_bool("AutoUpdate.Enabled") is True
    assert loaded.get_int("HttpProxy.Port") == 3128


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "ResourceDisk.EnableSwap=maybe",
            "ResourceDisk.EnableSwap='maybe' is not valid: expected y or n",
        ),
        (
            "ResourceDisk.SwapSizeMB=lots",
            "ResourceDisk.SwapSizeMB='lots' is not valid: expected a decimal integer",
        ),
        ("ResourceDisk.SwapSizeMB=-1", "expected a decimal integer from 0 to"),
        ("ResourceDisk.EnableSwap=None", "expected y or n"),
        ("Provisioning.PasswordCryptId=7", "expected one of 1, 2a, 5, 6"),
        ("Provisioning.PasswordCryptSaltLength=0", "from 1 to 16"),
        ("OS.RootDeviceScsiTimeout=5m", "a decimal integer from 1 to 3600, or None"),
        ("ResourceDisk.Filesystem=ext4;reboot", "a single word"),
        ("ResourceDisk.Filesystem=$(reboot)", "a single word"),
        ("ResourceDisk.MountPoint=/mnt/../etc", "without '..'"),
        ("ResourceDisk.MountPoint=mnt", "an absolute path"),
        ("ResourceDisk.MountOptions=nodev nosuid", "without spaces"),
        ("Endpoint.WireServer=file:///etc/passwd", "http:// or https://"),
        ("Endpoint.IMDS=http://127.0.0.1/metadata?x=1", "base URL"),
        ("HttpProxy.Host=proxy;rm", "a host name or IP address"),
        ("ResourceDisk.SwapSizeMB=99999999999999999999", "a decimal integer"),
    ],
)
def test_malformed_value_names_file_line_key_and_accepted(
    tmp_path: Path, line: str, expected: str
) -> None:
    path = write(tmp_path / "waagent.conf", f"# comment\n\n{line}\n")
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert str(error.value).startswith(f"{path}:3: {line.split('=', maxsplit=1)[0]}=")
    assert expected in str(error.value)


def test_malformed_dropin_is_named(tmp_path: Path) -> None:
    main = write(tmp_path / "waagent.conf", "ResourceDisk.EnableSwap=y\n")
    write(tmp_path / "waagent.conf.d/10-bad.conf", "\nResourceDisk.SwapSizeMB=lots\n")
    with pytest.raises(ConfigError, match=r"10-bad\.conf:2: ResourceDisk\.SwapSizeMB="):
        config.load(main)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "waagent.conf", b"Logs.Verbose=n\nOS.SshDir=/etc/\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"waagent\.conf:2: not valid UTF-8"):
        config.load(path)


def test_binary_and_oversized_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NUL byte"):
        config.load(write(tmp_path / "a.conf", b"Logs.Verbose=n\x00\n"))
    with pytest.raises(ConfigError, match="larger than"):
        config.load(write(tmp_path / "b.conf", b"#" * (config.MAX_FILE_SIZE + 1)))


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "waagent.conf").mkdir()
    with pytest.raises(ConfigError, match=r"waagent\.conf: cannot read"):
        config.load(tmp_path / "waagent.conf")


def test_cli_reports_malformed_configuration_and_fails(root: Path) -> None:
    write(root / "etc/waagent.conf", "ResourceDisk.EnableSwap=maybe\n")
    result = run_cli("show-configuration", "--root", str(root))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{root}/etc/waagent.conf:1: ResourceDisk.EnableSwap='maybe'" in result.stderr
    assert "expected y or n" in result.stderr
