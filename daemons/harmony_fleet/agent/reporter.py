"""Everything the agent tells the fleet about itself: device-info, heartbeats, deployment state.

Reports are requests on the device's own report subjects; the server-side report writer
validates each one, writes the KV entry and acknowledges (see
:mod:`harmony_fleet.contracts.reports`). A report that is not acknowledged raises
:class:`ReportFailed`; callers retry (the reconciler on its next pass, the heartbeat and info
loops on their next tick).
"""

from __future__ import annotations

import logging

import nats.errors
from nats.aio.client import Client as NatsClient
from prometheus_client import Counter

from harmony_fleet.contracts import (
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    ReportAck,
    report_heartbeat_subject,
    report_info_subject,
    report_state_subject,
)

log = logging.getLogger(__name__)

REPORTS = Counter("fleet_agent_reports_total", "Reports sent, by kind and outcome",
                  ["kind", "outcome"])


class ReportFailed(RuntimeError):
    pass


class Reporter:
    def __init__(self, nc: NatsClient, device_id: str, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._device_id = device_id
        self._timeout = timeout_s

    async def _send(self, kind: str, subject: str, value: bytes) -> None:
        try:
            msg = await self._nc.request(subject, value, timeout=self._timeout)
            ack = ReportAck.model_validate_json(msg.data)
        except nats.errors.NoRespondersError as exc:
            REPORTS.labels(kind=kind, outcome="no-writer").inc()
            raise ReportFailed(f"{kind} report: no report writer is running") from exc
        except (nats.errors.Error, ValueError) as exc:
            REPORTS.labels(kind=kind, outcome="error").inc()
            raise ReportFailed(f"{kind} report failed: {type(exc).__name__}: {exc}") from exc
        if not ack.ok:
            REPORTS.labels(kind=kind, outcome="refused").inc()
            raise ReportFailed(f"{kind} report refused by the writer: {ack.error}")
        REPORTS.labels(kind=kind, outcome="ok").inc()

    async def info(self, info: DeviceInfo) -> None:
        await self._send("info", report_info_subject(self._device_id), info.to_json_bytes())

    async def heartbeat(self, heartbeat: Heartbeat) -> None:
        await self._send("heartbeat", report_heartbeat_subject(self._device_id),
                         heartbeat.to_json_bytes())

    async def state(self, state: DeploymentState) -> None:
        await self._send("state", report_state_subject(self._device_id, state.deployment),
                         state.to_json_bytes())
