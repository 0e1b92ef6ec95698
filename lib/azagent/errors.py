"""The error types the library raises.

Library code raises one of these with a short, fixed reason phrase; only the
runner and the CLI turn them into exit codes, result files and reports.
"""

from __future__ import annotations

from contextlib import ContextDecorator
from types import TracebackType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


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


# What hostile input can make Python itself raise inside a parser: a bad
# conversion (ValueError, UnicodeError), a member missing or of the wrong type
# (KeyError, IndexError, TypeError, AttributeError), a number too large
# (OverflowError, ArithmeticError), nesting too deep (RecursionError).
INPUT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ArithmeticError,
    RecursionError,
)


class refusing(ContextDecorator):
    """Make a parser's unforeseen failures on hostile input its own error type.

    Used on every public parser of input from outside the agent (as a
    decorator or a ``with`` block), so that whatever a document holds, only an
    :class:`AzagentError` leaves the parser: the runner then fails the stage
    with exit status 1 and a reason, instead of 3 and a traceback. The reason
    names the document and the kind of problem, never the exception's text,
    which may quote the input (a password, customData).
    """

    def __init__(self, error: type[AzagentError], what: str) -> None:
        self.error = error
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        if value is None or isinstance(value, AzagentError):
            return
        if isinstance(value, RecursionError):
            raise self.error(f"{self.what}: nested too deeply") from None
        if isinstance(value, INPUT_ERRORS):
            raise self.error(
                f"{self.what}: holds a value that cannot be read ({type(value).__name__})"
            ) from None
