"""SIMULATED devices, for operator tests and load benchmarks: no agent process, no podman.

A :class:`SimulatedFleet` writes what agents' reports would produce (``device-info``,
``device-heartbeat``) and runs a *simulated runtime*: for every desired-state key of its
devices it reports ``Running`` for the score's spec hash (or ``Failed`` when a service's env
sets ``SIMULATE_FAIL``), exactly as the report writer would store an agent's report. It writes
the buckets directly with an admin connection, so it is only a stand-in for the edge side
of the contract, clearly not the real agent (which the agent and identity tests cover).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

import harmony_fleet
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    Inventory,
    Phase,
    PodmanScore,
    device_heartbeat_key,
    device_info_key,
    device_state_key,
    parse_desired_state_key,
)
from harmony_fleet.contracts.base import utcnow

SIMULATED_INVENTORY = Inventory(hostname="simulated", arch="x86_64", os="Simulated Linux",
                                kernel="0.0.0-sim", cpus=4, memory_bytes=4 << 30,
                                podman_version=None)


class SimulatedFleet:
    def __init__(self, nc: NatsClient, devices: Mapping[str, Mapping[str, str]], *,
                 concurrency: int = 256) -> None:
        self.nc = nc
        self.devices = {d: dict(labels) for d, labels in devices.items()}
        self._slots = asyncio.Semaphore(concurrency)
        self.reported: dict[str, DeploymentState] = {}

    async def _put(self, bucket: str, key: str, value: bytes) -> None:
        async with self._slots:
            kv = await self.nc.jetstream().key_value(bucket)
            await kv.put(key, value)

    async def publish_info(self, devices: list[str] | None = None) -> None:
        now = utcnow()
        await asyncio.gather(*(
            self._put(BUCKET_DEVICE_INFO, device_info_key(d), DeviceInfo(
                device_id=d, agent_version=harmony_fleet.__version__,
                labels=self.devices[d], inventory=SIMULATED_INVENTORY,
                runtime_enabled=True, started_at=now, updated_at=now).to_json_bytes())
            for d in (devices or list(self.devices))
        ))

    async def heartbeat(self, devices: list[str] | None = None) -> None:
        now = utcnow()
        await asyncio.gather(*(
            self._put(BUCKET_DEVICE_HEARTBEAT, device_heartbeat_key(d), Heartbeat(
                device_id=d, timestamp=now, uptime_s=1,
                agent_version=harmony_fleet.__version__).to_json_bytes())
            for d in (devices or list(self.devices))
        ))

    async def relabel(self, device: str, labels: Mapping[str, str]) -> None:
        self.devices[device] = dict(labels)
        await self.publish_info([device])

    async def report(self, device: str, deployment: str, phase: Phase, spec_hash: str | None,
                     message: str = "") -> None:
        now = utcnow()
        state = DeploymentState(device_id=device, deployment=deployment, phase=phase,
                                message=message, spec_hash=spec_hash, since=now, updated_at=now)
        self.reported[f"{device}.{deployment}"] = state
        await self._put(BUCKET_DEVICE_STATE, device_state_key(device, deployment),
                        state.to_json_bytes())

    async def run_runtime(self, stop: asyncio.Event) -> None:
        """The simulated runtime: answer every desired-state change of our devices."""
        kv = await self.nc.jetstream().key_value(BUCKET_DESIRED_STATE)
        watcher = await kv.watch(">")
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=0.5)  # type: ignore[no-untyped-call]
                except Exception as exc:  # nats-py's timeout
                    if type(exc).__name__ == "TimeoutError":
                        continue
                    raise
                if entry is None:
                    continue
                where = parse_desired_state_key(entry.key)
                if where.device_id not in self.devices:
                    continue
                if entry.operation in ("DEL", "PURGE") or entry.value is None:
                    await self.report(where.device_id, where.deployment, Phase.REMOVED, None,
                                      "removed (simulated)")
                    continue
                try:
                    score = PodmanScore.model_validate_json(entry.value)
                except ValidationError as exc:
                    await self.report(where.device_id, where.deployment, Phase.FAILED, None,
                                      f"invalid workload: {exc.error_count()} error(s)")
                    continue
                failing = any("SIMULATE_FAIL" in s.env for s in score.services)
                await self.report(
                    where.device_id, where.deployment,
                    Phase.FAILED if failing else Phase.RUNNING, score.spec_hash(),
                    "simulated failure" if failing else "running (simulated)",
                )
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
