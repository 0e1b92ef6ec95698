"""Atomic writes: final owner and mode from the first byte, no debris on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from azagent.config import defaults
from azagent.context import Context
from azagent.fsutil import atomic_write, ensure_dir


def test_replaces_content_with_final_mode_and_owner(tmp_path: Path) -> None:
    target = tmp_path / "etc/ssh/key"
    old_umask = os.umask(0)
    try:
        atomic_write(target, b"first", mode=0o600)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"first"
    assert target.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        atomic_write(target, b"second", mode=0o640, owner=(1234, 4321))
        st = target.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 4321, 0o640)
    assert sorted(p.name for p in target.parent.iterdir()) == ["key"]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes", mode=0o644)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_refuses_to_follow_a_planted_temporary_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / f".file.azagent-{os.getpid()}.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "file", b"data")
    assert victim.read_bytes() == b"keep"


def test_ensure_dir_sets_mode_and_keeps_existing(tmp_path: Path) -> None:
    assert ensure_dir(tmp_path / "a/b", mode=0o700)
    assert (tmp_path / "a/b").stat().st_mode & 0o777 == 0o700
    (tmp_path / "c").mkdir(mode=0o755)
    assert not ensure_dir(tmp_path / "c", mode=0o700)
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o755


def test_context_paths_stay_under_the_root(tmp_path: Path) -> None:
    ctx = Context(stage="t", root=tmp_path, config=defaults())
    assert ctx.path("/etc/hostname") == tmp_path / "etc/hostname"
    assert ctx.display(tmp_path / "home/u/.ssh") == "/home/u/.ssh"
    assert ctx.display(tmp_path) == "/"
    with pytest.raises(ValueError, match=r"'\.\.' refused"):
        ctx.path("/etc/../../outside")
    with pytest.raises(ValueError, match="not an absolute path"):
        ctx.path("etc/hostname")
    assert ctx.endpoint("WireServer") == "http://168.63.129.16"
