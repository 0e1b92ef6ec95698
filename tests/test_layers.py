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
        "valuerules",
    ),
    "protocol": (
        "asn1",
        "certs",
        "extconf",
        "extensions",
        "extensions.environment",
        "extensions.executor",
        "extensions.goalstate",
        "extensions.handler",
        "extensions.manifest",
        "extensions.naming",
        "extensions.ordering",
        "extensions.status",
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
        "extensions.channel",
        "extensions.daemon",
        "extensions.direct_executor",
        "extensions.events",
        "extensions.forked",
        "extensions.package",
        "extensions.reporting",
        "extensions.service",
        "extensions.state",
        "extensions.systemd_executor",
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
        "swapfile",
        "udev",
        "units",
        "users",
    ),
    "runner": ("stage",),
    "entry point": ("__main__", "cli"),
}

# Protocol modules that only parse and build documents: no I/O of their own.
PURE = (
    "asn1",
    "certs",
    "extconf",
    "extensions",
    "extensions.environment",
    "extensions.goalstate",
    "extensions.handler",
    "extensions.manifest",
    "extensions.naming",
    "extensions.ordering",
    "extensions.status",
    "kvp",
    "ntfs",
    "ovf",
    "wireserver",
    "xmlsafe",
)
IO_MODULES = {"subprocess", "requests", "urllib3", "socket", "shutil", "pyudev"}


def floor_of(floors: Mapping[str, Iterable[str]]) -> dict[str, int]:
    return {
        module: FLOOR_NAMES.index(floor) for floor, modules in floors.items() for module in modules
    }


def module_name(lib: Path, path: Path) -> str:
    """A module's name inside the package: ``cli``, ``extensions.goalstate``, ``extensions``."""
    parts = list(path.relative_to(lib).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules(lib: Path) -> dict[str, Path]:
    return {module_name(lib, path): path for path in sorted(lib.rglob("*.py"))}


def _resolve(lib: Path, dotted: list[str]) -> str:
    """The longest module of the package that ``dotted`` (names below the package) names."""
    for end in range(len(dotted), 0, -1):
        candidate = lib.joinpath(*dotted[:end])
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(dotted[:end])
    return "__init__"  # a name defined by the package itself (__version__)


def package_imports(path: Path, lib: Path | None = None, package: str = "azagent") -> set[str]:
    """The modules of ``package`` (rooted at ``lib``) that ``path`` imports, anywhere in it."""
    lib = lib if lib is not None else path.parent
    found: set[str] = set()
    here = list(path.relative_to(lib).parent.parts) if path.is_relative_to(lib) else []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package:
                    found.add(_resolve(lib, parts[1:]))
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level > 0:  # relative: from . import x, from ..x import y
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            below = [*base, *(node.module.split(".") if node.module else [])]
        elif node.module is not None and node.module.split(".")[0] == package:
            below = node.module.split(".")[1:]
        else:
            continue
        for alias in node.names:  # from azagent.x import y: y may be a module of x
            found.add(_resolve(lib, [*below, alias.name]))
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
    for name, path in modules(lib).items():
        if name not in floor:
            problems.append(f"{name}: on no floor (add it to FLOORS in tests/test_layers.py)")
            continue
        for imported in sorted(package_imports(path, lib)):
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
    existing = set(modules(LIB))
    placed = set(floor_of(FLOORS))
    assert placed - existing == set(), "FLOORS names modules that do not exist"


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    """The check sees every spelling of an upward import, lazy ones included."""
    lib = tmp_path / "azagent"
    lib.mkdir()
    floors = {
        "foundation": ("__init__", "base", "ext"),
        "protocol": ("doc", "ext.parse"),
        "system": ("users", "ext.service"),
        "runner": ("stage",),
        "entry point": ("cli",),
    }
    (lib / "__init__.py").write_text('__version__ = "1"\n')
    (lib / "base.py").write_text("from azagent import __version__\n")
    (lib / "doc.py").write_text("from azagent import base\n")
    (lib / "users.py").write_text("import azagent.doc\n")
    (lib / "stage.py").write_text("from . import users\n")
    (lib / "cli.py").write_text("from azagent.stage import main\n")
    (lib / "ext").mkdir()
    (lib / "ext/__init__.py").write_text("")
    (lib / "ext/parse.py").write_text("from azagent import doc\nfrom .. import base\n")
    (lib / "ext/service.py").write_text("from .parse import x\nfrom azagent.ext import parse\n")
    assert upward_imports(lib, floors) == []

    (lib / "doc.py").write_text("def f():\n    from azagent.users import x\n")
    (lib / "users.py").write_text("import azagent.stage as runner\n")
    (lib / "base.py").write_text("from .cli import main\nfrom azagent import doc\n")
    (lib / "extra.py").write_text("")
    (lib / "ext/parse.py").write_text("from . import service\n")
    (lib / "ext/service.py").write_text("from ..stage import main\n")
    assert upward_imports(lib, floors) == [
        "base (foundation) imports cli (entry point): an upward import",
        "base (foundation) imports doc (protocol): an upward import",
        "doc (protocol) imports users (system): an upward import",
        "ext.parse (protocol) imports ext.service (system): an upward import",
        "ext.service (system) imports stage (runner): an upward import",
        "extra: on no floor (add it to FLOORS in tests/test_layers.py)",
        "users (system) imports stage (runner): an upward import",
    ]


def test_library_never_imports_stages_tools_or_emulator() -> None:
    for module in sorted(LIB.rglob("*.py")):
        used = other_imports(module)
        assert not used & {"azfabric", "azvmtest", "conftest", "tools", "stages"}, module.name


def test_no_stage_imports_the_cli() -> None:
    stages = sorted(p for p in STAGES.iterdir() if p.is_file())
    assert stages
    for stage in stages:
        assert not package_imports(stage, LIB) & {"cli", "__main__"}, stage.name


def test_pure_protocol_modules_do_no_io() -> None:
    """Parsers and document builders do no I/O of their own: no subprocess, no HTTP."""
    for name in PURE:
        used = other_imports(modules(LIB)[name])
        assert not used & IO_MODULES, name


def test_no_module_over_the_size_limit() -> None:
    """A module past 800 lines holds two jobs: split it."""
    sizes = {
        str(path.relative_to(LIB)): len(path.read_text(encoding="utf-8").splitlines())
        for path in LIB.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
