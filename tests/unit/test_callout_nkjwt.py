"""NATS JWTs (``ed25519-nkey``) and xkey sealing (harmony_fleet.callout.nkjwt).

Signatures are cross-checked with the ``nkeys`` package and the format is rebuilt here from
the NATS documentation, so a bug that is symmetric in encode and decode still shows.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import nacl.public
import nkeys
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony_fleet.callout.nkjwt import (
    NatsJwtError,
    NKeyPair,
    XKeyPair,
    decode_jwt,
    encode_jwt,
    new_nkey,
    new_xkey,
    nkey_from_seed,
    verify_nkey_signature,
    xkey_from_seed,
)

from .strategies import PROPERTY, json_objects

KIND_LETTERS = {"account": "A", "user": "U", "server": "N", "operator": "O"}
HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
NOW = 1_777_000_000.7
CRYPTO = settings(PROPERTY, max_examples=60)
NOT_UTF8 = b"\xff\xfe\xfd"

# fixed keys for the whole module: key creation is cheap, but stable keys keep failures readable
ACCOUNT = new_nkey("account")
USER = new_nkey("user")
XA = new_xkey()
XB = new_xkey()
XC = new_xkey()


# ----------------------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def b32raw(key: str) -> bytes:
    return base64.b32decode(key + "=" * (-len(key) % 8))


def signed(header: Any, claims: Any, signer: NKeyPair = ACCOUNT) -> str:
    """A token with arbitrary header and claims, correctly signed (built independently)."""
    signing_input = f"{b64(compact(header))}.{b64(compact(claims))}"
    sig = nkeys.from_seed(signer.seed.encode()).sign(signing_input.encode())
    return f"{signing_input}.{b64(bytes(sig))}"


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    head, payload, sig = token.split(".")
    return json.loads(unb64(head)), json.loads(unb64(payload)), unb64(sig)


def expected_jti(claims: dict[str, Any]) -> str:
    """nats-io/jwt: base32 (unpadded) SHA-512/256 of the JSON of the common claim fields."""
    fields = ("aud", "exp", "iat", "iss", "name", "nbf", "sub")
    data = {k: claims[k] for k in fields if claims.get(k) not in (None, "", 0)}
    return base64.b32encode(hashlib.new("sha512_256", compact(data)).digest()).decode().rstrip("=")


def with_bad_checksum(key: str) -> str:
    raw = bytearray(b32raw(key))
    raw[-1] ^= 0xFF
    return base64.b32encode(bytes(raw)).decode().rstrip("=")


# ----------------------------------------------------------------------------- nkeys


@pytest.mark.parametrize(("kind", "letter"), KIND_LETTERS.items())
def test_new_nkey_prefixes_and_lengths(kind: str, letter: str) -> None:
    kp = new_nkey(kind)
    assert isinstance(kp, NKeyPair)
    assert kp.public_key.startswith(letter)
    assert len(kp.public_key) == 56
    assert kp.seed.startswith("S" + letter)
    assert len(kp.seed) == 58
    raw = b32raw(kp.public_key)
    assert len(raw) == 35
    assert bytes(nkeys.crc16_checksum(raw[:-2])) == raw[-2:]
    # the nkeys package agrees on the public key of the seed
    assert nkeys.from_seed(kp.seed.encode()).public_key.decode() == kp.public_key


@pytest.mark.parametrize("kind", KIND_LETTERS)
def test_new_nkey_is_fresh_every_time(kind: str) -> None:
    keys = {new_nkey(kind) for _ in range(5)}
    assert len({k.seed for k in keys}) == 5
    assert len({k.public_key for k in keys}) == 5


@pytest.mark.parametrize("kind", ["", "Account", "cluster", "curve", "seed"])
def test_new_nkey_unknown_kind(kind: str) -> None:
    with pytest.raises((KeyError, ValueError)):
        new_nkey(kind)


@pytest.mark.parametrize("kind", KIND_LETTERS)
def test_nkey_from_seed_round_trip(kind: str) -> None:
    kp = new_nkey(kind)
    again = nkey_from_seed(kp.seed)
    assert again == kp
    assert again.public_key == kp.public_key


def test_sign_verifies_with_nkeys_and_here() -> None:
    data = b"header.payload"
    sig = USER.sign(data)
    assert len(sig) == 64
    assert nkeys.from_seed(USER.seed.encode()).verify(data, sig)
    verify_nkey_signature(USER.public_key, data, sig)  # no exception


@pytest.mark.parametrize("kind", KIND_LETTERS)
def test_verify_accepts_any_kind_of_signing_key(kind: str) -> None:
    kp = new_nkey(kind)
    verify_nkey_signature(kp.public_key, b"x", kp.sign(b"x"))


class TestVerifyErrors:
    def test_other_data(self) -> None:
        with pytest.raises(NatsJwtError, match="does not verify"):
            verify_nkey_signature(USER.public_key, b"data!", USER.sign(b"data"))

    def test_other_key(self) -> None:
        with pytest.raises(NatsJwtError, match="does not verify"):
            verify_nkey_signature(ACCOUNT.public_key, b"data", USER.sign(b"data"))

    def test_flipped_signature_bit(self) -> None:
        sig = bytearray(USER.sign(b"data"))
        sig[10] ^= 0x01
        with pytest.raises(NatsJwtError):
            verify_nkey_signature(USER.public_key, b"data", bytes(sig))

    @pytest.mark.parametrize("public_key", [
        "not base32!", "u" * 56, "é", "0000", "A" * 57,
    ])
    def test_not_base32(self, public_key: str) -> None:
        with pytest.raises(NatsJwtError):
            verify_nkey_signature(public_key, b"data", USER.sign(b"data"))

    def test_bad_checksum(self) -> None:
        with pytest.raises(NatsJwtError, match="checksum"):
            verify_nkey_signature(with_bad_checksum(USER.public_key), b"data", USER.sign(b"data"))

    @pytest.mark.parametrize("index", [1, 10, 30, 55])
    def test_any_changed_character(self, index: int) -> None:
        key = USER.public_key
        other = "B" if key[index] != "B" else "C"
        with pytest.raises(NatsJwtError):
            verify_nkey_signature(key[:index] + other + key[index + 1:], b"d", USER.sign(b"d"))

    @pytest.mark.parametrize("public_key", ["", "AAAA", USER.seed, USER.public_key[:-8]],
                             ids=["empty", "AAAA", "a-seed", "truncated"])
    def test_bad_length(self, public_key: str) -> None:
        with pytest.raises(NatsJwtError):
            verify_nkey_signature(public_key, b"data", USER.sign(b"data"))

    @pytest.mark.parametrize("sig", [b"", b"short", b"\x00" * 63, b"\x00" * 65],
                             ids=["empty", "5", "63", "65"])
    def test_signature_of_wrong_length(self, sig: bytes) -> None:
        with pytest.raises(NatsJwtError):
            verify_nkey_signature(USER.public_key, b"data", sig)


# ----------------------------------------------------------------------------- JWT encoding


def test_encode_jwt_format() -> None:
    claims = {"sub": USER.public_key, "aud": "FLEET", "name": "pi-1", "exp": 1_777_003_600,
              "nats": {"type": "user", "version": 2}}
    token = encode_jwt(claims, ACCOUNT, now=NOW)
    assert token.count(".") == 2
    assert "=" not in token
    head, payload, sig_text = token.split(".")
    header, body, sig = parts(token)
    assert header == HEADER
    assert body == {**claims, "iss": ACCOUNT.public_key, "iat": int(NOW),
                    "jti": expected_jti({**claims, "iss": ACCOUNT.public_key, "iat": int(NOW)})}
    # signature: Ed25519 over the ASCII "header.payload", checked with the nkeys package
    assert len(sig) == 64
    assert nkeys.from_seed(ACCOUNT.seed.encode()).verify(f"{head}.{payload}".encode(), sig)
    assert b64(sig) == sig_text


def test_encode_jwt_sets_iss_iat_jti_over_the_callers() -> None:
    claims = {"sub": "x", "iss": "forged", "iat": 1, "jti": "forged"}
    body = parts(encode_jwt(claims, ACCOUNT, now=NOW))[1]
    assert body["iss"] == ACCOUNT.public_key
    assert body["iat"] == int(NOW)
    assert body["jti"] != "forged"
    assert body["jti"] == expected_jti(body)
    # the caller's dict is untouched
    assert claims == {"sub": "x", "iss": "forged", "iat": 1, "jti": "forged"}


def test_encode_jwt_uses_the_clock_when_now_is_not_given() -> None:
    import time

    before = int(time.time())
    iat = parts(encode_jwt({"sub": "x"}, ACCOUNT))[1]["iat"]
    assert before <= iat <= int(time.time())
    assert isinstance(iat, int)


def test_jti_is_base32_without_padding() -> None:
    jti = parts(encode_jwt({"sub": "x"}, ACCOUNT, now=NOW))[1]["jti"]
    assert "=" not in jti
    assert len(b32raw(jti)) == 32


def test_jti_is_deterministic_for_the_same_content() -> None:
    claims = {"sub": "x", "aud": "FLEET", "exp": 5}
    a = parts(encode_jwt(claims, ACCOUNT, now=NOW))[1]["jti"]
    b = parts(encode_jwt(dict(claims), ACCOUNT, now=NOW))[1]["jti"]
    assert a == b


@pytest.mark.parametrize("change", [
    {"sub": "y"}, {"aud": "OTHER"}, {"exp": 6}, {"name": "n"}, {"nbf": 3},
])
def test_jti_changes_with_content(change: dict[str, Any]) -> None:
    claims = {"sub": "x", "aud": "FLEET", "exp": 5}
    a = parts(encode_jwt(claims, ACCOUNT, now=NOW))[1]["jti"]
    b = parts(encode_jwt({**claims, **change}, ACCOUNT, now=NOW))[1]["jti"]
    assert a != b


def test_jti_changes_with_issuer_and_time() -> None:
    claims = {"sub": "x"}
    base = parts(encode_jwt(claims, ACCOUNT, now=NOW))[1]["jti"]
    assert parts(encode_jwt(claims, ACCOUNT, now=NOW + 1))[1]["jti"] != base
    assert parts(encode_jwt(claims, new_nkey("account"), now=NOW))[1]["jti"] != base


@CRYPTO
@given(claims=json_objects)
def test_encode_decode_round_trip(claims: dict[str, Any]) -> None:
    token = encode_jwt(claims, USER, now=NOW)
    decoded = decode_jwt(token)
    expected = {**claims, "iss": USER.public_key, "iat": int(NOW)}
    expected.pop("jti", None)
    expected["jti"] = expected_jti(expected)
    assert decoded == expected


def test_decode_accepts_a_token_built_independently() -> None:
    claims = {"iss": ACCOUNT.public_key, "sub": "U123", "nats": {"type": "user"}}
    assert decode_jwt(signed(HEADER, claims)) == claims


# ----------------------------------------------------------------------------- JWT rejection


def test_decode_rejects_tampered_payload() -> None:
    token = encode_jwt({"sub": "x", "name": "pi-1"}, ACCOUNT, now=NOW)
    head, _, sig = token.split(".")
    body = parts(token)[1]
    forged = b64(compact({**body, "name": "pi-2"}))
    with pytest.raises(NatsJwtError, match="does not verify"):
        decode_jwt(f"{head}.{forged}.{sig}")


def test_decode_rejects_payload_swapped_from_another_token() -> None:
    one = encode_jwt({"sub": "one"}, ACCOUNT, now=NOW)
    two = encode_jwt({"sub": "two"}, ACCOUNT, now=NOW)
    h1, _, s1 = one.split(".")
    _, p2, _ = two.split(".")
    with pytest.raises(NatsJwtError):
        decode_jwt(f"{h1}.{p2}.{s1}")


@pytest.mark.parametrize("index", [0, 31, 63])
def test_decode_rejects_tampered_signature(index: int) -> None:
    token = encode_jwt({"sub": "x"}, ACCOUNT, now=NOW)
    head, payload, _ = token.split(".")
    sig = bytearray(parts(token)[2])
    sig[index] ^= 0x80
    with pytest.raises(NatsJwtError):
        decode_jwt(f"{head}.{payload}.{b64(bytes(sig))}")


def test_decode_rejects_a_signature_by_another_key_than_iss() -> None:
    # claims say the account issued it, the user key signed it
    token = signed(HEADER, {"iss": ACCOUNT.public_key, "sub": "x"}, signer=USER)
    with pytest.raises(NatsJwtError, match="does not verify"):
        decode_jwt(token)


def test_decode_rejects_header_swapped_after_signing() -> None:
    token = encode_jwt({"sub": "x"}, ACCOUNT, now=NOW)
    _, payload, sig = token.split(".")
    head = b64(compact({"alg": "ed25519-nkey", "typ": "JWT"}))  # same meaning, other bytes
    with pytest.raises(NatsJwtError):
        decode_jwt(f"{head}.{payload}.{sig}")


@pytest.mark.parametrize("keep", [0, 12, 84])  # 0, 9 and 63 bytes
def test_decode_rejects_truncated_signature(keep: int) -> None:
    token = encode_jwt({"sub": "x"}, ACCOUNT, now=NOW)
    head, payload, sig = token.split(".")
    with pytest.raises(NatsJwtError):
        decode_jwt(f"{head}.{payload}.{sig[:keep]}")


@pytest.mark.parametrize("header", [
    {"typ": "JWT", "alg": "HS256"},
    {"typ": "JWT", "alg": "RS256"},
    {"typ": "JWT", "alg": "none"},
    {"typ": "JWT", "alg": "EdDSA"},
    {"typ": "JWT"},
    {"alg": "ed25519-nkey"},
    {"typ": "JWS", "alg": "ed25519-nkey"},
    {},
])
def test_decode_rejects_wrong_header(header: dict[str, Any]) -> None:
    # correctly signed by the key in iss: only the header is wrong
    with pytest.raises(NatsJwtError, match="header"):
        decode_jwt(signed(header, {"iss": ACCOUNT.public_key, "sub": "x"}))


@pytest.mark.parametrize("token", [
    "",
    "garbage",
    "a.b",
    "a.b.c.d",
    "!!!.!!!.!!!",
    "e30.e30",
    "e30.e30.e30.e30",
    "eyJ.eyJ.AAAA",
    f"{b64(b'not json')}.{b64(b'{}')}.{b64(bytes(64))}",
    f"{b64(compact(HEADER))}.{b64(b'not json')}.{b64(bytes(64))}",
    f"{b64(compact(HEADER))}.{b64(NOT_UTF8)}.{b64(bytes(64))}",
])
def test_decode_rejects_garbage(token: str) -> None:
    with pytest.raises(NatsJwtError):
        decode_jwt(token)


@pytest.mark.parametrize("claims", [[], [1, 2], "claims", 5, None, True])
def test_decode_rejects_non_object_claims(claims: Any) -> None:
    with pytest.raises(NatsJwtError, match="objects"):
        decode_jwt(signed(HEADER, claims))


@pytest.mark.parametrize("header", [[], "JWT", None, 1])
def test_decode_rejects_non_object_header(header: Any) -> None:
    with pytest.raises(NatsJwtError):
        decode_jwt(signed(header, {"iss": ACCOUNT.public_key}))


@pytest.mark.parametrize("iss", [
    "not-a-key",
    "",
    "A" * 56,
    USER.public_key.lower(),
    USER.seed,
    with_bad_checksum(USER.public_key),
    USER.public_key[:-4],
], ids=["not-a-key", "empty", "56-A", "lower-case", "a-seed", "bad-checksum", "truncated"])
def test_decode_rejects_iss_that_is_not_an_nkey(iss: str) -> None:
    with pytest.raises(NatsJwtError):
        decode_jwt(signed(HEADER, {"iss": iss, "sub": "x"}, signer=USER))


@pytest.mark.parametrize("iss", [None, 5, ["A"], {"k": "v"}])
def test_decode_rejects_non_string_iss(iss: Any) -> None:
    claims = {"sub": "x"} if iss is None else {"iss": iss, "sub": "x"}
    with pytest.raises(NatsJwtError, match="issuer"):
        decode_jwt(signed(HEADER, claims))


def test_decode_does_not_trust_iss_for_the_caller() -> None:
    # any valid key may issue a token; the claims name it so the caller can check it
    stranger = new_nkey("account")
    assert decode_jwt(encode_jwt({"sub": "x"}, stranger))["iss"] == stranger.public_key


# ----------------------------------------------------------------------------- xkeys


def test_new_xkey_shape() -> None:
    kp = new_xkey()
    assert isinstance(kp, XKeyPair)
    assert kp.public_key.startswith("X")
    assert len(kp.public_key) == 56
    assert kp.seed.startswith("SX")
    assert len(kp.seed) == 58
    raw = b32raw(kp.public_key)
    assert raw[0] == 23 << 3
    assert bytes(nkeys.crc16_checksum(raw[:-2])) == raw[-2:]
    seed = b32raw(kp.seed)
    assert len(seed) == 36
    assert bytes(nkeys.crc16_checksum(seed[:-2])) == seed[-2:]
    # the public key is the curve25519 public key of the seed's private key
    assert raw[1:-2] == bytes(nacl.public.PrivateKey(seed[2:34]).public_key)


def test_new_xkey_is_fresh() -> None:
    assert len({new_xkey().public_key for _ in range(5)}) == 5


def test_xkey_from_seed_round_trip() -> None:
    assert xkey_from_seed(XA.seed) == XA


@CRYPTO
@given(data=st.binary(max_size=4096))
def test_seal_open_round_trip(data: bytes) -> None:
    sealed = XA.seal(XB.public_key, data)
    assert sealed[:4] == b"xkv1"
    assert len(sealed) == 4 + 24 + 16 + len(data)
    assert XB.open(XA.public_key, sealed) == data


def test_seal_uses_a_fresh_nonce() -> None:
    one = XA.seal(XB.public_key, b"same")
    two = XA.seal(XB.public_key, b"same")
    assert one != two
    assert one[4:28] != two[4:28]


def test_seal_open_a_jwt_both_ways() -> None:
    token = encode_jwt({"sub": "x"}, ACCOUNT, now=NOW).encode()
    assert XA.open(XB.public_key, XB.seal(XA.public_key, token)) == token
    assert XB.open(XA.public_key, XA.seal(XB.public_key, token)) == token


def test_open_with_the_wrong_recipient_key() -> None:
    sealed = XA.seal(XB.public_key, b"secret")
    with pytest.raises(NatsJwtError, match="does not open"):
        XC.open(XA.public_key, sealed)


def test_open_naming_the_wrong_sender() -> None:
    sealed = XA.seal(XB.public_key, b"secret")
    with pytest.raises(NatsJwtError, match="does not open"):
        XB.open(XC.public_key, sealed)


@pytest.mark.parametrize("cut", [lambda s: s[:-1], lambda s: s[:44], lambda s: s[:28],
                                 lambda s: s[:27], lambda s: s[:4], lambda s: b""])
def test_open_truncated(cut: Any) -> None:
    sealed = XA.seal(XB.public_key, b"a secret of some length")
    with pytest.raises(NatsJwtError):
        XB.open(XA.public_key, cut(sealed))


@pytest.mark.parametrize("mangle", [
    lambda s: s[4:],
    lambda s: b"xkv2" + s[4:],
    lambda s: b"XKV1" + s[4:],
    lambda s: b"eyJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.AAAA" + s,
])
def test_open_without_the_xkv1_header(mangle: Any) -> None:
    sealed = XA.seal(XB.public_key, b"secret")
    with pytest.raises(NatsJwtError, match="xkv1"):
        XB.open(XA.public_key, mangle(sealed))


@pytest.mark.parametrize("index", [4, 27, 28, -1])
def test_open_tampered(index: int) -> None:
    sealed = bytearray(XA.seal(XB.public_key, b"secret"))
    sealed[index] ^= 0x01
    with pytest.raises(NatsJwtError):
        XB.open(XA.public_key, bytes(sealed))


@pytest.mark.parametrize("key", [USER.public_key, ACCOUNT.public_key, XB.seed,
                                 with_bad_checksum(XB.public_key)],
                         ids=["a-user-key", "an-account-key", "an-xkey-seed", "bad-checksum"])
def test_non_xkey_peers_are_refused(key: str) -> None:
    with pytest.raises(NatsJwtError):
        XA.seal(key, b"x")
    with pytest.raises(NatsJwtError):
        XB.open(key, XA.seal(XB.public_key, b"x"))


@pytest.mark.parametrize("key", ["not base32!", ""])
def test_unparseable_xkey_peer_is_a_natsjwterror(key: str) -> None:
    with pytest.raises(NatsJwtError):
        XB.open(key, XA.seal(XB.public_key, b"x"))
