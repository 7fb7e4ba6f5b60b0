"""The few cryptographic primitives the agent needs, in pure Python (standard library only).

Why not the ``cryptography`` package: it is the agent's single largest memory cost (its Rust
extension with a statically linked OpenSSL keeps ~9 MiB resident, ~11 MiB with its Python
modules; ``benchmarks/bench_agent_memory.py``), it needs ``cffi``, which publishes no armv7l
wheel, and the agent uses three primitives of it, each a few dozen lines:

* **X25519** (RFC 7748): the Montgomery ladder on Python integers, with an arithmetic
  conditional swap (no branch on a key bit);
* **ChaCha20-Poly1305** (RFC 8439), the AEAD of sealed secrets; the tag is compared with
  :func:`hmac.compare_digest`;
* **HKDF-SHA256** (RFC 5869) on :mod:`hmac` (OpenSSL's SHA-256 underneath);
* **RSASSA-PKCS1-v1_5 with SHA-256** signing (RFC 8017; the ``RS256`` of a Zitadel JWT-profile
  assertion), on the Chinese remainder theorem with RSA blinding, the signature verified
  with the public exponent before it is returned;
* the DER and PEM needed to read those keys (PKCS#1 and PKCS#8 RSA keys, PKCS#8 X25519 keys)
  and write an X25519 key as PKCS#8 (what ``openssl pkey`` reads).

Every function is checked against ``cryptography`` (the test suite's reference: RFC vectors,
hypothesis) in ``tests/unit/test_purecrypto.py``.

**Timing.** Python integers are not constant-time: the duration of an X25519 exchange or an
RSA signature may depend slightly on the key's value. The exposure is small here: the RSA key
signs only assertions the agent itself builds, blinded by a fresh random factor each time, and
the X25519 key is used only on envelopes taken from the ``desired-state`` bucket, which only
fleet admins write. The speed (measured on the development machine, x86_64, under a load of
5 on 2 cores): an X25519 exchange ~5 ms, a 2048-bit RSA signature ~22 ms (once per token
refresh; it holds the GIL, so the agent's event loop waits that long), ChaCha20-Poly1305 of
the largest secret (64 KiB) 0.23 s, of a typical one (under 1 KiB) a few ms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass
from typing import Final

from harmony_fleet.errors import FleetError


class CryptoError(FleetError, ValueError):
    """A key or a message cannot be used. Messages never contain key material."""


# ------------------------------------------------------------------------------------ X25519

_P: Final = 2**255 - 19
_A24: Final = 121665
X25519_BYTES: Final = 32


def _clamp(scalar: bytes) -> int:
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def x25519(scalar: bytes, u_bytes: bytes) -> bytes:
    """X25519(scalar, u) of RFC 7748 section 5: 32 bytes in, 32 bytes out."""
    if len(scalar) != X25519_BYTES or len(u_bytes) != X25519_BYTES:
        raise CryptoError("X25519 takes 32-byte scalars and u-coordinates")
    k = _clamp(scalar)
    x1 = int.from_bytes(u_bytes, "little") & ((1 << 255) - 1)  # the top bit is ignored
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        bit = (k >> t) & 1
        swap ^= bit
        # conditional swap without a branch on the key bit
        mask = -swap
        dummy = mask & (x2 ^ x3)
        x2, x3 = x2 ^ dummy, x3 ^ dummy
        dummy = mask & (z2 ^ z3)
        z2, z3 = z2 ^ dummy, z3 ^ dummy
        swap = bit
        a = (x2 + z2) % _P
        aa = a * a % _P
        b = (x2 - z2) % _P
        bb = b * b % _P
        e = (aa - bb) % _P
        c = (x3 + z3) % _P
        d = (x3 - z3) % _P
        da = d * a % _P
        cb = c * b % _P
        x3 = (da + cb) % _P
        x3 = x3 * x3 % _P
        z3 = (da - cb) % _P
        z3 = x1 * (z3 * z3 % _P) % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    mask = -swap
    dummy = mask & (x2 ^ x3)
    x2 = x2 ^ dummy
    dummy = mask & (z2 ^ z3)
    z2 = z2 ^ dummy
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(X25519_BYTES, "little")


_BASE_POINT: Final = (9).to_bytes(X25519_BYTES, "little")


@dataclass(frozen=True)
class X25519PublicKey:
    """An X25519 public key (its 32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != X25519_BYTES:
            raise CryptoError(f"an X25519 public key is {X25519_BYTES} bytes, got {len(self.raw)}")

    @classmethod
    def from_public_bytes(cls, raw: bytes) -> X25519PublicKey:
        return cls(bytes(raw))

    def public_bytes_raw(self) -> bytes:
        return self.raw


@dataclass(frozen=True, repr=False)
class X25519PrivateKey:
    """An X25519 private key (its 32 raw bytes; never shown by ``repr``)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != X25519_BYTES:
            raise CryptoError(f"an X25519 private key is {X25519_BYTES} bytes")

    def __repr__(self) -> str:
        return "X25519PrivateKey(<secret>)"

    @classmethod
    def generate(cls) -> X25519PrivateKey:
        return cls(secrets.token_bytes(X25519_BYTES))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> X25519PrivateKey:
        return cls(bytes(raw))

    def private_bytes_raw(self) -> bytes:
        return self.raw

    def public_key(self) -> X25519PublicKey:
        return X25519PublicKey(x25519(self.raw, _BASE_POINT))

    def exchange(self, peer: X25519PublicKey) -> bytes:
        """The shared secret; :class:`CryptoError` for a low-order peer key (all zeros)."""
        shared = x25519(self.raw, peer.raw)
        if not any(shared):
            raise CryptoError("the peer's X25519 key is of low order (an all-zero secret)")
        return shared


# --------------------------------------------------------------------------------- ChaCha20


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] ^= s[a]
    s[d] = ((s[d] << 16) | (s[d] >> 16)) & 0xFFFFFFFF
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] ^= s[c]
    s[b] = ((s[b] << 12) | (s[b] >> 20)) & 0xFFFFFFFF
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] ^= s[a]
    s[d] = ((s[d] << 8) | (s[d] >> 24)) & 0xFFFFFFFF
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] ^= s[c]
    s[b] = ((s[b] << 7) | (s[b] >> 25)) & 0xFFFFFFFF


_SIGMA: Final = struct.unpack("<4I", b"expand 32-byte k")
_BLOCK: Final = struct.Struct("<16I")


def _chacha20_block(key_words: tuple[int, ...], counter: int, nonce_words: tuple[int, ...]) -> bytes:
    initial = [*_SIGMA, *key_words, counter & 0xFFFFFFFF, *nonce_words]
    s = list(initial)
    for _double_round in range(10):
        _quarter(s, 0, 4, 8, 12)
        _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14)
        _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15)
        _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13)
        _quarter(s, 3, 4, 9, 14)
    return _BLOCK.pack(*((x + y) & 0xFFFFFFFF for x, y in zip(s, initial, strict=True)))


def chacha20(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    """ChaCha20 of RFC 8439 section 2.4 (a 32-byte key, a 12-byte nonce)."""
    if len(key) != 32 or len(nonce) != 12:
        raise CryptoError("ChaCha20 takes a 32-byte key and a 12-byte nonce")
    if counter + (len(data) + 63) // 64 > 2**32:
        raise CryptoError("ChaCha20: message too long for this counter")
    key_words = struct.unpack("<8I", key)
    nonce_words = struct.unpack("<3I", nonce)
    out = bytearray(len(data))
    for block, offset in enumerate(range(0, len(data), 64)):
        stream = _chacha20_block(key_words, counter + block, nonce_words)
        chunk = data[offset:offset + 64]
        out[offset:offset + len(chunk)] = (
            int.from_bytes(chunk, "little") ^ int.from_bytes(stream[:len(chunk)], "little")
        ).to_bytes(len(chunk), "little")
    return bytes(out)


def poly1305(key: bytes, message: bytes) -> bytes:
    """The Poly1305 one-time authenticator of RFC 8439 section 2.5."""
    if len(key) != 32:
        raise CryptoError("Poly1305 takes a 32-byte one-time key")
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    p = (1 << 130) - 5
    acc = 0
    for offset in range(0, len(message), 16):
        block = message[offset:offset + 16]
        acc = (acc + int.from_bytes(block + b"\x01", "little")) * r % p
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def _pad16(data: bytes) -> bytes:
    return bytes(-len(data) % 16)


def _aead_tag(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    otk = chacha20(key, 0, nonce, bytes(32))
    mac_data = (ad + _pad16(ad) + ciphertext + _pad16(ciphertext)
                + struct.pack("<QQ", len(ad), len(ciphertext)))
    return poly1305(otk, mac_data)


AEAD_TAG_BYTES: Final = 16


def chacha20_poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD_CHACHA20_POLY1305 (RFC 8439 section 2.8): ciphertext followed by the 16-byte tag."""
    ciphertext = chacha20(key, 1, nonce, plaintext)
    return ciphertext + _aead_tag(key, nonce, ciphertext, ad)


def chacha20_poly1305_decrypt(key: bytes, nonce: bytes, data: bytes, ad: bytes) -> bytes:
    """The plaintext; :class:`CryptoError` if the tag does not match (nothing is decrypted
    before the tag is checked)."""
    if len(data) < AEAD_TAG_BYTES:
        raise CryptoError("the ciphertext is shorter than its tag")
    ciphertext, tag = data[:-AEAD_TAG_BYTES], data[-AEAD_TAG_BYTES:]
    if not hmac.compare_digest(_aead_tag(key, nonce, ciphertext, ad), tag):
        raise CryptoError("the authentication tag does not match")
    return chacha20(key, 1, nonce, ciphertext)


# ------------------------------------------------------------------------------------- HKDF


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of RFC 5869 (extract, then expand)."""
    if not 0 < length <= 255 * 32:
        raise CryptoError("HKDF-SHA256 output length out of range")
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


# -------------------------------------------------------------------------------- DER / PEM


def _der_read(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """One DER TLV at ``offset``: (tag, value, offset after it)."""
    try:
        tag = data[offset]
        length = data[offset + 1]
        offset += 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4:
                raise CryptoError("unsupported DER length")
            length = int.from_bytes(data[offset:offset + count], "big")
            offset += count
    except IndexError:
        raise CryptoError("truncated DER") from None
    end = offset + length
    if end > len(data):
        raise CryptoError("truncated DER")
    return tag, data[offset:end], end


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The TLVs of a constructed value's content."""
    items, offset = [], 0
    while offset < len(data):
        tag, value, offset = _der_read(data, offset)
        items.append((tag, value))
    return items


def _der_sequence(data: bytes) -> list[tuple[int, bytes]]:
    tag, value, end = _der_read(data, 0)
    if tag != 0x30 or end != len(data):
        raise CryptoError("not a DER SEQUENCE")
    return _der_items(value)


def _der_int(item: tuple[int, bytes]) -> int:
    tag, value = item
    if tag != 0x02 or not value:
        raise CryptoError("not a DER INTEGER")
    return int.from_bytes(value, "big", signed=True)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(value)) + value


_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)


def pem_decode(data: bytes | str) -> tuple[str, bytes]:
    """The label and DER bytes of the first PEM block of ``data``."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    match = _PEM.search(raw)
    if match is None:
        raise CryptoError("no PEM block found")
    try:
        der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
    except ValueError:
        raise CryptoError("the PEM block is not base64") from None
    return match.group(1).decode("ascii"), der


def pem_encode(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode("ascii")
    lines = "\n".join(text[i:i + 64] for i in range(0, len(text), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode("ascii")


#: algorithm identifiers (DER of the OID's value)
_OID_X25519: Final = bytes.fromhex("2b656e")  # 1.3.101.110
_OID_NAMES: Final = {bytes.fromhex("2b6570"): "Ed25519", bytes.fromhex("2b656f"): "X448",
                     bytes.fromhex("2b6571"): "Ed448",
                     bytes.fromhex("2a864886f70d010101"): "RSA",
                     bytes.fromhex("2a8648ce3d0201"): "EC"}
_OID_RSA: Final = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1


def _pkcs8(der: bytes) -> tuple[bytes, bytes]:
    """A PKCS#8 PrivateKeyInfo / OneAsymmetricKey: (algorithm OID, privateKey octets)."""
    items = _der_sequence(der)
    if len(items) < 3 or _der_int(items[0]) not in (0, 1):
        raise CryptoError("not a PKCS#8 private key")
    algorithm = _der_items(items[1][1]) if items[1][0] == 0x30 else []
    if not algorithm or algorithm[0][0] != 0x06 or items[2][0] != 0x04:
        raise CryptoError("not a PKCS#8 private key")
    return algorithm[0][1], items[2][1]


def x25519_private_key_from_pem(data: bytes) -> X25519PrivateKey:
    """An unencrypted PKCS#8 PEM X25519 key (what :func:`x25519_private_key_to_pem` and
    ``openssl genpkey -algorithm X25519`` write)."""
    label, der = pem_decode(data)
    if label != "PRIVATE KEY":
        raise CryptoError(f"not an unencrypted PKCS#8 private key (PEM label {label!r})")
    oid, octets = _pkcs8(der)
    if oid != _OID_X25519:
        raise CryptoError(f"not an X25519 key (found {_OID_NAMES.get(oid, 'another algorithm')})")
    tag, raw, end = _der_read(octets, 0)
    if tag != 0x04 or end != len(octets) or len(raw) != X25519_BYTES:
        raise CryptoError("malformed X25519 private key")
    return X25519PrivateKey(raw)


def x25519_private_key_to_pem(key: X25519PrivateKey) -> bytes:
    """PKCS#8 (RFC 8410) PEM, unencrypted: the same bytes ``cryptography`` and OpenSSL write."""
    der = _der(0x30, _der(0x02, b"\x00") + _der(0x30, _der(0x06, _OID_X25519))
               + _der(0x04, _der(0x04, key.raw)))
    return pem_encode("PRIVATE KEY", der)


# -------------------------------------------------------------------------------------- RSA

#: DER of DigestInfo for SHA-256 up to the digest (RFC 8017 section 9.2, note 1)
_SHA256_DIGEST_INFO: Final = bytes.fromhex("3031300d060960864801650304020105000420")


@dataclass(frozen=True, repr=False)
class RSAPrivateKey:
    """An RSA private key with its CRT parameters (never shown by ``repr``)."""

    n: int
    e: int
    d: int
    p: int
    q: int

    def __repr__(self) -> str:
        return f"RSAPrivateKey(<{self.n.bit_length()} bits>)"

    @property
    def size_bytes(self) -> int:
        return (self.n.bit_length() + 7) // 8

    def sign_pkcs1v15_sha256(self, message: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 (RS256): blinded, CRT, verified before returned."""
        k = self.size_bytes
        t = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        if k < len(t) + 11:
            raise CryptoError("the RSA key is too short for a SHA-256 signature")
        m = int.from_bytes(b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t, "big")
        # blinding: the private operation never sees m itself
        while True:
            r = secrets.randbelow(self.n - 2) + 2
            try:
                r_inv = pow(r, -1, self.n)
            except ValueError:  # not invertible (shares a factor with n: cannot happen in practice)
                continue
            break
        blinded = m * pow(r, self.e, self.n) % self.n
        s1 = pow(blinded, self.d % (self.p - 1), self.p)
        s2 = pow(blinded, self.d % (self.q - 1), self.q)
        h = (s1 - s2) * pow(self.q, -1, self.p) % self.p
        s = (s2 + h * self.q) * r_inv % self.n
        if pow(s, self.e, self.n) != m:  # a fault must not leak a factor of n
            raise CryptoError("the RSA signature did not verify (inconsistent key)")
        return s.to_bytes(k, "big")


def _rsa_from_pkcs1(der: bytes) -> RSAPrivateKey:
    items = _der_sequence(der)
    if len(items) < 9 or _der_int(items[0]) != 0:
        raise CryptoError("not a PKCS#1 RSA private key")
    n, e, d, p, q = (_der_int(item) for item in items[1:6])
    if min(n, e, d, p, q) <= 1 or p * q != n:
        raise CryptoError("inconsistent RSA private key")
    return RSAPrivateKey(n, e, d, p, q)


def rsa_private_key_from_pem(data: bytes | str) -> RSAPrivateKey:
    """An unencrypted RSA private key: PKCS#1 (``BEGIN RSA PRIVATE KEY``, Zitadel's machine
    keys) or PKCS#8 (``BEGIN PRIVATE KEY``)."""
    label, der = pem_decode(data)
    if label == "RSA PRIVATE KEY":
        return _rsa_from_pkcs1(der)
    if label == "PRIVATE KEY":
        oid, octets = _pkcs8(der)
        if oid != _OID_RSA:
            raise CryptoError(f"not an RSA key (found {_OID_NAMES.get(oid, 'another algorithm')})")
        return _rsa_from_pkcs1(octets)
    raise CryptoError(f"not an unencrypted RSA private key (PEM label {label!r})")
