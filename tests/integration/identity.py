"""Helpers for identity tests: connect as a device or with a hand-made token."""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client as NatsClient

from harmony_fleet.bus import ConnectError, NatsSettings, connect
from harmony_fleet.bus.credentials import StaticTokenProvider
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import ZitadelTokenProvider
from harmony_fleet.testing.oidc import OidcIssuer, load_registry
from harmony_fleet.testing.services import FleetServices


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
