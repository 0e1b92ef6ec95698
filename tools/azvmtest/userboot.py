"""``tools/vmtest boot``: one boot of the test guest with a scenario of the user's own.

For an image builder testing an image offline: the scenario file is the
emulator's (:mod:`azfabric.scenario`, the file ``tools/fabric serve
--scenario`` reads), the guest boots against it once, and the output
directory keeps what the harness collected from the guest (``share/``), the
serial console, the emulator's request log (``requests.jsonl``, redacted),
the decoded status uploads and a summary (``result.json``). The verdict is
one line: the boot finished and Ready was reported, or why not.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azfabric import scenario as scenarios
from azfabric import status

from azvmtest.boot import ROOT_NOT_FOUND, BootResult, BootSpec, run_boot
from azvmtest.image import Image

# Left behind by a boot but no evidence: the OS disk overlay and the resource disk,
# and the provisioning media (made from the scenario; it holds its password and customData).
DISKS = ("os.qcow2", "resource.raw")
MEDIA = "media"


class BootError(Exception):
    """The boot cannot start: the message is the one line the user sees."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    line: str


def load_scenario(path: Path) -> scenarios.Scenario:
    """The scenario in ``path``, checked as far as a boot needs; BootError says what is wrong."""
    try:
        scenario = scenarios.load(path)
    except FileNotFoundError:
        raise BootError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BootError(f"{path}: a directory, not a scenario file") from None
    except OSError as e:
        raise BootError(f"{path}: {e.strerror or e}") from None
    except scenarios.ScenarioError as e:
        # The message names the file already (parse errors name the source).
        text = " ".join(str(e).split())
        raise BootError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    if scenario.vm_id is not None:
        try:
            uuid.UUID(str(scenario.vm_id))
        except ValueError:
            raise BootError(f"{path}: vm_id: not a UUID: {scenario.vm_id!r}") from None
    return scenario


def prepare_out(out: Path) -> None:
    """``out`` exists and is empty afterwards; an earlier boot's results are never mixed in."""
    if out.exists() and not out.is_dir():
        raise BootError(f"--out {out}: not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise BootError(f"--out {out}: not empty (results of another boot would mix)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BootError(f"--out {out}: {e.strerror or e}") from None


def verdict(result: BootResult) -> Verdict:
    """Exit 0 when the boot finished and Ready was reported; else the first reason why not."""
    states = [
        r.state + (f"/{r.substatus}" if r.substatus else "") for r in result.fabric.health_reports
    ]
    seen = ", ".join(states) if states else "none"
    out = result.workdir
    if result.up_after is None:
        return Verdict(
            False,
            f"the boot did not finish within {result.spec.timeout:g} s (health reports: {seen};"
            f" see {out / 'console.log'})",
        )
    if not any(r.state == "Ready" for r in result.fabric.health_reports):
        return Verdict(
            False,
            f"the boot finished after {result.up_after:.1f} s but Ready was not reported"
            f" (health reports: {seen}; see {out / 'share'})",
        )
    if result.text("collected") == "":
        return Verdict(
            False, f"Ready was reported but the guest's results were not collected ({out})"
        )
    return Verdict(
        True,
        f"Ready after {result.ready_after or 0:.1f} s, boot finished after {result.up_after:.1f} s;"
        f" results in {out}",
    )


def write_evidence(result: BootResult, judged: Verdict) -> None:
    """The decoded status uploads and the summary, beside what the boot left."""
    out = result.workdir
    uploads = [r.status_upload for r in result.fabric.requests if r.status_upload is not None]
    (out / "status-uploads.txt").write_text("\n".join(status.describe(uploads)) + "\n")
    documents = [u["document"] for u in uploads if isinstance(u.get("document"), dict)]
    decoded = {
        "uploads": uploads,
        "handlers": status.latest_by_handler(documents),
    }
    (out / "status-uploads.json").write_text(json.dumps(decoded, indent=2) + "\n")
    summary: dict[str, Any] = {
        "ok": judged.ok,
        "verdict": judged.line,
        "vm_id": result.spec.scenario.vm_id,
        "ready_after": result.ready_after,
        "up_after": result.up_after,
        "health_reports": [
            {"incarnation": r.incarnation, "state": r.state, "substatus": r.substatus}
            for r in result.fabric.health_reports
        ],
        "requests": len(result.fabric.requests),
        "status_uploads": len(uploads),
        "qemu_exit_status": result.exit_status,
        "notes": result.notes,
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name in DISKS:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / MEDIA, ignore_errors=True)


def hold(seconds: float) -> Any:
    """A ``while_up`` that keeps the guest running ``seconds`` before it collects."""

    def wait(result: BootResult) -> None:
        time.sleep(seconds)

    return wait


def boot(
    image: Image,
    scenario: scenarios.Scenario,
    out: Path,
    *,
    timeout: float = 300.0,
    up_for: float = 0.0,
    kernel_args: tuple[str, ...] = (),
) -> Verdict:
    """Boot once (twice when the guest kernel never saw its disk: the host, not azagent)."""
    spec = BootSpec(
        "boot",
        scenario,
        kernel_args=kernel_args,
        timeout=timeout,
        while_up=hold(up_for) if up_for > 0 else None,
    )
    try:
        result = _boot(image, spec, out)
    except (scenarios.ScenarioError, OSError) as e:
        raise BootError(f"cannot boot: {e}") from None
    judged = verdict(result)
    write_evidence(result, judged)
    return judged


def _boot(image: Image, spec: BootSpec, out: Path) -> BootResult:
    from azfabric.media import MediaError

    try:
        result = run_boot(image, spec, out)
        console = out / "console.log"
        if result.up_after is None and ROOT_NOT_FOUND in _read(console):
            print("vmtest: the guest did not find its root disk (a slow host); booting again")
            console.rename(console.with_suffix(".first-try.log"))
            requests = out / "requests.jsonl"
            if requests.exists():
                requests.rename(out / "requests.first-try.jsonl")
            result = run_boot(image, spec, out)
    except MediaError as e:
        raise BootError(f"cannot write the provisioning media: {e}") from None
    return result


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
