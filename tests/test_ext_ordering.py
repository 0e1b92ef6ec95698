"""dependencyLevel: a higher level runs once the lower levels reached a terminal status.

The rules (extensions.ordering) are checked directly; the service's passes
run against the emulator with WALinuxAgent's sample handler unpacked under
several names, one level each. A "slow" handler's enable writes a
``transitioning`` status and exits 0, as a long-running extension does; the
test then writes its final status itself, as the extension would later.
Every pass returns at once: the loop keeps uploading status while a level
waits, and a fake monotonic clock runs past the 90-minute bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest
from azfabric.scenario import Extension, ExtensionConfig, Scenario
from azfabric.server import Fabric
from test_ext_service import (
    SAMPLE_ZIP,
    RunningExecutor,
    handler_entries,
    installer,
    last_upload,
    settings_status,
    vm_context,
)

from azagent.extensions import goalstate, ordering, status
from azagent.extensions.executor import Operation, Outcome
from azagent.extensions.goalstate import Extension as GoalExtension
from azagent.extensions.goalstate import Handler
from azagent.extensions.service import Service

FIRST = "Contoso.Level.One"
SECOND = "Contoso.Level.Two"
THIRD = "Contoso.Level.Three"


def status_document(value: str, message: str = "working") -> str:
    return json.dumps(
        [
            {
                "version": 1.0,
                "timestampUTC": "2026-01-01T00:00:00Z",
                "status": {
                    "name": "x",
                    "operation": "Enable",
                    "status": value,
                    "code": 0 if value != "error" else 7,
                    "formattedMessage": {"lang": "en-US", "message": message},
                },
            }
        ]
    )


class SlowExecutor(RunningExecutor):
    """The handlers in ``slow``: enable writes a transitioning status and exits 0."""

    def __init__(self, slow: tuple[str, ...] = (), fail: tuple[str, ...] = ()) -> None:
        super().__init__(fail=fail)
        self.slow = set(slow)

    def run(self, operation: Operation) -> Outcome:
        if operation.handler in self.slow and operation.operation == "enable":
            prefix = f"{operation.extension}." if operation.extension else ""
            path = Path(operation.cwd) / "status" / f"{prefix}{operation.sequence}.status"
            path.write_text(status_document("transitioning"))
            self.ran.append(operation)
            return Outcome(operation, 0, unit="azure-ext-test-enable")
        return super().run(operation)

    def handlers(self) -> list[str]:
        return [o.handler for o in self.ran if o.operation == "enable"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def levels_fabric(*levels: tuple[str, int]) -> Fabric:
    return Fabric(
        Scenario(
            extensions=[
                Extension(
                    name=name,
                    version="1.3.0",
                    package=str(SAMPLE_ZIP),
                    public_settings={"message": f"{name} done"},
                    dependency_level=level,
                )
                for name, level in levels
            ]
        )
    )


def write_status(ctx: Any, name: str, value: str, message: str = "finished") -> None:
    path = ctx.lib_dir / f"{name}-1.3.0/status/0.status"
    path.write_text(status_document(value, message))


def make_service(ctx: Any, executor: RunningExecutor, clock: Clock) -> Service:
    svc = Service(ctx, executor, installer(ctx), monotonic=clock)
    svc.fabric.deadline = 1.0
    return svc


def test_a_higher_level_waits_for_a_terminal_status_without_stalling_the_loop(
    root: Path,
) -> None:
    with levels_fabric((FIRST, 1), (SECOND, 2), (THIRD, 3)) as fabric:
        ctx = vm_context(root, fabric)
        executor = SlowExecutor(slow=(FIRST,))
        clock = Clock()
        svc = make_service(ctx, executor, clock)
        svc.run_once()
        assert executor.handlers() == [FIRST]
        # The pass returned and uploaded: the waiting levels are transitioning, not failed.
        entries = handler_entries(last_upload(fabric))
        for name in (SECOND, THIRD):
            assert settings_status(entries[name])["status"] == "transitioning"
            assert FIRST in settings_status(entries[name])["formattedMessage"]["message"]
        assert settings_status(entries[FIRST])["status"] == "transitioning"
        clock.now += 600
        svc.run_once()
        assert executor.handlers() == [FIRST]
        write_status(ctx, FIRST, "success")
        clock.now += 6
        svc.run_once()
        # Level 2 ran (the sample writes success at once), so level 3 ran in the same pass.
        assert executor.handlers() == [FIRST, SECOND, THIRD]
        assert svc.waiting is None
        entries = handler_entries(last_upload(fabric))
        for name in (FIRST, SECOND, THIRD):
            assert settings_status(entries[name])["status"] == "success", name


def test_a_lower_level_in_error_blocks_the_higher_ones(root: Path) -> None:
    with levels_fabric((FIRST, 1), (SECOND, 2), (THIRD, 3)) as fabric:
        ctx = vm_context(root, fabric)
        executor = SlowExecutor(slow=(FIRST,))
        clock = Clock()
        svc = make_service(ctx, executor, clock)
        svc.run_once()
        write_status(ctx, FIRST, "error", "the script failed")
        svc.run_once()
        assert executor.handlers() == [FIRST]
        entries = handler_entries(last_upload(fabric))
        assert settings_status(entries[FIRST])["status"] == "error"
        for name in (SECOND, THIRD):
            blocked = settings_status(entries[name])
            assert blocked["status"] == "error"
            assert (
                f"{FIRST} (dependencyLevel 1), ended in error"
                in (blocked["formattedMessage"]["message"])
            )
        # Nothing waits any more: later passes run nothing.
        assert svc.waiting is None
        svc.run_once()
        assert executor.handlers() == [FIRST]


def test_a_failed_command_blocks_the_higher_levels_at_once(root: Path) -> None:
    with levels_fabric((FIRST, 0), (SECOND, 1)) as fabric:
        ctx = vm_context(root, fabric)
        executor = SlowExecutor(fail=(FIRST,))
        make_service(ctx, executor, Clock()).run_once()
        assert [o.handler for o in executor.ran] == [FIRST]  # its install failed
        entries = handler_entries(last_upload(fabric))
        message = settings_status(entries[SECOND])["formattedMessage"]["message"]
        assert settings_status(entries[SECOND])["status"] == "error"
        assert f"{FIRST} (dependencyLevel 0), failed" in message


def test_after_90_minutes_the_higher_levels_are_reported_blocked(root: Path) -> None:
    with levels_fabric((FIRST, 1), (SECOND, 2)) as fabric:
        ctx = vm_context(root, fabric)
        executor = SlowExecutor(slow=(FIRST,))
        clock = Clock()
        svc = make_service(ctx, executor, clock)
        svc.run_once()
        clock.now += ordering.DEPENDENCY_TIMEOUT - 1
        svc.run_once()
        assert svc.waiting is not None
        clock.now += 2
        svc.run_once()
        assert svc.waiting is None
        assert executor.handlers() == [FIRST]
        blocked = settings_status(handler_entries(last_upload(fabric))[SECOND])
        assert blocked["status"] == "error"
        assert "within 90 minutes" in blocked["formattedMessage"]["message"]
        assert "its last status: transitioning" in blocked["formattedMessage"]["message"]
        # The lower one finishing later changes nothing for this goal state...
        write_status(ctx, FIRST, "success")
        svc.run_once()
        assert executor.handlers() == [FIRST]
        # ...a new goal state runs the higher level again.
        fabric.new_settings(SECOND, public_settings={"message": "again"})
        svc.run_once()
        assert executor.handlers() == [FIRST, SECOND]


def test_a_new_goal_state_replaces_what_waits(root: Path) -> None:
    with levels_fabric((FIRST, 1), (SECOND, 2)) as fabric:
        ctx = vm_context(root, fabric)
        executor = SlowExecutor(slow=(FIRST,))
        svc = make_service(ctx, executor, Clock())
        svc.run_once()
        assert svc.waiting is not None
        fabric.remove_extension(FIRST)
        svc.run_once()
        assert svc.waiting is None
        assert executor.handlers() == [FIRST, SECOND]


def test_multi_config_levels_wait_per_extension(root: Path) -> None:
    scenario = Scenario(
        extensions=[
            Extension(
                name=FIRST,
                version="1.3.0",
                package=str(SAMPLE_ZIP),
                configs=[
                    ExtensionConfig(name="early", seq_no=0, dependency_level=1),
                    ExtensionConfig(name="late", seq_no=0, dependency_level=2),
                ],
            )
        ]
    )
    with Fabric(scenario) as fabric:
        ctx = vm_context(root, fabric)
        executor = SlowExecutor(slow=(FIRST,))
        svc = make_service(ctx, executor, Clock())
        svc.run_once()
        assert [o.extension for o in executor.ran if o.operation == "enable"] == ["early"]
        waiting = svc.waiting
        assert waiting is not None
        assert waiting.message().endswith(f"{FIRST}/early")
        (ctx.lib_dir / f"{FIRST}-1.3.0/status/early.0.status").write_text(
            status_document("success")
        )
        svc.run_once()
        assert [o.extension for o in executor.ran if o.operation == "enable"] == [
            "early",
            "late",
        ]


# -- the rules alone ------------------------------------------------------------------


def item(name: str, level: int, state: str = goalstate.ENABLED) -> ordering.Item:
    extension = GoalExtension(name=name, seq_no=0, state=state, dependency_level=level)
    return Handler(name=name, version="1.0", state=goalstate.ENABLED, extensions=(extension,)), (
        extension
    )


@pytest.mark.parametrize(
    ("statuses", "now", "run", "blocked"),
    [
        ({"a": "success", "b": "success"}, 0, True, None),
        ({"a": "success", "b": "transitioning"}, 0, False, None),
        ({"a": "warning", "b": "success"}, 0, False, None),  # warning is not terminal
        ({"a": "transitioning", "b": "error"}, 0, False, "b (dependencyLevel 1), ended in error"),
        ({"a": "success", "b": "transitioning"}, 100, False, "last status: transitioning"),
    ],
)
def test_judge(statuses: dict[str, str], now: float, run: bool, blocked: Optional[str]) -> None:
    lower = [item("a", 1), item("b", 1)]
    verdict = ordering.judge(lower, lambda i: statuses[i[0].name], now=now, deadline=100)
    assert verdict.run is run
    if blocked is None:
        assert verdict.blocked is None
    else:
        assert verdict.blocked is not None
        assert blocked in verdict.blocked


def test_what_is_awaited() -> None:
    lower, top, disabled = item("a", 1), item("b", 2), item("c", 1, goalstate.DISABLED)
    items = [lower, top, disabled]
    assert ordering.top_level(items) == 2
    assert [ordering.awaited(i, 2) for i in items] == [True, False, False]
    without_settings = (Handler(name="d", version="1.0", state=goalstate.ENABLED), None)
    assert not ordering.awaited(without_settings, 2)
    waiting = ordering.Waiting("g", (top,), tuple(item(f"x{n}", 1) for n in range(7)), 0.0, False)
    assert waiting.holds(*top)
    assert not waiting.holds(*lower)
    assert waiting.message().endswith("x4 and 2 more")
    report = ordering.waiting_report(*top, version="1.0", message="m")
    assert report.extension is not None
    assert report.extension.status == status.TRANSITIONING
