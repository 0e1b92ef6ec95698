"""waagent.conf under attack: values that could be injected, files that are not files.

Every string key declares the kind of value it takes, matched to where the
value ends up (a path under the root, a mount unit, a command's argv, a URL);
a value outside its kind names file, line and key and says what is accepted.
Only regular files are read (a link to one is fine), without ever blocking: a
FIFO, a socket or a device where a configuration file is expected fails every
command that reads the configuration at once, naming the file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import STAGES, child_environment

from azagent import config
from azagent.errors import ConfigError

PATH_KEYS = (
    "Lib.Dir",
    "ResourceDisk.MountPoint",
    "DVD.MountPoint",
    "Extension.LogDir",
    "OS.SshDir",
    "OS.HomeDir",
    "OS.SudoersDir",
    "OS.OpensslPath",
    "Pid.File",
)

# What a shell, a glob, a systemd specifier or a path walk would read as more than a name.
HOSTILE_PATHS = {
    "semicolon": "/mnt/resource;reboot",
    "command-substitution": "/mnt/$(reboot)",
    "backticks": "/mnt/`reboot`",
    "variable": "/mnt/$HOME",
    "space": "/mnt/my resource",
    "tab": "/mnt/a\tb",
    "relative": "mnt/resource",
    "dot-dot": "/mnt/../etc",
    "dot-dot-end": "/mnt/resource/..",
    "dot": "/mnt/./resource",
    "empty-component": "/mnt//resource",
    "root": "/",
    "pipe": "/mnt/a|b",
    "ampersand": "/mnt/a&b",
    "redirect": "/mnt/a>b",
    "quote": "/mnt/'a'",
    "double-quote": '/mnt/"a"',
    "backslash": "/mnt/a\\nb",
    "glob-star": "/etc/*",
    "glob-question": "/etc/ss?",
    "glob-class": "/etc/[s]sh",
    "brace": "/etc/{ssh,x}",
    "tilde": "~/x",
    "bang": "/mnt/!x",
    "systemd-specifier": "/mnt/%n",
    "non-ascii": "/mnt/r\u00e9source",
    "escape-sequence": "/mnt/\x1b[2J",
    "too-long-component": "/mnt/" + "a" * 256,
}


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def refused(tmp_path: Path, key: str, value: str) -> str:
    path = write(tmp_path / "waagent.conf", f"# site settings\n{key}={value}\n")
    with pytest.raises(ConfigError) as error:
        config.load(path)
    reason = str(error.value)
    assert reason.startswith(f"{path}:2: {key}="), reason
    assert "is not valid: expected" in reason
    return reason


@pytest.mark.parametrize("key", PATH_KEYS)
@pytest.mark.parametrize("value", HOSTILE_PATHS.values(), ids=HOSTILE_PATHS.keys())
def test_every_path_key_refuses_what_is_not_a_plain_absolute_path(
    tmp_path: Path, key: str, value: str
) -> None:
    reason = refused(tmp_path, key, value)
    assert "absolute path" in reason
    # The value is shown escaped: no control character reaches the terminal.
    assert "\x1b" not in reason
    assert "\t" not in reason


@pytest.mark.parametrize("key", PATH_KEYS)
def test_every_path_key_takes_a_plain_absolute_path(tmp_path: Path, key: str) -> None:
    path = write(tmp_path / "waagent.conf", f"{key}=/srv/azure-2.0/state_x+y.d\n")
    assert config.load(path).values[key] == "/srv/azure-2.0/state_x+y.d"
    # One trailing '/' names the same directory: kept in its normal form.
    path = write(tmp_path / "waagent.conf", f"{key}=/srv/azure/\n")
    assert config.load(path).values[key] == "/srv/azure"


def test_the_path_keys_are_all_declared_as_paths() -> None:
    declared = {key.name for key in config.KEYS if key.rule is config.PATH}
    assert declared == set(PATH_KEYS)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ResourceDisk.Filesystem", "ext4;reboot"),
        ("ResourceDisk.Filesystem", "$(reboot)"),
        ("ResourceDisk.Filesystem", "-V"),
        ("ResourceDisk.Filesystem", "../../bin/sh"),
        ("ResourceDisk.Filesystem", "ext 4"),
        ("ResourceDisk.Filesystem", "%n"),
        ("ResourceDisk.MountOptions", "nodev nosuid"),
        ("ResourceDisk.MountOptions", "nodev;reboot"),
        ("ResourceDisk.MountOptions", "nodev,$(reboot)"),
        ("ResourceDisk.MountOptions", "uid=%U"),
        ("ResourceDisk.MountOptions", 'context="a"'),
        ("ResourceDisk.MountOptions", "nodev,,nosuid"),
        ("ResourceDisk.MountOptions", "=x"),
        ("ResourceDisk.MountOptions", "-o"),
        ("Endpoint.WireServer", "http://127.0.0.1;reboot"),
        ("Endpoint.WireServer", "http://$(reboot)"),
        ("Endpoint.WireServer", "http://user:secret@127.0.0.1"),
        ("Endpoint.WireServer", "http://127.0.0.1/machine?comp=x"),
        ("Endpoint.WireServer", "http://[::1"),
        ("Endpoint.WireServer", "http://::1"),
        ("Endpoint.WireServer", "http://]::1["),
        ("Endpoint.WireServer", "http://127.0.0.1:0"),
        ("Endpoint.WireServer", "http://127.0.0.1:65536"),
        ("Endpoint.WireServer", "http://127.0.0.1:"),
        ("Endpoint.HostGAPlugin", "http://-host"),
        ("Endpoint.HostGAPlugin", "http://a..b"),
        ("Endpoint.IMDS", "ftp://127.0.0.1"),
        ("Endpoint.IMDS", "http://"),
        ("Endpoint.IMDS", "http://[fe80::1%25eth0]"),
        ("HttpProxy.Host", "proxy;rm"),
        ("HttpProxy.Host", "$(reboot)"),
        ("HttpProxy.Host", "proxy host"),
        ("HttpProxy.Host", "-proxy"),
        ("HttpProxy.Host", "proxy..corp"),
        ("HttpProxy.Host", "[::1"),
        ("HttpProxy.Host", "::1]"),
        ("HttpProxy.Host", "fe80::1%eth0"),
        ("HttpProxy.Host", "user@proxy"),
        ("HttpProxy.Host", "proxy:3128"),
        ("HttpProxy.Host", "a" * 64 + ".corp"),
        ("AutoUpdate.GAFamily", "Prod;reboot"),
    ],
)
def test_values_that_reach_commands_units_or_urls_refuse_injection(
    tmp_path: Path, key: str, value: str
) -> None:
    refused(tmp_path, key, value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ResourceDisk.Filesystem", "ext4"),
        ("ResourceDisk.Filesystem", "xfs"),
        ("ResourceDisk.Filesystem", "NTFS"),
        ("ResourceDisk.MountOptions", "noatime,nodev,nosuid"),
        ("ResourceDisk.MountOptions", "uid=1000,gid=1000,umask=0077"),
        ("ResourceDisk.MountOptions", "x-systemd.device-timeout=5s,commit=60"),
        ("Endpoint.WireServer", "http://127.0.0.1:8080"),
        ("Endpoint.WireServer", "https://wireserver.example/"),
        ("Endpoint.HostGAPlugin", "http://[::1]:32526"),
        ("Endpoint.IMDS", "http://169.254.169.254"),
        ("HttpProxy.Host", "proxy.corp.example"),
        ("HttpProxy.Host", "10.0.0.1"),
        ("HttpProxy.Host", "::1"),
        ("HttpProxy.Host", "[2001:db8::1]"),
        ("AutoUpdate.GAFamily", "Prod"),
    ],
)
def test_plain_values_are_accepted(tmp_path: Path, key: str, value: str) -> None:
    path = write(tmp_path / "waagent.conf", f"{key}={value}\n")
    assert config.load(path).values[key] == value


def test_every_string_key_declares_its_kind() -> None:
    """A new string key cannot forget its rule: declaring one without it fails at import."""
    for key in config.KEYS:
        if key.kind is str:
            assert key.choices or key.rule is not None, key.name
        if isinstance(key.default, str):
            assert key.parse(key.default) == key.default, key.name
    with pytest.raises(TypeError, match="declares no rule"):
        config.Key("Site.Path", str, "/x", "a string key without a rule")


def test_a_long_bad_value_is_shown_shortened(tmp_path: Path) -> None:
    reason = refused(tmp_path, "OS.SshDir", "/etc/" + ";" * 100_000)
    assert len(reason) < 1000


# -- files that are not regular files ------------------------------------------------


def cli(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """show-configuration --root, as a user runs it; bounded so a hang fails, not blocks."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "azagent", "show-configuration", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=10,
        env=child_environment(),
        check=False,
    )
    return done, time.monotonic() - start


def stage(root: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(STAGES / "kernel-tune"), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=10,
        env=child_environment(),
        check=False,
    )
    return done, time.monotonic() - start


def assert_refused_quickly(root: Path, named: Path, reason: str) -> None:
    for done, elapsed in (cli(root), stage(root)):
        assert done.returncode == 1, done.stderr
        assert elapsed < 2.0
        assert str(named) in done.stderr, done.stderr
        assert reason in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_a_fifo_dropin_fails_at_once_naming_it(root: Path) -> None:
    write(root / "etc/waagent.conf", "Logs.Verbose=n\n")
    fifo = root / "etc/waagent.conf.d/50-site.conf"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    assert_refused_quickly(root, fifo, "not a regular file (a FIFO)")


def test_a_fifo_waagent_conf_fails_at_once_naming_it(root: Path) -> None:
    fifo = root / "etc/waagent.conf"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    assert_refused_quickly(root, fifo, "not a regular file (a FIFO)")


def test_an_explicit_fifo_config_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "site.conf"
    os.mkfifo(fifo)
    done, elapsed = cli(tmp_path, "--config", str(fifo))
    assert done.returncode == 1
    assert elapsed < 2.0
    assert f"{fifo}: cannot read: not a regular file (a FIFO)" in done.stderr


def test_a_socket_a_device_and_a_directory_are_refused(tmp_path: Path) -> None:
    main = write(tmp_path / "waagent.conf", "")
    dropins = tmp_path / "waagent.conf.d"
    dropins.mkdir()
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(dropins / "10-socket.conf"))
        with pytest.raises(
            ConfigError, match=r"10-socket\.conf: cannot read: not a regular file \(a socket\)"
        ):
            config.load(main)
    finally:
        server.close()
    (dropins / "10-socket.conf").unlink()
    (dropins / "20-null.conf").symlink_to("/dev/null")
    with pytest.raises(
        ConfigError, match=r"20-null\.conf: cannot read: not a regular file \(a character"
    ):
        config.load(main)
    (dropins / "20-null.conf").unlink()
    (dropins / "30-dir.conf").mkdir()
    with pytest.raises(
        ConfigError, match=r"30-dir\.conf: cannot read: not a regular file \(a directory\)"
    ):
        config.load(main)


def test_a_zero_device_as_waagent_conf_is_refused_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "waagent.conf").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        config.load(tmp_path / "waagent.conf")


def test_a_fifo_dropin_directory_fails_at_once(tmp_path: Path) -> None:
    main = write(tmp_path / "waagent.conf", "")
    os.mkfifo(tmp_path / "waagent.conf.d")
    with pytest.raises(ConfigError, match=r"waagent\.conf\.d: cannot list"):
        config.load(main)


# -- links ------------------------------------------------------------------------------


def test_a_symlink_loop_at_the_default_path_is_an_error_naming_it(root: Path) -> None:
    link = root / "etc/waagent.conf"
    link.parent.mkdir(parents=True)
    link.symlink_to("waagent.conf")
    assert_refused_quickly(root, link, "Too many levels of symbolic links")


def test_a_symlink_loop_among_the_dropins_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "waagent.conf", "")
    (tmp_path / "waagent.conf.d").mkdir()
    (tmp_path / "waagent.conf.d/50-a.conf").symlink_to("50-b.conf")
    (tmp_path / "waagent.conf.d/50-b.conf").symlink_to("50-a.conf")
    with pytest.raises(ConfigError, match=r"50-a\.conf: cannot read: Too many levels"):
        config.load(main)


def test_a_dropin_directory_loop_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "waagent.conf", "")
    (tmp_path / "waagent.conf.d").symlink_to("waagent.conf.d")
    with pytest.raises(ConfigError, match=r"waagent\.conf\.d: cannot list: Too many levels"):
        config.load(main)


def test_a_dangling_link_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    """A link names a file someone meant to be read: its absence is not 'no configuration'."""
    (tmp_path / "waagent.conf").symlink_to(tmp_path / "image/waagent.conf")
    with pytest.raises(ConfigError, match=r"waagent\.conf: a symbolic link to a missing file"):
        config.load(tmp_path / "waagent.conf")


def test_a_link_to_a_regular_file_is_read(tmp_path: Path) -> None:
    """Image builders link waagent.conf (and drop-ins) to a file they ship elsewhere."""
    shipped = write(tmp_path / "usr/share/waagent.conf", "ResourceDisk.SwapSizeMB=64\n")
    site = write(tmp_path / "usr/share/90-site.conf", "Logs.Verbose=y\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/waagent.conf").symlink_to(shipped)
    (tmp_path / "etc/waagent.conf.d").mkdir()
    (tmp_path / "etc/waagent.conf.d/90-site.conf").symlink_to(site)
    loaded = config.load(tmp_path / "etc/waagent.conf")
    assert loaded.get_int("ResourceDisk.SwapSizeMB") == 64
    assert loaded.get_bool("Logs.Verbose") is True


# -- size -------------------------------------------------------------------------------


def test_a_huge_file_is_refused_without_reading_it(root: Path) -> None:
    huge = root / "etc/waagent.conf"
    huge.parent.mkdir(parents=True)
    with open(huge, "wb") as f:
        f.truncate(64 * 1024 * 1024 * 1024)  # sparse: 64 GiB of nothing
    done, elapsed = cli(root)
    assert done.returncode == 1
    assert elapsed < 2.0
    assert f"{huge}: larger than {config.MAX_FILE_SIZE} bytes" in done.stderr


def test_a_huge_line_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "waagent.conf", "OS.SshDir=/" + "a" * (config.MAX_FILE_SIZE - 20))
    with pytest.raises(ConfigError, match=r"waagent\.conf:1: OS\.SshDir="):
        config.load(path)
