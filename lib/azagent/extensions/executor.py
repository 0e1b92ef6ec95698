"""The contract between the extension handler's loop and what runs a command.

The loop (``service``) decides *what* to run: one :class:`Operation` per
handler command (install, enable, update, disable, uninstall), with its shell
line, directory, environment and timeout. An :class:`Executor` decides *how*:

* ``systemd`` (``azagent.extensions.systemd_executor``): each operation is a
  transient unit in ``azure-vmextensions.slice`` (a sub-slice per handler,
  its CPU quota from HandlerManifest.json), named ``azure-ext-...`` so that
  ``systemctl list-units 'azure-ext-*'`` shows it, running or finished (the
  latest run of each operation of an extension); the timeout stops the
  whole cgroup; the unit survives a restart of the service, which finds it
  with :meth:`Executor.running` instead of starting it twice;
* ``direct`` (``azagent.extensions.direct_executor``): a child process in a
  new session, its process group killed at the timeout; for tests and for
  systems without systemd.

Pure: this module holds types only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional, Protocol

OPERATIONS = ("install", "enable", "update", "disable", "uninstall")


@dataclass(frozen=True)
class Operation:
    """One handler command to run, as root, unconfined."""

    handler: str  # the handler's name (checked by extensions.naming)
    version: str
    operation: str  # one of OPERATIONS
    shell_line: str  # run through /bin/sh -c
    cwd: str  # the handler directory (absolute, on the target system)
    environment: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 300.0
    extension: Optional[str] = None  # the extension name of a multi-config handler
    sequence: int = 0
    cpu_quota_percent: Optional[int] = None  # resourceLimits.cpuQuotaPercentage
    log_dir: Optional[str] = None  # /var/log/azure/<Name>: CommandExecution.log goes there

    @property
    def key(self) -> str:
        """What identifies the operation across restarts (and names its unit)."""
        parts = [self.handler, self.version, self.operation, str(self.sequence)]
        if self.extension:
            parts.insert(1, self.extension)
        return "_".join(parts)


@dataclass(frozen=True)
class Outcome:
    """How an operation ended."""

    operation: Operation
    exit_status: Optional[int]  # None when it was killed (timeout) or could not start
    timed_out: bool = False
    duration: float = 0.0
    output: str = ""  # the first characters of stdout and stderr, for the status message
    unit: Optional[str] = None  # the transient unit's name (systemd executor)
    reason: str = ""  # why it failed to start or was killed, for people

    @property
    def succeeded(self) -> bool:
        return self.exit_status == 0 and not self.timed_out


class Executor(Protocol):
    def run(self, operation: Operation) -> Outcome:
        """Run ``operation`` to its end (or its timeout) and say how it ended.

        Never raises for the command's own failure (non-zero exit, timeout,
        missing file): that is an :class:`Outcome`. Raises
        ``azagent.errors.AzagentError`` only when the executor itself cannot
        work (systemd unreachable), with a reason.
        """
        ...

    def running(self) -> Sequence[str]:
        """The keys of operations still in flight from an earlier run of the service."""
        ...

    def wait(self, key: str, timeout: float) -> Optional[Outcome]:
        """Wait for an in-flight operation found by :meth:`running`; None if it is unknown."""
        ...

    def discard(self, handler: str) -> None:
        """Let go of what is kept of ``handler``'s finished operations (its units).

        For a handler uninstalled or gone from the goal state; never stops a
        command still running, never raises.
        """
        ...
