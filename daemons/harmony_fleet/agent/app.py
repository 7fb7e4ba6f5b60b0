"""The agent daemon: connects, answers commands, runs workloads, reports what it does.

Root tasks (one stop flag, see :func:`harmony_fleet.daemon.supervise`): heartbeat, device-info,
and, with the runtime enabled, the desired-state watch, the reconciler and podman's event
stream (which tells the reconciler when a container changes). Stopping the agent
never stops the workloads: containers keep running and are adopted by the next agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from pydantic import BaseModel

import harmony_fleet
from harmony_fleet.bus import connect, drain, provider_from_settings
from harmony_fleet.bus.credentials import CredentialProvider, refreshing
from harmony_fleet.contracts import (
    DeploymentState,
    DeviceInfo,
    ErrorKind,
    Heartbeat,
    PingReply,
    PingRequest,
    Verb,
    device_inbox_prefix,
    parse_request,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.contracts.sealing import public_key_of
from harmony_fleet.daemon import first_of, sd_notify, supervise

from .commands import CommandFailed, CommandRequest, CommandServer
from .config import AgentConfig
from .events import ContainerEvents, EventStreamSettings
from .identity import DeviceIdInUse, HostLock, default_lock_dir, new_instance_id
from .inventory import collect_inventory
from .keys import load_or_create_sealing_key
from .policy import auto_userns_problem
from .reconciler import Reconciler, ReconcilerSettings
from .reporter import Reporter, ReportFailed
from .runtime import PodmanRuntime, Userns
from .watch import DesiredEntry, DesiredStateWatcher
from .workload_commands import WorkloadCommands, runtime_disabled

log = logging.getLogger(__name__)

#: While another instance holds the device id at start, try to claim it again this often.
CLAIM_RETRY_S = 3.0


class Agent:
    """One device's agent. ``run(stop)`` returns when ``stop`` is set (or a root task fails)."""

    def __init__(
        self, config: AgentConfig, *, credentials: CredentialProvider | None = None
    ) -> None:
        self.config = config
        self.device_id = config.agent.device_id
        self.version = harmony_fleet.__version__
        self._started_monotonic = time.monotonic()
        self._started_at = utcnow()
        self._republish_info = asyncio.Event()
        self.ready = asyncio.Event()
        self.instance_id = new_instance_id(config.agent.boot_id_file)
        self._host_lock = HostLock(config.agent.lock_dir or default_lock_dir(), self.device_id)
        self._fatal: DeviceIdInUse | None = None
        self._stop_all = asyncio.Event()
        self.runtime = PodmanRuntime(config.runtime.podman) if config.agent.runtime_enabled \
            else None
        # only an agent that runs workloads receives secrets, so only it has a key
        self.sealing_key = load_or_create_sealing_key(config.agent.sealing_key_file) \
            if self.runtime is not None else None
        self._link: _Link | None = None
        self.watcher: DesiredStateWatcher | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._desired_changed = asyncio.Event()
        self._credentials = credentials or provider_from_settings(config.nats.auth)
        self.reconciler = Reconciler(
            self.device_id, self.runtime, self._report_state,
            ReconcilerSettings(config.runtime, config.policy, self._userns_problem()),
            sealing_key=self.sealing_key,
        ) if self.runtime is not None else None

    def _userns_problem(self) -> str | None:
        """Checked once, at start (the policy is read at start too); logged once, and every
        deployment that needs a new container fails with the same reason."""
        if self.config.policy.userns is not Userns.AUTO:
            return None
        problem = auto_userns_problem()
        if problem is not None:
            log.error("workloads cannot start: %s", problem, extra={"device": self.device_id})
        return problem

    def uptime_s(self) -> int:
        return int(time.monotonic() - self._started_monotonic)

    # ---- command handlers ------------------------------------------------------------
    async def _ping(self, request: CommandRequest) -> BaseModel:
        try:
            parse_request(request.payload, PingRequest)
        except ValueError as exc:
            raise CommandFailed(ErrorKind.BAD_REQUEST, f"ping: {exc}") from exc
        return PingReply(
            device_id=self.device_id, agent_version=self.version, uptime_s=self.uptime_s()
        )

    def handlers(self) -> dict[Verb, Callable[[CommandRequest], Awaitable[BaseModel | None]]]:
        if self.runtime is None:
            return {Verb.PING: self._ping, Verb.LOGS: runtime_disabled, Verb.EXEC: runtime_disabled}
        workload = WorkloadCommands(self.device_id, self.runtime, self.config.exec)
        return {Verb.PING: self._ping, Verb.LOGS: workload.logs, Verb.EXEC: workload.exec}

    # ---- report loops ----------------------------------------------------------------
    async def _every(
        self,
        what: str,
        interval: float,
        action: Callable[[], Awaitable[None]],
        wake: asyncio.Event | None = None,
    ) -> None:
        """Run ``action`` once connected, then every ``interval`` s (or when ``wake`` is set);
        never raise."""
        await self.ready.wait()
        while True:
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except DeviceIdInUse as exc:
                self._evicted(exc)
                return
            except Exception as exc:
                log.warning("%s failed: %s", what, exc, extra={"device": self.device_id})
            await first_of(wake or asyncio.Event(), timeout=interval)
            if wake is not None:
                wake.clear()

    def _current_reporter(self) -> Reporter:
        if self._link is None:
            raise ReportFailed("not connected")
        return self._link.reporter

    async def _publish_info(self) -> None:
        inventory = await collect_inventory(self.runtime)
        await self._current_reporter().info(
            DeviceInfo(
                device_id=self.device_id,
                agent_version=self.version,
                labels=self.config.agent.labels,
                inventory=inventory,
                runtime_enabled=self.config.agent.runtime_enabled,
                started_at=self._started_at,
                updated_at=utcnow(),
                sealing_key=public_key_of(self.sealing_key) if self.sealing_key else None,
            )
        )

    async def _publish_heartbeat(self, reporter: Reporter | None = None) -> None:
        await (reporter or self._current_reporter()).heartbeat(
            Heartbeat(
                device_id=self.device_id,
                timestamp=utcnow(),
                uptime_s=self.uptime_s(),
                agent_version=self.version,
                instance_id=self.instance_id,
            )
        )

    # ---- lifecycle -------------------------------------------------------------------
    async def _report_state(self, state: DeploymentState) -> None:
        try:
            await self._current_reporter().state(state)
        except DeviceIdInUse as exc:
            self._evicted(exc)
            raise

    def _evicted(self, exc: DeviceIdInUse) -> None:
        """Another instance holds our device id now: stop at once (workloads stay as they
        are; the agent must not fight the other one over them)."""
        if self._fatal is None:
            log.critical("%s; stopping", exc, extra={"device": self.device_id})
            self._fatal = exc
        self._stop_all.set()

    async def _claim(self, reporter: Reporter, stop: asyncio.Event) -> None:
        """Take the device's lease before serving anything: a heartbeat the writer accepts.

        While another instance holds it, wait up to ``claim_timeout_s`` (the previous run of
        this agent before a reboot lets its lease lapse); a live one keeps it: refuse to run.
        A writer that cannot be reached cannot judge: go on (later heartbeats are judged).
        """
        deadline = time.monotonic() + self.config.agent.claim_timeout_s
        while not stop.is_set():
            try:
                await self._publish_heartbeat(reporter)
                return
            except DeviceIdInUse as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                log.warning("%s; waiting up to %.0fs for its lease to lapse", exc, left,
                            extra={"device": self.device_id})
                await first_of(stop, timeout=min(left, CLAIM_RETRY_S))
            except ReportFailed as exc:
                log.warning("could not claim the device id yet: %s", exc,
                            extra={"device": self.device_id})
                return

    def _desired_view(self) -> dict[str, DesiredEntry] | None:
        watcher = self.watcher
        if watcher is None or not watcher.view.generation:
            return None
        return watcher.view.values

    async def _open_link(self, stop: asyncio.Event, *, claim: bool = False) -> _Link:
        """Connect and start serving on that connection (commands, reports); with ``claim``,
        take the device's lease first (the first connection of this agent)."""
        closed = asyncio.Event()
        link_ref: list[_Link] = []

        async def on_closed() -> None:
            closed.set()

        async def on_reconnect() -> None:
            self._republish_info.set()
            if self.watcher is not None and link_ref and self._link is link_ref[0]:
                self.watcher.request_reset()  # the consumer may be gone

        nc = await connect(
            self.config.nats, name=f"fleet-agent {self.device_id}",
            credentials=self._credentials, inbox_prefix=device_inbox_prefix(self.device_id),
            stop=stop, reconnected_cb=on_reconnect, closed_cb=on_closed,
        )
        server = CommandServer(nc, self.device_id, self.handlers(),
                               max_concurrent=self.config.agent.max_concurrent_commands)
        reporter = Reporter(nc, self.device_id, instance_id=self.instance_id)
        link = _Link(nc, server, reporter, closed)
        link_ref.append(link)
        if claim:
            try:
                await self._claim(reporter, stop)
            except BaseException:
                await drain(nc)
                raise
        await server.start()
        return link

    def _watch_on(self, link: _Link, stop: asyncio.Event) -> None:
        """The desired-state watch follows the current link (one watch per agent: it owns the
        device's one consumer, and its view survives the move)."""
        if self.runtime is None:
            return
        if self.watcher is None:
            self.watcher = DesiredStateWatcher(
                link.nc, self.device_id, idle_heartbeat_s=self.config.runtime.watch_heartbeat_s,
                changed=self._desired_changed, instance_id=self.instance_id,
            )
            self._watch_task = asyncio.create_task(self.watcher.run(stop),
                                                   name="desired-state-watch")
            self._watch_task.add_done_callback(self._watch_ended)
        else:
            self.watcher.use(link.nc)

    def _watch_ended(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, DeviceIdInUse):
            self._evicted(exc)

    async def _close_link(self, link: _Link, *, handover: bool = False) -> None:
        await link.server.stop(timeout=self.config.agent.shutdown_timeout_s / 2,
                               handover=handover)
        await drain(link.nc, timeout=self.config.nats.drain_timeout_s)

    async def _connection(self, stop: asyncio.Event) -> None:
        """Keep one live link. On a token refresh, make before break: the new connection
        (authenticated with the new token) subscribes first, then the old one drains, so no
        command finds the device unreachable. Commands use a queue group, so each is served
        once even while both links are up. A link closed for good is replaced."""
        renewing = refreshing(self._credentials)
        refresh_task = asyncio.create_task(renewing.run(stop)) if renewing else None
        try:
            self._link = await self._open_link(stop, claim=True)
            self._watch_on(self._link, stop)
            self._link_ready()
            while not stop.is_set():
                link = self._link
                if renewing is not None:
                    renewing.refreshed.clear()
                await first_of(stop, link.closed, *([renewing.refreshed] if renewing else []))
                if stop.is_set():
                    break
                if link.closed.is_set():
                    log.warning("NATS connection closed; connecting again",
                                extra={"device": self.device_id})
                else:
                    log.info("credentials refreshed: moving to a new connection",
                             extra={"device": self.device_id})
                self._link = await self._open_link(stop)
                self._watch_on(self._link, stop)
                self._republish_info.set()
                await self._close_link(link, handover=not link.closed.is_set())
        finally:
            if refresh_task is not None:
                refresh_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresh_task
            if self._watch_task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(self._watch_task, 5)
            if self._link is not None:
                await self._close_link(self._link)
                self._link = None

    def _link_ready(self) -> None:
        if not self.ready.is_set():
            self.ready.set()
            sd_notify("READY=1")
            log.info(
                "agent %s %s running (runtime %s)", self.device_id, self.version,
                "enabled" if self.runtime is not None else "disabled",
                extra={"device": self.device_id},
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``; the workloads keep running after it returns.

        Raises :class:`DeviceIdInUse` when another agent runs this device id, on this host
        (before anything starts) or elsewhere (at start, or when it took over meanwhile)."""
        self._stop_all = stop
        self._host_lock.acquire(self.instance_id)
        try:
            await self._serve(stop)
        finally:
            self._host_lock.release()
        if self._fatal is not None:
            raise self._fatal

    async def _serve(self, stop: asyncio.Event) -> None:
        agent = self.config.agent
        tasks: dict[str, Any] = {
            "connection": self._connection(stop),
            "heartbeat": self._every("heartbeat", agent.heartbeat_interval_s,
                                     self._publish_heartbeat),
            "device-info": self._every("device-info", agent.info_interval_s,
                                       self._publish_info, wake=self._republish_info),
        }
        if self.reconciler is not None:
            tasks["reconciler"] = self.reconciler.run(self._desired_view,
                                                      self._desired_changed, stop)
            rt = self.config.runtime
            if rt.events and self.runtime is not None:
                events = ContainerEvents(
                    self.runtime, self.device_id, self.reconciler.containers_changed,
                    EventStreamSettings(rt.events_retry_initial_s, rt.events_retry_max_s))
                tasks["container-events"] = events.run(stop)
        try:
            await supervise(tasks, stop, shutdown_timeout=agent.shutdown_timeout_s)
        finally:
            sd_notify("STOPPING=1")
            log.info("agent %s stopped", self.device_id, extra={"device": self.device_id})


@dataclass
class _Link:
    """One NATS connection and what serves on it."""

    nc: NatsClient
    server: CommandServer
    reporter: Reporter
    closed: asyncio.Event
