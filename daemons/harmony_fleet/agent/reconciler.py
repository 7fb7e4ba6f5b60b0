"""Turns the desired-state view into running containers, and says how it went.

Level-triggered: every pass lists the containers this agent manages (by label), compares them
with the complete desired view and acts on the difference only. A pass runs when the watch
reports a change and every ``reconcile_interval_s`` (that periodic inspect is how a container
that dies later is noticed). Each deployment has its own worker task, so a slow pull or a
failing init container on one deployment never holds up another, and a bad value only fails
its own deployment.

A deployment whose reconcile failed is not retried with the same score (that would loop);
a new score, a restarted agent, or a container that disappears triggers the next attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter, Histogram

from harmony_fleet.contracts import (
    DEFAULT_INIT_CONTAINER_TIMEOUT_S,
    DeploymentState,
    Phase,
    ServiceStatus,
)
from harmony_fleet.contracts.base import utcnow

from .plan import (
    DeploymentPlan,
    Desired,
    decode_desired,
    device_labels,
    group_by_deployment,
    plan_deployment,
    service_problems,
)
from .runtime import (
    LABEL_DEPLOYMENT,
    LABEL_INIT,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    ContainerInfo,
    ContainerRuntime,
    ContainerRuntimeError,
    Exited,
)
from .watch import DesiredEntry

log = logging.getLogger(__name__)

RECONCILES = Counter("fleet_agent_reconciles_total", "Deployment reconciles, by outcome",
                     ["outcome"])
RECONCILE_SECONDS = Histogram(
    "fleet_agent_reconcile_seconds", "Time to reconcile one deployment that needed work",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PASSES = Counter("fleet_agent_reconcile_passes_total", "Full reconcile passes")

StateSink = Callable[[DeploymentState], Awaitable[None]]


class ReconcileFailed(Exception):
    pass


@dataclass
class _Reported:
    phase: Phase
    message: str
    spec_hash: str | None
    revision: int | None
    services: tuple[tuple[str, str, int | None], ...]
    since: datetime


@dataclass
class ReconcilerSettings:
    reconcile_interval_s: float = 10.0
    max_parallel: int = 4
    stop_timeout_s: int = 10
    max_desired_bytes: int = 256 * 1024


@dataclass
class _Worker:
    task: asyncio.Task[None] | None = None
    desired: Desired | None = None
    actual: list[ContainerInfo] | None = None
    dirty: asyncio.Event = field(default_factory=asyncio.Event)


class Reconciler:
    def __init__(
        self,
        device_id: str,
        runtime: ContainerRuntime,
        report: StateSink,
        settings: ReconcilerSettings | None = None,
    ) -> None:
        self.device_id = device_id
        self.runtime = runtime
        self._report_sink = report
        self.settings = settings or ReconcilerSettings()
        self._slots = asyncio.Semaphore(self.settings.max_parallel)
        self._workers: dict[str, _Worker] = {}
        self._reported: dict[str, _Reported] = {}
        self._failed_hash: dict[str, str] = {}
        self._decoded: dict[str, Desired] = {}
        self.passes = 0

    # ---- the loop ----------------------------------------------------------------------
    async def run(
        self, view: Callable[[], Mapping[str, DesiredEntry] | None], changed: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        """Reconcile on every change of ``view()`` (None: not yet known) and periodically."""
        try:
            while not stop.is_set():
                values = view()
                if values is not None:
                    try:
                        await self.reconcile_pass(values)
                    except ContainerRuntimeError as exc:
                        log.warning("reconcile pass failed: %s", exc,
                                    extra={"device": self.device_id})
                waiter = asyncio.ensure_future(changed.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait([waiter, stopper], timeout=self.settings.reconcile_interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                changed.clear()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop the workers (the containers keep running)."""
        tasks = [w.task for w in self._workers.values() if w.task and not w.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()

    async def reconcile_pass(self, values: Mapping[str, DesiredEntry]) -> None:
        PASSES.inc()
        self.passes += 1
        actual = await self.runtime.list_managed(device_labels(self.device_id))
        groups = group_by_deployment(actual)
        desired = {token: self._decode(token, entry) for token, entry in values.items()
                   if entry.value is not None}
        self._decoded = desired
        for token in sorted(set(desired) | set(groups)):
            self._kick(token, desired.get(token), groups.get(token, []))
        # forget failures of deployments that are gone
        for token in list(self._failed_hash):
            if token not in desired:
                del self._failed_hash[token]

    def _decode(self, token: str, entry: DesiredEntry) -> Desired:
        cached = self._decoded.get(token)
        if cached is not None and cached.revision == entry.revision:
            return cached
        assert entry.value is not None
        return decode_desired(token, entry.value, entry.revision, self.settings.max_desired_bytes)

    def _kick(self, token: str, desired: Desired | None, actual: list[ContainerInfo]) -> None:
        worker = self._workers.get(token)
        if worker is None:
            worker = self._workers[token] = _Worker()
        busy = worker.task is not None and not worker.task.done()
        # a busy worker is changing the containers right now: the list it would get is
        # stale by the time it reruns, so it lists them afresh then
        worker.desired, worker.actual = desired, None if busy else actual
        worker.dirty.set()
        if not busy:
            worker.task = asyncio.create_task(self._work(token, worker),
                                              name=f"reconcile-{token}")

    async def _work(self, token: str, worker: _Worker) -> None:
        while worker.dirty.is_set():
            worker.dirty.clear()
            desired, actual = worker.desired, worker.actual
            worker.actual = None
            if actual is None:
                actual = await self._list_deployment(token)
            try:
                await self._reconcile_one(token, desired, actual)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or podman trouble: fail this deployment only
                log.exception("reconcile of %s crashed", token, extra={"device": self.device_id})
                RECONCILES.labels(outcome="error").inc()
                if desired is not None:
                    await self._report(token, Phase.FAILED, f"agent error: {exc}", desired, [])
        if worker.desired is None and self._workers.get(token) is worker:
            del self._workers[token]

    async def _list_deployment(self, token: str) -> list[ContainerInfo]:
        labels = {**device_labels(self.device_id), LABEL_DEPLOYMENT: token}
        return await self.runtime.list_managed(labels)

    # ---- one deployment ----------------------------------------------------------------
    async def _reconcile_one(
        self, token: str, desired: Desired | None, actual: list[ContainerInfo]
    ) -> None:
        if desired is None:
            await self._remove_deployment(token, actual)
            return
        if desired.error is not None:
            kept = [c for c in actual if not c.labels.get(LABEL_INIT)]
            suffix = f" (the {len(kept)} container(s) of the previous workload keep running)" \
                if kept else ""
            await self._report(token, Phase.FAILED, desired.error + suffix, desired, actual)
            return
        assert desired.score is not None
        plan = plan_deployment(self.device_id, desired.score, token, actual,
                               stop_timeout_s=self.settings.stop_timeout_s)
        if plan.converged:
            self._failed_hash.pop(token, None)
            await self._report_health(token, desired, actual)
            return
        if self._failed_hash.get(token) == desired.score_hash:
            return  # failed with this very score already: wait for a new one
        await self._report(token, Phase.PENDING, "waiting for a reconcile slot", desired, actual,
                           only_if_new_revision=True)
        async with self._slots:
            started = time.perf_counter()
            try:
                await self._apply(token, desired, plan, actual)
            except ReconcileFailed as exc:
                RECONCILES.labels(outcome="failed").inc()
                assert desired.score_hash is not None
                self._failed_hash[token] = desired.score_hash
                await self._report(token, Phase.FAILED, str(exc), desired,
                                   await self._list_deployment(token))
                return
            RECONCILE_SECONDS.observe(time.perf_counter() - started)
        RECONCILES.labels(outcome="applied").inc()
        await self._report_health(token, desired, await self._list_deployment(token))

    async def _apply(
        self, token: str, desired: Desired, plan: DeploymentPlan, actual: list[ContainerInfo]
    ) -> None:
        missing = [img for img in plan.images if not await self.runtime.image_exists(img)]
        if missing:
            await self._report(token, Phase.PULLING, f"pulling {', '.join(missing)}", desired,
                               actual)
            for image in missing:
                try:
                    await self.runtime.pull(image)
                except ContainerRuntimeError as exc:
                    raise ReconcileFailed(str(exc)) from exc
        await self._report(token, Phase.STARTING, _starting_message(plan), desired, actual)
        try:
            for info in plan.remove:
                await self.runtime.remove(info.name)
            for spec in plan.init:
                timeout = spec.timeout_s or DEFAULT_INIT_CONTAINER_TIMEOUT_S
                outcome = await self.runtime.run_to_completion(spec, timeout)
                if isinstance(outcome, Exited):
                    await self.runtime.remove(spec.name)
                    if outcome.exit_code != 0:
                        raise ReconcileFailed(
                            f"init container {spec.labels[LABEL_INIT]} ({spec.name}) exited "
                            f"with code {outcome.exit_code}"
                        )
                else:
                    raise ReconcileFailed(
                        f"init container {spec.labels[LABEL_INIT]} ({spec.name}) timed out "
                        f"after {outcome.waited_s:g}s and was removed"
                    )
            for spec in plan.create:
                await self.runtime.create(spec)
                await self.runtime.start(spec.name)
            for info in plan.start:
                await self.runtime.start(info.name)
        except ContainerRuntimeError as exc:
            raise ReconcileFailed(str(exc)) from exc

    async def _remove_deployment(self, token: str, actual: list[ContainerInfo]) -> None:
        for info in actual:
            await self.runtime.remove(info.name)
        last = self._reported.get(token)
        if actual or (last is not None and last.phase is not Phase.REMOVED):
            removed = len(actual)
            await self._write(token, Phase.REMOVED, f"removed {removed} container(s)",
                              spec_hash=last.spec_hash if last else None,
                              revision=last.revision if last else None, services=[])
        self._reported.pop(token, None)

    async def _report_health(
        self, token: str, desired: Desired, actual: list[ContainerInfo]
    ) -> None:
        assert desired.score is not None
        problems = service_problems(desired.score, token, actual)
        if problems:
            await self._report(token, Phase.FAILED, "; ".join(problems), desired, actual)
        else:
            n = len(desired.score.services)
            await self._report(token, Phase.RUNNING, f"{n} service(s) running", desired, actual)

    # ---- reporting ---------------------------------------------------------------------
    async def _report(
        self, token: str, phase: Phase, message: str, desired: Desired,
        actual: Sequence[ContainerInfo], *, only_if_new_revision: bool = False,
    ) -> None:
        last = self._reported.get(token)
        if only_if_new_revision and last is not None and last.revision == desired.revision:
            return
        await self._write(token, phase, message, spec_hash=desired.score_hash,
                          revision=desired.revision, services=_service_statuses(actual))

    async def _write(
        self, token: str, phase: Phase, message: str, *, spec_hash: str | None,
        revision: int | None, services: list[ServiceStatus],
    ) -> None:
        summary = tuple((s.name, s.state, s.exit_code) for s in services)
        last = self._reported.get(token)
        if last is not None and (last.phase, last.message, last.spec_hash, last.revision,
                                 last.services) == (phase, message, spec_hash, revision, summary):
            return  # not a transition
        now = utcnow()
        since = last.since if last is not None and last.phase is phase else now
        state = DeploymentState(
            device_id=self.device_id, deployment=token, phase=phase, message=message,
            spec_hash=spec_hash, revision=revision, since=since, updated_at=now,
            services=services,
        )
        log.info("deployment %s: %s %s", token, phase.value, message,
                 extra={"device": self.device_id, "deployment": token, "phase": phase.value})
        try:
            await self._report_sink(state)
        except Exception as exc:  # reporting must not break reconciling; retried next change
            log.warning("could not report state of %s: %s", token, exc)
            return
        self._reported[token] = _Reported(phase, message, spec_hash, revision, summary, since)

    def reported_phase(self, token: str) -> Phase | None:
        last = self._reported.get(token)
        return last.phase if last else None


def _service_statuses(actual: Sequence[ContainerInfo]) -> list[ServiceStatus]:
    return [
        ServiceStatus(
            name=c.labels.get(LABEL_SERVICE, ""), container=c.name, state=c.state,
            exit_code=c.exit_code if c.state != "running" else None,
            restart_count=c.restart_count, spec_hash=c.labels.get(LABEL_SPEC_HASH),
        )
        for c in sorted(actual, key=lambda c: c.name)
        if not c.labels.get(LABEL_INIT) and c.labels.get(LABEL_SERVICE)
    ]


def _starting_message(plan: DeploymentPlan) -> str:
    parts = []
    if plan.init:
        parts.append(f"{len(plan.init)} init container(s)")
    if plan.create:
        parts.append(f"creating {', '.join(s.labels[LABEL_SERVICE] for s in plan.create)}")
    if plan.start:
        parts.append(f"starting {', '.join(c.labels.get(LABEL_SERVICE, c.name) for c in plan.start)}")
    return "; ".join(parts) or "updating"
