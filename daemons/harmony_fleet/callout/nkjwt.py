"""NATS JWTs (``alg: ed25519-nkey``) and xkey sealing, on ``nkeys`` and PyNaCl.

PyJWT cannot produce this algorithm, and the ``nkeys`` package has neither key creation nor
signature verification nor curve (xkey) support, so the few primitives live here:

* JWT: header ``{"typ":"JWT","alg":"ed25519-nkey"}``, base64url parts without padding, the
  signature is Ed25519 over ``header.payload``; ``jti`` is the base32 (unpadded) SHA-512/256
  of the claims JSON (as nats-io/jwt computes it).
* xkey: curve25519 keys with the NATS ``X`` prefix; a sealed message is
  ``b"xkv1" + 24-byte nonce + NaCl box``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils
import nkeys

from harmony_fleet.errors import FleetError

_PREFIX_CURVE = 23 << 3  # 'X'
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_XKV1 = b"xkv1"


class NatsJwtError(FleetError, ValueError):
    """A NATS JWT or sealed message is malformed or its signature does not verify."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b32decode(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------- signing keys


@dataclass(frozen=True)
class NKeyPair:
    """An ed25519 nkey: ``seed`` (secret) and ``public_key`` (``A…`` account, ``U…`` user…)."""

    seed: str
    public_key: str

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(self.seed.encode()).sign(data))


def new_nkey(kind: str) -> NKeyPair:
    """A fresh key pair; ``kind`` is ``account``, ``user``, ``server`` or ``operator``."""
    prefix = {
        "account": nkeys.PREFIX_BYTE_ACCOUNT,
        "user": nkeys.PREFIX_BYTE_USER,
        "server": nkeys.PREFIX_BYTE_SERVER,
        "operator": nkeys.PREFIX_BYTE_OPERATOR,
    }[kind]
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return nkey_from_seed(seed.decode())


def nkey_from_seed(seed: str) -> NKeyPair:
    kp = nkeys.from_seed(seed.encode())
    return NKeyPair(seed, kp.public_key.decode())


def verify_nkey_signature(public_key: str, data: bytes, signature: bytes) -> None:
    """Raise :class:`NatsJwtError` unless ``signature`` is ``public_key``'s over ``data``."""
    try:
        raw = _b32decode(public_key)
    except ValueError as exc:
        raise NatsJwtError(f"public key {public_key[:8]}… is not base32") from exc
    if len(raw) != 35 or nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
        raise NatsJwtError(f"public key {public_key[:8]}… has a bad length or checksum")
    if len(signature) != 64:
        raise NatsJwtError(f"signature is {len(signature)} bytes, not 64")
    try:
        nacl.signing.VerifyKey(raw[1:-2]).verify(data, signature)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise NatsJwtError("signature does not verify") from exc


# ---------------------------------------------------------------------------- JWTs


def _jti(claims: dict[str, Any]) -> str:
    fields = ("aud", "exp", "iat", "iss", "name", "nbf", "sub")
    data = {k: claims[k] for k in fields if claims.get(k) not in (None, "", 0)}
    digest = hashlib.new("sha512_256", _compact(data)).digest()
    return base64.b32encode(digest).decode().rstrip("=")


def encode_jwt(claims: dict[str, Any], signer: NKeyPair, *, now: float | None = None) -> str:
    """Sign ``claims`` (``iss``, ``iat`` and ``jti`` are set here)."""
    body = dict(claims)
    body["iss"] = signer.public_key
    body["iat"] = int(now if now is not None else time.time())
    body.pop("jti", None)
    body["jti"] = _jti(body)
    signing_input = f"{_b64url(_compact(_HEADER))}.{_b64url(_compact(body))}"
    return f"{signing_input}.{_b64url(signer.sign(signing_input.encode()))}"


def decode_jwt(token: str) -> dict[str, Any]:
    """Verify a NATS JWT against its own ``iss`` key and return the claims.

    The caller checks that ``iss`` is the key it expects.
    """
    try:
        head, payload, signature = token.split(".")
        header = json.loads(_b64url_decode(head))
        claims = json.loads(_b64url_decode(payload))
        sig = _b64url_decode(signature)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NatsJwtError(f"not a JWT: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise NatsJwtError("not a JWT: header and claims must be objects")
    if str(header.get("typ", "")).upper() != "JWT" or str(header.get("alg", "")).lower() not in (
        "ed25519-nkey", "ed25519",
    ):
        raise NatsJwtError(f"unexpected JWT header {header}")
    issuer = claims.get("iss")
    if not isinstance(issuer, str):
        raise NatsJwtError("JWT has no issuer")
    verify_nkey_signature(issuer, f"{head}.{payload}".encode(), sig)
    return claims


# ---------------------------------------------------------------------------- xkeys


@dataclass(frozen=True)
class XKeyPair:
    seed: str
    public_key: str

    def _private(self) -> nacl.public.PrivateKey:
        return nacl.public.PrivateKey(_b32decode(self.seed)[2:34])

    def seal(self, recipient: str, data: bytes) -> bytes:
        nonce = nacl.utils.random(24)
        box = nacl.public.Box(self._private(), _curve_public(recipient))
        return _XKV1 + nonce + box.encrypt(data, nonce).ciphertext

    def open(self, sender: str, data: bytes) -> bytes:
        if data[:4] != _XKV1 or len(data) < 28:
            raise NatsJwtError("sealed message lacks the xkv1 header")
        try:
            return bytes(nacl.public.Box(self._private(), _curve_public(sender)).decrypt(
                data[28:], data[4:28]))
        except nacl.exceptions.CryptoError as exc:
            raise NatsJwtError("sealed message does not open") from exc


def _curve_encode(prefix: int, raw: bytes) -> str:
    body = bytes([prefix]) + raw
    return base64.b32encode(body + bytes(nkeys.crc16_checksum(body))).decode().rstrip("=")


def _curve_public(public_key: str) -> nacl.public.PublicKey:
    try:
        raw = _b32decode(public_key)
    except ValueError as exc:  # binascii.Error
        raise NatsJwtError(f"{public_key[:8]}… is not an xkey (not base32)") from exc
    if len(raw) != 35 or raw[0] != _PREFIX_CURVE or nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
        raise NatsJwtError(f"{public_key[:8]}… is not an xkey")
    return nacl.public.PublicKey(raw[1:-2])


def new_xkey() -> XKeyPair:
    raw = os.urandom(32)
    head = bytes([nkeys.PREFIX_BYTE_SEED | (_PREFIX_CURVE >> 5), (_PREFIX_CURVE & 31) << 3])
    seed = base64.b32encode(head + raw + bytes(nkeys.crc16_checksum(head + raw)))
    return xkey_from_seed(seed.decode().rstrip("="))


def xkey_from_seed(seed: str) -> XKeyPair:
    private = nacl.public.PrivateKey(_b32decode(seed)[2:34])
    return XKeyPair(seed, _curve_encode(_PREFIX_CURVE, bytes(private.public_key)))
