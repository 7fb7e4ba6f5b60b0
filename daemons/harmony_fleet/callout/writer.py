"""The report writer: the only path from a device's report to the shared KV buckets.

It takes requests on ``fleet.report.>`` (queue group: run as many as you like), checks that
the report is within the size limit, parses as the contract's model, and names the same device
(and deployment) as the subject the device published on — a device can only publish on its
own subjects, so the subject is the authenticated identity — then writes the KV entry and
answers :class:`ReportAck`. A refused report is logged with the reason, counted, answered with
``ok: false``, and never reaches a bucket.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter
from pydantic import ValidationError

from harmony_fleet.contracts import (
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    MAX_REPORT_BYTES,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    ReportAck,
    ReportKind,
    ReportSubject,
    ReportSubjectError,
    device_heartbeat_key,
    device_info_key,
    device_state_key,
    parse_report_subject,
    report_subscription,
    validation_summary,
)

log = logging.getLogger(__name__)

QUEUE_GROUP = "fleet-report-writer"
WRITES = Counter("fleet_report_writes_total", "Reports handled by the writer",
                 ["kind", "outcome"])


class ReportRefused(Exception):
    pass


def check_report(subject: str, data: bytes) -> tuple[ReportSubject, str, str]:
    """Pure: (parsed subject, bucket, key) for an acceptable report, else :class:`ReportRefused`."""
    try:
        where = parse_report_subject(subject)
    except ReportSubjectError as exc:
        raise ReportRefused(str(exc)) from exc
    if len(data) > MAX_REPORT_BYTES:
        raise ReportRefused(f"report is {len(data)} bytes; the limit is {MAX_REPORT_BYTES}")
    try:
        if where.kind is ReportKind.STATE:
            state = DeploymentState.model_validate_json(data)
            if state.deployment != where.deployment:
                raise ReportRefused(f"state names deployment {state.deployment!r}, the subject "
                                    f"{where.deployment!r}")
            payload_device = state.device_id
            bucket, key = BUCKET_DEVICE_STATE, device_state_key(where.device_id, state.deployment)
        elif where.kind is ReportKind.INFO:
            payload_device = DeviceInfo.model_validate_json(data).device_id
            bucket, key = BUCKET_DEVICE_INFO, device_info_key(where.device_id)
        else:
            payload_device = Heartbeat.model_validate_json(data).device_id
            bucket, key = BUCKET_DEVICE_HEARTBEAT, device_heartbeat_key(where.device_id)
    except ValidationError as exc:
        raise ReportRefused(f"invalid {where.kind.value} report: {validation_summary(exc)}") \
            from exc
    if payload_device != where.device_id:
        raise ReportRefused(f"report from {where.device_id} claims to be from {payload_device}")
    return where, bucket, key


class ReportWriter:
    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(report_subscription(), queue=QUEUE_GROUP,
                                             cb=self._on_report)
        await self._nc.flush()
        log.info("writing reports from %s", report_subscription())

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_report(self, msg: Msg) -> None:
        kind = msg.subject.split(".")[2] if msg.subject.count(".") >= 2 else "?"
        try:
            _, bucket, key = check_report(msg.subject, bytes(msg.data))
            kv = await self._nc.jetstream().key_value(bucket)
            await kv.put(key, bytes(msg.data))
            ack = ReportAck(ok=True)
            WRITES.labels(kind=kind, outcome="written").inc()
        except ReportRefused as exc:
            log.warning("refused report on %s: %s", msg.subject, exc)
            WRITES.labels(kind=kind, outcome="refused").inc()
            ack = ReportAck(ok=False, error=str(exc))
        except Exception as exc:  # KV trouble: tell the agent, which retries
            log.exception("could not write report on %s", msg.subject)
            WRITES.labels(kind=kind, outcome="error").inc()
            ack = ReportAck(ok=False, error=f"writer error: {type(exc).__name__}")
        if msg.reply:
            try:
                await self._nc.publish(msg.reply, ack.to_json_bytes())
            except Exception as exc:
                log.warning("could not ack report on %s: %s", msg.subject, exc)
