"""The error types the library raises.

Library code raises one of these with a short, fixed reason phrase; only the
runner and the CLI turn them into exit codes, result files and reports.
"""

from __future__ import annotations


class AzagentError(Exception):
    """An expected failure: the message is a reason an operator can act on."""

    @property
    def reason(self) -> str:
        return str(self)


class ConfigError(AzagentError):
    """waagent.conf (or a drop-in) could not be read or holds a bad value."""


class StageFailed(AzagentError):
    """A stage could not do its job for a reason it understands."""


class UsageError(AzagentError):
    """The command line was wrong."""


class LockBusy(AzagentError):
    """Another run of the same stage holds its lock."""
