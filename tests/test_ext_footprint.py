"""The extension service stays small: what it imports, and tools/bench-extensions.

The service runs as long as the VM, so whatever it imports stays resident.
Its passes talk to the platform through requests and parse XML with
xmltodict (the project's libraries for HTTP and XML: they stay resident),
but installs and certificate fetches run in a forked child: cryptography
(and this package's package code) never enter the
service process, even after a pass that installed a handler and fetched the
certificate its protected settings are encrypted to. (OpenSSL's _hashlib is
resident all the same: requests imports hashlib.) And the benchmark tool fails, saying why, when
the service is broken, and measures it when it works (a few seconds here;
the real run is `tools/bench-extensions`, two minutes by default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from azfabric.scenario import Extension, Scenario
from azfabric.server import Fabric
from conftest import FIXTURES, REPO
from provisioning_env import make_vm

SAMPLE = "OSTCExtensions.ExampleHandlerLinux"
SAMPLE_ZIP = FIXTURES / "walinuxagent/ext/sample_ext-1.3.0.zip"
BENCH = REPO / "tools/bench-extensions"
HEAVY = ("cryptography", "_cffi_backend", "azagent.extensions.package")

# One pass of the stage as shipped, then the modules its process holds.
MODULES_AFTER_ONE_RUN = """
import json, runpy, sys
sys.argv = ["extensions", "--root", sys.argv[1], "--once"]
try:
    runpy.run_path({stage!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "modules": sorted(sys.modules)}}))
"""


def test_a_pass_that_installs_and_fetches_certificates_imports_nothing_heavy(
    root: Path,
) -> None:
    scenario = Scenario(
        extensions=[
            Extension(
                name=SAMPLE,
                version="1.3.0",
                package=str(SAMPLE_ZIP),
                public_settings={"message": "small"},
                protected_settings={"secret": "not for the log"},
            )
        ]
    )
    with Fabric(scenario) as fabric:
        vm = make_vm(root, fabric.scenario, fabric, with_media=False)
        (vm.root / "var/lib/waagent").mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                MODULES_AFTER_ONE_RUN.format(stage=str(REPO / "stages/extensions")),
                str(vm.root),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["code"] in (0, None), done.stderr
        # The pass really installed, fetched the certificate and enabled.
        assert any("certificates" in r.path for r in fabric.requests), done.stderr
        assert list((vm.root / "var/lib/waagent").glob("*.prv")), done.stderr
        assert (vm.root / f"var/lib/waagent/{SAMPLE}-1.3.0/HandlerManifest.json").is_file()
        assert fabric.status_uploads, done.stderr
    loaded = [m for m in result["modules"] if m in HEAVY or m.split(".")[0] in HEAVY]
    assert loaded == []
    assert "requests" in result["modules"]  # what the pass really used, so the check means it


def bench(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), "--python", python, *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
    )


def test_the_bench_fails_when_the_service_dies(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 3\n")
    broken.chmod(0o755)
    done = bench("--seconds", "1", "--setup", "10", python=str(broken))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL: the service exited with status 3" in done.stdout
    assert "cannot start" in done.stdout  # the tail of its output, to see why


def test_the_bench_fails_when_the_service_never_enables(tmp_path: Path) -> None:
    idle = tmp_path / "python"
    idle.write_text('#!/bin/sh\ncase "$1" in -c) exit 0;; esac\nexec sleep 30\n')
    idle.chmod(0o755)
    done = bench("--seconds", "1", "--setup", "2", python=str(idle))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL: no first enable reported within 2 s" in done.stdout


def test_the_bench_measures_a_working_service() -> None:
    done = bench("--seconds", "2", "--period", "2")
    assert done.returncode in (0, 3), done.stdout + done.stderr  # 3: a target missed
    out = done.stdout
    assert "FAIL" not in out
    for figure in ("memory: RSS ", "CPU: ", "traffic: ", "new goal state (sequence 1"):
        assert figure in out, out
    assert "Python 3." in out
    assert "poll period 2 s" in out
    rss = [line for line in out.splitlines() if "RSS <= 20 MB" in line]
    assert rss, out
    assert rss[0][:4] in ("PASS", "MISS"), out
    verdicts = [line.split()[0] for line in out.splitlines() if line[:4] in ("PASS", "MISS")]
    assert len(verdicts) == 3, out
