"""Everything the agent tells the fleet about itself: device-info, heartbeats, deployment state."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from prometheus_client import Counter

from harmony_fleet.contracts import (
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    device_heartbeat_key,
    device_info_key,
    device_state_key,
)

log = logging.getLogger(__name__)

REPORTS = Counter("fleet_agent_reports_total", "Reports written, by kind and outcome",
                  ["kind", "outcome"])


class Reporter:
    """Writes the agent's reports; one instance per connection."""

    def __init__(self, js: JetStreamContext, device_id: str) -> None:
        self._js = js
        self._device_id = device_id

    async def _put(self, kind: str, bucket: str, key: str, value: bytes) -> None:
        try:
            kv = await self._js.key_value(bucket)
            await kv.put(key, value)
        except Exception:
            REPORTS.labels(kind=kind, outcome="error").inc()
            raise
        REPORTS.labels(kind=kind, outcome="ok").inc()

    async def info(self, info: DeviceInfo) -> None:
        await self._put(
            "info", BUCKET_DEVICE_INFO, device_info_key(self._device_id), info.to_json_bytes()
        )

    async def heartbeat(self, heartbeat: Heartbeat) -> None:
        await self._put(
            "heartbeat",
            BUCKET_DEVICE_HEARTBEAT,
            device_heartbeat_key(self._device_id),
            heartbeat.to_json_bytes(),
        )

    async def state(self, state: DeploymentState) -> None:
        await self._put(
            "state",
            BUCKET_DEVICE_STATE,
            device_state_key(self._device_id, state.deployment),
            state.to_json_bytes(),
        )
