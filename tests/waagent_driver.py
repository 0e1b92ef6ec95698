"""Drive WALinuxAgent's own WireServer client against the fabric emulator.

Run by tests/test_reference_client.py in a subprocess, with PYTHONPATH set to
an extracted Debian ``waagent`` package (tools/fetch-waagent) and Debian's
python3, the interpreter that package is built for:

    waagent_driver.py --endpoint 127.0.0.1:PORT --workdir DIR --out RESULT.json

Everything waagent writes goes under DIR: its configuration file, its lib
directory (transport certificate, goal state, ``<THUMBPRINT>.crt``/``.prv``)
and its log. Nothing here speaks the protocol: each step calls waagent's
public protocol API and records what came back, or the exception, in
RESULT.json for the test to judge.

Safety: before waagent is imported, every socket connection to an address
other than loopback is refused inside this process (and recorded), so a code
path that reaches for 168.63.129.16 or 169.254.169.254 fails instead. A
SIGALRM watchdog bounds the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

LOOPBACK = ("127.0.0.1", "::1", "localhost")
blocked: list[str] = []


def _guard(connect: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0])
            if host not in LOOPBACK and not host.startswith("127."):
                blocked.append(f"{host}:{address[1]}")
                raise ConnectionRefusedError(f"waagent_driver: connection to {host} blocked")
        return connect(self, address)

    return guarded


def block_non_loopback() -> None:
    socket.socket.connect = _guard(socket.socket.connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = _guard(socket.socket.connect_ex)  # type: ignore[method-assign]


class Watchdog(Exception):
    """The run took longer than --timeout."""


timed_out = False


def on_alarm(signum: int, frame: object) -> None:
    global timed_out
    if timed_out:  # waagent swallowed the first one and went on: stop hard
        os._exit(3)
    timed_out = True
    signal.alarm(10)  # grace for writing the result
    raise Watchdog("the driver's time limit ran out")


def write_conf(workdir: Path, fast_track: bool) -> Path:
    """A waagent.conf that keeps every path waagent touches inside workdir."""
    lib = workdir / "lib"
    lib.mkdir(mode=0o700, exist_ok=True)
    settings = {
        "Lib.Dir": lib,
        "Pid.File": workdir / "waagent.pid",
        "Extension.LogDir": workdir / "extension-logs",
        "OS.SshDir": workdir / "ssh",
        "OS.HomeDir": workdir / "home",
        "OS.PasswordPath": workdir / "shadow",
        "OS.SudoersDir": workdir / "sudoers.d",
        "DVD.MountPoint": workdir / "dvd",
        "ResourceDisk.MountPoint": workdir / "resource",
        "OS.OpensslPath": "openssl",
        "Logs.Verbose": "y",
        "Logs.Console": "n",
        "Logs.Collect": "n",
        "OS.EnableFirewall": "n",
        "Extensions.Enabled": "n",
        "AutoUpdate.Enabled": "n",
        "Provisioning.Agent": "disabled",
        "Debug.EnableFastTrack": "y" if fast_track else "n",
    }
    path = workdir / "waagent.conf"
    path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True, help="host:port of the emulated WireServer")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=int, default=90)
    parser.add_argument("--role-thumbprint", default="")
    parser.add_argument(
        "--status",
        action="store_true",
        help="upload a status blob for the goal state's handlers, as waagent does",
    )
    parser.add_argument(
        "--fast-track",
        action="store_true",
        help="let waagent fetch vmSettings from the HostGAPlugin (endpoint:32526)",
    )
    args = parser.parse_args()

    block_non_loopback()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout)

    result: dict[str, Any] = {"steps": {}, "blocked": blocked}
    workdir: Path = args.workdir.resolve()

    def step(name: str, action: Callable[[], Any]) -> bool:
        if timed_out:
            result["steps"][name] = {"ok": False, "error": "skipped: time limit ran out"}
            return False
        start = time.monotonic()
        try:
            value = action()
        except BaseException as e:  # Watchdog included: record it, then go on or stop
            result["steps"][name] = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
                "seconds": time.monotonic() - start,
                "timed_out": timed_out,
            }
            return False
        result["steps"][name] = {"ok": True, "value": value, "seconds": time.monotonic() - start}
        return True

    try:
        from azurelinuxagent.common import conf, logger
        from azurelinuxagent.common.version import AGENT_VERSION

        conf.load_conf_from_file(str(write_conf(workdir, args.fast_track)))
        logger.add_logger_appender(
            logger.AppenderType.FILE, logger.LogLevel.VERBOSE, path=str(workdir / "waagent.log")
        )
        result["agent_version"] = AGENT_VERSION
        result["lib_dir"] = conf.get_lib_dir()

        from azurelinuxagent.common.protocol.restapi import ProvisionStatus
        from azurelinuxagent.common.protocol.wire import WireProtocol

        protocol = WireProtocol(args.endpoint)

        # Version check, transport certificate, full goal state (certificates included).
        if not step("detect", protocol.detect):
            return 0

        def goal_state() -> dict[str, Any]:
            client = protocol.client
            goal = client.get_goal_state()
            hosting = client.get_hosting_env()
            return {
                "incarnation": goal.incarnation,
                "container_id": goal.container_id,
                "role_instance_id": goal.role_instance_id,
                "role_config_name": goal.role_config_name,
                "vm_name": hosting.vm_name,
                "role_name": hosting.role_name,
                "deployment_name": hosting.deployment_name,
                "incarnation_via_api": protocol.get_incarnation(),
            }

        step("goal_state", goal_state)

        def certificates() -> list[str]:
            # WireProtocol.get_certs() fails on a goal state without certificates.
            listed = protocol.client.get_certs()
            return sorted(c.thumbprint for c in listed.cert_list.certificates) if listed else []

        step("certificates", certificates)

        def extensions() -> dict[str, Any]:
            goal = protocol.get_extensions_goal_state()
            return {
                "source": type(goal).__name__,
                "names": [e.name for e in goal.extensions],
                "versions": [e.version for e in goal.extensions],
                "status_upload_blob": goal.status_upload_blob,
                "status_upload_blob_type": goal.status_upload_blob_type,
                "required_features": list(goal.required_features),
                # What waagent hands each handler: settings as it parsed them
                # (protected settings still encrypted, as extensions get them).
                "details": [
                    {
                        "name": e.name,
                        "version": e.version,
                        "state": e.state,
                        "multi_config": e.supports_multi_config,
                        "settings": [
                            {
                                "name": s.name,
                                "seq_no": s.sequenceNumber,
                                "state": s.state,
                                "public": s.publicSettings,
                                "protected": s.protectedSettings,
                                "thumbprint": s.certificateThumbprint,
                                "dependency_level": s.dependencyLevel,
                            }
                            for s in e.settings
                        ],
                    }
                    for e in goal.extensions
                ],
            }

        step("extensions", extensions)

        def status_upload() -> str:
            # waagent's own status blob for the goal state's handlers, uploaded its
            # own way: through the HostGAPlugin when it can reach one, else directly.
            from azurelinuxagent.common.protocol.restapi import (
                ExtensionStatus,
                ExtHandlerStatus,
                VMStatus,
            )

            goal = protocol.get_extensions_goal_state()
            vm_status = VMStatus(status="Ready", message="Guest Agent is running")
            for extension in goal.extensions:
                handler = ExtHandlerStatus(
                    name=extension.name, version=extension.version, status="Ready"
                )
                for settings in extension.settings[:1]:
                    message = (settings.publicSettings or {}).get("message", "enabled")
                    handler.extension_status = ExtensionStatus(
                        name=settings.name,
                        operation="Enable",
                        status="success",
                        seq_no=settings.sequenceNumber,
                        code=0,
                        message=message,
                    )
                vm_status.vmAgent.extensionHandlers.append(handler)
            protocol.report_vm_status(vm_status)
            return "sent"

        if args.status:
            step("status_upload", status_upload)

        def consistency() -> str:
            # waagent's own check that vmSettings and ExtensionsConfig describe one goal state.
            from azurelinuxagent.common.protocol.extensions_goal_state import ExtensionsGoalState

            client = protocol.client
            vm_settings = client._cached_vm_settings
            if vm_settings is None:
                raise RuntimeError("waagent holds no vmSettings from the HostGAPlugin")
            ExtensionsGoalState.compare(client.get_goal_state().extensions_config, vm_settings)
            return "match"

        if args.fast_track:
            step("fast_track_consistency", consistency)

        def health_service() -> str:
            # What waagent posts to the WireServer about the HostGAPlugin it uses.
            from azurelinuxagent.common.protocol.healthservice import HealthService

            HealthService(args.endpoint).report_host_plugin_heartbeat(True)
            return "reported"

        if args.fast_track:
            step("health_service", health_service)

        def report(status: str, substatus: Any, description: Any, thumbprint: str = "") -> None:
            provision = ProvisionStatus(status=status, subStatus=substatus, description=description)
            if thumbprint:
                provision.properties.certificateThumbprint = thumbprint
            protocol.report_provision_status(provision)

        step(
            "not_ready",
            lambda: report("NotReady", "ProvisioningFailed", "reference client says <no> & stops"),
        )
        step("ready", lambda: report("Ready", None, None, args.role_thumbprint))
    except BaseException as e:
        result["fatal"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    finally:
        signal.alarm(0)
        lib = workdir / "lib"
        result["lib_files"] = sorted(p.name for p in lib.iterdir()) if lib.is_dir() else []
        args.out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if p]  # no current-directory imports
    os.umask(0o077)
    sys.exit(main())
