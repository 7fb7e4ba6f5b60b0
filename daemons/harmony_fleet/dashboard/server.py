"""Running the dashboard: bind, serve until the stop flag, and the standalone ``fleet
dashboard`` (its own NATS connection and bucket watches, or the mock fleet)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from harmony_fleet.bus import NatsSettings, connect, drain, provider_from_settings
from harmony_fleet.bus.connection import keep_authenticated
from harmony_fleet.daemon import supervise

from .app import Dashboard
from .auth import OidcClient
from .config import DashboardSection, is_loopback, split_listen
from .mock import MockCommands, MockSource
from .source import BucketSource, commands_client

log = logging.getLogger(__name__)


def allowed_hosts(settings: DashboardSection, host: str, port: int) -> frozenset[str] | None:
    """The Host headers this dashboard answers (None: any). Without a login it answers only
    its loopback names, so a page whose DNS name was rebound to 127.0.0.1 gets nothing."""
    hosts: set[str] = set()
    if settings.external_url:
        hosts.add(urlsplit(settings.external_url).netloc.lower())
    if settings.auth == "off" or is_loopback(host):
        names = {host, "127.0.0.1", "localhost", "[::1]"} if is_loopback(host) else {host}
        hosts |= {f"{name}:{port}" for name in names}
    elif not settings.external_url:
        return None
    return frozenset(hosts)


async def serve(dashboard: Dashboard, stop: asyncio.Event,
                announce: Callable[[str], None] | None = None) -> None:
    """Listen on ``settings.listen`` until ``stop``; ``announce(url)`` once bound."""
    settings = dashboard.settings
    host, port = split_listen(settings.listen or "")
    runner = web.AppRunner(dashboard.app(), access_log=None, handle_signals=False,
                           shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        dashboard.allowed_hosts = allowed_hosts(settings, host, bound)
        shown = f"[{host}]" if ":" in host else host
        url = settings.external_url or f"http://{shown}:{bound}"
        if dashboard.origin != url and not settings.external_url:
            dashboard.origin = f"http://{shown}:{bound}"
        if settings.auth == "off":
            log.warning("dashboard login is OFF: listening on %s only (loopback); anyone with "
                        "a shell on this machine can see the fleet and ping devices", url)
        log.info("dashboard at %s", url)
        if announce is not None:
            announce(url)
        await stop.wait()
    finally:
        await runner.cleanup()


async def run_standalone(settings: DashboardSection, stop: asyncio.Event, *,
                         nats: NatsSettings | None, mock: bool = False,
                         announce: Callable[[str], None] | None = None) -> None:
    """``fleet dashboard``: the fleet from the buckets (or the mock fleet) until ``stop``."""
    oidc = OidcClient(settings.oidc) if settings.auth == "oidc" and settings.oidc else None
    tasks: dict[str, Any] = {}
    nc = None
    if mock:
        mock_source = MockSource()
        dashboard = Dashboard(settings, mock_source, MockCommands(mock_source), mock=True,
                              oidc=oidc)
    else:
        assert nats is not None
        credentials = provider_from_settings(nats.auth)
        watches: list[BucketSource] = []

        async def reconnected() -> None:
            for each in watches:
                await each.reconnected()

        nc = await connect(nats, name="fleet-dashboard", credentials=credentials, stop=stop,
                           reconnected_cb=reconnected)
        source = BucketSource(nc)
        watches.append(source)
        dashboard = Dashboard(settings, source, commands_client(nc), oidc=oidc)
        tasks.update(source.tasks(stop))
        tasks["credentials"] = keep_authenticated(nc, credentials, stop)
    tasks["http"] = serve(dashboard, stop, announce)
    try:
        await supervise(tasks, stop, shutdown_timeout=10)
    finally:
        if nc is not None:
            await drain(nc)
