"""Run rare, heavy work in a forked child, so that its imports never stay in the service.

The extension service runs as long as the VM. Installing a handler (the
package code) or fetching the goal state's certificates (cryptography: about
13 MB of RSS) happens on a few goal states in a VM's life, yet whatever a
Python process imports stays mapped until it exits, and the memory a large
unpack or parse touched stays with the process's heap. :func:`call`
runs such a function in a child forked for it: the child does the work,
sends back its result as JSON (or the :class:`AzagentError` it raised: reason
and ``code``) through a pipe, and exits; the service keeps only the answer.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Callable, Optional

from azagent.errors import AzagentError
from azagent.journal import log

MAX_ANSWER = 1024 * 1024


class ChildError(AzagentError):
    """What the child raised (its reason and code), or how it ended without an answer."""

    def __init__(self, reason: str, code: Optional[int] = None) -> None:
        super().__init__(reason)
        self.code = code


def _answer(work: Callable[[], Any]) -> bytes:
    try:
        return json.dumps({"value": work()}).encode()
    except AzagentError as e:
        code = getattr(e, "code", None)
        return json.dumps(
            {"error": e.reason, "code": code if isinstance(code, int) else None}
        ).encode()
    except Exception as e:
        # The type alone: an exception's text may quote a URL with its SAS token.
        log.error("%s failed: %s", getattr(work, "__name__", "work"), type(e).__name__)
        return json.dumps({"error": f"unexpected {type(e).__name__}", "code": None}).encode()


def call(work: Callable[[], Any], *, what: str) -> Any:
    """``work()`` run in a forked child; its JSON-able result, or ChildError.

    ``what`` names the work in the error when the child dies without answering.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: do the work, answer, and leave without running any cleanup
        status = 1
        try:
            os.close(reader)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            data = _answer(work)
            with os.fdopen(writer, "wb") as out:
                out.write(data)
            sys.stdout.flush()
            sys.stderr.flush()
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as answer:
        data = answer.read(MAX_ANSWER + 1)
    _, status = os.waitpid(pid, 0)
    if not data or len(data) > MAX_ANSWER:
        if os.WIFSIGNALED(status):
            ended = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            ended = f"exited with status {os.waitstatus_to_exitcode(status)}"
        raise ChildError(f"{what}: the child process {ended} without an answer")
    result = json.loads(data)
    if "error" in result:
        raise ChildError(str(result["error"]), result.get("code"))
    return result["value"]
