"""Imports only point down: the library never imports the stages, the tools or the emulator."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

LIB = REPO / "lib/azagent"


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_tools_or_emulator() -> None:
    for module in sorted(LIB.glob("*.py")):
        assert not imported(module) & {"azfabric", "conftest", "tools", "stages"}, module.name


def module_level(path: Path) -> set[str]:
    """The modules ``path`` imports when it is imported (not inside its functions)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_protocol_modules_stay_pure() -> None:
    """Parsers and document builders do no I/O of their own: no subprocess, no HTTP.

    imds.py also holds the fetch; it reaches the network only through the
    transport, imported when the fetch runs, so the parser stays cheap.
    """
    for name in ("xmlsafe", "ovf", "imds", "kvp", "wireserver", "extconf", "certs"):
        used = imported(LIB / f"{name}.py")
        assert not used & {"subprocess", "requests", "urllib3", "socket", "shutil"}, name
        eager = module_level(LIB / f"{name}.py")
        assert not eager & {"azagent.transport", "azagent.wireclient"}, name
