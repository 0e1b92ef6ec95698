"""Telling the platform how provisioning went: KVP record, health report, marker.

report-ready and report-failure share this: they read this boot's stage
results (/run/azagent/stages/*.json), write the KVP PROVISIONING_REPORT
record (first: the host reads KVP when the health report arrives), then POST
the health report. A masked or skipped stage counts as skipped, never as a
failure.
"""

from __future__ import annotations

import fcntl
import os

from azagent import journal, kvp, provisioning
from azagent.context import Context
from azagent.fsutil import ensure_dir
from azagent.journal import log
from azagent.results import read_result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


KVP_POOL = "/var/lib/hyperv/.kvp_pool_1"
STAGES_REPORTED = (*provisioning.PROVISIONING_STAGES, "certificates")


def failures(ctx: Context) -> list[tuple[str, str]]:
    """(stage, reason) of every provisioning stage that failed this boot."""
    failed = []
    for stage in STAGES_REPORTED:
        result = read_result(ctx.root, stage)
        if result is not None and result.failed:
            failed.append((stage, result.reason or "failed"))
    return failed


def failure_description(failed: list[tuple[str, str]]) -> str:
    return "; ".join(f"{stage}: {reason}" for stage, reason in failed)


def durations(ctx: Context) -> dict[str, str]:
    """Per-stage durations for the KVP report (``mount_ovf_ms=12``)."""
    fields = {}
    for stage in STAGES_REPORTED:
        result = read_result(ctx.root, stage)
        if result is not None and result.duration_ms is not None:
            fields[f"{stage.replace('-', '_')}_ms"] = str(result.duration_ms)
    return fields


def write_kvp(ctx: Context, value: str) -> None:
    """Put the PROVISIONING_REPORT record in the guest-to-host pool, under flock.

    It replaces a record of the same key in place, else it is appended: a
    report sent again (after a crash, or report-ready after report-failure)
    leaves one record, the latest. Other records stay as they are.
    """
    path = ctx.path(KVP_POOL)
    ensure_dir(path.parent, mode=0o755)
    key = kvp.PROVISIONING_REPORT_KEY
    record = kvp.encode_record(key, value)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        if created:
            os.fchmod(fd, 0o644)  # whatever the umask: the host's KVP daemon reads it
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        offset = size
        for start in range(0, size - kvp.RECORD_SIZE + 1, kvp.RECORD_SIZE):
            if os.pread(fd, kvp.KEY_SIZE, start).split(b"\0", 1)[0] == key.encode():
                offset = start
                break
        os.pwrite(fd, record, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def kvp_report(ctx: Context, vm_id: str, reason: Optional[str] = None) -> str:
    from datetime import datetime, timezone

    return kvp.provisioning_report(
        result="error" if reason else "success",
        reason=reason,
        timestamp=datetime.now(timezone.utc),
        vm_id=vm_id,
        extra=durations(ctx),
    )


def report_failure(ctx: Context, vm_id: str, failed: list[tuple[str, str]]) -> None:
    """KVP error record, then NotReady/ProvisioningFailed naming each failed stage."""
    from azagent import wireserver
    from azagent.wireclient import WireClient

    description = failure_description(failed)
    write_kvp(ctx, kvp_report(ctx, vm_id, description))
    WireClient.from_context(ctx).report_health(
        wireserver.NOT_READY, wireserver.SUBSTATUS_FAILED, description
    )
    log.error(
        "provisioning failed: %s",
        description,
        extra={"REASON": description, "MESSAGE_ID": journal.MESSAGE_PROVISIONING_FAILED},
    )
