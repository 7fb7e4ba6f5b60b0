"""Secrets sealed to one device: the envelope format, pure functions, no I/O.

Every agent owns an X25519 key pair and publishes the public half in its ``device-info``
report (:attr:`~.info.DeviceInfo.sealing_key`). The control plane (the ``fleet_deployment``
module, the operator) seals each secret of a score to each target device's public key; the
desired-state value then carries only envelopes, which only that device can open. KV history,
the operator's memory of the bucket, backups of the stream: all hold ciphertext.

Envelope, version 1 (``v1:<base64url without padding>``), an ECIES construction::

    ad        = canonical JSON ["harmony-fleet/secret/v1", <deployment>, <secret name>]
    eph_sk    = HKDF-SHA256(ikm=plaintext, salt=recipient_pk, info="harmony-fleet/sealing/v1/ephemeral" + ad)
    eph_pk    = X25519 public key of eph_sk
    shared    = X25519(eph_sk, recipient_pk)
    key       = HKDF-SHA256(ikm=shared, salt=eph_pk + recipient_pk, info="harmony-fleet/sealing/v1/key")
    envelope  = "v1:" + base64url(eph_pk + ChaCha20-Poly1305(key, nonce=0^96, plaintext, ad))

The associated data binds the ciphertext to its deployment and secret name: an envelope copied
into another deployment, or under another name, does not open.

**Deterministic on purpose.** The ephemeral key is derived from the plaintext (and the
recipient and the associated data), so sealing the same secret for the same device,
deployment and name always gives the same envelope. That is what keeps the control plane
idempotent: ``plan_desired_keys`` compares values, and a random ephemeral key would rewrite
every key (and recreate every service) on every run. The price is that whoever holds an
envelope and the device's public key can test guesses of the plaintext offline (seal the
guess, compare). The only parties who ever hold envelopes are the device itself and fleet
admins (readers of the ``desired-state`` bucket: the operator, the Ansible controller), who
are trusted with the secret anyway; envelopes are never shown in task output or diffs
(:func:`harmony_fleet.contracts.score.redact_score`), and the agent names podman secrets after
a digest of the envelope, readable by root on the device only. Use high-entropy secrets (tokens,
generated passwords) regardless.

The nonce can be fixed: a key encrypts exactly one plaintext. Equal keys mean equal ephemeral
keys, which (barring an HKDF collision) mean the same plaintext, deployment, name and recipient,
so the same message under the same nonce.

The primitives are :mod:`harmony_fleet.purecrypto`'s (pure Python: the agent carries no
``cryptography``, see there why); ``tests/unit/test_sealing.py`` rebuilds envelopes with
``cryptography`` to prove the construction above is what is computed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final

from harmony_fleet.errors import FleetError
from harmony_fleet.purecrypto import (
    CryptoError,
    X25519PrivateKey,
    X25519PublicKey,
    chacha20_poly1305_decrypt,
    chacha20_poly1305_encrypt,
    hkdf_sha256,
    x25519_private_key_from_pem,
    x25519_private_key_to_pem,
)

from .base import canonical_json

SEALING_VERSION: Final = "v1"
ENVELOPE_PREFIX: Final = f"{SEALING_VERSION}:"
KEY_BYTES: Final = 32
TAG_BYTES: Final = 16
#: Largest secret value (bytes of plaintext) a score may carry.
MAX_SECRET_BYTES: Final = 64 * 1024
#: Characters of an envelope holding :data:`MAX_SECRET_BYTES` (prefix + base64url, no padding).
MAX_ENVELOPE_CHARS: Final = len(ENVELOPE_PREFIX) + -(-4 * (KEY_BYTES + MAX_SECRET_BYTES + TAG_BYTES) // 3)

_AD_DOMAIN: Final = "harmony-fleet/secret/v1"
_EPHEMERAL_INFO: Final = b"harmony-fleet/sealing/v1/ephemeral"
_KEY_INFO: Final = b"harmony-fleet/sealing/v1/key"
_NONCE: Final = bytes(12)
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_VERSIONED = re.compile(r"^(v[0-9]+):")


class SealingError(FleetError, ValueError):
    """A key or an envelope cannot be used. Messages never contain secret material."""


# ---------------------------------------------------------------------------------- encoding


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Strict base64url without padding: the one canonical spelling of each byte string."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise SealingError(f"{what} is not base64url (without padding)")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(raw) != text:  # unused trailing bits set: another spelling of the same bytes
        raise SealingError(f"{what} is not canonical base64url")
    return raw


def encode_public_key(key: X25519PublicKey) -> str:
    """The public key as published in ``device-info``: 32 raw bytes in base64url (43 chars)."""
    return _b64encode(key.public_bytes_raw())


def decode_public_key(text: str) -> X25519PublicKey:
    """Parse a published public key; :class:`SealingError` if it is not one."""
    raw = _b64decode(text, "sealing key")
    if len(raw) != KEY_BYTES:
        raise SealingError(f"sealing key must be {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def validate_public_key(text: str) -> str:
    """A pydantic-friendly check: return ``text`` if it decodes to a public key."""
    decode_public_key(text)
    return text


def generate_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_key_to_pem(key: X25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file's mode protects it): ``openssl pkey`` reads it."""
    return x25519_private_key_to_pem(key)


def private_key_from_pem(data: bytes) -> X25519PrivateKey:
    """Parse a PKCS#8 PEM X25519 private key; :class:`SealingError` otherwise."""
    try:
        return x25519_private_key_from_pem(data)
    except CryptoError as exc:
        # the message describes the structure, never the key material
        if str(exc).startswith("not an X25519 key"):
            raise SealingError(str(exc)) from None
        raise SealingError(f"not a PEM private key: {exc}") from None


def public_key_of(key: X25519PrivateKey) -> str:
    return encode_public_key(key.public_key())


# ---------------------------------------------------------------------------------- sealing


def associated_data(deployment: str, name: str) -> bytes:
    """What an envelope is bound to besides its recipient: the deployment and the secret name."""
    return canonical_json([_AD_DOMAIN, deployment, name])


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes_raw()


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return hkdf_sha256(ikm, salt, info, KEY_BYTES)


def _aead_key(shared: bytes, eph_pk: bytes, recipient_pk: bytes) -> bytes:
    return _hkdf(shared, eph_pk + recipient_pk, _KEY_INFO)


def seal(recipient: X25519PublicKey | str, deployment: str, name: str, plaintext: bytes) -> str:
    """Seal ``plaintext`` for ``recipient`` (a key or its published form), bound to
    ``deployment`` and ``name``. Deterministic (see the module docstring)."""
    if isinstance(recipient, str):
        recipient = decode_public_key(recipient)
    if len(plaintext) > MAX_SECRET_BYTES:
        raise SealingError(f"secret {name!r} is {len(plaintext)} bytes; the limit is "
                           f"{MAX_SECRET_BYTES}")
    ad = associated_data(deployment, name)
    recipient_pk = _raw_public(recipient)
    eph = X25519PrivateKey.from_private_bytes(_hkdf(plaintext, recipient_pk, _EPHEMERAL_INFO + ad))
    eph_pk = _raw_public(eph.public_key())
    try:
        shared = eph.exchange(recipient)
    except CryptoError:  # a low-order point: no agent publishes one
        raise SealingError("the sealing key is not a usable X25519 public key") from None
    ciphertext = chacha20_poly1305_encrypt(_aead_key(shared, eph_pk, recipient_pk), _NONCE,
                                           plaintext, ad)
    return ENVELOPE_PREFIX + _b64encode(eph_pk + ciphertext)


def envelope_version(envelope: str) -> str:
    """The version tag of an envelope (``v1``); :class:`SealingError` if it has none."""
    match = _VERSIONED.match(envelope)
    if match is None:
        raise SealingError("not a sealed value (expected 'v1:<base64url>')")
    return match.group(1)


def check_envelope(envelope: str) -> str:
    """Shape only (version, encoding, length): what a validator can check without the key."""
    _envelope_payload(envelope)
    return envelope


def _envelope_payload(envelope: str) -> bytes:
    version = envelope_version(envelope)
    if version != SEALING_VERSION:
        raise SealingError(f"sealed with version {version}; this agent opens {SEALING_VERSION}")
    raw = _b64decode(envelope[len(ENVELOPE_PREFIX):], "sealed value")
    if len(raw) < KEY_BYTES + TAG_BYTES:
        raise SealingError("sealed value is too short")
    if len(raw) > KEY_BYTES + MAX_SECRET_BYTES + TAG_BYTES:
        raise SealingError(f"sealed value holds more than {MAX_SECRET_BYTES} bytes")
    return raw


def open_sealed(private_key: X25519PrivateKey, deployment: str, name: str, envelope: str) -> bytes:
    """The plaintext of ``envelope``; :class:`SealingError` if it was not sealed to this key,
    for this deployment and name, or was changed."""
    raw = _envelope_payload(envelope)
    eph_pk, ciphertext = raw[:KEY_BYTES], raw[KEY_BYTES:]
    recipient_pk = _raw_public(private_key.public_key())
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(eph_pk))
        return chacha20_poly1305_decrypt(_aead_key(shared, eph_pk, recipient_pk), _NONCE,
                                         ciphertext, associated_data(deployment, name))
    except CryptoError:
        raise SealingError(
            "cannot be opened: it was sealed to another device's key, for another deployment "
            "or name, or it was altered"
        ) from None


def envelope_digest(envelope: str) -> str:
    """A short name for an envelope (first 16 hex of SHA-256): changes whenever it does.

    A digest of the *envelope*, never of the plaintext: a plaintext hash of a short password
    could be reversed by brute force by anyone who sees the name.
    """
    return hashlib.sha256(envelope.encode("utf-8")).hexdigest()[:16]
