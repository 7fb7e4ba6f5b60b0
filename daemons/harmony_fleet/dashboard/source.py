"""Where the dashboard reads the fleet from, and how it reaches devices.

A :class:`FleetSnapshot` is what every page is computed from: the four buckets as the dashboard
last saw them and, when the operator serves it, the Deployment resources with their status.
Three sources fill it: :class:`BucketSource` (KV watches on the buckets: ``fleet dashboard``),
the operator's own in-memory view (``fleet-operator``), and :mod:`.mock` (seeded data).

Everything runs on one event loop and views are computed synchronously, so a snapshot is the
source's live dictionaries, not a copy (10,000 devices are not copied per request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from harmony_fleet.bus import FleetCommandsClient
from harmony_fleet.bus.kv import KeyWatch
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    PingReply,
    parse_desired_state_key,
    parse_device_heartbeat_key,
    parse_device_info_key,
    parse_device_state_key,
    validation_summary,
)
from harmony_fleet.contracts.base import utcnow

log = logging.getLogger(__name__)
#: unreadable entries remembered (shown on the overview); more are counted out, not kept
MAX_PROBLEMS = 1000


@dataclass(frozen=True)
class DeploymentResource:
    """A ``Deployment`` resource as Kubernetes has it (only when the operator serves the
    dashboard): what it asks for and the status the operator wrote."""

    namespace: str
    name: str
    token: str
    generation: int | None
    selector: dict[str, Any]
    rollout: dict[str, Any]
    status: dict[str, Any]
    error: str | None = None


@dataclass
class FleetSnapshot:
    infos: Mapping[str, DeviceInfo]
    heartbeats: Mapping[str, Heartbeat]
    #: device -> deployment token -> what the device reports
    states: Mapping[str, Mapping[str, DeploymentState]]
    #: device -> deployment token -> the desired-state value (bytes as stored)
    desired: Mapping[str, Mapping[str, bytes]]
    #: deployment token -> resource; None when there is no Kubernetes (buckets only)
    resources: Mapping[str, DeploymentResource] | None
    taken_at: datetime = field(default_factory=utcnow)
    problems: list[str] = field(default_factory=list)
    ready: bool = True


class FleetSource(Protocol):
    """What the dashboard reads; ``label`` says where from (shown in the footer)."""

    label: str

    def snapshot(self) -> FleetSnapshot: ...


class DeviceCommands(Protocol):
    """The two device verbs the dashboard uses (:class:`FleetCommandsClient` is one)."""

    async def ping(self, device_id: str, *, timeout: float | None = None) -> PingReply: ...

    def logs(self, device_id: str, deployment: str, service: str, *, tail: int | None = None,
             since: str | None = None, follow: bool = False,
             follow_timeout_s: int = 3600) -> AsyncIterator[str]: ...


def commands_client(nc: NatsClient, timeout: float = 5.0) -> DeviceCommands:
    return FleetCommandsClient(nc, timeout=timeout)


class BucketSource:
    """The fleet as the four KV buckets hold it, kept current by one watch per bucket.

    A watch that fails is started again after a pause, and every watch is started again after
    the connection comes back (:meth:`reconnected`: a server restart can leave a watch silent
    for many seconds before nats-py notices). A new watch builds a new map from the current
    values and replaces the old one only once they are all in (level-triggered: a key deleted
    meanwhile does not linger, and no page sees a half-built fleet)."""

    label = "NATS buckets"

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self.maps: dict[str, dict[str, Any]] = {
            BUCKET_DEVICE_INFO: {}, BUCKET_DEVICE_HEARTBEAT: {}, BUCKET_DEVICE_STATE: {},
            BUCKET_DESIRED_STATE: {}}
        self.problems: dict[str, str] = {}
        self._generation = 0  # bumped on every reconnect: watches start again
        self._ready: dict[str, asyncio.Event] = {b: asyncio.Event() for b in self.maps}

    @property
    def infos(self) -> dict[str, DeviceInfo]:
        return self.maps[BUCKET_DEVICE_INFO]

    @property
    def heartbeats(self) -> dict[str, Heartbeat]:
        return self.maps[BUCKET_DEVICE_HEARTBEAT]

    @property
    def states(self) -> dict[str, dict[str, DeploymentState]]:
        return self.maps[BUCKET_DEVICE_STATE]

    @property
    def desired(self) -> dict[str, dict[str, bytes]]:
        return self.maps[BUCKET_DESIRED_STATE]

    def snapshot(self) -> FleetSnapshot:
        return FleetSnapshot(self.infos, self.heartbeats, self.states, self.desired, None,
                             problems=sorted(self.problems.values())[:20],
                             ready=all(e.is_set() for e in self._ready.values()))

    async def reconnected(self) -> None:
        """The connection is back (nats-py's ``reconnected_cb``): start every watch again."""
        self._generation += 1

    async def wait_ready(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self._ready.values())),
                               timeout)

    def tasks(self, stop: asyncio.Event) -> dict[str, Any]:
        return {
            "watch-info": self._follow(BUCKET_DEVICE_INFO, _apply_info, stop),
            "watch-heartbeat": self._follow(BUCKET_DEVICE_HEARTBEAT, _apply_heartbeat, stop),
            "watch-state": self._follow(BUCKET_DEVICE_STATE, _apply_state, stop),
            "watch-desired": self._follow(BUCKET_DESIRED_STATE, _apply_desired, stop),
        }

    async def _follow(self, bucket: str, apply: Apply, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._watch_once(bucket, apply, stop)
            except Exception as exc:  # a lost watch: start over from the current values
                log.warning("watch of %s failed (%s: %s); starting it again in 2 s",
                            bucket, type(exc).__name__, exc)
                await asyncio.sleep(2)

    async def _watch_once(self, bucket: str, apply: Apply, stop: asyncio.Event) -> None:
        generation = self._generation
        target: dict[str, Any] = {}  # the new map, shown once the current values are all in
        async with KeyWatch(self._nc.jetstream(), bucket) as watch:
            while not stop.is_set() and generation == self._generation:
                try:
                    entry = await watch.updates(timeout=1.0)
                except TimeoutError:
                    continue
                if entry is None:  # the current values are all in
                    self.maps[bucket] = target
                    self._ready[bucket].set()
                    continue
                value = None if entry.operation in ("DEL", "PURGE") else entry.value
                try:
                    apply(target, entry.key, value)
                    self.problems.pop(f"{bucket} {entry.key}", None)
                except ValueError as exc:  # pydantic's ValidationError is one
                    reason = validation_summary(exc) if isinstance(exc, ValidationError) \
                        else str(exc)
                    if len(self.problems) < MAX_PROBLEMS:
                        self.problems[f"{bucket} {entry.key}"] = f"{bucket} {entry.key}: {reason}"


#: applies one entry (key, value or None for a deletion) to a bucket's map; may raise ValueError
Apply = Callable[[dict[str, Any], str, bytes | None], None]


def _apply_info(infos: dict[str, Any], key: str, value: bytes | None) -> None:
    device = parse_device_info_key(key)
    if value is None:
        infos.pop(device, None)
        return
    info = DeviceInfo.model_validate_json(value)
    if info.device_id != device:
        raise ValueError(f"payload names {info.device_id}")
    infos[device] = info


def _apply_heartbeat(beats: dict[str, Any], key: str, value: bytes | None) -> None:
    device = parse_device_heartbeat_key(key)
    if value is None:
        beats.pop(device, None)
    else:
        beats[device] = Heartbeat.model_validate_json(value)


def _apply_state(states: dict[str, Any], key: str, value: bytes | None) -> None:
    where = parse_device_state_key(key)
    per_device = states.setdefault(where.device_id, {})
    if value is None:
        per_device.pop(where.deployment, None)
        if not per_device:
            states.pop(where.device_id, None)
    else:
        per_device[where.deployment] = DeploymentState.model_validate_json(value)


def _apply_desired(desired: dict[str, Any], key: str, value: bytes | None) -> None:
    where = parse_desired_state_key(key)
    per_device = desired.setdefault(where.device_id, {})
    if value is None:
        per_device.pop(where.deployment, None)
        if not per_device:
            desired.pop(where.device_id, None)
    else:
        per_device[where.deployment] = value
