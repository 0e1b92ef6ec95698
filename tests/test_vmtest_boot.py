"""`tools/vmtest boot --scenario FILE --out DIR`: the file, the verdict, the evidence.

Fast: no guest boots here (the VM tier boots). The scenario file is the
emulator's; a bad one is one line on stderr and exit 2 before anything is
built; the verdict and the evidence are checked on a boot's recorded result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from azfabric.scenario import Scenario
from azvmtest import userboot
from azvmtest.boot import BootResult, BootSpec
from conftest import REPO, child_environment

EXAMPLE = REPO / "tools/azvmtest/example-scenario.json"


def vmtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "tools/vmtest"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_environment(),
        check=False,
    )


def test_the_example_scenario_loads() -> None:
    scenario = userboot.load_scenario(EXAMPLE)
    assert scenario.hostname == "image-check"
    assert scenario.username == "builder"
    assert scenario.public_keys[0].path == "/home/builder/.ssh/authorized_keys"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "Expecting property name"),
        ('{"hostnme": "x"}', "unknown field(s) hostnme"),
        ('{"faults": [{"endpoint": "wireserver", "kind": "explode"}]}', "faults[0].kind: one of"),
        ('{"extensions": [{"name": "A.B", "package": "missing.zip"}]}', "no package file"),
        ('{"vm_id": "not-a-uuid"}', "vm_id: not a UUID"),
        ("[1, 2]", "expected an object"),
        (b"\xff\xfe".decode("latin-1"), "codec can't decode"),
    ],
)
def test_a_bad_scenario_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "mine.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(userboot.BootError) as caught:
        userboot.load_scenario(path)
    message = str(caught.value)
    assert expected in message
    assert message.startswith(str(path))
    assert "\n" not in message


def test_a_missing_or_unreadable_scenario(tmp_path: Path) -> None:
    with pytest.raises(userboot.BootError, match="no such file"):
        userboot.load_scenario(tmp_path / "absent.json")
    with pytest.raises(userboot.BootError, match="a directory, not a scenario file"):
        userboot.load_scenario(tmp_path)


def test_the_output_directory(tmp_path: Path) -> None:
    userboot.prepare_out(tmp_path / "new/out")
    assert (tmp_path / "new/out").is_dir()
    userboot.prepare_out(tmp_path / "new/out")  # empty: fine
    (tmp_path / "new/out/requests.jsonl").write_text("{}\n")
    with pytest.raises(userboot.BootError, match="not empty"):
        userboot.prepare_out(tmp_path / "new/out")
    (tmp_path / "file").write_text("")
    with pytest.raises(userboot.BootError, match="not a directory"):
        userboot.prepare_out(tmp_path / "file")


def recorded(
    tmp_path: Path,
    *,
    states: tuple[str, ...] = ("Ready",),
    up_after: float | None = 41.5,
    collected: bool = True,
    uploads: tuple[dict[str, Any], ...] = (),
) -> BootResult:
    """A boot's result as run_boot leaves it, with the emulator's record faked."""
    out = tmp_path / "out"
    (out / "share").mkdir(parents=True)
    if collected:
        (out / "share/collected").write_text("done\n")
    for disk in userboot.DISKS:
        (out / disk).write_bytes(b"disk")
    (out / userboot.MEDIA / "ovf").mkdir(parents=True)
    (out / userboot.MEDIA / "ovf/ovf-env.xml").write_text("<UserPassword>x</UserPassword>")
    reports = [SimpleNamespace(incarnation=1, state=s, substatus=None) for s in states]
    requests = [SimpleNamespace(status_upload=u) for u in uploads]
    requests.append(SimpleNamespace(status_upload=None))
    fabric = SimpleNamespace(health_reports=reports, requests=requests)
    spec = BootSpec("boot", Scenario(vm_id="6c1f9c4e-1d3e-4a5b-9c7d-0e1f2a3b4c5d"))
    result = BootResult(spec, out, fabric, started=0.0)  # type: ignore[arg-type]
    result.up_after = up_after
    result.ready_after = 20.25 if "Ready" in states else None
    return result


def test_the_verdict(tmp_path: Path) -> None:
    ok = userboot.verdict(recorded(tmp_path / "ok"))
    assert ok.ok
    assert ok.line.startswith("Ready after 20.2 s, boot finished after 41.5 s; results in ")

    hung = userboot.verdict(recorded(tmp_path / "hung", states=(), up_after=None))
    assert not hung.ok
    assert "the boot did not finish within 300 s (health reports: none;" in hung.line
    assert "console.log" in hung.line

    failed = userboot.verdict(
        recorded(tmp_path / "failed", states=("NotReady/ProvisioningFailed",))
    )
    assert not failed.ok
    assert "Ready was not reported (health reports: NotReady/ProvisioningFailed;" in failed.line

    lost = userboot.verdict(recorded(tmp_path / "lost", collected=False))
    assert not lost.ok
    assert "results were not collected" in lost.line
    for judged in (ok, hung, failed, lost):
        assert "\n" not in judged.line


def test_the_evidence(tmp_path: Path) -> None:
    document = {
        "aggregateStatus": {
            "guestAgentStatus": {"version": "0.1.0", "status": "Ready"},
            "handlerAggregateStatus": [
                {"handlerName": "Contoso.Ext", "handlerVersion": "1.0", "status": "Ready"}
            ],
        }
    }
    upload = {"via": "hostgaplugin", "blob_type": "BlockBlob", "bytes": 300, "document": document}
    result = recorded(tmp_path, uploads=(upload,))
    judged = userboot.verdict(result)
    userboot.write_evidence(result, judged)
    out = result.workdir
    summary = json.loads((out / "result.json").read_text())
    assert summary["ok"] is True
    assert summary["verdict"] == judged.line
    assert summary["health_reports"] == [{"incarnation": 1, "state": "Ready", "substatus": None}]
    assert summary["status_uploads"] == 1
    assert summary["vm_id"] == "6c1f9c4e-1d3e-4a5b-9c7d-0e1f2a3b4c5d"
    text = (out / "status-uploads.txt").read_text()
    assert "status uploads: 1 (hostgaplugin 1)" in text
    assert "Contoso.Ext 1.0: Ready" in text
    decoded = json.loads((out / "status-uploads.json").read_text())
    assert decoded["handlers"]["Contoso.Ext"]["status"] == "Ready"
    assert not any((out / disk).exists() for disk in userboot.DISKS)  # no evidence, gigabytes
    assert not (out / userboot.MEDIA).exists()  # the scenario's secrets
    assert (out / "share/collected").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--scenario", "{out}/absent.json"], "absent.json: no such file"),
        (["--scenario", "{bad}"], "unknown field(s) hostnme"),
        (["--scenario", str(EXAMPLE), "--deb", "{out}/missing.deb"], "missing.deb: no such file"),
    ],
)
def test_the_command_answers_in_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"hostnme": "x"}')
    filled = [a.format(out=tmp_path, bad=bad) for a in args]
    done = vmtest("boot", *filled, "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("vmtest: ")
    assert expected in done.stderr
    assert done.stdout == ""


def test_a_used_output_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/console.log").write_text("an earlier boot\n")
    done = vmtest("boot", "--scenario", str(EXAMPLE), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert (
        done.stderr
        == f"vmtest: --out {tmp_path / 'out'}: not empty (results of another boot would mix)\n"
    )
