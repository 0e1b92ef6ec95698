"""A plan: what a stage (or a command such as deprovision) will change.

Kept apart from the runner so that system modules can build actions
without depending on it (imports only point down).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Action:
    """One change: a sentence saying what it does and the function doing it."""

    summary: str
    apply: Callable[[], None]


@dataclass
class Plan:
    """What a stage will change, or why it does not apply at all."""

    actions: list[Action] = field(default_factory=list)
    skip: str | None = None

    def add(self, summary: str, apply: Callable[[], None]) -> None:
        self.actions.append(Action(summary, apply))

    @classmethod
    def skipped(cls, reason: str) -> Plan:
        return cls(skip=reason)
