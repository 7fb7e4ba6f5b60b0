"""``fleet-operator``: Deployment/Device resources reconciled into NATS, status aggregated back.

Shape (all level-triggered, one asyncio loop):

* kopf watches ``Deployment`` resources; its handlers only record each Deployment's spec in
  memory (every replica does) and, on deletion, wait until the leader has removed the
  Deployment's keys before kopf releases the finalizer;
* four KV watches keep the fleet view: device labels (``device-info``), liveness
  (``device-heartbeat``), reported phases (``device-state``) and what devices are told
  (``desired-state``);
* the leader (a Lease) runs the writers: the planner (plan, diff, write only the difference),
  the Device writer (Device CRs and their status), and the status writer (at most one status
  patch per Deployment per second, and none when nothing changed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from harmony_fleet.bus import FleetCommandsClient
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    deployment_token,
    parse_device_heartbeat_key,
    parse_device_info_key,
    parse_device_state_key,
    validation_summary,
)
from harmony_fleet.contracts.crd import DEPLOYMENT_PLURAL, GROUP, VERSION, DeploymentSpec

from .aggregate import (
    aggregate,
    deployment_status,
    device_body,
    device_status,
    same_status,
    status_patch,
)
from .kube import Conflict, KubeClient, KubeError, deployment_status_path, device_path
from .leader import LeaseElector
from .planner import DeploymentView, diff_desired_state, plan_desired_state

log = logging.getLogger(__name__)

KEY_WRITES = Counter("fleet_operator_key_writes_total", "desired-state writes", ["op"])
STATUS_PATCHES = Counter("fleet_operator_status_patches_total", "Deployment status patches")
DEVICE_WRITES = Counter("fleet_operator_device_writes_total", "Device CR writes", ["op"])
PLAN_SECONDS = Histogram("fleet_operator_plan_seconds", "Time to plan and apply the diff")
BAD_ENTRIES = Counter("fleet_operator_bad_entries_total", "KV entries skipped", ["bucket"])


@dataclass
class OperatorSettings:
    lease_namespace: str = "harmony-fleet"
    lease_name: str = "fleet-operator"
    identity: str = "fleet-operator"
    lease_duration_s: int = 15
    lease_renew_s: float = 5.0
    offline_after_s: float = 60.0
    status_interval_s: float = 1.0
    device_interval_s: float = 2.0
    replan_interval_s: float = 30.0
    last_seen_refresh_s: float = 30.0
    write_concurrency: int = 64
    #: mirror devices as Device resources (turn off for very large fleets if not needed)
    device_resources: bool = True


@dataclass
class _Tracked:
    namespace: str
    name: str
    generation: int | None
    view: DeploymentView
    status: dict[str, Any] | None = None  # what we last patched (or found)
    patched_at: float = 0.0


@dataclass
class FleetView:
    infos: dict[str, DeviceInfo] = field(default_factory=dict)
    heartbeats: dict[str, Heartbeat] = field(default_factory=dict)
    states: dict[str, dict[str, DeploymentState]] = field(default_factory=dict)  # token->dev
    desired: dict[str, bytes] = field(default_factory=dict)
    ready: dict[str, asyncio.Event] = field(default_factory=dict)


class FleetOperator:
    def __init__(self, nc: NatsClient, kube: KubeClient,
                 settings: OperatorSettings | None = None) -> None:
        self.nc = nc
        self.kube = kube
        self.settings = settings or OperatorSettings()
        self.commands = FleetCommandsClient(nc)  # ping/logs/exec from the cluster side
        self.view = FleetView()
        self.deployments: dict[str, _Tracked] = {}
        self.elector = LeaseElector(kube, self.settings.lease_namespace,
                                    self.settings.lease_name, self.settings.identity,
                                    duration_s=self.settings.lease_duration_s,
                                    renew_s=self.settings.lease_renew_s)
        self._plan_dirty = asyncio.Event()
        self._devices_dirty = asyncio.Event()
        self._status_dirty: set[str] = set()
        self._applied = asyncio.Condition()
        self._plan_generation = 0
        self._matched: dict[str, list[str]] = {}
        self._device_written: dict[str, dict[str, Any]] = {}
        self._device_status_written: dict[str, tuple[dict[str, Any], float]] = {}
        self.key_writes = 0

    # ---- kopf handlers (every replica) -------------------------------------------------
    def register(self, registry: kopf.OperatorRegistry) -> None:
        """kopf runs in its own thread and event loop (it cancels every task of its loop when
        it stops); its handlers hand the work to this operator's loop."""
        resource = (GROUP, VERSION, DEPLOYMENT_PLURAL)
        loop = asyncio.get_running_loop()

        async def on_operator_loop(work: Coroutine[Any, Any, Any]) -> Any:
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))

        # every replica keeps every Deployment in memory; raw events carry no per-handler
        # progress, so replicas do not hide objects from each other (kopf's progress
        # annotations are shared by all replicas)
        @kopf.on.event(*resource, registry=registry)
        async def track(type: str | None, body: kopf.Body, **_: Any) -> None:
            if type == "DELETED":
                await on_operator_loop(self._forget(dict(body)))
            else:
                await on_operator_loop(self._track_async(dict(body)))

        @kopf.on.delete(*resource, registry=registry)
        async def cleanup(body: kopf.Body, **_: Any) -> None:
            await on_operator_loop(self.untrack(dict(body)))

        @kopf.on.probe(registry=registry, id="leader")
        def probe_leader(**_: Any) -> bool:
            return self.elector.is_leader

    async def _track_async(self, body: Any) -> None:
        tracked = self.track(body)
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            tracked.view = DeploymentView(tracked.view.token, tracked.view.selector,
                                          tracked.view.score, deleting=True)

    async def _forget(self, body: Any) -> None:
        meta = body["metadata"]
        self.deployments.pop(deployment_token(meta["namespace"], meta["name"]), None)
        self._plan_dirty.set()

    def track(self, body: Any) -> _Tracked:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        token = deployment_token(namespace, name)
        try:
            spec = DeploymentSpec.model_validate(body.get("spec") or {})
            view = DeploymentView(token, spec.target_selector, spec.score, spec.rollout)
        except ValidationError as exc:
            from harmony_fleet.contracts.crd import LabelSelector

            error = f"invalid spec: {validation_summary(exc)}"
            log.warning("deployment %s/%s: %s", namespace, name, error)
            view = DeploymentView(token, LabelSelector(), None, error=error)
        previous = self.deployments.get(token)
        tracked = _Tracked(namespace, name, meta.get("generation"), view,
                           previous.status if previous else dict(body.get("status") or {}))
        self.deployments[token] = tracked
        self._plan_dirty.set()
        self._status_dirty.add(token)
        return tracked

    async def untrack(self, body: Any) -> None:
        meta = body["metadata"]
        token = deployment_token(meta["namespace"], meta["name"])
        tracked = self.deployments.get(token)
        if tracked is None:
            tracked = self.track(body)
        tracked.view = DeploymentView(token, tracked.view.selector, tracked.view.score,
                                      deleting=True)
        self._plan_dirty.set()
        if not self.elector.is_leader:
            raise kopf.TemporaryError("not the leader: the leader removes the keys", delay=5)
        await self._wait_removed(token)
        self.deployments.pop(token, None)
        self._plan_dirty.set()
        log.info("deployment %s deleted; its keys are gone", token)

    async def _wait_removed(self, token: str, timeout: float = 60) -> None:
        def gone() -> bool:
            suffix = f".{token}"
            return not any(k.endswith(suffix) for k in self.view.desired)

        async with self._applied:
            await asyncio.wait_for(self._applied.wait_for(gone), timeout)

    # ---- NATS views (every replica) ----------------------------------------------------
    async def _watch(self, bucket: str, apply: Callable[[str, bytes | None], None],
                     stop: asyncio.Event) -> None:
        ready = self.view.ready.setdefault(bucket, asyncio.Event())
        kv: KeyValue = await self.nc.jetstream().key_value(bucket)
        watcher = await kv.watch(">", include_history=False)
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                except TimeoutError:
                    continue
                except Exception as exc:  # nats-py raises its own timeout type
                    if type(exc).__name__ == "TimeoutError":
                        continue
                    raise
                if entry is None:
                    ready.set()
                    continue
                value = None if entry.operation in ("DEL", "PURGE") else entry.value
                try:
                    apply(entry.key, value)
                except (ValueError, ValidationError) as exc:
                    BAD_ENTRIES.labels(bucket=bucket).inc()
                    log.warning("skipping %s %s: %s", bucket, entry.key,
                                validation_summary(exc) if isinstance(exc, ValidationError)
                                else exc)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    def _on_info(self, key: str, value: bytes | None) -> None:
        device = parse_device_info_key(key)
        if value is None:
            self.view.infos.pop(device, None)
        else:
            info = DeviceInfo.model_validate_json(value)
            old = self.view.infos.get(device)
            self.view.infos[device] = info
            if old is not None and old.labels == info.labels:
                self._devices_dirty.set()
                return
        self._plan_dirty.set()
        self._devices_dirty.set()

    def _on_heartbeat(self, key: str, value: bytes | None) -> None:
        device = parse_device_heartbeat_key(key)
        if value is None:
            self.view.heartbeats.pop(device, None)
        else:
            self.view.heartbeats[device] = Heartbeat.model_validate_json(value)

    def _on_state(self, key: str, value: bytes | None) -> None:
        where = parse_device_state_key(key)
        per_token = self.view.states.setdefault(where.deployment, {})
        if value is None:
            per_token.pop(where.device_id, None)
        else:
            per_token[where.device_id] = DeploymentState.model_validate_json(value)
        self._status_dirty.add(where.deployment)

    def _on_desired(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.view.desired.pop(key, None)
        else:
            self.view.desired[key] = value

    def _views_ready(self) -> bool:
        buckets = (BUCKET_DESIRED_STATE, BUCKET_DEVICE_INFO, BUCKET_DEVICE_STATE,
                   BUCKET_DEVICE_HEARTBEAT)
        return all(b in self.view.ready and self.view.ready[b].is_set() for b in buckets)

    # ---- writers (leader only) ---------------------------------------------------------
    async def _every(self, interval: float, dirty: asyncio.Event | None,
                     action: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.elector.is_leader and self._views_ready():
                try:
                    await action()
                except (KubeError, OSError, TimeoutError) as exc:
                    log.warning("%s failed: %s", getattr(action, "__name__", "writer"), exc)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(asyncio.sleep(interval))]
            if dirty is not None:
                waits.append(asyncio.ensure_future(dirty.wait()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()

    async def reconcile_keys(self) -> None:
        """Plan, diff against the bucket, write only the difference."""
        self._plan_dirty.clear()
        started = time.perf_counter()
        labels = {d: info.labels for d, info in self.view.infos.items()}
        plan, matched, managed = plan_desired_state(
            [t.view for t in self.deployments.values()], labels)
        for token, devices in matched.items():
            if self._matched.get(token) != devices:
                self._status_dirty.add(token)
        self._matched = matched
        diff = diff_desired_state(plan, self.view.desired, managed)
        if not diff.empty:
            kv = await self.nc.jetstream().key_value(BUCKET_DESIRED_STATE)
            slots = asyncio.Semaphore(self.settings.write_concurrency)

            async def put(key: str, value: bytes) -> None:
                async with slots:
                    await kv.put(key, value)
                self.view.desired[key] = value
                KEY_WRITES.labels(op="put").inc()

            async def delete(key: str) -> None:
                async with slots:
                    await kv.delete(key)
                self.view.desired.pop(key, None)
                KEY_WRITES.labels(op="delete").inc()

            await asyncio.gather(*(put(k, v) for k, v in diff.put.items()),
                                 *(delete(k) for k in diff.delete))
            self.key_writes += len(diff.put) + len(diff.delete)
            log.info("desired-state: %d put, %d deleted", len(diff.put), len(diff.delete))
        PLAN_SECONDS.observe(time.perf_counter() - started)
        async with self._applied:
            self._applied.notify_all()

    async def write_statuses(self) -> None:
        now = datetime.now(UTC)
        dirty, self._status_dirty = self._status_dirty, set()
        for token in dirty:
            tracked = self.deployments.get(token)
            if tracked is None or tracked.view.deleting:
                continue
            if time.monotonic() - tracked.patched_at < self.settings.status_interval_s:
                self._status_dirty.add(token)  # coalesced into the next round
                continue
            view = tracked.view
            agg = None if view.error else aggregate(
                self._matched.get(token, []), self.view.states.get(token, {}),
                view.score.spec_hash() if view.score else None)
            previous = list(_conditions(tracked.status))
            status = deployment_status(generation=tracked.generation, error=view.error,
                                       agg=agg, previous=previous, now=now)
            patch = status_patch(status)
            if same_status(tracked.status, patch["status"]):
                continue
            await self.kube.merge_patch(
                deployment_status_path(tracked.namespace, tracked.name), patch)
            tracked.status, tracked.patched_at = patch["status"], time.monotonic()
            STATUS_PATCHES.inc()

    async def write_devices(self) -> None:
        self._devices_dirty.clear()
        now = datetime.now(UTC)
        offline_after = timedelta(seconds=self.settings.offline_after_s)
        for device, info in list(self.view.infos.items()):
            body = device_body(info)
            written = self._device_written.get(device)
            if written is None:
                current = await self.kube.get(device_path(device))
                if current is None:
                    try:
                        await self.kube.create(device_path(), body)
                        DEVICE_WRITES.labels(op="create").inc()
                    except Conflict:
                        current = await self.kube.get(device_path(device))
                if current is not None and _device_differs(current, body):
                    await self.kube.merge_patch(device_path(device), _device_patch(current, body))
                    DEVICE_WRITES.labels(op="patch").inc()
            elif _device_differs(written, body):
                await self.kube.merge_patch(device_path(device), _device_patch(written, body))
                DEVICE_WRITES.labels(op="patch").inc()
            self._device_written[device] = body
            status = device_status(info, self.view.heartbeats.get(device), now, offline_after)
            last = self._device_status_written.get(device)
            stale = last is None or last[0]["online"] != status["online"] or \
                last[0].get("agentVersion") != status.get("agentVersion") or \
                (status["online"] and time.monotonic() - last[1] > self.settings.last_seen_refresh_s)
            if stale:
                await self.kube.merge_patch(device_path(device, status=True), {"status": status})
                self._device_status_written[device] = (status, time.monotonic())
                DEVICE_WRITES.labels(op="status").inc()

    # ---- run -------------------------------------------------------------------------
    def tasks(self, stop: asyncio.Event) -> dict[str, Coroutine[Any, Any, None]]:
        s = self.settings
        return {
            "lease": self.elector.run(stop),
            "watch-info": self._watch(BUCKET_DEVICE_INFO, self._on_info, stop),
            "watch-heartbeat": self._watch(BUCKET_DEVICE_HEARTBEAT, self._on_heartbeat, stop),
            "watch-state": self._watch(BUCKET_DEVICE_STATE, self._on_state, stop),
            "watch-desired": self._watch(BUCKET_DESIRED_STATE, self._on_desired, stop),
            "planner": self._every(s.replan_interval_s, self._plan_dirty,
                                   self.reconcile_keys, stop),
            "status": self._every(s.status_interval_s, None, self.write_statuses, stop),
            **({"devices": self._every(s.device_interval_s, self._devices_dirty,
                                       self.write_devices, stop)} if s.device_resources else {}),
        }


def _conditions(status: dict[str, Any] | None) -> list[Any]:
    from harmony_fleet.contracts.crd import Condition

    out = []
    for raw in (status or {}).get("conditions") or []:
        try:
            out.append(Condition.model_validate(raw))
        except ValidationError:
            continue
    return out


def _device_differs(current: dict[str, Any], body: dict[str, Any]) -> bool:
    labels = (current.get("metadata") or {}).get("labels") or {}
    return bool(labels != body["metadata"]["labels"] or current.get("spec") != body["spec"])


def _device_patch(current: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Merge patch to ``body``'s labels (removing labels the agent dropped) and spec."""
    old = (current.get("metadata") or {}).get("labels") or {}
    labels: dict[str, Any] = {k: None for k in old if k not in body["metadata"]["labels"]}
    labels.update(body["metadata"]["labels"])
    return {"metadata": {"labels": labels}, "spec": body["spec"]}
