"""``tools/vmtest``: build the test guest, boot scenarios, report per-scenario timings."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from azvmtest import image, scenarios


def _deb(args: argparse.Namespace) -> Optional[Path]:
    if not getattr(args, "deb", None):
        return None
    deb = Path(args.deb).resolve()
    if not deb.is_file():
        print(f"vmtest: --deb {args.deb}: no such file", file=sys.stderr)
        raise SystemExit(2)
    return deb


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < 86400:
        raise argparse.ArgumentTypeError(f"out of range (0 to 86400 seconds): {text!r}")
    return value


def cmd_list(args: argparse.Namespace) -> int:
    for name, function in scenarios.SCENARIOS.items():
        print(f"{name:<15} {(function.__doc__ or '').strip().splitlines()[0]}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    built = image.build(force=args.force, deb=_deb(args))
    print(built.disk)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    names = list(scenarios.SCENARIOS) if args.scenario == ["all"] else args.scenario
    unknown = [n for n in names if n not in scenarios.SCENARIOS]
    if unknown:
        print(
            f"vmtest: unknown scenario(s): {', '.join(unknown)}; see `tools/vmtest list`",
            file=sys.stderr,
        )
        return 2
    start = time.monotonic()
    built = image.build(deb=_deb(args))
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Boot the default scenario and show what happened, as a person would look at it."""
    from azvmtest.boot import BootSpec, run_boot

    start = time.monotonic()
    built = image.build(deb=_deb(args))
    print(f"== guest image ready after {time.monotonic() - start:.1f}s ({built.disk})", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="azagent-demo-"))
    scenario = scenarios.default_scenario()
    print("== booting a Debian 12 guest under qemu against the emulated Azure fabric", flush=True)
    result = run_boot(built, BootSpec("demo", scenario, ssh=True), workdir / "demo")
    ready = f"{result.ready_after:.1f}s" if result.ready_after is not None else "never"
    print(f"\n== systemctl status 'azure-*', as the guest printed it (Ready after {ready})\n")
    print(result.text("status.txt"))
    print("== the emulator's record of the health report(s)\n")
    for request in result.fabric.requests:
        if "comp=health" in request.path:
            printable = request.printable()
            print(f"{request.method} {printable['path']} -> {request.status}")
            print(printable["body"] + "\n")
    print(f"== SSH login as {scenario.username} with the provisioned key\n")
    print(f"$ ssh -i id_ed25519 {scenario.username}@vm 'id; hostname; sudo -n true'")
    print(result.ssh_output.strip() or "(no output)")
    ok = bool(result.fabric.health_reports) and result.fabric.health_reports[0].state == "Ready"
    ok = ok and result.ssh_status == 0
    print(
        f"\n== {'Ready reported and SSH login worked' if ok else 'FAILED'}; the guest powered off"
    )
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"evidence kept in {workdir}")
    return 0 if ok else 1


def cmd_boot(args: argparse.Namespace) -> int:
    """Boot once with the user's scenario; exit 0 when the boot finished and Ready was reported."""
    from azvmtest import userboot

    try:
        scenario = userboot.load_scenario(Path(args.scenario))
        out = Path(args.out).absolute()
        userboot.prepare_out(out)
        deb = _deb(args)
        built = image.build(deb=deb)
        judged = userboot.boot(
            built,
            scenario,
            out,
            timeout=args.timeout,
            up_for=args.up_for,
            kernel_args=tuple(args.kernel_arg or ()),
        )
    except userboot.BootError as e:
        print(f"vmtest: {e}", file=sys.stderr)
        return 2
    if judged.ok:
        print(f"vmtest: PASS: {judged.line}")
        return 0
    print(f"vmtest: FAIL: {judged.line}", file=sys.stderr)
    return 1


def cmd_bench(args: argparse.Namespace) -> int:
    from azvmtest import bench

    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    json_path = Path(args.json) if args.json else None
    return bench.main(agents, args.boots, json_path, _deb(args), args.idle)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vmtest", description="Boot azagent in a Debian guest under qemu."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="name the scenarios").set_defaults(func=cmd_list)
    demo = sub.add_parser("demo", help="boot the default scenario and show it")
    demo.set_defaults(func=cmd_demo)
    build = sub.add_parser("build", help="build (or reuse) the guest image")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=cmd_build)
    run = sub.add_parser("run", help="boot scenarios and check them")
    run.add_argument("scenario", nargs="+", help="scenario names, or all")
    run.add_argument("--workdir", help="keep every boot's evidence here")
    run.add_argument("--keep", action="store_true", help="keep the evidence even when all pass")
    run.set_defaults(func=cmd_run)
    boot = sub.add_parser(
        "boot",
        help="boot once with a scenario file of your own; exit 0 when Ready was reported",
        description="Boot the guest once against the emulator with SCENARIO (the file "
        "`tools/fabric serve --scenario` reads) and leave in DIR what the guest collected "
        "(share/), its console, the emulator's request log and the decoded status uploads. "
        "Exit 0 when the boot finished and Ready was reported, 1 with one line saying why "
        "not, 2 when the boot could not start.",
    )
    boot.add_argument("--scenario", required=True, metavar="FILE", help="scenario file (JSON)")
    boot.add_argument("--out", required=True, metavar="DIR", help="an empty or new directory")
    boot.add_argument(
        "--timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="how long the boot may take to finish (default 300)",
    )
    boot.add_argument(
        "--up-for",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="keep the guest running this long after the boot finished, before it collects "
        "(extensions, timeline events)",
    )
    boot.add_argument(
        "--kernel-arg",
        action="append",
        metavar="ARG",
        help="add to the guest's kernel command line (repeatable), e.g. "
        "systemd.mask=azure-extensions.service",
    )
    boot.set_defaults(func=cmd_boot)
    bench = sub.add_parser(
        "bench", help="boot azagent, cloud-init, waagent and no agent side by side; time them"
    )
    bench.add_argument("--boots", type=int, default=3, help="rounds of interleaved boots")
    bench.add_argument(
        "--agents", default="azagent,cloud-init,waagent,none", help="comma-separated, in order"
    )
    bench.add_argument("--json", metavar="FILE", help="write the medians per agent here")
    bench.add_argument(
        "--idle",
        type=_seconds,
        metavar="SECONDS",
        help="azagent and waagent boot with one enabled extension; once it reported success, "
        "measure the extension handler's RSS, CPU and requests over SECONDS (default: off)",
    )
    bench.set_defaults(func=cmd_bench)
    for command in (build, run, demo, boot, bench):
        command.add_argument(
            "--deb", metavar="FILE", help="install this azagent package instead of building one"
        )
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
