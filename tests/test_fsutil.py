"""Atomic writes: final owner and mode from the first byte, no debris on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from azagent.config import defaults
from azagent.context import Context
from azagent.fsutil import (
    UnsafePath,
    atomic_write,
    atomic_write_at,
    ensure_dir,
    make_dir_at,
    open_directory,
)


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


# --- Walking by descriptor -------------------------------------------------------------------


def opened(fd: int) -> os.stat_result:
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def test_open_directory_refuses_every_link_by_default(tmp_path: Path) -> None:
    (tmp_path / "real/inner").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real")
    assert os.path.samestat(
        opened(open_directory(tmp_path, "/real/inner")),
        (tmp_path / "real/inner").stat(),
    )
    with pytest.raises(UnsafePath, match=r"^/link is a symbolic link"):
        open_directory(tmp_path, "/link/inner")
    (tmp_path / "file").write_text("")
    with pytest.raises(UnsafePath, match=r"^/file is not a directory"):
        open_directory(tmp_path, "/file/x")
    with pytest.raises(FileNotFoundError, match="/real/missing"):
        open_directory(tmp_path, "/real/missing/x")


@pytest.mark.skipif(os.geteuid() != 0, reason="links root made are told apart by their owner")
def test_open_directory_follows_root_links_within_the_root(tmp_path: Path) -> None:
    """Absolute targets and '..' resolve as if the root were /, never outside it."""
    root = tmp_path / "root"
    (root / "var/home").mkdir(parents=True)
    (root / "absolute").symlink_to("/var/home")
    (root / "climbing").symlink_to("../../../../var/home")
    for link in ("absolute", "climbing"):
        fd = open_directory(root, f"/{link}", follow_root_links=True)
        assert os.path.samestat(opened(fd), (root / "var/home").stat())
    with pytest.raises(UnsafePath, match=r"^/absolute is a symbolic link"):
        open_directory(root, "/absolute")


def test_make_dir_at_never_uses_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "planted").symlink_to("target")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            make_dir_at(fd, "planted", "/planted", mode=0o700, owner=None)
        made = make_dir_at(fd, "new", "/new", mode=0o711, owner=None)
        assert opened(made).st_mode & 0o777 == 0o711
    finally:
        os.close(fd)


def test_atomic_write_at_replaces_a_link_instead_of_writing_through_it(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir/file").symlink_to(victim)
    # A temporary file planted under the name this process would use is replaced too.
    (tmp_path / f"dir/.file.azagent-{os.getpid()}.tmp").symlink_to(victim)
    fd = os.open(tmp_path / "dir", os.O_RDONLY | os.O_DIRECTORY)
    try:
        atomic_write_at(fd, "file", b"new", mode=0o640)
    finally:
        os.close(fd)
    assert victim.read_bytes() == b"keep"
    assert not (tmp_path / "dir/file").is_symlink()
    assert (tmp_path / "dir/file").read_bytes() == b"new"
    assert (tmp_path / "dir/file").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["file"]
