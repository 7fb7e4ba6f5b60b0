"""The dashboard over real HTTP (aiohttp's test server on loopback, the mock fleet): headers on
every response, CSRF and origin checks on POSTs, the Host check, fragments only for HTMX,
escaping, limits. Each security claim is tested by making the attack."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from harmony_fleet.contracts import DeploymentState, Phase
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.dashboard.app import Dashboard
from harmony_fleet.dashboard.config import DashboardSection
from harmony_fleet.dashboard.mock import MockCommands, MockSource
from harmony_fleet.dashboard.security import CSP, SECURITY_HEADERS
from harmony_fleet.dashboard.server import allowed_hosts


class Served:
    def __init__(self, client: TestClient[Any, Any], dashboard: Dashboard,
                 source: MockSource) -> None:
        self.client, self.dashboard, self.source = client, dashboard, source
        self.origin = f"http://127.0.0.1:{client.server.port}"

    async def get(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.client.get(path, **kwargs)

    async def csrf(self, path: str = "/") -> str:
        page = await (await self.get(path)).text()
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match is not None
        return match.group(1)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    source = MockSource(30, seed=11)
    settings = DashboardSection(listen="127.0.0.1:0", auth="off", page_size=10)
    dashboard = Dashboard(settings, source, MockCommands(source), mock=True)
    client = TestClient(TestServer(dashboard.app(), host="127.0.0.1"))
    await client.start_server()
    dashboard.allowed_hosts = allowed_hosts(settings, "127.0.0.1", client.server.port or 0)
    try:
        yield Served(client, dashboard, source)
    finally:
        await client.close()


def _device(served: Served, online: bool = True) -> str:
    offline = served.source.offline
    return next(d for d in sorted(served.source.snapshot().infos) if (d in offline) != online)


def assert_secured(response: ClientResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.url, name)
    assert response.headers["Content-Security-Policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
        "frame-ancestors 'none'")


async def test_every_kind_of_response_carries_the_csp_and_security_headers(
        served: Served) -> None:
    device = _device(served)
    responses = [
        (await served.get("/"), 200), (await served.get("/devices?online=offline"), 200),
        (await served.get(f"/devices/{device}"), 200), (await served.get("/deployments"), 200),
        (await served.get("/deployments/shop_web?tab=status"), 200),
        (await served.get("/devices/no-such-device"), 404),
        (await served.get("/devices?page=zero"), 400), (await served.get("/nowhere"), 404),
        (await served.get("/static/app.js"), 200), (await served.get("/static/nope.js"), 404),
        (await served.get("/healthz"), 200),
        (await served.client.post(f"/devices/{device}/ping"), 403),
    ]
    stream = await served.get(f"/devices/{device}/logs/stream?deployment=shop_web&service=web",
                              timeout=5)
    responses.append((stream, stream.status))
    stream.close()
    for response, status in responses:
        assert response.status == status, response.url
        assert_secured(response)
    assert CSP.count("'self'") == 3
    assert "unsafe" not in CSP


class _InlineFinder(HTMLParser):
    """Everything the CSP would block: inline scripts, on* handlers, style attributes and
    elements, javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _v in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style> element")
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"{tag} {name}=")
            if name == "style":
                self.found.append(f"{tag} style=")
            if name.startswith("hx-on") or (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"{tag} {name}={value}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("inline script text")


async def test_no_page_holds_anything_the_csp_would_block(served: Served) -> None:
    """Original failure: inline scripts and handlers, silently dead under script-src 'self'."""
    device = _device(served)
    paths = ["/", "/devices", "/devices?online=offline", f"/devices/{device}",
             f"/devices/{device}/logs?deployment=shop_web&service=web", "/deployments",
             "/deployments?phase=Failed", "/nowhere"]
    paths += [f"/deployments/shop_web?tab={t}" for t in ("devices", "spec", "status")]
    for path in paths:
        finder = _InlineFinder()
        finder.feed(await (await served.get(path)).text())
        assert finder.found == [], path
    meta = re.search(r'<meta name="htmx-config" content=\'([^\']+)\'>',
                     await (await served.get("/")).text())
    assert meta is not None
    import json

    config = json.loads(meta.group(1))
    assert config["includeIndicatorStyles"] is False
    assert config["allowEval"] is False


async def test_ping_needs_the_sessions_csrf_token_and_the_same_origin(served: Served) -> None:
    device = _device(served)
    token = await served.csrf(f"/devices/{device}")
    path = f"/devices/{device}/ping"
    # no token, a wrong one, the right one from another origin: refused, nothing sent
    for data, headers in (({}, {}), ({"csrf_token": "guess"}, {}),
                          ({"csrf_token": token}, {"Origin": "http://evil.example"}),
                          ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"})):
        response = await served.client.post(path, data=data, headers=headers)
        assert response.status == 403, (data, headers)
        assert "refused" in await response.text()
    ok = await served.client.post(path, data={"csrf_token": token},
                                  headers={"Origin": served.origin})
    assert ok.status == 200
    assert f"pong from {device}" in await ok.text()
    via_header = await served.client.post(path, headers={"X-CSRF-Token": token})
    assert via_header.status == 200


async def test_another_sessions_token_does_not_work(served: Served) -> None:
    """A hostile client with its own valid session cannot use its token for someone else."""
    mine = await served.csrf(f"/devices/{_device(served)}")
    other = TestClient(served.client.server)  # a second browser: its own cookie jar
    try:
        response = await other.post(f"/devices/{_device(served)}/ping",
                                    data={"csrf_token": mine})
        assert response.status == 403
    finally:
        await other.close()


async def test_a_rebound_host_name_gets_nothing(served: Served) -> None:
    """DNS rebinding: evil.example resolving to 127.0.0.1 must not read a loopback dashboard."""
    port = served.client.server.port
    response = await served.get("/", headers={"Host": f"evil.example:{port}"})
    assert response.status == 421
    assert "fleet" not in (await response.text()).lower()
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert (await served.get("/", headers={"Host": host})).status == 200


async def test_fragments_only_for_htmx_and_never_for_history(served: Served) -> None:
    htmx = {"HX-Request": "true", "HX-Target": "device-table"}
    fragment = await (await served.get("/devices?page=2", headers=htmx)).text()
    assert fragment.lstrip().startswith('<section id="device-table"')
    assert "<html" not in fragment
    restore = await served.get("/devices?page=2",
                               headers={**htmx, "HX-History-Restore-Request": "true"})
    assert "<html" in await restore.text()
    # another target (or none) gets the page
    for headers in ({"HX-Request": "true", "HX-Target": "main"}, {}):
        response = await served.get("/devices", headers=headers)
        assert "<html" in await response.text()
        assert "HX-Target" in response.headers["Vary"]
    tabs = await (await served.get("/deployments/shop_web?tab=spec", headers={
        "HX-Request": "true", "HX-Target": "deployment-tabs"})).text()
    assert tabs.lstrip().startswith('<section id="deployment-tabs">')
    assert 'aria-selected="true" class="tab active">Spec' in tabs


async def test_the_session_cookie_is_httponly_and_lax(served: Served) -> None:
    response = await served.get("/")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert (await served.get("/devices")).headers.get("Set-Cookie") is None  # kept


async def test_text_from_devices_is_escaped(served: Served) -> None:
    device = _device(served)
    now = utcnow()
    hostile = DeploymentState(device_id=device, deployment="shop_evil", phase=Phase.FAILED,
                              message='<script src="//evil.example/x.js"></script>'
                                      '<img src=x onerror=alert(1)>',
                              since=now, updated_at=now)
    states = served.source.snapshot().states
    states[device]["shop_evil"] = hostile  # type: ignore[index]
    try:
        for path in ("/", f"/devices/{device}", "/deployments/shop_evil"):
            page = await (await served.get(path)).text()
            assert "&lt;script src=&#34;//evil.example/x.js&#34;&gt;" in page, path
            finder = _InlineFinder()
            finder.feed(page)
            assert finder.found == [], path
    finally:
        del states[device]["shop_evil"]  # type: ignore[attr-defined]


async def test_live_log_streams_are_limited_per_session(served: Served) -> None:
    device = _device(served)
    path = f"/devices/{device}/logs/stream?deployment=shop_web&service=web"
    await served.get("/")  # the session
    opened = [await served.get(path) for _n in range(4)]
    assert all(r.status == 200 for r in opened)
    refused = await served.get(path)
    assert refused.status == 429
    for response in opened:
        response.close()


async def test_logs_of_an_unknown_service_and_bad_parameters(served: Served) -> None:
    device = _device(served)
    stream = await served.get(f"/devices/{device}/logs/stream?deployment=shop_web&service=nope")
    body = await stream.text()
    assert "event: failure" in body
    assert "NotFound" in body
    for query in ("deployment=Bad_Token_&service=web", "deployment=shop_web&service=Web!",
                  "deployment=shop_web&service=web&tail=99999"):
        response = await served.get(f"/devices/{device}/logs?{query}")
        assert response.status == 400, query
    offline = _device(served, online=False)
    stream = await served.get(f"/devices/{offline}/logs/stream?deployment=shop_web&service=web")
    assert "DeviceOffline" in await stream.text()


@pytest.mark.parametrize(("document", "message"), [
    ({"listen": "0.0.0.0:18080", "auth": "off"}, "only listen on a loopback address"),
    ({"listen": "192.168.1.5:18080", "auth": "off"}, "only listen on a loopback address"),
    ({"listen": "0.0.0.0:18080"}, r"needs a \[dashboard.oidc\] section"),
    ({"listen": "18080", "auth": "off"}, "expected host:port"),
    ({"listen": "127.0.0.1:18080", "auth": "off", "external_url": "ftp://x"}, "external_url"),
])
def test_settings_refuse_an_open_dashboard_without_login(document: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DashboardSection.model_validate(document)


def test_settings_accept_loopback_without_login_and_any_address_with_it() -> None:
    for host in ("127.0.0.1", "localhost", "[::1]", "127.0.0.2"):
        DashboardSection.model_validate({"listen": f"{host}:18080", "auth": "off"})
    DashboardSection.model_validate({"listen": "0.0.0.0:18080", "oidc": {
        "issuer": "https://zitadel.example.net", "client_id": "dashboard"}})
    assert DashboardSection().listen is None  # no listener unless asked


def test_a_flood_of_cookieless_requests_logs_nobody_out() -> None:
    from harmony_fleet.dashboard.security import SessionStore

    store = SessionStore(ttl_s=60, capacity=100)
    anonymous = store.new()
    anonymous.user = "alice"
    alice = store.rotate(anonymous)
    assert store.get(anonymous.id) is None  # the pre-login id is gone
    for _n in range(1000):
        store.new()
    assert store.get(alice.id) is alice
    assert len(store) == 101
    assert store.get(alice.id, now=alice.expires + 1) is None  # expired
