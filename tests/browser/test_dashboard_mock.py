"""``fleet dashboard --mock`` in a real browser: every page, link and control, under the
production CSP, with zero console errors and zero CSP violations. Each test also covers one of
the original dashboard's failures (../shared/reference/original-dashboard-csp-commit.txt)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Browsing, Dashboard, open_browsing
from .crawl import crawl

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


@pytest.fixture
def browsing(chromium: Any, mock_dashboard: Dashboard, artifacts: Path,
             request: pytest.FixtureRequest) -> Iterator[Browsing]:
    context, browsing = open_browsing(chromium, mock_dashboard.url,
                                      artifacts / "mock" / request.node.name)
    try:
        yield browsing
        browsing.recorder.assert_clean()
    finally:
        context.close()


def test_every_page_and_link_in_mock_mode_says_mock_and_is_clean(browsing: Browsing) -> None:
    def says_mock(path: str) -> None:
        banner = browsing.page.locator("#mock-banner")
        assert banner.count() == 1, path
        assert "MOCK DATA" in banner.inner_text(), path
        assert "mock" in browsing.page.title().lower(), path

    result = crawl(browsing, skip=("/devices/",), per_kind=4, check=says_mock)
    detail = crawl(browsing, start="/devices/" + _first_device(browsing), per_kind=2,
                   check=says_mock)
    print(f"crawled {len(result.pages) + len(detail.pages)} pages")
    assert len(result.pages) + len(detail.pages) >= 12


def _first_device(browsing: Browsing) -> str:
    browsing.goto("/devices")
    return str(browsing.page.locator("tr.device-row").first.get_attribute("data-device"))


def test_filters_on_the_server_with_dropdowns_and_pages(browsing: Browsing) -> None:
    """Original failure: filter drop-downs used onchange= (dead under the CSP)."""
    page = browsing.page
    browsing.goto("/devices")
    total = int(re.search(r"of (\d+) devices", page.locator(".count").inner_text())[1])
    assert page.locator("tr.device-row").count() == 20  # the page size, not the fleet
    page.select_option("#filter-online", "offline")
    page.wait_for_url(re.compile(r"online=offline"))
    browsing.wait_until("document.querySelectorAll('tr.device-row .pill.ok').length === 0")
    offline_rows = page.locator("tr.device-row")
    assert 0 < offline_rows.count() < total
    assert all(t == "offline" for t in page.locator("tr.device-row td:nth-child(2)").all_inner_texts())
    browsing.shot("devices-offline")
    page.select_option("#filter-online", "any")
    page.select_option("#filter-label", "site=lab")
    page.wait_for_url(re.compile(r"label=site%3Dlab"))
    browsing.wait_until("[...document.querySelectorAll('tr.device-row')]"
                        ".every(r => r.textContent.includes('site=lab'))")
    page.select_option("#filter-label", "")
    browsing.wait_until("document.querySelector('.pager') !== null")
    page.click("a[rel=next]")
    page.wait_for_url(re.compile(r"page=2"))
    assert "page 2 of" in page.locator(".pager").inner_text()
    assert page.locator("nav.sidebar").count() == 1
    # the filter form's own button submits too (no script needed)
    page.fill("input[name=q]", "lab-")
    page.click("#device-filters button[type=submit]")
    page.wait_for_url(re.compile(r"q=lab-"))
    browsing.wait_until("[...document.querySelectorAll('tr.device-row')]"
                        ".every(r => r.dataset.device.includes('lab-'))")
    # back through history: htmx keeps no snapshot, so the browser loads a whole page
    page.go_back()
    page.wait_for_selector("nav.sidebar", timeout=10_000)  # never there if a fragment came
    page.wait_for_load_state()
    assert page.locator("nav.sidebar").count() == 1
    assert page.locator("h1").inner_text() == "Devices"


def test_attention_row_opens_the_device_once(browsing: Browsing) -> None:
    """Original failure: the sidebar doubled when a device was opened from the overview."""
    page = browsing.page
    browsing.goto("/")
    link = page.locator("#offline-devices a").first
    device = link.inner_text()
    link.click()
    page.wait_for_url(re.compile(rf"/devices/{device}$"))
    assert page.locator("nav.sidebar").count() == 1
    assert page.locator("main").count() == 1
    assert page.locator("#device-state").inner_text() == "offline"
    browsing.shot("device-from-overview")
    browsing.goto("/")
    failed = page.locator("#failed-deployments tbody tr").first
    token_link = failed.locator("td:nth-child(2) a")
    token_link.click()
    page.wait_for_url(re.compile(r"/deployments/[a-z0-9_-]+$"))
    assert page.locator("nav.sidebar").count() == 1


def test_deployment_tabs_rerender_as_a_unit(browsing: Browsing) -> None:
    """Original failure: the Overview tab loaded the home page and the highlight stayed put."""
    page = browsing.page
    browsing.goto("/deployments/shop_web")

    def selected() -> list[str]:
        return [t.get_attribute("id") for t in page.locator("[role=tab][aria-selected=true]").all()]

    assert selected() == ["tab-devices"]
    page.click("#tab-spec")
    page.wait_for_selector("#tab-panel-spec")
    assert selected() == ["tab-spec"]
    assert "registry.example.net/shop/web" in page.locator("#score").inner_text()
    assert page.locator("h1").count() == 1
    assert page.locator("nav.sidebar").count() == 1
    page.click("#tab-status")
    page.wait_for_selector("#tab-panel-status")
    assert selected() == ["tab-status"]
    assert page.locator(".rollout progress").count() == 2  # batch and devices
    assert "batch 2 of" in page.locator(".rollout").first.inner_text()
    browsing.shot("deployment-status-tab")
    page.click("#tab-devices")
    page.wait_for_selector("#tab-panel-devices")
    assert selected() == ["tab-devices"]
    page.locator("#deployment-phases a", has_text="Running").click()
    page.wait_for_url(re.compile(r"phase=Running"))
    assert all(t.startswith("Running") for t in
               page.locator("#deployment-devices td:nth-child(3)").all_inner_texts())
    page.go_back()
    page.wait_for_selector("nav.sidebar", timeout=10_000)
    page.wait_for_selector("#tab-panel-devices")
    assert page.locator("nav.sidebar").count() == 1


def test_ping_in_mock_mode_answers_and_says_mock(browsing: Browsing) -> None:
    """Original failure: list buttons only opened the device (their handlers were dead)."""
    page = browsing.page
    browsing.goto("/devices?online=online")
    device = page.locator("tr.device-row").first.get_attribute("data-device")
    browsing.goto(f"/devices/{device}")
    page.click("#ping-button")
    page.wait_for_selector("#ping-output")
    text = page.locator("#ping-output").inner_text()
    assert re.match(rf"pong from {device} in \d+\.\d+ ms \(agent mock,", text), text
    browsing.goto("/devices?online=offline")
    device = page.locator("tr.device-row").first.get_attribute("data-device")
    browsing.goto(f"/devices/{device}")
    page.click("#ping-button")
    page.wait_for_selector("#ping-output.bad")
    assert page.locator("#ping-output").inner_text().startswith("DeviceOffline:")


def test_logs_open_stream_and_stop_in_mock_mode(browsing: Browsing) -> None:
    """Original failure: the logs pop-out did nothing (inline showModal was CSP-blocked)."""
    page = browsing.page
    browsing.goto("/devices?online=online")
    device = page.locator("tr.device-row").first.get_attribute("data-device")
    browsing.goto(f"/devices/{device}")
    page.click("#logs-button")
    page.wait_for_url(re.compile(rf"/devices/{device}/logs\?"))
    browsing.wait_until("document.getElementById('log-output').textContent.includes('line 6')")
    assert page.locator("#log-output").inner_text().startswith("[mock] ")
    assert page.locator("#log-status").inner_text() == "streaming (live)"
    page.click("#log-stop")
    assert page.locator("#log-status").inner_text() == "stopped"
    assert page.locator("#log-stop").is_disabled()
    browsing.shot("logs-stopped")


def test_the_csp_collector_sees_an_inline_script(browsing: Browsing) -> None:
    """The zero-violation assertions can fail: an inline script is reported."""
    browsing.goto("/")
    browsing.page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.x = 1';"
        " document.body.appendChild(s); }")
    browsing.wait_until("window.__cspViolations.length > 0")
    assert browsing.page.evaluate("window.x") is None  # it did not run
    assert browsing.recorder.csp_violations[0]["directive"].startswith("script-src")
    browsing.recorder.csp_violations.clear()
    browsing.recorder.console_errors.clear()  # chromium also logs the refusal
