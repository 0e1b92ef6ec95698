"""The stage runner: the one contract every boot stage follows.

A stage executable in stages/ defines ``plan(ctx) -> Plan`` and calls
:func:`main`. The runner parses the common options, loads the configuration,
takes the stage's lock, asks for the plan and applies it, records the result
in ``/run/azagent/stages/<stage>.json`` and maps the outcome to an exit code:

====  ==========================================================
0     done, nothing to do, or skipped (the stage does not apply)
1     expected failure; the reason is logged and recorded
2     usage error
3     unexpected error; the traceback goes to the journal
====  ==========================================================

The exit codes and the result document live in :mod:`azagent.results`, so
that readers of results need not import the runner.

``plan`` only reads and decides. Every change is an :class:`Action` whose
``apply`` runs only when the run is not a dry run. An empty plan means the
system is already as it should be, so a second run changes nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from azagent import config as configuration
from azagent import journal
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.fsutil import (
    arm_crash_points,
    atomic_write,
    crash_point,
    crash_points_passed,
    exclusive_lock,
)
from azagent.plan import Plan
from azagent.redact import redact
from azagent.results import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    STATE_DONE,
    STATE_FAILED,
    STATE_NOTHING,
    STATE_SKIPPED,
    Result,
    result_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, Callable

    PlanFunction = Callable[[Context], Plan]

log = journal.log


def lock_path(root: Path, stage: str) -> Path:
    return root / "run/azagent/lock" / f"{stage}.lock"


LOCK_TIMEOUT_ENV = "AZAGENT_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 30.0


def lock_timeout() -> float:
    """Seconds to wait for another run of the same stage (env AZAGENT_LOCK_TIMEOUT)."""
    try:
        return max(0.0, float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT)))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT


# A test hook, for the crash-consistency tests (tests/test_crash.py) only:
# AZAGENT_TEST_CRASH_AT=N makes the stage SIGKILL itself at the N-th crash
# point it reaches (before each step of its plan, inside atomic writes,
# after each command; azagent.fsutil.crash_point). It is honoured only with
# --root other than /, so no unit (all run with the root /) can turn it on.
CRASH_AT_ENV = "AZAGENT_TEST_CRASH_AT"


def _arm_test_crash(root: Path) -> None:
    value = os.environ.get(CRASH_AT_ENV)
    if value is None:
        return
    if root == Path("/"):
        log.warning("%s is a test hook, ignored when the root is /", CRASH_AT_ENV)
        return
    if not value.isdigit() or int(value) < 1:
        log.warning("%s=%r ignored: not a crash point number", CRASH_AT_ENV, value)
        return
    arm_crash_points(int(value))


def argument_parser(name: str, description: str) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="act on the system image or test tree under DIR instead of / (default: /)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would change and change nothing",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: /etc/waagent.conf under the root); "
        "drop-ins are read from PATH.d/*.conf",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


class Options:
    """The parsed common options (what argparse's Namespace holds for them)."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


_VALUED = {"--root": "root", "--config": "config"}
_FLAGS = {"--dry-run": "dry_run", "-v": "verbose", "--verbose": "verbose"}


def _parse_plain(argv: Sequence[str], flags: dict[str, str]) -> Options | None:
    """The common options when ``argv`` holds only their plain spellings, else None.

    Importing argparse costs a stage a good part of its start-up under
    emulation; the command lines systemd and people use are these few
    spellings. Anything else (--help, an abbreviation, an unknown option, a
    value that looks like an option) goes to argparse, which answers as before.
    """
    values: dict[str, object] = {"root": "/", "config": None}
    values.update(dict.fromkeys(flags.values(), False))
    words = iter(argv)
    for word in words:
        name, equals, value = word.partition("=")
        if name in _VALUED:
            if not equals:
                value = next(words, "-")
            if value.startswith("-"):
                return None
            values[_VALUED[name]] = value
        elif word in flags:
            values[flags[word]] = True
        else:
            return None
    return Options(**values)


def parse_options(
    name: str,
    description: str,
    argv: Sequence[str] | None = None,
    extra_flags: dict[str, str] | None = None,
) -> Any:
    """Parse a stage's command line: the common options plus ``extra_flags``
    (``{"--once": "its help"}``, each stored as a boolean)."""
    extra_flags = extra_flags or {}
    words = sys.argv[1:] if argv is None else list(argv)
    flags = dict(_FLAGS)
    flags.update({flag: flag.lstrip("-").replace("-", "_") for flag in extra_flags})
    plain = _parse_plain(words, flags)
    if plain is not None:
        return plain
    parser = argument_parser(name, description)
    for flag, text in extra_flags.items():
        parser.add_argument(flag, action="store_true", help=text)
    return parser.parse_args(words)


def load_config(root: Path, explicit: str | None) -> configuration.Config:
    if explicit is not None:
        return configuration.load(Path(explicit), required=True)
    return configuration.load(root / configuration.DEFAULT_PATH.lstrip("/"))


def _record(ctx_root: Path, result: Result) -> None:
    try:
        atomic_write(result_path(ctx_root, result.stage), result.to_json(), mode=0o644)
    except OSError as e:
        log.warning("cannot record the result of %s: %s", result.stage, e)


def _log_failure(name: str, reason: str) -> None:
    log.error(
        "%s failed: %s",
        name,
        reason,
        extra={"REASON": reason, "MESSAGE_ID": journal.MESSAGE_STAGE_FAILED},
    )


def main(
    name: str,
    description: str,
    plan: PlanFunction,
    argv: Sequence[str] | None = None,
) -> int:
    """Run one stage from the command line; returns the exit status."""
    args = parse_options(name, description, argv)
    journal.setup(name, verbose=args.verbose)

    root = Path(args.root)
    if not root.is_dir():
        print(f"{name}: --root {args.root}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    root = root.resolve()
    start = time.time()

    def finish(state: str, status: int, reason: str = "", changes: Sequence[str] = ()) -> int:
        if not args.dry_run:
            result = Result.of_run(
                name,
                state,
                start,
                time.time(),
                reason=reason,
                changes=tuple(changes),
                exit_status=status,
            )
            _record(root, result)
        passed = crash_points_passed()
        if passed is not None:  # how the tests learn how many there are
            print(f"azagent test hook: {passed} crash points passed", file=sys.stderr)
        return status

    try:
        config = load_config(root, args.config)
    except AzagentError as e:
        _log_failure(name, e.reason)
        return finish(STATE_FAILED, EXIT_FAILED, e.reason)
    for warning in config.warnings:
        log.warning("%s", warning)
    if config.get_bool("Logs.Verbose") and not args.verbose:
        journal.setup(name, verbose=True)

    ctx = Context(
        stage=name,
        root=root,
        config=config,
        dry_run=args.dry_run,
        verbose=args.verbose,
        config_path=args.config,
    )
    applied: list[str] = []
    try:
        if ctx.dry_run:
            return _dry_run(ctx, plan)
        _arm_test_crash(root)
        with exclusive_lock(lock_path(root, name), timeout=lock_timeout()):
            stage_plan = plan(ctx)
            if stage_plan.skip is not None:
                log.info("skipped: %s", stage_plan.skip, extra={"REASON": stage_plan.skip})
                return finish(STATE_SKIPPED, EXIT_OK, stage_plan.skip)
            if not stage_plan.actions:
                log.info("nothing to do: the system is already as configured")
                return finish(STATE_NOTHING, EXIT_OK, "already as configured")
            for number, action in enumerate(stage_plan.actions, start=1):
                log.info("%s", action.summary)
                crash_point(f"before step {number} of {len(stage_plan.actions)}")
                action.apply()
                applied.append(action.summary)
        log.info(
            "done: %d change(s)",
            len(applied),
            extra={"MESSAGE_ID": journal.MESSAGE_STAGE_DONE},
        )
        return finish(STATE_DONE, EXIT_OK, changes=applied)
    except AzagentError as e:
        _log_failure(name, e.reason)
        return finish(STATE_FAILED, EXIT_FAILED, e.reason, applied)
    except Exception as e:
        reason = f"unexpected error: {type(e).__name__}: {e}"
        log.exception(
            "%s failed: %s",
            name,
            reason,
            extra={"REASON": reason, "MESSAGE_ID": journal.MESSAGE_STAGE_FAILED},
        )
        return finish(STATE_FAILED, EXIT_UNEXPECTED, reason, applied)


def _dry_run(ctx: Context, plan: PlanFunction) -> int:
    stage_plan = plan(ctx)
    out = sys.stdout
    if stage_plan.skip is not None:
        print(f"{ctx.stage}: would skip: {redact(stage_plan.skip)}", file=out)
    elif not stage_plan.actions:
        print(f"{ctx.stage}: nothing to do", file=out)
    else:
        print(f"{ctx.stage}: would:", file=out)
        for action in stage_plan.actions:
            print(f"  - {redact(action.summary)}", file=out)
    return EXIT_OK
