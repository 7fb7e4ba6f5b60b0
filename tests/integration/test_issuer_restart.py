"""The identity provider goes away and comes back: real nats-server, real fleet-callout, the
local issuer as its own process (restarted with SIGTERM or kill -9), real agents.

* devices enrolled at run time (through the management API) still get tokens after a restart;
* kill -9 in the middle of a burst of enrollments loses none that was answered;
* while the issuer is down an agent keeps serving on its connection until its token expires,
  backs off its refresh attempts, and comes back on its own once the issuer does.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from harmony_fleet.bus import CommandError, FleetCommandsClient, drain
from harmony_fleet.bus.connection import connect
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import MachineKey, TokenError, ZitadelTokenProvider, exchange
from harmony_fleet.localstack.issuer import load_registry
from harmony_fleet.localstack.issuer_admin import ManagementCallError
from harmony_fleet.localstack.services import FleetServices, ServiceProcess
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet_harness.pytest_plugin import unique_device_id

from .identity import device_settings, long_lived_admin, own_services, service

# longer than a restart under load (2.4-3.1 s measured with load average 10) plus a refresh
# retry, so the test checks the registry and not the machine's speed
RESTART_LIFETIME_S = 9
OUTAGE_LIFETIME_S = 10


@pytest.fixture
def restart_services(tmp_path: Path) -> Iterator[FleetServices]:
    yield from own_services(tmp_path, token_lifetime_s=RESTART_LIFETIME_S)


@pytest.fixture
def outage_services(tmp_path: Path) -> Iterator[FleetServices]:
    yield from own_services(tmp_path, token_lifetime_s=OUTAGE_LIFETIME_S)


@pytest.fixture
def burst_services(tmp_path: Path) -> Iterator[FleetServices]:
    yield from own_services(tmp_path)


def kill_9(process: ServiceProcess) -> None:
    assert process.proc is not None
    process.proc.kill()
    process.proc.wait(10)


def restart(process: ServiceProcess, how: str) -> None:
    if how == "SIGTERM":
        process.stop()
    else:
        kill_9(process)
    process.start()


def agent_provider(stack: LocalStack, device: str) -> ZitadelTokenProvider:
    agent = stack.devices[device].agent
    assert agent is not None
    provider = agent._credentials
    assert isinstance(provider, ZitadelTokenProvider)
    return provider


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_devices_enrolled_at_run_time_survive_an_issuer_restart(
    restart_services: FleetServices, how: str
) -> None:
    stack = LocalStack(restart_services.workdir, restart_services, owns_server=False)
    device = unique_device_id(f"restart-{how}")
    await stack.add_device(device)  # enrolled now, through the issuer's management API
    provider = agent_provider(stack, device)
    admin_nc = await long_lived_admin(restart_services)
    client = FleetCommandsClient(admin_nc, timeout=3)
    try:
        # in a thread: the agents run in this event loop and must not freeze meanwhile
        await asyncio.to_thread(restart, service(restart_services, "oidc-issuer"), how)
        refreshes_before = provider.refreshes
        # two and a half token lifetimes: every token from before the restart has expired, and
        # the agent is still online only if the restarted issuer knows the device's machine key
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.5 * RESTART_LIFETIME_S
        pings = 0
        while loop.time() < deadline:
            assert (await client.ping(device)).device_id == device
            pings += 1
            await asyncio.sleep(0.2)
        assert pings > 30
        assert provider.refreshes >= refreshes_before + 3  # one per half-lifetime
        assert provider.consecutive_failures == 0
        # the enrollment also outlives the restart on its own: a fresh token for its key
        key_file = stack.devices[device].config_file.parent / "zitadel-key.json"
        token = await asyncio.to_thread(exchange, provider.settings, MachineKey.load(key_file))
        claims = jwt.decode(token.value, options={"verify_signature": False})
        assert claims["urn:zitadel:iam:user:metadata"]["device_id"] == \
            base64.b64encode(device.encode()).decode()
    finally:
        await drain(admin_nc)
        await stack.down()


async def test_kill_9_during_an_enrollment_burst_loses_no_answered_enrollment(
    burst_services: FleetServices, tmp_path: Path
) -> None:
    services = burst_services
    assert services.issuer is not None
    issuer = service(services, "oidc-issuer")
    answered: dict[str, tuple[str, Path]] = {}  # device -> (user id, key file)
    refused: list[str] = []
    stop = threading.Event()
    run = secrets.token_hex(3)

    def enroll_until_stopped(worker: int) -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            device = f"burst-{run}-{worker}-{i}"
            key_file = tmp_path / f"{device}.json"
            try:
                answered[device] = (services.enroll_device(device, key_file), key_file)
            except (OSError, TokenError, ManagementCallError, http.client.HTTPException) as exc:
                refused.append(f"{device}: {exc!r}")  # in flight when the issuer died
                return

    workers = [threading.Thread(target=enroll_until_stopped, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 60
        while len(answered) < 12 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # mid-burst: four enrollments (and registry writes) in flight
        await asyncio.to_thread(kill_9, issuer)
    finally:
        stop.set()
        for worker in workers:
            await asyncio.to_thread(worker.join, 30)
    assert len(answered) >= 12, refused

    # the file loads (no torn write) and holds every enrollment that was answered
    registry = load_registry(services.issuer.registry)
    for device, (user_id, key_file) in answered.items():
        user = registry.users[user_id]
        assert user.user_name == device
        assert user.metadata == {"device_id": device}
        assert "fleet-device" in user.roles
        assert MachineKey.load(key_file).key_id in user.keys

    # and the restarted issuer honours every one of those keys
    await asyncio.to_thread(issuer.start)
    for device, (_user_id, key_file) in answered.items():
        settings = ZitadelAuth(issuer=services.issuer.url, key_file=key_file,
                               project_id=services.issuer.project_id)
        token = await asyncio.to_thread(exchange, settings, MachineKey.load(key_file))
        claims = jwt.decode(token.value, options={"verify_signature": False})
        assert claims["urn:zitadel:iam:user:metadata"]["device_id"] == \
            base64.b64encode(device.encode()).decode()
    # one of them all the way onto NATS, through the callout
    some_device, (_, some_key) = next(iter(answered.items()))
    nc = await connect(device_settings(services, some_key), name="after-burst",
                       inbox_prefix=f"_INBOX.{some_device}")
    assert nc.is_connected
    await nc.close()


async def test_agent_rides_out_an_issuer_outage(
    outage_services: FleetServices, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="harmony_fleet.bus.tokens")
    stack = LocalStack(outage_services.workdir, outage_services, owns_server=False)
    device = unique_device_id("outage")
    await stack.add_device(device)
    agent = stack.devices[device].agent
    assert agent is not None
    provider = agent_provider(stack, device)
    admin_nc = await long_lived_admin(outage_services)
    client = FleetCommandsClient(admin_nc, timeout=3)
    issuer = service(outage_services, "oidc-issuer")
    loop = asyncio.get_running_loop()
    try:
        # stop the issuer right after a refresh, once the agent has moved to a connection
        # made with the new token: that token has its whole life ahead
        refreshes, link_before = provider.refreshes, agent._link
        deadline = loop.time() + OUTAGE_LIFETIME_S + 10
        while provider.refreshes == refreshes or agent._link is link_before:
            assert loop.time() < deadline, "no token refresh"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(issuer.stop)
        assert provider.expires_at is not None
        expires_at = provider.expires_at
        link = agent._link
        assert link is not None

        # 1. the agent keeps answering on the same connection while its token is valid,
        #    though its refreshes fail from half-life on
        pings = 0
        while time.time() < expires_at - 1.5:
            assert (await client.ping(device)).device_id == device
            assert agent._link is link  # a failed refresh neither drops nor replaces it
            assert not link.nc.is_closed
            pings += 1
            await asyncio.sleep(0.2)
        assert pings > 15
        assert provider.failed_refreshes >= 1

        # 2. attempts back off: numbered, each wait within its exponential ceiling
        while provider.failed_refreshes < 4:
            assert loop.time() < expires_at + 60, "refresh attempts stopped"
            await asyncio.sleep(0.2)
        attempts = [(int(r.args[0]), float(r.args[2]))  # type: ignore[index]
                    for r in caplog.records
                    if r.getMessage().startswith("token refresh attempt #")]
        numbers = [n for n, _ in attempts]
        assert numbers[:4] == [1, 2, 3, 4], numbers
        for number, wait in attempts:
            assert 0 <= wait <= min(60.0, 2.0 ** (number - 1)), (number, wait)

        # 3. the token expired: the device is offline (its NATS user expired with it)
        deadline = loop.time() + 20
        while True:
            try:
                await client.ping(device)
            except CommandError:
                break
            assert loop.time() < deadline, "the device stayed online on an expired token"
            await asyncio.sleep(0.2)

        # 4. the issuer comes back: the agent recovers on its own
        await asyncio.to_thread(issuer.start)
        restarted = loop.time()
        deadline = restarted + 90
        while True:
            try:
                assert (await client.ping(device)).device_id == device
                break
            except CommandError:
                assert loop.time() < deadline, "the agent did not come back"
                await asyncio.sleep(0.5)
        recovery_s = loop.time() - restarted
        assert provider.consecutive_failures == 0
        assert provider.expires_at is not None
        assert provider.expires_at > expires_at
        print(f"outage: {provider.failed_refreshes} failed refresh attempts, "
              f"waits {[round(w, 2) for _, w in attempts]}, recovered {recovery_s:.1f}s "
              "after the issuer restarted")
    finally:
        await drain(admin_nc)
        await stack.down()
