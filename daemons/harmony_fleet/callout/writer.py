"""The report writer: the only path from a device's report to the shared KV buckets.

It takes requests on ``fleet.report.>`` (queue group: run as many as you like). A device can
only publish on its own report subjects, so the subject names the authenticated device; each
report then passes, cheapest check first:

1. the reply subject is inside the device's own inbox (otherwise the writer's answer could be
   steered onto somebody else's subject) — else it is dropped without an answer;
2. the device's rate limit (a token bucket): excess is refused with ``retry_after_s``;
3. the size limit of its kind, the contract's schema, and the same device (and deployment) in
   the payload as in the subject;
4. one live agent per device id: the report's agent instance (header
   ``X-Harmony-Agent-Instance``) holds the device's lease, or the lease is free — else the
   report is refused with ``in_use_by`` (two agents with one id: a cloned SD card, a reused
   config). Heartbeats carry the lease into the heartbeat bucket (compare-and-set, so writer
   replicas agree), and every writer follows that bucket;
5. for a state report: the deployment is desired for that device (the writer follows the
   desired-state bucket), or it was deleted within the grace period and the report says
   ``Removed`` — a device cannot create keys for deployments that do not exist; ``Removed``
   states are stored with a TTL, so deleted deployments do not pile up.

Then it writes the KV entry under the contract's key (docs/wire-contract.md) and answers :class:`ReportAck`.
Refusals are counted, answered with ``ok: false`` and the reason, and logged at most once per
device and reason per interval; a refused report never reaches a bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from harmony_fleet.bus.connection import drain_subscription
from harmony_fleet.bus.kv import KeyWatch
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    HDR_AGENT_INSTANCE,
    MAX_DEPLOYMENTS_PER_DEVICE,
    MAX_REPORT_BYTES,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    KeyFormatError,
    Phase,
    ReportAck,
    ReportKind,
    ReportSubject,
    ReportSubjectError,
    desired_state_key,
    device_heartbeat_key,
    device_info_key,
    device_state_key,
    is_device_inbox,
    kv_subject,
    parse_desired_state_key,
    parse_device_heartbeat_key,
    parse_report_subject,
    report_subscription,
    validation_summary,
)
from harmony_fleet.daemon import LogThrottle, first_of
from harmony_fleet.errors import FleetError

from .config import WriterSection
from .limits import DesiredIndex, Lease, LeaseBook, RateLimiter

log = logging.getLogger(__name__)

QUEUE_GROUP = "fleet-report-writer"
#: How long a freshly started writer waits to learn the device leases before judging reports.
LEASES_LOAD_TIMEOUT_S = 5.0
#: Reports queued in the writer before NATS drops new ones (slow consumer).
PENDING_REPORTS = 50_000
WRITES = Counter("fleet_report_writes_total", "Reports handled by the writer",
                 ["kind", "outcome"])
DESIRED_KEYS = Gauge("fleet_report_writer_desired_keys", "desired-state keys the writer follows")


class ReportRefused(FleetError):
    """A report is not acceptable; the message says why (it goes back to the device)."""

    def __init__(self, message: str, *, reason: str = "invalid",
                 retry_after_s: float | None = None, in_use_by: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.in_use_by = in_use_by


class DeviceInUse(FleetError):
    """Another agent instance holds the device's lease (reports and watches say the same)."""

    def __init__(self, device: str, holder: Lease, now: float) -> None:
        super().__init__(
            f"device id {device} is in use by another agent (instance {holder.instance}, "
            f"last report {max(0.0, now - holder.seen):.0f}s ago): a cloned device or a "
            "copied configuration? Give each device its own id.")
        self.holder = holder


@dataclass(frozen=True)
class CheckedReport:
    """A report that passed :func:`check_report`: where it goes and what it says."""

    where: ReportSubject
    bucket: str
    key: str
    phase: Phase | None = None  # state reports only


def check_report(subject: str, data: bytes) -> CheckedReport:
    """Pure: where an acceptable report goes, else :class:`ReportRefused`."""
    try:
        where = parse_report_subject(subject)
    except ReportSubjectError as exc:
        raise ReportRefused(str(exc), reason="subject") from exc
    limit = MAX_REPORT_BYTES[where.kind]
    if len(data) > limit:
        raise ReportRefused(f"{where.kind.value} report is {len(data)} bytes; the limit is "
                            f"{limit}", reason="size")
    phase: Phase | None = None
    try:
        if where.kind is ReportKind.STATE:
            state = DeploymentState.model_validate_json(data)
            if state.deployment != where.deployment:
                raise ReportRefused(f"state names deployment {state.deployment!r}, the subject "
                                    f"{where.deployment!r}", reason="mismatch")
            payload_device, phase = state.device_id, state.phase
            bucket, key = BUCKET_DEVICE_STATE, device_state_key(where.device_id, state.deployment)
        elif where.kind is ReportKind.INFO:
            payload_device = DeviceInfo.model_validate_json(data).device_id
            bucket, key = BUCKET_DEVICE_INFO, device_info_key(where.device_id)
        else:
            payload_device = Heartbeat.model_validate_json(data).device_id
            bucket, key = BUCKET_DEVICE_HEARTBEAT, device_heartbeat_key(where.device_id)
    except ValidationError as exc:
        raise ReportRefused(f"invalid {where.kind.value} report: {validation_summary(exc)}",
                            reason="schema") from exc
    if payload_device != where.device_id:
        raise ReportRefused(f"report from {where.device_id} claims to be from {payload_device}",
                            reason="mismatch")
    return CheckedReport(where, bucket, key, phase)


def entry_time(entry: KeyValue.Entry) -> float:
    """When the server stored a watched entry (nats-py gives a datetime, annotated as int;
    a plain get carries none: now)."""
    created: object = entry.created
    return created.timestamp() if isinstance(created, datetime) else time.time()


def state_allowed(index: DesiredIndex, device: str, deployment: str, phase: Phase | None,
                  now: float) -> bool:
    """Pure: may ``device`` hold a state key for ``deployment`` now? Only for deployments it
    is told to run (the first :data:`MAX_DEPLOYMENTS_PER_DEVICE` of them), and ``Removed``
    within the grace period after one was deleted."""
    if index.is_desired(device, deployment):
        return deployment in sorted(index.deployments(device))[:MAX_DEPLOYMENTS_PER_DEVICE]
    return phase is Phase.REMOVED and index.recently_removed(device, deployment, now)


class ReportWriter:
    def __init__(self, nc: NatsClient, settings: WriterSection | None = None) -> None:
        self._nc = nc
        self.settings = settings or WriterSection()
        self._sub: Subscription | None = None
        self._limiter = RateLimiter(self.settings.reports_per_s, self.settings.report_burst)
        self._throttle = LogThrottle(self.settings.refusal_log_interval_s)
        self.index = DesiredIndex(self.settings.removed_grace_s)
        self.index_ready = asyncio.Event()
        self.leases = LeaseBook(self.settings.device_lease_s)
        self.leases_ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._followers: list[asyncio.Task[None]] = []
        self._desired: KeyValue | None = None
        self._heartbeats: KeyValue | None = None

    async def start(self) -> None:
        self._followers = [
            asyncio.create_task(self._follow(BUCKET_DESIRED_STATE, self._apply_desired,
                                             meta_only=True), name="desired-index"),
            asyncio.create_task(self._follow(BUCKET_DEVICE_HEARTBEAT, self._apply_heartbeats,
                                             meta_only=False), name="device-leases"),
        ]
        # a bounded backlog: under a flood, drop early (the agents retry) rather than hold
        # hundreds of MB of queued reports
        self._sub = await self._nc.subscribe(report_subscription(), queue=QUEUE_GROUP,
                                             cb=self._on_report,
                                             pending_msgs_limit=PENDING_REPORTS,
                                             pending_bytes_limit=PENDING_REPORTS * 4096)
        await self._nc.flush()
        log.info("writing reports from %s", report_subscription())

    async def stop(self) -> None:
        """Stop taking reports; those already delivered are still judged and answered
        (bounded by the connection's ``drain_timeout_s``), then stop following the buckets
        (the checks of those reports need them)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            if not await drain_subscription(self._nc, sub, self.settings.nats.drain_timeout_s):
                log.info("stopped taking reports; some that were delivered are unanswered "
                         "(the agents send them again)")
        self._stop.set()
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        self._followers = []

    # ---- what the buckets say: deployments that exist, who runs each device ----------------
    async def _follow(self, bucket: str,
                      apply: Callable[[KeyValue, KeyWatch], Awaitable[None]],
                      *, meta_only: bool) -> None:
        """Keep following ``bucket`` (re-watching after errors: a restarted server...)."""
        while not self._stop.is_set():
            try:
                try:
                    kv = await self._nc.jetstream().key_value(bucket)
                except BucketNotFoundError:  # the writer may start before the buckets exist
                    log.info("waiting for the %s bucket", bucket)
                    await first_of(self._stop, timeout=1.0)
                    continue
                watch = await KeyWatch(self._nc.jetstream(), bucket, meta_only=meta_only).start()
                try:
                    await apply(kv, watch)
                finally:
                    with contextlib.suppress(Exception):
                        await watch.stop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("following %s failed: %s; retrying", bucket, exc)
                await first_of(self._stop, timeout=2.0)

    async def _entries(self, watch: KeyWatch,
                       caught_up: Callable[[], None]) -> AsyncIterator[KeyValue.Entry]:
        """The watch's entries; ``caught_up`` is called once the initial values are through."""
        while not self._stop.is_set():
            try:
                entry = await watch.updates(timeout=5.0)
            except TimeoutError:
                continue
            if entry is None:
                caught_up()
                continue
            yield entry

    async def _apply_desired(self, kv: KeyValue, watch: KeyWatch) -> None:
        self._desired = kv
        fresh = DesiredIndex(self.settings.removed_grace_s)

        def install() -> None:  # the snapshot is complete: judge reports by it from now on
            self.index = fresh
            self.index_ready.set()

        async for entry in self._entries(watch, install):
            try:
                key = parse_desired_state_key(entry.key)
            except KeyFormatError:
                continue
            if entry.operation in ("DEL", "PURGE"):
                at = entry_time(entry)
                fresh.delete(key.device_id, key.deployment, at)
            else:
                fresh.put(key.device_id, key.deployment)
            if entry.delta == 0:
                fresh.prune(time.time())
                DESIRED_KEYS.set(fresh.key_count())

    async def _apply_heartbeats(self, kv: KeyValue, watch: KeyWatch) -> None:
        self._heartbeats = kv
        async for entry in self._entries(watch, self.leases_ready.set):
            try:
                device = parse_device_heartbeat_key(entry.key)
            except KeyFormatError:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.leases.forget(device)
                continue
            try:
                beat = Heartbeat.model_validate_json(entry.value)
            except ValidationError:
                continue
            seen = entry_time(entry)
            self.leases.record(device, beat.instance_id, seen, entry.revision)

    async def _desired_now(self, device: str, deployment: str) -> bool:
        """The index can trail a brand-new key by a moment: ask the bucket before refusing."""
        if self._desired is None:
            return False
        try:
            entry = await self._desired.get(desired_state_key(device, deployment))
        except KeyNotFoundError:
            return False
        if entry.value is None:
            return False
        self.index.put(device, deployment)
        return True

    # ---- reports -------------------------------------------------------------------------
    def _refused(self, kind: str, device: str, subject: str, exc: ReportRefused) -> None:
        WRITES.labels(kind=kind, outcome=f"refused-{exc.reason}").inc()
        suppressed = self._throttle.allow(f"{device}/{exc.reason}", time.monotonic())
        if suppressed is not None:
            more = f" ({suppressed} more like it suppressed)" if suppressed else ""
            log.warning("refused report on %s: %s%s", subject, exc, more,
                        extra={"device": device, "reason": exc.reason})

    async def _on_report(self, msg: Msg) -> None:
        if not msg.reply:  # fire-and-forget: nobody to answer, nothing to write (cheapest)
            WRITES.labels(kind="?", outcome="refused-no-reply").inc()
            return
        subject = msg.subject
        try:
            where = parse_report_subject(subject)
        except ReportSubjectError as exc:
            self._refused("?", "?", subject, ReportRefused(str(exc), reason="subject"))
            return
        device, kind = where.device_id, where.kind.value
        if not is_device_inbox(device, msg.reply):
            # an answer would go to a subject the device chose outside its own inbox
            self._refused(kind, device, subject,
                          ReportRefused("reply subject is not the device's inbox",
                                        reason="reply-subject"))
            return
        try:
            wait = self._limiter.check(device, time.monotonic())
            if wait:
                raise ReportRefused(f"rate limit: at most {self.settings.reports_per_s:g} "
                                    f"reports/s per device; retry in {wait:.1f}s",
                                    reason="rate", retry_after_s=round(wait, 3))
            data = bytes(msg.data)
            checked = check_report(subject, data)
            instance = (msg.headers or {}).get(HDR_AGENT_INSTANCE)
            try:
                await self.check_lease(device, instance)
            except DeviceInUse as exc:
                raise ReportRefused(str(exc), reason="in-use",
                                    in_use_by=exc.holder.instance) from exc
            if checked.where.kind is ReportKind.STATE:
                deployment = checked.where.deployment
                assert deployment is not None
                if not (state_allowed(self.index, device, deployment, checked.phase, time.time())
                        or await self._desired_now(device, deployment)):
                    raise ReportRefused(f"deployment {deployment} is not desired for {device}",
                                        reason="not-desired")
            await self._write(checked, data, instance)
            ack = ReportAck(ok=True)
            WRITES.labels(kind=kind, outcome="written").inc()
        except ReportRefused as exc:
            self._refused(kind, device, subject, exc)
            ack = ReportAck(ok=False, error=str(exc), retry_after_s=exc.retry_after_s,
                            in_use_by=exc.in_use_by)
        except Exception as exc:  # KV trouble: tell the agent, which retries
            log.exception("could not write report on %s", subject)
            WRITES.labels(kind=kind, outcome="error").inc()
            ack = ReportAck(ok=False, error=f"writer error: {type(exc).__name__}")
        try:
            await self._nc.publish(msg.reply, ack.to_json_bytes())
        except Exception as exc:
            log.warning("could not ack report on %s: %s", subject, exc)

    async def check_lease(self, device: str, instance: str | None) -> None:
        """Refuse ``instance`` while another agent instance holds ``device``."""
        if not self.leases_ready.is_set():  # a writer that just started: learn the leases
            await first_of(self.leases_ready, timeout=LEASES_LOAD_TIMEOUT_S)
        now = time.time()
        holder = self.leases.conflict(device, instance, now)
        if holder is not None:
            raise DeviceInUse(device, holder, now)

    async def _write(self, checked: CheckedReport, data: bytes, instance: str | None) -> None:
        if checked.where.kind is ReportKind.HEARTBEAT:
            await self._write_heartbeat(checked, data, instance)
            return
        headers = None
        if checked.phase is Phase.REMOVED:
            # a Removed state expires with the grace period (readers get a PURGE marker)
            headers = {"Nats-TTL": f"{int(self.settings.removed_grace_s)}s"}
        await self._nc.jetstream().publish(kv_subject(checked.bucket, checked.key), data,
                                           headers=headers)
        self.leases.record(checked.where.device_id, instance, time.time())

    async def _write_heartbeat(self, checked: CheckedReport, data: bytes,
                               instance: str | None) -> None:
        """A heartbeat renews the lease: compare-and-set on the device's heartbeat entry, so
        two writers (replicas) facing two instances of one device agree on one of them."""
        kv = self._heartbeats or await self._nc.jetstream().key_value(BUCKET_DEVICE_HEARTBEAT)
        device = checked.where.device_id
        for _attempt in range(3):
            lease = self.leases.holder(device)
            try:
                revision = await kv.update(checked.key, data, last=lease.revision if lease else 0)
            except KeyWrongLastSequenceError:
                await self._reload_lease(kv, checked.key, device)
                try:  # someone else renewed it meanwhile
                    await self.check_lease(device, instance)
                except DeviceInUse as exc:
                    raise ReportRefused(str(exc), reason="in-use",
                                        in_use_by=exc.holder.instance) from exc
                continue
            self.leases.record(device, instance, time.time(), revision)
            return
        raise ReportRefused("the device's lease kept changing; retry", reason="lease-race",
                            retry_after_s=1.0)

    async def _reload_lease(self, kv: KeyValue, key: str, device: str) -> None:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            self.leases.forget(device)
            return
        beat = Heartbeat.model_validate_json(entry.value or b"{}") if entry.value else None
        seen = entry_time(entry)
        if beat is None:
            self.leases.forget(device)
        else:
            self.leases.record(device, beat.instance_id, seen, entry.revision)
