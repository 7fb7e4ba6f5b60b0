"""The agent daemon: connects, answers commands, runs workloads, reports what it does.

Root tasks (one stop flag, see :func:`harmony_fleet.daemon.supervise`): heartbeat, device-info,
and, with the runtime enabled, the desired-state watch and the reconciler. Stopping the agent
never stops the workloads: containers keep running and are adopted by the next agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient
from pydantic import BaseModel

import harmony_fleet
from harmony_fleet.bus import connect, drain, provider_from_settings
from harmony_fleet.bus.credentials import CredentialProvider
from harmony_fleet.contracts import (
    DeploymentState,
    DeviceInfo,
    ErrorKind,
    Heartbeat,
    PingReply,
    PingRequest,
    Verb,
    parse_request,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.daemon import sd_notify, supervise

from .commands import CommandFailed, CommandRequest, CommandServer
from .config import AgentConfig
from .inventory import collect_inventory
from .reconciler import Reconciler, ReconcilerSettings
from .reporter import Reporter, ReportFailed
from .runtime import PodmanRuntime
from .watch import DesiredEntry, DesiredStateWatcher
from .workload_commands import WorkloadCommands, runtime_disabled

log = logging.getLogger(__name__)


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
        self.runtime = PodmanRuntime(config.runtime.podman) if config.agent.runtime_enabled \
            else None
        self._link: _Link | None = None
        self._desired_changed = asyncio.Event()
        self._credentials = credentials or provider_from_settings(config.nats.auth)
        rt = config.runtime
        self.reconciler = Reconciler(
            self.device_id, self.runtime, self._report_state,
            ReconcilerSettings(
                reconcile_interval_s=rt.reconcile_interval_s,
                max_parallel=rt.max_parallel_deployments,
                stop_timeout_s=rt.stop_timeout_s,
                max_desired_bytes=rt.max_desired_state_bytes,
            ),
        ) if self.runtime is not None else None

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
            except Exception as exc:
                log.warning("%s failed: %s", what, exc, extra={"device": self.device_id})
            if wake is None:
                await asyncio.sleep(interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=interval)
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
            )
        )

    async def _publish_heartbeat(self) -> None:
        await self._current_reporter().heartbeat(
            Heartbeat(
                device_id=self.device_id,
                timestamp=utcnow(),
                uptime_s=self.uptime_s(),
                agent_version=self.version,
            )
        )

    # ---- lifecycle -------------------------------------------------------------------
    async def _report_state(self, state: DeploymentState) -> None:
        await self._current_reporter().state(state)

    def _desired_view(self) -> dict[str, DesiredEntry] | None:
        link = self._link
        if link is None or link.watcher is None or not link.watcher.view.generation:
            return None
        return link.watcher.view.values

    async def _open_link(self, stop: asyncio.Event) -> _Link:
        """Connect and start serving on that connection (commands, reports, the watch)."""
        closed = asyncio.Event()
        link_ref: list[_Link] = []

        async def on_closed() -> None:
            closed.set()

        async def on_reconnect() -> None:
            self._republish_info.set()
            if link_ref and link_ref[0].watcher is not None:
                link_ref[0].watcher.request_reset()  # the consumer may be gone

        nc = await connect(
            self.config.nats, name=f"fleet-agent {self.device_id}",
            credentials=self._credentials, inbox_prefix=f"_INBOX.{self.device_id}",
            stop=stop, reconnected_cb=on_reconnect, closed_cb=on_closed,
        )
        server = CommandServer(nc, self.device_id, self.handlers(),
                               max_concurrent=self.config.agent.max_concurrent_commands)
        link = _Link(nc, server, Reporter(nc, self.device_id), closed)
        link_ref.append(link)
        await server.start()
        if self.runtime is not None:
            link.watcher = DesiredStateWatcher(
                nc, self.device_id, idle_heartbeat_s=self.config.runtime.watch_heartbeat_s,
                changed=self._desired_changed,
            )
            link.watch_task = asyncio.create_task(link.watcher.run(link.stop),
                                                  name="desired-state-watch")
        return link

    async def _close_link(self, link: _Link) -> None:
        link.stop.set()
        await link.server.stop(timeout=self.config.agent.shutdown_timeout_s / 2)
        if link.watch_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(link.watch_task, 5)
        await drain(link.nc, timeout=self.config.nats.drain_timeout_s)

    async def _connection(self, stop: asyncio.Event) -> None:
        """Keep one live link. On a token refresh, make before break: the new connection
        (authenticated with the new token) subscribes first, then the old one drains, so no
        command finds the device unreachable. Commands use a queue group, so each is served
        once even while both links are up. A link closed for good is replaced."""
        refreshed: asyncio.Event | None = getattr(self._credentials, "refreshed", None)
        refresher = getattr(self._credentials, "run", None)
        refresh_task = asyncio.create_task(refresher(stop)) if refresher else None
        try:
            self._link = await self._open_link(stop)
            self._link_ready()
            while not stop.is_set():
                link = self._link
                waits = [asyncio.ensure_future(stop.wait()),
                         asyncio.ensure_future(link.closed.wait())]
                if refreshed is not None:
                    refreshed.clear()
                    waits.append(asyncio.ensure_future(refreshed.wait()))
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                if stop.is_set():
                    break
                if link.closed.is_set():
                    log.warning("NATS connection closed; connecting again",
                                extra={"device": self.device_id})
                else:
                    log.info("credentials refreshed: moving to a new connection",
                             extra={"device": self.device_id})
                self._link = await self._open_link(stop)
                self._republish_info.set()
                await self._close_link(link)
        finally:
            if refresh_task is not None:
                refresh_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresh_task
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
        """Serve until ``stop``; the workloads keep running after it returns."""
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
    watcher: DesiredStateWatcher | None = None
    watch_task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
