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

Secrets: before each plan the leader reads the Kubernetes Secrets that Deployments reference
in ``spec.secrets`` (``get`` only, in the Deployment's namespace; a changed Secret is picked up
by the next plan, at most ``replan_interval_s`` later) and the planner seals them per device.
The plaintext lives only for that plan; it is never logged, stored or written to status. A
Secret that cannot be read makes the Deployment ``Valid=False`` (``SecretUnavailable``) and
leaves its keys as they are.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from nats.aio.client import Client as NatsClient
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from harmony_fleet.bus import FleetCommandsClient
from harmony_fleet.bus.kv import KeyWatch
from harmony_fleet.bus.retry import full_jitter_backoff
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    deployment_token,
    desired_state_key,
    device_heartbeat_key,
    device_info_key,
    device_state_key,
    parse_device_heartbeat_key,
    parse_device_info_key,
    parse_device_state_key,
    spec_hash,
    validation_summary,
)
from harmony_fleet.contracts.crd import (
    DEPLOYMENT_PLURAL,
    GROUP,
    VERSION,
    DeploymentSecret,
    DeploymentSpec,
    RolloutStrategy,
)
from harmony_fleet.daemon import first_of
from harmony_fleet.errors import FleetError
from harmony_fleet.planning import (
    ScoreTooLarge,
    SealingCache,
    check_score_size,
    selector_contradiction,
)
from harmony_fleet.rollout import RolloutStep

from .aggregate import (
    RESUME_ANNOTATION,
    aggregate,
    deployment_status,
    device_body,
    device_status,
    memory_from_status,
    rollout_status,
    same_status,
    status_patch,
)
from .config import OperatorSection
from .kube import (
    Conflict,
    KubeClient,
    KubeError,
    deployment_status_path,
    device_path,
    secret_path,
)
from .leader import LeaseElector
from .planner import (
    NO_SEALING_KEY,
    DeploymentView,
    diff_desired_state,
    plan_fleet,
    unsealable_devices,
)

log = logging.getLogger(__name__)

KEY_WRITES = Counter("fleet_operator_key_writes_total", "desired-state writes", ["op"])
STATUS_PATCHES = Counter("fleet_operator_status_patches_total", "Deployment status patches")
DEVICE_WRITES = Counter("fleet_operator_device_writes_total", "Device CR writes", ["op"])
PLAN_SECONDS = Histogram("fleet_operator_plan_seconds", "Time to plan and apply the diff")
BAD_ENTRIES = Counter("fleet_operator_bad_entries_total", "KV entries skipped", ["bucket"])
WATCH_FAILURES = Counter("fleet_operator_watch_failures_total",
                         "Bucket watches that failed and were started again", ["bucket"])
#: pauses before a failed bucket watch starts again (jittered, doubling up to the max)
WATCH_RETRY_INITIAL_S = 0.5
WATCH_RETRY_MAX_S = 10.0


@dataclass
class _Tracked:
    namespace: str
    name: str
    generation: int | None
    view: DeploymentView
    status: dict[str, Any] | None = None  # what we last patched (or found)
    patched_at: float = 0.0
    secret_refs: tuple[DeploymentSecret, ...] = ()
    #: set by the last plan: why spec.secrets could not be read (the Deployment is invalid)
    secret_error: str | None = None
    #: set by the last plan when each device's score differs (secrets): device -> spec hash
    expected: dict[str, str] | None = None
    #: set by the last plan: matching devices that could not be given the Deployment, and why
    blocked: dict[str, str] = field(default_factory=dict)
    #: set by the last plan: the rollout step it took (status.rollout)
    rollout: RolloutStep | None = None


class _Invalid(FleetError):
    """A Deployment the operator refuses, with the condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SecretUnavailable(FleetError):
    """A Kubernetes Secret a Deployment references cannot be used; says which and why."""


@dataclass
class FleetView:
    infos: dict[str, DeviceInfo] = field(default_factory=dict)
    heartbeats: dict[str, Heartbeat] = field(default_factory=dict)
    states: dict[str, dict[str, DeploymentState]] = field(default_factory=dict)  # token->dev
    desired: dict[str, bytes] = field(default_factory=dict)
    #: the same keys by deployment token (a plan of one Deployment reads only its own)
    desired_by_token: dict[str, dict[str, bytes]] = field(default_factory=dict)
    ready: dict[str, asyncio.Event] = field(default_factory=dict)

    def set_desired(self, key: str, value: bytes | None) -> None:
        """Record what the desired-state bucket holds for ``key`` (None: nothing)."""
        token = key.rpartition(".")[2]
        if value is None:
            self.desired.pop(key, None)
            per_token = self.desired_by_token.get(token)
            if per_token is not None:
                per_token.pop(key, None)
                if not per_token:
                    del self.desired_by_token[token]
        else:
            self.desired[key] = value
            self.desired_by_token.setdefault(token, {})[key] = value


class FleetOperator:
    def __init__(self, nc: NatsClient, kube: KubeClient,
                 settings: OperatorSection | None = None) -> None:
        self.nc = nc
        self.kube = kube
        self.settings = settings or OperatorSection()
        self.commands = FleetCommandsClient(nc)  # ping/logs/exec from the cluster side
        self.view = FleetView()
        self.deployments: dict[str, _Tracked] = {}
        self.elector = LeaseElector(kube, self.settings.lease_namespace,
                                    self.settings.lease_name, self.settings.identity,
                                    duration_s=self.settings.lease_duration_s,
                                    renew_s=self.settings.lease_renew_s)
        self._plan_dirty = asyncio.Event()
        #: what the next plan must look at: every Deployment, or only these tokens (a report
        #: about one Deployment, or a change of it, replans that one alone)
        self._plan_all = True
        self._plan_tokens: set[str] = set()
        #: device -> labels and device -> sealing key, as of the last change of either
        self._fleet_labels: tuple[dict[str, dict[str, str]], dict[str, str | None]] | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._plan_compute_s = 0.0  # the last plan's computing (without its writes)
        self._devices_dirty = asyncio.Event()
        self._status_dirty: set[str] = set()
        self._applied = asyncio.Condition()
        self._plan_generation = 0
        self._matched: dict[str, list[str]] = {}
        self._device_written: dict[str, dict[str, Any]] = {}
        self._device_status_written: dict[str, tuple[dict[str, Any], float]] = {}
        #: the device-info each Device body was last built from (unchanged: no rebuild)
        self._device_info_written: dict[str, DeviceInfo | None] = {}
        #: the Device resources found by the first round's list (name -> object), until used
        self._devices_listed: dict[str, dict[str, Any]] | None = None
        self.key_writes = 0
        self._sealed = SealingCache()  # envelopes of earlier plans (no plaintext)
        self._watch_generation = 0  # bumped on every reconnect: the watches start again

    def reconnected(self) -> None:
        """The connection is back (nats-py's ``reconnected_cb``). A restarted server may have
        lost the watches' consumers, which nats-py would only notice after missed heartbeats:
        start every watch again now; each replays the current values into the view."""
        self._watch_generation += 1

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

    def _request_plan(self, token: str | None = None) -> None:
        """Ask for a plan: of the Deployment ``token`` only, or (None) of everything."""
        if token is None:
            self._plan_all = True
        else:
            self._plan_tokens.add(token)
        self._plan_dirty.set()

    async def _track_async(self, body: Any) -> None:
        tracked = self.track(body)
        if (body.get("metadata") or {}).get("deletionTimestamp") and not tracked.view.deleting:
            tracked.view = replace(tracked.view, deleting=True)
            self._request_plan(tracked.view.token)

    async def _forget(self, body: Any) -> None:
        meta = body["metadata"]
        self.deployments.pop(deployment_token(meta["namespace"], meta["name"]), None)
        self._request_plan()

    def track(self, body: Any) -> _Tracked:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        token = deployment_token(namespace, name)
        previous = self.deployments.get(token)
        resume = (meta.get("annotations") or {}).get(RESUME_ANNOTATION)
        # the memory of the last plan; after a restart, what the status kept
        memory = (previous.view.memory if previous is not None
                  else memory_from_status(body.get("status")))
        try:
            spec = DeploymentSpec.model_validate(body.get("spec") or {})
            contradiction = selector_contradiction(spec.target_selector)
            if contradiction is not None:
                raise _Invalid("InvalidSelector", f"the selector can match no device: "
                                                  f"{contradiction}")
            view = DeploymentView(token, spec.target_selector, spec.score, spec.rollout,
                                  memory=memory, resume_token=resume)
            refs = tuple(spec.secrets)
        except (ValidationError, _Invalid) as exc:
            from harmony_fleet.contracts.crd import LabelSelector

            if isinstance(exc, _Invalid):
                reason, error = exc.reason, str(exc)
            else:
                in_rollout = all(e["loc"][:1] == ("rollout",) for e in exc.errors())
                reason = "InvalidRollout" if in_rollout else "InvalidScore"
                error = f"invalid spec: {validation_summary(exc)}"
            log.warning("deployment %s/%s: %s", namespace, name, error)
            view = DeploymentView(token, LabelSelector(), None, error=error,
                                  error_reason=reason)
            refs = ()
        if previous is not None:
            # an event of the same Deployment (often our own status patch): keep what the
            # last plan found; replan only when what the planner reads changed
            same = replace(previous.view, deleting=False) == view and \
                previous.secret_refs == refs
            previous.generation = meta.get("generation")
            if previous.view.deleting:
                view = replace(view, deleting=True)
            previous.view, previous.secret_refs = view, refs
            self._status_dirty.add(token)
            if not same:
                self._request_plan(token)
            return previous
        tracked = _Tracked(namespace, name, meta.get("generation"), view,
                           dict(body.get("status") or {}), secret_refs=refs)
        self.deployments[token] = tracked
        self._request_plan(token)
        self._status_dirty.add(token)
        return tracked

    async def untrack(self, body: Any) -> None:
        meta = body["metadata"]
        token = deployment_token(meta["namespace"], meta["name"])
        tracked = self.deployments.get(token)
        if tracked is None:
            tracked = self.track(body)
        tracked.view = replace(tracked.view, deleting=True)
        self._request_plan(token)
        if not self.elector.is_leader:
            raise kopf.TemporaryError("not the leader: the leader removes the keys", delay=5)
        await self._wait_removed(token)
        self.deployments.pop(token, None)
        self._request_plan()
        log.info("deployment %s deleted; its keys are gone", token)

    async def _wait_removed(self, token: str, timeout: float = 60) -> None:
        def gone() -> bool:
            return not self.view.desired_by_token.get(token)

        async with self._applied:
            await asyncio.wait_for(self._applied.wait_for(gone), timeout)

    # ---- NATS views (every replica) ----------------------------------------------------
    async def _watch(self, bucket: str, apply: Callable[[str, bytes | None], None],
                     keys: Callable[[], set[str]], stop: asyncio.Event) -> None:
        """Keep the view of ``bucket`` (``apply`` takes each key's value, None: gone; ``keys``
        lists the keys the view holds). After a reconnect the watch starts again; once its
        replay is through, keys it did not mention (their delete markers gone meanwhile) are
        dropped from the view. A watch that fails (a JetStream API timeout while a cluster
        elects a new stream leader, a bucket not made yet) starts again after a pause: the
        views are what the operator decides from, they must outlive the server's bad moments."""
        ready = self.view.ready.setdefault(bucket, asyncio.Event())
        delays = full_jitter_backoff(WATCH_RETRY_INITIAL_S, 2.0, WATCH_RETRY_MAX_S)

        def caught_up() -> None:  # a watch that worked: the next failure starts the pauses over
            nonlocal delays
            delays = full_jitter_backoff(WATCH_RETRY_INITIAL_S, 2.0, WATCH_RETRY_MAX_S)

        while not stop.is_set():
            try:
                await self._watch_session(bucket, apply, keys, ready=ready, caught_up=caught_up,
                                          stop=stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                WATCH_FAILURES.labels(bucket=bucket).inc()
                delay = next(delays)
                log.warning("watch of %s failed (%s: %s); starting it again in %.1fs", bucket,
                            type(exc).__name__, exc, delay)
                await first_of(stop, timeout=delay)

    async def _watch_session(self, bucket: str, apply: Callable[[str, bytes | None], None],
                             keys: Callable[[], set[str]], *, ready: asyncio.Event,
                             caught_up: Callable[[], None], stop: asyncio.Event) -> None:
        """One watch, until a reconnect asks for a new one (or stop)."""
        generation = self._watch_generation
        replayed: set[str] | None = set() if ready.is_set() else None
        async with KeyWatch(self.nc.jetstream(), bucket) as watch:
            while not stop.is_set() and generation == self._watch_generation:
                try:
                    entry = await watch.updates(timeout=1.0)
                except TimeoutError:
                    continue
                if entry is None:
                    if replayed is not None:
                        for key in keys() - replayed:
                            self._apply(bucket, apply, key, None)
                        replayed = None
                    ready.set()
                    caught_up()
                    continue
                if replayed is not None:
                    replayed.add(entry.key)
                value = None if entry.operation in ("DEL", "PURGE") else entry.value
                self._apply(bucket, apply, entry.key, value)

    @staticmethod
    def _apply(bucket: str, apply: Callable[[str, bytes | None], None], key: str,
               value: bytes | None) -> None:
        try:
            apply(key, value)
        except (ValueError, ValidationError) as exc:
            BAD_ENTRIES.labels(bucket=bucket).inc()
            log.warning("skipping %s %s: %s", bucket, key,
                        validation_summary(exc) if isinstance(exc, ValidationError) else exc)

    def _on_info(self, key: str, value: bytes | None) -> None:
        device = parse_device_info_key(key)
        if value is None:
            self.view.infos.pop(device, None)
            self._fleet_labels = None
        else:
            info = DeviceInfo.model_validate_json(value)
            old = self.view.infos.get(device)
            self.view.infos[device] = info
            # labels decide the targets, the sealing key what each target gets
            if old is not None and (old.labels, old.sealing_key) == (info.labels,
                                                                     info.sealing_key):
                self._devices_dirty.set()
                return
        self._fleet_labels = None
        self._request_plan()
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
        tracked = self.deployments.get(where.deployment)
        if tracked is not None and tracked.rollout is not None and \
                tracked.rollout.phase != "Complete" and \
                tracked.view.rollout.strategy != RolloutStrategy.ALL_AT_ONCE:
            self._request_plan(where.deployment)  # a report may finish a batch

    def _on_desired(self, key: str, value: bytes | None) -> None:
        self.view.set_desired(key, value)

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
            await first_of(stop, *([dirty] if dirty is not None else []), timeout=interval)

    async def _plan_loop(self, stop: asyncio.Event) -> None:
        """The planner: on a change, and everything every ``replan_interval_s`` (a safety
        net) or on becoming the leader; plans at least ``plan_min_interval_s`` apart, so a
        burst of reports (a batch of a large fleet answering) becomes one plan, and at least
        three times as long apart as the last plan's computing took (its writes not counted),
        so planning a large fleet on a busy machine takes at most a third of the time."""
        loop = asyncio.get_running_loop()
        was_leader = False
        while not stop.is_set():
            started = loop.time()
            self._plan_compute_s = 0.0
            leading = self.elector.is_leader and self._views_ready()
            if leading:
                if not was_leader or not self._plan_dirty.is_set():
                    self._plan_all = True
                try:
                    await self.reconcile_keys()
                except (KubeError, OSError, TimeoutError) as exc:
                    log.warning("reconcile_keys failed: %s", exc)
                    self._plan_all = True
            was_leader = leading
            if not leading:  # what is asked meanwhile waits: a new leader plans everything
                await first_of(stop, timeout=min(0.5, self.settings.replan_interval_s))
                continue
            await first_of(stop, self._plan_dirty, timeout=self.settings.replan_interval_s)
            gap = max(self.settings.plan_min_interval_s, 3 * self._plan_compute_s) - (
                loop.time() - started)
            if gap > 0 and not stop.is_set():
                await first_of(stop, timeout=gap)

    async def _resolve_secrets(self, tracked: _Tracked,
                               cache: dict[str, dict[str, Any] | None]) -> DeploymentView:
        """``tracked``'s view with spec.secrets read from Kubernetes (or marked invalid)."""
        view = tracked.view
        error = None
        if tracked.secret_refs and view.score is not None and not view.deleting:
            try:
                values = {ref.name: await self._secret_value(tracked.namespace, ref, cache)
                          for ref in tracked.secret_refs}
            except SecretUnavailable as exc:
                error = str(exc)
                view = replace(view, score=None, error=error)
            else:
                view = replace(view, secrets=values)
        if error is None and view.score is not None and not view.deleting:
            try:  # a score that would not fit a desired-state entry is invalid
                check_score_size(view.score, view.token, view.secrets)
            except ScoreTooLarge as exc:
                error = str(exc)
                view = replace(view, score=None, error=error)
        if error != tracked.secret_error:
            if error:
                log.warning("deployment %s/%s: %s", tracked.namespace, tracked.name, error)
            tracked.secret_error = error
            self._status_dirty.add(view.token)
        return view

    async def _secret_value(self, namespace: str, ref: DeploymentSecret,
                            cache: dict[str, dict[str, Any] | None]) -> bytes:
        selector = ref.secret_key_ref
        where = f"secret {ref.name}: Kubernetes Secret {namespace}/{selector.name}"
        path = secret_path(namespace, selector.name)
        if path not in cache:
            try:
                cache[path] = await self.kube.get(path)
            except KubeError as exc:
                raise SecretUnavailable(f"{where} cannot be read ({exc.status})") from None
        secret = cache[path]
        if secret is None:
            raise SecretUnavailable(f"{where} does not exist")
        encoded = (secret.get("data") or {}).get(selector.key)
        if not isinstance(encoded, str):
            raise SecretUnavailable(f"{where} has no key {selector.key!r}")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SecretUnavailable(f"{where}: key {selector.key!r} is not base64") from None

    def _note_expectations(self, views: list[DeploymentView], plan: dict[str, bytes],
                           matched: dict[str, list[str]], keys: dict[str, str | None]) -> None:
        """Per-device hashes and blocked devices of Deployments with secrets (for status)."""
        for view in views:
            tracked = self.deployments.get(view.token)
            if tracked is None:
                continue
            expected = blocked = None
            if view.secrets:
                devices = matched.get(view.token, [])
                expected = {d: spec_hash(json.loads(plan[desired_state_key(d, view.token)]))
                            for d in devices if desired_state_key(d, view.token) in plan}
                blocked = dict.fromkeys(unsealable_devices(view, devices, keys), NO_SEALING_KEY)
            if (expected, blocked or {}) != (tracked.expected, tracked.blocked):
                tracked.expected, tracked.blocked = expected, blocked or {}
                self._status_dirty.add(view.token)

    def _note_rollouts(self, steps: dict[str, RolloutStep]) -> None:
        """Keep each Deployment's rollout step (its memory feeds the next plan), and wake the
        planner when the first batch timeout comes (``batchTimeoutSeconds``)."""
        for token, step in steps.items():
            tracked = self.deployments.get(token)
            if tracked is None:
                continue
            if tracked.rollout != step:
                self._status_dirty.add(token)
                if step.pause_reason is not None and (
                        tracked.rollout is None or tracked.rollout.pause_reason is None):
                    log.warning("deployment %s/%s: rollout paused (%s): %s", tracked.namespace,
                                tracked.name, step.pause_reason.value, step.message)
            tracked.rollout = step
            tracked.view = replace(tracked.view, memory=step.memory)
        deadlines = [(t.rollout.batch_deadline, token) for token, t in self.deployments.items()
                     if t.rollout is not None and t.rollout.batch_deadline is not None]
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if deadlines:
            when, token = min(deadlines)
            loop = asyncio.get_running_loop()
            # the deadline is wall-clock (it survives a new leader); the timer runs on the
            # loop's clock, a little late rather than early
            self._deadline_timer = loop.call_later(max(0.0, when - time.time()) + 0.05,
                                                   self._request_plan, token)

    async def reconcile_keys(self) -> None:
        """Plan, diff against the bucket, write only the difference.

        Everything is planned on the first round, every ``replan_interval_s`` and when the
        fleet's labels or the set of Deployments change; a report about one Deployment, or an
        edit of it, plans that Deployment alone (a batched rollout of a large fleet replans on
        its devices' reports without re-planning every other Deployment)."""
        self._plan_dirty.clear()
        everything, tokens = self._plan_all, self._plan_tokens
        self._plan_all, self._plan_tokens = False, set()
        started = time.perf_counter()
        if self._fleet_labels is None:  # rebuilt only when labels or keys changed
            self._fleet_labels = (
                {d: info.labels for d, info in self.view.infos.items()},
                {d: info.sealing_key for d, info in self.view.infos.items()})
        labels, keys = self._fleet_labels
        cache: dict[str, dict[str, Any] | None] = {}  # one read per Secret per plan
        chosen = [t for token, t in list(self.deployments.items())
                  if everything or token in tokens]
        views = [await self._resolve_secrets(t, cache) for t in chosen]
        if everything:
            current = self.view.desired
        else:
            planned = {v.token for v in views}
            current = {k: v for token in planned
                       for k, v in self.view.desired_by_token.get(token, {}).items()}
        fleet = plan_fleet(views, labels, keys, cache=self._sealed, current=current,
                           states=self.view.states, now=time.time())
        plan, matched, managed = fleet.plan, fleet.matched, fleet.managed
        self._note_expectations(views, plan, matched, keys)
        self._note_rollouts(fleet.rollouts)
        del views, cache  # the plaintext lives no longer than the plan
        for token, devices in matched.items():
            if self._matched.get(token) != devices:
                self._status_dirty.add(token)
        if everything:
            self._matched = matched
        else:
            self._matched.update(matched)
        diff = diff_desired_state(plan, current, managed)
        self._plan_compute_s = time.perf_counter() - started
        if not diff.empty:
            kv = await self.nc.jetstream().key_value(BUCKET_DESIRED_STATE)
            slots = asyncio.Semaphore(self.settings.write_concurrency)

            async def put(key: str, value: bytes) -> None:
                async with slots:
                    await kv.put(key, value)
                self.view.set_desired(key, value)
                KEY_WRITES.labels(op="put").inc()

            async def delete(key: str) -> None:
                async with slots:
                    await kv.delete(key)
                self.view.set_desired(key, None)
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
            error = view.error or tracked.secret_error
            step = tracked.rollout
            agg = None if error else aggregate(
                self._matched.get(token, []), self.view.states.get(token, {}),
                tracked.expected if tracked.expected is not None
                else view.score.spec_hash() if view.score else None,
                tracked.blocked)
            previous = list(_conditions(tracked.status))
            status = deployment_status(
                generation=tracked.generation, error=error, agg=agg, previous=previous,
                now=now, error_reason=view.error_reason if view.error else "SecretUnavailable",
                rollout=rollout_status(view.rollout.strategy, step) if step and not error
                else None)
            patch = status_patch(status)
            if same_status(tracked.status, patch["status"]):
                continue
            await self.kube.merge_patch(
                deployment_status_path(tracked.namespace, tracked.name), patch)
            tracked.status, tracked.patched_at = patch["status"], time.monotonic()
            STATUS_PATCHES.inc()

    async def write_devices(self) -> None:
        """Mirror every device as a Device resource and keep its status.

        The first round lists the Device resources once (one request, not a GET per device);
        then each device needs at most a create or a patch, and a status patch. Writes go at
        most ``device_write_concurrency`` at a time and ``device_writes_per_s`` per second, so
        10,000 devices seen at once become a steady stream the API server keeps up with.

        Which devices need a write is decided first, without I/O (a round of a large fleet
        with nothing to write costs a pass over a dict); a device's body is rebuilt only when
        its device-info changed. ``lastSeen`` refreshes take at most half of the write budget:
        a fleet too large to refresh every ``last_seen_refresh_s`` is refreshed as fast as that
        half allows (10,000 devices at 200 writes/s: every 100 s), and refreshes wait while
        any device is new or changed. A device going online or offline is written in the next
        round."""
        self._devices_dirty.clear()
        now = datetime.now(UTC)
        offline_after = timedelta(seconds=self.settings.offline_after_s)
        refresh_s = max(self.settings.last_seen_refresh_s,
                        len(self.view.infos) / (self.settings.device_writes_per_s / 2))
        if self._devices_listed is None:
            self._devices_listed = {
                str((obj.get("metadata") or {}).get("name")): obj
                for obj in await self.kube.list(device_path())}
        pace = _Pacer(self.settings.device_writes_per_s)
        slots = asyncio.Semaphore(self.settings.device_write_concurrency)

        async def write(op: str, work: Callable[[], Awaitable[Any]]) -> None:
            async with slots:
                await pace.wait()
                await work()
            DEVICE_WRITES.labels(op=op).inc()

        async def mirror(device: str, info: DeviceInfo, body: dict[str, Any] | None,
                         status: dict[str, Any] | None) -> None:
            if body is not None:
                written = self._device_written.get(device)
                if written is None:
                    current = (self._devices_listed or {}).pop(device, None)
                    if current is None:
                        try:
                            await write("create", lambda: self.kube.create(device_path(), body))
                        except Conflict:  # created since the list
                            current = await self.kube.get(device_path(device))
                    if current is not None and _device_differs(current, body):
                        await write("patch", lambda: self.kube.merge_patch(
                            device_path(device), _device_patch(current, body)))
                else:
                    await write("patch", lambda: self.kube.merge_patch(
                        device_path(device), _device_patch(written, body)))
                self._device_written[device] = body
                self._device_info_written[device] = info
            if status is not None:
                await write("status", lambda: self.kube.merge_patch(
                    device_path(device, status=True), {"status": status}))
                self._device_status_written[device] = (status, time.monotonic())

        work = [mirror(device, info, body, status) for device, info, body, status
                in self._devices_to_write(now, offline_after, refresh_s)]
        results = await asyncio.gather(*work, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, (KubeError, OSError, TimeoutError)):
                raise failure
        if failures:
            self._devices_dirty.set()  # the next round retries what failed
            log.warning("Device resources: %d write(s) failed, first: %s", len(failures),
                        failures[0])

    def _devices_to_write(self, now: datetime, offline_after: timedelta, refresh_s: float
                          ) -> list[tuple[str, DeviceInfo, dict[str, Any] | None,
                                          dict[str, Any] | None]]:
        """(device, its info, body to write or None, status to write or None), for the
        devices that need a write; no I/O."""
        Write = tuple[str, DeviceInfo, dict[str, Any] | None, dict[str, Any] | None]
        out: list[Write] = []
        refresh: list[Write] = []
        mono = time.monotonic()
        for device, info in list(self.view.infos.items()):
            body: dict[str, Any] | None = None
            if self._device_info_written.get(device) is not info:
                body = device_body(info)
                written = self._device_written.get(device)
                if written is not None and not _device_differs(written, body):
                    self._device_info_written[device] = info
                    body = None
            status = device_status(info, self.view.heartbeats.get(device), now, offline_after)
            last = self._device_status_written.get(device)
            changed = last is None or last[0]["online"] != status["online"] or \
                last[0].get("agentVersion") != status.get("agentVersion")
            if body is not None or changed:
                out.append((device, info, body, status if changed else None))
            elif status["online"] and last is not None and mono - last[1] > refresh_s:
                refresh.append((device, info, None, status))
        # a lastSeen refresh waits while devices are new or changed (first sight goes first)
        return out or refresh

    # ---- run -------------------------------------------------------------------------
    def tasks(self, stop: asyncio.Event) -> dict[str, Coroutine[Any, Any, None]]:
        s = self.settings
        return {
            "lease": self.elector.run(stop),
            "watch-info": self._watch(
                BUCKET_DEVICE_INFO, self._on_info,
                lambda: {device_info_key(d) for d in self.view.infos}, stop),
            "watch-heartbeat": self._watch(
                BUCKET_DEVICE_HEARTBEAT, self._on_heartbeat,
                lambda: {device_heartbeat_key(d) for d in self.view.heartbeats}, stop),
            "watch-state": self._watch(
                BUCKET_DEVICE_STATE, self._on_state,
                lambda: {device_state_key(d, t) for t, per in self.view.states.items()
                         for d in per}, stop),
            "watch-desired": self._watch(
                BUCKET_DESIRED_STATE, self._on_desired, lambda: set(self.view.desired), stop),
            "planner": self._plan_loop(stop),
            "status": self._every(s.status_interval_s, None, self.write_statuses, stop),
            **({"devices": self._every(s.device_interval_s, self._devices_dirty,
                                       self.write_devices, stop)} if s.device_resources else {}),
        }


class _Pacer:
    """At most ``rate`` passes per second, spread evenly (no burst)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


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
