"""What a device reports about one deployment: ``device-state`` ``state.<device>.<deployment>``."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import UtcDatetime, WireModel
from .ids import DeploymentToken, DeviceId


class Phase(StrEnum):
    """Reconcile phase of one deployment on one device."""

    PENDING = "Pending"
    PULLING = "Pulling"
    STARTING = "Starting"
    RUNNING = "Running"
    FAILED = "Failed"
    REMOVED = "Removed"


#: Phases after which nothing happens until the desired state changes.
TERMINAL_PHASES = frozenset({Phase.RUNNING, Phase.FAILED, Phase.REMOVED})


class ServiceStatus(WireModel):
    name: str
    container: str = Field(description="podman container name")
    state: str = Field(description="podman's state: created, running, exited, ...")
    exit_code: int | None = None
    restart_count: int = 0
    spec_hash: str | None = None


class DeploymentState(WireModel):
    device_id: DeviceId
    deployment: DeploymentToken
    phase: Phase
    message: str = ""
    spec_hash: str | None = Field(default=None, description="hash of the score applied")
    revision: int | None = Field(
        default=None, description="desired-state KV revision the phase refers to"
    )
    since: UtcDatetime = Field(description="when the deployment entered this phase")
    updated_at: UtcDatetime
    services: list[ServiceStatus] = Field(default_factory=list)
