"""What stages share: the skip without provisioning data, changes to the running system."""

from __future__ import annotations

from pathlib import Path

import pytest

from azagent import config, provisioning
from azagent.context import Context
from azagent.errors import StageFailed
from azagent.plan import Plan


def context(root: Path) -> Context:
    return Context(stage="test", root=root, config=config.defaults())


def data() -> provisioning.ProvisioningData:
    return provisioning.ProvisioningData(
        vm_id="5e1f0c6a-0000-4000-8000-000000000001",
        source="ovf",
        hostname="vm",
        username="alice",
    )


@provisioning.requires_data
def planned(ctx: Context, data: provisioning.ProvisioningData) -> Plan:
    """A stage's plan that needs the data."""
    result = Plan()
    result.add(f"create user {data.username}", lambda: None)
    return result


def test_without_provisioning_data_the_stage_skips(root: Path) -> None:
    result = planned(context(root))
    assert result.skip == provisioning.nothing_to_provision()
    assert result.actions == []
    assert planned.__doc__ == "A stage's plan that needs the data."


def test_with_provisioning_data_the_stage_plans(root: Path) -> None:
    ctx = context(root)
    provisioning.save(ctx, data())
    result = planned(ctx)
    assert result.skip is None
    assert [action.summary for action in result.actions] == ["create user alice"]


def test_unreadable_provisioning_data_fails_rather_than_skips(root: Path) -> None:
    ctx = context(root)
    path = ctx.path(provisioning.STATE_PATH)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(StageFailed, match=r"provisioning\.json is unreadable"):
        planned(ctx)


def test_a_change_to_the_running_system_is_only_shown_under_another_root(root: Path) -> None:
    ran = []
    result = Plan()
    result.add_running(context(root), "set the hostname", lambda: ran.append("set"))
    [action] = result.actions
    assert action.summary == f"set the hostname [not run: {root} is not the running system]"
    action.apply()
    assert ran == []


def test_a_change_to_the_running_system_is_made_on_it() -> None:
    ran = []
    result = Plan()
    # The action only records that it ran: nothing changes the machine running the test.
    result.add_running(context(Path("/")), "set the hostname", lambda: ran.append("set"))
    [action] = result.actions
    assert action.summary == "set the hostname"
    action.apply()
    assert ran == ["set"]
