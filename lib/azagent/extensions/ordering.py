"""dependencyLevel: when the extensions of a higher level may run.

The goal state orders extensions by ``dependencyLevel``
(:func:`~azagent.extensions.goalstate.processing_order`: what is disabled or
uninstalled first, then ascending levels). An extension of a higher level
runs only once every enabled extension of the lower levels has reached a
terminal status, as EXTENSIONS.md section 5 says: ``success`` or ``error``
in its status file (or an error of the handler's own: a failed download or
command). ``transitioning`` and ``warning`` are not terminal, a missing
status file is ``transitioning``; a handler without settings is not waited
for (it writes no status), nor is anything of the top level.

* All lower levels succeeded: the higher level runs.
* One of them ended in ``error``: the higher levels are not run and get an
  error status naming it, as under WALinuxAgent.
* None ended badly but one is still not terminal: the higher levels wait.
  The service's loop does not: the rest of the goal state is kept as
  :class:`Waiting` and looked at again on each pass, while status uploads
  and the watchdog go on. The bound is WALinuxAgent's: 90 minutes from the
  moment the goal state was acted on (:data:`DEPENDENCY_TIMEOUT`). After it
  the higher levels are reported *blocked*, a terminal error naming the
  extension that never finished and its last status, instead of running
  without what they depend on. A new goal state replaces what waits.

The extensions of one level run one after the other without waiting for
each other (WALinuxAgent waits after each one; a level shares no
dependency, so only the boundary between levels waits). While they wait,
the higher levels report ``transitioning`` with a message naming what they
wait for, so the platform neither fails them nor thinks them stuck.
Pure: no I/O; the service says what each extension's status is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from azagent.extensions import goalstate, status
from azagent.extensions.goalstate import Extension, Handler

# WALinuxAgent's bound for a whole goal state's dependency waits.
DEPENDENCY_TIMEOUT = 90 * 60.0
# At most this many names in a message (a level may hold many extensions).
_NAMED = 5

Item = tuple[Handler, Optional[Extension]]


def is_active(item: Item) -> bool:
    """Whether the goal state asks ``item`` to be enabled."""
    handler, extension = item
    return handler.state == goalstate.ENABLED and (
        extension is None or extension.state == goalstate.ENABLED
    )


def level_of(item: Item) -> int:
    handler, extension = item
    return extension.dependency_level if extension is not None else handler.dependency_level


def name_of(item: Item) -> str:
    """The extension's name for people: the handler's, and the extension's in multi-config."""
    handler, extension = item
    if extension is not None and handler.is_multi_config:
        return f"{handler.name}/{extension.name}"
    return handler.name


def top_level(items: Sequence[Item]) -> int:
    """The highest level of an enabled extension: nothing waits for that one."""
    return max((level_of(i) for i in items if is_active(i)), default=0)


def awaited(item: Item, top: int) -> bool:
    """Whether higher levels wait for ``item`` (enabled, with settings, below the top)."""
    return is_active(item) and item[1] is not None and level_of(item) < top


@dataclass(frozen=True)
class Verdict:
    """What the lower levels allow: ``run``; else wait (no ``blocked``) or ``blocked``."""

    run: bool
    blocked: Optional[str] = None  # why the higher levels get an error instead


def judge(
    lower: Sequence[Item],
    status_of: Callable[[Item], str],
    *,
    now: float,
    deadline: float,
) -> Verdict:
    """Whether the extensions above ``lower`` may run now (see the module docstring)."""
    pending: list[tuple[Item, str]] = []
    for item in lower:
        value = status_of(item)
        if value == status.ERROR:
            return Verdict(
                False,
                f"the extension it depends on, {name_of(item)}"
                f" (dependencyLevel {level_of(item)}), ended in error",
            )
        if value != status.SUCCESS:
            pending.append((item, value))
    if not pending:
        return Verdict(True)
    if now < deadline:
        return Verdict(False)
    item, value = pending[0]
    return Verdict(
        False,
        f"blocked: the extension it depends on, {name_of(item)} (dependencyLevel"
        f" {level_of(item)}), did not reach a terminal status within"
        f" {DEPENDENCY_TIMEOUT / 60:.0f} minutes (its last status: {value})",
    )


@dataclass(frozen=True)
class Waiting:
    """The rest of a goal state, waiting for lower levels to reach a terminal status."""

    goal_id: str
    items: tuple[Item, ...]  # not run yet, in processing order
    lower: tuple[Item, ...]  # what they wait for
    deadline: float  # the service's monotonic clock
    restart: bool  # the first pass after a start: enable again

    def holds(self, handler: Handler, extension: Optional[Extension]) -> bool:
        """Whether this enabled extension waits (it is reported transitioning)."""
        wanted = (handler.name, extension.name if extension is not None else None)
        return any(
            (h.name, e.name if e is not None else None) == wanted and is_active((h, e))
            for h, e in self.items
        )

    def message(self) -> str:
        names = [name_of(i) for i in self.lower]
        shown = ", ".join(names[:_NAMED]) + (
            f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
        )
        return f"waiting for the extensions it depends on to finish: {shown}"


def waiting_report(
    handler: Handler, extension: Optional[Extension], *, version: str, message: str
) -> status.HandlerStatus:
    """A transitioning status for an extension that waits for lower levels."""
    seq_no = extension.seq_no if extension is not None else 0
    name = extension.name if extension is not None and handler.is_multi_config else handler.name
    return status.HandlerStatus(
        handler.name,
        version,
        status.NOT_READY,
        status.CODE_SUCCESS,
        message,
        status.ExtensionStatus(name, seq_no, status.TRANSITIONING, status.CODE_SUCCESS, message),
        handler.is_multi_config,
    )
