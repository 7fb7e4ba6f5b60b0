"""Following podman's event stream, so the reconciler hears of a container change at once.

Without it the agent learns that a container died at its next periodic pass
(``reconcile_interval_s``, 10 s by default). With it, ``podman events`` (one long-running
process, filtered to this device's label) reports the change within about a quarter of a second
(podman's file event log is polled), and the reconciler re-plans the deployment it belongs to.
The periodic pass stays: it is the safety net for anything the stream misses.

When the stream ends (podman upgraded, killed, or its event log rotated away) it is started
again after a backoff (full jitter, doubling up to ``events_retry_max_s``; every attempt
logged); each new stream starts from the moment before it was asked for and is followed by a
full pass, so nothing that happened while nobody listened is missed: the reconciler is level
triggered and converges from what podman lists, not from the events themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from harmony_fleet.bus.retry import full_jitter_backoff
from harmony_fleet.daemon import first_of
from harmony_fleet.metrics import Counter

from .runtime import LABEL_DEPLOYMENT, LABEL_DEVICE, ContainerEvent, ContainerRuntime

log = logging.getLogger(__name__)

EVENTS = Counter("fleet_agent_container_events_total",
                 "podman container events that made the agent look again")
STREAM_RESTARTS = Counter("fleet_agent_event_stream_restarts_total",
                          "Times podman's event stream ended and was started again")

#: Event statuses after which what podman lists about a container may differ (podman 4 and 5).
#: Left out: exec, exec_died, attach, mount, unmount, sync, health_status, export, commit, copy,
#: kill (a ``died`` follows if it worked).
STATE_CHANGES: Final = frozenset({
    "create", "init", "start", "restart", "died", "cleanup", "remove", "stop", "pause",
    "unpause", "checkpoint", "restore", "rename",
})

#: ``notify(deployment)``: a container of ``deployment`` changed; None: anything may have.
Notify = Callable[[str | None], None]


def deployment_touched(event: ContainerEvent) -> str | None:
    """Which deployment an event concerns: its token, or None when it says nothing new."""
    if event.status not in STATE_CHANGES:
        return None
    return event.labels.get(LABEL_DEPLOYMENT) or None


@dataclass(frozen=True)
class EventStreamSettings:
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0


class ContainerEvents:
    """Follows podman's events about one device's containers and tells the reconciler."""

    def __init__(self, runtime: ContainerRuntime, device_id: str, notify: Notify,
                 settings: EventStreamSettings | None = None) -> None:
        self.runtime = runtime
        self.device_id = device_id
        self._notify = notify
        self.settings = settings or EventStreamSettings()
        #: streams started so far (tests and logs)
        self.streams = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the events until ``stop``; a stream that ends is started again."""
        backoff = self._backoff()
        attempt = 0
        while not stop.is_set():
            began = time.monotonic()
            reason = await self._follow_until(stop)
            if reason is None:
                return
            if time.monotonic() - began > self.settings.retry_max_s:
                backoff, attempt = self._backoff(), 0  # it worked for a while: start over
            attempt += 1
            wait = next(backoff)
            STREAM_RESTARTS.inc()
            log.warning("podman events stopped (%s); attempt #%d to follow them again in %.1fs",
                        reason, attempt, wait, extra={"device": self.device_id})
            await first_of(stop, timeout=wait)

    def _backoff(self) -> Iterator[float]:
        return full_jitter_backoff(self.settings.retry_initial_s, 2.0, self.settings.retry_max_s)

    async def _follow_until(self, stop: asyncio.Event) -> str | None:
        """Follow one stream; None when ``stop`` ended it, else why it ended."""
        since = time.time()
        self.streams += 1
        # a full pass: whatever happened while nobody listened is in what podman lists now
        # (and the stream itself replays what happens from ``since`` on)
        self._notify(None)
        follow = asyncio.create_task(self._consume(since), name="podman-events")
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([follow, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            follow.cancel()
            # its outcome is read below: gather only waits for the end of it
            await asyncio.gather(follow, return_exceptions=True)
        if stop.is_set():
            return None
        exc = follow.exception() if not follow.cancelled() else None
        return str(exc) if exc is not None else "the stream ended"

    async def _consume(self, since: float) -> None:
        async for event in self.runtime.events(LABEL_DEVICE, self.device_id, since=since):
            deployment = deployment_touched(event)
            if deployment is not None:
                EVENTS.inc()
                self._notify(deployment)
