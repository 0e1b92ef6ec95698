"""A plan: what a stage (or a command such as deprovision) will change.

Kept apart from the runner so that system modules can build actions
without depending on it (imports only point down).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    # For the type checker only: creating a Protocol class costs every stage's
    # start-up, and nothing checks it at run time.
    from collections.abc import Callable
    from pathlib import Path
    from typing import Final, Protocol

    class Target(Protocol):
        """Where a plan acts (a :class:`~azagent.context.Context`): its root, and
        whether that root is the running system."""

        @property
        def root(self) -> Path: ...

        @property
        def live(self) -> bool: ...


def _nothing() -> None:
    """What a change shown but not made (under --root) does."""


class Action:
    """One change: a sentence saying what it does and the function doing it."""

    __slots__ = ("apply", "summary")

    def __init__(self, summary: str, apply: Callable[[], None]) -> None:
        self.summary: Final = summary
        self.apply: Final = apply


class Plan:
    """What a stage will change, or why it does not apply at all."""

    __slots__ = ("actions", "skip")

    def __init__(self, actions: list[Action] | None = None, skip: str | None = None) -> None:
        self.actions = [] if actions is None else actions
        self.skip = skip

    def add(self, summary: str, apply: Callable[[], None]) -> None:
        self.actions.append(Action(summary, apply))

    def add_running(self, target: Target, summary: str, apply: Callable[[], None]) -> None:
        """A change to the running system (a command, a sysfs write): made when
        ``target`` (a stage's context) is live, only shown under another root."""
        if target.live:
            self.add(summary, apply)
        else:
            self.add(f"{summary} [not run: {target.root} is not the running system]", _nothing)

    @classmethod
    def skipped(cls, reason: str) -> Plan:
        return cls(skip=reason)
