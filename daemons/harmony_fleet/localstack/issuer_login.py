"""Humans logging in to web clients at the local issuer (what the dashboard's login needs), as
Zitadel serves it: the authorization code flow with PKCE.

* ``GET /oauth/v2/authorize``: ``response_type=code``, a registered ``client_id`` and an
  exactly registered ``redirect_uri``, ``scope`` with ``openid``, ``state``, optional
  ``nonce``, ``code_challenge`` with ``code_challenge_method=S256`` (nothing else). A bad
  client or redirect URI is answered here (never redirected to); other errors go back to the
  redirect URI as ``error``/``state``. Valid: a redirect to the login form.
* ``GET``/``POST /ui/login/login``: a server-rendered form (no script, no inline style, its
  own CSP); the right user name and password send the browser back to the client with a
  one-time ``code`` (60 s) and the ``state``. Five wrong passwords end the request.
* ``POST /oauth/v2/token`` with ``grant_type=authorization_code``: the code once, the same
  client (its secret if confidential), the same ``redirect_uri`` and the ``code_verifier``
  whose S256 is the challenge; the answer has an ``id_token`` (``aud`` = the client,
  ``nonce``, the roles claims when ``urn:zitadel:iam:org:projects:roles`` was asked for) and
  an access token.
* ``GET /oidc/v1/end_session``: back to a registered ``post_logout_redirect_uri`` (with
  ``state``), else a signed-out page. The issuer keeps no login session (every authorization
  asks for the password), so there is nothing else to end.

Codes and requests in progress live in memory: a restart ends logins in progress.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlencode, urlsplit

import jwt
from aiohttp import web

from .issuer import (
    MachineUser,
    Scopes,
    WebClient,
    _oauth_error,
    check_password,
)

if TYPE_CHECKING:
    from .issuer import OidcIssuer

REQUEST_TTL_S = 600
CODE_TTL_S = 60
MAX_PASSWORD_ATTEMPTS = 5
LOGIN_PATH = "/ui/login/login"
#: the login page's CSP: nothing but the form posting to this issuer (and the redirect after it)
LOGIN_CSP = "default-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store", "X-Frame-Options": "DENY"}


@dataclass
class AuthRequest:
    client_id: str
    redirect_uri: str
    scope: Scopes
    state: str
    nonce: str | None
    code_challenge: str
    created: float = field(default_factory=time.monotonic)
    failures: int = 0


@dataclass
class Code:
    request: AuthRequest
    user_id: str
    expires: float
    used: bool = False


def s256(verifier: str) -> str:
    """PKCE S256 (pure): base64url(sha256(verifier)) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()


def _with_query(uri: str, params: dict[str, str]) -> str:
    return f"{uri}{'&' if urlsplit(uri).query else '?'}{urlencode(params)}"


def _page(title: str, body: str, status: int = 200) -> web.Response:
    document = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(title)}</title></head><body>"
                f"<main><h1>{html.escape(title)}</h1>{body}</main></body></html>\n")
    return web.Response(text=document, content_type="text/html", status=status,
                        headers={"Content-Security-Policy": LOGIN_CSP, **SECURITY_HEADERS})


class Login:
    """The login flow's state and handlers for one issuer."""

    def __init__(self, issuer: OidcIssuer) -> None:
        self.issuer = issuer
        self.requests: dict[str, AuthRequest] = {}
        self.codes: dict[str, Code] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/oauth/v2/authorize", self.authorize)
        app.router.add_get(LOGIN_PATH, self.login_form)
        app.router.add_post(LOGIN_PATH, self.login)
        app.router.add_get("/oidc/v1/end_session", self.end_session)

    def _expire(self) -> None:
        now = time.monotonic()
        for rid in [r for r, req in self.requests.items() if now - req.created > REQUEST_TTL_S]:
            del self.requests[rid]
        for code in [c for c, v in self.codes.items() if v.expires < now - CODE_TTL_S]:
            del self.codes[code]

    # ---- authorize ----------------------------------------------------------------------
    async def authorize(self, request: web.Request) -> web.StreamResponse:
        self._expire()
        q = request.query
        client = self.issuer.clients.get(q.get("client_id", ""))
        redirect_uri = q.get("redirect_uri", "")
        if client is None:
            return _page("Unknown application", "<p>This application is not registered.</p>",
                         400)
        if redirect_uri not in client.redirect_uris:
            return _page("Unknown redirect URI",
                         "<p>The redirect URI is not registered for this application.</p>", 400)
        state = q.get("state", "")

        def back(error: str, description: str) -> web.HTTPFound:
            params = {"error": error, "error_description": description}
            if state:
                params["state"] = state
            return web.HTTPFound(_with_query(redirect_uri, params))

        if q.get("response_type") != "code":
            raise back("unsupported_response_type", "only response_type=code is served")
        scope = Scopes.parse(q.get("scope", ""))
        if not scope.openid:
            raise back("invalid_scope", "the scope must contain openid")
        if q.get("code_challenge_method") != "S256" or \
                len(q.get("code_challenge", "")) not in range(43, 129):
            raise back("invalid_request", "PKCE with code_challenge_method=S256 is required")
        if q.get("prompt") == "none":
            raise back("login_required", "the local issuer keeps no login session")
        request_id = secrets.token_urlsafe(24)
        self.requests[request_id] = AuthRequest(client.client_id, redirect_uri, scope, state,
                                                q.get("nonce"), q["code_challenge"])
        raise web.HTTPFound(f"{LOGIN_PATH}?{urlencode({'authRequestID': request_id})}")

    # ---- the login form -----------------------------------------------------------------
    def _form(self, request_id: str, auth: AuthRequest, message: str = "",
              status: int = 200, user_name: str = "") -> web.Response:
        client = self.issuer.clients[auth.client_id]
        alert = f'<p role="alert">{html.escape(message)}</p>' if message else ""
        body = (f"<p>Sign in to <strong>{html.escape(client.name)}</strong></p>{alert}"
                f'<form method="post" action="{LOGIN_PATH}">'
                f'<input type="hidden" name="authRequestID" value="{html.escape(request_id)}">'
                f'<p><label for="username">User name</label> '
                f'<input id="username" name="username" autocomplete="username" required '
                f'value="{html.escape(user_name)}"></p>'
                f'<p><label for="password">Password</label> '
                f'<input id="password" name="password" type="password" '
                f'autocomplete="current-password" required></p>'
                f'<p><button type="submit">Sign in</button></p></form>')
        response = _page("Sign in", body, status)
        # the form posts here, and the answer redirects to the client's registered URI
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(auth.redirect_uri))
        response.headers["Content-Security-Policy"] = f"{LOGIN_CSP} {origin}"
        return response

    async def login_form(self, request: web.Request) -> web.Response:
        self._expire()
        request_id = request.query.get("authRequestID", "")
        auth = self.requests.get(request_id)
        if auth is None:
            return _page("Sign-in expired", "<p>Start again from the application.</p>", 400)
        return self._form(request_id, auth)

    async def login(self, request: web.Request) -> web.StreamResponse:
        self._expire()
        form = await request.post()
        request_id = str(form.get("authRequestID", ""))
        auth = self.requests.get(request_id)
        if auth is None:
            return _page("Sign-in expired", "<p>Start again from the application.</p>", 400)
        user_name, password = str(form.get("username", "")), str(form.get("password", ""))
        user = self.issuer.find_user(user_name)
        ok = user is not None and user.human is not None and \
            check_password(password, user.human.password_hash)
        if not ok or user is None:
            auth.failures += 1
            if auth.failures >= MAX_PASSWORD_ATTEMPTS:
                del self.requests[request_id]
                return _page("Too many attempts", "<p>Start again from the application.</p>",
                             429)
            return self._form(request_id, auth, "Wrong user name or password.", 401,
                              user_name)
        del self.requests[request_id]
        code = secrets.token_urlsafe(32)
        self.codes[code] = Code(auth, user.user_id, time.monotonic() + CODE_TTL_S)
        params = {"code": code}
        if auth.state:
            params["state"] = auth.state
        raise web.HTTPSeeOther(_with_query(auth.redirect_uri, params))

    # ---- the code exchange --------------------------------------------------------------
    def _client(self, request: web.Request, form: Any) -> WebClient | None:
        """The authenticated client: HTTP Basic or form secret (confidential), else the
        form's client_id (public, with PKCE)."""
        client_id, secret = str(form.get("client_id", "")), form.get("client_secret")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:], validate=True).decode()
                basic_id, _colon, basic_secret = decoded.partition(":")
            except ValueError:
                return None
            client_id, secret = unquote_plus(basic_id), unquote_plus(basic_secret)
        client = self.issuer.clients.get(client_id)
        if client is None:
            return None
        if client.secret_hash is not None:
            if not isinstance(secret, str) or not check_password(secret, client.secret_hash):
                return None
        elif secret:
            return None  # a public client has no secret
        return client

    async def exchange(self, request: web.Request, form: Any) -> web.Response:
        self._expire()
        client = self._client(request, form)
        if client is None:
            return _oauth_error("invalid_client", "client authentication failed", 401)
        code = self.codes.get(str(form.get("code", "")))
        refused = self._refusal(client, code, form)
        if refused is not None:
            return _oauth_error("invalid_grant", refused)
        assert code is not None
        user = self.issuer.users.get(code.user_id)
        if user is None:
            return _oauth_error("invalid_grant", "the user no longer exists")
        return web.json_response(self._tokens(client, user, code.request),
                                 headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @staticmethod
    def _refusal(client: WebClient, code: Code | None, form: Any) -> str | None:
        """Why ``code`` buys no token (None: it does). A code is tried once, whatever the
        outcome: a replay, or a second guess at the verifier, is refused."""
        if code is None or code.expires < time.monotonic():
            return "the code is unknown or expired"
        if code.used:
            return "the code was already used"
        code.used = True
        auth = code.request
        verifier = str(form.get("code_verifier", ""))
        problems = [
            (auth.client_id != client.client_id, "the code was issued to another client"),
            (str(form.get("redirect_uri", "")) != auth.redirect_uri,
             "redirect_uri differs from the authorization request"),
            (not 43 <= len(verifier) <= 128
             or not hmac.compare_digest(s256(verifier), auth.code_challenge),
             "code_verifier does not match the code_challenge"),
        ]
        return next((why for bad, why in problems if bad), None)

    def _tokens(self, client: WebClient, user: MachineUser, auth: AuthRequest) -> dict[str, Any]:
        # the client's project is always in the audience (as for a Zitadel app)
        scopes = [*auth.scope.granted, f"urn:zitadel:iam:org:project:id:{client.project_id}:aud"]
        issuer = self.issuer
        id_token = issuer.issue_token(user, scopes=scopes, client_id=client.client_id,
                                      nonce=auth.nonce, id_token=True)
        access = issuer.issue_token(user, scopes=scopes, client_id=client.client_id)
        return {"access_token": access, "token_type": "Bearer", "id_token": id_token,
                "expires_in": issuer.token_lifetime_s, "scope": " ".join(auth.scope.granted)}

    # ---- end session --------------------------------------------------------------------
    async def end_session(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        client_id = q.get("client_id")
        hint = q.get("id_token_hint")
        if hint:
            try:
                claims = jwt.decode(hint, self.issuer._signing_key.public_key(),
                                    algorithms=["RS256"], issuer=self.issuer.issuer,
                                    options={"verify_aud": False, "verify_exp": False})
            except jwt.PyJWTError:
                return _page("Sign-out failed", "<p>The ID token hint is not valid.</p>", 400)
            client_id = client_id or str(claims.get("azp", ""))
        client = self.issuer.clients.get(client_id or "")
        target = q.get("post_logout_redirect_uri")
        if target and client is not None and target in client.post_logout_redirect_uris:
            params = {"state": q["state"]} if q.get("state") else {}
            raise web.HTTPFound(_with_query(target, params) if params else target)
        if target:
            return _page("Sign-out", "<p>You are signed out. The return address is not "
                                     "registered for this application.</p>", 400)
        return _page("Signed out", "<p>You are signed out.</p>")
