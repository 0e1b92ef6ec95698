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

from azfabric.scenario import Extension, PublicKey, Scenario

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
    captured = default_scenario(hostname="captured-vm")
    new = ctx.boot(BootSpec("new-vm-id", captured, disk=first.os_disk, resource_disk=None))
    check(reports(new) == ["Ready"], f"new VM id: {reports(new)}")
    check(new.text("hostname.txt").strip() == "captured-vm", "the new VM's hostname")


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


def scenario_extensions(ctx: Context) -> None:
    """WALinuxAgent's sample extension as transient units: enable, new settings, uninstall."""
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
        ],
    )
    seen: dict[str, Optional[float]] = {}

    def while_up(result: BootResult) -> None:
        # READY (the boot finished) comes after the first pass: installed and enabled.
        fabric = result.fabric
        start = result.started
        ok = fabric.wait_for(lambda: sample_enabled(result, 0, first), timeout=60)
        seen["enabled"] = time.monotonic() - start if ok else None
        if not ok:
            return
        fabric.new_settings(SAMPLE, public_settings={"message": second})
        ok = fabric.wait_for(lambda: sample_enabled(result, 1, second), timeout=90)
        seen["new-settings"] = time.monotonic() - start if ok else None
        if not ok:
            return
        uploads = len(fabric.status_uploads)
        fabric.set_extension_state(SAMPLE, "uninstall")

        def gone() -> bool:
            return any(not sample_entry(u.document) for u in list(fabric.status_uploads)[uploads:])

        ok = fabric.wait_for(gone, timeout=90)
        seen["uninstalled"] = time.monotonic() - start if ok else None

    result = ctx.boot(
        BootSpec(
            "extensions",
            scenario,
            resource_disk=None,
            kernel_args=("systemd.wants=azure-extensions.service",),
            while_up=while_up,
            timeout=600,
        )
    )
    print(
        "  extension: "
        + ", ".join(f"{k} after {v:.1f}s" if v else f"{k} never" for k, v in seen.items()),
        flush=True,
    )
    check(reports(result) == ["Ready"], f"reports: {reports(result)}")
    check(not result.notes, f"the host's side: {result.notes}")
    service = result.units().get("azure-extensions.service", {})
    check(
        (service.get("ActiveState"), service.get("SubState")) == ("active", "running"),
        f"azure-extensions.service is not active/running: {service}",
    )
    journal = result.text("journal-extensions.txt")
    slice_ = "azure-vmextensions-" + SAMPLE + ".slice"
    check(slice_ in journal, f"no {slice_} in the journal")
    # Each operation a transient unit: install and enable (seq 0), enable again with the
    # new settings (seq 1), then disable and uninstall.
    operations = ["install-0", "enable-0"]
    if seen.get("new-settings") is not None:
        operations += ["enable-1", r"disable-\d+", r"uninstall-\d+"]
    for operation in operations:
        unit = re.escape(f"azure-ext-{SAMPLE}-") + operation + "-[0-9a-f]{8}[.]service"
        # A oneshot's start job ends "Finished" (systemd >= 246), "Started" before.
        check(
            re.search(f"(?:Started|Finished) {unit}", journal) is not None,
            f"no transient unit {unit} started in the journal",
        )
    # Finished operations stay listed (RemainAfterExit=yes) until the handler goes.
    listed = result.text("ext-units-up.txt")
    for operation in ("install-0", "enable-0"):
        unit = re.escape(f"azure-ext-{SAMPLE}-") + operation + "-[0-9a-f]{8}[.]service"
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
    messages = [
        sample_settings(sample_entry(u.document, DOLLAR)).get("formattedMessage", {}).get("message")
        for u in result.fabric.status_uploads
    ]
    check(
        f"argument {DOLLAR_ARGUMENT}" in messages,
        f"{DOLLAR}: enable's argument reached the handler as {set(messages)}",
    )
    # What `azagent extensions --json` showed once the service was READY.
    try:
        shown = json.loads(result.text("extensions-up.json"))
    except ValueError:
        shown = {}
    rows = [r for r in shown.get("handlers", []) if r.get("handler") in (SAMPLE, DOLLAR)]
    check(
        len(rows) == 2 and all(r.get("state") == "Enabled" for r in rows),
        f"azagent extensions --json at READY: {result.text('extensions-up.json')!r}",
    )
    last = next(r for r in rows if r["handler"] == SAMPLE).get("last_operation") or {}
    check(
        last.get("operation") == "enable"
        and last.get("exit_status") == 0
        and str(last.get("unit", "")).startswith(f"azure-ext-{SAMPLE}-enable-0-"),
        f"last operation at READY: {last}",
    )
    check(
        seen.get("enabled") is not None,
        "no status upload with the sample enabled (seq 0)",
    )
    check(
        seen.get("new-settings") is not None,
        "new settings: no upload with seq 1 enabled",
    )
    check(
        seen.get("uninstalled") is not None,
        "uninstall: the handler stayed in the status",
    )


SCENARIOS: dict[str, Callable[[Context], None]] = {
    "default": scenario_default,
    "no-dvd": scenario_no_dvd,
    "failure": scenario_failure,
    "masking": scenario_masking,
    "reboot": scenario_reboot,
    "resource-disk": scenario_resource_disk,
    "extensions": scenario_extensions,
}


@contextmanager
def timed(name: str) -> Iterator[None]:
    import time

    start = time.monotonic()
    try:
        yield
    finally:
        print(f"scenario {name}: {time.monotonic() - start:.1f}s", flush=True)
