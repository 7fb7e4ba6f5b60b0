"""Revoking a device, for real: a TLS local stack in callout mode (nats-server, fleet-callout,
the OIDC issuer), real agent processes, the system account closing connections.

What must hold: a revoked device's live connection is closed within 10 s (measured from the
server's own DISCONNECT event, and printed); its reconnects are refused by the callout while
its token is still valid; other devices are untouched; a device with valid credentials can
neither revoke nor kick anyone; restoring lets it back; an id revoked before it exists is
refused once enrolled; a callout restarted while a revocation exists still refuses.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.bus import ConnectError, DeviceOffline, FleetCommandsClient, connect, drain
from harmony_fleet.bus.kv import get_entry
from harmony_fleet.bus.settings import NatsSettings, ZitadelAuth
from harmony_fleet.bus.tokens import ZitadelTokenProvider
from harmony_fleet.contracts import (
    BUCKET_DEVICE_REVOCATIONS,
    SYS_CONNZ_PING_SUBJECT,
    device_revocation_key,
    kv_stream_name,
    sys_kick_subject,
)
from harmony_fleet.control.revocation import (
    SystemAccountError,
    find_device_connections,
    restore_device,
    revoke_device,
)
from harmony_fleet.localstack.services import FleetServices, start_services
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet_harness.pytest_plugin import unique_device_id

from .identity import service

#: what the issue asks for: the device's live connection closed within this
CLOSE_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServices]:
    """A TLS callout-mode server side of this module's own (one test restarts its callout).
    Tokens live 10 minutes: a revoked device's token is still valid when it is refused."""
    workdir = tmp_path_factory.mktemp("tls-revoke")
    srv = start_services(workdir / "srv", auth="callout", tls=True, token_lifetime_s=600)
    try:
        asyncio.run(LocalStack(srv.workdir, srv, owns_server=False).ensure_buckets())
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def stack(services: FleetServices) -> AsyncIterator[LocalStack]:
    view = LocalStack(services.workdir, services, owns_server=False)
    try:
        yield view
    finally:
        await view.down()


@pytest.fixture
async def admin(stack: LocalStack) -> AsyncIterator[NatsClient]:
    nc = await stack.admin_connect("tls-revoke-admin")
    yield nc
    await drain(nc)


@pytest.fixture
async def system(stack: LocalStack) -> AsyncIterator[NatsClient]:
    nc = await connect(stack.system_settings(), name="tls-revoke-system")
    yield nc
    await drain(nc)


def device_settings(services: FleetServices, key_file: Path) -> NatsSettings:
    issuer = services.issuer
    assert issuer is not None
    return NatsSettings(
        urls=[services.nats_url], connect_attempts=1, connect_timeout_s=5,
        tls_ca_file=services.tls_ca_file,
        auth=ZitadelAuth(issuer=issuer.url, key_file=key_file, project_id=issuer.project_id))


async def connect_as_device(services: FleetServices, device_id: str, tmp: Path,
                            enroll: bool = True) -> NatsClient:
    """A raw connection with the device's own machine key (enrolled first unless told)."""
    key_file = tmp / f"{device_id}-key.json"
    if enroll:
        services.enroll_device(device_id, key_file)
    settings = device_settings(services, key_file)
    assert isinstance(settings.auth, ZitadelAuth)
    return await connect(settings, name=f"raw {device_id}",
                         credentials=ZitadelTokenProvider(settings.auth),
                         inbox_prefix=f"_INBOX.{device_id}")


async def add_agents(stack: LocalStack, *ids: str) -> None:
    await asyncio.gather(*(stack.add_device(d, mode="subprocess") for d in ids))


async def connz(system: NatsClient, **filters: Any) -> list[dict[str, Any]]:
    """Every open connection the server lists (with auth details)."""
    reply = await system.request(SYS_CONNZ_PING_SUBJECT, json.dumps(
        {"auth": True, "limit": 10_000, **filters}).encode(), timeout=2)
    return list(json.loads(reply.data)["data"]["connections"] or [])


def callout_log(services: FleetServices) -> str:
    return service(services, "fleet-callout").log_file.read_text(errors="replace")


async def disconnects(system: NatsClient) -> asyncio.Queue[tuple[float, dict[str, Any]]]:
    """The server's DISCONNECT events of account FLEET, stamped when they arrive."""
    queue: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        queue.put_nowait((time.monotonic(), json.loads(msg.data)))

    await system.subscribe("$SYS.ACCOUNT.FLEET.DISCONNECT", cb=on_event)
    await system.flush()
    return queue


async def until_disconnected(queue: asyncio.Queue[tuple[float, dict[str, Any]]],
                             device_id: str, timeout: float) -> float:
    """When the device's connection was closed (monotonic), from the server's event."""
    deadline = time.monotonic() + timeout
    while True:
        at, event = await asyncio.wait_for(queue.get(), max(0.01, deadline - time.monotonic()))
        if (event.get("client") or {}).get("user") == device_id:
            return at


async def test_the_ping_path_runs_over_tls_with_the_callout(
        services: FleetServices, stack: LocalStack, admin: NatsClient,
        system: NatsClient) -> None:
    assert services.nats_url.startswith("tls://127.0.0.1:")
    assert "tls {" in services.server.config_file.read_text()
    device = unique_device_id("tls-revoke-ping")
    await add_agents(stack, device)
    reply = await FleetCommandsClient(admin, timeout=5).ping(device)
    assert reply.device_id == device
    # every connection to the client port is TLS: agent, callout, writer, admin, system
    conns = await connz(system)
    names = {c.get("name", ""): c for c in conns}
    for name in (f"fleet-agent {device}", "fleet-callout", "fleet-report-writer",
                 "fleet-callout-revocations", "tls-revoke-admin", "tls-revoke-system"):
        assert names[name].get("tls_version", "").startswith("1."), (name, names.get(name))


async def test_revoke_closes_the_live_connection_and_keeps_the_device_out(
        services: FleetServices, stack: LocalStack, admin: NatsClient,
        system: NatsClient) -> None:
    victim = unique_device_id("tls-revoke-victim")
    bystander = unique_device_id("tls-revoke-bystander")
    await add_agents(stack, victim, bystander)
    before = {c.cid for c in await find_device_connections(system, bystander)}
    assert len(before) == 1
    events = await disconnects(system)
    log_offset = len(callout_log(services))

    started = time.monotonic()
    result = await revoke_device(admin, system, victim, reason="reported stolen",
                                 revoked_by="pytest")
    closed_after = await until_disconnected(events, victim, CLOSE_WITHIN_S) - started
    print(f"\nrevoke -> live connection closed after {closed_after:.2f}s "
          f"(revoke_device returned after {result.elapsed_s:.2f}s, kicked {result.kicked})")
    assert closed_after < CLOSE_WITHIN_S
    assert result.changed
    assert result.kicked == 1
    assert not result.was_revoked

    # it tries to come back with its still valid token, and is refused, again and again
    # (waiting 1, 2, 4... s in between: each attempt costs the callout a check)
    client = FleetCommandsClient(admin, timeout=1)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert await find_device_connections(system, victim, window_s=0.3) == []
        with pytest.raises(DeviceOffline):
            await client.ping(victim)
        await asyncio.sleep(0.3)
    refusals = [line for line in callout_log(services)[log_offset:].splitlines()
                if f"device {victim} is revoked" in line]
    print(f"refused reconnects in the first 6 s: {len(refusals)}")
    assert len(refusals) >= 2, refusals  # more than one reconnect, each refused
    agent_log = stack.devices[victim].log_file
    assert agent_log is not None
    assert "Authorization Violation" in agent_log.read_text()

    # the bystander never noticed
    assert {c.cid for c in await find_device_connections(system, bystander)} == before
    assert (await client.ping(bystander)).device_id == bystander

    # revoking again changes nothing
    again = await revoke_device(admin, system, victim, settle_s=0)
    assert (again.changed, again.kicked, again.was_revoked) == (False, 0, True)

    # restored: the agent, still retrying, gets back in
    restored_at = time.monotonic()
    assert (await restore_device(admin, victim)).changed
    await stack.wait_for_device(victim, timeout=20)
    print(f"restore -> agent answering again after {time.monotonic() - restored_at:.2f}s")
    assert not (await restore_device(admin, victim)).changed


async def test_a_device_with_valid_credentials_cannot_revoke_or_kick_anyone(
        services: FleetServices, stack: LocalStack, admin: NatsClient, system: NatsClient,
        tmp_path: Path) -> None:
    victim = unique_device_id("tls-revoke-target")
    victim_nc = await connect_as_device(services, victim, tmp_path)
    [target] = await find_device_connections(system, victim)
    attacker_id = unique_device_id("tls-revoke-attacker")
    attacker = await connect_as_device(services, attacker_id, tmp_path)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    attacker._error_cb = on_error  # see the permission violations
    stream = kv_stream_name(BUCKET_DEVICE_REVOCATIONS)
    key = device_revocation_key(victim)
    try:
        attempts = [
            (SYS_CONNZ_PING_SUBJECT, {"auth": True}),
            (sys_kick_subject(target.server_id), {"cid": target.cid}),
            (f"$JS.API.STREAM.INFO.{stream}", {}),
            (f"$JS.API.DIRECT.GET.{stream}.$KV.{BUCKET_DEVICE_REVOCATIONS}.{key}", {}),
            (f"$KV.{BUCKET_DEVICE_REVOCATIONS}.{key}", {"device_id": victim,
                                                        "revoked_at": "2026-01-01T00:00:00Z"}),
            (f"$JS.API.STREAM.PURGE.{stream}", {}),
        ]
        for subject, body in attempts:
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await attacker.request(subject, json.dumps(body).encode(), timeout=0.5)
        await attacker.flush()
        said = " ".join(errors).lower()  # nats-py lower-cases the server's -ERR
        for subject, _body in attempts:
            assert f'permissions violation for publish to "{subject.lower()}"' in said, said
        assert attacker.is_connected  # refused, not thrown out: nothing else happened
    finally:
        await drain(attacker)
    # nothing was revoked, nobody was kicked
    entry = await get_entry(admin.jetstream(), BUCKET_DEVICE_REVOCATIONS, key)
    assert entry.value is None
    assert [c.cid for c in await find_device_connections(system, victim)] == [target.cid]
    assert victim_nc.is_connected
    await drain(victim_nc)


async def test_an_id_revoked_before_it_exists_is_refused_once_enrolled(
        services: FleetServices, stack: LocalStack, admin: NatsClient, system: NatsClient,
        tmp_path: Path) -> None:
    future = unique_device_id("tls-revoke-future")
    result = await revoke_device(admin, system, future, reason="pre-revoked")
    assert (result.changed, result.kicked) == (True, 0)
    with pytest.raises(ConnectError, match="Authorization Violation"):
        await connect_as_device(services, future, tmp_path)
    assert f"device {future} is revoked" in callout_log(services)
    # lifted: the same key gets in
    await restore_device(admin, future)
    nc = await connect_as_device(services, future, tmp_path, enroll=False)
    await drain(nc)


async def test_a_restarted_callout_still_refuses_a_revoked_device(
        services: FleetServices, stack: LocalStack, admin: NatsClient, system: NatsClient,
        tmp_path: Path) -> None:
    revoked = unique_device_id("tls-revoke-restart")
    allowed = unique_device_id("tls-revoke-allowed")
    nc = await connect_as_device(services, revoked, tmp_path)
    await drain(nc)
    result = await revoke_device(admin, system, revoked, settle_s=0)
    assert result.changed
    callout = service(services, "fleet-callout")
    await asyncio.to_thread(callout.stop)
    await asyncio.to_thread(callout.start)
    with pytest.raises(ConnectError, match="Authorization Violation"):
        await connect_as_device(services, revoked, tmp_path, enroll=False)
    nc = await connect_as_device(services, allowed, tmp_path)
    assert nc.is_connected
    await drain(nc)


async def test_a_connection_that_is_not_the_system_account_cannot_close_anything(
        services: FleetServices, stack: LocalStack, admin: NatsClient, system: NatsClient,
        tmp_path: Path) -> None:
    """The admin's own FLEET connection passed as the system one. nats-server answers CONNZ in
    every account (scoped to it), so the admin sees the device's connection, but KICK is the
    system account's alone. The revocation is recorded all the same (the device's next
    connect is refused) and the error says so."""
    device = unique_device_id("tls-revoke-nosys")
    nc = await connect_as_device(services, device, tmp_path)
    with pytest.raises(SystemAccountError,
                       match=f"{device} is revoked .* could not be closed .*KICK"):
        await revoke_device(admin, admin, device, window_s=0.3)
    assert len(await find_device_connections(system, device)) == 1  # still there
    await nc.close()
    with pytest.raises(ConnectError, match="Authorization Violation"):
        await connect_as_device(services, device, tmp_path, enroll=False)
