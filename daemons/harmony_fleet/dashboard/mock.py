"""``fleet dashboard --mock``: a seeded, made-up fleet, for trying the pages without one.

Every page says it is mock data (a banner in the layout, driven by ``mock=True``). Its ping
answers and log lines are made up too, and say so: ping replies carry the agent version
``mock``, and every log line starts with ``[mock]``. Nothing here ever reaches a device.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from harmony_fleet.bus import DeviceOffline, RemoteError
from harmony_fleet.contracts import (
    DeploymentState,
    DeviceInfo,
    ErrorKind,
    ErrorReply,
    Heartbeat,
    Inventory,
    Phase,
    PingReply,
    ServiceStatus,
    deployment_token,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.planning import device_online

from .source import DeploymentResource, FleetSnapshot

MOCK_AGENT_VERSION = "mock"
HEARTBEAT_S = 5.0
SITES = ("lab", "kitchen", "garage", "warehouse", "roof")
ROLES = ("sensor", "camera", "gateway")
WORKLOADS = (("shop", "web", ("web", "sidecar")), ("shop", "api", ("api",)),
             ("iot", "collector", ("collector",)), ("iot", "camera-feed", ("feed",)),
             ("ops", "node-exporter", ("exporter",)))


def seeded_snapshot(devices: int = 48, *, seed: int = 7, now: datetime | None = None,
                    offline_share: float = 0.12, failed_share: float = 0.06) -> FleetSnapshot:
    """A made-up fleet of ``devices`` devices, the same for the same seed (and ``now``)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible made-up data, nothing secret
    now = now or utcnow()
    infos: dict[str, DeviceInfo] = {}
    beats: dict[str, Heartbeat] = {}
    states: dict[str, dict[str, DeploymentState]] = {}
    desired: dict[str, dict[str, bytes]] = {}
    width = len(str(max(devices - 1, 0)))
    scores = {name: json.dumps({"services": [
        {"name": svc, "image": f"registry.example.net/{ns}/{svc}:1.{rng.randint(0, 9)}"}
        for svc in services]}).encode() for ns, name, services in WORKLOADS}
    for index in range(devices):
        site, role = rng.choice(SITES), rng.choice(ROLES)
        device = f"{site}-{role}-{index:0{width}d}"
        started = now - timedelta(hours=rng.randint(1, 400))
        infos[device] = DeviceInfo(
            device_id=device, agent_version="0.1.0", labels={"site": site, "role": role},
            inventory=Inventory(hostname=device, arch=rng.choice(["aarch64", "x86_64"]),
                                os="Debian GNU/Linux 12 (bookworm)", kernel="6.1.0-28",
                                cpus=rng.choice([2, 4, 8]),
                                memory_bytes=rng.choice([2, 4, 8]) * 1024 ** 3,
                                podman_version="4.3.1"),
            started_at=started, updated_at=started)
        offline = rng.random() < offline_share
        seen = now - timedelta(seconds=rng.randint(120, 90_000) if offline else rng.randint(0, 8))
        beats[device] = Heartbeat(device_id=device, timestamp=seen,
                                  uptime_s=max(0, int((seen - started).total_seconds())),
                                  agent_version="0.1.0")
        for ns, name, services in rng.sample(WORKLOADS, rng.randint(1, 3)):
            token = deployment_token(ns, name)
            desired.setdefault(device, {})[token] = scores[name]
            failed = rng.random() < failed_share
            phase = Phase.FAILED if failed else rng.choice(
                [Phase.RUNNING] * 8 + [Phase.PULLING, Phase.STARTING])
            since = now - timedelta(minutes=rng.randint(1, 3000))
            message = (f"image registry.example.net/{ns}/{services[0]}: pull failed: "
                       "connection refused" if failed else "")
            states.setdefault(device, {})[token] = DeploymentState(
                device_id=device, deployment=token, phase=phase, message=message,
                since=since, updated_at=since,
                services=[ServiceStatus(name=svc, container=f"{device}.{token}.{svc}",
                                        state="running" if phase is Phase.RUNNING else "created")
                          for svc in services])
    resources = {}
    for ns, name, _services in WORKLOADS:
        token = deployment_token(ns, name)
        rollout: dict[str, object] = {"strategy": "AllAtOnce"}
        status: dict[str, object] = {"conditions": [
            {"type": "Valid", "status": "True", "reason": "ScoreValid", "message": ""}]}
        told = sorted(d for d, tokens in desired.items() if token in tokens)
        failing = [d for d in told if states[d][token].phase is Phase.FAILED]
        status["aggregate"] = {"matchedDeviceCount": len(told), "failed": len(failing),
                               "succeeded": sum(states[d][token].phase is Phase.RUNNING
                                                for d in told)}
        if name == "web":  # the shape of the CRD's status.rollout (RolloutStatus)
            size = max(1, len(told) // 4)
            rollout = {"strategy": "Batched", "batchSize": size}
            status["rollout"] = {
                "strategy": "Batched", "phase": "Progressing", "revision": "4f1c2a9e",
                "currentBatch": 2, "totalBatches": -(-len(told) // size), "batchSize": size,
                "batchUpdated": size, "batchSucceeded": max(0, size - 2), "batchFailed": 1,
                "batchPending": 1, "updated": min(len(told), 2 * size),
                "failingDevices": failing[:3], "acceptedBatch": 1}
        resources[token] = DeploymentResource(ns, name, token, 3, {}, rollout, status)
    return FleetSnapshot(infos, beats, states, desired, resources, taken_at=now)


class MockSource:
    """The seeded fleet; heartbeats of the online devices keep being fresh."""

    label = "mock data (seeded, not a real fleet)"

    def __init__(self, devices: int = 48, seed: int = 7) -> None:
        self._snapshot = seeded_snapshot(devices, seed=seed)
        self._offline = {d for d, b in self._snapshot.heartbeats.items()
                         if not device_online(b, self._snapshot.taken_at, timedelta(seconds=30))}
        self._beats = dict(self._snapshot.heartbeats)
        self._beaten = 0.0

    def snapshot(self) -> FleetSnapshot:
        """The seeded fleet; the online devices "heartbeat" every 5 s (as agents do)."""
        now = utcnow()
        if time.monotonic() - self._beaten > HEARTBEAT_S:
            self._beaten = time.monotonic()
            for device, beat in self._beats.items():
                if device not in self._offline:
                    self._beats[device] = beat.model_construct(
                        **{**beat.__dict__, "timestamp": now})
        snap = self._snapshot
        return FleetSnapshot(snap.infos, self._beats, snap.states, snap.desired,
                             snap.resources, taken_at=now)

    @property
    def offline(self) -> set[str]:
        return set(self._offline)


class MockCommands:
    """Ping and logs for the mock fleet: offline devices are offline, the rest answer with
    made-up replies that say they are mock."""

    def __init__(self, source: MockSource) -> None:
        self._source = source

    def _check(self, device_id: str) -> None:
        if device_id not in self._source.snapshot().infos or device_id in self._source.offline:
            raise DeviceOffline(device_id, f"device {device_id} is offline (no responders)")

    async def ping(self, device_id: str, *, timeout: float | None = None) -> PingReply:
        self._check(device_id)
        await asyncio.sleep(0.002)
        return PingReply(device_id=device_id, agent_version=MOCK_AGENT_VERSION, uptime_s=3600)

    async def logs(self, device_id: str, deployment: str, service: str, *,
                   tail: int | None = None, since: str | None = None, follow: bool = False,
                   follow_timeout_s: int = 3600) -> AsyncIterator[str]:
        self._check(device_id)
        states = self._source.snapshot().states.get(device_id, {})
        state = states.get(deployment)
        if state is None or service not in [s.name for s in state.services]:
            raise RemoteError(device_id, ErrorReply(
                kind=ErrorKind.NOT_FOUND, message=f"no service {service} in {deployment}"))
        for number in range(1, 6):
            yield f"[mock] {service} on {device_id}: line {number}\n"
        while follow:
            await asyncio.sleep(1.0)
            number += 1
            yield f"[mock] {service} on {device_id}: line {number}\n"
