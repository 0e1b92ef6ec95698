"""The test harness itself: a huge parameter never reaches a spawned stage's environment.

pytest exports the running test's id in PYTEST_CURRENT_TEST. A case whose
parameter is megabytes long used to get that parameter as its id, every stage
the test spawned inherited it, and exec failed with E2BIG (one environment
string may not exceed MAX_ARG_STRLEN, 128 KiB on Linux).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MAX_TEST_ID, REPO, child_environment, run_cli, run_stage

HUGE = "A" * (2 * 1024 * 1024)


def test_a_stage_starts_whatever_the_current_test_id(
    monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    monkeypatch.setenv("PYTEST_CURRENT_TEST", HUGE)
    run = run_stage("kernel-tune", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    cli = run_cli("show-configuration", "--root", str(root))
    assert cli.returncode == 0, cli.stderr
    assert "PYTEST_CURRENT_TEST" not in child_environment()


INNER = """
import pytest

@pytest.mark.parametrize("value", ["A" * (2 * 1024 * 1024)], ids={ids})
def test_huge(value):
    assert value
"""


def collect(tmp_path: Path, ids: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Collect a one-case test file with this repository's conftest as a plugin."""
    (tmp_path / "test_inner.py").write_text(INNER.format(ids=ids))
    environment = child_environment()
    environment["PYTHONPATH"] = str(REPO / "tests")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            *options,
            str(tmp_path / "test_inner.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=environment,
        check=False,
    )


@pytest.mark.parametrize(
    ("ids", "options"),
    [
        ("None", ("-o", "parametrize_long_str_id_strategy=legacy")),
        (f"['{'x' * (MAX_TEST_ID + 1)}']", ()),
    ],
    ids=["value-as-id", "explicit-long-id"],
)
def test_collection_refuses_a_long_test_id(
    tmp_path: Path, ids: str, options: tuple[str, ...]
) -> None:
    done = collect(tmp_path, ids, *options)
    assert done.returncode != 0
    assert f"longer than {MAX_TEST_ID} characters" in done.stderr + done.stdout
    assert "test_inner.py::test_huge" in done.stderr + done.stdout


def test_collection_accepts_an_explicit_short_id(tmp_path: Path) -> None:
    done = collect(tmp_path, "['2MiB']", "-o", "parametrize_long_str_id_strategy=legacy")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "test_inner.py::test_huge[2MiB]" in done.stdout
