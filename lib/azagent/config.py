"""waagent.conf: the keys, their types and defaults, and a strict reader.

The file format is WALinuxAgent's: ``Key=Value`` lines, ``#`` starts a
comment (at the start of a line or after a value, as WALinuxAgent's own sample
uses it), booleans are ``y``/``n``, and the word ``None`` unsets a key.
azagent adds drop-ins: ``<config>.d/*.conf``, read in lexical order after the
main file, the later value winning.

A value of the wrong type is an error that names the file, the line, the key
and what is accepted; nothing is applied when the configuration is invalid.
An unknown key is only a warning, so a waagent.conf written for a newer
WALinuxAgent still works.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from azagent import valuerules
from azagent.errors import ConfigError, refusing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Optional, Union

    Value = Union[bool, int, str, None]

DEFAULT_PATH = "/etc/waagent.conf"
# waagent.conf is a few kB; anything this large is not a configuration file.
MAX_FILE_SIZE = 1024 * 1024
MAX_DROPINS = 256


# What each kind of string value accepts: azagent.valuerules.
PATH, FILESYSTEM, MOUNT_OPTIONS, HOST, URL, WORD = (
    valuerules.PATH,
    valuerules.FILESYSTEM,
    valuerules.MOUNT_OPTIONS,
    valuerules.HOST,
    valuerules.URL,
    valuerules.WORD,
)
Rule = valuerules.Rule


class Key:
    """One configuration key: its type, default and what it accepts.

    A string key takes its values from ``choices`` or its ``rule``; declaring
    one with neither is an error when this module is imported, so a new key
    cannot skip validation.
    """

    __slots__ = (
        "choices",
        "default",
        "help",
        "kind",
        "maximum",
        "minimum",
        "name",
        "nullable",
        "rule",
    )

    def __init__(
        self,
        name: str,
        kind: type,  # bool, int or str
        default: Value,
        help: str,
        *,
        nullable: bool = False,
        choices: tuple[str, ...] = (),
        minimum: int | None = None,
        maximum: int | None = None,
        rule: Optional[Rule] = None,
    ) -> None:
        if kind is str and not choices and rule is None:
            raise TypeError(f"{name}: a string key that declares no rule or choices")
        self.name: Final = name
        self.kind: Final = kind
        self.default: Final = default
        self.help: Final = help
        self.nullable: Final = nullable
        self.choices: Final = choices
        self.minimum: Final = minimum
        self.maximum: Final = maximum
        self.rule: Final = rule

    def accepted(self) -> str:
        """Describe the accepted values, for error messages."""
        if self.kind is bool:
            text = "y or n"
        elif self.kind is int:
            text = "a decimal integer"
            if self.minimum is not None and self.maximum is not None:
                text += f" from {self.minimum} to {self.maximum}"
            elif self.minimum is not None:
                text += f" of at least {self.minimum}"
        elif self.choices:
            text = "one of " + ", ".join(self.choices)
        else:
            assert self.rule is not None
            text = self.rule.accepts
        if self.nullable:
            text += ", or None"
        return text

    def parse(self, raw: str) -> Value:
        """Turn the text of a value into its typed form or raise ValueError.

        The error's text is what follows "expected": what the key accepts,
        and for a rule also what is wrong with this value.
        """
        if self.nullable and raw == "None":
            return None
        if self.kind is bool:
            if raw.lower() in ("y", "n"):
                return raw.lower() == "y"
            raise ValueError(self.accepted())
        if self.kind is int:
            if not re.fullmatch(r"-?[0-9]{1,18}", raw):
                raise ValueError(self.accepted())
            number = int(raw)
            if (self.minimum is not None and number < self.minimum) or (
                self.maximum is not None and number > self.maximum
            ):
                raise ValueError(self.accepted())
            return number
        if self.choices:
            if raw not in self.choices:
                raise ValueError(self.accepted())
            return raw
        assert self.rule is not None
        problem = self.rule.problem(raw)
        if problem is not None:
            raise ValueError(self.accepted() + (f"; but {problem}" if problem else ""))
        return self.rule.normal(raw)

    def format(self, value: Value) -> str:
        """Render a typed value the way waagent.conf spells it."""
        if value is None:
            return "None"
        if isinstance(value, bool):
            return "y" if value else "n"
        return str(value)


def _bool(name: str, default: bool, help: str) -> Key:
    return Key(name, bool, default, help)


KEYS: tuple[Key, ...] = (
    # Provisioning
    _bool("Provisioning.Enabled", True, "Provision the VM from the OVF / IMDS data."),
    Key(
        "Provisioning.Agent",
        str,
        "auto",
        "Which agent provisions: auto, waagent (azagent itself), cloud-init, disabled.",
        choices=("auto", "waagent", "cloud-init", "disabled"),
    ),
    _bool("Provisioning.UseCloudInit", False, "Leave provisioning to cloud-init."),
    _bool("Provisioning.DeleteRootPassword", False, "Erase root's password in /etc/shadow."),
    _bool(
        "Provisioning.RegenerateSshHostKeyPair",
        True,
        "Delete the image's SSH host keys and generate a fresh pair.",
    ),
    Key(
        "Provisioning.SshHostKeyPairType",
        str,
        "rsa",
        "Type of the regenerated SSH host key.",
        choices=("rsa", "dsa", "ecdsa", "ed25519", "auto"),
    ),
    _bool(
        "Provisioning.MonitorHostName",
        True,
        "Publish later hostname changes to Azure DNS (DHCP lease renewal).",
    ),
    _bool("Provisioning.DecodeCustomData", False, "Base64-decode customData."),
    _bool("Provisioning.ExecuteCustomData", False, "Run customData after provisioning."),
    Key(
        "Provisioning.CustomDataTimeout",
        int,
        600,
        "Seconds customData may run (Provisioning.ExecuteCustomData=y).",
        minimum=1,
        maximum=86400,
    ),
    _bool(
        "Provisioning.ReportSshHostKey",
        True,
        "Report the SSH host key's thumbprint to the platform (role properties).",
    ),
    _bool(
        "Provisioning.AllowResetSysUser",
        False,
        "Allow the provisioned user to be an existing system account.",
    ),
    Key(
        "Provisioning.PasswordCryptId",
        str,
        "6",
        "crypt(3) method of the user's password hash: 1 MD5, 2a Blowfish, 5 SHA-256, 6 SHA-512.",
        choices=("1", "2a", "5", "6"),
    ),
    Key(
        "Provisioning.PasswordCryptSaltLength",
        int,
        10,
        "Length of the random salt of the password hash.",
        minimum=1,
        maximum=16,
    ),
    # Resource disk
    _bool("ResourceDisk.Format", True, "Format and mount the resource disk."),
    Key(
        "ResourceDisk.Filesystem",
        str,
        "ext4",
        "Filesystem of the resource disk (mkfs.<value> must exist).",
        rule=FILESYSTEM,
    ),
    Key(
        "ResourceDisk.MountPoint",
        str,
        "/mnt/resource",
        "Where the resource disk is mounted.",
        rule=PATH,
    ),
    Key(
        "ResourceDisk.MountOptions",
        str,
        None,
        "Mount options of the resource disk, comma-separated.",
        nullable=True,
        rule=MOUNT_OPTIONS,
    ),
    _bool("ResourceDisk.EnableSwap", False, "Create a swap file on the resource disk."),
    _bool("ResourceDisk.EnableSwapEncryption", False, "Encrypt the swap file."),
    Key(
        "ResourceDisk.SwapSizeMB",
        int,
        0,
        "Size of the swap file in MiB.",
        minimum=0,
        maximum=16 * 1024 * 1024,
    ),
    # Logs and diagnostics
    _bool("LBProbeResponder", True, "Answer the load balancer's probes."),
    _bool("Logs.Verbose", False, "Log debug messages."),
    _bool("Logs.Collect", True, "Collect logs periodically for the host."),
    Key("Logs.CollectPeriod", int, 3600, "Seconds between log collections.", minimum=60),
    _bool("DetectScvmmEnv", False, "Bootstrap the SCVMM agent when its DVD is attached."),
    # OS
    _bool("OS.AllowHTTP", False, "Allow plain HTTP where HTTPS is expected."),
    _bool("OS.EnableRDMA", False, "Load the RDMA driver that matches the hardware."),
    _bool("OS.UpdateRdmaDriver", False, "Update the RDMA driver."),
    _bool("OS.CheckRdmaDriver", False, "Check the RDMA driver's version."),
    _bool("OS.EnableFIPS", False, "Run cryptography in FIPS mode."),
    _bool(
        "OS.EnableFirewall",
        False,
        "Only root may open TCP connections to the WireServer.",
    ),
    Key(
        "OS.RootDeviceScsiTimeout",
        int,
        300,
        "SCSI command timeout (seconds) of the OS and data disks; None keeps the kernel's.",
        nullable=True,
        minimum=1,
        maximum=3600,
    ),
    Key(
        "OS.OpensslPath",
        str,
        None,
        "Accepted for compatibility; azagent never runs openssl.",
        nullable=True,
        rule=PATH,
    ),
    Key("OS.SshDir", str, "/etc/ssh", "SSH configuration directory.", rule=PATH),
    Key(
        "OS.SshClientAliveInterval",
        int,
        180,
        "sshd ClientAliveInterval (seconds).",
        minimum=0,
        maximum=86400,
    ),
    Key("OS.HomeDir", str, "/home", "Parent of the users' home directories.", rule=PATH),
    Key("OS.SudoersDir", str, "/etc/sudoers.d", "sudoers drop-in directory.", rule=PATH),
    # Proxy
    Key(
        "HttpProxy.Host",
        str,
        None,
        "HTTP proxy host for traffic other than the platform endpoints.",
        nullable=True,
        rule=HOST,
    ),
    Key(
        "HttpProxy.Port",
        int,
        None,
        "HTTP proxy port.",
        nullable=True,
        minimum=1,
        maximum=65535,
    ),
    # State and paths
    Key("Lib.Dir", str, "/var/lib/waagent", "The agent's state directory.", rule=PATH),
    Key(
        "DVD.MountPoint",
        str,
        "/mnt/cdrom/secure",
        "Where the scvmm stage mounts the SCVMM DVD (the provisioning DVD is read under /run).",
        rule=PATH,
    ),
    Key(
        "Pid.File",
        str,
        "/var/run/waagent.pid",
        "Accepted for compatibility; azagent has no daemon.",
        rule=PATH,
    ),
    Key(
        "Extension.LogDir",
        str,
        "/var/log/azure",
        "Where extensions write their logs.",
        rule=PATH,
    ),
    # Extensions
    _bool("Extensions.Enabled", True, "Process VM extensions."),
    Key(
        "Extensions.GoalStatePeriod",
        int,
        6,
        "Seconds between goal state polls of the extension handler.",
        minimum=1,
        maximum=3600,
    ),
    Key(
        "Extensions.OperationTimeout",
        int,
        None,
        "Lowers every extension command's timeout (the contract's 300 s or 900 s) to this.",
        nullable=True,
        minimum=1,
        maximum=900,
    ),
    Key(
        "Extensions.InitialGoalStatePeriod",
        int,
        6,
        "Accepted for compatibility; the extension handler polls every GoalStatePeriod.",
        minimum=1,
        maximum=3600,
    ),
    _bool(
        "Extensions.WaitForCloudInit",
        False,
        "Accepted for compatibility; the extension handler does not wait for cloud-init yet.",
    ),
    Key(
        "Extensions.WaitForCloudInitTimeout",
        int,
        3600,
        "Accepted for compatibility (see Extensions.WaitForCloudInit).",
        minimum=1,
        maximum=86400,
    ),
    _bool("AutoUpdate.Enabled", True, "Accepted for compatibility; azagent updates by package."),
    _bool("AutoUpdate.UpdateToLatestVersion", True, "Accepted for compatibility."),
    Key("AutoUpdate.GAFamily", str, "Prod", "Accepted for compatibility.", rule=WORD),
    _bool(
        "EnableOverProvisioning",
        True,
        "Hold extensions while the platform's artifacts profile says OnHold.",
    ),
    _bool("Debug.EnableExtensionPolicy", False, "Accepted for compatibility."),
    _bool("Debug.EnableSignatureValidation", False, "Accepted for compatibility."),
    # Platform endpoints: configurable so that tests and VMs use an emulator.
    Key(
        "Endpoint.WireServer",
        str,
        "http://168.63.129.16",
        "WireServer base URL when DHCP does not name one.",
        rule=URL,
    ),
    Key(
        "Endpoint.HostGAPlugin",
        str,
        "http://168.63.129.16:32526",
        "HostGAPlugin base URL.",
        rule=URL,
    ),
    Key("Endpoint.IMDS", str, "http://169.254.169.254", "IMDS base URL.", rule=URL),
    Key(
        "Endpoint.RequestTimeout",
        int,
        10,
        "Seconds one request to a platform endpoint may take.",
        minimum=1,
        maximum=300,
    ),
    Key(
        "Endpoint.RetryDeadline",
        int,
        300,
        "Seconds a stage keeps retrying a platform endpoint before it gives up.",
        minimum=1,
        maximum=3600,
    ),
)

KEYS_BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}


class Config:
    """The effective configuration: a typed value and an origin per key."""

    __slots__ = ("files", "origins", "values", "warnings")

    def __init__(
        self,
        values: dict[str, Value],
        origins: dict[str, str],
        warnings: tuple[str, ...] = (),
        files: tuple[str, ...] = (),
    ) -> None:
        self.values: Final = values
        self.origins: Final = origins
        self.warnings: Final = warnings
        self.files: Final = files

    def _get(self, name: str, kind: type) -> Value:
        key = KEYS_BY_NAME[name]
        if key.kind is not kind:
            raise TypeError(f"{name} is a {key.kind.__name__}, not a {kind.__name__}")
        return self.values[name]

    def get_bool(self, name: str) -> bool:
        value = self._get(name, bool)
        assert isinstance(value, bool)
        return value

    def get_int(self, name: str) -> int | None:
        value = self._get(name, int)
        assert value is None or isinstance(value, int)
        return value

    def get_str(self, name: str) -> str | None:
        value = self._get(name, str)
        assert value is None or isinstance(value, str)
        return value

    def required_str(self, name: str) -> str:
        value = self.get_str(name)
        if value is None:
            raise ConfigError(f"{name} must be set")
        return value

    def render(self) -> str:
        """``Key = value  # origin`` lines, one per key, for show-configuration."""
        width = max(len(key.name) + 3 + len(key.format(self.values[key.name])) for key in KEYS)
        lines = []
        for key in KEYS:
            text = f"{key.name} = {key.format(self.values[key.name])}"
            lines.append(f"{text.ljust(width)}  # {self.origins[key.name]}")
        return "\n".join(lines) + "\n"


def defaults() -> Config:
    return Config(
        values={key.name: key.default for key in KEYS},
        origins={key.name: "default" for key in KEYS},
    )


_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _file_type(mode: int) -> str:
    return next((name for test, name in _FILE_TYPES if test(mode)), "not a file")


def _problem(path: Path, e: OSError, doing: str = "read") -> ConfigError:
    return ConfigError(f"{path}: cannot {doing}: {e.strerror or e}")


def _present(path: Path, doing: str = "read") -> bool:
    """Whether ``path`` names something to read; only its plain absence means no.

    A link that loops, a link to a missing file or an unreadable directory on
    the way is an error naming the path, never a silent "no file".
    """
    try:
        os.stat(path)
        return True
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _problem(path, e, doing) from None
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise _problem(path, e, doing) from None
    raise ConfigError(f"{path}: a symbolic link to a missing file")


def _read_bytes(path: Path) -> bytes:
    """A regular file's bytes (through links), refusing anything else before it can block.

    A FIFO would block open() and read() until a writer came; a device may
    never end. stat() says what the path is without opening it; the open is
    non-blocking and fstat() checks again what was opened, in case the path
    changed in between. Only MAX_FILE_SIZE + 1 bytes are ever read.
    """
    try:
        before = os.stat(path)
    except OSError as e:
        raise _problem(path, e) from None
    if not stat.S_ISREG(before.st_mode):
        raise ConfigError(f"{path}: cannot read: not a regular file ({_file_type(before.st_mode)})")
    if before.st_size > MAX_FILE_SIZE:
        raise ConfigError(f"{path}: larger than {MAX_FILE_SIZE} bytes, not a configuration file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise _problem(path, e) from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise ConfigError(
                f"{path}: cannot read: not a regular file ({_file_type(opened.st_mode)})"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_SIZE:
            chunk = os.read(fd, MAX_FILE_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise _problem(path, e) from None
    finally:
        os.close(fd)
    if size > MAX_FILE_SIZE:
        raise ConfigError(f"{path}: larger than {MAX_FILE_SIZE} bytes, not a configuration file")
    return b"".join(chunks)


def _lines(data: bytes, source: str) -> list[str]:
    """A configuration document as lines, refusing binary or oversized input."""
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(f"{source}: larger than {MAX_FILE_SIZE} bytes, not a configuration file")
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{source}:{number}: not valid UTF-8 text") from None
        if "\0" in line:
            raise ConfigError(f"{source}:{number}: contains a NUL byte, not a text file")
        lines.append(line)
    return lines


def _shown(raw: str) -> str:
    """A value as an error message quotes it: escaped, and shortened when long."""
    return repr(raw) if len(raw) <= 80 else f"{raw[:80]!r}... ({len(raw)} characters)"


def _parse_line(
    line: str, where: str, values: dict[str, Value], origins: dict[str, str], warnings: list[str]
) -> None:
    # WALinuxAgent's own sample puts comments after values ("n#comment").
    text = line.split("#", 1)[0].strip()
    if not text:
        return
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name:
        warnings.append(f"{where}: ignoring a line that is not Key=Value")
        return
    key = KEYS_BY_NAME.get(name)
    if key is None:
        warnings.append(f"{where}: ignoring unknown key {name[:80]!r}")
        return
    try:
        values[name] = key.parse(raw)
    except ValueError as e:
        raise ConfigError(f"{where}: {name}={_shown(raw)} is not valid: expected {e}") from None
    origins[name] = where


def _parse_into(
    data: bytes,
    source: str,
    values: dict[str, Value],
    origins: dict[str, str],
    warnings: list[str],
) -> None:
    with refusing(ConfigError, source):
        for number, line in enumerate(_lines(data, source), start=1):
            _parse_line(line, f"{source}:{number}", values, origins, warnings)


def loads(data: bytes, source: str = "<configuration>") -> Config:
    """One configuration document, given as bytes, over the defaults.

    The same parser as :func:`load` without the files: what tests and tools
    use to check a document. Raises ConfigError on any bad line or value.
    """
    base = defaults()
    values, origins = dict(base.values), dict(base.origins)
    warnings: list[str] = []
    _parse_into(data, source, values, origins, warnings)
    return Config(values=values, origins=origins, warnings=tuple(warnings), files=(source,))


def load(path: Path, *, required: bool = False) -> Config:
    """Read ``path`` and its drop-ins ``<path>.d/*.conf`` over the defaults.

    A missing main file means defaults unless ``required`` (the user named
    the file on the command line). Only regular files are read, through
    links (image builders link waagent.conf to a file they ship); anything
    else, a link that loops or leads nowhere, is an error naming the path.
    Raises ConfigError on any bad file or value.
    """
    base = defaults()
    values, origins = dict(base.values), dict(base.origins)
    warnings: list[str] = []
    files: list[str] = []

    if required or _present(path):
        _parse_into(_read_bytes(path), str(path), values, origins, warnings)
        files.append(str(path))

    dropin_dir = Path(str(path) + ".d")
    names: list[str] = []
    if _present(dropin_dir, "list"):
        try:
            names = sorted(os.listdir(dropin_dir))
        except OSError as e:
            raise _problem(dropin_dir, e, "list") from None
    dropins = [name for name in names if name.endswith(".conf") and not name.startswith(".")]
    if len(dropins) > MAX_DROPINS:
        raise ConfigError(f"{dropin_dir}: more than {MAX_DROPINS} drop-ins")
    for name in dropins:
        _parse_into(
            _read_bytes(dropin_dir / name), str(dropin_dir / name), values, origins, warnings
        )
        files.append(str(dropin_dir / name))

    return Config(values=values, origins=origins, warnings=tuple(warnings), files=tuple(files))
