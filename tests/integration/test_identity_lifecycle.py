"""Callout failure (fail closed) and token rollovers, each on its own server side."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.reporter import REPORTS
from harmony_fleet.agent.watch import DesiredStateWatcher
from harmony_fleet.bus import FleetCommandsClient
from harmony_fleet.bus.connection import keep_authenticated
from harmony_fleet.contracts import BUCKET_DESIRED_STATE, desired_state_key
from harmony_fleet.localstack.services import FleetServices
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet_harness.pytest_plugin import unique_device_id

from .identity import (
    connect_device,
    connect_with_token,
    denied,
    issuer_twin,
    long_lived_admin,
    own_services,
)

ROLLOVER_LIFETIME_S = 4


@pytest.fixture
def callout_services(tmp_path: Path) -> Iterator[FleetServices]:
    yield from own_services(tmp_path)


@pytest.fixture
def short_token_services(tmp_path: Path) -> Iterator[FleetServices]:
    yield from own_services(tmp_path, token_lifetime_s=ROLLOVER_LIFETIME_S)


async def test_callout_down_fails_closed_existing_connections_live_on(
    callout_services: FleetServices, tmp_path: Path
) -> None:
    stack = LocalStack(callout_services.workdir, callout_services, owns_server=False)
    device = unique_device_id("closed")
    await stack.add_device(device)
    admin = await stack.admin_connect()
    twin = issuer_twin(callout_services)
    admin_user = next(u for u in twin.users.values() if "fleet-admin" in u.roles)
    try:
        good_token = twin.issue_token(admin_user)
        await (await connect_with_token(callout_services, good_token)).close()  # allowed now
        callout = next(p for p in callout_services.processes if p.name == "fleet-callout")
        callout.stop()
        error = await denied(callout_services, good_token)
        assert "Authorization Violation" in error
        # the agent, connected before, still answers
        reply = await FleetCommandsClient(admin).ping(device)
        assert reply.device_id == device
    finally:
        await admin.drain()
        await stack.down()


async def test_agent_stays_connected_across_token_rollovers(
    short_token_services: FleetServices,
) -> None:
    stack = LocalStack(short_token_services.workdir, short_token_services, owns_server=False)
    device = unique_device_id("rollover")
    handle = await stack.add_device(device)
    admin = await long_lived_admin(short_token_services)
    failed_reports = REPORTS.labels(kind="heartbeat", outcome="error")
    failed_before = failed_reports._value.get()
    try:
        client = FleetCommandsClient(admin, timeout=3)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4 * ROLLOVER_LIFETIME_S
        pings = 0
        while loop.time() < deadline:
            assert (await client.ping(device)).device_id == device
            pings += 1
            await asyncio.sleep(0.1)
        assert handle.agent is not None
        credentials = handle.agent._credentials
        assert getattr(credentials, "refreshes", 0) >= 4  # one per half-lifetime, at least
        assert pings > 50
        assert failed_reports._value.get() == failed_before
    finally:
        await admin.drain()
        await stack.down()


async def test_watch_misses_nothing_across_token_rollovers(
    short_token_services: FleetServices, tmp_path: Path
) -> None:
    device = unique_device_id("rollwatch")
    nc, provider = await connect_device(short_token_services, device, tmp_path)
    admin: NatsClient = await long_lived_admin(short_token_services)
    stop = asyncio.Event()
    watcher = DesiredStateWatcher(nc, device, idle_heartbeat_s=0.5, backoff_s=0.2)

    async def on_reconnect() -> None:
        watcher.request_reset()

    nc._reconnected_cb = on_reconnect  # what the agent wires through connect()
    tasks = [asyncio.create_task(watcher.run(stop)),
             asyncio.create_task(keep_authenticated(nc, provider, stop))]
    try:
        kv = await admin.jetstream().key_value(BUCKET_DESIRED_STATE)
        written: dict[str, bytes] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3 * ROLLOVER_LIFETIME_S
        i = 0
        while loop.time() < deadline:
            token, value = f"ns_app{i % 7}", f"v{i}".encode()
            await kv.put(desired_state_key(device, token), value)
            written[token] = value
            i += 1
            await asyncio.sleep(0.1)
        for _ in range(100):
            if {k: v.value for k, v in watcher.view.values.items()} == written:
                break
            await asyncio.sleep(0.1)
        assert {k: v.value for k, v in watcher.view.values.items()} == written
        assert provider.refreshes >= 3
        assert nc.is_connected
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()
        await admin.drain()


async def test_a_rotating_connection_loses_no_reply_across_token_rollovers(
    short_token_services: FleetServices,
) -> None:
    """The Ansible broker's connection: pings in flight all the time, tokens of 4 s. Each
    refresh moves new work to a fresh connection; work in flight finishes where it started."""
    from harmony_fleet.bus.connection import RotatingConnection
    from harmony_fleet.bus.settings import ZitadelAuth

    stack = LocalStack(short_token_services.workdir, short_token_services, owns_server=False)
    device = unique_device_id("rotate")
    await stack.add_device(device)
    settings = stack.admin_settings()
    assert isinstance(settings.auth, ZitadelAuth)
    connection = RotatingConnection(settings, name="rotation-test")
    await connection.open()
    stop = asyncio.Event()
    rotator = asyncio.create_task(connection.run(stop))
    answered, failures = 0, []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4.5 * ROLLOVER_LIFETIME_S

        async def pinger() -> None:
            nonlocal answered
            while loop.time() < deadline:
                async with connection.borrow() as nc:
                    try:
                        await FleetCommandsClient(nc, timeout=2).ping(device)
                        answered += 1
                    except Exception as exc:
                        failures.append(repr(exc))

        await asyncio.gather(*(pinger() for _ in range(4)))
    finally:
        stop.set()
        await rotator
        await connection.close()
        await stack.down()
    assert connection.rotations >= 3, connection.rotations
    assert failures == []
    assert answered > 100
