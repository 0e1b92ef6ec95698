"""The extensions' telemetry event folders stay bounded; nothing is followed or read.

Real files in a temporary log root: old, oversized and surplus event files
go, the newest stay; links, directories and names that are not event files
are left alone; a link anywhere on the way to the folder leads nowhere. The
service prunes every known handler's folder on each pass.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from azfabric.scenario import Extension, Scenario
from azfabric.server import Fabric
from test_ext_service import SAMPLE, SAMPLE_ZIP, RunningExecutor, service, vm_context

from azagent.context import Context
from azagent.extensions import events

HANDLER = "Microsoft.Azure.Extensions.CustomScript"
NOW = 1_800_000_000.0


def folder(root: Path, handler: str = HANDLER) -> Path:
    path = root / handler / "events"
    path.mkdir(parents=True, exist_ok=True)
    return path


def event(directory: Path, name: str, *, age: float = 60.0, size: int = 100) -> Path:
    path = directory / name
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: a large file costs no disk
    os.utime(path, (NOW - age, NOW - age))
    return path


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_old_oversized_and_surplus_files_go_the_newest_stay(tmp_path: Path) -> None:
    events_dir = folder(tmp_path)
    event(events_dir, "1.json", age=events.MAX_AGE + 60)
    event(events_dir, "2.json", size=events.MAX_FILE + 1)
    event(events_dir, "3.JSON", size=events.MAX_FILE)  # at the bound: kept
    surplus = events.MAX_FILES + 5
    for n in range(surplus):
        # 1000 is the newest; 1000 + surplus - 1 the oldest.
        event(events_dir, f"{1000 + n}.json", age=10.0 + n)
    removed = events.prune(tmp_path, HANDLER, now=NOW)
    left = names(events_dir)
    assert "1.json" not in left
    assert "2.json" not in left
    assert "3.JSON" in left
    # 3.JSON is the oldest of the young ones but the count is by age: the 299 newest others stay.
    assert len(left) == events.MAX_FILES
    assert {f"{1000 + n}.json" for n in range(events.MAX_FILES - 1)} <= left
    assert removed == 2 + surplus - (events.MAX_FILES - 1)
    # A second pass has nothing left to do.
    assert events.prune(tmp_path, HANDLER, now=NOW) == 0


def test_the_total_size_bound_keeps_the_newest(tmp_path: Path) -> None:
    events_dir = folder(tmp_path)
    size = events.MAX_FILE
    count = events.MAX_TOTAL // size + 2
    for n in range(count):
        event(events_dir, f"{n}.json", age=10.0 + n, size=size)
    events.prune(tmp_path, HANDLER, now=NOW)
    assert names(events_dir) == {f"{n}.json" for n in range(events.MAX_TOTAL // size)}


@pytest.mark.parametrize(
    "name",
    [
        "1.json.tmp",
        "abc.json",
        ".1.json",
        "1.json~",
        "1 .json",
        "-1.json",
        "1.json\n",
        "\udcff.json",
    ],
)
def test_other_names_are_left_alone(tmp_path: Path, name: str) -> None:
    events_dir = folder(tmp_path)
    raw = os.fsencode(name)
    path = Path(os.fsdecode(os.path.join(os.fsencode(events_dir), raw)))
    with open(path, "wb") as f:
        f.truncate(events.MAX_FILE + 1)
    os.utime(path, (0, 0))
    assert events.prune(tmp_path, HANDLER, now=NOW) == 0
    assert path.exists()


def test_links_and_directories_are_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = event(elsewhere, "7.json", age=events.MAX_AGE * 2)
    logs = tmp_path / "logs"
    events_dir = folder(logs)
    # An event-named link to an old file, and an event-named directory: not touched.
    (events_dir / "8.json").symlink_to(victim)
    (events_dir / "9.json").mkdir()
    os.utime(events_dir / "9.json", (0, 0))
    assert events.prune(logs, HANDLER, now=NOW) == 0
    assert victim.exists()
    assert (events_dir / "8.json").is_symlink()
    assert (events_dir / "9.json").is_dir()
    # The events folder itself a link: nothing done through it.
    linked = folder(logs, "Linked.Events").parent
    (linked / "events").rmdir()
    (linked / "events").symlink_to(elsewhere)
    assert events.prune(logs, "Linked.Events", now=NOW) == 0
    # The handler's folder a link: nothing done through it either.
    (logs / "Linked.Handler").symlink_to(elsewhere.parent / "logs" / "Other")
    (logs / "Other" / "events").mkdir(parents=True)
    event(logs / "Other" / "events", "1.json", age=events.MAX_AGE * 2)
    assert events.prune(logs, "Linked.Handler", now=NOW) == 0
    assert (logs / "Other" / "events" / "1.json").exists()
    assert victim.exists()


def test_missing_folders_and_refused_names_do_nothing(tmp_path: Path) -> None:
    assert events.prune(tmp_path / "absent", HANDLER, now=NOW) == 0
    assert events.prune(tmp_path, HANDLER, now=NOW) == 0
    (tmp_path / "x" / "events").mkdir(parents=True)
    event(tmp_path / "x" / "events", "1.json", age=events.MAX_AGE * 2)
    for hostile in ("../x", "..", "x/../x", ""):
        assert events.prune(tmp_path / "sub", hostile, now=NOW) == 0
    assert (tmp_path / "x" / "events" / "1.json").exists()


def test_the_service_prunes_each_pass(root: Path) -> None:
    scenario = Scenario(extensions=[Extension(SAMPLE, "1.3.0", package=str(SAMPLE_ZIP))])
    with Fabric(scenario) as fabric:
        prunes_each_pass(vm_context(root, fabric))


def prunes_each_pass(ctx: Context) -> None:
    svc = service(ctx, RunningExecutor())
    svc.run_once()
    events_dir = svc.log_root / SAMPLE / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    old = events_dir / "1.json"
    old.write_text("{}")
    stamp = time.time() - events.MAX_AGE - 60
    os.utime(old, (stamp, stamp))
    fresh = events_dir / "2.json"
    fresh.write_text("{}")
    svc.run_once()
    assert not old.exists()
    assert fresh.exists()
