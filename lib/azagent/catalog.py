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


STAGES: tuple[StageInfo, ...] = (StageInfo("kernel-tune", "SCSI timeout of the Hyper-V disks"),)

STAGES_BY_NAME = {stage.name: stage for stage in STAGES}
