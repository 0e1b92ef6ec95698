"""The VM scenarios: what one or a few boots must show, with readable failures.

Each scenario boots the guest (or a sequence of boots sharing a disk) and
checks what a user relies on. A failed check raises ScenarioFailed with the
reason; the harness prints it with the boot's console, journal and request
log at hand in the scenario's work directory.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from azfabric.scenario import Extension, ExtensionVersion, PublicKey, Scenario

from azvmtest.boot import ROOT_NOT_FOUND, BootResult, BootSpec, run_boot
from azvmtest.image import Image

PASSWORD = "Vm-T3st-passw0rd!"  # noqa: S105 - the test VM's password, hunted for in the guest
CUSTOM_DATA = "#!/bin/sh\necho vmtest-customdata-marker\n"
# WALinuxAgent's sample handler (Apache-2.0), as the emulator serves it.
SAMPLE = "OSTCExtensions.ExampleHandlerLinux"
SAMPLE_ZIP = (
    Path(__file__).resolve().parents[2] / "tests/fixtures/walinuxagent/ext/sample_ext-1.3.0.zip"
)
# A handler whose enable command line holds '$': sh, not systemd, must see it.
DOLLAR = "Contoso.VmTest.Dollar"
DOLLAR_ARGUMENT = "$HOME and $$"
DOLLAR_FILES = {
    "HandlerManifest.json": json.dumps(
        [
            {
                "version": 1.0,
                "handlerManifest": {
                    **{
                        f"{op}Command": f"handler.sh {op} x"
                        for op in ("install", "uninstall", "update", "disable")
                    },
                    "enableCommand": f"handler.sh enable '{DOLLAR_ARGUMENT}'",
                    "rebootAfterInstall": False,
                    "reportHeartbeat": False,
                },
            }
        ]
    ),
    "handler.sh": """#!/bin/sh
set -eu
cd "$(dirname "$0")"
[ "$1" = enable ] || exit 0
python3 - "$ConfigSequenceNumber" "$2" <<'PY'
import json, sys, time
env = json.load(open("HandlerEnvironment.json"))[0]["handlerEnvironment"]
status = [{"version": "1.0", "timestampUTC": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "status": {"name": "vmtest", "operation": "Enable", "status": "success", "code": 0,
                      "formattedMessage": {"lang": "en-US", "message": "argument " + sys.argv[2]}}}]
with open(f"{env['statusFolder']}/{sys.argv[1]}.status", "w") as f:
    json.dump(status, f)
PY
""",
}


def handler_files(script: str, *, enable: str = "handler.sh enable") -> dict[str, str]:
    """A handler package: HandlerManifest.json whose commands run handler.sh <operation>."""
    commands = {f"{op}Command": f"handler.sh {op}" for op in OPERATIONS}
    manifest = {**commands, "enableCommand": enable, "reportHeartbeat": False}
    return {
        "HandlerManifest.json": json.dumps([{"version": 1.0, "handlerManifest": manifest}]),
        "handler.sh": script,
    }


OPERATIONS = ("install", "enable", "update", "disable", "uninstall")
# Writes status/<seq>.status (success) with the message in $2 (python3 is in the guest).
WRITE_STATUS = """python3 - "$ConfigSequenceNumber" "$2" <<'PY'
import json, sys, time
env = json.load(open("HandlerEnvironment.json"))[0]["handlerEnvironment"]
status = [{"version": "1.0", "timestampUTC": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "status": {"name": "vmtest", "operation": "Enable", "status": "success", "code": 0,
                      "formattedMessage": {"lang": "en-US", "message": sys.argv[2]}}}]
with open(f"{env['statusFolder']}/{sys.argv[1]}.status", "w") as f:
    json.dump(status, f)
PY
"""
# A handler that records every operation it runs (boot, version, operation, sequence
# number, the version it updates from) in a log outside its handler directory, which an
# update deletes; enable reports the log's last lines as its status message.
OPS = "Contoso.VmTest.Ops"
OPS_LOG = f"/var/log/azure/{OPS}/operations.log"


def ops_files(version: str) -> dict[str, str]:
    return handler_files(
        f"""#!/bin/sh
set -eu
cd "$(dirname "$0")"
mkdir -p "$(dirname {OPS_LOG})"
boot="$(cut -c1-8 /proc/sys/kernel/random/boot_id)"
echo "$boot {version} $1 from=${{AZURE_GUEST_AGENT_UPDATING_FROM_VERSION:-}}" >> {OPS_LOG}
[ "$1" = enable ] || exit 0
set -- "$1" "$(tail -n 20 {OPS_LOG} | paste -s -d ';' -)"
"""
        + WRITE_STATUS
    )


# Enable fails (exit 7) after writing to stdout and stderr.
FAIL = "Contoso.VmTest.Fail"
FAIL_OUT, FAIL_ERR = "vmtest-fail stdout marker", "vmtest-fail stderr marker"
FAIL_FILES = handler_files(
    f"""#!/bin/sh
[ "$1" = enable ] || exit 0
echo "{FAIL_OUT}"
echo "{FAIL_ERR}" >&2
exit 7
"""
)
# Enable hangs: a child that left the session (setsid) sleeps, and so does enable.
HANG = "Contoso.VmTest.Hang"
HANG_CHILD_SLEEP, HANG_SLEEP = "4321", "1234"
HANG_FILES = {
    **handler_files(
        f"""#!/bin/sh
cd "$(dirname "$0")"
[ "$1" = enable ] || exit 0
setsid ./child.sh &
echo "vmtest-hang enable $$"
sleep {HANG_SLEEP}
"""
    ),
    "child.sh": f"""#!/bin/sh
echo "vmtest-hang child $$ session $(cut -d' ' -f6 /proc/$$/stat)"
sleep {HANG_CHILD_SLEEP}
""",
}
PROVISIONING = ("mount-ovf", "hostname", "create-user", "ssh-keys", "certificates", "custom-data")


class ScenarioFailed(AssertionError):
    """A check failed; the message says which and why."""


def check(condition: bool, reason: str) -> None:
    if not condition:
        raise ScenarioFailed(reason)


@dataclass
class Context:
    image: Image
    workdir: Path

    def boot(self, spec: BootSpec) -> BootResult:
        result = run_boot(self.image, spec, self.workdir / spec.name)
        console = self.workdir / spec.name / "console.log"
        if result.up_after is None and ROOT_NOT_FOUND in console.read_text(errors="replace"):
            # Infrastructure, not azagent: the guest kernel never saw its disk.
            print(f"  boot {spec.name}: the guest did not find its root disk; booting again")
            console.rename(console.with_suffix(".first-try.log"))
            result = run_boot(self.image, spec, self.workdir / spec.name)
        ready = f"{result.ready_after:.1f}s" if result.ready_after is not None else "never"
        up = f"{result.up_after:.1f}s" if result.up_after is not None else "never"
        print(
            f"  boot {spec.name}: health report after {ready}, boot finished after {up}", flush=True
        )
        check(
            result.up_after is not None,
            f"{spec.name}: the boot did not finish ({self.workdir / spec.name})",
        )
        check(
            result.text("collected") != "", f"{spec.name}: the guest's results were not collected"
        )
        return result


def default_scenario(**overrides: object) -> Scenario:
    values: dict[str, object] = {
        "hostname": "vmtest-vm",
        "username": "alice",
        "password": PASSWORD,
        "disable_password_auth": False,
        "custom_data": CUSTOM_DATA,
        "vm_id": str(uuid.uuid4()),
        "public_keys": [PublicKey(path="/home/alice/.ssh/authorized_keys")],
    }
    values.update(overrides)
    return Scenario(**values)  # type: ignore[arg-type]


def reports(result: BootResult) -> list[str]:
    return [
        r.state + (f"/{r.substatus}" if r.substatus else "") for r in result.fabric.health_reports
    ]


def stage_state(result: BootResult, stage: str) -> str:
    return str(result.stage(stage).get("state", "never-ran"))


def monotonic(result: BootResult, unit: str, field: str) -> int:
    return int(result.units().get(unit, {}).get(field, "0") or 0)


def secrets_of(result: BootResult) -> tuple[str, ...]:
    return result.spec.secrets


# -- scenarios ------------------------------------------------------------------


def scenario_default(ctx: Context) -> None:
    """Password, key, hostname, customData: Ready, SSH login, hostname timing, no leaked secret."""
    scenario = default_scenario()
    secrets = (
        PASSWORD,
        "vmtest-customdata-marker",
        base64.b64encode(CUSTOM_DATA.encode()).decode()[:20],
    )
    result = ctx.boot(
        BootSpec("default", scenario, ssh=True, secrets=secrets, resource_disk="ntfs-warning")
    )
    check(reports(result) == ["Ready"], f"expected one Ready report, got {reports(result)}")
    for stage in ("mount-ovf", "create-user", "ssh-keys", "custom-data", "report-ready"):
        check(stage_state(result, stage) == "done", f"{stage}: {result.stage(stage)}")
    # The monitor path unit re-runs hostname after the stage wrote /etc/hostname:
    # its last result is that run's "nothing to do".
    check(
        stage_state(result, "hostname") in ("done", "nothing-to-do"), str(result.stage("hostname"))
    )
    # SSH with the provisioned key: the user, the hostname, and sudo refusing
    # without the password (one was set).
    check(result.ssh_status == 0, f"ssh failed: {result.ssh_output.strip()}")
    check("uid=" in result.ssh_output and "(alice)" in result.ssh_output, result.ssh_output)
    check("vmtest-vm" in result.ssh_output, f"hostname not in ssh output: {result.ssh_output}")
    check("sudo-status=1" in result.ssh_output, f"sudo -n should refuse: {result.ssh_output}")
    check(result.text("hostname.txt").strip() == "vmtest-vm", "running hostname")
    # The hostname is set before systemd-networkd starts, so the first DHCP
    # request carries it; and no link was bounced.
    named = monotonic(result, "azure-hostname.service", "ExecMainExitTimestampMonotonic")
    networkd = monotonic(result, "systemd-networkd.service", "ExecMainStartTimestampMonotonic")
    check(0 < named < networkd, f"hostname done at {named}, networkd started at {networkd}")
    journal = result.text("journal.txt")
    check(not re.search(r"en\w+: Link DOWN", journal), "an interface was bounced")
    check("--- Logging error ---" not in journal, "a stage could not log to the journal")
    check(
        re.search(r"azagent\[\d+\]: save the provisioning data of alice@vmtest-vm", journal)
        is not None,
        "mount-ovf's log line is not in the journal",
    )
    # Structured fields: what `journalctl STAGE=...` and `MESSAGE_ID=...` find.
    check(
        "save the provisioning data" in result.text("journal-stage-mount-ovf.txt"),
        f"journalctl STAGE=mount-ovf: {result.text('journal-stage-mount-ovf.txt')!r}",
    )
    check(
        "accepted Ready" in result.text("journal-ready-reported.txt"),
        f"journalctl MESSAGE_ID=<ready reported>: {result.text('journal-ready-reported.txt')!r}",
    )
    # Secrets: nowhere in the journal or a world-readable file.
    check(result.text("secret-journal.txt").strip() == "0", "a secret is in the journal")
    check(
        result.text("secret-files.txt").strip() == "",
        f"secrets in: {result.text('secret-files.txt')}",
    )
    # KVP and report order: the KVP record was written before Ready.
    check(
        result.text("system-state").strip() in ("running", "degraded"), result.text("system-state")
    )
    failed = result.text("failed.txt")
    check("azure-" not in failed, f"failed azure units: {failed}")
    # azagent status names the stages systemd skipped on a start condition
    # (they left no result file), and only those.
    rows = [line.split() for line in result.text("azagent-status.txt").splitlines()[1:]]
    status = {row[0]: row[2] for row in rows if len(row) >= 3}
    for stage in ("firewall", "imds", "certificates"):
        check(status.get(stage) == "condition-failed", f"azagent status {stage}: {status}")
    check(status.get("report-failure") == "never-ran", f"azagent status: {status}")
    # The extension handler, enabled by the preset, keeps running (the goal state names
    # no extension here) and started only after Ready was reported: it cannot delay it.
    extensions = result.units().get("azure-extensions.service", {})
    check(
        (extensions.get("UnitFileState"), extensions.get("ActiveState"), extensions.get("SubState"))
        == ("enabled", "active", "running"),
        f"azure-extensions.service: {extensions}",
    )
    ready = monotonic(result, "azure-report-ready.service", "ExecMainExitTimestampMonotonic")
    handler = monotonic(result, "azure-extensions.service", "ExecMainStartTimestampMonotonic")
    check(
        0 < ready <= handler,
        f"Ready reported at {ready}, the extension handler started at {handler}",
    )
    # The resource disk came as NTFS holding only the warning file: formatted,
    # mounted, the warning written, and a 0600 swap file active on it.
    check(
        stage_state(result, "resource-disk") == "done",
        f"resource-disk: {result.stage('resource-disk')}",
    )
    check(
        re.search(r"ext4\s.*/mnt/resource", result.text("lsblk.txt")) is not None,
        result.text("lsblk.txt"),
    )
    # /proc/swaps names the file as the stage's mount namespace saw it.
    check("swapfile file 67104768" in result.text("swap.txt"), f"swap: {result.text('swap.txt')}")
    check("600 root" in result.text("stat.txt").split("/mnt/resource/swapfile")[0].splitlines()[-1],
          f"swap file mode: {result.text('stat.txt')}")  # fmt: skip
    check("resource -> " in result.text("azure-links.txt"), result.text("azure-links.txt"))
    # kernel-tune set the SCSI timeout of both Msft disks; the network stage
    # saved the WireServer address.
    tuned = str(result.stage("kernel-tune").get("changes", ""))
    check("sda" in tuned and "sdb" in tuned, f"kernel-tune: {result.stage('kernel-tune')}")
    check(stage_state(result, "network") == "done", f"network: {result.stage('network')}")


def scenario_no_dvd(ctx: Context) -> None:
    """No provisioning media: IMDS-only provisioning, Ready."""
    scenario = default_scenario(password=None, custom_data=None)
    result = ctx.boot(BootSpec("no-dvd", scenario, media=False, ssh=True))
    check(reports(result) == ["Ready"], f"expected Ready, got {reports(result)}")
    check(stage_state(result, "imds") == "done", f"imds: {result.stage('imds')}")
    check(result.ssh_status == 0, f"ssh with the IMDS key failed: {result.ssh_output.strip()}")
    check("sudo-status=0" in result.ssh_output, "no password: sudo without one")


def scenario_failure(ctx: Context) -> None:
    """An invalid username: NotReady/ProvisioningFailed naming the stage, promptly."""
    result = ctx.boot(BootSpec("bad-user", default_scenario(username="-rf")))
    states = reports(result)
    check(bool(states) and states[0] == "NotReady/ProvisioningFailed", f"reports: {states}")
    description = result.fabric.health_reports[0].description or ""
    check(description.startswith("mount-ovf: ") and "UserName" in description, description)
    check(
        result.ready_after is not None and result.ready_after < (result.up_after or 0) + 60,
        "late report",
    )


def scenario_masking(ctx: Context) -> None:
    """Each provisioning stage masked in turn, then all but report-ready: Ready every time."""
    for stage in (*PROVISIONING, "all"):
        masked = PROVISIONING if stage == "all" else (stage,)
        args = tuple(f"systemd.mask=azure-{s}.service" for s in masked)
        result = ctx.boot(
            BootSpec(f"mask-{stage}", default_scenario(), kernel_args=args, resource_disk=None)
        )
        check(reports(result) == ["Ready"], f"masking {stage}: reports {reports(result)}")
        for name in masked:
            check(
                result.units().get(f"azure-{name}.service", {}).get("LoadState") == "masked",
                f"azure-{name}.service is not masked",
            )


def scenario_reboot(ctx: Context) -> None:
    """Second boot of the same disk: nothing re-provisions; a new VM id provisions again."""
    scenario = default_scenario()
    first = ctx.boot(BootSpec("first-boot", scenario, resource_disk=None))
    check(reports(first) == ["Ready"], f"first boot: {reports(first)}")
    same = ctx.boot(BootSpec("second-boot", scenario, disk=first.os_disk, resource_disk=None))
    check(reports(same) == [], f"second boot reported {reports(same)}")
    check(stage_state(same, "mount-ovf") == "skipped", f"mount-ovf: {same.stage('mount-ovf')}")
    # The new VM runs its customData: the generator orders the stage after the
    # network, the user and the hostname, which the script sees.
    script = (
        '#!/bin/sh\necho "customdata-ran user=$(id -un alice) host=$(hostname)'
        ' online=$(systemctl is-active network-online.target)"\n'
    )
    captured = default_scenario(hostname="captured-vm", custom_data=script)
    new = ctx.boot(
        BootSpec(
            "new-vm-id",
            captured,
            disk=first.os_disk,
            resource_disk=None,
            config=("Provisioning.DecodeCustomData=y", "Provisioning.ExecuteCustomData=y"),
        )
    )
    check(reports(new) == ["Ready"], f"new VM id: {reports(new)}")
    check(new.text("hostname.txt").strip() == "captured-vm", "the new VM's hostname")
    check(stage_state(new, "custom-data") == "done", f"custom-data: {new.stage('custom-data')}")
    ran = "customdata-ran user=alice host=captured-vm online=active"
    check(ran in new.text("journal.txt"), "customData did not run after the user, host, network")
    # systemd's own view of the ordering: the first boot only saved customData,
    # without waiting for the network; the new VM's runs it after the network.
    first_after = first.units().get("azure-custom-data.service", {}).get("After", "")
    check("network-online.target" not in first_after.split(), f"saving waits: {first_after}")
    new_after = new.units().get("azure-custom-data.service", {}).get("After", "").split()
    check({"network-online.target", "azure-ssh-keys.service"} <= set(new_after), str(new_after))


def scenario_resource_disk(ctx: Context) -> None:
    """NTFS with user data is left alone (reason logged); no resource disk: nothing waits."""
    data = ctx.boot(BootSpec("ntfs-user-data", default_scenario(), resource_disk="ntfs-data"))
    check(reports(data) == ["Ready"], f"reports: {reports(data)}")
    refusal = str(data.stage("resource-disk").get("reason", ""))
    check(
        stage_state(data, "resource-disk") == "failed" and "precious.txt" in refusal,
        f"a disk with user data must be refused, naming it: {data.stage('resource-disk')}",
    )
    check(
        "ntfs" in data.text("lsblk.txt"),
        f"the user's NTFS disk was changed: {data.text('lsblk.txt')}",
    )
    none = ctx.boot(BootSpec("no-resource-disk", default_scenario(), resource_disk=None))
    check(reports(none) == ["Ready"], f"reports: {reports(none)}")
    check(
        stage_state(none, "resource-disk") == "never-ran",
        "the resource-disk stage ran without a disk",
    )


def sample_entry(document: Optional[dict[str, Any]], name: str = SAMPLE) -> dict[str, Any]:
    """The handler's entry of a status document ({} when it has none)."""
    if not isinstance(document, dict):
        return {}
    entries = document.get("aggregateStatus", {}).get("handlerAggregateStatus", [])
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("handlerName") == name:
            return entry
    return {}


def sample_settings(entry: dict[str, Any]) -> dict[str, Any]:
    try:
        status = entry["runtimeSettingsStatus"]["settingsStatus"]["status"]
    except (KeyError, TypeError):
        return {}
    return status if isinstance(status, dict) else {}


def sample_enabled(result: BootResult, seq: int, message: str) -> bool:
    """A status upload shows the sample handler Ready, enabled with ``seq``, echoing ``message``."""
    for upload in list(result.fabric.status_uploads):
        entry = sample_entry(upload.document)
        settings = sample_settings(entry)
        if (
            entry.get("status") == "Ready"
            and entry.get("runtimeSettingsStatus", {}).get("sequenceNumber") == seq
            and settings.get("status") == "success"
            and settings.get("formattedMessage", {}).get("message") == message
        ):
            return True
    return False


def entries(result: BootResult, name: str) -> list[dict[str, Any]]:
    """The handler's entry of every status upload of the boot that has one, in order."""
    found = [sample_entry(u.document, name) for u in list(result.fabric.status_uploads)]
    return [entry for entry in found if entry]


def message(entry: dict[str, Any]) -> str:
    """The extension's status message, else the handler's."""
    text = sample_settings(entry).get("formattedMessage", {}).get("message")
    return str(text or entry.get("formattedMessage", {}).get("message") or "")


def operations(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(boot, "<version> <operation>[ from <version>]") of the Ops handler's log, in order."""
    found = []
    for line in message(entry).split(";"):
        fields = line.split()
        if len(fields) == 4 and fields[3].startswith("from="):
            boot, version, operation, source = fields
            source = source.removeprefix("from=")
            found.append((boot, f"{version} {operation}" + (f" from {source}" if source else "")))
    return found


def waited(seen: dict[str, Optional[float]], name: str, start: float, ok: bool) -> bool:
    seen[name] = time.monotonic() - start if ok else None
    return ok


def show(seen: dict[str, Optional[float]], what: str = "extension") -> None:
    print(
        f"  {what}: "
        + ", ".join(f"{k} after {v:.1f}s" if v else f"{k} never" for k, v in seen.items()),
        flush=True,
    )


def started_units(journal: str, handler: str, operation: str) -> list[str]:
    """The transient units of ``handler``'s ``operation`` the journal saw started."""
    unit = re.escape(f"azure-ext-{handler}-{operation}-") + r"\d+-[0-9a-f]{8}[.]service"
    # A oneshot's start job ends "Finished" (systemd >= 246), "Started" before;
    # a failed one "Failed to start".
    return sorted(set(re.findall(f"(?:Started|Finished|Failed to start) ({unit})", journal)))


def ops_entry(result: BootResult, version: str) -> dict[str, Any]:
    """The Ops handler's last status entry at ``version``, Ready ({} when none)."""
    found = [
        e
        for e in entries(result, OPS)
        if e.get("handlerVersion") == version and e.get("status") == "Ready"
    ]
    return found[-1] if found else {}


def ready_with_the_handler_running(
    result: BootResult, seen: dict[str, Optional[float]]
) -> dict[str, str]:
    """Show the host's timings; Ready reported once, and the extension handler running."""
    show(seen)
    check(reports(result) == ["Ready"], f"reports: {reports(result)}")
    check(not result.notes, f"the host's side: {result.notes}")
    service = result.units().get("azure-extensions.service", {})
    check(
        (service.get("ActiveState"), service.get("SubState")) == ("active", "running"),
        f"azure-extensions.service is not active/running: {service}",
    )
    return service


def scenario_extensions(ctx: Context) -> None:
    """Extensions as transient units: enable, new settings, update, uninstall; a reboot."""
    first, second = "vmtest extension hello", "vmtest extension settings 1"
    scenario = default_scenario(
        password=None,
        custom_data=None,
        extensions=[
            Extension(
                name=SAMPLE,
                version="1.3.0",
                package=str(SAMPLE_ZIP),
                public_settings={"message": first},
            ),
            Extension(name=DOLLAR, version="1.0.0", files=DOLLAR_FILES),
            Extension(
                name=OPS,
                version="1.0",
                versions=[
                    ExtensionVersion("1.0.0", files=ops_files("1.0.0")),
                    ExtensionVersion("2.0.0", files=ops_files("2.0.0")),
                ],
            ),
        ],
    )
    seen: dict[str, Optional[float]] = {}

    def while_up(result: BootResult) -> None:
        fabric, start = result.fabric, result.started
        if not waited(
            seen, "enabled", start, fabric.wait_for(lambda: sample_enabled(result, 0, first), 120)
        ):
            return
        fabric.new_settings(SAMPLE, public_settings={"message": second})
        if not waited(
            seen,
            "new-settings",
            start,
            fabric.wait_for(lambda: sample_enabled(result, 1, second), 90),
        ):
            return
        # The version update: 1.0 -> 2.0 (the manifest lists 1.0.0 and 2.0.0).
        fabric.update_version(OPS, "2.0")
        if not waited(
            seen,
            "updated",
            start,
            fabric.wait_for(lambda: "2.0.0 enable" in message(ops_entry(result, "2.0.0")), 120),
        ):
            return
        uploads = len(fabric.status_uploads)
        fabric.set_extension_state(SAMPLE, "uninstall")

        def gone() -> bool:
            return any(not sample_entry(u.document) for u in list(fabric.status_uploads)[uploads:])

        waited(seen, "uninstalled", start, fabric.wait_for(gone, 90))

    result = ctx.boot(
        BootSpec("extensions", scenario, resource_disk=None, while_up=while_up, timeout=600)
    )
    service = ready_with_the_handler_running(result, seen)
    check(service.get("UnitFileState") == "enabled", f"not enabled by the preset: {service}")
    journal = result.text("journal-extensions.txt")
    slice_ = "azure-vmextensions-" + SAMPLE + ".slice"
    check(slice_ in journal, f"no {slice_} in the journal")
    check(seen.get("enabled") is not None, "no status upload with the sample enabled (seq 0)")
    check(seen.get("new-settings") is not None, "new settings: no upload with seq 1 enabled")
    check(seen.get("updated") is not None, f"update: {OPS} 2.0.0 never reported enabled")
    check(seen.get("uninstalled") is not None, "uninstall: the handler stayed in the status")
    # Each operation a transient unit: install and enable (seq 0), enable again with the
    # new settings (seq 1), then disable and uninstall.
    for operation in ("install", "enable", "enable", "disable", "uninstall"):
        units = started_units(journal, SAMPLE, operation)
        check(bool(units), f"no transient unit for the sample's {operation} in the journal")
    check(
        any("-enable-1-" in u for u in started_units(journal, SAMPLE, "enable")),
        "no enable with sequence number 1 in the journal",
    )
    # Finished operations stay listed (RemainAfterExit=yes) until the handler goes:
    # at the end, the handlers still there show their install and enable.
    listed = result.text("ext-units.txt")
    for handler, operation in ((DOLLAR, "install-0"), (DOLLAR, "enable-0"), (OPS, "enable-0")):
        unit = re.escape(f"azure-ext-{handler}-{operation}-") + "[0-9a-f]{8}[.]service"
        check(
            re.search(unit + r"\s+loaded\s+active\s+exited", listed) is not None,
            f"{unit} is not listed active (exited) once it ended: {listed!r}",
        )
    if seen.get("uninstalled") is not None:
        left = result.text("ext-units.txt")
        check(
            f"azure-ext-{SAMPLE}-" not in left,
            f"the uninstalled handler's units are still listed: {left!r}",
        )
    # The command line reached /bin/sh as written: systemd expanded no '$' of it.
    messages = {message(e) for e in entries(result, DOLLAR)}
    check(
        f"argument {DOLLAR_ARGUMENT}" in messages,
        f"{DOLLAR}: enable's argument reached the handler as {messages}",
    )
    # The update's full sequence, as the handler itself logged it: old disable, new
    # update (told the old version), old uninstall, new install (no updateMode:
    # UpdateWithInstall), new enable.
    done = [op for _boot, op in operations(ops_entry(result, "2.0.0"))]
    expected = [
        "1.0.0 install",
        "1.0.0 enable",
        "1.0.0 disable",
        "2.0.0 update from 1.0.0",
        "1.0.0 uninstall",
        "2.0.0 install",
        "2.0.0 enable",
    ]
    check(done == expected, f"{OPS}'s operations: {done}, expected {expected}")
    for operation in ("disable", "update", "uninstall"):
        check(
            bool(started_units(journal, OPS, operation)),
            f"no transient unit for {OPS}'s {operation} in the journal",
        )
    # What `azagent extensions --json` shows at the end: the uninstalled sample gone.
    try:
        shown = json.loads(result.text("extensions.json"))
    except ValueError:
        shown = {}
    rows = {r.get("handler"): r for r in shown.get("handlers", [])}
    check(
        SAMPLE not in rows
        and rows.get(OPS, {}).get("state") == "Enabled"
        and rows.get(OPS, {}).get("version") == "2.0.0"
        and rows.get(DOLLAR, {}).get("state") == "Enabled",
        f"azagent extensions --json: {result.text('extensions.json')!r}",
    )
    last = rows[OPS].get("last_operation") or {}
    check(
        last.get("operation") == "enable"
        and last.get("exit_status") == 0
        and str(last.get("unit", "")).startswith(f"azure-ext-{OPS}-enable-0-"),
        f"{OPS}'s last operation: {last}",
    )

    # A reboot of the same disk: the service starts again and enables again, installing
    # nothing (the goal state is the one the first boot ended with).
    again: dict[str, Optional[float]] = {}

    def rebooted(result: BootResult) -> None:
        def enabled_again() -> bool:
            return len({boot for boot, _ in operations(ops_entry(result, "2.0.0"))}) == 2

        waited(again, "enabled again", result.started, result.fabric.wait_for(enabled_again, 120))

    second_boot = ctx.boot(
        BootSpec(
            "extensions-reboot",
            scenario,
            disk=result.os_disk,
            resource_disk=None,
            while_up=rebooted,
        )
    )
    show(again)
    check(reports(second_boot) == [], f"the reboot reported {reports(second_boot)}")
    check(not second_boot.notes, f"the host's side: {second_boot.notes}")
    logged = operations(ops_entry(second_boot, "2.0.0"))
    boots = list(dict.fromkeys(boot for boot, _ in logged))
    check(len(boots) == 2, f"{OPS}'s operations after the reboot: {logged}")
    after = [op for boot, op in logged if boot == boots[1]]
    check(after == ["2.0.0 enable"], f"{OPS} after the reboot: {after}, expected an enable only")
    journal = second_boot.text("journal-extensions.txt")
    for handler in (OPS, DOLLAR):
        check(
            bool(started_units(journal, handler, "enable"))
            and not started_units(journal, handler, "install"),
            f"{handler} after the reboot: enable "
            f"{started_units(journal, handler, 'enable')}, "
            f"install {started_units(journal, handler, 'install')}",
        )


def scenario_extensions_faults(ctx: Context) -> None:
    """A failing and a hanging extension (its cgroup killed); Extensions.Enabled=n."""
    scenario = default_scenario(
        password=None,
        custom_data=None,
        extensions=[
            Extension(name=DOLLAR, version="1.0.0", files=DOLLAR_FILES),
            Extension(name=FAIL, version="1.0.0", files=FAIL_FILES),
            Extension(name=HANG, version="1.0.0", files=HANG_FILES),
        ],
    )
    seen: dict[str, Optional[float]] = {}

    def ended(up: BootResult, name: str, code: int) -> Callable[[], bool]:
        return lambda: any(
            e.get("status") == "NotReady" and e.get("code") == code for e in entries(up, name)
        )

    def while_up(up: BootResult) -> None:
        fabric, start = up.fabric, up.started
        waited(seen, "failed", start, fabric.wait_for(ended(up, FAIL, 1009), 120))
        waited(seen, "timed out", start, fabric.wait_for(ended(up, HANG, 1011), 120))

    timeout = 15
    result = ctx.boot(
        BootSpec(
            "extensions-faults",
            scenario,
            resource_disk=None,
            config=(f"Extensions.OperationTimeout={timeout}",),
            while_up=while_up,
            timeout=420,
        )
    )
    ready_with_the_handler_running(result, seen)
    # The failure: error status (code 1009, enable) with its exit status and output.
    failed = [e for e in entries(result, FAIL) if e.get("code") == 1009]
    check(bool(failed), f"{FAIL}: no error status: {entries(result, FAIL)[-1:]}")
    text = message(failed[-1])
    check(
        "exit status 7" in text and FAIL_OUT in text and FAIL_ERR in text,
        f"{FAIL}'s status message: {text!r}",
    )
    check(
        sample_settings(failed[-1]).get("status") == "error",
        f"{FAIL}'s extension status: {failed[-1]}",
    )
    # The hang: killed at the timeout (code 1011), the child that called setsid too.
    hung = [e for e in entries(result, HANG) if e.get("code") == 1011]
    check(bool(hung), f"{HANG}: no timeout status: {entries(result, HANG)[-1:]}")
    text = message(hung[-1])
    check(f"timed out after {timeout} s" in text, f"{HANG}'s status message: {text!r}")
    child = re.search(r"vmtest-hang child (\d+) session (\d+)", text)
    main = re.search(r"vmtest-hang enable (\d+)", text)
    check(
        child is not None and child.group(1) == child.group(2) and main is not None,
        f"{HANG}: no child in its own session in the output: {text!r}",
    )
    assert child is not None
    assert main is not None
    processes = result.text("processes.txt")
    check(processes != "", "the guest listed no processes")
    left = [
        line
        for line in processes.splitlines()
        if line.split(" ", 1)[0] in (child.group(1), main.group(1))
        or f"sleep {HANG_SLEEP}" in line
        or f"sleep {HANG_CHILD_SLEEP}" in line
        or "child.sh" in line
    ]
    check(not left, f"{HANG}'s processes survived the timeout: {left}")
    journal = result.text("journal-extensions.txt")
    check(bool(started_units(journal, HANG, "enable")), f"no transient unit for {HANG}'s enable")
    # The others ran regardless.
    check(
        any(e.get("status") == "Ready" for e in entries(result, DOLLAR)),
        f"{DOLLAR} was not enabled beside the failures",
    )

    # Extensions.Enabled=n: the service runs, runs no extension, and reports a terminal
    # error naming the setting for every one the goal state requests.
    requested = (SAMPLE, FAIL)
    disabled = default_scenario(
        password=None,
        custom_data=None,
        extensions=[
            Extension(name=SAMPLE, version="1.3.0", package=str(SAMPLE_ZIP)),
            Extension(name=FAIL, version="1.0.0", files=FAIL_FILES),
        ],
    )
    off: dict[str, Optional[float]] = {}

    def refused(entry: dict[str, Any]) -> bool:
        return (
            entry.get("status") == "NotReady"
            and "Extensions.Enabled=n" in message(entry)
            and sample_settings(entry).get("status") == "error"
        )

    def reported(up: BootResult) -> None:
        def all_refused() -> bool:
            return all(any(refused(e) for e in entries(up, n)) for n in requested)

        waited(off, "all refused", up.started, up.fabric.wait_for(all_refused, 120))

    result = ctx.boot(
        BootSpec(
            "extensions-disabled",
            disabled,
            resource_disk=None,
            config=("Extensions.Enabled=n",),
            while_up=reported,
        )
    )
    ready_with_the_handler_running(result, off)
    check(off.get("all refused") is not None, f"not every extension refused: {off}")
    journal = result.text("journal-extensions.txt")
    # No transient unit at all (a oneshot's job ends "Finished", not "Started").
    check(
        re.search(r"azure-ext-\S+[.]service", journal) is None,
        "an extension command ran with Extensions.Enabled=n",
    )
    check(
        not any(f"/var/lib/waagent/{n}-" in result.text("stat.txt") for n in requested),
        f"a handler was unpacked: {result.text('stat.txt')}",
    )


SCENARIOS: dict[str, Callable[[Context], None]] = {
    "default": scenario_default,
    "no-dvd": scenario_no_dvd,
    "failure": scenario_failure,
    "masking": scenario_masking,
    "reboot": scenario_reboot,
    "resource-disk": scenario_resource_disk,
    "extensions": scenario_extensions,
    "extensions-faults": scenario_extensions_faults,
}


@contextmanager
def timed(name: str) -> Iterator[None]:
    import time

    start = time.monotonic()
    try:
        yield
    finally:
        print(f"scenario {name}: {time.monotonic() - start:.1f}s", flush=True)
