"""OIDC access tokens: fleet claims and validation (harmony_fleet.callout.oidc).

``TokenValidator`` is driven with a :class:`JwksCache` whose ``key`` answers from memory
(no HTTP); tokens are signed with RSA keys made here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given

from harmony_fleet.callout.oidc import (
    Identity,
    JwksCache,
    TokenRejected,
    TokenValidator,
    identity_from_claims,
)
from harmony_fleet.contracts.identity import DEVICE_ID_METADATA_KEY, METADATA_CLAIM, ROLES_CLAIM

from .strategies import PROPERTY, device_ids

ISSUER = "https://zitadel.example.net"
AUDIENCE = "fleet-project-123"
PROJECT_ROLES = f"urn:zitadel:iam:org:project:{AUDIENCE}:roles"
EXP = 1_777_003_600
DROP = object()


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "312345678901234567",
        "aud": [AUDIENCE, "client-1"],
        "exp": EXP,
        "iat": EXP - 3600,
        "client_id": "pi-1-machine",
        METADATA_CLAIM: {DEVICE_ID_METADATA_KEY: b64("pi-1")},
        ROLES_CLAIM: {"fleet-device": {"org-1": "fleet.example.net"}},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not DROP}


# ----------------------------------------------------------------------------- pure claims


def test_identity_of_a_zitadel_device_token() -> None:
    ident = identity_from_claims(claims())
    assert ident == Identity(
        subject="312345678901234567",
        device_id="pi-1",
        roles=frozenset({"fleet-device"}),
        expires_at=EXP,
        name="pi-1-machine",
    )


def test_roles_from_the_generic_claim() -> None:
    c = claims(**{ROLES_CLAIM: {"fleet-admin": {"o": "d"}, "fleet-device": {"o": "d"}}})
    assert identity_from_claims(c).roles == {"fleet-admin", "fleet-device"}


def test_roles_from_the_project_claim() -> None:
    c = claims(**{ROLES_CLAIM: DROP, PROJECT_ROLES: {"fleet-operator": {"o": "d"}}})
    assert identity_from_claims(c, AUDIENCE).roles == {"fleet-operator"}


def test_roles_of_another_project_are_ignored() -> None:
    c = claims(**{ROLES_CLAIM: DROP, PROJECT_ROLES: {"fleet-admin": {"o": "d"}}})
    assert identity_from_claims(c, "the-fleet-project").roles == frozenset()
    assert identity_from_claims(c).roles == frozenset()


def test_roles_from_both_claims_are_merged() -> None:
    c = claims(**{ROLES_CLAIM: {"fleet-device": {}}, PROJECT_ROLES: {"fleet-admin": {}}})
    assert identity_from_claims(c, AUDIENCE).roles == {"fleet-device", "fleet-admin"}


@pytest.mark.parametrize("value", [["fleet-admin"], "fleet-admin", None, 1, True])
def test_role_claims_that_are_not_objects_are_ignored(value: Any) -> None:
    c = claims(**{ROLES_CLAIM: value, PROJECT_ROLES: value})
    assert identity_from_claims(c).roles == frozenset()


@pytest.mark.parametrize("key", [
    "roles",
    "urn:zitadel:iam:org:projects:roles",
    "urn:zitadel:iam:org:project:roles:extra",
    "urn:zitadel:iam:org:roles",
    "urn:zitadel:iam:user:roles",
    "x:urn:zitadel:iam:org:project:1:roles",
])
def test_other_claims_do_not_grant_roles(key: str) -> None:
    c = claims(**{ROLES_CLAIM: DROP, key: {"fleet-admin": {}}})
    assert identity_from_claims(c).roles == frozenset()


def test_no_roles_claim() -> None:
    assert identity_from_claims(claims(**{ROLES_CLAIM: DROP})).roles == frozenset()


@pytest.mark.parametrize("metadata", [DROP, {}, {"other": b64("pi-1")}, "pi-1", None, [],
                                      ["device_id"]])
def test_missing_device_metadata_is_no_device(metadata: Any) -> None:
    assert identity_from_claims(claims(**{METADATA_CLAIM: metadata})).device_id is None


def test_other_metadata_beside_the_device_id() -> None:
    c = claims(**{METADATA_CLAIM: {"site": b64("kitchen"), DEVICE_ID_METADATA_KEY: b64("pi-7")}})
    assert identity_from_claims(c).device_id == "pi-7"


@pytest.mark.parametrize("value", [
    "!!!not base64!!!",
    "cGktMQ",              # "pi-1" without its padding
    "cGkt MQ==",
    b64("Pi-1"),
    b64("pi_1"),
    b64("pi.1"),
    b64("pi-1\n"),
    b64("-pi"),
    b64(""),
    b64("a" * 64),
    b64(b"\xff\xfe\xfd\xfc"),
    5,
    None,
])
def test_bad_device_claim(value: Any) -> None:
    with pytest.raises(TokenRejected) as info:
        identity_from_claims(claims(**{METADATA_CLAIM: {DEVICE_ID_METADATA_KEY: value}}))
    assert info.value.reason == "bad-device-claim"
    assert "bad-device-claim" in str(info.value)


@PROPERTY
@given(device=device_ids)
def test_every_device_id_round_trips_through_the_metadata(device: str) -> None:
    assert identity_from_claims(
        claims(**{METADATA_CLAIM: {DEVICE_ID_METADATA_KEY: b64(device)}})).device_id == device


@pytest.mark.parametrize(("over", "name"), [
    ({"preferred_username": "pi-user", "client_id": "pi-client"}, "pi-user"),
    ({"client_id": "pi-client"}, "pi-client"),
    ({"preferred_username": "", "client_id": "pi-client"}, "pi-client"),
    ({"preferred_username": None, "client_id": "pi-client"}, "pi-client"),
    ({"client_id": DROP}, "312345678901234567"),
    ({"client_id": ""}, "312345678901234567"),
    ({"client_id": DROP, "sub": DROP}, ""),
])
def test_name_precedence(over: dict[str, Any], name: str) -> None:
    assert identity_from_claims(claims(**over)).name == name


def test_subject_and_expiry() -> None:
    ident = identity_from_claims(claims(sub="abc", exp=1_777_000_000.9))
    assert ident.subject == "abc"
    assert ident.expires_at == 1_777_000_000
    assert isinstance(ident.expires_at, int)
    assert identity_from_claims(claims(sub=DROP)).subject == ""


def test_token_rejected_carries_its_reason() -> None:
    exc = TokenRejected("expired", "token has expired")
    assert exc.reason == "expired"
    assert str(exc) == "expired: token has expired"


# ----------------------------------------------------------------------------- validation


class MemoryJwks(JwksCache):
    """The issuer's keys from memory: never fetches."""

    def __init__(self, issuer: str, keys: dict[str, Any]) -> None:
        super().__init__(issuer)
        self.memory = keys
        self.asked: list[str] = []

    async def key(self, kid: str) -> Any:
        self.asked.append(kid)
        if kid not in self.memory:
            raise TokenRejected("unknown-key", f"no signing key {kid!r}")
        return self.memory[kid]


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks(signing_key: rsa.RSAPrivateKey) -> MemoryJwks:
    return MemoryJwks(ISSUER, {"k1": signing_key.public_key()})


@pytest.fixture
def validator(jwks: MemoryJwks) -> TokenValidator:
    return TokenValidator(jwks, AUDIENCE)


def token(key: rsa.RSAPrivateKey, *, kid: Any = "k1", lifetime: int = 600,
          **over: Any) -> str:
    now = int(time.time())
    body = claims(iat=now - 10, exp=now + lifetime, **over)
    headers = {} if kid is DROP else {"kid": kid}
    return jwt.encode(body, key, algorithm="RS256", headers=headers)


async def rejected(validator: TokenValidator, text: str) -> str:
    with pytest.raises(TokenRejected) as info:
        await validator.validate(text)
    return info.value.reason


async def test_valid_token(validator: TokenValidator, jwks: MemoryJwks,
                           signing_key: rsa.RSAPrivateKey) -> None:
    text = token(signing_key)
    ident = await validator.validate(text)
    assert ident.device_id == "pi-1"
    assert ident.roles == {"fleet-device"}
    assert ident.subject == "312345678901234567"
    assert ident.name == "pi-1-machine"
    assert ident.expires_at == jwt.decode(text, options={"verify_signature": False})["exp"]
    assert jwks.asked == ["k1"]


async def test_valid_token_with_a_single_audience(validator: TokenValidator,
                                                  signing_key: rsa.RSAPrivateKey) -> None:
    assert (await validator.validate(token(signing_key, aud=AUDIENCE))).device_id == "pi-1"


async def test_valid_admin_token_without_device(validator: TokenValidator,
                                                signing_key: rsa.RSAPrivateKey) -> None:
    text = token(signing_key, **{METADATA_CLAIM: DROP, ROLES_CLAIM: DROP,
                                 PROJECT_ROLES: {"fleet-admin": {}},
                                 "preferred_username": "ops"})
    ident = await validator.validate(text)
    assert ident.device_id is None
    assert ident.roles == {"fleet-admin"}
    assert ident.name == "ops"


async def test_issuer_with_trailing_slash_is_the_same_issuer(
        signing_key: rsa.RSAPrivateKey) -> None:
    validator = TokenValidator(MemoryJwks(ISSUER + "/", {"k1": signing_key.public_key()}),
                               AUDIENCE)
    assert (await validator.validate(token(signing_key))).device_id == "pi-1"


async def test_expired(validator: TokenValidator, signing_key: rsa.RSAPrivateKey) -> None:
    assert await rejected(validator, token(signing_key, lifetime=-60)) == "expired"


async def test_expiry_within_the_leeway_is_accepted(validator: TokenValidator,
                                                    signing_key: rsa.RSAPrivateKey) -> None:
    # default leeway 5 s: a token that expired a second ago still passes
    assert (await validator.validate(token(signing_key, lifetime=-1))).device_id == "pi-1"


async def test_zero_leeway(jwks: MemoryJwks, signing_key: rsa.RSAPrivateKey) -> None:
    strict = TokenValidator(jwks, AUDIENCE, leeway_s=0)
    assert await rejected(strict, token(signing_key, lifetime=-2)) == "expired"


@pytest.mark.parametrize("aud", ["other-project", ["other-project", "client-1"],
                                 AUDIENCE.upper(), AUDIENCE + "-x"])
async def test_wrong_audience(validator: TokenValidator, signing_key: rsa.RSAPrivateKey,
                              aud: Any) -> None:
    assert await rejected(validator, token(signing_key, aud=aud)) == "audience"


async def test_empty_audience(validator: TokenValidator, signing_key: rsa.RSAPrivateKey) -> None:
    assert await rejected(validator, token(signing_key, aud=[])) in ("audience", "invalid")


@pytest.mark.parametrize("iss", ["https://evil.example.net", ISSUER + "/other", "http://"
                                 "zitadel.example.net"])
async def test_wrong_issuer(validator: TokenValidator, signing_key: rsa.RSAPrivateKey,
                            iss: str) -> None:
    assert await rejected(validator, token(signing_key, iss=iss)) == "issuer"


async def test_signed_by_another_key(validator: TokenValidator,
                                     other_key: rsa.RSAPrivateKey) -> None:
    assert await rejected(validator, token(other_key)) == "signature"


async def test_tampered_payload(validator: TokenValidator,
                                signing_key: rsa.RSAPrivateKey) -> None:
    head, _, sig = token(signing_key).split(".")
    forged = token(signing_key, **{METADATA_CLAIM: {DEVICE_ID_METADATA_KEY: b64("pi-2")}})
    payload = forged.split(".")[1]
    assert await rejected(validator, f"{head}.{payload}.{sig}") == "signature"


@pytest.mark.parametrize("text", ["", "garbage", "a.b", "!!!.???.###", "a.b.c"])
async def test_not_a_jwt(validator: TokenValidator, text: str) -> None:
    assert await rejected(validator, text) == "malformed"


async def test_no_kid(validator: TokenValidator, jwks: MemoryJwks,
                      signing_key: rsa.RSAPrivateKey) -> None:
    assert await rejected(validator, token(signing_key, kid=DROP)) == "malformed"
    assert jwks.asked == []


def part(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def rs256(header: dict[str, Any], body: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    """Sign by hand (PyJWT refuses some of the headers under test)."""
    signing_input = f"{part(header)}.{part(body)}"
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def test_hand_signed_tokens_are_valid_rs256(signing_key: rsa.RSAPrivateKey) -> None:
    text = rs256({"alg": "RS256", "typ": "JWT", "kid": "k1"}, {"a": 1}, signing_key)
    assert jwt.decode(text, signing_key.public_key(), algorithms=["RS256"]) == {"a": 1}


@pytest.mark.parametrize("kid", [1, None, ["k1"], {"k": 1}])
async def test_kid_that_is_not_a_string(validator: TokenValidator, jwks: MemoryJwks,
                                        signing_key: rsa.RSAPrivateKey, kid: Any) -> None:
    now = int(time.time())
    text = rs256({"alg": "RS256", "typ": "JWT", "kid": kid}, claims(iat=now, exp=now + 600),
                 signing_key)
    assert await rejected(validator, text) == "malformed"
    assert jwks.asked == []


async def test_unknown_kid(validator: TokenValidator, signing_key: rsa.RSAPrivateKey) -> None:
    assert await rejected(validator, token(signing_key, kid="k2")) == "unknown-key"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "iss", "aud"])
async def test_required_claims(validator: TokenValidator, signing_key: rsa.RSAPrivateKey,
                               claim: str) -> None:
    now = int(time.time())
    body = claims(iat=now, exp=now + 600)
    del body[claim]
    text = jwt.encode(body, signing_key, algorithm="RS256", headers={"kid": "k1"})
    assert await rejected(validator, text) == "invalid"


async def test_unsigned_token(validator: TokenValidator) -> None:
    now = int(time.time())
    text = jwt.encode(claims(iat=now, exp=now + 600), None, algorithm="none",
                      headers={"kid": "k1"})
    assert await rejected(validator, text) == "invalid"


async def test_hmac_with_the_public_key_is_refused(validator: TokenValidator,
                                                   signing_key: rsa.RSAPrivateKey) -> None:
    # the classic algorithm confusion: HS256 keyed with the issuer's public key
    pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    signing_input = (f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}."
                     f"{part(claims(iat=now, exp=now + 600))}")
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    text = f"{signing_input}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    assert await rejected(validator, text) == "invalid"


async def test_bad_device_claim_in_a_valid_token(validator: TokenValidator,
                                                 signing_key: rsa.RSAPrivateKey) -> None:
    text = token(signing_key, **{METADATA_CLAIM: {DEVICE_ID_METADATA_KEY: b64("Not_A_Device")}})
    assert await rejected(validator, text) == "bad-device-claim"
