"""The dashboard's OIDC login (authorization code + PKCE, allowed roles) over real HTTP.

``FakeCodeFlowIssuer`` (tests/unit/fake_oidc.py) is a TEST FAKE of the issuer's authorization
step (and the code exchange that goes with it) that can misbehave on demand. It approves a
configured user at once (no login form), and checks what a real issuer checks of the client:
the redirect URI, PKCE S256 and single-use codes. The login against the real local issuer is
tested in the browser (tests/browser/test_dashboard_real_login.py)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from aiohttp import ClientSession, CookieJar
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from harmony_fleet.dashboard.app import Dashboard
from harmony_fleet.dashboard.auth import OidcClient, pkce_pair
from harmony_fleet.dashboard.config import DashboardSection
from harmony_fleet.dashboard.mock import MockCommands, MockSource
from harmony_fleet.dashboard.server import allowed_hosts

from .fake_oidc import CLIENT_ID, PROJECT, FakeCodeFlowIssuer


@dataclass
class LoginSetup:
    issuer: FakeCodeFlowIssuer
    base: str
    http: ClientSession


@pytest.fixture
async def login() -> AsyncIterator[LoginSetup]:
    issuer = FakeCodeFlowIssuer()
    issuer_server = TestServer(issuer.app(), host="127.0.0.1")
    await issuer_server.start_server()
    issuer.url = f"http://127.0.0.1:{issuer_server.port}"
    settings = DashboardSection.model_validate({
        "listen": "127.0.0.1:0",
        "oidc": {"issuer": issuer.url, "client_id": CLIENT_ID, "project_id": PROJECT}})
    source = MockSource(10)
    assert settings.oidc is not None
    dashboard = Dashboard(settings, source, MockCommands(source), mock=True,
                          oidc=OidcClient(settings.oidc))
    server = TestServer(dashboard.app(), host="127.0.0.1")
    await server.start_server()
    dashboard.allowed_hosts = allowed_hosts(settings, "127.0.0.1", server.port or 0)
    http = ClientSession(cookie_jar=CookieJar(unsafe=True))
    try:
        yield LoginSetup(issuer, f"http://127.0.0.1:{server.port}", http)
    finally:
        await http.close()
        await server.close()
        await issuer_server.close()


async def _hop(http: ClientSession, url: str) -> tuple[int, str, str]:
    """One request without following redirects: (status, Location, body)."""
    async with http.get(url, allow_redirects=False) as response:
        return response.status, response.headers.get("Location", ""), await response.text()


async def _log_in(setup: LoginSetup, start: str = "/devices?online=offline"
                  ) -> tuple[int, str, str]:
    status, location, _body = await _hop(setup.http, setup.base + start)
    assert status == 302
    if location.startswith("/login?"):
        status, location, _body = await _hop(setup.http, setup.base + location)
    assert status == 302
    assert location.startswith(setup.issuer.url + "/oauth/v2/authorize?")
    status, location, _body = await _hop(setup.http, location)  # the issuer approves
    assert status == 302
    assert location.startswith(setup.base + "/auth/callback?")
    return await _hop(setup.http, location)


async def test_login_with_code_and_pkce_then_the_page_asked_for(login: LoginSetup) -> None:
    await _hop(login.http, login.base + "/")  # a session before the login
    before = {c.key: c.value for c in login.http.cookie_jar}
    status, location, _body = await _log_in(login)
    assert (status, location) == (302, "/devices?online=offline")
    request = login.issuer.authorize_requests[-1]
    assert request["code_challenge_method"] == "S256"
    assert len(request["code_challenge"]) == 43
    assert request["redirect_uri"] == login.base + "/auth/callback"
    assert f"urn:zitadel:iam:org:project:id:{PROJECT}:aud" in request["scope"].split()
    after = {c.key: c.value for c in login.http.cookie_jar}
    assert after["fleet_session"] != before["fleet_session"]  # a new session id after login
    status, _location, body = await _hop(login.http, login.base + "/")
    assert status == 200
    assert "alice" in body
    assert "Log out" in body
    assert "auth-off-banner" not in body


async def test_roles_only_in_the_access_token_are_read_from_it(login: LoginSetup) -> None:
    login.issuer.roles_in_id_token = False
    status, location, _body = await _log_in(login)
    assert (status, location) == (302, "/devices?online=offline")


async def test_a_user_without_an_allowed_role_gets_no_session(login: LoginSetup) -> None:
    login.issuer.roles = ["fleet-device"]
    status, _location, body = await _log_in(login)
    assert status == 403
    assert "may not use the dashboard" in body
    assert "fleet-admin" in body
    status, location, _body = await _hop(login.http, login.base + "/")
    assert status == 302
    assert location.startswith("/login")


async def test_a_callback_cannot_be_replayed_or_planted(login: LoginSetup) -> None:
    status, location, _b = await _hop(login.http, login.base + "/login?next=/")
    status, callback, _b = await _hop(login.http, location)
    assert (await _hop(login.http, callback))[0] == 302  # logged in
    # the same callback again: its state was used
    status, _location, body = await _hop(login.http, callback)
    assert status == 400
    assert "already used login state" in body
    # login CSRF: an attacker's own code and state, planted in a victim's browser
    victim = ClientSession(cookie_jar=CookieJar(unsafe=True))
    try:
        attacker = ClientSession(cookie_jar=CookieJar(unsafe=True))
        try:
            _s, location, _b = await _hop(attacker, login.base + "/login?next=/")
            _s, planted, _b = await _hop(attacker, location)
        finally:
            await attacker.close()
        status, _location, body = await _hop(victim, planted)
        assert status == 400
        status, location, _body = await _hop(victim, login.base + "/")
        assert location.startswith("/login")  # the victim is not logged in as the attacker
    finally:
        await victim.close()


async def test_an_error_from_the_issuer_is_shown(login: LoginSetup) -> None:
    _s, location, _b = await _hop(login.http, login.base + "/login?next=/")
    state = parse_qs(urlsplit(location).query)["state"][0]
    status, _location, body = await _hop(
        login.http, login.base + "/auth/callback?" + urlencode(
            {"error": "access_denied", "error_description": "<b>no</b>", "state": state}))
    assert status == 403
    assert "access_denied" in body
    assert "&lt;b&gt;no&lt;/b&gt;" in body


async def test_no_open_redirect_after_login(login: LoginSetup) -> None:
    status, location, _body = await _log_in(login, "/login?next=//evil.example/x")
    assert (status, location) == (302, "/")


async def test_unauthenticated_fragments_streams_and_posts_get_401(login: LoginSetup) -> None:
    async with login.http.get(login.base + "/devices", headers={"HX-Request": "true"},
                              allow_redirects=False) as response:
        assert response.status == 401
        assert response.headers["HX-Redirect"].startswith("/login")
    async with login.http.get(login.base + "/devices/a/logs/stream?deployment=x&service=y",
                              allow_redirects=False) as response:
        assert response.status == 401
    async with login.http.post(login.base + "/devices/a/ping", allow_redirects=False) as r:
        assert r.status == 403  # no CSRF token: refused before anything else


async def test_logout_ends_the_session_and_goes_to_the_issuer(login: LoginSetup) -> None:
    await _log_in(login)
    _s, _l, page = await _hop(login.http, login.base + "/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    async with login.http.post(login.base + "/logout", data={"csrf_token": token.group(1)},
                               allow_redirects=False) as response:
        assert response.status == 302
        target = response.headers["Location"]
    assert target.startswith(login.issuer.url + "/oidc/v1/end_session?")
    assert "id_token_hint=" in target
    status, location, _body = await _hop(login.http, login.base + "/")
    assert status == 302
    assert location.startswith("/login")


async def test_a_token_from_another_key_is_refused(login: LoginSetup) -> None:
    login.issuer.forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    status, _location, body = await _log_in(login)
    assert status == 403
    assert "does not verify" in body


def test_pkce_pair_is_rfc7636_s256() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert re.fullmatch(r"[A-Za-z0-9_-]+", verifier)
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert pkce_pair()[0] != verifier
