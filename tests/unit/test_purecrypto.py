"""harmony_fleet.purecrypto against RFC test vectors and against ``cryptography`` (OpenSSL),
the reference: the agent's RS256, X25519, ChaCha20-Poly1305, HKDF and key files."""

from __future__ import annotations

import functools

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric import x25519 as reference
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony_fleet.purecrypto import (
    CryptoError,
    X25519PrivateKey,
    X25519PublicKey,
    chacha20_poly1305_decrypt,
    chacha20_poly1305_encrypt,
    hkdf_sha256,
    pem_encode,
    rsa_private_key_from_pem,
    x25519,
    x25519_private_key_from_pem,
    x25519_private_key_to_pem,
)

FEW = settings(max_examples=25, deadline=None)


# ------------------------------------------------------------------------------------ X25519


def test_x25519_rfc7748_vectors() -> None:
    # RFC 7748 section 5.2
    assert x25519(
        bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
        bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
    ).hex() == "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    # RFC 7748 section 6.1: Alice and Bob
    alice = X25519PrivateKey.from_private_bytes(bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = X25519PrivateKey.from_private_bytes(bytes.fromhex(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public_key().public_bytes_raw().hex() == \
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob.public_key().public_bytes_raw().hex() == \
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice.exchange(bob.public_key()).hex() == shared
    assert bob.exchange(alice.public_key()).hex() == shared


@FEW
@given(mine=st.binary(min_size=32, max_size=32), theirs=st.binary(min_size=32, max_size=32))
def test_x25519_agrees_with_openssl(mine: bytes, theirs: bytes) -> None:
    ref_mine = reference.X25519PrivateKey.from_private_bytes(mine)
    ref_theirs = reference.X25519PrivateKey.from_private_bytes(theirs)
    key = X25519PrivateKey.from_private_bytes(mine)
    assert key.public_key().public_bytes_raw() == ref_mine.public_key().public_bytes_raw()
    peer = X25519PublicKey.from_public_bytes(ref_theirs.public_key().public_bytes_raw())
    assert key.exchange(peer) == ref_mine.exchange(ref_theirs.public_key())


def test_x25519_refuses_low_order_points_and_bad_sizes() -> None:
    key = X25519PrivateKey.generate()
    with pytest.raises(CryptoError, match="low order"):
        key.exchange(X25519PublicKey(bytes(32)))
    with pytest.raises(CryptoError, match="32 bytes"):
        X25519PublicKey(bytes(31))
    with pytest.raises(CryptoError, match="32 bytes"):
        X25519PrivateKey(bytes(33))
    assert "secret" in repr(key)
    assert key.private_bytes_raw().hex() not in repr(key)


# ------------------------------------------------------------------------- ChaCha20-Poly1305


def test_chacha20_poly1305_rfc8439_vector() -> None:
    # RFC 8439 section 2.8.2
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    ad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one "
                 b"tip for the future, sunscreen would be it.")
    sealed = chacha20_poly1305_encrypt(key, nonce, plaintext, ad)
    assert sealed[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"
    assert sealed[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"
    assert chacha20_poly1305_decrypt(key, nonce, sealed, ad) == plaintext


@FEW
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       plaintext=st.binary(max_size=300), ad=st.binary(max_size=80))
def test_chacha20_poly1305_agrees_with_openssl(key: bytes, nonce: bytes, plaintext: bytes,
                                               ad: bytes) -> None:
    reference = ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)
    assert chacha20_poly1305_encrypt(key, nonce, plaintext, ad) == reference
    assert chacha20_poly1305_decrypt(key, nonce, reference, ad) == plaintext


@FEW
@given(flip=st.integers(min_value=0))
def test_any_changed_bit_is_refused(flip: int) -> None:
    key, nonce, ad = bytes(range(32)), bytes(12), b"ad"
    sealed = bytearray(chacha20_poly1305_encrypt(key, nonce, b"some secret value", ad))
    bit = flip % (len(sealed) * 8)
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CryptoError, match="tag does not match"):
        chacha20_poly1305_decrypt(key, nonce, bytes(sealed), ad)


def test_aead_refuses_other_associated_data_and_short_input() -> None:
    key, nonce = bytes(32), bytes(12)
    sealed = chacha20_poly1305_encrypt(key, nonce, b"x", b"one")
    with pytest.raises(CryptoError, match="tag does not match"):
        chacha20_poly1305_decrypt(key, nonce, sealed, b"two")
    with pytest.raises(CryptoError, match="shorter than its tag"):
        chacha20_poly1305_decrypt(key, nonce, sealed[:15], b"one")


# -------------------------------------------------------------------------------------- HKDF


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf_sha256(bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


@FEW
@given(ikm=st.binary(max_size=100), salt=st.binary(max_size=64), info=st.binary(max_size=64),
       length=st.integers(min_value=1, max_value=100))
def test_hkdf_agrees_with_openssl(ikm: bytes, salt: bytes, info: bytes, length: int) -> None:
    reference = HKDF(hashes.SHA256(), length, salt=salt or None, info=info).derive(ikm)
    assert hkdf_sha256(ikm, salt, info, length) == reference


# ------------------------------------------------------------------------------- X25519 PEM


def test_x25519_pem_is_openssls_pkcs8() -> None:
    ref = reference.X25519PrivateKey.generate()
    pem = ref.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key = x25519_private_key_from_pem(pem)
    assert key.private_bytes_raw() == ref.private_bytes_raw()
    assert x25519_private_key_to_pem(key) == pem


@pytest.mark.parametrize(("pem", "fragment"), [
    (ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), "not an X25519 key (found Ed25519)"),
    (b"no pem here", "no PEM block"),
    (b"-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n", "not base64"),
    (pem_encode("PRIVATE KEY", b"\x30\x03\x02\x01"), "truncated DER"),
    (pem_encode("PUBLIC KEY", b"\x30\x00"), "PEM label 'PUBLIC KEY'"),
])
def test_x25519_pem_refusals(pem: bytes, fragment: str) -> None:
    with pytest.raises(CryptoError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        x25519_private_key_from_pem(pem)


# --------------------------------------------------------------------------------------- RSA


@functools.cache
def _rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.PrivateFormat.PKCS8])
@pytest.mark.parametrize("bits", [2048, 3072])
def test_rs256_signatures_are_openssls(fmt: serialization.PrivateFormat, bits: int) -> None:
    ref = _rsa_key(bits)
    pem = ref.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    key = rsa_private_key_from_pem(pem.decode())
    assert "bits" in repr(key)
    for message in (b"", b"header.claims", bytes(range(256)) * 10):
        signature = key.sign_pkcs1v15_sha256(message)
        # PKCS#1 v1.5 is deterministic: the very bytes OpenSSL produces (blinding or not)
        assert signature == ref.sign(message, padding.PKCS1v15(), hashes.SHA256())
        ref.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        with pytest.raises(InvalidSignature):
            ref.public_key().verify(signature, message + b"x", padding.PKCS1v15(),
                                    hashes.SHA256())


def test_rsa_pem_refusals() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(CryptoError, match="not an RSA key"):
        rsa_private_key_from_pem(ec_pem)
    encrypted = _rsa_key(2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(CryptoError, match="not an unencrypted RSA private key"):
        rsa_private_key_from_pem(encrypted)
    with pytest.raises(CryptoError, match="no PEM block"):
        rsa_private_key_from_pem("not a key")


def test_an_inconsistent_rsa_key_is_refused() -> None:
    numbers = _rsa_key(2048).private_numbers()
    pkcs1 = _rsa_key(2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    # replace q by q + 2 (n no longer p*q)
    q = numbers.q.to_bytes((numbers.q.bit_length() + 8) // 8, "big")
    q2 = (numbers.q + 2).to_bytes((numbers.q.bit_length() + 8) // 8, "big")
    assert pkcs1.count(q) == 1
    with pytest.raises(CryptoError, match="inconsistent RSA private key"):
        rsa_private_key_from_pem(pem_encode("RSA PRIVATE KEY", pkcs1.replace(q, q2)))
