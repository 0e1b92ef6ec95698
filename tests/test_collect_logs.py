"""azagent collect-logs: what the zip holds, its mode, and the secrets it never holds.

The commands it runs (journalctl, uname, ip, lsblk, systemctl) are this test's
own fakes, first on PATH, printing planted secrets; the host is only read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import Run, child_environment

SAS = "https://acct.blob.core.windows.net/c/status.json?sv=2020-08-04&sr=b&sig=SASsecretSIG%3D"
PEM = "-----BEGIN PRIVATE KEY-----\nPRIVATEKEYMATERIAL\n-----END PRIVATE KEY-----"
SECRETS = (
    "Hunter2-Secret",
    "SASsecretSIG",
    "PRIVATEKEYMATERIAL",
    "hashhashhashhash",
    "PROVISIONING-SECRET",
    "CUSTOMDATA-SECRET",
    "OVF-SECRET",
    "JournalPass1",
    "JOURNALsig",
    "proxypass",
    "FACTSsecretSIG",
)


def azagent(*args: str, env: dict[str, str] | None = None) -> Run:
    environment = child_environment()
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "azagent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
        umask=0,  # the archive must be 0600 whatever the caller's umask
    )
    return Run(done.returncode, done.stdout, done.stderr)


def fake_tools(directory: Path, journal: str) -> dict[str, str]:
    """A PATH whose journalctl, uname, ip, lsblk and systemctl are harmless scripts."""
    directory.mkdir()
    scripts = {
        "journalctl": journal,
        "uname": "echo Linux fakehost 6.1.0-fake #1 SMP x86_64 GNU/Linux",
        "ip": f"echo '2: eth0: <BROADCAST> mtu 1500'; echo 'got {SAS.replace('SAS', 'FACTS')}'",
        "lsblk": "echo 'sda 8:0 30G disk ext4 / Virtual Disk'",
        "systemctl": "if [ \"$1\" = status ]; then echo '* azure-kernel-tune.service'; "
        "echo 'usermod: password=Hunter2-Secret'; exit 3; fi; echo enabled",
    }
    for name, body in scripts.items():
        path = directory / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return {"PATH": f"{directory}:{os.environ['PATH']}"}


JOURNAL = (
    'echo "ARGS: $*"\n'
    "echo 'Nov 22 10:00:00.000001 vm azagent[1]: kernel-tune: done'\n"
    "echo 'Nov 22 10:00:01.000002 vm azagent[2]: GET https://x.blob.core.windows.net/a?sig=JOURNALsig&se=1'\n"
    "echo 'Nov 22 10:00:02.000003 vm azagent[3]: chpasswd: password=JournalPass1 rejected'\n"
    "echo 'Nov 22 10:00:03.000004 vm azagent[4]: proxy http://alice:proxypass@proxy.example:3128/'"
)


def planted_root(root: Path) -> None:
    """A tree with results worth collecting and secrets that must stay out."""
    stages = root / "run/azagent/stages"
    stages.mkdir(parents=True)
    (stages / "kernel-tune.json").write_text('{"stage": "kernel-tune", "state": "done"}\n')
    (stages / "create-user.json").write_text(
        '{"stage": "create-user", "state": "failed",'
        ' "reason": "usermod failed: password=Hunter2-Secret, hash $6$saltsalt$hashhashhashhash",'
        f' "changes": ["uploaded status to {SAS}", "{PEM.replace(chr(10), " ")}"]}}\n'
    )
    (root / "run/azagent/provisioning.json").write_text('{"password": "PROVISIONING-SECRET"}\n')
    (stages / "leak.json").symlink_to(root / "run/azagent/provisioning.json")
    (stages / "provisioning.json").write_text('{"x": "PROVISIONING-SECRET"}\n')
    lib = root / "var/lib/waagent"
    lib.mkdir(parents=True)
    (lib / "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9.prv").write_text(PEM + "\n")
    (lib / "CustomData").write_text("CUSTOMDATA-SECRET\n")
    (lib / "ovf-env.xml").write_text("<UserName>OVF-SECRET</UserName>\n")
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
    )
    (root / "etc/waagent.conf").write_text("OS.RootDeviceScsiTimeout=180\n")


def contents(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name).decode() for name in zf.namelist()}


def test_archive_of_a_root(root: Path, tmp_path: Path) -> None:
    planted_root(root)
    env = fake_tools(tmp_path / "bin", JOURNAL)
    run = azagent("collect-logs", "--root", str(root), env=env)
    assert run.returncode == 0, run.stderr
    archive = root / "var/lib/waagent/logcollector/logs.zip"
    assert f"collect-logs: wrote {archive}" in run.stdout
    assert "readable by root only" in run.stdout
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    assert oct(archive.parent.stat().st_mode & 0o777) == "0o700"
    with zipfile.ZipFile(archive) as zf:
        assert all(info.external_attr >> 16 & 0o777 == 0o600 for info in zf.infolist())

    files = contents(archive)
    assert sorted(files) == [
        "README.txt",
        "azagent/configuration.txt",
        "azagent/stages/create-user.json",
        "azagent/stages/kernel-tune.json",
        "azagent/status.txt",
        "journal/azure-units.txt",
        "journal/extensions.txt",
        "system/os-release",
    ]
    journal = files["journal/azure-units.txt"]
    assert f"ARGS: --root={root} -u azure-* -o short-precise --no-pager" in journal
    assert "kernel-tune: done" in journal
    assert "OS.RootDeviceScsiTimeout = 180" in files["azagent/configuration.txt"]
    assert "kernel-tune" in files["azagent/status.txt"]
    assert '"state": "failed"' in files["azagent/stages/create-user.json"]
    assert "ID=debian" in files["system/os-release"]
    readme = files["README.txt"]
    assert "left out /run/azagent/stages/leak.json" in readme
    assert "left out /run/azagent/stages/provisioning.json" in readme
    assert "not collected under --root" in readme

    everything = "\n".join(files.values())
    for secret in SECRETS:
        assert secret not in everything, secret
    assert "<redacted>" in everything
    assert "<redacted private key>" in everything


def test_archive_of_the_running_system(tmp_path: Path) -> None:
    """On / it adds the system facts; the host is only read, the zip goes to --output."""
    env = fake_tools(tmp_path / "bin", JOURNAL)
    output = tmp_path / "out/support.zip"
    run = azagent("-collect-logs", "-full", "--output", str(output), env=env)
    assert run.returncode == 0, run.stderr
    assert oct(output.stat().st_mode & 0o777) == "0o600"
    files = contents(output)
    assert files["system/uname.txt"].startswith("Linux fakehost 6.1.0-fake")
    assert "eth0" in files["system/ip-addr.txt"]
    assert "Virtual Disk" in files["system/lsblk.txt"]
    status = files["system/systemctl-status.txt"]
    assert "azure-kernel-tune.service" in status
    assert "[systemctl exited with status 3]" not in status  # no stderr: nothing to add
    assert "ARGS: -u azure-* -o short-precise --no-pager" in files["journal/azure-units.txt"]
    everything = "\n".join(files.values())
    for secret in SECRETS:
        assert secret not in everything, secret


def test_no_journal_is_a_note(root: Path, tmp_path: Path) -> None:
    env = fake_tools(
        tmp_path / "bin", "echo 'No journal files were found.' >&2\necho 'Failed' >&2\nexit 1"
    )
    output = tmp_path / "logs.zip"
    run = azagent("collect-logs", "--root", str(root), "--output", str(output), env=env)
    assert run.returncode == 0, run.stderr
    assert "note: journal not collected: journalctl found no journal" in run.stdout
    files = contents(output)
    assert "journal/azure-units.txt" not in files
    assert "journal/extensions.txt" not in files
    assert "journalctl found no journal" in files["README.txt"]
    assert "extension handler journal not collected: journalctl found no journal" in run.stdout
    assert "no stage results in /run/azagent/stages" in files["README.txt"]


def test_the_journal_is_capped_keeping_the_latest(root: Path, tmp_path: Path) -> None:
    # About 9.5 MiB: the oldest lines go, the newest stay.
    journal = (
        "echo 'the oldest line'\n"
        "i=0; line=$(printf '%0100d' 0)\n"
        'while [ $i -lt 95000 ]; do echo "$line"; i=$((i+1)); done\n'
        "echo 'the newest line'"
    )
    env = fake_tools(tmp_path / "bin", journal)
    output = tmp_path / "logs.zip"
    run = azagent("collect-logs", "--root", str(root), "--output", str(output), env=env)
    assert run.returncode == 0, run.stderr
    text = contents(output)["journal/azure-units.txt"]
    assert len(text.encode()) <= 8 * 1024 * 1024 + 100
    assert "the newest line" in text
    assert "the oldest line" not in text
    assert text.startswith("[the oldest ")
    assert "journal truncated" in run.stdout


def test_an_unwritable_output_fails_cleanly(root: Path, tmp_path: Path) -> None:
    env = fake_tools(tmp_path / "bin", "exit 0")
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = azagent("collect-logs", "--root", str(root), "--output", f"{blocker}/logs.zip", env=env)
    assert run.returncode == 1
    assert "collect-logs failed" in run.stderr


@pytest.mark.parametrize("bad", ["Lib.Dir=relative", "Lib.Dir=/a/../b"])
def test_a_bad_configuration_fails(root: Path, bad: str) -> None:
    (root / "etc").mkdir()
    (root / "etc/waagent.conf").write_text(bad + "\n")
    run = azagent("collect-logs", "--root", str(root))
    assert run.returncode == 1
    assert "Lib.Dir" in run.stderr


def test_a_missing_lib_dir_is_created_root_only(root: Path, tmp_path: Path) -> None:
    env = fake_tools(tmp_path / "bin", "exit 0")
    run = azagent("collect-logs", "--root", str(root), env=env)
    assert run.returncode == 0, run.stderr
    assert oct((root / "var/lib/waagent").stat().st_mode & 0o777) == "0o700"
    assert (root / "var/lib/waagent/logcollector/logs.zip").is_file()


# -- the extension handler's part ------------------------------------------------

EXT_JOURNAL = (
    'echo "ARGS: $*"\n'
    'case "$*" in *azure-extensions.service*)\n'
    "  echo 'Nov 22 10:01:00.000001 vm extensions[9]: incarnation 2: 1 handler enabled'\n"
    "  echo 'Nov 22 10:01:01.000002 vm systemd[1]: azure-ext-Contoso.Ext-enable-0-ab.service:"
    " Deactivated successfully.'\n"
    "  echo 'Nov 22 10:01:02.000003 vm extensions[9]: PUT https://b.blob.core.windows.net/s"
    "?sv=1&sig=EXTjournalSIG'\n"
    ";; esac"
)
HANDLER = "Contoso.Test.Handler"
EXT_SECRETS = ("EXTjournalSIG", "EXTlogSIG", "EXTpass1", "EXTprotected", "SHADOWSECRET")


def planted_extension_logs(root: Path) -> Path:
    """/var/log/azure as extensions leave it, with secrets, links and hostile names."""
    logs = root / "var/log/azure"
    handler = logs / HANDLER
    handler.mkdir(parents=True)
    (handler / "CommandExecution.log").write_text(
        f"2026-11-22T10:01:00Z {HANDLER}/enable: bin/enable.sh\nexit status 0, 0.2 s\n"
        "[stdout]\nGET https://c.blob.core.windows.net/p/a.zip?sv=1&sig=EXTlogSIG\n"
        '[stderr]\n{"protectedSettings": "EXTprotected", "commandToExecute": "date"}\n'
    )
    (handler / "CommandExecution_20261121.log").write_text("an older rotation\n")
    (handler / "extension.log").write_text("handler: useradd bob password=EXTpass1\n")
    (handler / "extension.log.1").write_text("handler: yesterday\n")
    (handler / "enable.0.stdout").write_text("enabled the test handler\n")
    (handler / "old.log.gz").write_bytes(b"\x1f\x8b not text")
    (handler / "events").mkdir()
    (handler / "events" / "1.json").write_text('{"event": 1}\n')
    secret = root / "etc/shadow-copy"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("SHADOWSECRET\n")
    (handler / "leak.log").symlink_to(secret)
    os.mkfifo(handler / "pipe.log")  # opened, it would block the collection
    # A handler folder that is a link: not followed.
    (root / "elsewhere").mkdir()
    (root / "elsewhere/secret.log").write_text("SHADOWSECRET\n")
    (logs / "Linked.Handler").symlink_to(root / "elsewhere")
    # Names an extension chose: a newline, a terminal escape, non-UTF-8 bytes, '..'.
    hostile = logs / "..Evil\nHandler"
    hostile.mkdir()
    (hostile / "..\x1b[31mred\n.log").write_text("hostile content\n")
    os.mkdir(os.fsencode(logs) + b"/Bad\xffBytes")
    (Path(os.fsdecode(os.fsencode(logs) + b"/Bad\xffBytes")) / "x.log").write_text("bytes\n")
    return logs


def test_the_extension_handler_part(root: Path, tmp_path: Path) -> None:
    planted_extension_logs(root)
    env = fake_tools(tmp_path / "bin", EXT_JOURNAL)
    output = tmp_path / "logs.zip"
    run = azagent("collect-logs", "--root", str(root), "--output", str(output), env=env)
    assert run.returncode == 0, run.stderr
    files = contents(output)

    journal = files["journal/extensions.txt"]
    assert (
        f"ARGS: --root={root} -u azure-extensions.service -u azure-ext-* "
        "-u azure-vmextensions*.slice -o short-precise --no-pager"
    ) in journal
    assert "incarnation 2: 1 handler enabled" in journal
    assert "azure-ext-Contoso.Ext-enable-0-ab.service" in journal
    assert "journal/azure-units.txt" in files  # the stages' journal is still there

    folder = f"extensions/{HANDLER}"
    collected = sorted(name for name in files if name.startswith(folder + "/"))
    assert collected == [
        f"{folder}/CommandExecution.log",
        f"{folder}/CommandExecution_20261121.log",
        f"{folder}/enable.0.stdout",
        f"{folder}/extension.log",
        f"{folder}/extension.log.1",
    ]
    command_log = files[f"{folder}/CommandExecution.log"]
    assert "exit status 0" in command_log
    assert '"protectedSettings": "<redacted>"' in command_log
    assert "handler: useradd bob password=<redacted>" in files[f"{folder}/extension.log"]

    # Hostile names arrive escaped, never as paths, control characters or '..'.
    assert files["extensions/%2E.Evil%0AHandler/%2E.%1B%5B31mred%0A.log"] == "hostile content\n"
    assert files["extensions/Bad%FFBytes/x.log"] == "bytes\n"
    for name in files:
        assert all(part not in ("", ".", "..") for part in name.split("/")), name
        assert name.isprintable(), name
        assert "\\" not in name, name

    readme = files["README.txt"]
    assert f"left out {folder}/leak.log: a symbolic link" in readme
    assert f"left out {folder}/pipe.log: not a regular file" in readme
    assert f"left out 2 other entries of /var/log/azure/{HANDLER} (not a log file)" in readme
    assert "left out /var/log/azure/Linked.Handler: a symbolic link" in readme
    assert not any(name.startswith("extensions/Linked.Handler") for name in files)
    assert "\x1b" not in readme
    assert "\x1b" not in run.stdout

    everything = "\n".join(files.values())
    for secret in (*SECRETS, *EXT_SECRETS):
        assert secret not in everything, secret


def test_extension_logs_keep_the_newest_of_each_file(root: Path, tmp_path: Path) -> None:
    handler = root / "var/log/azure" / HANDLER
    handler.mkdir(parents=True)
    line = "x" * 99 + "\n"
    with open(handler / "extension.log", "w") as f:
        f.write("the oldest line\n")
        f.write(line * 15_000)  # 1.5 MB
        f.write("the newest line\n")
    env = fake_tools(tmp_path / "bin", "exit 0")
    output = tmp_path / "logs.zip"
    run = azagent("collect-logs", "--root", str(root), "--output", str(output), env=env)
    assert run.returncode == 0, run.stderr
    text = contents(output)[f"extensions/{HANDLER}/extension.log"]
    assert text.startswith("[the oldest ")
    assert "the newest line" in text
    assert "the oldest line" not in text
    assert len(text.encode()) <= 1024 * 1024 + 100
    assert f"extensions/{HANDLER}/extension.log truncated" in run.stdout


def test_extension_logs_are_bounded_together(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CommandExecution logs come first; once the bound is reached the rest is a note."""
    from azagent import logcollect
    from azagent.config import defaults
    from azagent.context import Context

    monkeypatch.setattr(logcollect, "EXTENSION_LOG_CAP", 1000)
    monkeypatch.setattr(logcollect, "EXTENSION_LOGS_CAP", 2500)
    monkeypatch.setenv("PATH", fake_tools(tmp_path / "bin", "exit 0")["PATH"])
    for age, name in enumerate(("A.First", "B.Second", "C.Third")):
        folder = root / "var/log/azure" / name
        folder.mkdir(parents=True)
        (folder / "handler.log").write_text(f"{name} handler log\n" + "h" * 2000 + "\nnewest\n")
        os.utime(folder / "handler.log", (1e9 - age, 1e9 - age))  # A's is the newest
        (folder / "CommandExecution.log").write_text(f"{name} commands\n" + "c" * 700 + "\n")
    ctx = Context(stage="collect-logs", root=root, config=defaults())
    archive = logcollect.collect_logs(ctx, tmp_path / "logs.zip", {})
    files = contents(archive.path)
    logs = {name: text for name, text in files.items() if name.startswith("extensions/")}
    assert sorted(logs) == [
        "extensions/A.First/CommandExecution.log",
        "extensions/A.First/handler.log",
        "extensions/B.Second/CommandExecution.log",
        "extensions/C.Third/CommandExecution.log",
    ]
    # Three CommandExecution logs whole (2,160 bytes), the rest of the bound
    # for the newest part of the newest other log.
    handler_log = logs["extensions/A.First/handler.log"]
    assert handler_log.startswith("[the oldest ")
    assert handler_log.endswith("\nnewest\n")
    assert len(handler_log.encode()) <= 2500 - 3 * 720 + 50
    assert any("reached 2500 bytes" in note for note in archive.notes)
    assert "left out extensions/B.Second/handler.log" in files["README.txt"]
    assert "left out extensions/C.Third/handler.log" in files["README.txt"]


def test_a_log_dir_inside_lib_dir_is_not_read(root: Path, tmp_path: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/waagent.conf").write_text("Extension.LogDir=/var/lib/waagent/logs\n")
    folder = root / "var/lib/waagent/logs" / HANDLER
    folder.mkdir(parents=True)
    (folder / "CommandExecution.log").write_text("x\n")
    env = fake_tools(tmp_path / "bin", "exit 0")
    output = tmp_path / "logs.zip"
    run = azagent("collect-logs", "--root", str(root), "--output", str(output), env=env)
    assert run.returncode == 0, run.stderr
    assert "Extension.LogDir /var/lib/waagent/logs overlaps Lib.Dir" in run.stdout
    assert not any(name.startswith("extensions/") for name in contents(output))
