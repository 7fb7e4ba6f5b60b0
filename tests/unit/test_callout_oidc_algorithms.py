"""fleet-callout accepts every signing algorithm Zitadel publishes (RS256/384/512,
ES256/384/512, EdDSA), each with a real key served in a JWKS over HTTP, and refuses ``none``,
HMAC and any algorithm that does not match the key (or the JWK's ``alg``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from harmony_fleet.callout.oidc import (
    JwksCache,
    TokenRejected,
    TokenValidator,
    algorithms_for,
)

AUDIENCE = "p-1"
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEYS: dict[str, Any] = {
    "rs": RSA,
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "p521": ec.generate_private_key(ec.SECP521R1()),
    "ed": ed25519.Ed25519PrivateKey.generate(),
    "rs-only-256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
#: JWK alg published per kid (Zitadel publishes one; the first RSA key names none)
PUBLISHED = {"rs": None, "p256": "ES256", "p384": "ES384", "p521": "ES512", "ed": "EdDSA",
             "rs-only-256": "RS256"}


def jwk_of(kid: str) -> dict[str, Any]:
    public = KEYS[kid].public_key()
    algorithm = jwt.algorithms.get_default_algorithms()[PUBLISHED[kid] or "RS256"]
    jwk = json.loads(algorithm.to_jwk(public))
    jwk.update(kid=kid, use="sig")
    if PUBLISHED[kid]:
        jwk["alg"] = PUBLISHED[kid]
    return dict(jwk)


@pytest.fixture
async def jwks_url() -> AsyncIterator[str]:
    """A real HTTP issuer: discovery and a JWKS with every key (plus a shared secret)."""
    state: dict[str, str] = {}

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response({"issuer": state["url"],
                                  "jwks_uri": f"{state['url']}/keys"})

    async def keys(request: web.Request) -> web.Response:
        secret = {"kty": "oct", "kid": "hs", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}
        return web.json_response({"keys": [jwk_of(kid) for kid in KEYS] + [secret]})

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/keys", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state["url"] = f"http://127.0.0.1:{port}"
    yield state["url"]
    await runner.cleanup()


def claims(issuer: str) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "sub": "u-1", "aud": [AUDIENCE], "iat": now, "exp": now + 600,
            "urn:zitadel:iam:org:project:roles": {"fleet-admin": {"o": "d"}}}


@pytest.mark.parametrize(("alg", "kid"), [
    ("RS256", "rs"), ("RS384", "rs"), ("RS512", "rs"), ("ES256", "p256"), ("ES384", "p384"),
    ("ES512", "p521"), ("EdDSA", "ed"), ("RS256", "rs-only-256"),
])
async def test_every_zitadel_algorithm_is_accepted(jwks_url: str, alg: str, kid: str) -> None:
    token = jwt.encode(claims(jwks_url), KEYS[kid], algorithm=alg, headers={"kid": kid})
    validator = TokenValidator(JwksCache(jwks_url, min_refresh_s=0), AUDIENCE)
    identity = await validator.validate(token)
    assert (identity.subject, identity.roles) == ("u-1", frozenset({"fleet-admin"}))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header: dict[str, Any], body: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


async def test_confusions_are_refused(jwks_url: str) -> None:
    validator = TokenValidator(JwksCache(jwks_url, min_refresh_s=0), AUDIENCE)
    body = claims(jwks_url)
    pem = RSA.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    cases = {
        "none": jwt.encode(body, None, algorithm="none", headers={"kid": "rs"}),
        "HS256 keyed with the RSA public key": hs256(
            {"alg": "HS256", "typ": "JWT", "kid": "rs"}, body, pem),
        "HS256 with the published shared secret": hs256(
            {"alg": "HS256", "typ": "JWT", "kid": "hs"}, body, b"secret-secret-secret"),
        "an EC algorithm on an RSA key": jwt.encode(body, KEYS["p256"], algorithm="ES256",
                                                    headers={"kid": "rs"}),
        "ES256 named on a P-384 key": _relabelled(
            jwt.encode(body, KEYS["p384"], algorithm="ES384", headers={"kid": "p384"}),
            "ES256"),
        "RS384 where the JWK says RS256": jwt.encode(body, KEYS["rs-only-256"],
                                                     algorithm="RS384",
                                                     headers={"kid": "rs-only-256"}),
        "PS256 (not published by Zitadel)": jwt.encode(body, RSA, algorithm="PS256",
                                                       headers={"kid": "rs"}),
        "EdDSA named on an EC key": jwt.encode(body, KEYS["ed"], algorithm="EdDSA",
                                               headers={"kid": "p256"}),
    }
    for name, token in cases.items():
        with pytest.raises(TokenRejected) as info:
            await validator.validate(token)
        assert info.value.reason in ("invalid", "unknown-key"), name


def _relabelled(token: str, alg: str) -> str:
    header, body, sig = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(header + "=="))
    decoded["alg"] = alg
    return f"{b64(json.dumps(decoded).encode())}.{body}.{sig}"


def test_algorithms_for_keys() -> None:
    assert algorithms_for(RSA.public_key()) == ("RS256", "RS384", "RS512")
    assert algorithms_for(RSA.public_key(), "RS512") == ("RS512",)
    assert algorithms_for(RSA.public_key(), "HS256") == ()
    assert algorithms_for(KEYS["p256"].public_key()) == ("ES256",)
    assert algorithms_for(KEYS["p384"].public_key()) == ("ES384",)
    assert algorithms_for(KEYS["p521"].public_key()) == ("ES512",)
    assert algorithms_for(ec.generate_private_key(ec.SECP256K1()).public_key()) == ()
    assert algorithms_for(KEYS["ed"].public_key()) == ("EdDSA",)
    assert algorithms_for(b"a shared secret") == ()
