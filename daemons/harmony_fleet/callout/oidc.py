"""Validating OIDC access tokens (Zitadel's, or the local issuer's) and reading fleet claims.

Claim mapping (how Zitadel is configured, see README "Identity"):

* the machine user of a device carries the user metadata ``device_id`` = the device id; with
  the scope ``urn:zitadel:iam:user:metadata`` Zitadel puts it in the access token as
  ``"urn:zitadel:iam:user:metadata": {"device_id": "<base64 of the id>"}``;
* project roles (granted to the machine user) arrive with the project audience scope as
  ``"urn:zitadel:iam:org:project:roles": {"fleet-device": {"<org id>": "<org domain>"}}``
  (Zitadel also sends ``urn:zitadel:iam:org:project:<project id>:roles``; either is read);
* ``aud`` contains the project id (the callout's configured audience), ``iss`` is the
  instance URL, ``exp`` bounds the NATS user JWT;
* signatures: every algorithm Zitadel publishes (``SIGNING_ALGORITHMS``), but for each token
  only the ones its key allows (:func:`algorithms_for`), narrowed by the JWK's ``alg``.
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
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from harmony_fleet.contracts import InvalidIdError, validate_device_id
from harmony_fleet.contracts.identity import (
    DEVICE_ID_METADATA_KEY,
    METADATA_CLAIM,
    project_roles,
)
from harmony_fleet.errors import FleetError

log = logging.getLogger(__name__)

#: what Zitadel may sign with (its JWKS publishes one of these per key); never ``none``/HS*
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def algorithms_for(key: Any, jwk_alg: str | None = None) -> tuple[str, ...]:
    """Pure: the algorithms a token signed with ``key`` may name (``jwk_alg``, the JWK's
    ``alg``, narrows them to one). An RSA key never verifies an EC or HMAC signature, a P-256
    key only ES256, an Ed25519/Ed448 key only EdDSA: no algorithm confusion."""
    if isinstance(key, rsa.RSAPublicKey):
        allowed: tuple[str, ...] = ("RS256", "RS384", "RS512")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        allowed = (alg,) if alg else ()
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        allowed = ("EdDSA",)
    else:
        allowed = ()
    if jwk_alg is not None:
        allowed = tuple(a for a in allowed if a == jwk_alg)
    return allowed


class TokenRejected(FleetError):
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


def _device_from_metadata(claims: dict[str, Any]) -> str | None:
    metadata = claims.get(METADATA_CLAIM)
    if not isinstance(metadata, dict) or DEVICE_ID_METADATA_KEY not in metadata:
        return None
    try:
        raw = base64.b64decode(str(metadata[DEVICE_ID_METADATA_KEY]), validate=True).decode()
        return validate_device_id(raw)
    except (binascii.Error, UnicodeDecodeError, InvalidIdError) as exc:
        raise TokenRejected("bad-device-claim", f"device_id metadata is not a device id: {exc}") \
            from exc


def identity_from_claims(claims: dict[str, Any], project_id: str | None = None) -> Identity:
    """Pure: the fleet identity a validated token describes."""
    subject = str(claims.get("sub", ""))
    roles = frozenset(project_roles(claims, project_id))
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
                 http_timeout_s: float = 5, url: str | None = None) -> None:
        self.issuer = issuer.rstrip("/")
        #: where the issuer is reached, when that is not its identity (a URL of the discovery
        #: document under ``issuer`` is fetched under ``url`` instead)
        self.url = (url or issuer).rstrip("/")
        self.max_age_s = max_age_s
        self.min_refresh_s = min_refresh_s
        self.http_timeout_s = http_timeout_s
        self._keys: dict[str, Any] = {}
        #: kid -> the JWK's ``alg``, when it names one
        self._algs: dict[str, str] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _get_json(self, url: str) -> dict[str, Any]:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"refusing to fetch {url!r}")
        with urllib.request.urlopen(url, timeout=self.http_timeout_s) as response:  # noqa: S310
            return dict(json.loads(response.read()))

    def _reach(self, url: str) -> str:
        if url.startswith(self.issuer + "/") and self.url != self.issuer:
            return self.url + url[len(self.issuer):]
        return url

    def jwk_alg(self, kid: str) -> str | None:
        """The ``alg`` the JWKS names for ``kid`` (None: it names none)."""
        return self._algs.get(kid)

    def _fetch(self) -> tuple[dict[str, Any], dict[str, str]]:
        discovery = self._get_json(f"{self.url}/.well-known/openid-configuration")
        if discovery.get("issuer") != self.issuer:
            raise ValueError(f"the discovery document names issuer {discovery.get('issuer')!r}, "
                             f"not {self.issuer!r}")
        jwks = self._get_json(self._reach(str(discovery["jwks_uri"])))
        keys, algs = {}, {}
        for jwk in jwks.get("keys", []):
            try:
                if jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
                    continue  # an encryption key, or a shared secret: never a signing key
                alg = jwk.get("alg")
                if alg is not None and alg not in SIGNING_ALGORITHMS:
                    log.warning("ignoring JWKS key %s: algorithm %r", jwk.get("kid"), alg)
                    continue
                keys[jwk["kid"]] = jwt.PyJWK(jwk).key
                if alg is not None:
                    algs[jwk["kid"]] = str(alg)
            except (KeyError, TypeError, AttributeError, jwt.PyJWKError) as exc:
                log.warning("ignoring an unusable JWKS key: %s", exc)
        return keys, algs

    async def key(self, kid: str) -> Any:
        now = time.monotonic()
        if kid in self._keys and now - self._fetched_at < self.max_age_s:
            return self._keys[kid]
        async with self._lock:
            stale = time.monotonic() - self._fetched_at
            if (kid not in self._keys and stale >= self.min_refresh_s) or stale >= self.max_age_s:
                try:
                    self._keys, self._algs = await asyncio.to_thread(self._fetch)
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
        alg = header.get("alg")
        allowed = algorithms_for(key, self.jwks.jwk_alg(kid))
        if alg not in allowed:
            raise TokenRejected("invalid", f"algorithm {alg!r} is not one key {kid!r} signs "
                                           f"with ({', '.join(allowed) or 'none usable'})")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self.audience,
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
