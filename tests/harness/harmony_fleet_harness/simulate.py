"""SIMULATED devices, for operator tests and load benchmarks: no agent process, no podman.

A :class:`SimulatedFleet` writes what agents' reports would produce (``device-info``,
``device-heartbeat``) and runs a *simulated runtime*: for every desired-state key of its
devices it reports ``Running`` for the score's spec hash (or ``Failed`` when a service's env
sets ``SIMULATE_FAIL``, or the device is in :attr:`SimulatedFleet.failing`: an injected
failure; a device in :attr:`SimulatedFleet.silent` never answers, as an offline one),
exactly as the report writer would store an agent's report. It writes the buckets directly
with an admin connection, so it is only a stand-in for the edge side of the contract, clearly
not the real agent (which the agent and identity tests cover).

Devices given a sealing key publish its public half (as agents do) and open the secrets of
their scores with it, as the agent's decoder does: a value that does not open reports
``Failed`` with the agent's message; opened values are kept in :attr:`SimulatedFleet.opened`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue
from pydantic import ValidationError

import harmony_fleet
from harmony_fleet.agent.plan import unopenable_secret
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
    open_sealed,
    parse_desired_state_key,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.contracts.sealing import public_key_of
from harmony_fleet.purecrypto import X25519PrivateKey

SIMULATED_INVENTORY = Inventory(hostname="simulated", arch="x86_64", os="Simulated Linux",
                                kernel="0.0.0-sim", cpus=4, memory_bytes=4 << 30,
                                podman_version=None)


class SimulatedFleet:
    def __init__(self, nc: NatsClient, devices: Mapping[str, Mapping[str, str]], *,
                 concurrency: int = 256,
                 sealing_keys: Mapping[str, X25519PrivateKey] | None = None) -> None:
        self.nc = nc
        self.devices = {d: dict(labels) for d, labels in devices.items()}
        self.sealing_keys = dict(sealing_keys or {})
        self._slots = asyncio.Semaphore(concurrency)
        self._kv: dict[str, KeyValue] = {}
        self.reported: dict[str, DeploymentState] = {}
        #: "<device>.<deployment>" -> the secrets the simulated device opened (name -> value)
        self.opened: dict[str, dict[str, bytes]] = {}
        #: devices whose every deployment fails (injected failures; change it any time)
        self.failing: set[str] = set()
        #: devices that never answer a desired-state change (offline; change it any time)
        self.silent: set[str] = set()

    async def _put(self, bucket: str, key: str, value: bytes, attempts: int = 60) -> None:
        """Write one entry; a transient failure (a server lost, a stream electing its leader)
        is retried for up to about 30 s, as the agents' writes are."""
        async with self._slots:
            for attempt in range(attempts):
                try:
                    kv = self._kv.get(bucket)
                    if kv is None:
                        kv = self._kv[bucket] = await self.nc.jetstream().key_value(bucket)
                    await kv.put(key, value)
                    return
                except (nats.errors.Error, TimeoutError):
                    if attempt == attempts - 1:
                        raise
                    await asyncio.sleep(0.5)

    async def publish_info(self, devices: list[str] | None = None) -> None:
        now = utcnow()
        await asyncio.gather(*(
            self._put(BUCKET_DEVICE_INFO, device_info_key(d), DeviceInfo(
                device_id=d, agent_version=harmony_fleet.__version__,
                labels=self.devices[d], inventory=SIMULATED_INVENTORY,
                runtime_enabled=True, started_at=now, updated_at=now,
                sealing_key=public_key_of(self.sealing_keys[d]) if d in self.sealing_keys
                else None).to_json_bytes())
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

    async def rekey(self, device: str, key: X25519PrivateKey) -> None:
        """The device lost its key and made a new one (as an agent whose key file was deleted)."""
        self.sealing_keys[device] = key
        await self.publish_info([device])

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

    async def run_runtime(self, stop: asyncio.Event,
                          deployments: Collection[str] | None = None) -> None:
        """The simulated runtime: answer every desired-state change of our devices (of
        ``deployments`` only, when given). Devices answer concurrently (as a fleet does);
        the answers about one key keep their order."""
        kv = await self.nc.jetstream().key_value(BUCKET_DESIRED_STATE)
        watcher = await kv.watch(">")
        last: dict[str, asyncio.Task[None]] = {}
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
                if where.device_id not in self.devices or where.device_id in self.silent or (
                        deployments is not None and where.deployment not in deployments):
                    continue
                value = None if entry.operation in ("DEL", "PURGE") else entry.value
                last[entry.key] = asyncio.create_task(
                    self._answer(entry.key, where.device_id, where.deployment, value,
                                 last.get(entry.key)))
                done = [k for k, t in last.items() if t.done()]
                for k in done:
                    last.pop(k).result()  # a failed answer fails the runtime
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
            await asyncio.gather(*last.values())

    async def _answer(self, key: str, device: str, deployment: str, value: bytes | None,
                      before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await asyncio.shield(before)
        if value is None:
            await self.report(device, deployment, Phase.REMOVED, None, "removed (simulated)")
            return
        try:
            score = PodmanScore.model_validate_json(value)
        except ValidationError as exc:
            await self.report(device, deployment, Phase.FAILED, None,
                              f"invalid workload: {exc.error_count()} error(s)")
            return
        sealing = self.sealing_keys.get(device)
        problem = unopenable_secret(score, deployment, sealing)
        if problem is not None:
            await self.report(device, deployment, Phase.FAILED, score.spec_hash(), problem)
            return
        if sealing is not None:
            self.opened[key] = {n: open_sealed(sealing, deployment, n, v)
                                for n, v in score.secrets.items()}
        failing = device in self.failing or any("SIMULATE_FAIL" in s.env for s in score.services)
        await self.report(device, deployment, Phase.FAILED if failing else Phase.RUNNING,
                          score.spec_hash(),
                          "simulated failure" if failing else "running (simulated)")
