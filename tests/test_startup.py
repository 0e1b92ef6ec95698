"""Start-up budget: stages that need neither HTTP nor crypto do not import them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import STAGES, imported_modules

HEAVY = ("requests", "cryptography", "urllib3", "xmltodict", "pyudev", "systemd")

# Stages that legitimately talk HTTP or do crypto go here as they land.
NEEDS_HTTP_OR_CRYPTO: set[str] = set()


@pytest.mark.parametrize("stage", sorted(p.name for p in STAGES.iterdir()))
def test_light_stages_do_not_import_heavy_libraries(stage: str, root: Path) -> None:
    if stage in NEEDS_HTTP_OR_CRYPTO:
        pytest.skip(f"{stage} needs HTTP or crypto")
    modules = imported_modules([str(STAGES / stage), "--root", str(root), "--dry-run"])
    assert "azagent" in modules  # the measurement works
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_cli_status_and_configuration_stay_light(root: Path) -> None:
    for args in (["status", "--root", str(root)], ["show-configuration", "--root", str(root)]):
        modules = imported_modules(["-m", "azagent", *args])
        assert not modules & set(HEAVY), (args, sorted(modules & set(HEAVY)))
