"""The VM tier: real boots of a Debian guest under qemu against the emulated fabric.

Marked `vm` (deselect with -m "not vm"); each scenario of tools/vmtest is a
test. They need root (the guest image is built with mmdebstrap), qemu and
about half a minute per boot under TCG.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from azvmtest import image, scenarios

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="building the guest image needs root"),
]


@pytest.fixture(scope="session")
def guest_image() -> image.Image:
    return image.build()


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_scenario(name: str, guest_image: image.Image, tmp_path: Path) -> None:
    ctx = scenarios.Context(guest_image, tmp_path)
    with scenarios.timed(name):
        scenarios.SCENARIOS[name](ctx)
