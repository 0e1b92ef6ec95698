"""Finding devices through udev on the running system (pyudev over libudev).

On ``/`` the code that looks for devices (the resource disk, the DVD, the
Hyper-V SCSI disks, Mellanox PCI functions) asks libudev, which reads the
kernel's device tree and udev's database as every other udev client does.
libudev cannot be pointed at another tree: under ``--root`` (a test tree, an
image) the callers read that tree's own ``/sys`` instead. They do the same on
``/`` when pyudev or libudev is missing or a lookup fails (said at debug
level), so a stage never fails for want of udev.

pyudev is imported on the first lookup on ``/`` only: a stage that looks for
no device, and every stage under ``--root``, never loads it (each stage is a
fresh process at boot).
"""

from __future__ import annotations

import functools

from azagent.context import Context
from azagent.journal import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, TypeVar

    T = TypeVar("T")


@functools.cache
def _load() -> Optional[tuple[Any, Any]]:
    """(the pyudev module, a pyudev.Context), or None without pyudev or libudev."""
    try:
        import pyudev

        return pyudev, pyudev.Context()
    except Exception as e:  # whatever keeps a C library binding from loading: sysfs answers
        log.debug("udev is not available (%s: %s): devices are found in /sys", type(e).__name__, e)
        return None


def find(ctx: Context, what: str, live: Callable[[Any, Any], T], tree: Callable[[], T]) -> T:
    """``live(pyudev, context)`` on the running system, else ``tree()``.

    ``tree`` reads sysfs under ``ctx.root``: it answers under any other
    root, and on ``/`` when pyudev or libudev is missing or ``live`` fails.
    ``what`` names the lookup in the debug message.
    """
    if ctx.live:
        loaded = _load()
        if loaded is not None:
            pyudev, context = loaded
            try:
                return live(pyudev, context)
            # AttributeError: a pyudev older than the API used here.
            except (OSError, ValueError, AttributeError, pyudev.DeviceError) as e:
                log.debug("%s: udev failed (%s: %s): reading /sys", what, type(e).__name__, e)
    return tree()


def attribute(device: Any, name: str) -> Optional[str]:
    """A sysfs attribute of a pyudev device as text, stripped; None when it has none."""
    value = device.attributes.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value).strip()
