"""The extension handler as a systemd service: the loop, sd_notify, the poll period.

:func:`loop` runs :meth:`Service.run_once` every ``Extensions.GoalStatePeriod``
seconds until its stop event is set (the stage sets it on SIGTERM), tells
systemd READY=1 before the first pass, and STATUS= ("incarnation 7: 3 handlers
enabled, 1 handler transitioning") with WATCHDOG=1 after each. READY does not
wait for the first pass: that pass installs and enables every extension
(install may take 900 s, enable 300 s, each), and systemd would kill a
service still starting after its start timeout (90 s by default), while the
boot (multi-user.target) would wait for it. :func:`notify` is systemd-python's
sd_notify, a no-op outside systemd.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Callable

from azagent.context import Context
from azagent.journal import log

if TYPE_CHECKING:
    from azagent.extensions.service import Service


DISABLED_PERIOD = 300  # GoalStatePeriod when Extensions.Enabled=n and the period is not set


def notify(message: str) -> bool:
    """sd_notify (systemd-python's): send ``message`` to systemd; False outside systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    from systemd import daemon

    try:
        return bool(daemon.notify(message))
    except (OSError, ValueError) as e:
        log.debug("sd_notify failed: %s", e)
        return False


# -- the fabric side ---------------------------------------------------------------


def period(ctx: Context) -> float:
    """Extensions.GoalStatePeriod (300 s when Extensions.Enabled=n and it is not set)."""
    configured = ctx.config.get_int("Extensions.GoalStatePeriod") or 6
    if not ctx.config.get_bool("Extensions.Enabled") and (
        ctx.config.origins.get("Extensions.GoalStatePeriod") == "default"
    ):
        return float(DISABLED_PERIOD)
    return float(configured)


def loop(
    service: Service,
    every: float,
    stop: threading.Event,
    *,
    once: bool = False,
    tell: Callable[[str], bool] = notify,
) -> int:
    """Passes every ``every`` seconds until ``stop`` is set (SIGTERM) or after one (``once``)."""
    service.tick = lambda: tell("WATCHDOG=1")
    tell("READY=1\nSTATUS=first pass: fetching the goal state")
    while not stop.is_set():
        summary = service.run_once()
        tell(f"STATUS={summary}\nWATCHDOG=1")
        if once:
            break
        stop.wait(every)
    tell("STOPPING=1")
    return 0
