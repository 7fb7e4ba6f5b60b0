"""Validating OIDC access tokens (Zitadel's, or the local issuer's) and reading fleet claims.

Claim mapping (how Zitadel is configured, see README "Identity"):

* the machine user of a device carries the user metadata ``device_id`` = the device id; with
  the scope ``urn:zitadel:iam:user:metadata`` Zitadel puts it in the access token as
  ``"urn:zitadel:iam:user:metadata": {"device_id": "<base64 of the id>"}``;
* project roles (granted to the machine user) arrive with the project audience scope as
  ``"urn:zitadel:iam:org:project:roles": {"fleet-device": {"<org id>": "<org domain>"}}``
  (Zitadel also sends ``urn:zitadel:iam:org:project:<project id>:roles``; either is read);
* ``aud`` contains the project id (the callout's configured audience), ``iss`` is the
  instance URL, ``exp`` bounds the NATS user JWT.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt

from harmony_fleet.contracts import InvalidIdError, validate_device_id

log = logging.getLogger(__name__)

METADATA_CLAIM = "urn:zitadel:iam:user:metadata"
ROLES_CLAIM = "urn:zitadel:iam:org:project:roles"
DEVICE_METADATA_KEY = "device_id"


class TokenRejected(Exception):
    """The bearer token is not acceptable; ``reason`` is a short label for metrics and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    subject: str
    device_id: str | None
    roles: frozenset[str]
    expires_at: int
    name: str


def _project_roles(claims: dict[str, Any], project_id: str | None) -> set[str]:
    """Roles of the fleet project only: the generic claim, and the project-specific one for
    ``project_id`` (a token carrying several projects must not lend another project's
    ``fleet-admin`` role)."""
    roles: set[str] = set()
    keys = [ROLES_CLAIM]
    if project_id:
        keys.append(f"urn:zitadel:iam:org:project:{project_id}:roles")
    for key in keys:
        value = claims.get(key)
        if isinstance(value, dict):
            roles.update(str(r) for r in value)
    return roles


def _device_from_metadata(claims: dict[str, Any]) -> str | None:
    metadata = claims.get(METADATA_CLAIM)
    if not isinstance(metadata, dict) or DEVICE_METADATA_KEY not in metadata:
        return None
    try:
        raw = base64.b64decode(str(metadata[DEVICE_METADATA_KEY]), validate=True).decode()
        return validate_device_id(raw)
    except (binascii.Error, UnicodeDecodeError, InvalidIdError) as exc:
        raise TokenRejected("bad-device-claim", f"device_id metadata is not a device id: {exc}") \
            from exc


def identity_from_claims(claims: dict[str, Any], project_id: str | None = None) -> Identity:
    """Pure: the fleet identity a validated token describes."""
    subject = str(claims.get("sub", ""))
    roles = frozenset(_project_roles(claims, project_id))
    return Identity(
        subject=subject,
        device_id=_device_from_metadata(claims),
        roles=roles,
        expires_at=int(claims["exp"]),
        name=str(claims.get("preferred_username") or claims.get("client_id") or subject),
    )


class JwksCache:
    """The issuer's signing keys, fetched via discovery; refreshed on an unknown ``kid``
    (at most every ``min_refresh_s``) and every ``max_age_s``."""

    def __init__(self, issuer: str, *, max_age_s: float = 300, min_refresh_s: float = 5,
                 http_timeout_s: float = 5) -> None:
        self.issuer = issuer.rstrip("/")
        self.max_age_s = max_age_s
        self.min_refresh_s = min_refresh_s
        self.http_timeout_s = http_timeout_s
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _get_json(self, url: str) -> dict[str, Any]:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"refusing to fetch {url!r}")
        with urllib.request.urlopen(url, timeout=self.http_timeout_s) as response:  # noqa: S310
            return dict(json.loads(response.read()))

    def _fetch(self) -> dict[str, Any]:
        discovery = self._get_json(f"{self.issuer}/.well-known/openid-configuration")
        jwks = self._get_json(str(discovery["jwks_uri"]))
        keys = {}
        for jwk in jwks.get("keys", []):
            try:
                keys[jwk["kid"]] = jwt.PyJWK(jwk).key
            except (KeyError, jwt.PyJWKError) as exc:
                log.warning("ignoring an unusable JWKS key: %s", exc)
        return keys

    async def key(self, kid: str) -> Any:
        now = time.monotonic()
        if kid in self._keys and now - self._fetched_at < self.max_age_s:
            return self._keys[kid]
        async with self._lock:
            stale = time.monotonic() - self._fetched_at
            if (kid not in self._keys and stale >= self.min_refresh_s) or stale >= self.max_age_s:
                try:
                    self._keys = await asyncio.to_thread(self._fetch)
                    self._fetched_at = time.monotonic()
                    self.fetches += 1
                except (OSError, ValueError, KeyError) as exc:
                    if kid not in self._keys:
                        raise TokenRejected("jwks-unavailable", str(exc)) from exc
                    log.warning("JWKS refresh failed (%s); using the cached keys", exc)
        if kid not in self._keys:
            raise TokenRejected("unknown-key", f"no signing key {kid!r} at {self.issuer}")
        return self._keys[kid]


class TokenValidator:
    def __init__(self, jwks: JwksCache, audience: str, *, leeway_s: float = 5) -> None:
        self.jwks = jwks
        self.audience = audience
        self.leeway_s = leeway_s

    async def validate(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected("malformed", "not a JWT") from exc
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenRejected("malformed", "token has no kid")
        key = await self.jwks.key(kid)
        try:
            claims = jwt.decode(
                token, key, algorithms=["RS256", "ES256", "EdDSA"], audience=self.audience,
                issuer=self.jwks.issuer, leeway=self.leeway_s,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("expired", "token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected("audience", "token is not for this audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected("issuer", "token comes from another issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenRejected("signature", "signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected("invalid", str(exc)) from exc
        return identity_from_claims(claims, self.audience)
