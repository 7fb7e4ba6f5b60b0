"""Helpers for identity tests: connect as a device or with a hand-made token."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

from nats.aio.client import Client as NatsClient

from harmony_fleet.bus import ConnectError, NatsSettings, connect
from harmony_fleet.bus.credentials import StaticTokenProvider
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import ZitadelTokenProvider
from harmony_fleet.localstack.issuer import OidcIssuer, load_registry
from harmony_fleet.localstack.services import FleetServices, ServiceProcess, start_services
from harmony_fleet.localstack.stack import LocalStack


def own_services(tmp_path: Path, **options: object) -> Iterator[FleetServices]:
    """A callout-mode server side of the test's own (for tests that break or restart parts)."""
    services = start_services(tmp_path / "srv", auth="callout", **options)  # type: ignore[arg-type]
    try:
        asyncio.run(LocalStack(services.workdir, services, owns_server=False).ensure_buckets())
        yield services
    finally:
        services.stop()


def service(services: FleetServices, name: str) -> ServiceProcess:
    return next(p for p in services.processes if p.name == name)


def device_settings(services: FleetServices, key_file: Path) -> NatsSettings:
    issuer = services.issuer
    assert issuer is not None
    return NatsSettings(
        urls=[services.nats_url], connect_attempts=1,
        auth=ZitadelAuth(issuer=issuer.url, key_file=key_file, project_id=issuer.project_id),
    )


async def connect_device(services: FleetServices, device_id: str, tmp: Path,
                         ) -> tuple[NatsClient, ZitadelTokenProvider]:
    """Enroll ``device_id`` through the management API and connect with its machine key."""
    key_file = tmp / f"{device_id}-key.json"
    services.enroll_device(device_id, key_file)
    settings = device_settings(services, key_file)
    assert isinstance(settings.auth, ZitadelAuth)
    provider = ZitadelTokenProvider(settings.auth)
    nc = await connect(settings, name=f"test {device_id}", credentials=provider,
                       inbox_prefix=f"_INBOX.{device_id}")
    return nc, provider


def issuer_twin(services: FleetServices) -> OidcIssuer:
    """The running issuer's keys and users, in this process: to mint tokens by hand."""
    assert services.issuer is not None
    return load_registry(services.issuer.registry)


async def long_lived_admin(services: FleetServices) -> NatsClient:
    """An admin connection on a hand-minted token that outlives the test.

    For tests about devices across token rollovers or issuer outages: the harness's admin
    (``LocalStack.admin_connect``, the admin machine key) rolls over with the same short
    lifetimes, and a reply that arrives while a connection re-authenticates is lost.
    """
    twin = issuer_twin(services)
    admin = next(u for u in twin.users.values() if "fleet-admin" in u.roles)
    return await connect_with_token(services, twin.issue_token(admin, lifetime_s=600))


async def connect_with_token(services: FleetServices, token: str | None) -> NatsClient:
    # longer than the server's authorization timeout (2 s): see its verdict, not our timeout
    settings = NatsSettings(urls=[services.nats_url], connect_attempts=1, connect_timeout_s=5)
    provider = StaticTokenProvider(token) if token is not None else None
    return await connect(settings, name="token-test", credentials=provider)


async def denied(services: FleetServices, token: str | None) -> str:
    """Connect with ``token``; return the error (the test fails if it connects)."""
    try:
        nc = await connect_with_token(services, token)
    except ConnectError as exc:
        return str(exc)
    await nc.close()
    raise AssertionError("the connection was allowed")
