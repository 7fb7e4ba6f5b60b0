"""Zitadel machine-key credentials: JWT-profile token exchange, caching and refresh.

nats-py calls the ``token`` callback synchronously on every (re)connect, so the provider keeps
a current token in memory and a background task (:meth:`ZitadelTokenProvider.run`) refreshes
it ``refresh_leeway_s`` before expiry (or at half its lifetime when tokens are shorter than
that). Each token bounds the NATS user JWT the callout issues, so after a refresh the
connection must be re-authenticated before the old token expires:
:func:`harmony_fleet.bus.connection.keep_authenticated` forces that reconnect. A refresh that
fails changes nothing on the connection (it stays authenticated until the current token
expires); it is retried with exponential backoff and full jitter, each attempt logged.

A machine key file that group or others can access is refused (as ssh refuses such a private
key) unless the settings say ``allow_insecure_key_permissions = true``.

The assertion is a compact JWS signed RS256 by :mod:`harmony_fleet.purecrypto` (no PyJWT, no
``cryptography`` on a device: see that module); the issuer verifies it like any JWT.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http.client
import json
import logging
import os
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmony_fleet.daemon import first_of
from harmony_fleet.errors import FleetError
from harmony_fleet.purecrypto import CryptoError, RSAPrivateKey, rsa_private_key_from_pem

from .retry import full_jitter_backoff
from .settings import ZitadelAuth

log = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class TokenError(FleetError, RuntimeError):
    """No token could be obtained (bad key file, issuer unreachable, grant refused)."""


class InsecureKeyFileError(TokenError):
    """The machine key file is accessible by group or others, and that is not allowed."""


#: permission bits a machine key file must not have: any access by group or others
KEY_FILE_FORBIDDEN_BITS = 0o077


def key_file_permission_problem(path: Path, mode: int) -> str | None:
    """What is wrong with a key file of this ``mode`` (pure; ``None``: nothing)."""
    perms = stat.S_IMODE(mode)
    if not perms & KEY_FILE_FORBIDDEN_BITS:
        return None
    return (f"permissions {perms:04o} for machine key file {path} are too open: it must not "
            f"be accessible by group or others (chmod 600 {path})")


@dataclass(frozen=True)
class MachineKey:
    """Zitadel's machine-key JSON: ``type``, ``keyId``, ``key`` (PEM), ``userId``."""

    key_id: str
    private_key_pem: str
    user_id: str

    @classmethod
    def load(cls, path: Path, *, allow_insecure_permissions: bool = False) -> MachineKey:
        """Read a key file; refuse one that group or others can access (see the module)."""
        key, problem = cls.read(path, allow_insecure_permissions=allow_insecure_permissions)
        if problem is not None:
            log.warning("%s; using it anyway (allow_insecure_key_permissions = true)", problem)
        return key

    @classmethod
    def read(cls, path: Path, *, allow_insecure_permissions: bool = False,
             ) -> tuple[MachineKey, str | None]:
        """The key, and the permission problem that was let through (if any).

        The mode is checked on the opened file (``fstat``), so the file checked is the file
        read. :class:`InsecureKeyFileError` when the problem is not allowed.
        """
        try:
            with path.open("rb") as handle:
                problem = key_file_permission_problem(path, os.fstat(handle.fileno()).st_mode)
                if problem is not None and not allow_insecure_permissions:
                    raise InsecureKeyFileError(
                        f"{problem}; refusing to use it (set allow_insecure_key_permissions = "
                        "true in the auth settings to override)")
                doc = json.loads(handle.read())
            return cls(str(doc["keyId"]), str(doc["key"]), str(doc["userId"])), problem
        except OSError as exc:
            raise TokenError(f"cannot read the machine key file {path}: "
                             f"{exc.strerror or exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"{path}: not a Zitadel machine key file ({type(exc).__name__})") \
                from exc

    def rsa_key(self) -> RSAPrivateKey:
        try:
            return rsa_private_key_from_pem(self.private_key_pem)
        except CryptoError as exc:
            raise TokenError(f"machine key {self.key_id} is not a usable RSA private key") \
                from exc

    def assertion(self, audience: str, lifetime_s: int = 300) -> str:
        now = int(time.time())
        claims = {"iss": self.user_id, "sub": self.user_id, "aud": audience, "iat": now,
                  "exp": now + lifetime_s}
        return sign_rs256(self.rsa_key(), claims, {"kid": self.key_id})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign_rs256(key: RSAPrivateKey, claims: dict[str, Any], headers: dict[str, str]) -> str:
    """A compact JWS (RFC 7515) of ``claims``, signed RS256 (RFC 7518 section 3.3)."""
    header = {"alg": "RS256", "typ": "JWT", **headers}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode("utf-8"))
        for part in (header, claims))
    try:
        signature = key.sign_pkcs1v15_sha256(signing_input.encode("ascii"))
    except CryptoError as exc:
        raise TokenError(f"cannot sign the assertion: {exc}") from exc
    return f"{signing_input}.{_b64url(signature)}"


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a compact JWS, signature NOT verified (only to read ``exp`` of a token
    the issuer just handed over TLS); :class:`ValueError` if it is not a JWS."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
    except binascii.Error as exc:
        raise ValueError("the JWS payload is not base64url") from exc
    claims = json.loads(payload)
    if not isinstance(claims, dict):
        raise ValueError("the JWS payload is not an object")
    return claims


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
    issuer, endpoint = settings.issuer.rstrip("/"), settings.endpoint()
    form = urllib.parse.urlencode({
        "grant_type": JWT_BEARER,
        "assertion": key.assertion(issuer),
        "scope": settings.scopes(),
    }).encode()
    # the issuer URL is validated as http(s) by ZitadelAuth
    request = urllib.request.Request(  # noqa: S310
        f"{endpoint}/oauth/v2/token", data=form, method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    started = time.time()
    try:
        with urllib.request.urlopen(request, timeout=settings.http_timeout_s) as response:  # noqa: S310
            doc: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode("utf-8", "replace")
        raise TokenError(f"token endpoint refused the grant ({exc.code}): {detail}") from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException: a connection cut mid-answer (an issuer killed while it replies)
        raise TokenError(f"token endpoint {endpoint} unreachable: {str(exc) or repr(exc)}") from exc
    try:
        token = str(doc["access_token"])
        expires_in = float(doc.get("expires_in") or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenError("token endpoint answered without an access_token") from exc
    if not expires_in:
        try:
            claims = unverified_claims(token)
            expires_in = float(claims["exp"]) - started
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenError("the access token has neither expires_in nor an exp claim") from exc
    else:
        expires_in = usable_lifetime(expires_in)
    return AccessToken(token, started + expires_in, started)


def usable_lifetime(expires_in: float) -> float:
    """The part of an ``expires_in`` that can be counted on from before the request.

    Expiry times are whole seconds (JWT NumericDate; the callout's NATS user JWT too): an
    issuer that rounds its clock down (Zitadel does, so does the local issuer) ends the token
    up to 1 s before ``started + expires_in``. With short tokens that second is most of the
    margin a rollover has (measured: a 4 s token left an agent as little as 1 s to move to a new
    connection before nats-server closed the old one)."""
    return max(expires_in - 1.0, expires_in / 2)


def check_key_file(settings: ZitadelAuth) -> list[str]:
    """For ``--check-config``: :class:`TokenError` if the key file would be refused or cannot
    be used; otherwise the warnings to show (an insecure file that the settings allow)."""
    key, problem = MachineKey.read(
        settings.key_file, allow_insecure_permissions=settings.allow_insecure_key_permissions)
    key.rsa_key()  # the PEM is a usable RSA key
    if problem is None:
        return []
    return [f"{problem}; allowed by allow_insecure_key_permissions = true"]


class ZitadelTokenProvider:
    """A :class:`~harmony_fleet.bus.credentials.CredentialProvider` with refreshing tokens.

    Counters (for metrics and tests): ``refreshes`` (tokens obtained), ``failed_refreshes``
    (attempts of :meth:`run` that failed) and ``consecutive_failures`` (since the last token).
    """

    def __init__(self, settings: ZitadelAuth) -> None:
        self.settings = settings
        self._key: MachineKey | None = None
        self._token: AccessToken | None = None
        self.refreshed = asyncio.Event()
        self.refreshes = 0
        self.failed_refreshes = 0
        self.consecutive_failures = 0

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
        if self._key is None:  # loaded once: an allowed insecure key file is warned about once
            self._key = await asyncio.to_thread(
                MachineKey.load, self.settings.key_file,
                allow_insecure_permissions=self.settings.allow_insecure_key_permissions)
        token = await asyncio.to_thread(exchange, self.settings, self._key)
        self._token = token
        self.refreshes += 1
        self.consecutive_failures = 0
        self.refreshed.set()
        log.info("access token refreshed; valid for %.0fs", token.expires_at - time.time())
        return token

    def _retry_delays(self) -> Iterator[float]:
        s = self.settings
        return full_jitter_backoff(s.refresh_retry_initial_s, s.refresh_retry_factor,
                                   s.refresh_retry_max_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the token fresh until ``stop``. A failed refresh is logged and retried with
        backoff; it never ends this task, which the connection depends on."""
        delays = self._retry_delays()
        while not stop.is_set():
            token = self._token
            wait = (token.refresh_at(self.settings.refresh_leeway_s) - time.time()) if token else 0
            if wait > 0 and await _stopped_within(stop, wait):
                return
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # TokenError expected; anything else must not end the task
                if self.consecutive_failures == 0:  # the first failure since a token: start over
                    delays = self._retry_delays()
                self.consecutive_failures += 1
                self.failed_refreshes += 1
                delay = next(delays)
                reason = str(exc) if isinstance(exc, TokenError) else repr(exc)
                log.warning("token refresh attempt #%d failed: %s; will retry in %.1fs",
                            self.consecutive_failures, reason, delay)
                if await _stopped_within(stop, delay):
                    return


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds``; True if ``stop`` was set meanwhile."""
    await first_of(stop, timeout=seconds)
    return stop.is_set()
