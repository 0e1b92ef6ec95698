"""Shared test helpers: run stages as real processes against temporary roots."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from azagent import journal

REPO = Path(__file__).resolve().parent.parent
STAGES = REPO / "stages"
# The fabric emulator (tools/azfabric) is importable by every test.
if str(REPO / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tools"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# Variables a stage or the CLI started by a test must not inherit:
# JOURNAL_STREAM would send its log to the journal instead of the captured stderr;
# PYTEST_CURRENT_TEST holds the test's id, which a parametrized case can make
# as long as its parameter, and one long variable makes exec fail (E2BIG).
CHILD_ENVIRONMENT_DROPS = ("JOURNAL_STREAM", "PYTEST_CURRENT_TEST")
# The longest parameter id (the part in brackets) collection accepts.
MAX_TEST_ID = 200


def child_environment() -> dict[str, str]:
    """This process's environment without what a spawned stage must not inherit."""
    return {k: v for k, v in os.environ.items() if k not in CHILD_ENVIRONMENT_DROPS}


def _parameter_id(item: pytest.Item) -> str:
    """The bracketed part of a parametrized test's id ("" for other tests)."""
    callspec = getattr(item, "callspec", None)
    return str(callspec.id) if callspec is not None else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fail collection on a parameter id longer than MAX_TEST_ID characters.

    pytest exports the id in PYTEST_CURRENT_TEST; a child spawned without
    child_environment() inherits it, and a parameter of megabytes in the id
    stops exec (E2BIG). Give such a case an explicit short id.
    """
    long = [item.nodeid for item in items if len(_parameter_id(item)) > MAX_TEST_ID]
    if long:
        shown = "; ".join(f"{nodeid[:120]}... ({len(nodeid)} characters)" for nodeid in long[:5])
        raise pytest.UsageError(
            f"{len(long)} test id(s) longer than {MAX_TEST_ID} characters: give them explicit"
            f" short ids (pytest.param(..., id=...) or ids=...): {shown}"
        )


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_python(*args: str, env: dict[str, str] | None = None) -> Run:
    """This interpreter with ``args``, in the environment a child of the tests gets."""
    environment = child_environment()
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def run_stage(name: str, *args: str, env: dict[str, str] | None = None) -> Run:
    """Run stages/<name> as boot would, with this interpreter, never under systemd."""
    return run_python(str(STAGES / name), *args, env=env)


def imported_modules(command: list[str]) -> set[str]:
    """The top-level names of the modules ``python -X importtime <command>`` imports.

    ``command`` runs with this interpreter and azagent from this checkout, and
    must succeed.
    """
    done = run_python("-X", "importtime", *command, env={"PYTHONPATH": str(REPO / "lib")})
    modules = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert done.returncode == 0, done.stderr
    return modules


def run_cli(*args: str) -> Run:
    return run_python("-m", "azagent", *args)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """Every path under root with its mode, owner, group and content (or link target)."""
    state: dict[str, tuple[int, int, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = ""
        state[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, content)
    return state


def add_scsi_disk(root: Path, name: str, vendor: str, model: str, timeout: str = "30") -> Path:
    """A fake /sys/block/<name>/device with the attributes kernel-tune reads."""
    device = root / "sys/block" / name / "device"
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor.ljust(8) + "\n")
    (device / "model").write_text(model.ljust(16) + "\n")
    (device / "timeout").write_text(timeout + "\n")
    return device / "timeout"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty target system root."""
    path = tmp_path / "root"
    path.mkdir()
    return path


class Logged:
    """What azagent's log received (journal.Entry objects), in order."""

    def __init__(self) -> None:
        self.entries: list[journal.Entry] = []

    def __call__(self, entry: journal.Entry) -> None:
        self.entries.append(entry)

    @property
    def text(self) -> str:
        return "\n".join(entry.message for entry in self.entries)


@pytest.fixture
def logged() -> Iterator[Logged]:
    """azagent's log, every level, recorded instead of written."""
    saved = (journal.log.sink, journal.log.level)
    recorder = Logged()
    journal.log.sink, journal.log.level = recorder, journal.DEBUG
    try:
        yield recorder
    finally:
        journal.log.sink, journal.log.level = saved


def load_stage(name: str) -> ModuleType:
    """A stage executable (stages/NAME) loaded as a module: its functions, not its run."""
    module_name = name.replace("-", "_") + "_stage"
    loader = importlib.machinery.SourceFileLoader(module_name, str(STAGES / name))
    spec = importlib.util.spec_from_loader(module_name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
