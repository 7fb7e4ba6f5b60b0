"""``fleet dashboard`` against the local stack (callout mode: the admin machine key, tokens
that roll over every 30 s) with real agents driving real podman, in a real browser.

Three agents: two run a workload whose first line is a random marker (so the logs shown are
the container's own, not made up) and one also holds a deployment its workload policy refuses
(a failed deployment for the attention list); the third runs no workloads and is killed to
see it go offline within the dashboard's threshold (``--offline-after 3``, heartbeats every
second)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harmony_fleet.bus import drain
from harmony_fleet.contracts import Phase
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet_harness.pytest_plugin import SharedServer, unique_device_id
from tests.integration.workloads import delete, put, service, wait_state

from .conftest import (
    Browsing,
    Dashboard,
    open_browsing,
    start_dashboard,
    stop_dashboard,
)
from .crawl import crawl

# the first test also waits for the session's stack, agents and workload to come up
pytestmark = [pytest.mark.browser, pytest.mark.podman, pytest.mark.timeout(300)]

OFFLINE_AFTER_S = 3.0
HEARTBEAT_S = 1


@dataclass
class LiveFleet:
    stack: LocalStack
    dashboard: Dashboard
    runner: str
    other: str
    idle: str
    marker: str


@pytest.fixture(scope="session")
def live_fleet(fleet_callout_server: SharedServer, fleet_image: str, artifacts: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFleet]:
    stack = fleet_callout_server.stack()
    runner, other, idle = (unique_device_id(f"dashboard-{n}") for n in ("run", "other", "idle"))
    marker = f"dashboard-marker-{secrets.token_hex(6)}"
    script = (f"trap 'exit 0' TERM; echo {marker}; i=0; "
              "while :; do i=$((i+1)); echo tick $i; sleep 1 & wait $!; done")
    fast = {"heartbeat_interval_s": HEARTBEAT_S}

    async def setup() -> None:
        await asyncio.gather(
            stack.add_device(runner, runtime_enabled=True, mode="subprocess",
                             labels={"site": "lab"}, agent=fast),
            stack.add_device(other, runtime_enabled=True, mode="subprocess",
                             labels={"site": "roof"}, agent=fast),
            stack.add_device(idle, runtime_enabled=False, mode="subprocess",
                             labels={"site": "lab"}, agent=fast))
        nc = await stack.admin_connect("dashboard-test-setup")
        try:
            for device in (runner, other):
                await put(nc, device, "dash_web", {"services": [
                    service("web", fleet_image, script)]})
            await put(nc, runner, "dash_bad", {"services": [service(
                "bad", fleet_image, volumes=[{"source": "/etc", "target": "/host-etc"}])]})
            for device in (runner, other):
                await wait_state(nc, device, "dash_web", Phase.RUNNING, timeout=90)
            await wait_state(nc, runner, "dash_bad", Phase.FAILED)
        finally:
            await drain(nc)

    async def teardown() -> None:
        nc = await stack.admin_connect("dashboard-test-teardown")
        try:
            for device, token in ((runner, "dash_web"), (other, "dash_web"),
                                  (runner, "dash_bad")):
                await delete(nc, device, token)
        finally:
            await drain(nc)
        await stack.down()

    # found as every fleet command finds the local stack: its state file (which names the
    # admin machine key), here in a state directory of the test's own
    state_dir = tmp_path_factory.mktemp("dashboard-state")
    try:
        asyncio.run(setup())
        state_file = state_dir / "stack.json"
        state_file.write_text(json.dumps({"connection": stack.admin_connection()}))
        state_file.chmod(0o600)
        dashboard = start_dashboard(
            ["--offline-after", str(OFFLINE_AFTER_S)], artifacts / "live-dashboard.log",
            env={"FLEET_STATE_DIR": str(state_dir), "FLEET_CONNECTION_FILE": None,
                 **dict.fromkeys(("FLEET_NATS_URL", "FLEET_NATS_USER", "FLEET_NATS_PASSWORD",
                                  "FLEET_NATS_TOKEN"))})
        try:
            yield LiveFleet(stack, dashboard, runner, other, idle, marker)
        finally:
            stop_dashboard(dashboard)
    finally:
        asyncio.run(teardown())


@pytest.fixture
def browsing(live_fleet: LiveFleet, chromium: Any, artifacts: Path,
             request: pytest.FixtureRequest) -> Iterator[Browsing]:
    context, browsing = open_browsing(chromium, live_fleet.dashboard.url,
                                      artifacts / "live" / request.node.name)
    try:
        yield browsing
        browsing.recorder.assert_clean()
    finally:
        context.close()


def test_every_page_and_link_against_the_local_stack(browsing: Browsing,
                                                     live_fleet: LiveFleet) -> None:
    page = browsing.page
    browsing.goto("/")
    assert page.locator("#mock-banner").count() == 0
    assert page.locator("#auth-off-banner").count() == 1
    # the devices of this test are among those the shared server knows
    browsing.goto(f"/devices?q={live_fleet.runner}")
    assert page.locator("tr.device-row").count() == 1
    result = crawl(browsing, start="/devices?q=dashboard-", per_kind=6)
    assert f"/devices/{live_fleet.runner}" in result.pages
    assert "/deployments/dash_web" in result.pages
    browsing.goto("/deployments/dash_web")
    rows = page.locator("#deployment-devices tbody tr")
    texts = rows.all_inner_texts()
    for device in (live_fleet.runner, live_fleet.other):
        line = next(t for t in texts if device in t)
        for word in ("Running", "applied", "online"):
            assert word in line, line
    browsing.shot("deployment-dash_web")


def test_failed_deployment_is_on_the_overview_with_its_reason(browsing: Browsing,
                                                              live_fleet: LiveFleet) -> None:
    page = browsing.page
    browsing.goto("/")
    browsing.shot("overview")
    row = page.locator("#failed-deployments tbody tr", has_text=live_fleet.runner)
    if row.count() == 0:  # other tests' failures fill the first rows: follow "every one"
        page.click("text=Every deployment with failures")
        page.wait_for_url(re.compile(r"/deployments\?phase=Failed"))
        page.locator("tr.deployment-row[data-deployment=dash_bad] a").click()
        page.wait_for_url(re.compile(r"/deployments/dash_bad"))
        row = page.locator("#deployment-devices tbody tr", has_text=live_fleet.runner)
    text = row.first.inner_text()
    assert "refused by this device's workload policy" in text
    assert "host path /etc is outside the allowed host paths" in text


def test_ping_shows_the_round_trip(browsing: Browsing, live_fleet: LiveFleet) -> None:
    page = browsing.page
    browsing.goto(f"/devices/{live_fleet.runner}")
    page.click("#ping-button")
    page.wait_for_selector("#ping-output")
    text = page.locator("#ping-output").inner_text()
    assert re.match(rf"pong from {live_fleet.runner} in \d+\.\d+ ms \(agent \d", text), text
    browsing.shot("ping")


def test_live_logs_show_the_containers_real_output(browsing: Browsing,
                                                   live_fleet: LiveFleet) -> None:
    """Original failure: the logs showed fabricated lines."""
    page = browsing.page
    device = live_fleet.runner
    browsing.goto(f"/devices/{device}")
    page.select_option("#logs-target", "dash_web/web")
    page.click("#logs-button")
    page.wait_for_url(re.compile(rf"/devices/{device}/logs\?"))
    browsing.wait_until(
        f"document.getElementById('log-output').textContent.includes('{live_fleet.marker}')",
        timeout=20)
    # what podman itself says the container printed
    podman = subprocess.run(["podman", "logs", f"{device}.dash_web.web"], capture_output=True,
                            text=True, check=True).stdout
    assert podman.splitlines()[0] == live_fleet.marker
    shown = page.locator("#log-output").inner_text()
    assert shown.splitlines()[0] == live_fleet.marker
    last = max(int(n) for n in re.findall(r"tick (\d+)", shown))
    # live: lines the container prints after the page opened arrive by themselves
    browsing.wait_until(
        f"document.getElementById('log-output').textContent.includes('tick {last + 2}\\n')",
        timeout=15)
    assert page.locator("#log-status").inner_text() == "streaming (live)"
    browsing.shot("live-logs")
    page.click("#log-stop")
    assert page.locator("#log-status").inner_text() == "stopped"


def test_logs_of_an_agent_without_a_runtime_say_why(browsing: Browsing,
                                                    live_fleet: LiveFleet) -> None:
    page = browsing.page
    browsing.goto(f"/devices/{live_fleet.idle}")
    assert page.locator("#logs-form").count() == 0  # nothing to show logs of
    browsing.goto(f"/devices/{live_fleet.idle}/logs?deployment=dash_web&service=web")
    browsing.wait_until("document.getElementById('log-status').className === 'bad'")
    status = page.locator("#log-status").inner_text()
    assert status.startswith("RemoteError: Unsupported"), status
    assert page.locator("#log-output").inner_text() == ""


def test_a_dead_device_is_shown_offline_within_the_threshold(
        browsing: Browsing, live_fleet: LiveFleet) -> None:
    page = browsing.page
    device = live_fleet.idle
    browsing.goto(f"/devices/{device}")
    assert page.locator("#device-state").inner_text() == "online"
    handle = live_fleet.stack.devices[device]
    assert handle.process is not None
    os.kill(handle.process.pid, signal.SIGKILL)  # gone without a word, as a device that loses power
    handle.process.wait()
    killed = time.monotonic()
    while page.locator("#device-state").inner_text() != "offline":
        elapsed = time.monotonic() - killed
        assert elapsed < OFFLINE_AFTER_S + HEARTBEAT_S + 3, "still online"
        page.wait_for_timeout(250)
        browsing.goto(f"/devices/{device}")
    elapsed = time.monotonic() - killed
    print(f"{device} shown offline {elapsed:.2f}s after its agent was killed "
          f"(threshold {OFFLINE_AFTER_S}s, heartbeat every {HEARTBEAT_S}s)")
    assert elapsed >= OFFLINE_AFTER_S - HEARTBEAT_S - 0.5  # not before the threshold
    browsing.shot("offline-device")
    browsing.goto("/devices?online=offline&q=dashboard-idle")
    assert device in page.locator("#device-table").inner_text()
    browsing.goto(f"/devices/{device}")
    page.click("#ping-button")
    page.wait_for_selector("#ping-output.bad")
    assert page.locator("#ping-output").inner_text().startswith("DeviceOffline:")
    browsing.goto(f"/devices/{device}/logs?deployment=dash_web&service=web")
    assert page.locator("#offline-note").count() == 1
    browsing.wait_until("document.getElementById('log-status').className === 'bad'")
    assert page.locator("#log-status").inner_text().startswith("DeviceOffline:")
