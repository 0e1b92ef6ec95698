"""Every subprocess azagent starts goes through :func:`run`.

One place to enforce the rules: argument lists only (never a shell), a
timeout on everything, a minimal environment, secrets passed on stdin (never
in argv, which every user can read in /proc), and failures turned into a
:class:`~azagent.errors.StageFailed` whose reason names the command, not its
input.
"""

from __future__ import annotations

import os

from azagent.errors import StageFailed
from azagent.fsutil import crash_point
from azagent.journal import log
from azagent.redact import redact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Final, Optional


DEFAULT_TIMEOUT = 60.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Completed:
    __slots__ = ("returncode", "stderr", "stdout")

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode: Final = returncode
        self.stdout: Final = stdout
        self.stderr: Final = stderr


# subprocess and shutil are imported where they are used: most stages that
# import this module decide without running anything, and every stage is a
# fresh process at boot.


def which(name: str) -> Optional[str]:
    import shutil

    return shutil.which(name, path=os.environ.get("PATH", PATH))


def run(
    argv: Sequence[str],
    *,
    stdin: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    env: Optional[dict[str, str]] = None,
    what: Optional[str] = None,
    inherit_output: bool = False,
    cwd: Optional[str] = None,
) -> Completed:
    """Run ``argv`` and return its output; a failure raises StageFailed when ``check``.

    ``stdin`` is where secrets go. ``what`` names the action in the failure
    reason ("create user alice"); the reason carries the command's name and
    its (redacted) stderr, never ``stdin``. ``inherit_output`` passes the
    command's stdout and stderr through (to the journal, under systemd)
    instead of capturing them.
    """
    import subprocess

    if not argv:
        raise ValueError("empty command")
    environment = {"PATH": os.environ.get("PATH", PATH), "LC_ALL": "C"}
    environment.update(env or {})
    name = os.path.basename(argv[0])
    log.debug("running %s", " ".join(argv))
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=not inherit_output,
            stdin=subprocess.DEVNULL if stdin is None else None,
            text=True,
            cwd=cwd,
            timeout=timeout,
            env=environment,
            check=False,
        )
    except FileNotFoundError:
        raise StageFailed(f"{what or name}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise StageFailed(f"{what or name}: {name} did not finish within {timeout:g} s") from None
    # The command made its change; whatever recorded it has not run yet.
    crash_point(f"{name} finished")
    result = Completed(done.returncode, done.stdout or "", done.stderr or "")
    if check and done.returncode != 0:
        errors = result.stderr.strip()
        detail = redact(errors.splitlines()[-1] if errors else "")
        raise StageFailed(
            f"{what or name}: {name} exited with status {done.returncode}"
            + (f": {detail}" if detail else "")
        )
    return result
