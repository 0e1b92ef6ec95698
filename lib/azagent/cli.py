"""The ``azagent`` command: run a stage by hand, show status and configuration.

WALinuxAgent's spellings (``-help``, ``-version``, ``-deprovision+user``, ...)
are accepted too and mapped to their azagent equivalents, so that scripts and
habits written for ``waagent`` keep working.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from azagent import __version__, catalog
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.results import EXIT_FAILED, EXIT_OK, EXIT_USAGE, read_result
from azagent.stage import load_config
from azagent.units import find_stage, skipped_on_condition, unit_state

# waagent flag -> azagent words. Flags that only modify another command.
_WAAGENT_MODIFIERS = {"-verbose": "--verbose", "-force": "--force", "-full": "--full"}
_WAAGENT_COMMANDS = {
    "-help": ["help"],
    "-version": ["version"],
    "-show-configuration": ["show-configuration"],
    "-deprovision": ["deprovision"],
    "-deprovision+user": ["deprovision", "--user"],
    "-serialconsole": ["serialconsole"],
    "-collect-logs": ["collect-logs"],
    "-daemon": ["daemon"],
    "-start": ["start"],
}

_NO_DAEMON = (
    "azagent has no resident daemon: systemd runs its boot stages (azure-*.service);"
    " see 'azagent status'"
)


def translate_waagent_args(argv: Sequence[str]) -> list[str]:
    """Rewrite waagent-style arguments into azagent's; others pass through."""
    command: list[str] = []
    rest: list[str] = []
    for arg in argv:
        if arg in _WAAGENT_COMMANDS and not command:
            command = list(_WAAGENT_COMMANDS[arg])
        elif arg in _WAAGENT_MODIFIERS:
            rest.append(_WAAGENT_MODIFIERS[arg])
        else:
            rest.append(arg)
    return command + rest


def cmd_run(args: argparse.Namespace) -> int:
    info = catalog.STAGES_BY_NAME.get(args.stage)
    if info is None:
        known = ", ".join(stage.name for stage in catalog.STAGES)
        print(f"azagent: unknown stage {args.stage!r} (stages: {known})", file=sys.stderr)
        return EXIT_USAGE
    path = find_stage(info.name)
    if path is None:
        print(f"azagent: the executable of stage {info.name} is not installed", file=sys.stderr)
        return EXIT_FAILED
    command = [sys.executable, str(path), *args.stage_args]
    # Replace this process, so the stage's exit status and signals are the caller's.
    os.execv(sys.executable, command)  # noqa: S606 - argv list, no shell


SKIPPED_BY_SYSTEMD = "condition-failed"


def status_rows(root: Path, live: bool | None = None) -> list[dict[str, str]]:
    """One row per stage. On the running system (``live``: root is /) a stage
    without a result that systemd skipped on a failed start condition says so."""
    live = root == Path("/") if live is None else live
    skipped = skipped_on_condition([info.unit for info in catalog.STAGES]) if live else set()
    rows = []
    for info in catalog.STAGES:
        result = read_result(root, info.name)
        duration = None if result is None else result.duration_ms
        state, reason = ("", "") if result is None else (result.state, result.reason)
        if result is None and info.unit in skipped:
            state = SKIPPED_BY_SYSTEMD
            reason = f"systemd skipped it: a start condition failed (systemctl status {info.unit})"
        rows.append(
            {
                "stage": info.name,
                "unit": unit_state(root, info.unit),
                "result": state or "never-ran",
                "ended": "" if result is None else result.ended,
                "duration": "" if duration is None else f"{duration / 1000:.3f}s",
                "reason": reason,
            }
        )
    return rows


def status_table(rows: list[dict[str, str]]) -> str:
    headers = ["stage", "unit", "result", "duration", "ended", "reason"]
    widths = {h: max(len(h), *(len(row[h]) for row in rows)) for h in headers}
    lines = ["  ".join(h.upper().ljust(widths[h]) for h in headers).rstrip()]
    for row in rows:
        lines.append("  ".join(row[h].ljust(widths[h]) for h in headers).rstrip())
    return "\n".join(lines) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    rows = status_rows(root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    sys.stdout.write(status_table(rows))
    failed = [row["stage"] for row in rows if row["result"] == "failed"]
    return EXIT_FAILED if failed else EXIT_OK


def cmd_show_configuration(args: argparse.Namespace) -> int:
    ctx = _context(args, "show-configuration")
    if ctx is None:
        return EXIT_FAILED
    sys.stdout.write(ctx.config.render())
    return EXIT_OK


def cmd_deprovision(args: argparse.Namespace) -> int:
    from azagent import deprovision

    ctx = _context(args, "deprovision")
    if ctx is None:
        return EXIT_FAILED
    root = ctx.root
    plan, notes = deprovision.plan(ctx, user=args.user)
    what = "deprovision+user" if args.user else "deprovision"
    print(f"{what} of {root} will:" if plan.actions else f"{what}: nothing to do on {root}")
    for action in plan.actions:
        print(f"  - {action.summary}")
    for note in notes:
        print(f"note: {note}")
    if not plan.actions or args.dry_run:
        return EXIT_OK
    if not args.force:
        if not sys.stdin.isatty():
            print("azagent: not a terminal: pass --force to proceed", file=sys.stderr)
            return EXIT_FAILED
        answer = input("Do you want to proceed (y/n)? ").strip().lower()
        if answer not in ("y", "yes"):
            print("azagent: nothing was changed")
            return EXIT_FAILED
    try:
        for action in plan.actions:
            action.apply()
    except AzagentError as e:
        print(f"azagent: {what} failed: {e.reason}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{what}: done")
    return EXIT_OK


def _context(args: argparse.Namespace, command: str) -> Context | None:
    """The context of a command acting on --root, or None (reported) on a bad configuration."""
    root = Path(args.root).resolve()
    try:
        config = load_config(root, args.config)
    except AzagentError as e:
        print(f"azagent: {e.reason}", file=sys.stderr)
        return None
    for warning in config.warnings:
        print(f"azagent: warning: {warning}", file=sys.stderr)
    return Context(stage=command, root=root, config=config, dry_run=getattr(args, "dry_run", False))


def cmd_serialconsole(args: argparse.Namespace) -> int:
    from azagent import grub

    ctx = _context(args, "serialconsole")
    if ctx is None:
        return EXIT_FAILED
    wanted = " ".join(grub.SERIAL_CONSOLE_ARGS)
    try:
        plan, notes = grub.serial_console_plan(ctx)
    except AzagentError as e:
        print(f"azagent: serialconsole: {e.reason}", file=sys.stderr)
        return EXIT_FAILED
    if not plan.actions:
        print(f"serialconsole: nothing to do: the kernel command line of {ctx.root} has {wanted}")
    else:
        print(f"serialconsole on {ctx.root}{' (dry run)' if ctx.dry_run else ''} will:")
        for action in plan.actions:
            print(f"  - {action.summary}")
    if plan.actions and not ctx.dry_run:
        try:
            for action in plan.actions:
                action.apply()
        except AzagentError as e:
            print(f"azagent: serialconsole failed: {e.reason}", file=sys.stderr)
            return EXIT_FAILED
    for note in notes:
        print(f"note: {note}")
    if plan.actions and not ctx.dry_run:
        print("serialconsole: done: from the next boot the kernel logs to ttyS0")
    return EXIT_OK


def cmd_collect_logs(args: argparse.Namespace) -> int:
    from azagent import logcollect

    ctx = _context(args, "collect-logs")
    if ctx is None:
        return EXIT_FAILED
    output = Path(args.output).absolute() if args.output else None
    extra = {
        "azagent/status.txt": status_table(status_rows(ctx.root)),
        "azagent/configuration.txt": "".join(
            f"# warning: {warning}\n" for warning in ctx.config.warnings
        )
        + ctx.config.render(),
    }
    try:
        archive = logcollect.collect_logs(ctx, output, extra)
    except (AzagentError, OSError) as e:
        reason = e.reason if isinstance(e, AzagentError) else f"{e.filename}: {e.strerror or e}"
        print(f"azagent: collect-logs failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    for note in archive.notes:
        print(f"note: {note}")
    print(
        f"collect-logs: wrote {archive.path} ({len(archive.entries)} files, {archive.size} bytes,"
        " readable by root only)"
    )
    return EXIT_OK


def extensions_report(ctx: Context) -> dict[str, object]:
    """What the extension handler recorded (its state file under Lib.Dir): no network."""
    from azagent.extensions import state as extension_state

    found = extension_state.load(ctx.lib_dir)
    handlers = []
    for record in found.handlers.values():
        for entry in record.extensions.values() or [None]:
            last = entry.last if entry is not None else None
            handlers.append(
                {
                    "handler": record.name,
                    "extension": entry.name if entry is not None and record.multi_config else None,
                    "version": record.version,
                    "state": entry.state if entry is not None else record.state,
                    "sequence_number": entry.seq_no if entry is not None else None,
                    "status": entry.status if entry is not None else None,
                    "message": record.error or (entry.message if entry is not None else None),
                    "last_operation": None
                    if last is None
                    else {
                        "operation": last.operation,
                        "exit_status": last.exit_status,
                        "timed_out": last.timed_out,
                        "duration": last.duration,
                        "unit": last.unit,
                        "ended": last.ended,
                    },
                }
            )
    return {
        "state_unreadable": found.unknown,
        "goal_state": {
            "id": found.goal_state_id,
            "incarnation": found.incarnation,
            "etag": found.etag,
            "channel": found.channel,
            "acted_on": found.acted,
        },
        "last_upload": found.last_upload,
        "last_upload_via": found.last_upload_via,
        "handlers": handlers,
    }


def _one_line(text: object, limit: int = 60) -> str:
    shown = " ".join(str(text or "").split())
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def cmd_extensions(args: argparse.Namespace) -> int:
    ctx = _context(args, "extensions")
    if ctx is None:
        return EXIT_FAILED
    report = extensions_report(ctx)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    goal = report["goal_state"]
    assert isinstance(goal, dict)
    print(
        f"goal state: {goal['id'] or 'none acted on yet'}"
        f" (incarnation {goal['incarnation']}, etag {goal['etag']}) at {goal['acted_on']}"
    )
    print(f"last status upload: {report['last_upload'] or 'never'} ({report['last_upload_via']})")
    rows = [
        [
            "HANDLER",
            "VERSION",
            "STATE",
            "SEQ",
            "LAST OPERATION",
            "UNIT",
            "STATUS",
            "MESSAGE",
        ]
    ]
    handlers = report["handlers"]
    assert isinstance(handlers, list)
    for row in handlers:
        last = row["last_operation"]
        operation = ""
        if last is not None:
            ended = "timeout" if last["timed_out"] else f"exit {last['exit_status']}"
            operation = f"{last['operation']} ({ended}, {last['duration']:.1f}s)"
        name = row["handler"] + (f"/{row['extension']}" if row["extension"] else "")
        rows.append(
            [
                name,
                str(row["version"] or "-"),
                str(row["state"]),
                "-" if row["sequence_number"] is None else str(row["sequence_number"]),
                operation or "-",
                str(last["unit"] if last is not None and last["unit"] else "-"),
                str(row["status"] or "-"),
                _one_line(row["message"]),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip())
    if report["state_unreadable"]:
        print("azagent: the extension state file is unreadable", file=sys.stderr)
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    print(f"azagent {__version__}")
    print(f"Python {sys.version.split()[0]}")
    return EXIT_OK


def cmd_no_daemon(args: argparse.Namespace) -> int:
    print(f"azagent: {args.command}: {_NO_DAEMON}", file=sys.stderr)
    return EXIT_FAILED


def _root_options(parser: argparse.ArgumentParser) -> None:
    """--root and --config, as every command acting on a system (or image tree) takes them."""
    parser.add_argument("--root", default="/", metavar="DIR", help="an image tree instead of /")
    parser.add_argument(
        "--config", metavar="PATH", help="configuration file (default: /etc/waagent.conf)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="azagent",
        description="Azure Linux guest agent: one-shot boot stages run by systemd.",
        epilog="waagent spellings (-help, -version, -show-configuration, -deprovision, "
        "-deprovision+user, -serialconsole, -collect-logs [-full], -daemon, -start, -verbose, "
        "-force) are accepted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run one boot stage by hand",
        description="Run one boot stage now, as its unit would. The stage's own options "
        "(--root DIR, --dry-run, --config PATH, -v) follow its name.",
    )
    run.add_argument("stage", help="stage name, e.g. " + catalog.STAGES[0].name)
    run.add_argument("stage_args", nargs=argparse.REMAINDER, help="options for the stage")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="each stage's unit state and last result")
    status.add_argument("--root", default="/", metavar="DIR")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    show = sub.add_parser(
        "show-configuration", help="every configuration key, its value and origin"
    )
    _root_options(show)
    show.set_defaults(func=cmd_show_configuration)

    deprovision = sub.add_parser(
        "deprovision",
        help="clean the VM so that its image provisions again (waagent -deprovision)",
        description="Delete SSH host keys (when configured), nameserver configuration, the "
        "root password (when configured), DHCP leases, the hostname and azagent's state; "
        "with --user also the last provisioned user and its home.",
    )
    deprovision.add_argument(
        "--user", action="store_true", help="also delete the last provisioned user"
    )
    deprovision.add_argument("--force", action="store_true", help="do not ask for confirmation")
    _root_options(deprovision)
    deprovision.add_argument("--dry-run", action="store_true", help="only print what would be done")
    deprovision.set_defaults(func=cmd_deprovision)

    serial = sub.add_parser(
        "serialconsole",
        help="send the kernel's console to ttyS0 through GRUB (waagent -serialconsole)",
        description="Add console=ttyS0 earlyprintk=ttyS0 to GRUB_CMDLINE_LINUX in "
        "/etc/default/grub and regenerate GRUB's configuration (grubby on RHEL-like systems, "
        "else update-grub or grub2-mkconfig); under --root, print how to regenerate it.",
    )
    _root_options(serial)
    serial.add_argument("--dry-run", action="store_true", help="only print what would be done")
    serial.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    serial.set_defaults(func=cmd_serialconsole)

    collect = sub.add_parser(
        "collect-logs",
        help="zip azagent's journal, state and system facts for support (waagent -collect-logs)",
        description="Write a zip, readable by root only, of the journal of the azure-* units, "
        "the extension handler's journal and the extensions' logs (/var/log/azure/<Name>/), "
        "the stage results, status, configuration and system facts, every text redacted. "
        "Nothing from Lib.Dir (keys, certificates, customData) is collected.",
    )
    collect.add_argument(
        "--output",
        metavar="PATH",
        help="where to write the zip (default: <Lib.Dir>/logcollector/logs.zip under the root)",
    )
    _root_options(collect)
    collect.add_argument(
        "--full",
        action="store_true",
        help="accepted for waagent's -full; azagent always collects the same set",
    )
    collect.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    collect.set_defaults(func=cmd_collect_logs)

    extensions = sub.add_parser(
        "extensions",
        help="each VM extension's version, state and last operation",
        description="Every extension handler the extension handler service knows: version, "
        "state, sequence number, last operation (exit status, duration, unit), status "
        "message; the goal state acted on and the last status upload. Reads the service's "
        "state file under Lib.Dir; no network.",
    )
    _root_options(extensions)
    extensions.add_argument("--json", action="store_true", help="machine-readable output")
    extensions.set_defaults(func=cmd_extensions)

    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    sub.add_parser("help", help="print this help").set_defaults(func=None)

    for command in ("daemon", "start"):
        sub.add_parser(command, help="(waagent only) there is no daemon").set_defaults(
            func=cmd_no_daemon
        )

    for p in [parser, *sub.choices.values()]:
        if p.prog != "azagent run":
            p.add_argument("--verbose", "-v", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = translate_waagent_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command is None or args.func is None:
        parser.print_help()
        return EXIT_OK if args.command == "help" else EXIT_USAGE
    result: int = args.func(args)
    return result
