"""Run stage executables in processes forked from one that has imported azagent already.

A stage started as ``python stages/<name>`` spends most of its processor time
importing (requests, cryptography); the fault matrix runs hundreds of them.
A multiprocessing forkserver imports those once, and each run is a fork of
it that executes the stage file as ``__main__`` with its own argv,
environment, stdout and stderr, as the interpreter would: its exit status is
the stage's, an uncaught exception prints a traceback and exits 1. The
forkserver has no threads of its own, so forking it is safe.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
import tempfile
from pathlib import Path
from typing import Optional

from conftest import STAGES, Run

# What the network stages import, so that no run pays for it.
PRELOAD = [
    "azagent.certs",
    "azagent.certstore",
    "azagent.imds",
    "azagent.provisioning",
    "azagent.report",
    "azagent.sshkeys",
    "azagent.stage",
    "azagent.transport",
    "azagent.wireclient",
]
TIMEOUT = 60.0

_context: Optional[multiprocessing.context.ForkServerContext] = None


def _main(path: str, args: list[str], env: dict[str, str], out: str, err: str) -> None:
    """In the forked child: become ``python <path> <args>`` with this environment and output.

    The stage's exit status is also written next to its output: under load the
    forkserver can lose a child's status (multiprocessing then reports 255).
    """
    for fd, name in ((1, out), (2, err)):
        target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [path, *args]
    status = Path(out).with_name("status")
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        status.write_text(str(code))
        raise
    status.write_text("0")


def context() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def run_stage(name: str, *args: str, env: Optional[dict[str, str]] = None) -> Run:
    """conftest.run_stage's contract, in a forked process."""
    environment = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    environment.update(env or {})
    with tempfile.TemporaryDirectory(prefix="azagent-stage-") as work:
        out, err = Path(work, "stdout"), Path(work, "stderr")
        process = context().Process(
            target=_main, args=(str(STAGES / name), list(args), environment, str(out), str(err))
        )
        process.start()
        process.join(TIMEOUT)
        if process.exitcode is None:  # still running: ours to end
            process.kill()
            process.join()
            raise TimeoutError(f"{name} did not end within {TIMEOUT:g} s")
        status = Path(work, "status")
        recorded = status.read_text().strip() if status.exists() else ""
        return Run(
            int(recorded) if recorded.lstrip("-").isdigit() else process.exitcode,
            out.read_text(errors="replace") if out.exists() else "",
            err.read_text(errors="replace") if err.exists() else "",
        )
