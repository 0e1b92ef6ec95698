"""Stage results: what the runner records, read back typed; hostile files read as nothing."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import run_cli, run_stage

from azagent import config, report
from azagent.context import Context
from azagent.results import (
    EXIT_FAILED,
    MAX_RESULT_BYTES,
    STATE_DONE,
    STATE_FAILED,
    Result,
    read_result,
    result_path,
)


def record(root: Path, stage: str, content: bytes | str) -> Path:
    path = result_path(root, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_round_trip(root: Path) -> None:
    start = 1_700_000_000.25
    result = Result.of_run(
        "create-user",
        STATE_FAILED,
        start,
        start + 1.5,
        reason="useradd exited with status 9",
        changes=("create user alice",),
        exit_status=EXIT_FAILED,
    )
    record(root, "create-user", result.to_json())
    read = read_result(root, "create-user")
    assert read == result
    assert read is not None
    assert read.failed
    assert read.duration_ms == 1500
    assert read.start == datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=timezone.utc)
    assert read.ended == "2023-11-14T22:13:21.750+00:00"


def test_the_file_format_stays_what_users_and_the_vm_harness_read(root: Path) -> None:
    assert run_stage("kernel-tune", "--root", str(root)).returncode == 0
    document = json.loads(result_path(root, "kernel-tune").read_text())
    assert sorted(document) == [
        "changes",
        "duration_ms",
        "end",
        "exit_status",
        "reason",
        "stage",
        "start",
        "state",
    ]
    assert document["stage"] == "kernel-tune"
    assert document["state"] in ("done", "nothing-to-do", "skipped")
    assert document["exit_status"] == 0
    assert isinstance(document["duration_ms"], int)
    assert datetime.fromisoformat(document["end"]).tzinfo is not None
    read = read_result(root, "kernel-tune")
    assert read is not None
    assert read.to_json() == result_path(root, "kernel-tune").read_bytes()


def test_a_partial_document_reads_with_defaults(root: Path) -> None:
    record(root, "create-user", '{"stage": "create-user", "state": "failed", "reason": "bad"}')
    assert read_result(root, "create-user") == Result("create-user", STATE_FAILED, reason="bad")


def test_never_ran(root: Path) -> None:
    assert read_result(root, "create-user") is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe garbage",
        b"[]",
        b'"failed"',
        b"null",
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser's recursion
        b'{"state": "failed"}',
        b'{"stage": "create-user"}',
        b'{"stage": "create-user", "state": "exploded"}',
        b'{"stage": "create-user", "state": ["failed"]}',
        b'{"stage": 7, "state": "failed"}',
        b'{"stage": "ssh-keys", "state": "failed"}',  # another stage's result
        b'{"stage": "create-user", "state": "failed", "reason": 5}',
        b'{"stage": "create-user", "state": "failed", "changes": "rm -rf /"}',
        b'{"stage": "create-user", "state": "failed", "changes": [1, 2]}',
        b'{"stage": "create-user", "state": "done", "duration_ms": "12"}',
        b'{"stage": "create-user", "state": "done", "duration_ms": 1.5}',
        b'{"stage": "create-user", "state": "done", "duration_ms": true}',
        b'{"stage": "create-user", "state": "done", "duration_ms": 1e999}',
        b'{"stage": "create-user", "state": "done", "exit_status": "0"}',
        b'{"stage": "create-user", "state": "done", "end": "yesterday"}',
        b'{"stage": "create-user", "state": "done", "end": 1700000000}',
        b'{"stage": "create-user", "state": "done", "start": "' + b"9" * 200 + b'"}',
    ],
)
def test_hostile_files_read_as_no_result(root: Path, content: bytes) -> None:
    record(root, "create-user", content)
    assert read_result(root, "create-user") is None


def test_a_huge_file_reads_as_no_result(root: Path) -> None:
    padding = " " * MAX_RESULT_BYTES
    record(root, "create-user", '{"stage": "create-user", "state": "failed"' + padding + "}")
    assert read_result(root, "create-user") is None


def test_a_fifo_or_directory_reads_as_no_result_without_blocking(root: Path) -> None:
    path = result_path(root, "create-user")
    path.parent.mkdir(parents=True)
    os.mkfifo(path)  # a reader opening it blocking would wait for a writer forever
    assert read_result(root, "create-user") is None
    path.unlink()
    path.mkdir()
    assert read_result(root, "create-user") is None


def test_readers_survive_hostile_results(root: Path) -> None:
    """status and the failure report treat a hostile result as no result."""
    record(root, "create-user", '{"stage": "create-user", "state": "failed", "reason": [1]}')
    record(root, "ssh-keys", '{"stage": "ssh-keys", "state": "failed", "reason": "no key"}')
    record(root, "hostname", '{"stage": "hostname", "state": "done", "duration_ms": 7}')
    record(root, "mount-ovf", '{"stage": "mount-ovf", "state": "done", "duration_ms": "7"}')
    ctx = Context(stage="test", root=root, config=config.defaults())
    assert report.failures(ctx) == [("ssh-keys", "no key")]
    assert report.durations(ctx) == {"hostname_ms": "7"}
    status = run_cli("status", "--root", str(root), "--json")
    rows = {row["stage"]: row for row in json.loads(status.stdout)}
    assert rows["create-user"]["result"] == "never-ran"
    assert rows["ssh-keys"]["result"] == "failed"
    assert rows["ssh-keys"]["reason"] == "no key"
    assert rows["hostname"]["duration"] == "0.007s"
    assert rows["hostname"]["result"] == STATE_DONE
