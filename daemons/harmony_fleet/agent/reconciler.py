"""Turns the desired-state view into running containers, and says how it went.

Level-triggered: every pass lists the containers this agent manages (by label), compares them
with the complete desired view and acts on the difference only. A pass runs when the watch
reports a change and every ``reconcile_interval_s``. Between passes, podman's event stream
(:mod:`.events`) says which deployment's containers changed, and that deployment alone is
listed and re-planned at once: a container that dies is reported within a second, and the
periodic pass is the safety net. Each deployment has its own worker task, so a slow pull or a
failing init container on one deployment never holds up another, and a bad value only fails
its own deployment.

A deployment whose apply failed is attempted again only for a new revision of its key (a
changed score, or the same one written again) or by a restarted agent: never by a periodic
pass, a container event or a container that disappears (:class:`.plan.FailedApplies` is the
rule). A service that exits later is its restart policy's (podman's) to restart; the agent
reports what it sees, and starts only containers nobody started.

Secrets: a score's sealed values are opened when it is decoded (a value that does not open
fails the deployment before anything is created), then again, one at a time, right where they
are used: piped into ``podman secret create`` before the containers that mount them are
created, or written to a pull's temporary authfile. No plaintext is kept, logged or reported.
After a successful apply the deployment's podman secrets that no container uses are removed;
removing a deployment removes all of them, and every pass sweeps this agent's secrets that
belong to no deployment it knows (a crash between creating a secret and its container leaves
one behind, and a deployment that failed before any container ran has no worker to clean up).

Before anything is pulled or created, every pass checks the score against the device's
workload policy (:mod:`.policy`); a refused score fails its deployment with every reason and
touches nothing, like an invalid one: containers of an earlier score keep running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from harmony_fleet.contracts import (
    DEFAULT_INIT_CONTAINER_TIMEOUT_S,
    DeploymentState,
    Phase,
    PodmanScore,
    SealingError,
    ServiceStatus,
    image_registry,
    open_sealed,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.daemon import first_of
from harmony_fleet.errors import FleetError
from harmony_fleet.metrics import Counter, Histogram
from harmony_fleet.purecrypto import X25519PrivateKey

from .config import PolicySection, RuntimeSection
from .plan import (
    INIT_OUTPUT_LINES,
    Condition,
    DeploymentPlan,
    Desired,
    FailedApplies,
    condition_of,
    decode_desired,
    deployment_secrets,
    device_labels,
    group_by_deployment,
    init_failure,
    leftover_secrets,
    output_tail,
    plan_deployment,
    pull_failure,
    secret_labels,
    service_health,
    stale_secrets,
)
from .policy import check_score, resolve_host_path
from .runtime import (
    LABEL_DEPLOYMENT,
    LABEL_INIT,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    ContainerInfo,
    ContainerRuntime,
    ContainerRuntimeError,
    ContainerSpec,
    RegistryAuth,
    TimedOut,
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

#: Reading a failed init container's last lines: at most this much of it is kept while reading
#: (its last lines may be one huge line) and for at most this long.
_OUTPUT_READ_BYTES = 64 * 1024
_OUTPUT_READ_TIMEOUT_S = 30.0


class ReconcileFailed(FleetError):
    pass


@dataclass
class _Reported:
    phase: Phase
    message: str
    spec_hash: str | None
    revision: int | None
    services: tuple[tuple[str, str, int | None, int], ...]
    since: datetime


@dataclass(frozen=True)
class ReconcilerSettings:
    """What the reconciler is told by the agent's config: the ``[runtime]`` and ``[policy]``
    sections as they are (their defaults live there), and what the agent found at start."""

    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    policy: PolicySection = field(default_factory=PolicySection)
    #: why containers of this policy's userns cannot be created here (found at agent start)
    userns_problem: str | None = None


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
        *,
        sealing_key: X25519PrivateKey | None = None,
    ) -> None:
        self.device_id = device_id
        self.runtime = runtime
        self._sealing_key = sealing_key
        self._report_sink = report
        self.settings = settings or ReconcilerSettings()
        self._slots = asyncio.Semaphore(self.settings.runtime.max_parallel_deployments)
        self._workers: dict[str, _Worker] = {}
        self._reported: dict[str, _Reported] = {}
        self._failures = FailedApplies()
        #: deployment -> container id -> when it was first seen in a podman transition
        self._in_transition: dict[str, dict[str, float]] = {}
        self._decoded: dict[str, Desired] = {}
        #: deployments podman reported changes of since the last look (None: any)
        self._touched: set[str | None] = set()
        self._podman_changed = asyncio.Event()
        self.passes = 0

    # ---- the loop ----------------------------------------------------------------------
    async def run(
        self, view: Callable[[], Mapping[str, DesiredEntry] | None], changed: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        """Reconcile on every change of ``view()`` (None: not yet known), on podman's events
        (:meth:`containers_changed`) and every ``reconcile_interval_s``."""
        loop = asyncio.get_running_loop()
        full, next_pass = True, loop.time()
        try:
            while not stop.is_set():
                values = view()
                if values is None:  # until the watch has the whole view: its change wakes us
                    next_pass = loop.time() + self.settings.runtime.reconcile_interval_s
                else:
                    touched, self._touched = self._touched, set()
                    try:
                        if full or None in touched or not touched <= values.keys():
                            # deployments podman names that are not desired any more are
                            # removed by a pass, which sees the whole view (never on an event)
                            next_pass = loop.time() + self.settings.runtime.reconcile_interval_s
                            await self.reconcile_pass(values)
                        else:
                            self._look_again(sorted(t for t in touched if t is not None), values)
                    except ContainerRuntimeError as exc:
                        log.warning("reconcile pass failed: %s", exc,
                                    extra={"device": self.device_id})
                await first_of(changed, self._podman_changed, stop,
                               timeout=max(0.0, next_pass - loop.time()))
                full = changed.is_set() or loop.time() >= next_pass
                changed.clear()
                self._podman_changed.clear()
        finally:
            await self.shutdown()

    def containers_changed(self, deployment: str | None) -> None:
        """podman reported a change of a container of ``deployment`` (None: of any, or it may
        have missed some): look again, at that deployment only when it can."""
        self._touched.add(deployment)
        self._podman_changed.set()

    def _look_again(self, tokens: Sequence[str], values: Mapping[str, DesiredEntry]) -> None:
        """Re-plan ``tokens`` (all desired) from a fresh listing of their containers."""
        for token in tokens:
            desired = self._decoded[token] = self._decode(token, values[token])
            self._kick(token, desired, None)

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
        # secrets of no deployment this agent knows of: left by a crash between creating a
        # secret and its container, or by a deployment that failed before any container ran
        known = set(desired) | set(groups) | set(self._workers)
        for name in leftover_secrets(self.device_id, await self.runtime.list_secrets(), known):
            await self._remove_secret(name, token=None)
        self._failures.keep_only(desired)  # failures of deleted keys are forgotten

    def _decode(self, token: str, entry: DesiredEntry) -> Desired:
        cached = self._decoded.get(token)
        if cached is not None and cached.revision == entry.revision:
            return cached
        assert entry.value is not None
        return decode_desired(token, entry.value, entry.revision,
                              self.settings.runtime.max_desired_state_bytes,
                              sealing_key=self._sealing_key)

    def _kick(
        self, token: str, desired: Desired | None, actual: list[ContainerInfo] | None
    ) -> None:
        """Have the deployment's worker reconcile it (``actual`` None: it lists afresh)."""
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
            try:
                if actual is None:
                    actual = await self._list_deployment(token)
            except ContainerRuntimeError as exc:
                # nothing was attempted: the next event or pass lists again
                log.warning("cannot list the containers of %s: %s", token, exc,
                            extra={"device": self.device_id, "deployment": token})
                continue
            try:
                await self._reconcile_one(token, desired, actual)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug outside an apply: fail this deployment only
                log.exception("reconcile of %s crashed", token, extra={"device": self.device_id})
                RECONCILES.labels(outcome="error").inc()
                if desired is not None:
                    await self._report(token, Phase.FAILED, f"agent error: {exc}", desired, [])
        if worker.desired is None and self._workers.get(token) is worker:
            del self._workers[token]

    async def _list_deployment(self, token: str) -> list[ContainerInfo]:
        labels = {**device_labels(self.device_id), LABEL_DEPLOYMENT: token}
        return await self.runtime.list_managed(labels)

    async def _relist(
        self, token: str, fallback: list[ContainerInfo] | None
    ) -> list[ContainerInfo] | None:
        """The deployment's containers after acting on them, or ``fallback`` if podman cannot
        list them now (what happened is reported all the same)."""
        try:
            return await self._list_deployment(token)
        except ContainerRuntimeError as exc:
            log.warning("cannot list the containers of %s: %s", token, exc,
                        extra={"device": self.device_id, "deployment": token})
            return fallback

    # ---- one deployment ----------------------------------------------------------------
    async def _reconcile_one(
        self, token: str, desired: Desired | None, actual: list[ContainerInfo]
    ) -> None:
        if desired is None:
            await self._remove_deployment(token, actual)
            return
        if desired.error is not None:
            await self._report(token, Phase.FAILED, desired.error + _kept(actual), desired,
                               actual)
            return
        plan = await self._plan_within_policy(token, desired, actual)
        if plan is None or plan.waiting:
            # refused (reported), or podman is acting on one of its containers: the end of
            # that transition (its event, or the periodic pass) brings the next plan
            return
        if plan.converged:
            self._failures.converged(token)
            await self._report_health(token, desired, actual)
            return
        failed = self._failures.blocking(token, desired.revision)
        if failed is not None:
            # this revision failed already: keep saying why, with what podman shows now
            await self._report(token, Phase.FAILED, failed.message, desired, actual)
            return
        await self._report(token, Phase.PENDING, "waiting for a reconcile slot", desired, actual,
                           only_if_new_revision=True)
        async with self._slots:
            started = time.perf_counter()
            failure = await self._attempt(token, desired, plan, actual)
            if failure is not None:
                self._failures.record(token, desired.revision, failure)
                await self._report(token, Phase.FAILED, failure, desired,
                                   await self._relist(token, actual) or [])
                return
            RECONCILE_SECONDS.observe(time.perf_counter() - started)
            # only now are the deployment's containers exactly the planned ones
            await self._remove_secrets(token, keep=plan.keep_secrets)
        RECONCILES.labels(outcome="applied").inc()
        after = await self._relist(token, None)
        if after is not None:  # else the next event or pass reports how it runs
            await self._report_health(token, desired, after)

    async def _attempt(
        self, token: str, desired: Desired, plan: DeploymentPlan, actual: list[ContainerInfo]
    ) -> str | None:
        """Apply ``plan``; None if it worked, else why not. Every way an apply can fail ends
        here, so every failure is remembered (an unremembered one would be retried by the next
        pass, pulls, init containers and all)."""
        try:
            await self._apply(token, desired, plan, actual)
        except asyncio.CancelledError:
            raise
        except (ReconcileFailed, ContainerRuntimeError) as exc:
            RECONCILES.labels(outcome="failed").inc()
            return str(exc)
        except Exception as exc:  # a bug: fail this deployment only, and say so
            log.exception("apply of %s crashed", token,
                          extra={"device": self.device_id, "deployment": token})
            RECONCILES.labels(outcome="error").inc()
            return f"agent error: {exc}"
        return None

    async def _plan_within_policy(
        self, token: str, desired: Desired, actual: list[ContainerInfo]
    ) -> DeploymentPlan | None:
        """The plan for ``desired``, or None (reported Failed, nothing touched) when this
        device's policy refuses the score or cannot create its containers."""
        assert desired.score is not None
        policy = self.settings.policy
        # resolving host paths touches the filesystem (a hung mount must not stall the loop)
        decision = await asyncio.to_thread(check_score, desired.score, policy, resolve_host_path)
        if decision.allowed:
            plan = plan_deployment(self.device_id, desired.score, token, actual,
                                   stop_timeout_s=self.settings.runtime.stop_timeout_s,
                                   userns=policy.userns, host_paths=decision.host_paths,
                                   stuck=self._stuck(token, actual))
            if not (plan.create or plan.init) or self.settings.userns_problem is None:
                return plan
            reason = f"cannot create containers: {self.settings.userns_problem}"
        else:
            reason = decision.message()
        await self._report(token, Phase.FAILED, reason + _kept(actual), desired, actual)
        return None

    def _stuck(self, token: str, actual: list[ContainerInfo]) -> frozenset[str]:
        """Ids of ``token``'s containers podman has kept in a transition for longer than the
        runtime's ``transition_timeout_s`` (and its stop timeout plus 30 s) since this agent
        first saw them in it."""
        runtime = self.settings.runtime
        limit = max(runtime.transition_timeout_s, runtime.stop_timeout_s + 30.0)
        now = time.monotonic()
        since = self._in_transition.setdefault(token, {})
        moving = {c.id for c in actual if condition_of(c.state) is Condition.IN_TRANSITION}
        for gone in set(since) - moving:
            del since[gone]
        stuck = set()
        for container in actual:
            if container.id in moving:
                first = since.setdefault(container.id, now)
                if now - first > limit:
                    stuck.add(container.id)
                    log.warning("container %s has been %s for %.0fs: removing it by force",
                                container.name, container.state, now - first,
                                extra={"device": self.device_id, "deployment": token})
        if not since:
            del self._in_transition[token]
        return frozenset(stuck)

    async def _apply(
        self, token: str, desired: Desired, plan: DeploymentPlan, actual: list[ContainerInfo]
    ) -> None:
        assert desired.score is not None
        missing = [img for img in plan.images if not await self.runtime.image_exists(img)]
        if missing:
            await self._report(token, Phase.PULLING, f"pulling {', '.join(missing)}", desired,
                               actual)
            for image in missing:
                await self._pull(token, desired.score, image)
        await self._report(token, Phase.STARTING, _starting_message(plan), desired, actual)
        stop_timeout = self.settings.runtime.stop_timeout_s
        try:
            # by id: each came from a listing, and its name may be taken again meanwhile
            for info in plan.remove:
                await self.runtime.remove(info.id, stop_timeout_s=stop_timeout)
            await self._create_secrets(token, desired.score, plan)
            for spec in plan.init:
                await self._run_init(spec)
            for spec in plan.create:
                await self.runtime.start(await self.runtime.create(spec))
            for info in plan.start:
                await self.runtime.start(info.id)
        except ContainerRuntimeError as exc:
            raise ReconcileFailed(str(exc)) from exc

    async def _run_init(self, spec: ContainerSpec) -> None:
        """Run one init container to completion and remove it; raise if it did not succeed."""
        stop_timeout = self.settings.runtime.stop_timeout_s
        timeout = spec.timeout_s or DEFAULT_INIT_CONTAINER_TIMEOUT_S
        outcome = await self.runtime.run_to_completion(spec, timeout, stop_timeout_s=stop_timeout)
        failed = isinstance(outcome, TimedOut) or outcome.exit_code != 0
        try:
            # what it said last is usually why: read before the container (and its log) goes
            output = await self._output_tail(outcome.container) if failed else ""
        finally:
            await self.runtime.remove(outcome.container, stop_timeout_s=stop_timeout)
        what = f"init container {spec.labels[LABEL_INIT]} ({spec.name})"
        if isinstance(outcome, TimedOut):
            raise ReconcileFailed(init_failure(
                f"{what} timed out after {outcome.waited_s:g}s and was removed", output))
        if outcome.exit_code != 0:
            raise ReconcileFailed(init_failure(
                f"{what} exited with code {outcome.exit_code}", output))

    async def _output_tail(self, container: str) -> str:
        """The end of ``container``'s output (see :func:`.plan.output_tail`); "" if podman
        cannot say (the failure is reported anyway, without it)."""
        kept = b""

        async def read() -> None:
            nonlocal kept
            async for chunk in self.runtime.logs(container, tail=INIT_OUTPUT_LINES):
                kept = (kept + chunk)[-_OUTPUT_READ_BYTES:]

        try:
            await asyncio.wait_for(read(), _OUTPUT_READ_TIMEOUT_S)
        except (ContainerRuntimeError, TimeoutError) as exc:
            log.warning("cannot read the output of %s: %s", container[:12], exc,
                        extra={"device": self.device_id})
        return output_tail(kept)

    def _open(self, token: str, score: PodmanScore, name: str) -> bytes:
        """One secret's plaintext, for immediate use (decoding checked that it opens)."""
        if self._sealing_key is None:
            raise ReconcileFailed("the workload has secrets but this agent has no sealing key")
        try:
            return open_sealed(self._sealing_key, token, name, score.secrets[name])
        except SealingError as exc:
            raise ReconcileFailed(f"secret {name!r}: {exc}") from None

    async def _pull(self, token: str, score: PodmanScore, image: str) -> None:
        registry = image_registry(image)
        credential = score.credential_for(image)
        auth = None if credential is None else RegistryAuth(
            credential.registry, credential.username,
            self._open(token, score, credential.password_secret))
        try:
            await self.runtime.pull(
                image, auth=auth, tls_verify=registry not in self.settings.runtime.insecure_registries)
        except ContainerRuntimeError as exc:
            raise ReconcileFailed(pull_failure(str(exc), registry, credential is not None)) \
                from exc

    async def _create_secrets(self, token: str, score: PodmanScore, plan: DeploymentPlan) -> None:
        """The podman secrets the containers about to be created mount (existing ones stay)."""
        if not plan.secrets:
            return
        existing = set(await self.runtime.list_secrets())
        for podman_name, name in sorted(plan.secrets.items()):
            if podman_name not in existing:
                await self.runtime.create_secret(
                    podman_name, self._open(token, score, name),
                    secret_labels(self.device_id, token, name))

    async def _remove_secrets(self, token: str, keep: frozenset[str] = frozenset()) -> None:
        """Remove the deployment's podman secrets except ``keep``; failures are only logged
        (a leftover is removed on the next apply or sweep, and holds nothing the device's
        key does not already protect)."""
        try:
            names = deployment_secrets(self.device_id, token, await self.runtime.list_secrets())
        except ContainerRuntimeError as exc:
            log.warning("cannot list podman secrets: %s", exc,
                        extra={"device": self.device_id, "deployment": token})
            return
        for name in stale_secrets(names, keep):
            await self._remove_secret(name, token)

    async def _remove_secret(self, name: str, token: str | None) -> None:
        try:
            await self.runtime.remove_secret(name)
        except ContainerRuntimeError as exc:
            log.warning("%s", exc, extra={"device": self.device_id, "deployment": token})

    async def _remove_deployment(self, token: str, actual: list[ContainerInfo]) -> None:
        self._in_transition.pop(token, None)
        for info in actual:
            await self.runtime.remove(info.id, stop_timeout_s=self.settings.runtime.stop_timeout_s)
        await self._remove_secrets(token)
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
        health = service_health(desired.score, actual)
        if health.problems:
            await self._report(token, Phase.FAILED, "; ".join(health.problems), desired, actual)
        elif health.waiting:
            return  # a service in transition is neither up nor down yet: report what it ends in
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
        # the restart count is part of it: a service podman restarted is news even when the
        # agent only ever saw it running
        summary = tuple((s.name, s.state, s.exit_code, s.restart_count) for s in services)
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


def _kept(actual: Sequence[ContainerInfo]) -> str:
    """The suffix of a failure that leaves the previous workload alone."""
    kept = [c for c in actual if not c.labels.get(LABEL_INIT)]
    return f" (the {len(kept)} container(s) of the previous workload keep running)" if kept \
        else ""


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
