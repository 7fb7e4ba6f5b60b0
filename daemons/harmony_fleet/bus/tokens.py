"""Zitadel machine-key credentials: JWT-profile token exchange, caching and refresh.

nats-py calls the ``token`` callback synchronously on every (re)connect, so the provider keeps
a current token in memory and a background task (:meth:`ZitadelTokenProvider.run`) refreshes
it ``refresh_leeway_s`` before expiry (or at half its lifetime when tokens are shorter than
that). Each token bounds the NATS user JWT the callout issues, so after a refresh the
connection must be re-authenticated before the old token expires:
:func:`harmony_fleet.bus.connection.keep_authenticated` forces that reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .settings import ZitadelAuth

log = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class TokenError(RuntimeError):
    """No token could be obtained (bad key file, issuer unreachable, grant refused)."""


@dataclass(frozen=True)
class MachineKey:
    """Zitadel's machine-key JSON: ``type``, ``keyId``, ``key`` (PEM), ``userId``."""

    key_id: str
    private_key_pem: str
    user_id: str

    @classmethod
    def load(cls, path: Path) -> MachineKey:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(doc["keyId"]), str(doc["key"]), str(doc["userId"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"{path}: not a Zitadel machine key file ({type(exc).__name__})") \
                from exc

    def assertion(self, audience: str, lifetime_s: int = 300) -> str:
        now = int(time.time())
        claims = {"iss": self.user_id, "sub": self.user_id, "aud": audience, "iat": now,
                  "exp": now + lifetime_s}
        try:
            return jwt.encode(claims, self.private_key_pem, algorithm="RS256",
                              headers={"kid": self.key_id})
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise TokenError(f"machine key {self.key_id} is not a usable RSA private key") \
                from exc


@dataclass(frozen=True)
class AccessToken:
    value: str
    expires_at: float  # unix time
    obtained_at: float

    def refresh_at(self, leeway_s: float) -> float:
        lifetime = self.expires_at - self.obtained_at
        return self.expires_at - min(leeway_s, lifetime / 2)


def exchange(settings: ZitadelAuth, key: MachineKey) -> AccessToken:
    """One JWT-profile grant (blocking; run it in a thread)."""
    issuer = settings.issuer.rstrip("/")
    form = urllib.parse.urlencode({
        "grant_type": JWT_BEARER,
        "assertion": key.assertion(issuer),
        "scope": settings.scopes(),
    }).encode()
    # the issuer URL is validated as http(s) by ZitadelAuth
    request = urllib.request.Request(  # noqa: S310
        f"{issuer}/oauth/v2/token", data=form, method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    started = time.time()
    try:
        with urllib.request.urlopen(request, timeout=settings.http_timeout_s) as response:  # noqa: S310
            doc: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode("utf-8", "replace")
        raise TokenError(f"token endpoint refused the grant ({exc.code}): {detail}") from exc
    except (OSError, ValueError) as exc:
        raise TokenError(f"token endpoint {issuer} unreachable: {exc}") from exc
    try:
        token = str(doc["access_token"])
        expires_in = float(doc.get("expires_in") or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenError("token endpoint answered without an access_token") from exc
    if not expires_in:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
            expires_in = float(claims["exp"]) - started
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            raise TokenError("the access token has neither expires_in nor an exp claim") from exc
    return AccessToken(token, started + expires_in, started)


class ZitadelTokenProvider:
    """A :class:`~harmony_fleet.bus.credentials.CredentialProvider` with refreshing tokens."""

    def __init__(self, settings: ZitadelAuth) -> None:
        self.settings = settings
        self._key: MachineKey | None = None
        self._token: AccessToken | None = None
        self.refreshed = asyncio.Event()
        self.refreshes = 0

    def describe(self) -> str:
        user = self._key.user_id if self._key else "?"
        return f"zitadel machine key (user {user})"

    def connect_options(self) -> dict[str, Any]:
        return {"token": self.current}

    def current(self) -> str:
        """The token for a CONNECT (called by nats-py, synchronously)."""
        if self._token is None:
            raise TokenError("no token yet: await prepare() first")
        return self._token.value

    @property
    def expires_at(self) -> float | None:
        return self._token.expires_at if self._token else None

    async def prepare(self) -> None:
        """Get the first token (before the first connect)."""
        if self._token is None or time.time() >= self._token.refresh_at(
                self.settings.refresh_leeway_s):
            await self.refresh()

    async def refresh(self) -> AccessToken:
        if self._key is None:
            self._key = await asyncio.to_thread(MachineKey.load, self.settings.key_file)
        token = await asyncio.to_thread(exchange, self.settings, self._key)
        self._token = token
        self.refreshes += 1
        self.refreshed.set()
        log.info("access token refreshed; valid for %.0fs", token.expires_at - time.time())
        return token

    async def run(self, stop: asyncio.Event, *, retry_s: float = 2.0) -> None:
        """Keep the token fresh until ``stop``; failures are retried (and logged)."""
        while not stop.is_set():
            token = self._token
            wait = (token.refresh_at(self.settings.refresh_leeway_s) - time.time()) if token else 0
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                    return
                except TimeoutError:
                    pass
            try:
                await self.refresh()
            except TokenError as exc:
                log.warning("token refresh failed: %s; retrying in %.0fs", exc, retry_s)
                try:
                    await asyncio.wait_for(stop.wait(), retry_s)
                    return
                except TimeoutError:
                    continue
