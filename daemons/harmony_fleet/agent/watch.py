"""The agent's scoped watch of ``desired-state`` keys ``<device>.>``.

``kv.watch()`` creates an unnamed consumer (``$JS.API.CONSUMER.CREATE.KV_desired-state``); a
device allowed to do that could watch every device's workloads. This watcher creates a
*named* push consumer whose filter is part of the API subject
(``$JS.API.CONSUMER.CREATE.KV_desired-state.<name>.$KV.desired-state.<device>.>``), which a
subject permission can pin to the device. It behaves like an ordered consumer of our own:

* deliver ``LAST_PER_SUBJECT``, no acks, flow control and idle heartbeats on;
* the first values form a *snapshot*, published to the reconciler only once complete (a partial
  view would make the reconciler remove workloads that simply have not arrived yet);
* a gap in consumer sequences, missing heartbeats, or a NATS reconnect discards the consumer
  and starts a new one under a new name (the server removes the old one once inactive); the new
  snapshot replaces the old view, so the reconciler converges from current values (level
  triggered), whatever was missed.

:class:`DesiredView` is the pure bookkeeping (tested on its own); :class:`DesiredStateWatcher`
does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter

from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    KeyFormatError,
    desired_state_filter,
    kv_stream_name,
    kv_subject,
    parse_desired_state_key,
)

log = logging.getLogger(__name__)

WATCH_RESETS = Counter(
    "fleet_agent_watch_resets_total", "Desired-state consumer re-creations, by reason", ["reason"]
)

KV_OPERATION = "KV-Operation"
KV_MARKER_REASON = "Nats-Marker-Reason"  # nats-server >= 2.11 markers (e.g. TTL expiry)


@dataclass(frozen=True)
class DesiredEntry:
    """One deployment's current desired-state value (``None``: deleted)."""

    deployment: str
    value: bytes | None
    revision: int


class WatchReset(Exception):
    """The consumer must be re-created (the message says why)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class DesiredView:
    """Pure bookkeeping of one consumer session: snapshot, then live updates.

    ``begin(pending)`` starts a session; ``entry(...)`` feeds each data message. The current
    complete view is ``values`` (deployment -> entry, deleted keys dropped); ``complete`` says
    whether the initial snapshot has been fully received.
    """

    values: dict[str, DesiredEntry] = field(default_factory=dict)
    complete: bool = False
    generation: int = 0
    _staging: dict[str, DesiredEntry] = field(default_factory=dict)
    _last_cseq: int = 0

    def begin(self, pending: int) -> bool:
        """A new consumer with ``pending`` initial messages. True if the snapshot is done."""
        self._staging = {}
        self._last_cseq = 0
        self.complete = False
        if pending == 0:
            return self._publish_snapshot()
        return False

    def _publish_snapshot(self) -> bool:
        self.values = {k: v for k, v in self._staging.items() if v.value is not None}
        self._staging = {}
        self.complete = True
        self.generation += 1
        return True

    def check_sequence(self, cseq: int) -> None:
        if cseq != self._last_cseq + 1:
            raise WatchReset("gap", f"consumer sequence {cseq} after {self._last_cseq}")
        self._last_cseq = cseq

    def check_heartbeat(self, last_consumer_seq: int | None) -> None:
        if last_consumer_seq is not None and last_consumer_seq != self._last_cseq:
            raise WatchReset(
                "gap", f"heartbeat says {last_consumer_seq} delivered, saw {self._last_cseq}"
            )

    def entry(self, cseq: int, entry: DesiredEntry, pending: int) -> bool:
        """Apply one message; True when ``values`` changed (or the snapshot completed)."""
        self.check_sequence(cseq)
        if not self.complete:
            self._staging[entry.deployment] = entry
            return self._publish_snapshot() if pending == 0 else False
        if entry.value is None:
            if self.values.pop(entry.deployment, None) is None:
                return False
        else:
            self.values[entry.deployment] = entry
        self.generation += 1
        return True


class DesiredStateWatcher:
    """Keeps :attr:`view` current; sets :attr:`changed` whenever it changes."""

    def __init__(
        self,
        nc: NatsClient,
        device_id: str,
        *,
        idle_heartbeat_s: float = 5.0,
        inactive_threshold_s: float = 60.0,
        backoff_s: float = 1.0,
        changed: asyncio.Event | None = None,
    ) -> None:
        self._nc = nc
        self._device_id = device_id
        self._heartbeat = idle_heartbeat_s
        self._inactive = inactive_threshold_s
        self._backoff = backoff_s
        self.view = DesiredView()
        self.changed = changed or asyncio.Event()
        self._reset = asyncio.Event()
        self._stream = kv_stream_name(BUCKET_DESIRED_STATE)
        self._filter = kv_subject(BUCKET_DESIRED_STATE, desired_state_filter(device_id))
        self._key_prefix = kv_subject(BUCKET_DESIRED_STATE, "")
        self.consumer_name: str | None = None

    def request_reset(self) -> None:
        """Re-create the consumer (call on NATS reconnect)."""
        self._reset.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session(stop)
            except WatchReset as exc:
                WATCH_RESETS.labels(reason=exc.reason).inc()
                log.info("desired-state watch restarts: %s", exc,
                         extra={"device": self._device_id})
                continue
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                WATCH_RESETS.labels(reason="error").inc()
                log.warning("desired-state watch failed: %s; retrying in %.1fs", exc,
                            self._backoff, extra={"device": self._device_id})
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._backoff)

    async def _session(self, stop: asyncio.Event) -> None:
        self._reset.clear()
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, pending_msgs_limit=-1, pending_bytes_limit=-1)
        name = f"fleet-agent-{self._device_id}-{secrets.token_hex(4)}"
        try:
            config = ConsumerConfig(
                name=name,
                deliver_subject=inbox,
                filter_subject=self._filter,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                flow_control=True,
                idle_heartbeat=self._heartbeat,
                inactive_threshold=self._inactive,
                mem_storage=True,
                num_replicas=1,
            )
            info = await self._nc.jetstream().add_consumer(self._stream, config)
            self.consumer_name = name
            if self.view.begin(info.num_pending or 0):
                self.changed.set()
            last_activity = time.monotonic()
            while not stop.is_set() and not self._reset.is_set():
                try:
                    msg = await sub.next_msg(timeout=min(self._heartbeat, 1.0))
                except nats.errors.TimeoutError:
                    if time.monotonic() - last_activity > 3 * self._heartbeat:
                        raise WatchReset("heartbeat", "no message or heartbeat") from None
                    continue
                last_activity = time.monotonic()
                await self._handle(msg)
            if self._reset.is_set():
                raise WatchReset("reconnect")
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "100" or (not msg.data and status):
            if msg.reply:  # flow control request: answer or the server stalls delivery
                await self._nc.publish(msg.reply, b"")
            last = headers.get("Nats-Last-Consumer")
            self.view.check_heartbeat(int(last) if last and last.isdigit() else None)
            return
        if status:  # 409 consumer deleted, etc.
            raise WatchReset("status", f"{status} {headers.get('Description', '')}")
        meta = msg.metadata
        key = msg.subject.removeprefix(self._key_prefix)
        try:
            parsed = parse_desired_state_key(key)
        except KeyFormatError as exc:
            # cannot happen through our filter; never let it stop the watch
            log.warning("ignoring desired-state key %r: %s", key, exc)
            self.view.check_sequence(meta.sequence.consumer)
            return
        if parsed.device_id != self._device_id:
            self.view.check_sequence(meta.sequence.consumer)
            return
        deleted = headers.get(KV_OPERATION) in ("DEL", "PURGE") or bool(
            headers.get(KV_MARKER_REASON)
        )
        entry = DesiredEntry(parsed.deployment, None if deleted else bytes(msg.data),
                             meta.sequence.stream)
        if self.view.entry(meta.sequence.consumer, entry, meta.num_pending):
            self.changed.set()
