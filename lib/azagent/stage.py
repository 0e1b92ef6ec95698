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

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from azagent import config as configuration
from azagent import journal
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.fsutil import atomic_write, exclusive_lock
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

log = journal.log


PlanFunction = Callable[[Context], Plan]


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


def argument_parser(name: str, description: str) -> argparse.ArgumentParser:
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
    args = argument_parser(name, description).parse_args(argv)
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
        with exclusive_lock(lock_path(root, name), timeout=lock_timeout()):
            stage_plan = plan(ctx)
            if stage_plan.skip is not None:
                log.info("skipped: %s", stage_plan.skip, extra={"REASON": stage_plan.skip})
                return finish(STATE_SKIPPED, EXIT_OK, stage_plan.skip)
            if not stage_plan.actions:
                log.info("nothing to do: the system is already as configured")
                return finish(STATE_NOTHING, EXIT_OK, "already as configured")
            for action in stage_plan.actions:
                log.info("%s", action.summary)
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
