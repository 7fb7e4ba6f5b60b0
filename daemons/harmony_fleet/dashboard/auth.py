"""The dashboard's OIDC login: authorization code with PKCE (S256) against the issuer (Zitadel
in production, the local stack's issuer speaks the same), then an allowed-role check.

The endpoints come from the issuer's discovery document (its ``issuer`` must be the one
configured). The ID token is verified against the issuer's JWKS (signature, ``iss``, ``aud`` =
this client, ``exp``, and the ``nonce`` this login sent); the project roles are read from it
or, when only the access token carries them (Zitadel's project-audience tokens), from the
access token, verified the same way. A user without one of the allowed roles gets no session.
The login state (PKCE verifier, nonce, where to go after) lives in the server-side session,
keyed by ``state``, and is used once.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt

from harmony_fleet.contracts.identity import (
    OPENID_SCOPE,
    ROLES_SCOPE,
    project_audience_scope,
    project_roles,
)
from harmony_fleet.errors import FleetError

from .config import OidcSection
from .security import Session

log = logging.getLogger(__name__)
MAX_PENDING_LOGINS = 5
ALGORITHMS = ["RS256", "ES256", "EdDSA"]


class AuthError(FleetError):
    """A login that cannot complete; ``status`` is what the browser gets (400, 403, 502)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) as RFC 7636 defines them."""
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcClient:
    def __init__(self, settings: OidcSection, *, http_timeout_s: float = 10.0,
                 discovery_max_age_s: float = 300.0) -> None:
        self.settings = settings
        self.issuer = settings.issuer.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=http_timeout_s)
        self._max_age = discovery_max_age_s
        self._discovery: dict[str, Any] | None = None
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._secret = (settings.client_secret_file.read_text(encoding="utf-8").strip()
                        if settings.client_secret_file else None)

    # ---- the issuer's documents --------------------------------------------------------
    async def _get_json(self, url: str) -> dict[str, Any]:
        if not url.startswith(("http://", "https://")):
            raise AuthError(f"refusing to fetch {url!r}", 502)
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as http, \
                    http.get(url) as response:
                if response.status != 200:
                    raise AuthError(f"the issuer answered {response.status} for {url}", 502)
                return dict(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AuthError(f"the issuer cannot be reached ({type(exc).__name__}: {exc})",
                            502) from None

    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None or time.monotonic() - self._fetched_at > self._max_age:
            doc = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            if str(doc.get("issuer", "")).rstrip("/") != self.issuer:
                raise AuthError(f"the discovery document names issuer {doc.get('issuer')!r}, "
                                f"not {self.issuer!r}", 502)
            for needed in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(needed), str):
                    raise AuthError(f"the issuer's discovery document has no {needed}", 502)
            methods = doc.get("code_challenge_methods_supported")
            if isinstance(methods, list) and "S256" not in methods:
                raise AuthError("the issuer does not support PKCE with S256", 502)
            self._discovery = doc
            self._fetched_at = time.monotonic()
            self._keys = {}
        return self._discovery

    async def _key(self, kid: str) -> Any:
        if kid not in self._keys:
            jwks = await self._get_json(str((await self.discovery())["jwks_uri"]))
            keys = {}
            for jwk in jwks.get("keys", []):
                try:
                    keys[jwk["kid"]] = jwt.PyJWK(jwk).key
                except (KeyError, jwt.PyJWKError):
                    continue
            self._keys = keys
        if kid not in self._keys:
            raise AuthError(f"the token is signed with a key the issuer does not publish ({kid})")
        return self._keys[kid]

    async def _verify(self, token: str, audience: list[str], what: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AuthError(f"the {what} is not a JWT") from None
        if not isinstance(kid, str):
            raise AuthError(f"the {what} names no signing key")
        try:
            return dict(jwt.decode(token, await self._key(kid), algorithms=ALGORITHMS,
                                   audience=audience, issuer=self.issuer, leeway=5,
                                   options={"require": ["exp", "iat", "sub", "iss", "aud"]}))
        except jwt.PyJWTError as exc:
            raise AuthError(f"the {what} does not verify: {exc}") from None

    # ---- the flow ----------------------------------------------------------------------
    def scopes(self) -> list[str]:
        scopes = [OPENID_SCOPE, *self.settings.scopes]
        if self.settings.project_id:  # Zitadel: the project's audience and its roles
            scopes += [project_audience_scope(self.settings.project_id), ROLES_SCOPE]
        return list(dict.fromkeys(scopes))

    async def authorization_url(self, session: Session, next_path: str,
                                redirect_uri: str) -> str:
        endpoint = str((await self.discovery())["authorization_endpoint"])
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        while len(session.pending) >= MAX_PENDING_LOGINS:
            session.pending.pop(next(iter(session.pending)))
        session.pending[state] = (verifier, nonce, next_path)
        return endpoint + "?" + urlencode({
            "response_type": "code", "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri, "scope": " ".join(self.scopes()), "state": state,
            "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"})

    async def complete(self, session: Session, query: Mapping[str, str],
                       redirect_uri: str) -> str:
        """Finish the login the issuer redirected back with; fills ``session`` and returns
        where to go. :class:`AuthError` says why it cannot."""
        if "error" in query:
            raise AuthError(f"the issuer refused the login: {query['error']}"
                            + (f": {query['error_description']}"
                               if query.get("error_description") else ""))
        pending = session.pending.pop(query.get("state", ""), None)
        if pending is None:
            raise AuthError("unknown or already used login state: start again from /login",
                            400)
        verifier, nonce, next_path = pending
        code = query.get("code")
        if not code:
            raise AuthError("the issuer sent no authorization code", 400)
        tokens = await self._exchange(code, verifier, redirect_uri)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise AuthError("the issuer returned no ID token", 502)
        claims = await self._verify(id_token, [self.settings.client_id], "ID token")
        if claims.get("nonce") != nonce:
            raise AuthError("the ID token's nonce is not this login's")
        roles = project_roles(claims, self.settings.project_id)
        access = tokens.get("access_token")
        if not roles and isinstance(access, str) and access.count(".") == 2:
            audience = [self.settings.client_id] + (
                [self.settings.project_id] if self.settings.project_id else [])
            access_claims = await self._verify(access, audience, "access token")
            if access_claims.get("sub") == claims.get("sub"):
                roles = project_roles(access_claims, self.settings.project_id)
        user = str(claims["sub"])
        name = str(claims.get("preferred_username") or claims.get("email")
                   or claims.get("name") or user)
        allowed = set(self.settings.allowed_roles)
        if not roles & allowed:
            log.warning("dashboard login refused: %s has none of the roles %s", name,
                        ", ".join(sorted(allowed)))
            raise AuthError(f"{name} may not use the dashboard: it needs one of the roles "
                            f"{', '.join(sorted(allowed))}")
        session.user, session.name, session.roles = user, name, frozenset(roles)
        session.id_token = id_token
        return next_path

    async def _exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        endpoint = str((await self.discovery())["token_endpoint"])
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": self.settings.client_id, "code_verifier": verifier}
        auth = aiohttp.BasicAuth(self.settings.client_id, self._secret) if self._secret else None
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as http, \
                    http.post(endpoint, data=form, auth=auth) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AuthError(f"the code exchange failed ({type(exc).__name__}: {exc})",
                            502) from None
        if response.status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise AuthError(f"the issuer refused the code exchange ({response.status}"
                            + (f", {error}" if error else "") + ")")
        return body

    async def end_session_url(self, id_token: str, post_logout_redirect_uri: str) -> str | None:
        endpoint = (await self.discovery()).get("end_session_endpoint")
        if not isinstance(endpoint, str):
            return None
        return endpoint + "?" + urlencode({"id_token_hint": id_token,
                                           "post_logout_redirect_uri": post_logout_redirect_uri,
                                           "client_id": self.settings.client_id})
