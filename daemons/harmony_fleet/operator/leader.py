"""Leader election on a ``coordination.k8s.io/v1`` Lease, so two replicas never both write.

Every replica watches and keeps its in-memory view; only the Lease holder writes (desired-state
keys, Device CRs, status patches, finalizer cleanup). :func:`decide` is the pure rule; the
elector renews every ``renew_s`` and steps down when a renewal fails, well before another
replica may take over (``duration_s`` after the last renewal).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from prometheus_client import Gauge

from harmony_fleet.daemon import first_of

from .kube import Conflict, KubeClient, KubeError, lease_path

log = logging.getLogger(__name__)

LEADER = Gauge("fleet_operator_leader", "1 while this replica holds the lease")


class Action(StrEnum):
    CREATE = "create"  # no lease yet
    RENEW = "renew"  # ours
    ACQUIRE = "acquire"  # someone else's, expired
    FOLLOW = "follow"  # someone else's, live


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def decide(lease: dict[str, Any] | None, me: str, now: datetime) -> Action:
    if lease is None:
        return Action.CREATE
    spec = lease.get("spec") or {}
    if spec.get("holderIdentity") == me:
        return Action.RENEW
    renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    if (not spec.get("holderIdentity") or renewed is None or not isinstance(duration, int)
            or isinstance(duration, bool)):
        return Action.ACQUIRE
    return Action.ACQUIRE if now > renewed + timedelta(seconds=duration) else Action.FOLLOW


def _micro(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(self, client: KubeClient, namespace: str, name: str, identity: str, *,
                 duration_s: int = 15, renew_s: float = 5.0) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self.renew_s = renew_s
        self.is_leader = False
        self.changed = asyncio.Event()

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("%s leadership of %s/%s", "took" if leader else "lost", self.namespace,
                     self.name)
            self.is_leader = leader
            LEADER.set(1 if leader else 0)
            self.changed.set()

    async def step(self) -> bool:
        """One election round; returns whether we lead afterwards."""
        now = datetime.now(UTC)
        path = lease_path(self.namespace, self.name)
        try:
            lease = await self.client.get(path, retry=False)
            action = decide(lease, self.identity, now)
            spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s,
                    "renewTime": _micro(now)}
            if action is Action.CREATE:
                await self.client.create(lease_path(self.namespace), {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": _micro(now)},
                }, retry=False)
            elif action in (Action.RENEW, Action.ACQUIRE):
                assert lease is not None
                body = {**lease, "spec": {**(lease.get("spec") or {}), **spec}}
                if action is Action.ACQUIRE:
                    body["spec"]["acquireTime"] = _micro(now)
                    body["spec"]["leaseTransitions"] = int(
                        (lease.get("spec") or {}).get("leaseTransitions") or 0) + 1
                await self.client.replace(path, body, retry=False)  # resourceVersion: optimistic
            self._set(action is not Action.FOLLOW)
        except Conflict:
            self._set(False)  # someone else won this round
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            self._set(False)
        return self.is_leader

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.step()
                await first_of(stop, timeout=self.renew_s)
        finally:
            if self.is_leader:
                await self.release()
            self._set(False)

    async def release(self) -> None:
        """Give the lease up on shutdown so another replica takes over at once."""
        path = lease_path(self.namespace, self.name)
        try:
            lease = await self.client.get(path, retry=False)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == \
                    self.identity:
                body = {**lease, "spec": {**lease["spec"], "holderIdentity": ""}}
                await self.client.replace(path, body, retry=False)
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
