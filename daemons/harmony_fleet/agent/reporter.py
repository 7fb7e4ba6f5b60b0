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

from harmony_fleet.contracts import (
    HDR_AGENT_INSTANCE,
    MAX_STATE_MESSAGE_BYTES,
    MAX_STATE_REPORT_BYTES,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    ReportAck,
    report_heartbeat_subject,
    report_info_subject,
    report_state_subject,
)
from harmony_fleet.errors import FleetError
from harmony_fleet.metrics import Counter

from .identity import DeviceIdInUse

log = logging.getLogger(__name__)

REPORTS = Counter("fleet_agent_reports_total", "Reports sent, by kind and outcome",
                  ["kind", "outcome"])


class ReportFailed(FleetError, RuntimeError):
    pass


def truncate_utf8(text: str, limit: int, marker: str = " [...]") -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (never mid-character), marked if cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    keep = max(0, limit - len(marker.encode()))
    return data[:keep].decode("utf-8", "ignore") + marker


def fit_state(state: DeploymentState, limit: int = MAX_STATE_REPORT_BYTES) -> DeploymentState:
    """Pure: ``state`` within the writer's size limit — the message cut to
    :data:`MAX_STATE_MESSAGE_BYTES`, then, if still too big, the service list shortened (the
    message says how many were left out). A report that is too big would be refused whole."""
    fitted = state.model_copy(update={"message": truncate_utf8(state.message,
                                                               MAX_STATE_MESSAGE_BYTES)})
    services = list(fitted.services)
    while services and len(fitted.to_json_bytes()) > limit:
        services.pop()
        left_out = len(state.services) - len(services)
        note = f" ({left_out} service(s) left out of this report)"
        fitted = fitted.model_copy(update={
            "services": services,
            "message": truncate_utf8(state.message, MAX_STATE_MESSAGE_BYTES - len(note)) + note,
        })
    return fitted


class Reporter:
    """Sends this agent's reports; ``instance_id`` (see :mod:`.identity`) goes with each."""

    def __init__(self, nc: NatsClient, device_id: str, *, instance_id: str | None = None,
                 timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._device_id = device_id
        self._headers = {HDR_AGENT_INSTANCE: instance_id} if instance_id else None
        self._timeout = timeout_s

    async def _send(self, kind: str, subject: str, value: bytes) -> None:
        try:
            msg = await self._nc.request(subject, value, timeout=self._timeout,
                                         headers=self._headers)
            ack = ReportAck.model_validate_json(msg.data)
        except nats.errors.NoRespondersError as exc:
            REPORTS.labels(kind=kind, outcome="no-writer").inc()
            raise ReportFailed(f"{kind} report: no report writer is running") from exc
        except (nats.errors.Error, ValueError) as exc:
            REPORTS.labels(kind=kind, outcome="error").inc()
            raise ReportFailed(f"{kind} report failed: {type(exc).__name__}: {exc}") from exc
        if not ack.ok and ack.in_use_by:
            REPORTS.labels(kind=kind, outcome="in-use").inc()
            raise DeviceIdInUse(ack.error or f"device id in use by {ack.in_use_by}")
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
                         fit_state(state).to_json_bytes())
