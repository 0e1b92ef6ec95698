"""``tools/vmtest``: build the test guest, boot scenarios, report per-scenario timings."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from azvmtest import image, scenarios


def cmd_list(args: argparse.Namespace) -> int:
    for name, function in scenarios.SCENARIOS.items():
        print(f"{name:<15} {(function.__doc__ or '').strip().splitlines()[0]}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    built = image.build(force=args.force)
    print(built.disk)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    names = list(scenarios.SCENARIOS) if args.scenario == ["all"] else args.scenario
    unknown = [n for n in names if n not in scenarios.SCENARIOS]
    if unknown:
        print(f"vmtest: unknown scenario(s): {', '.join(unknown)}; see `tools/vmtest list`", file=sys.stderr)
        return 2
    start = time.monotonic()
    built = image.build()
    print(f"image ready after {time.monotonic() - start:.1f}s", flush=True)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vmtest-"))
    failed: list[str] = []
    for name in names:
        ctx = scenarios.Context(built, workdir / name)
        with scenarios.timed(name):
            try:
                scenarios.SCENARIOS[name](ctx)
                print(f"PASS {name}", flush=True)
            except scenarios.ScenarioFailed as e:
                failed.append(name)
                print(f"FAIL {name}: {e} (evidence in {workdir / name})", flush=True)
    print(f"{len(names) - len(failed)} passed, {len(failed)} failed")
    if not failed and not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vmtest", description="Boot azagent in a Debian guest under qemu.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="name the scenarios").set_defaults(func=cmd_list)
    build = sub.add_parser("build", help="build (or reuse) the guest image")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=cmd_build)
    run = sub.add_parser("run", help="boot scenarios and check them")
    run.add_argument("scenario", nargs="+", help="scenario names, or all")
    run.add_argument("--workdir", help="keep every boot's evidence here")
    run.add_argument("--keep", action="store_true", help="keep the evidence even when all pass")
    run.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
