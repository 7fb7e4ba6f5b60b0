"""fleet-operator serves the dashboard when ``[dashboard] listen`` is set: the pages show the
Deployment resources and the status the operator writes (Kubernetes API emulator, a real
nats-server, simulated devices)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.config import ConfigError
from harmony_fleet.dashboard.config import DashboardSection
from harmony_fleet.dashboard.security import CSP
from harmony_fleet.localstack.nats_server import free_port
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet.operator.config import OperatorSection
from harmony_fleet.operator.kube import KubeTarget
from harmony_fleet.operator.main import OperatorConfig, run_operator
from harmony_fleet_harness.kube_emulator import RunningKubeEmulator, start_kube_emulator
from harmony_fleet_harness.pytest_plugin import unique_device_id
from harmony_fleet_harness.simulate import SimulatedFleet

from .test_operator import DEPLOYMENTS, deployment, eventually, score


@pytest.fixture
async def kube() -> AsyncIterator[RunningKubeEmulator]:
    async with start_kube_emulator() as running:
        yield running


async def test_the_operator_serves_the_dashboard_with_resources_and_status(
        fleet_stack: LocalStack, kube: RunningKubeEmulator, admin_nc: NatsClient) -> None:
    site = unique_device_id("dash")
    devices = {unique_device_id(f"od{i}"): {"site": site} for i in range(2)}
    fleet = SimulatedFleet(admin_nc, devices)
    await fleet.publish_info()
    await fleet.heartbeat()
    stop = asyncio.Event()
    runtime = asyncio.create_task(fleet.run_runtime(stop))
    port = free_port()
    config = OperatorConfig(
        nats=fleet_stack.admin_settings(), operator=OperatorSection(probe_listen=None),
        dashboard=DashboardSection(listen=f"127.0.0.1:{port}", auth="off"))
    operator = asyncio.create_task(run_operator(
        config, stop, target=KubeTarget(kube.url, insecure=True),
        settings=OperatorSection(identity="op-dash", replan_interval_s=2),
        kopf_tune={"watching.server_timeout": 30, "posting.enabled": False}))
    name = unique_device_id("web")
    token = f"shop_{name}"
    kube.emulator.create_object(DEPLOYMENTS, deployment(name, {"matchLabels": {"site": site}},
                                                        score()), namespace="shop")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def page(path: str) -> str:
                try:
                    async with http.get(base + path) as response:
                        assert response.headers["Content-Security-Policy"] == CSP
                        return await response.text() if response.status == 200 else ""
                except aiohttp.ClientConnectionError:
                    return ""  # not listening yet

            status = await eventually(
                lambda: _contains(page(f"/deployments/{token}?tab=status"), "matchedDeviceCount"),
                timeout=30)
            assert "Ready" in status
            assert "fleet-operator (NATS buckets and Kubernetes)" in status
            spec = await page(f"/deployments/{token}?tab=spec")
            assert "Deployment resource" in spec
            assert f"<dd>{name}</dd>" in spec
            devices_tab = await eventually(
                lambda: _contains(page(f"/deployments/{token}"), "Running"), timeout=20)
            for device in devices:
                assert device in devices_tab
            listing = await page("/deployments")
            assert token in listing
            assert "Rollout" in listing  # the column exists with Kubernetes
    finally:
        stop.set()
        await asyncio.wait_for(operator, 30)
        await runtime


async def _contains(text: asyncio.Future[str] | object, needle: str) -> str | None:
    value = await text  # type: ignore[misc]
    return value if needle in value else None


def test_an_operator_config_with_an_open_dashboard_without_login_is_refused(
        tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[dashboard]\nlisten = "0.0.0.0:18080"\nauth = "off"\n')
    with pytest.raises(ConfigError, match="only listen on a loopback address"):
        OperatorConfig.load(config)
    config.write_text('[dashboard]\nlisten = "127.0.0.1:18080"\nauth = "off"\n')
    assert OperatorConfig.load(config).dashboard.listen == "127.0.0.1:18080"
    config.write_text("")
    assert OperatorConfig.load(config).dashboard.listen is None
