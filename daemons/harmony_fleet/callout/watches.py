"""Desired-state watch grants: the server side creates each device's one consumer.

Devices have no JetStream API rights at all (see :mod:`harmony_fleet.contracts.watch` for why).
An agent subscribes to a fresh subject under its own inbox and requests
``fleet.watch.<device>``; this service checks the request — the reply and the delivery subject
are inside that device's inbox, the device's rate limit, the heartbeat within bounds — and
replaces the device's consumer ``fleet-agent-<device>`` on ``KV_desired-state`` (delete, then
create: the name is fixed, so a device holds at most one consumer whatever it does) with a
configuration chosen here: filtered to ``$KV.desired-state.<device>.>``, last value per key,
no acks, idle heartbeats, removed by the server once nobody listens for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter
from pydantic import ValidationError

from harmony_fleet.bus.connection import drain_subscription
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    HDR_AGENT_INSTANCE,
    WatchReply,
    WatchRequest,
    WatchSubjectError,
    desired_state_filter,
    device_consumer_name,
    is_device_inbox,
    kv_stream_name,
    kv_subject,
    parse_watch_subject,
    validation_summary,
    watch_subscription,
)
from harmony_fleet.daemon import LogThrottle
from harmony_fleet.errors import FleetError

from .config import WriterSection
from .limits import RateLimiter
from .writer import DeviceInUse

log = logging.getLogger(__name__)

QUEUE_GROUP = "fleet-watch-grants"
#: A device's consumer goes away this long after its agent stopped listening.
INACTIVE_THRESHOLD_S = 60.0
GRANTS = Counter("fleet_watch_grants_total", "Desired-state watch requests, by outcome",
                 ["outcome"])


class WatchRefused(FleetError):
    def __init__(self, message: str, *, reason: str, retry_after_s: float | None = None,
                 in_use_by: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.in_use_by = in_use_by


LeaseCheck = Callable[[str, str | None], Awaitable[None]]


def consumer_config(device_id: str, request: WatchRequest) -> ConsumerConfig:
    """Pure: the one consumer a device may have, delivering where it asked (already checked
    to be its own inbox)."""
    return ConsumerConfig(
        name=device_consumer_name(device_id),
        deliver_subject=request.deliver_subject,
        filter_subject=kv_subject(BUCKET_DESIRED_STATE, desired_state_filter(device_id)),
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NONE,
        flow_control=False,
        idle_heartbeat=request.idle_heartbeat_s,
        inactive_threshold=INACTIVE_THRESHOLD_S,
        mem_storage=True,
        num_replicas=1,
    )


def check_watch_request(subject: str, reply: str | None, data: bytes) -> tuple[str, WatchRequest]:
    """Pure: (device, request) for an acceptable watch request, else :class:`WatchRefused`."""
    try:
        device = parse_watch_subject(subject)
    except WatchSubjectError as exc:
        raise WatchRefused(str(exc), reason="subject") from exc
    if not reply or not is_device_inbox(device, reply):
        raise WatchRefused("reply subject is not the device's inbox", reason="reply-subject")
    try:
        request = WatchRequest.model_validate_json(data)
    except ValidationError as exc:
        raise WatchRefused(f"invalid watch request: {validation_summary(exc)}",
                           reason="schema") from exc
    if not is_device_inbox(device, request.deliver_subject):
        raise WatchRefused(f"deliver_subject must be a subject under _INBOX.{device}",
                           reason="deliver-subject")
    return device, request


class WatchGrants:
    def __init__(self, nc: NatsClient, settings: WriterSection | None = None,
                 lease_check: LeaseCheck | None = None) -> None:
        """``lease_check(device, instance)`` raises :class:`DeviceInUse` when another agent
        instance holds the device (the report writer's :meth:`ReportWriter.check_lease`)."""
        self._nc = nc
        self._lease_check = lease_check
        self.settings = settings or WriterSection()
        self._limiter = RateLimiter(self.settings.watches_per_s, self.settings.watch_burst)
        self._throttle = LogThrottle(self.settings.refusal_log_interval_s)
        self._slots = asyncio.Semaphore(self.settings.watch_concurrency)
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None
        self._stream = kv_stream_name(BUCKET_DESIRED_STATE)

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(watch_subscription(), queue=QUEUE_GROUP,
                                             cb=self._on_request)
        await self._nc.flush()
        log.info("granting desired-state watches on %s", watch_subscription())

    async def stop(self) -> None:
        """Stop taking watch requests; those already delivered are still granted or refused
        and answered, within the connection's ``drain_timeout_s``; what is left is cancelled
        (the agent asks again)."""
        timeout = self.settings.nats.drain_timeout_s
        deadline = time.monotonic() + timeout
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await drain_subscription(self._nc, sub, timeout)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        # consumer changes are JetStream round trips: handle requests side by side (bounded)
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        device = "?"
        try:
            device, request = check_watch_request(msg.subject, msg.reply, bytes(msg.data))
            wait = self._limiter.check(device, time.monotonic())
            if wait:
                raise WatchRefused(f"rate limit: too many watch requests; retry in {wait:.1f}s",
                                   reason="rate", retry_after_s=round(wait, 3))
            if self._lease_check is not None:
                try:
                    await self._lease_check(device, (msg.headers or {}).get(HDR_AGENT_INSTANCE))
                except DeviceInUse as exc:
                    raise WatchRefused(str(exc), reason="in-use",
                                       in_use_by=exc.holder.instance) from exc
            if device in self._busy:
                raise WatchRefused("a watch request of this device is in progress",
                                   reason="busy", retry_after_s=1.0)
            self._busy.add(device)
            try:
                async with self._slots:
                    info = await self._replace(device, request)
            finally:
                self._busy.discard(device)
            reply = WatchReply(ok=True, consumer=info.name, num_pending=info.num_pending or 0)
            GRANTS.labels(outcome="granted").inc()
        except WatchRefused as exc:
            GRANTS.labels(outcome=f"refused-{exc.reason}").inc()
            suppressed = self._throttle.allow(f"{device}/{exc.reason}", time.monotonic())
            if suppressed is not None:
                more = f" ({suppressed} more like it suppressed)" if suppressed else ""
                log.warning("refused watch request on %s: %s%s", msg.subject, exc, more,
                            extra={"device": device, "reason": exc.reason})
            if exc.reason in ("subject", "reply-subject"):
                return  # never answer onto a subject the device chose outside its inbox
            reply = WatchReply(ok=False, error=str(exc), retry_after_s=exc.retry_after_s,
                               in_use_by=exc.in_use_by)
        except Exception as exc:  # JetStream trouble: the agent retries
            log.warning("could not grant the watch of %s: %s", device, exc,
                        extra={"device": device})
            GRANTS.labels(outcome="error").inc()
            reply = WatchReply(ok=False, error=f"server error: {type(exc).__name__}",
                               retry_after_s=1.0)
        try:
            await self._nc.publish(msg.reply, reply.to_json_bytes())
        except Exception as exc:
            log.warning("could not answer the watch request of %s: %s", device, exc)

    async def _replace(self, device: str, request: WatchRequest) -> ConsumerInfo:
        js = self._nc.jetstream()
        config = consumer_config(device, request)
        assert config.name is not None
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(self._stream, config.name)
        return await js.add_consumer(self._stream, config)
