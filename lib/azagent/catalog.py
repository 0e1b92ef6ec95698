"""The boot stages azagent ships, in boot order, for the CLI and status."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    name: str
    summary: str

    @property
    def unit(self) -> str:
        return f"azure-{self.name}.service"


STAGES: tuple[StageInfo, ...] = (
    StageInfo("kernel-tune", "SCSI timeout, Hyper-V entropy, NUMA, RDMA"),
    StageInfo("network", "WireServer endpoint, routes, stable interface names, proxy"),
    StageInfo("firewall", "only root may open TCP connections to the WireServer"),
    StageInfo("resource-disk", "format and mount the resource disk, swap file"),
    StageInfo("scvmm", "bootstrap the SCVMM agent when its DVD is attached"),
    StageInfo("mount-ovf", "read the provisioning media once per VM"),
    StageInfo("imds", "provision from IMDS when there is no provisioning media"),
    StageInfo("hostname", "set the hostname before the first DHCP request"),
    StageInfo("create-user", "the admin user, its password hash and sudo rights"),
    StageInfo("ssh-keys", "authorized keys, sshd password policy, fresh host keys"),
    StageInfo("certificates", "WireServer certificates and the keys delivered by them"),
    StageInfo("custom-data", "save customData and run it when configured"),
    StageInfo("report-ready", "tell the platform the VM is ready (or why not)"),
    StageInfo("report-failure", "report a failed provisioning stage at once"),
)

STAGES_BY_NAME = {stage.name: stage for stage in STAGES}

# Long-running services (Type=notify), not boot stages: not run by `azagent run`.
SERVICES: tuple[StageInfo, ...] = (
    StageInfo("extensions", "(in progress) run the VM extensions the goal state names"),
)
