"""The frozen context every stage receives: where to act and with what settings."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from azagent.config import KEYS_BY_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Optional

    from azagent.config import Config

RUN_DIR = "/run/azagent"
# The WireServer named by DHCP (option 245), saved by the network stage.
WIRESERVER_PATH = "/run/azagent/wireserver"
HOSTGAPLUGIN_PORT = 32526
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# A dotted quad as ipaddress.IPv4Address reads one (no leading zeros), for
# the stages that need no more than that and so need not import ipaddress.
IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_SAVED_WIRESERVER = rf"http://({IPV4})"  # compiled when used


class Context:
    """Where a stage acts (``root``) and how (``config``, ``dry_run``)."""

    __slots__ = ("config", "config_path", "dry_run", "root", "stage", "verbose")

    def __init__(
        self,
        stage: str,
        root: Path,
        config: Config,
        *,
        dry_run: bool = False,
        verbose: bool = False,
        config_path: Optional[str] = None,  # --config, when given
    ) -> None:
        self.stage: Final = stage
        self.root: Final = root
        self.config: Final = config
        self.dry_run: Final = dry_run
        self.verbose: Final = verbose
        self.config_path: Final = config_path

    def path(self, absolute: str) -> Path:
        """Map an absolute path of the target system under ``root``.

        Refuses relative paths and '..' so that no computed path can
        escape the root.
        """
        pure = PurePosixPath(absolute)
        if not pure.is_absolute():
            raise ValueError(f"not an absolute path: {absolute!r}")
        if ".." in pure.parts:
            raise ValueError(f"path with '..' refused: {absolute!r}")
        return self.root.joinpath(*pure.parts[1:])

    def display(self, path: Path) -> str:
        """The target-system spelling of a path under ``root``, for messages."""
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return str(path)
        return "/" if relative == Path(".") else f"/{relative}"

    @property
    def run_dir(self) -> Path:
        return self.path(RUN_DIR)

    @property
    def lib_dir(self) -> Path:
        """``Lib.Dir`` (azagent's state: certificates, markers) under ``root``."""
        return self.path(self.config.required_str("Lib.Dir"))

    @property
    def live(self) -> bool:
        """Whether the stage acts on the running system (``root`` is ``/``).

        Under another root (an image tree, a test) commands that change the
        running system (hostname, mounts, sysfs writes) are shown, not run.
        """
        return self.root == Path("/")

    def endpoint(self, name: str) -> str:
        """A platform endpoint's base URL (no trailing slash).

        The WireServer DHCP named (saved in WIRESERVER_PATH, http://<IPv4>)
        wins over Endpoint.WireServer; the HostGAPlugin follows its host
        while Endpoint.HostGAPlugin is at its default.
        """
        configured = self.config.required_str(f"Endpoint.{name}").rstrip("/")
        if name not in ("WireServer", "HostGAPlugin"):
            return configured
        try:
            saved = self.path(WIRESERVER_PATH).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return configured
        found = re.fullmatch(_SAVED_WIRESERVER, saved)
        if found is None:
            return configured
        if name == "WireServer":
            return saved
        if configured != str(KEYS_BY_NAME["Endpoint.HostGAPlugin"].default).rstrip("/"):
            return configured
        return f"http://{found.group(1)}:{HOSTGAPLUGIN_PORT}"
