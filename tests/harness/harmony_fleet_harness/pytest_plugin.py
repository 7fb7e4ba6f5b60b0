"""pytest fixtures built on the same stack harness as ``fleet stack up``.

Load it from a ``conftest.py`` with ``pytest_plugins = ["harmony_fleet_harness.pytest_plugin"]``.

* ``fleet_server`` (session): one real nats-server with JetStream and the fleet buckets.
* ``fleet_stack`` (test): a :class:`LocalStack` on that server; the agents a test adds are
  stopped when it ends. Tests isolate themselves by device id, not by server.
* ``device_id`` (test): a fresh, valid, unique device id derived from the test name.
* ``admin_nc`` / ``fleet_client``: an admin NATS connection and a command client on it.

Admin connections come from :meth:`LocalStack.admin_connect`: the static ``admin`` user in
dev mode; in callout mode the issuer's admin machine key, authenticated by the callout like
any client (there is no static admin then) and re-authenticated as its tokens roll over.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet import metrics
from harmony_fleet.bus import FleetCommandsClient, drain
from harmony_fleet.localstack.services import AuthMode, FleetServices, start_services
from harmony_fleet.localstack.stack import LocalStack


def pytest_configure(config: pytest.Config) -> None:
    """In-process agents count into real Prometheus metrics, as a daemon serving ``/metrics``
    does (tests read them); a device agent without ``[metrics] listen`` never loads
    prometheus_client (harmony_fleet.metrics)."""
    metrics.enable()


@dataclass(frozen=True)
class SharedServer:
    """The session's server side; each test gets its own :class:`LocalStack` view of it."""

    services: FleetServices

    def stack(self) -> LocalStack:
        return LocalStack(self.services.workdir, self.services, owns_server=False)


def _shared(tmp_path_factory: pytest.TempPathFactory, auth: AuthMode,
            **options: Any) -> Iterator[SharedServer]:
    workdir = tmp_path_factory.mktemp(f"fleet-{auth}")
    services = start_services(workdir, auth=auth, **options)
    shared = SharedServer(services)
    try:
        asyncio.run(shared.stack().ensure_buckets())
        yield shared
    finally:
        services.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    """Dev-mode server (shared device user) with the report writer."""
    yield from _shared(tmp_path_factory, "dev")


@pytest.fixture(scope="session")
def fleet_callout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    """Callout-mode server: OIDC issuer, fleet-callout, per-device machine keys.

    Tokens live ``FLEET_TEST_TOKEN_LIFETIME_S`` seconds (default 30) so rollovers happen
    during the tests.
    """
    lifetime = int(os.environ.get("FLEET_TEST_TOKEN_LIFETIME_S", "30"))
    yield from _shared(tmp_path_factory, "callout", token_lifetime_s=lifetime)


@pytest.fixture
async def fleet_callout_stack(fleet_callout_server: SharedServer) -> AsyncIterator[LocalStack]:
    stack = fleet_callout_server.stack()
    try:
        yield stack
    finally:
        await stack.down()


@pytest.fixture
async def fleet_stack(fleet_server: SharedServer) -> AsyncIterator[LocalStack]:
    stack = fleet_server.stack()
    try:
        yield stack
    finally:
        await stack.down()


_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def unique_device_id(hint: str) -> str:
    """A DNS-1123 label made from ``hint`` plus random hex; never reused."""
    stem = _NOT_DNS.sub("-", hint.lower()).strip("-")[:40].strip("-") or "dev"
    return f"{stem}-{secrets.token_hex(4)}"


@pytest.fixture
def device_id(request: pytest.FixtureRequest) -> str:
    name = request.node.name.removeprefix("test_")
    return unique_device_id(name)


@pytest.fixture
async def admin_nc(fleet_stack: LocalStack) -> AsyncIterator[NatsClient]:
    nc = await fleet_stack.admin_connect("pytest-admin")
    try:
        yield nc
    finally:
        await drain(nc)


@pytest.fixture
def fleet_client(admin_nc: NatsClient) -> FleetCommandsClient:
    return FleetCommandsClient(admin_nc, timeout=5.0)


@pytest.fixture(scope="session")
def fleet_image() -> str:
    """The local busybox image (built once; podman is required, see scripts/setup.sh)."""
    from harmony_fleet.localstack.images import build_busybox_image

    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run scripts/setup.sh")
    return build_busybox_image()
