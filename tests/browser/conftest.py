"""Browser tests of the dashboard: Playwright (PyPI) driving Debian's chromium, never a
downloaded browser (``/usr/bin/chromium``; ``scripts/setup.sh`` installs it).

One browser per test module (see ``chromium``); each test gets a fresh context whose init
script (Playwright's, not the page's) records every ``securitypolicyviolation`` event, and
whose pages record console errors and failed requests. Screenshots go to ``$FLEET_BROWSER_ARTIFACTS`` (default
``tests/output/browser/``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("FLEET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get(
    "FLEET_BROWSER_ARTIFACTS", Path(__file__).resolve().parents[1] / "output" / "browser"))
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
       "frame-ancestors 'none'")

#: Playwright's init script: runs before any script of the page, in every frame.
RECORD_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', function (e) {
  var v = {directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile,
           line: e.lineNumber, sample: e.sample, page: location.href};
  window.__cspViolations.push(v);
  if (window.reportCspViolation) { window.reportCspViolation(v); }
});
"""


@dataclass
class Recorder:
    """What went wrong in the browser while a test ran."""

    console_errors: list[str] = field(default_factory=list)
    csp_violations: list[dict[str, Any]] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.csp_violations == [], f"CSP violations: {self.csp_violations}"
        assert self.console_errors == [], f"console errors: {self.console_errors}"
        assert self.failed_requests == [], f"failed requests: {self.failed_requests}"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One browser per module: while Playwright's sync API runs, its event loop is the
    thread's running loop, which would break every asyncio test (and asyncio.run) after it;
    it is cleared when Playwright stops. Fixtures that need asyncio are set up first."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Browsing:
    page: Any
    recorder: Recorder
    base: str
    shots: Path

    def goto(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        assert response is not None
        assert response.status == 200, f"{path}: HTTP {response.status}"
        assert response.headers.get("content-security-policy") == CSP, path
        assert response.headers.get("x-content-type-options") == "nosniff", path
        return response

    def wait_until(self, expression: str, timeout: float = 10.0) -> None:
        """Poll a JS expression from here (``page.wait_for_function`` polls with eval inside
        the page, which this CSP refuses, as it should)."""
        deadline = time.monotonic() + timeout
        while not self.page.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"never true within {timeout}s: {expression}")
            self.page.wait_for_timeout(100)

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def open_browsing(chromium: Any, base: str, shots: Path) -> tuple[Any, Browsing]:
    shutil.rmtree(shots, ignore_errors=True)  # this run's screenshots only
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    recorder = Recorder()
    # a Python function, not a builtin method: Playwright wraps what it is given
    context.expose_function("reportCspViolation",
                            lambda v: recorder.csp_violations.append(v))  # noqa: PLW0108
    context.add_init_script(RECORD_CSP)
    page = context.new_page()
    page.on("console", lambda m: recorder.console_errors.append(f"{m.location}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: recorder.console_errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: None if r.failure in ("net::ERR_ABORTED",) else
            recorder.failed_requests.append(f"{r.method} {r.url}: {r.failure}"))
    return context, Browsing(page, recorder, base, shots)


@dataclass
class Dashboard:
    url: str
    process: subprocess.Popen[str]
    log_file: Path


def start_dashboard(args: list[str], log_file: Path,
                    env: dict[str, str | None] | None = None) -> Dashboard:
    """``fleet dashboard ARGS --listen 127.0.0.1:0`` as users run it; returns once it says
    where it listens. ``env`` adds variables (None: removes one)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, **(env or {})}
    environment = {k: v for k, v in environment.items() if v is not None}
    errors = log_file.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "harmony_fleet.cli", "dashboard", "--listen", "127.0.0.1:0",
         *args], stdout=subprocess.PIPE, stderr=errors, text=True,
        env=environment)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
    if match is None:
        process.kill()
        raise AssertionError(f"the dashboard did not start: {line!r}; "
                             f"{log_file.read_text()}")
    return Dashboard(match.group(1), process, log_file)


def stop_dashboard(dashboard: Dashboard) -> None:
    dashboard.process.terminate()
    try:
        dashboard.process.wait(10)
    except subprocess.TimeoutExpired:
        dashboard.process.kill()
        dashboard.process.wait()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def mock_dashboard(artifacts: Path) -> Iterator[Dashboard]:
    dashboard = start_dashboard(["--mock", "--page-size", "20"], artifacts / "mock-dashboard.log")
    try:
        yield dashboard
    finally:
        stop_dashboard(dashboard)

