"""The pure parts of `tools/vmtest bench --idle`: the guest's readings and the figures.

The boots are not run here (minutes under TCG); these check that a reading of
/proc and the unit's cgroup turns into the right RSS, CPU and request figures,
and that a handler that restarted or never ran is a failure, never a zero.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from azvmtest import bench, idle


def stat_line(pid: int, comm: str, *, utime: int, stime: int, start: int, rss: int) -> str:
    """A /proc/<pid>/stat line of 52 fields with the given figures (fields 14, 15, 22, 24)."""
    fields = ["0"] * 53  # 1-based: fields[1] .. fields[52]
    fields[1], fields[2], fields[3] = str(pid), f"({comm})", "S"
    fields[14], fields[15], fields[22], fields[24] = str(utime), str(stime), str(start), str(rss)
    return " ".join(fields[1:])


def reading(
    uptime: float,
    processes: list[tuple[int, str, str, int, int, int]],
    *,
    main_pid: int,
    memory: str = "52428800",
    usage: str = "4000000",
    cgroup: str = "/system.slice/x.service",
) -> str:
    """A reading as idle.sample_command prints it; processes: (pid, comm, cmdline, cpu
    ticks, starttime, rss pages)."""
    lines = [
        f"uptime={uptime}",
        "clk_tck=100",
        "pagesize=4096",
        f"mainpid={main_pid}",
        f"cgroup={cgroup}",
        f"memory.current={memory}",
        f"cpu.usage_usec={usage}",
    ]
    for pid, comm, cmdline, ticks, start, rss in processes:
        lines.append("stat " + stat_line(pid, comm, utime=ticks, stime=0, start=start, rss=rss))
        lines.append(f"cmd {pid} {cmdline} ")
    return "\n".join([*lines, idle.SAMPLE_END, ""])


# -- /proc and the reading -----------------------------------------------------------


def test_a_stat_line_whose_command_name_holds_spaces_and_parentheses() -> None:
    line = stat_line(812, "python3 (x) y", utime=300, stime=200, start=12345, rss=5000)
    process = idle.parse_stat(line)
    assert (process.pid, process.comm) == (812, "python3 (x) y")
    assert (process.cpu_ticks, process.starttime, process.rss_pages) == (500, 12345, 5000)


@pytest.mark.parametrize("line", ["", "812 python3 S 1 2", "812 (python3) S 1 2 3"])
def test_a_stat_line_that_is_not_whole_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="stat line"):
        idle.parse_stat(line)


def test_a_reading_names_the_unit_its_processes_and_their_command_lines() -> None:
    text = reading(
        100.5,
        [(700, "waagent", "python3 -u /usr/sbin/waagent -daemon", 50, 900, 4000)],
        main_pid=700,
    )
    # A process that ended between the listing and its reading leaves an empty stat line.
    text = text.replace(idle.SAMPLE_END, "stat \ncmd 701 \n" + idle.SAMPLE_END)
    parsed = idle.parse_reading(text)
    assert (parsed.uptime, parsed.clk_tck, parsed.pagesize, parsed.main_pid) == (
        100.5,
        100,
        4096,
        700,
    )
    assert (parsed.memory_current, parsed.cgroup_cpu_usec) == (52428800, 4000000)
    assert list(parsed.processes) == [700]
    assert parsed.processes[700].cmdline == "python3 -u /usr/sbin/waagent -daemon"


def test_a_cut_short_or_incomplete_reading_is_refused() -> None:
    text = reading(1.0, [], main_pid=0)
    with pytest.raises(ValueError, match="cut short"):
        idle.parse_reading(text.replace(idle.SAMPLE_END, ""))
    with pytest.raises(ValueError, match="lacks"):
        idle.parse_reading(text.replace("uptime=1.0\n", ""))


def test_without_the_memory_controller_the_cgroup_memory_is_unknown_not_zero() -> None:
    parsed = idle.parse_reading(reading(1.0, [], main_pid=0, memory="", usage=""))
    assert (parsed.memory_current, parsed.cgroup_cpu_usec) == (None, None)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_guest_command_prints_a_reading_that_parses(tmp_path: Path) -> None:
    # systemctl stands in for the guest's: it names this test's process as the main one.
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\ncase "$3" in MainPID) echo {os.getpid()};; *) echo;; esac\n')
    fake.chmod(0o755)
    done = subprocess.run(
        ["bash", "-c", idle.sample_command("azure-extensions.service")],
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    parsed = idle.parse_reading(done.stdout)
    assert parsed.main_pid == os.getpid()
    assert parsed.uptime > 0
    assert parsed.clk_tck > 0
    assert parsed.pagesize > 0


# -- the figures ---------------------------------------------------------------------

DAEMON = (700, "python3", "python3 -u /usr/sbin/waagent -daemon", 50, 900, 4000)


def test_waagent_s_handler_is_its_run_exthandlers_process() -> None:
    before = idle.parse_reading(
        reading(
            100.0,
            [
                DAEMON,
                (710, "python3", "python3 -u /usr/sbin/waagent -run-exthandlers", 400, 950, 9000),
            ],
            main_pid=700,
            usage="10000000",
        )
    )
    after = idle.parse_reading(
        reading(
            220.5,
            [
                DAEMON,
                (710, "python3", "python3 -u /usr/sbin/waagent -run-exthandlers", 650, 950, 9216),
            ],
            main_pid=700,
            memory="104857600",
            usage="13500000",
        )
    )
    figures = idle.footprint("waagent", before, after, requests=42)
    assert figures.failures == []
    assert figures.window == 120.5
    assert figures.handler_rss == 36.0  # 9216 pages of 4 KiB
    assert figures.unit_rss == 51.6  # (4000 + 9216) pages
    assert figures.unit_memory == 100.0
    assert figures.handler_cpu == 2.5  # 250 ticks at 100 a second
    assert figures.unit_cpu == 3.5
    assert (figures.requests, figures.processes) == (42, 2)


def test_azagent_s_handler_is_the_main_process() -> None:
    handler = (300, "extensions", "/usr/bin/python3 /usr/libexec/azagent/extensions")
    before = idle.parse_reading(reading(10.0, [(*handler, 100, 77, 6400)], main_pid=300))
    after = idle.parse_reading(reading(130.0, [(*handler, 112, 77, 6400)], main_pid=300))
    figures = idle.footprint("azagent", before, after, requests=3)
    assert (figures.handler_rss, figures.handler_cpu, figures.failures) == (25.0, 0.12, [])


def test_a_handler_that_restarted_in_the_window_is_a_failure_not_a_figure() -> None:
    # The same pid again, but a different start time: another process.
    handler = (300, "extensions", "/usr/libexec/azagent/extensions")
    before = idle.parse_reading(reading(10.0, [(*handler, 900, 77, 6400)], main_pid=300))
    after = idle.parse_reading(reading(130.0, [(*handler, 5, 9000, 6400)], main_pid=300))
    figures = idle.footprint("azagent", before, after, requests=3)
    assert figures.handler_cpu is None
    assert figures.failures
    assert "changed" in figures.failures[0]


def test_no_handler_process_is_a_failure() -> None:
    before = idle.parse_reading(reading(10.0, [DAEMON], main_pid=700))
    after = idle.parse_reading(reading(130.0, [DAEMON], main_pid=700))
    figures = idle.footprint("waagent", before, after, requests=0)
    assert figures.handler_rss is None
    assert figures.failures
    assert "no extension handler process" in figures.failures[0]
    stopped = idle.parse_reading(reading(130.0, [], main_pid=0, cgroup=""))
    assert idle.footprint("azagent", stopped, stopped, requests=0).failures


# -- the extension's status ----------------------------------------------------------


def _status(
    state: str = "Ready", seq: int = 0, status: str = "success", message: str = "hi"
) -> dict[str, Any]:
    return {
        "aggregateStatus": {
            "handlerAggregateStatus": [
                {"handlerName": "Other.Handler", "status": "Ready"},
                {
                    "handlerName": "OSTCExtensions.ExampleHandlerLinux",
                    "status": state,
                    "runtimeSettingsStatus": {
                        "sequenceNumber": seq,
                        "settingsStatus": {
                            "status": {"status": status, "formattedMessage": {"message": message}}
                        },
                    },
                },
            ]
        }
    }


def test_the_sample_s_success_is_seen_only_when_it_echoes_its_setting() -> None:
    name = "OSTCExtensions.ExampleHandlerLinux"
    assert idle.sample_succeeded(_status(), name, 0, "hi")
    assert not idle.sample_succeeded(_status(message="other"), name, 0, "hi")
    assert not idle.sample_succeeded(_status(seq=1), name, 0, "hi")
    assert not idle.sample_succeeded(_status(status="transitioning"), name, 0, "hi")
    assert not idle.sample_succeeded(_status(state="NotReady"), name, 0, "hi")
    assert not idle.sample_succeeded(_status(), "Other.Handler", 0, "hi")
    assert not idle.sample_succeeded(None, name, 0, "hi")
    assert not idle.sample_succeeded({"aggregateStatus": []}, name, 0, "hi")


# -- summary, table, --json ----------------------------------------------------------


def test_idle_medians_go_into_the_summary_and_the_table() -> None:
    boots = [
        bench.Boot("azagent", 1, idle=idle.Idle(120.0, 25.0, 25.0, 30.0, 0.12, 0.2, 8, 1)),
        bench.Boot("azagent", 2, idle=idle.Idle(121.0, 27.0, 27.0, None, 0.16, 0.3, 10, 1)),
        bench.Boot(
            "azagent",
            3,
            failures=["idle: no success status"],
            idle=idle.Idle(failures=["no success status"]),
        ),
        bench.Boot("waagent", 1, idle=idle.Idle(120.2, 40.0, 65.5, 80.0, 2.5, 2.75, 42, 2)),
        bench.Boot("none", 1, lease=10.0, ssh=20.0),
    ]
    result = bench.summary(boots)
    assert result["azagent"]["idle"] == {
        "handler_rss": 26.0,
        "unit_rss": 26.0,
        "unit_memory": 30.0,
        "handler_cpu": 0.14,
        "unit_cpu": 0.25,
        "requests": 9,
        "window": 120.5,
        "windows": 2,
    }
    assert "idle" not in result["none"]
    json.dumps(result)  # what --json writes
    text = idle.table(result)
    assert (
        "| azagent | azure-extensions.service | 26.0 | 26.0 | 30.0 | 0.14 | 0.25 | 9 | 120.5 | 2 |"
        in text
    )
    assert (
        "| waagent | walinuxagent.service | 40.0 | 65.5 | 80.0 | 2.50 | 2.75 | 42 | 120.2 | 1 |"
        in text
    )
    assert "| none |" not in text


def test_an_agent_whose_every_window_failed_shows_no_figures() -> None:
    failed = idle.Idle(failures=["no success status"])
    result = bench.summary([bench.Boot("waagent", 1, failures=["idle: x"], idle=failed)])
    assert result["waagent"]["idle"]["windows"] == 0
    assert "| waagent | walinuxagent.service | - | - | - | - | - | - | - | 0 |" in idle.table(
        result
    )


def test_the_session_answers_idle_with_a_reading_and_anything_else_with_the_accounting() -> None:
    command = bench._session_command("waagent", "walinuxagent.service")
    assert 'if [ "$what" = idle ]' in command
    assert idle.sample_command("walinuxagent.service") in command
    # Without --idle the session is what it always was.
    assert "idle" not in bench._session_command("waagent")
