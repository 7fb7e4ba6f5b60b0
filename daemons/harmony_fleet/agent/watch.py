"""The agent's scoped watch of ``desired-state`` keys ``<device>.>``.

A device has no JetStream API rights (see :mod:`harmony_fleet.contracts.watch`): it subscribes
to a fresh subject under its own inbox, asks the server side (``fleet.watch.<device>``) to
(re)start its one consumer delivering there, and gets back how many values the initial
snapshot holds. The consumer delivers ``LAST_PER_SUBJECT``, without acks, with idle heartbeats;
the watcher behaves like an ordered consumer of its own:

* the first values form a *snapshot*, published to the reconciler only once complete (a partial
  view would make the reconciler remove workloads that simply have not arrived yet);
* a gap in consumer sequences, missing heartbeats, a status from the server (409: the consumer
  is gone), a NATS reconnect or a move to a new connection (token rollover) ends the session;
  the next one asks again (which replaces the consumer) and its snapshot replaces the view, so
  the reconciler converges from current values (level triggered), whatever was missed. The
  last complete view stays in place meanwhile.

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

from harmony_fleet.bus.kv import removes_value
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    HDR_AGENT_INSTANCE,
    KeyFormatError,
    WatchReply,
    WatchRequest,
    device_inbox_prefix,
    kv_subject,
    parse_desired_state_key,
    watch_request_subject,
)
from harmony_fleet.daemon import first_of
from harmony_fleet.errors import FleetError
from harmony_fleet.metrics import Counter

from .identity import DeviceIdInUse

log = logging.getLogger(__name__)

WATCH_RESETS = Counter(
    "fleet_agent_watch_resets_total", "Desired-state consumer re-creations, by reason", ["reason"]
)


@dataclass(frozen=True)
class DesiredEntry:
    """One deployment's current desired-state value (``None``: deleted)."""

    deployment: str
    value: bytes | None
    revision: int


class WatchReset(FleetError):
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


class WatchDenied(FleetError):
    """The server side would not start the watch (now); ``retry_after_s`` if it said when."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def next_backoff(previous: float, *, initial: float, ceiling: float) -> float:
    """Doubling waits between failed sessions, from ``initial`` up to ``ceiling``."""
    return initial if previous <= 0 else min(ceiling, previous * 2)


class DesiredStateWatcher:
    """Keeps :attr:`view` current; sets :attr:`changed` whenever it changes.

    One per agent: :meth:`use` moves it to another connection (the view stays until the new
    session's snapshot replaces it).
    """

    def __init__(
        self,
        nc: NatsClient,
        device_id: str,
        *,
        idle_heartbeat_s: float = 5.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        request_timeout_s: float = 5.0,
        changed: asyncio.Event | None = None,
        instance_id: str | None = None,
    ) -> None:
        self._nc = nc
        self._device_id = device_id
        self._heartbeat = idle_heartbeat_s
        self._backoff = backoff_s
        self._max_backoff = max_backoff_s
        self._request_timeout = request_timeout_s
        self.view = DesiredView()
        self.changed = changed or asyncio.Event()
        self._reset = asyncio.Event()
        self._key_prefix = kv_subject(BUCKET_DESIRED_STATE, "")
        self._inbox = device_inbox_prefix(device_id)
        self.consumer_name: str | None = None
        self.sessions = 0
        self._headers = {HDR_AGENT_INSTANCE: instance_id} if instance_id else None

    def use(self, nc: NatsClient) -> None:
        """Continue on ``nc`` (the agent moved to a new connection)."""
        self._nc = nc
        self._reset.set()

    def request_reset(self) -> None:
        """Start a new session (call on NATS reconnect)."""
        self._reset.set()

    async def run(self, stop: asyncio.Event) -> None:
        wait = 0.0
        while not stop.is_set():
            try:
                await self._session(stop)
                wait = 0.0
                continue
            except WatchReset as exc:
                WATCH_RESETS.labels(reason=exc.reason).inc()
                log.info("desired-state watch restarts: %s", exc,
                         extra={"device": self._device_id})
                if exc.reason in ("reconnect", "moved"):
                    wait = 0.0
                    continue
                wait = next_backoff(wait, initial=self._backoff, ceiling=self._max_backoff)
            except WatchDenied as exc:
                WATCH_RESETS.labels(reason="denied").inc()
                wait = max(exc.retry_after_s or 0.0,
                           next_backoff(wait, initial=self._backoff, ceiling=self._max_backoff))
                log.warning("desired-state watch refused: %s; asking again in %.1fs", exc, wait,
                            extra={"device": self._device_id})
            except (nats.errors.Error, TimeoutError, OSError, ValueError) as exc:
                WATCH_RESETS.labels(reason="error").inc()
                wait = next_backoff(wait, initial=self._backoff, ceiling=self._max_backoff)
                log.warning("desired-state watch failed: %s; retrying in %.1fs",
                            exc or type(exc).__name__, wait, extra={"device": self._device_id})
            if not stop.is_set() and wait:
                await first_of(stop, timeout=wait)

    async def _grant(self, nc: NatsClient, deliver: str) -> WatchReply:
        """Ask the server side to (re)start our consumer, delivering to ``deliver``."""
        reply_to = f"{self._inbox}.grant.{secrets.token_hex(8)}"
        answers = await nc.subscribe(reply_to, max_msgs=1)
        try:
            request = WatchRequest(deliver_subject=deliver, idle_heartbeat_s=self._heartbeat)
            await nc.publish(watch_request_subject(self._device_id), request.to_json_bytes(),
                             reply=reply_to, headers=self._headers)
            try:
                msg = await answers.next_msg(timeout=self._request_timeout)
            except nats.errors.TimeoutError:
                raise WatchDenied(f"no answer to the watch request within "
                                  f"{self._request_timeout:g}s") from None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await answers.unsubscribe()
        if (msg.headers or {}).get("Status") == "503":
            raise WatchDenied("no report writer is running (no responders)")
        reply = WatchReply.model_validate_json(msg.data)
        if not reply.ok and reply.in_use_by:
            raise DeviceIdInUse(reply.error or f"device id in use by {reply.in_use_by}")
        if not reply.ok:
            raise WatchDenied(reply.error or "refused", reply.retry_after_s)
        return reply

    async def _session(self, stop: asyncio.Event) -> None:
        self._reset.clear()
        nc = self._nc
        deliver = f"{self._inbox}.watch.{secrets.token_hex(8)}"
        queue: asyncio.Queue[Msg | None] = asyncio.Queue()

        async def on_message(msg: Msg) -> None:
            queue.put_nowait(msg)

        async def on_reset() -> None:
            await self._reset.wait()
            queue.put_nowait(None)

        sub = await nc.subscribe(deliver, cb=on_message, pending_msgs_limit=-1,
                                 pending_bytes_limit=-1)
        watcher = asyncio.create_task(on_reset())
        try:
            grant = await self._grant(nc, deliver)
            self.consumer_name = grant.consumer
            self.sessions += 1
            if self.view.begin(grant.num_pending):
                self.changed.set()
            last_activity = time.monotonic()
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(queue.get(), timeout=min(self._heartbeat, 1.0))
                except TimeoutError:
                    if time.monotonic() - last_activity > 3 * self._heartbeat:
                        raise WatchReset("heartbeat", "no message or heartbeat") from None
                    continue
                if msg is None:
                    raise WatchReset("moved" if nc is not self._nc else "reconnect")
                last_activity = time.monotonic()
                self._handle(msg)
        finally:
            watcher.cancel()
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def _handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "100" or (not msg.data and status):
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
        deleted = removes_value(headers)
        entry = DesiredEntry(parsed.deployment, None if deleted else bytes(msg.data),
                             meta.sequence.stream)
        if self.view.entry(meta.sequence.consumer, entry, meta.num_pending):
            self.changed.set()
