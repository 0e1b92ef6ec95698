"""``tools/fabric``: run the emulated Azure fabric, write provisioning media, read logs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from azfabric import scenario as scenarios


def _load(path: Optional[str]) -> scenarios.Scenario:
    try:
        return scenarios.load(Path(path) if path else None)
    except (OSError, scenarios.ScenarioError) as e:
        raise SystemExit(f"fabric: {e}") from None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def cmd_init(args: argparse.Namespace) -> int:
    """Materialize a scenario (VM id, keys, certificates) into a directory."""
    scenario = scenarios.materialize(_load(args.scenario))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_private(out / "scenario.json", scenario.to_json())
    for i, key in enumerate(scenario.public_keys):
        if key.private_key:
            _write_private(out / ("id_ed25519" if i == 0 else f"id_ed25519_{i}"), key.private_key)
    print(json.dumps({"scenario": str(out / "scenario.json"), "vm_id": scenario.vm_id}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from azfabric.server import Fabric

    advertise = {}
    for item in args.advertise or []:
        name, _, url = item.partition("=")
        if name not in scenarios.ENDPOINTS or not url.startswith("http://"):
            raise SystemExit(f"fabric: --advertise {item}: expected ENDPOINT=http://HOST:PORT")
        advertise[name] = url.rstrip("/")
    ports = {
        name: port
        for name, port in (
            ("wireserver", args.wireserver_port),
            ("hostgaplugin", args.hostgaplugin_port),
            ("imds", args.imds_port),
            ("blob", args.blob_port),
        )
        if port is not None
    }
    fabric = Fabric(
        _load(args.scenario),
        host=args.host,
        ports=ports,
        advertise=advertise,
        log_path=Path(args.log) if args.log else None,
    )
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        fabric.start()
    except OSError as e:
        raise SystemExit(f"fabric: cannot listen: {e}") from None
    except scenarios.ScenarioError as e:  # a package that cannot be read or is too large
        raise SystemExit(f"fabric: {e}") from None
    first = {**fabric.listening, "vm_id": fabric.scenario.vm_id}
    if advertise:
        first["advertised"] = advertise  # type: ignore[assignment]
    print(json.dumps(first), flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        fabric.stop()
    reports = [
        {"incarnation": r.incarnation, "state": r.state, "substatus": r.substatus}
        for r in fabric.health_reports
    ]
    print(
        json.dumps({"stopped": True, "requests": len(fabric.requests), "health": reports}),
        flush=True,
    )
    return 0


def cmd_media(args: argparse.Namespace) -> int:
    from azfabric import media

    scenario = scenarios.materialize(_load(args.scenario))
    try:
        written = media.write(
            scenario, Path(args.out), formats=args.format or ["dir", "udf", "iso9660"]
        )
    except media.MediaError as e:
        raise SystemExit(f"fabric: {e}") from None
    print(json.dumps({name: str(path) for name, path in written.items()}))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    """Print a request log written by ``serve --log`` (already redacted)."""
    with open(args.file, encoding="utf-8") as f:
        entries = [json.loads(line) for line in f if line.strip()]
    if args.status:
        from azfabric import status

        uploads = [e["status_upload"] for e in entries if e.get("status_upload")]
        if args.json:
            documents = [u["document"] for u in uploads if isinstance(u.get("document"), dict)]
            print(
                json.dumps(
                    {
                        "uploads": len(uploads),
                        "last": uploads[-1] if uploads else None,
                        "handlers": status.latest_by_handler(documents),
                    },
                    indent=2,
                )
            )
        else:
            print("\n".join(status.describe(uploads)))
        return 0
    for entry in entries:
        fault = f" [fault: {entry['fault']}]" if entry.get("fault") else ""
        where = f"{entry['endpoint']:<12} {entry['method']:<4} {entry['path']}"
        print(f"{entry['time']:.3f} {where} -> {entry['status']}{fault}")
        if args.bodies and entry.get("body"):
            print("    " + entry["body"].replace("\n", "\n    "))
    return 0


def cmd_kvp(args: argparse.Namespace) -> int:
    """Decode a Hyper-V KVP pool file (e.g. /var/lib/hyperv/.kvp_pool_1) the agent wrote."""
    from azagent import kvp

    data = Path(args.file).read_bytes()
    try:
        records = kvp.decode_pool(data)
    except ValueError as e:
        raise SystemExit(f"fabric: {args.file}: {e}") from None
    for key, value in records:
        print(f"{key}={value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fabric",
        description="An emulated Azure fabric on loopback: "
        "WireServer, HostGAPlugin, IMDS and a blob store.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the four endpoints until SIGTERM")
    serve.add_argument("--scenario", metavar="FILE", help="scenario file (default: the default VM)")
    serve.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    for name in ("wireserver", "hostgaplugin", "imds", "blob"):
        serve.add_argument(
            f"--{name}-port", type=int, metavar="PORT", help="0 or absent: any free port"
        )
    serve.add_argument(
        "--advertise",
        action="append",
        metavar="ENDPOINT=URL",
        help="URL clients use for an endpoint (e.g. behind a VM's port forward)",
    )
    serve.add_argument(
        "--log", metavar="FILE", help="append every request (redacted) as JSON lines"
    )
    serve.set_defaults(func=cmd_serve)

    init = sub.add_parser("init", help="write a materialized scenario and its private keys")
    init.add_argument("--scenario", metavar="FILE")
    init.add_argument("--out", required=True, metavar="DIR")
    init.set_defaults(func=cmd_init)

    media = sub.add_parser("media", help="write the provisioning media (ovf-env.xml)")
    media.add_argument("--scenario", metavar="FILE")
    media.add_argument("--out", required=True, metavar="DIR")
    media.add_argument(
        "--format",
        action="append",
        choices=("dir", "udf", "iso9660"),
        help="dir, udf, iso9660 (default: all three)",
    )
    media.set_defaults(func=cmd_media)

    log = sub.add_parser("log", help="print a request log")
    log.add_argument("file")
    log.add_argument("--bodies", action="store_true", help="print request bodies too")
    log.add_argument(
        "--status",
        action="store_true",
        help="print the status uploads decoded: the last one, and each handler's latest status",
    )
    log.add_argument("--json", action="store_true", help="with --status: as one JSON document")
    log.set_defaults(func=cmd_log)

    kvp = sub.add_parser("kvp", help="decode a KVP pool file")
    kvp.add_argument("file")
    kvp.set_defaults(func=cmd_kvp)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
