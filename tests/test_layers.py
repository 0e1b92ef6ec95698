"""Imports only point down: every lib module sits on a floor and imports nothing above it.

The floors, lowest first (README, "Code layout"):

0. foundation: errors, configuration, the context, plans, stage results, files,
   subprocesses, the journal, name rules: what every other module may use.
1. protocol: the platform's documents (parsers and builders, pure) and the thin
   clients that fetch them (proxy, transport, WireServer, IMDS).
2. system: the modules that change the OS under ``ctx.root`` (users, sshd, disks,
   hostname, network, ...) and the provisioning hand-offs built on them.
3. runner: the stage contract (stage.py).
4. entry points: the CLI. The stage executables (stages/) and the tools sit above
   the library and never import the CLI.

A module may import modules on its own floor or below. A function-level import
counts as much as a top-level one: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

from conftest import REPO

LIB = REPO / "lib/azagent"
STAGES = REPO / "stages"
MAX_MODULE_LINES = 800

FLOOR_NAMES = ("foundation", "protocol", "system", "runner", "entry point")

FLOORS: dict[str, tuple[str, ...]] = {
    "foundation": (
        "__init__",
        "catalog",
        "config",
        "context",
        "errors",
        "fsutil",
        "journal",
        "names",
        "plan",
        "redact",
        "results",
        "system",
    ),
    "protocol": (
        "asn1",
        "certs",
        "extconf",
        "imds",
        "kvp",
        "ntfs",
        "ovf",
        "passwords",
        "proxy",
        "transport",
        "wireclient",
        "wireserver",
        "xmlsafe",
    ),
    "system": (
        "certstore",
        "deprovision",
        "dhcp",
        "disks",
        "firewall",
        "grub",
        "homefiles",
        "hostname",
        "logcollect",
        "media",
        "network",
        "provisioning",
        "report",
        "resourcedisk",
        "sshd",
        "sshkeys",
        "swap",
        "units",
        "users",
    ),
    "runner": ("stage",),
    "entry point": ("__main__", "cli"),
}

# Protocol modules that only parse and build documents: no I/O of their own.
PURE = ("asn1", "certs", "extconf", "kvp", "ntfs", "ovf", "wireserver", "xmlsafe")
IO_MODULES = {"subprocess", "requests", "urllib3", "socket", "shutil", "pyudev"}


def floor_of(floors: Mapping[str, Iterable[str]]) -> dict[str, int]:
    return {
        module: FLOOR_NAMES.index(floor) for floor, modules in floors.items() for module in modules
    }


def package_imports(path: Path, package: str = "azagent") -> set[str]:
    """The modules of ``package`` that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package:
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:  # relative: from . import x, from .x import y
                module = node.module or ""
                parts = [package, *module.split(".")] if module else [package]
            elif node.module is not None:
                parts = node.module.split(".")
            else:
                continue
            if parts[0] != package:
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from azagent import x: a module, or a name of __init__
                for alias in node.names:
                    is_module = (path.parent / f"{alias.name}.py").exists()
                    found.add(alias.name if is_module else "__init__")
    return found


def other_imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in ``path``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def upward_imports(lib: Path, floors: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import in ``lib`` that points to a higher floor, or involves an unplaced module."""
    floor = floor_of(floors)
    problems = []
    for path in sorted(lib.glob("*.py")):
        name = path.stem
        if name not in floor:
            problems.append(f"{name}: on no floor (add it to FLOORS in tests/test_layers.py)")
            continue
        for imported in sorted(package_imports(path)):
            if imported not in floor:
                problems.append(f"{name} imports {imported}, which is on no floor")
            elif floor[imported] > floor[name]:
                problems.append(
                    f"{name} ({FLOOR_NAMES[floor[name]]}) imports {imported}"
                    f" ({FLOOR_NAMES[floor[imported]]}): an upward import"
                )
    return problems


def test_every_import_points_down() -> None:
    assert upward_imports(LIB, FLOORS) == []


def test_floor_map_names_only_existing_modules() -> None:
    existing = {path.stem for path in LIB.glob("*.py")}
    placed = set(floor_of(FLOORS))
    assert placed - existing == set(), "FLOORS names modules that do not exist"


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    """The check sees every spelling of an upward import, lazy ones included."""
    lib = tmp_path / "azagent"
    lib.mkdir()
    floors = {
        "foundation": ("__init__", "base"),
        "protocol": ("doc",),
        "system": ("users",),
        "runner": ("stage",),
        "entry point": ("cli",),
    }
    (lib / "__init__.py").write_text('__version__ = "1"\n')
    (lib / "base.py").write_text("from azagent import __version__\n")
    (lib / "doc.py").write_text("from azagent import base\n")
    (lib / "users.py").write_text("import azagent.doc\n")
    (lib / "stage.py").write_text("from . import users\n")
    (lib / "cli.py").write_text("from azagent.stage import main\n")
    assert upward_imports(lib, floors) == []

    (lib / "doc.py").write_text("def f():\n    from azagent.users import x\n")
    (lib / "users.py").write_text("import azagent.stage as runner\n")
    (lib / "base.py").write_text("from .cli import main\nfrom azagent import doc\n")
    (lib / "extra.py").write_text("")
    assert upward_imports(lib, floors) == [
        "base (foundation) imports cli (entry point): an upward import",
        "base (foundation) imports doc (protocol): an upward import",
        "doc (protocol) imports users (system): an upward import",
        "extra: on no floor (add it to FLOORS in tests/test_layers.py)",
        "users (system) imports stage (runner): an upward import",
    ]


def test_library_never_imports_stages_tools_or_emulator() -> None:
    for module in sorted(LIB.glob("*.py")):
        used = other_imports(module)
        assert not used & {"azfabric", "azvmtest", "conftest", "tools", "stages"}, module.name


def test_no_stage_imports_the_cli() -> None:
    stages = sorted(p for p in STAGES.iterdir() if p.is_file())
    assert stages
    for stage in stages:
        assert not package_imports(stage) & {"cli", "__main__"}, stage.name


def test_pure_protocol_modules_do_no_io() -> None:
    """Parsers and document builders do no I/O of their own: no subprocess, no HTTP."""
    for name in PURE:
        used = other_imports(LIB / f"{name}.py")
        assert not used & IO_MODULES, name


def test_no_module_over_the_size_limit() -> None:
    """A module past 800 lines holds two jobs: split it."""
    sizes = {
        path.name: len(path.read_text(encoding="utf-8").splitlines())
        for path in LIB.glob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
