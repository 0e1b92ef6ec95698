"""The frozen context every stage receives: where to act and with what settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from azagent.config import Config

RUN_DIR = "/run/azagent"


@dataclass(frozen=True)
class Context:
    """Where a stage acts (``root``) and how (``config``, ``dry_run``)."""

    stage: str
    root: Path
    config: Config
    dry_run: bool = False
    verbose: bool = False
    config_path: Optional[str] = None  # --config, when given

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

    def endpoint(self, name: str) -> str:
        """A platform endpoint's base URL (no trailing slash) from the configuration."""
        return self.config.required_str(f"Endpoint.{name}").rstrip("/")
