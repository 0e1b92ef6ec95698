"""The "direct" executor: each operation a child process of the service.

For tests and for systems without systemd. ``/bin/sh -c <shell_line>`` runs
in the handler directory with exactly the contract's environment (plus
``PATH``), stdin from /dev/null, stdout and stderr into files in the
handler's log folder, in a new session. At the timeout the whole process
group is killed (SIGKILL).

A child that calls ``setsid`` (or ``setpgid``) leaves the group and escapes
that kill, exactly as under WALinuxAgent: only a cgroup holds every
descendant, which is why the systemd executor (a transient unit per
operation, the timeout killing its cgroup) is the production backend.

Nothing is kept across restarts: :meth:`DirectExecutor.running` is empty and
:meth:`DirectExecutor.wait` knows no operation. System floor: runs processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from azagent.extensions.executor import Operation, Outcome
from azagent.system import PATH

# What of stdout and of stderr goes into the status message and CommandExecution.log.
OUTPUT_LIMIT = 3200
COMMAND_LOG = "CommandExecution.log"
# After the kill, how long to wait for the shell to be reaped.
_REAP = 5.0


def output_files(operation: Operation, log_dir: Path) -> tuple[Path, Path]:
    """Where an operation's stdout and stderr go."""
    stem = f"{operation.operation}.{operation.sequence}"
    if operation.extension:
        stem = f"{operation.extension}.{stem}"
    return log_dir / f"{stem}.stdout", log_dir / f"{stem}.stderr"


def head(path: Path, limit: int = OUTPUT_LIMIT) -> str:
    """The first ``limit`` characters of a file (invalid UTF-8 replaced)."""
    try:
        with path.open("rb") as f:
            data = f.read(limit * 4)
    except OSError:
        return ""
    return data.decode("utf-8", "replace")[:limit]


def summary(stdout: str, stderr: str) -> str:
    """The output part of a status message, as WALinuxAgent formats it."""
    return f"[stdout]\n{stdout}\n\n[stderr]\n{stderr}"


def append_command_log(log_dir: Path, operation: Operation, outcome: Outcome) -> None:
    """One entry in ``CommandExecution.log``: the command, how it ended, its output head."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if outcome.timed_out:
        ending = f"killed after {operation.timeout:g} s (timeout)"
    elif outcome.exit_status is None:
        ending = f"did not run: {outcome.reason}"
    else:
        ending = f"exit status {outcome.exit_status}"
    entry = (
        f"{when} {operation.key}: {operation.shell_line}\n"
        f"{ending}, {outcome.duration:.1f} s\n{outcome.output}\n\n"
    )
    with suppress(OSError):
        log_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(
            log_dir / COMMAND_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600
        )
        with os.fdopen(fd, "a", encoding="utf-8", errors="replace") as f:
            f.write(entry)


class DirectExecutor:
    """Runs operations as children of the calling process (see the module docstring).

    ``log_root`` is where a handler's log folder is when an operation names
    none (its ``log_dir``); ``path`` the PATH commands get.
    """

    def __init__(self, *, log_root: Path = Path("/var/log/azure"), path: str = PATH) -> None:
        self.log_root = log_root
        self.path = path

    def environment(self, operation: Operation) -> dict[str, str]:
        return {"PATH": self.path, **operation.environment}

    def run(self, operation: Operation) -> Outcome:
        log_dir = (
            Path(operation.log_dir) if operation.log_dir else self.log_root / operation.handler
        )
        start = time.monotonic()
        try:
            log_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            stdout_path, stderr_path = output_files(operation, log_dir)
            with _truncated(stdout_path) as out, _truncated(stderr_path) as err:
                child = subprocess.Popen(
                    ["/bin/sh", "-c", operation.shell_line],
                    cwd=operation.cwd,
                    env=self.environment(operation),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
        except (OSError, ValueError) as e:  # ValueError: a NUL in the command or environment
            problem = e.strerror if isinstance(e, OSError) else None
            outcome = Outcome(
                operation,
                exit_status=None,
                duration=time.monotonic() - start,
                reason=f"cannot start the command: {problem or type(e).__name__}",
            )
            append_command_log(log_dir, operation, outcome)
            return outcome
        timed_out = False
        try:
            status: Optional[int] = child.wait(timeout=max(operation.timeout, 0.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                child.wait(timeout=_REAP)
            status = None
        duration = time.monotonic() - start
        output = summary(head(stdout_path), head(stderr_path))
        if status is not None and status < 0:
            reason = f"killed by signal {-status}"
            status = None
        elif timed_out:
            reason = f"timed out after {operation.timeout:g} s: its process group was killed"
        else:
            reason = ""
        outcome = Outcome(
            operation,
            exit_status=status,
            timed_out=timed_out,
            duration=duration,
            output=output,
            reason=reason,
        )
        append_command_log(log_dir, operation, outcome)
        return outcome

    def running(self) -> Sequence[str]:
        return ()

    def wait(self, key: str, timeout: float) -> Optional[Outcome]:
        return None

    def discard(self, handler: str) -> None:
        return None


class _truncated:
    """A file opened for writing from empty, 0600, never through a link."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
