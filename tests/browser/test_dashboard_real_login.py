"""The dashboard's login against the REAL local issuer (harmony_fleet.localstack.issuer, the
Zitadel stand-in of the local stack), in a real browser: a human user with the fleet-admin
role and a public web client registered through the issuer's management API, the issuer's
own login form filled in, the authorization code with PKCE exchanged, and the fleet shown;
a user without an allowed role refused with the reason; Log out through end_session."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harmony_fleet.contracts.identity import ADMIN_ROLE, DEVICE_ROLE
from harmony_fleet.localstack.issuer_admin import IssuerAdmin
from harmony_fleet.localstack.nats_server import free_port
from harmony_fleet_harness.pytest_plugin import SharedServer, unique_device_id

from .conftest import CSP, Browsing, Dashboard, open_browsing, start_dashboard, stop_dashboard

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


@dataclass
class RealLogin:
    dashboard: Dashboard
    issuer_url: str
    admin_user: str
    other_user: str
    password: str
    device: str


@pytest.fixture(scope="module")
def real_login(fleet_callout_server: SharedServer, artifacts: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealLogin]:
    issuer = fleet_callout_server.services.issuer
    assert issuer is not None
    admin = IssuerAdmin(issuer.url, issuer.admin_key_file, issuer.project_id)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    suffix = secrets.token_hex(4)
    client = admin.create_web_client(f"dashboard-test-{suffix}", [f"{base}/auth/callback"],
                                     post_logout_redirect_uris=[f"{base}/"])
    password = secrets.token_urlsafe(16)
    admin_user, other_user = f"ops-{suffix}", f"guest-{suffix}"
    admin.create_human_user(admin_user, password, [ADMIN_ROLE], email=f"{admin_user}@fleet.local")
    admin.create_human_user(other_user, password, [DEVICE_ROLE])
    state = tmp_path_factory.mktemp("real-login-state")
    (state / "stack.json").write_text(json.dumps(
        {"connection": fleet_callout_server.stack().admin_connection()}))
    (state / "stack.json").chmod(0o600)
    config = state / "dashboard.toml"
    config.write_text(
        f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'
        f'[dashboard.oidc]\nissuer = "{issuer.url}"\nclient_id = "{client.client_id}"\n'
        f'project_id = "{issuer.project_id}"\n')
    stack = fleet_callout_server.stack()  # one device to ping while logged in
    device = unique_device_id("dashboard-login")
    asyncio.run(stack.add_device(device, mode="subprocess"))
    dashboard = start_dashboard(["--config", str(config), "--listen", f"127.0.0.1:{port}"],
                                artifacts / "real-login-dashboard.log",
                                env={"FLEET_STATE_DIR": str(state),
                                     "FLEET_CONNECTION_FILE": None, "FLEET_NATS_URL": None})
    try:
        yield RealLogin(dashboard, issuer.url, admin_user, other_user, password, device)
    finally:
        stop_dashboard(dashboard)
        asyncio.run(stack.down())


@pytest.fixture
def browsing(real_login: RealLogin, chromium: Any, artifacts: Path,
             request: pytest.FixtureRequest) -> Iterator[Browsing]:
    context, browsing = open_browsing(chromium, real_login.dashboard.url,
                                      artifacts / "real-login" / request.node.name)
    try:
        yield browsing
        # the issuer's own pages are not the dashboard's: its favicon 404 is not ours
        browsing.recorder.console_errors = [
            e for e in browsing.recorder.console_errors
            if not (real_login.issuer_url in e and "favicon.ico" in e)]
        browsing.recorder.assert_clean()
    finally:
        context.close()


def _sign_in(browsing: Browsing, login: RealLogin, user: str) -> None:
    page = browsing.page
    page.wait_for_url(re.compile(re.escape(login.issuer_url) + r"/ui/login/login\?"))
    browsing.shot(f"issuer-login-form-{user.split('-', maxsplit=1)[0]}")
    page.fill("#username", user)
    page.fill("#password", login.password)
    page.click("button[type=submit]")


def test_login_at_the_real_issuer_then_log_out(browsing: Browsing,
                                               real_login: RealLogin) -> None:
    page = browsing.page
    page.goto(browsing.base + "/devices?online=online")
    _sign_in(browsing, real_login, real_login.admin_user)
    page.wait_for_url(browsing.base + "/devices?online=online")
    assert page.locator(".sidebar .user").inner_text() in (
        real_login.admin_user, f"{real_login.admin_user}@fleet.local")
    assert page.locator("h1").inner_text() == "Devices"
    cookie = next(c for c in page.context.cookies() if c["name"] == "fleet_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax"  # sent on the issuer's redirect back, not on POSTs
    response = browsing.goto("/")  # checks the CSP and the other headers
    assert response.headers["content-security-policy"] == CSP
    browsing.shot("logged-in-overview")
    # a logged-in session pings (the POST carries the session's CSRF token)
    browsing.goto(f"/devices/{real_login.device}")
    page.click("#ping-button")
    page.wait_for_selector("#ping-output.ok")
    page.click("text=Log out")
    page.wait_for_url(re.compile(re.escape(browsing.base) + r"/(login.*|\?.*)?$|"
                                 + re.escape(real_login.issuer_url) + ".*"))
    # logged out: the dashboard sends the browser to the issuer's login again
    page.goto(browsing.base + "/deployments")
    page.wait_for_url(re.compile(re.escape(real_login.issuer_url) + r"/ui/login/login\?"))


def test_a_user_without_an_allowed_role_is_refused(browsing: Browsing,
                                                   real_login: RealLogin) -> None:
    page = browsing.page
    page.goto(browsing.base + "/")
    with page.expect_response(re.compile(re.escape(browsing.base) + "/auth/callback")) as got:
        _sign_in(browsing, real_login, real_login.other_user)
    assert got.value.status == 403
    page.wait_for_selector(".error-message")
    text = page.locator(".error-message").inner_text()
    assert "may not use the dashboard" in text
    assert ADMIN_ROLE in text
    browsing.shot("refused")
    browsing.recorder.console_errors = [e for e in browsing.recorder.console_errors
                                        if "403 (Forbidden)" not in e]  # the refusal itself
