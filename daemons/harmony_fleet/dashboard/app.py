"""The dashboard's aiohttp application: pages, fragments for HTMX, the ping action, live logs.

Routes (GET unless said)::

    /                                overview: counts, offline devices, failed deployments
    /devices                         devices, filtered and paged on the server
    /devices/{id}                    one device: info, deployments, ping, logs
    POST /devices/{id}/ping          ping it (CSRF): a fragment with the round trip or the error
    /devices/{id}/logs               a service's live logs (the page)
    /devices/{id}/logs/stream        the same as Server-Sent Events (the agent's logs verb)
    /deployments                     one row per deployment
    /deployments/{token}?tab=        per-device states | spec | status (tabs re-render as a unit)
    /login  /auth/callback  POST /logout   the OIDC login (see :mod:`.auth`)
    /healthz  /static/...

A request from HTMX names its target (``HX-Target``); only then is a fragment returned, and
responses say they vary by it, so neither a cache nor the back button shows a fragment as a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from http.cookies import SimpleCookie
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from pydantic import ValidationError

from harmony_fleet.bus import CommandError
from harmony_fleet.contracts import InvalidIdError, validate_deployment_token, validate_device_id
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.errors import InvalidInput

from . import views
from .auth import AuthError, OidcClient
from .config import DashboardSection
from .security import (
    CSRF_FIELD,
    CSRF_HEADER,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    Session,
    SessionStore,
    csrf_ok,
    host_allowed,
    same_origin,
)
from .source import DeviceCommands, FleetSource

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PACKAGE = "harmony_fleet.dashboard"
#: paths served without a login
PUBLIC_PREFIXES = ("/static/", "/healthz", "/login", "/auth/callback")
LOG_STREAMS_PER_SESSION = 4
DEFAULT_TAIL = 200
KEEPALIVE_S = 15.0

#: where the guard keeps the request's session (aiohttp 3.12+ has typed request keys)
SESSION_KEY: Any = web.RequestKey("fleet_session", Session) if hasattr(web, "RequestKey") \
    else "fleet_session"
NEW_SESSION_KEY: Any = web.RequestKey("fleet_new_session", bool) if hasattr(web, "RequestKey") \
    else "fleet_new_session"


def _session(request: web.Request) -> Session:
    """The session the guard attached to ``request``."""
    session = request[SESSION_KEY]
    assert isinstance(session, Session)
    return session


def _static_dir() -> Path:
    return Path(str(resources.files(PACKAGE) / "static"))


class Dashboard:
    """One dashboard: a source to read the fleet from, a way to reach devices, settings."""

    def __init__(self, settings: DashboardSection, source: FleetSource,
                 commands: DeviceCommands, *, mock: bool = False,
                 oidc: OidcClient | None = None) -> None:
        self.settings = settings
        self.source = source
        self.commands = commands
        self.mock = mock
        self.oidc = oidc
        if settings.auth == "oidc" and oidc is None:
            raise ValueError("auth is oidc but no OIDC client was given")
        ttl = settings.oidc.session_ttl_s if settings.oidc else 12 * 3600
        self.sessions = SessionStore(ttl_s=ttl)
        self.allowed_hosts: frozenset[str] | None = None  # set by serve() once bound
        self.origin = settings.base_url()
        self.secure_cookies = self.origin.startswith("https://")
        self.offline_after = timedelta(seconds=settings.offline_after_s)
        self.log_streams = 0
        self._cache: dict[str, tuple[float, Any]] = {}
        self._static_versions = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in _static_dir().rglob("*") if p.is_file()}
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader(PACKAGE, "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)
        self.env.globals.update(static=self._static_url, phases=views.PHASES,
                                deployment_label=views.deployment_label)
        self.env.filters["urlquote"] = lambda value: quote(str(value), safe="")

    def _cached(self, name: str, ttl_s: float, compute: Callable[[], Any],
                valid: Callable[[Any], bool] = lambda _value: True) -> Any:
        """``compute()``, reused for ``ttl_s`` while ``valid(value)``: what is costly at
        10,000 devices and changes slowly (the sorted ids, the label pairs, per-deployment
        counts) is at most that old."""
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < ttl_s and valid(hit[1]):
            return hit[1]
        value = compute()
        self._cache[name] = (now, value)
        return value

    def _device_order(self, snapshot: views.FleetSnapshot) -> list[str]:
        infos = snapshot.infos
        order: list[str] = self._cached("order", 2.0, lambda: sorted(infos),
                                        lambda cached: len(cached) == len(infos))
        return order

    def _index(self, snapshot: views.FleetSnapshot, token: str | None = None
               ) -> views.DeploymentIndex:
        index: views.DeploymentIndex = self._cached(
            "index", 1.0, lambda: views.deployment_index(snapshot),
            lambda cached: token is None or token in cached)
        return index

    def _static_url(self, name: str) -> str:
        version = self._static_versions.get(Path(name).name, "0")
        return f"/static/{name}?v={version}"

    # ---- the application ---------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard, self._errors],
                              client_max_size=64 * 1024)
        app.on_response_prepare.append(self._headers)
        r = app.router
        r.add_get("/", self.overview)
        r.add_get("/devices", self.devices)
        r.add_get("/devices/{device}", self.device)
        r.add_post("/devices/{device}/ping", self.ping)
        r.add_get("/devices/{device}/logs", self.logs_page)
        r.add_get("/devices/{device}/logs/stream", self.logs_stream)
        r.add_get("/deployments", self.deployments)
        r.add_get("/deployments/{token}", self.deployment)
        r.add_get("/healthz", self.healthz)
        r.add_get("/login", self.login)
        r.add_get("/auth/callback", self.callback)
        r.add_post("/logout", self.logout)
        r.add_static("/static", _static_dir(), follow_symlinks=False)
        return app

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every response, whatever produced it (a page, a file, an error, a stream)."""
        response.headers.update(SECURITY_HEADERS)
        if request.get(NEW_SESSION_KEY) and not any(
                v.startswith(f"{SESSION_COOKIE}=") for v in response.headers.getall(
                    "Set-Cookie", [])):
            # a session made for this request, whatever the response (streams included);
            # the cookies of a response are already headers when this hook runs
            response.headers.add("Set-Cookie", self._cookie(_session(request).id))
        if self.secure_cookies:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        if request.path.startswith("/static/") and response.status == 200:
            response.headers["Cache-Control"] = "public, max-age=86400"
        else:
            response.headers["Cache-Control"] = "no-store"
        response.headers["Vary"] = "HX-Request, HX-Target, Cookie"

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Host check, session, login (when auth is on), CSRF on every POST."""
        if self.allowed_hosts is not None and not host_allowed(request.host, self.allowed_hosts):
            return web.Response(status=421, text="misdirected request: unknown Host\n")
        if request.path.startswith("/static/") or request.path == "/healthz":
            return await handler(request)
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        fresh = session is None
        if session is None:
            session = self.sessions.new()
        request[SESSION_KEY] = session  # read back with _session()
        request[NEW_SESSION_KEY] = fresh
        if request.method == "POST":
            form = await request.post() if request.content_type in (
                "application/x-www-form-urlencoded", "multipart/form-data") else {}
            supplied = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
            if not same_origin(request.headers, self.origin_of(request)) or \
                    not csrf_ok(session, supplied if isinstance(supplied, str) else None):
                response: web.StreamResponse = web.Response(
                    status=403, text="refused: the request is not from this dashboard "
                                     "(CSRF token missing or wrong, or another origin)\n")
                self._set_cookie(response, session, fresh)
                return response
        if self.settings.auth == "oidc" and not session.authenticated and \
                not request.path.startswith(PUBLIC_PREFIXES):
            login = f"/login?{urlencode({'next': request.path_qs})}"
            if request.headers.get("HX-Request") == "true" or request.method != "GET" or \
                    request.path.endswith("/stream"):
                response = web.Response(status=401, text="log in first\n",
                                        headers={"HX-Redirect": login})
                self._set_cookie(response, session, fresh)
                return response
            redirect = web.HTTPFound(login)
            self._set_cookie(redirect, session, fresh)
            raise redirect
        return await handler(request)

    def origin_of(self, request: web.Request) -> str:
        """This dashboard's origin as the browser sees it."""
        if self.settings.external_url:
            return self.origin
        return f"{request.scheme}://{request.host}"

    def _cookie(self, value: str) -> str:
        cookie: SimpleCookie = SimpleCookie()
        cookie[SESSION_COOKIE] = value
        morsel = cookie[SESSION_COOKIE]
        morsel["httponly"], morsel["samesite"], morsel["path"] = True, "Lax", "/"
        if self.secure_cookies:
            morsel["secure"] = True
        return morsel.OutputString()

    def _set_cookie(self, response: web.StreamResponse, session: Session, fresh: bool) -> None:
        """A new session's cookie (HttpOnly: no script reads it; Lax: sent on the issuer's
        redirect back, not on another site's POST)."""
        if fresh and SESSION_COOKIE not in response.cookies:
            response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="Lax",
                                secure=self.secure_cookies, path="/")

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except views.NotFound as exc:
            return self.render(request, "error.html", status=404, title="Not found",
                               message=str(exc))
        except InvalidInput as exc:
            return self.render(request, "error.html", status=400, title="Bad request",
                               message=str(exc))
        except web.HTTPNotFound:
            return self.render(request, "error.html", status=404, title="Not found",
                               message=f"nothing at {request.path}")
        except AuthError as exc:
            return self.render(request, "error.html", status=exc.status, title="Login failed",
                               message=str(exc))

    # ---- rendering ---------------------------------------------------------------------
    def render(self, request: web.Request, template: str, *, status: int = 200,
               **context: Any) -> web.Response:
        session = request.get(SESSION_KEY)
        page = self.env.get_template(template).render(
            mock=self.mock, auth_off=self.settings.auth == "off", session=session,
            csrf=session.csrf if session else "", source=self.source.label,
            nav=context.pop("nav", ""), **context)
        return web.Response(text=page, status=status, content_type="text/html",
                            charset="utf-8")

    @staticmethod
    def fragment_for(request: web.Request, target: str) -> bool:
        """HTMX asks for ``target`` (and is not restoring history, which needs a page)."""
        return (request.headers.get("HX-Request") == "true"
                and request.headers.get("HX-History-Restore-Request") != "true"
                and request.headers.get("HX-Target") == target)

    # ---- pages -------------------------------------------------------------------------
    async def overview(self, request: web.Request) -> web.Response:
        snapshot = self.source.snapshot()
        model = views.overview(snapshot, now=utcnow(), offline_after=self.offline_after)
        return self.render(request, "overview.html", nav="overview", model=model,
                           ready=snapshot.ready)

    async def devices(self, request: web.Request) -> web.Response:
        query = views.DeviceQuery.parse(request.query, self.settings.page_size)
        snapshot = self.source.snapshot()
        labels = self._cached("labels", 10.0,
                              lambda: views.label_choices(snapshot.infos.values()))
        model = views.device_list(snapshot, query, now=utcnow(),
                                  offline_after=self.offline_after,
                                  order=self._device_order(snapshot), labels=labels)
        template = "_device_table.html" if self.fragment_for(request, "device-table") \
            else "devices.html"
        return self.render(request, template, nav="devices", model=model)

    async def device(self, request: web.Request) -> web.Response:
        model = views.device_detail(self.source.snapshot(), request.match_info["device"],
                                    now=utcnow(), offline_after=self.offline_after)
        return self.render(request, "device.html", nav="devices", model=model)

    async def ping(self, request: web.Request) -> web.Response:
        device = _device_id(request)
        started = time.perf_counter()
        try:
            reply = await self.commands.ping(device)
        except CommandError as exc:
            return self.render(request, "_ping.html", ok=False, error=type(exc).__name__,
                               message=str(exc), device=device)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return self.render(request, "_ping.html", ok=True, reply=reply, device=device,
                           elapsed_ms=f"{elapsed_ms:.2f}")

    def _log_target(self, request: web.Request) -> tuple[str, str, str, int]:
        device = _device_id(request)
        query = dict(request.query)
        if "target" in query:  # the device page's form: "<deployment>/<service>"
            query["deployment"], _sep, query["service"] = query.pop("target").partition("/")
        try:
            deployment = validate_deployment_token(query.get("deployment", ""))
        except InvalidIdError as exc:
            raise InvalidInput(f"deployment: {exc}") from None
        service = query.get("service", "")
        if not service or len(service) > 63 or not all(
                c.islower() or c.isdigit() or c == "-" for c in service):
            raise InvalidInput(f"service {service!r}: expected a DNS label")
        tail_text = query.get("tail") or str(DEFAULT_TAIL)
        if not tail_text.isdigit() or int(tail_text) > 10_000:
            raise InvalidInput(f"tail {tail_text!r}: expected 0 to 10000 lines")
        return device, deployment, service, int(tail_text)

    async def logs_page(self, request: web.Request) -> web.Response:
        device, deployment, service, tail = self._log_target(request)
        model = views.device_detail(self.source.snapshot(), device, now=utcnow(),
                                    offline_after=self.offline_after)
        stream = f"/devices/{quote(device)}/logs/stream?" + urlencode(
            {"deployment": deployment, "service": service, "tail": tail})
        return self.render(request, "logs.html", nav="devices", model=model,
                           deployment=deployment, service=service, tail=tail,
                           stream_url=stream)

    async def logs_stream(self, request: web.Request) -> web.StreamResponse:
        device, deployment, service, tail = self._log_target(request)
        session = _session(request)
        if self.log_streams >= self.settings.max_log_streams or \
                session.log_streams >= LOG_STREAMS_PER_SESSION:
            return web.Response(status=429, text="too many live log streams open\n")
        self.log_streams += 1
        session.log_streams += 1
        try:
            return await self._stream_logs(request, device, deployment, service, tail)
        finally:
            self.log_streams -= 1
            session.log_streams -= 1

    async def _stream_logs(self, request: web.Request, device: str, deployment: str,
                           service: str, tail: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=64)

        async def pump() -> None:
            try:
                async for text in self.commands.logs(device, deployment, service, tail=tail,
                                                     follow=True):
                    await queue.put(("chunk", {"text": text}))
                await queue.put(("end", {"message": "the stream ended (the container stopped "
                                                    "or the follow time is up)"}))
            except CommandError as exc:
                await queue.put(("failure", {"error": type(exc).__name__, "message": str(exc)}))
            except ValidationError as exc:
                await queue.put(("failure", {"error": "InvalidInput",
                                             "message": f"invalid logs request: {exc}"}))

        task = asyncio.create_task(pump(), name=f"logs-{device}-{deployment}-{service}")
        try:
            await _event(response, "open", {"device": device, "deployment": deployment,
                                            "service": service})
            while True:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")  # also notices a closed client
                    continue
                await _event(response, kind, data)
                if kind != "chunk":
                    break
        except (ConnectionResetError, ConnectionError):
            log.debug("log stream of %s/%s/%s: the browser went away", device, deployment,
                      service)
        finally:
            task.cancel()  # leaving the loop cancels the stream on the device
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return response

    async def deployments(self, request: web.Request) -> web.Response:
        query = views.DeploymentQuery.parse(request.query, self.settings.page_size)
        snapshot = self.source.snapshot()
        rows, page = views.deployment_list(snapshot, query, self._index(snapshot))
        template = "_deployment_table.html" if self.fragment_for(request, "deployment-table") \
            else "deployments.html"
        return self.render(request, template, nav="deployments", rows=rows, page=page,
                           query=query, kubernetes=snapshot.resources is not None)

    async def deployment(self, request: web.Request) -> web.Response:
        query = views.DeploymentQuery.parse(request.query, self.settings.page_size)
        snapshot, token = self.source.snapshot(), request.match_info["token"]
        model = views.deployment_detail(
            snapshot, token, request.query.get("tab") or "devices", query, now=utcnow(),
            offline_after=self.offline_after, index=self._index(snapshot, token))
        template = "_deployment_tabs.html" if self.fragment_for(request, "deployment-tabs") \
            else "deployment.html"
        return self.render(request, template, nav="deployments", model=model)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    # ---- login -------------------------------------------------------------------------
    async def login(self, request: web.Request) -> web.StreamResponse:
        session = _session(request)
        if self.oidc is None:
            raise web.HTTPFound("/")
        next_path = request.query.get("next", "/")
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/"  # never an open redirect
        url = await self.oidc.authorization_url(session, next_path,
                                                self.origin_of(request) + "/auth/callback")
        raise web.HTTPFound(url)

    async def callback(self, request: web.Request) -> web.StreamResponse:
        if self.oidc is None:
            raise web.HTTPFound("/")
        session = _session(request)
        next_path = await self.oidc.complete(session, request.query,
                                             self.origin_of(request) + "/auth/callback")
        fresh = self.sessions.rotate(session)
        response = web.HTTPFound(next_path)
        response.set_cookie(SESSION_COOKIE, fresh.id, httponly=True, samesite="Lax",
                            secure=self.secure_cookies, path="/")
        log.info("dashboard login: %s (roles %s)", fresh.name, ", ".join(sorted(fresh.roles)))
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = _session(request)
        self.sessions.drop(session)
        target = "/"
        if self.oidc is not None and session.id_token:
            target = await self.oidc.end_session_url(session.id_token, self.origin_of(request)
                                                     + "/") or "/"
        response = web.HTTPFound(target)
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response


def _device_id(request: web.Request) -> str:
    try:
        return validate_device_id(request.match_info["device"])
    except InvalidIdError as exc:
        raise views.NotFound(str(exc)) from None


async def _event(response: web.StreamResponse, kind: str, data: dict[str, Any]) -> None:
    """One Server-Sent Event; the data is JSON on one line (the text exactly, any character)."""
    await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
