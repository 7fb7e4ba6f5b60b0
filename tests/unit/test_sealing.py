"""Secrets sealed to one device (contracts.sealing): the envelope, its guarantees, its format."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519 as reference
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.contracts import canonical_json
from harmony_fleet.contracts.sealing import (
    ENVELOPE_PREFIX,
    KEY_BYTES,
    MAX_ENVELOPE_CHARS,
    MAX_SECRET_BYTES,
    TAG_BYTES,
    SealingError,
    associated_data,
    check_envelope,
    decode_public_key,
    encode_public_key,
    envelope_digest,
    envelope_version,
    generate_private_key,
    open_sealed,
    private_key_from_pem,
    private_key_to_pem,
    public_key_of,
    seal,
)
from harmony_fleet.purecrypto import X25519PrivateKey, X25519PublicKey

from .strategies import PROPERTY, deployment_tokens

#: Two fixed device keys, so every property runs against the same recipients.
DEVICE = X25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
DEVICE_PUB = public_key_of(DEVICE)

secret_names = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9_-]{0,30}[A-Za-z0-9])?\Z", fullmatch=True)
plaintexts = st.binary(max_size=2048)


def _raw(envelope: str) -> bytes:
    body = envelope.removeprefix(ENVELOPE_PREFIX)
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _envelope(raw: bytes) -> str:
    return ENVELOPE_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ----------------------------------------------------------------------------- the guarantees


@PROPERTY
@given(plaintext=plaintexts, deployment=deployment_tokens, name=secret_names)
def test_round_trip(plaintext: bytes, deployment: str, name: str) -> None:
    envelope = seal(DEVICE_PUB, deployment, name, plaintext)
    assert envelope.startswith("v1:")
    assert open_sealed(DEVICE, deployment, name, envelope) == plaintext


@PROPERTY
@given(plaintext=plaintexts, deployment=deployment_tokens, name=secret_names)
def test_sealing_is_deterministic(plaintext: bytes, deployment: str, name: str) -> None:
    # what keeps the control plane idempotent: the same inputs give the same bytes
    assert seal(DEVICE_PUB, deployment, name, plaintext) == \
        seal(decode_public_key(DEVICE_PUB), deployment, name, plaintext)


@PROPERTY
@given(a=plaintexts, b=plaintexts, deployment=deployment_tokens, name=secret_names)
def test_different_plaintexts_give_unrelated_envelopes(
    a: bytes, b: bytes, deployment: str, name: str
) -> None:
    if a == b:
        return
    first, second = _raw(seal(DEVICE_PUB, deployment, name, a)), \
        _raw(seal(DEVICE_PUB, deployment, name, b))
    # a fresh ephemeral key per plaintext: the one-time key (and so the nonce) never repeats
    assert first[:KEY_BYTES] != second[:KEY_BYTES]


def test_the_same_secret_differs_per_device_deployment_and_name() -> None:
    envelopes = {
        seal(DEVICE_PUB, "shop_web", "pw", b"same"),
        seal(public_key_of(OTHER), "shop_web", "pw", b"same"),
        seal(DEVICE_PUB, "shop_api", "pw", b"same"),
        seal(DEVICE_PUB, "shop_web", "pw2", b"same"),
    }
    assert len(envelopes) == 4


@PROPERTY
@given(plaintext=plaintexts, data=st.data())
def test_any_changed_byte_is_detected(plaintext: bytes, data: st.DataObject) -> None:
    raw = bytearray(_raw(seal(DEVICE_PUB, "ns_app", "pw", plaintext)))
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    raw[index] ^= flip
    with pytest.raises(SealingError, match="cannot be opened"):
        open_sealed(DEVICE, "ns_app", "pw", _envelope(bytes(raw)))


@PROPERTY
@given(plaintext=plaintexts, data=st.data())
def test_any_changed_character_is_rejected(plaintext: bytes, data: st.DataObject) -> None:
    envelope = seal(DEVICE_PUB, "ns_app", "pw", plaintext)
    index = data.draw(st.integers(0, len(envelope) - 1), label="index")
    replacement = data.draw(st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:=v2 "), label="char")
    if envelope[index] == replacement:
        return
    changed = envelope[:index] + replacement + envelope[index + 1:]
    with pytest.raises(SealingError):
        open_sealed(DEVICE, "ns_app", "pw", changed)


@PROPERTY
@given(plaintext=plaintexts)
def test_another_devices_key_cannot_open(plaintext: bytes) -> None:
    envelope = seal(DEVICE_PUB, "ns_app", "pw", plaintext)
    with pytest.raises(SealingError, match="another device's key"):
        open_sealed(OTHER, "ns_app", "pw", envelope)


@PROPERTY
@given(plaintext=plaintexts, deployment=deployment_tokens, name=secret_names)
def test_associated_data_binds_deployment_and_name(
    plaintext: bytes, deployment: str, name: str
) -> None:
    envelope = seal(DEVICE_PUB, deployment, name, plaintext)
    if deployment != "elsewhere":
        with pytest.raises(SealingError):
            open_sealed(DEVICE, "elsewhere", name, envelope)
    if name != "renamed":
        with pytest.raises(SealingError):
            open_sealed(DEVICE, deployment, "renamed", envelope)


def test_associated_data_is_unambiguous() -> None:
    # "a_b" + "c" and "a" + "b_c" must not bind the same way
    assert associated_data("a_b", "c") != associated_data("a", "b_c")
    assert associated_data("ns_app", "pw") == canonical_json(["harmony-fleet/secret/v1", "ns_app", "pw"])


def test_errors_never_contain_the_secret_or_the_envelope() -> None:
    plaintext = b"hunter2-very-secret"
    envelope = seal(DEVICE_PUB, "ns_app", "pw", plaintext)
    for attempt in (
        lambda: open_sealed(OTHER, "ns_app", "pw", envelope),
        lambda: open_sealed(DEVICE, "ns_app", "other", envelope),
        lambda: open_sealed(DEVICE, "ns_app", "pw", envelope[:-3] + "AAA"),
        lambda: open_sealed(DEVICE, "ns_app", "pw", envelope + "!"),
    ):
        with pytest.raises(SealingError) as info:
            attempt()
        assert "hunter2" not in str(info.value)
        assert envelope[3:20] not in str(info.value)


# ----------------------------------------------------------------------------- the format


def test_known_answer() -> None:
    """The v1 format is fixed: agents in the field open what controllers seal today."""
    assert DEVICE_PUB == "j0DFrbaPJWJK5bIU6nZ6bslNgp09e14a0bpvPiE4KF8"
    envelope = (
        "v1:dn_nKL0jC4WQthXh2eKVy9nKXc3b0oncrrxDNIA5XSfh3dSVnYo1UgRbIlnxE3N4iL6tqACRBKQ7EI6G8Y0lJJblc2"
        "HhR7AvJ-WhQA"
    )
    assert seal(DEVICE_PUB, "shop_web", "db-password", b"correct horse battery staple") == envelope
    assert open_sealed(DEVICE, "shop_web", "db-password", envelope) == \
        b"correct horse battery staple"


@PROPERTY
@given(plaintext=plaintexts, deployment=deployment_tokens, name=secret_names)
def test_the_construction_is_the_documented_one(
    plaintext: bytes, deployment: str, name: str
) -> None:
    """Rebuild the envelope from the module docstring with ``cryptography``'s primitives (an
    independent implementation of what harmony_fleet.purecrypto computes)."""
    device = reference.X25519PrivateKey.from_private_bytes(DEVICE.private_bytes_raw())
    recipient = device.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
    ad = canonical_json(["harmony-fleet/secret/v1", deployment, name])
    eph_sk = HKDF(hashes.SHA256(), 32, salt=recipient,
                  info=b"harmony-fleet/sealing/v1/ephemeral" + ad).derive(plaintext)
    eph = reference.X25519PrivateKey.from_private_bytes(eph_sk)
    eph_pk = eph.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    shared = eph.exchange(device.public_key())
    key = HKDF(hashes.SHA256(), 32, salt=eph_pk + recipient,
               info=b"harmony-fleet/sealing/v1/key").derive(shared)
    body = ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, ad)
    assert seal(DEVICE_PUB, deployment, name, plaintext) == _envelope(eph_pk + body)


def test_versions() -> None:
    envelope = seal(DEVICE_PUB, "ns_app", "pw", b"x")
    assert envelope_version(envelope) == "v1"
    assert check_envelope(envelope) == envelope
    future = "v2:" + envelope[3:]
    assert envelope_version(future) == "v2"
    with pytest.raises(SealingError, match="sealed with version v2; this agent opens v1"):
        open_sealed(DEVICE, "ns_app", "pw", future)
    for bad in ("", "plaintext", "v1", ":abc", "V1:abc", "vx:abc"):
        with pytest.raises(SealingError, match="not a sealed value"):
            check_envelope(bad)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("abc=", "not base64url"),        # padding is not the format
        ("ab+/", "not base64url"),        # the standard alphabet is not either
        ("a", "not base64url"),           # no byte string has this length
        ("AB", "not canonical"),          # unused bits set: a second spelling of b"\x00"
        ("AAAA", "too short"),
    ],
)
def test_malformed_envelopes(body: str, fragment: str) -> None:
    with pytest.raises(SealingError, match=fragment):
        check_envelope("v1:" + body)


def test_size_limits() -> None:
    biggest = seal(DEVICE_PUB, "ns_app", "pw", bytes(MAX_SECRET_BYTES))
    assert len(biggest) == MAX_ENVELOPE_CHARS
    assert len(_raw(biggest)) == KEY_BYTES + MAX_SECRET_BYTES + TAG_BYTES
    with pytest.raises(SealingError, match="the limit is 65536"):
        seal(DEVICE_PUB, "ns_app", "pw", bytes(MAX_SECRET_BYTES + 1))
    oversized = _envelope(bytes(KEY_BYTES + MAX_SECRET_BYTES + TAG_BYTES + 1))
    with pytest.raises(SealingError, match="more than 65536 bytes"):
        check_envelope(oversized)


def test_empty_secret_is_allowed() -> None:
    assert open_sealed(DEVICE, "a", "b", seal(DEVICE_PUB, "a", "b", b"")) == b""


def test_low_order_recipient_is_refused() -> None:
    zero = encode_public_key(X25519PublicKey.from_public_bytes(bytes(32)))
    with pytest.raises(SealingError, match="not a usable X25519 public key"):
        seal(zero, "a", "b", b"x")


def test_digest_names_the_envelope_not_the_plaintext() -> None:
    envelope = seal(DEVICE_PUB, "ns_app", "pw", b"1234")
    digest = envelope_digest(envelope)
    assert len(digest) == 16
    assert digest == hashlib.sha256(envelope.encode()).hexdigest()[:16]
    assert digest not in hashlib.sha256(b"1234").hexdigest()
    assert envelope_digest(seal(DEVICE_PUB, "ns_app", "pw", b"1235")) != digest


# ----------------------------------------------------------------------------- keys


def test_public_key_encoding() -> None:
    key = generate_private_key()
    text = public_key_of(key)
    assert len(text) == 43
    assert decode_public_key(text).public_bytes_raw() == key.public_key().public_bytes_raw()
    # the same public key as cryptography derives from the private one
    assert reference.X25519PrivateKey.from_private_bytes(key.private_bytes_raw()).public_key() \
        .public_bytes_raw() == decode_public_key(text).public_bytes_raw()
    with pytest.raises(SealingError, match="must be 32 bytes, got 24"):
        decode_public_key("A" * 32)
    with pytest.raises(SealingError, match="not base64url"):
        decode_public_key(text + "=")


def test_private_key_pem_round_trip() -> None:
    key = generate_private_key()
    pem = private_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_of(private_key_from_pem(pem)) == public_key_of(key)
    # the same PKCS#8 as cryptography (OpenSSL) writes and reads: existing key files still load
    theirs = reference.X25519PrivateKey.from_private_bytes(key.private_bytes_raw())
    assert pem == theirs.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(loaded, reference.X25519PrivateKey)
    assert loaded.private_bytes_raw() == key.private_bytes_raw()


def test_private_key_pem_rejects_other_keys_and_garbage() -> None:
    ed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(SealingError, match="not an X25519 key"):
        private_key_from_pem(ed)
    with pytest.raises(SealingError, match="not a PEM private key"):
        private_key_from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
