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
from typing import Any

from nats.aio.client import Client as NatsClient
from pydantic import BaseModel

import harmony_fleet
from harmony_fleet.bus import connect, drain, provider_from_settings
from harmony_fleet.bus.connection import keep_authenticated
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
        self.watcher: DesiredStateWatcher | None = None
        self._reporter: Reporter | None = None
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
        """Run ``action`` now and every ``interval`` s (or when ``wake`` is set); never raise."""
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

    async def _publish_info(self, reporter: Reporter) -> None:
        inventory = await collect_inventory(self.runtime)
        await reporter.info(
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

    async def _publish_heartbeat(self, reporter: Reporter) -> None:
        await reporter.heartbeat(
            Heartbeat(
                device_id=self.device_id,
                timestamp=utcnow(),
                uptime_s=self.uptime_s(),
                agent_version=self.version,
            )
        )

    # ---- lifecycle -------------------------------------------------------------------
    async def _on_reconnect(self) -> None:
        self._republish_info.set()
        if self.watcher is not None:
            self.watcher.request_reset()  # the consumer may be gone (e.g. a server restart)

    async def _report_state(self, state: DeploymentState) -> None:
        if self._reporter is None:
            raise ReportFailed("not connected")
        await self._reporter.state(state)

    def _workload_tasks(self, nc: NatsClient, stop: asyncio.Event) -> dict[str, Any]:
        if self.runtime is None or self.reconciler is None:
            return {}
        self.watcher = watcher = DesiredStateWatcher(
            nc, self.device_id, idle_heartbeat_s=self.config.runtime.watch_heartbeat_s
        )

        def view() -> dict[str, DesiredEntry] | None:
            return watcher.view.values if watcher.view.generation else None

        return {
            "desired-state-watch": watcher.run(stop),
            "reconciler": self.reconciler.run(view, watcher.changed, stop),
        }

    async def connect(self, stop: asyncio.Event, closed: asyncio.Event) -> NatsClient:
        async def on_closed() -> None:
            closed.set()

        return await connect(
            self.config.nats,
            name=f"fleet-agent {self.device_id}",
            credentials=self._credentials,
            inbox_prefix=f"_INBOX.{self.device_id}",
            stop=stop,
            reconnected_cb=self._on_reconnect,
            closed_cb=on_closed,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``. A connection closed for good (e.g. its credentials expired
        while the issuer was unreachable) is replaced by a fresh one."""
        try:
            while not stop.is_set():
                await self._session(stop)
                if not stop.is_set():
                    log.warning("NATS connection closed; connecting again",
                                extra={"device": self.device_id})
        finally:
            sd_notify("STOPPING=1")
            log.info("agent %s stopped", self.device_id, extra={"device": self.device_id})

    async def _session(self, stop: asyncio.Event) -> None:
        closed = asyncio.Event()
        nc = await self.connect(stop, closed)
        server = CommandServer(
            nc, self.device_id, self.handlers(),
            max_concurrent=self.config.agent.max_concurrent_commands,
        )
        self._reporter = reporter = Reporter(nc, self.device_id)
        agent = self.config.agent
        session_stop = asyncio.Event()
        try:
            await server.start()
            if not self.ready.is_set():
                self.ready.set()
                sd_notify("READY=1")
                log.info(
                    "agent %s %s running (runtime %s)", self.device_id, self.version,
                    "enabled" if agent.runtime_enabled else "disabled",
                    extra={"device": self.device_id},
                )
            await supervise(
                {
                    "heartbeat": self._every(
                        "heartbeat", agent.heartbeat_interval_s,
                        lambda: self._publish_heartbeat(reporter),
                    ),
                    "device-info": self._every(
                        "device-info", agent.info_interval_s,
                        lambda: self._publish_info(reporter), wake=self._republish_info,
                    ),
                    "credentials": keep_authenticated(nc, self._credentials, session_stop),
                    **self._workload_tasks(nc, session_stop),
                    "stop": stop.wait(),
                    "connection-closed": closed.wait(),
                },
                session_stop,
                shutdown_timeout=agent.shutdown_timeout_s,
            )
        finally:
            self._reporter = None
            await server.stop(timeout=agent.shutdown_timeout_s / 2)
            await drain(nc, timeout=self.config.nats.drain_timeout_s)
