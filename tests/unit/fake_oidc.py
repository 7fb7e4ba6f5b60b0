"""``FakeCodeFlowIssuer``: a TEST FAKE of an OIDC issuer's authorization step (and the code
exchange and end-session that go with it), for the failure paths of the dashboard's login
that the real local issuer cannot be made to produce (roles only in the access token, tokens
signed by another key); the login against the real issuer is tested in the browser
(tests/browser/test_dashboard_real_login.py). The fake approves a configured user at once (no login form) and
checks what a real issuer checks of the client: the client id, the redirect URI, PKCE S256
and single-use codes. Its tokens are RS256 JWTs with Zitadel's roles claim.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from harmony_fleet.contracts.identity import ROLES_CLAIM

CLIENT_ID = "dashboard-web"
PROJECT = "fleet-project"


@dataclass
class FakeCodeFlowIssuer:
    """TEST FAKE: the authorization endpoint approves ``user`` (with ``roles``) at once."""

    user: str = "alice"
    roles: list[str] = field(default_factory=lambda: ["fleet-admin"])
    roles_in_id_token: bool = True
    #: signs tokens instead of ``key`` (which stays the one published): a forger's key
    forger: rsa.RSAPrivateKey | None = None
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(
        public_exponent=65537, key_size=2048))
    url: str = ""
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    exchanges: int = 0
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    ended: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/oauth/v2/keys", self.jwks)
        app.router.add_get("/oauth/v2/authorize", self.authorize)
        app.router.add_post("/oauth/v2/token", self.token)
        app.router.add_get("/oidc/v1/end_session", self.end_session)
        return app

    async def end_session(self, request: web.Request) -> web.Response:
        self.ended.append(dict(request.query))
        return web.Response(text='<!doctype html><link rel="icon" href="data:,">'
                                 "<p>signed out of the fake issuer</p>",
                            content_type="text/html")

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.url, "jwks_uri": f"{self.url}/oauth/v2/keys",
            "authorization_endpoint": f"{self.url}/oauth/v2/authorize",
            "token_endpoint": f"{self.url}/oauth/v2/token",
            "end_session_endpoint": f"{self.url}/oidc/v1/end_session",
            "code_challenge_methods_supported": ["S256"]})

    async def jwks(self, request: web.Request) -> web.Response:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]})

    async def authorize(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.authorize_requests.append(q)
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code" or \
                q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.Response(status=400, text="bad authorization request")
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": q["code_challenge"], "nonce": q.get("nonce", ""),
                            "redirect_uri": q["redirect_uri"]}
        raise web.HTTPFound(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}")

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.forger or self.key, algorithm="RS256",
                          headers={"kid": "k1"})

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = self.codes.pop(str(form.get("code")), None)  # single use
        if form.get("grant_type") != "authorization_code" or grant is None or \
                form.get("redirect_uri") != grant["redirect_uri"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
            .rstrip(b"=").decode()
        if challenge != grant["challenge"]:
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "PKCE verification failed"},
                                     status=400)
        self.exchanges += 1
        now = int(time.time())
        roles = {ROLES_CLAIM: {r: {"org": "fleet.local"} for r in self.roles}}
        id_claims = {"iss": self.url, "sub": "u-1", "aud": CLIENT_ID, "iat": now,
                     "exp": now + 300, "nonce": grant["nonce"],
                     "preferred_username": self.user}
        access = {"iss": self.url, "sub": "u-1", "aud": [PROJECT, CLIENT_ID], "iat": now,
                  "exp": now + 300, **roles}
        return web.json_response({
            "id_token": self.sign(id_claims | (roles if self.roles_in_id_token else {})),
            "access_token": self.sign(access), "token_type": "Bearer", "expires_in": 300})


class ThreadedServer:
    """An aiohttp application on 127.0.0.1 in a thread of its own (for tests whose main
    thread belongs to Playwright's synchronous API)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def __enter__(self) -> ThreadedServer:
        self._thread.start()

        async def start() -> int:
            self._runner = web.AppRunner(self._app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            return int(self._runner.addresses[0][1])

        self.port = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
