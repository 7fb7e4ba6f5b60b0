"""Zitadel machine-key credentials (harmony_fleet.bus.tokens), without a network.

The token endpoint is replaced by a fake ``urlopen``/``exchange``; key files live in tmp_path.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from harmony_fleet.bus import tokens
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import (
    JWT_BEARER,
    AccessToken,
    MachineKey,
    TokenError,
    ZitadelTokenProvider,
    exchange,
    usable_lifetime,
)

from .strategies import PROPERTY

ISSUER = "https://zitadel.example.net"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pem(rsa_key: rsa.RSAPrivateKey) -> str:
    return rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()


def private(path: Path) -> Path:
    """Key files are refused unless only their owner can access them."""
    path.chmod(0o600)
    return path


@pytest.fixture
def key_file(tmp_path: Path, pem: str) -> Path:
    path = tmp_path / "zitadel-key.json"
    path.write_text(json.dumps({"type": "serviceaccount", "keyId": "key-1", "key": pem,
                                "userId": "user-1"}), encoding="utf-8")
    return private(path)


def settings_for(key_file: Path, **over: Any) -> ZitadelAuth:
    return ZitadelAuth(issuer=over.pop("issuer", ISSUER), key_file=key_file,
                       project_id=over.pop("project_id", "fleet-project"), **over)


# ----------------------------------------------------------------------------- AccessToken


@pytest.mark.parametrize(("obtained", "expires", "leeway", "refresh"), [
    (1000, 4600, 300, 4300),    # long token: leeway before expiry
    (1000, 1600, 300, 1300),    # lifetime 600 = 2 x leeway: both rules agree
    (1000, 1400, 300, 1200),    # short token: half its lifetime
    (1000, 1060, 300, 1030),
    (1000, 1000, 300, 1000),    # already expired when obtained
    (1000, 4600, 0.5, 4599.5),
])
def test_refresh_at(obtained: float, expires: float, leeway: float, refresh: float) -> None:
    assert AccessToken("t", expires, obtained).refresh_at(leeway) == pytest.approx(refresh)


@PROPERTY
@given(obtained=st.floats(0, 2e9), lifetime=st.floats(0, 1e6), leeway=st.floats(0.001, 1e5))
def test_refresh_at_properties(obtained: float, lifetime: float, leeway: float) -> None:
    token = AccessToken("t", obtained + lifetime, obtained)
    at = token.refresh_at(leeway)
    eps = 1e-6 * max(1.0, abs(obtained) + lifetime)
    # never after expiry, never before half the lifetime
    assert at <= token.expires_at + eps
    assert at >= obtained + lifetime / 2 - eps
    # at least the leeway before expiry when the token lives long enough
    if lifetime >= 2 * leeway:
        assert at == pytest.approx(token.expires_at - leeway, abs=eps)


# ----------------------------------------------------------------------------- MachineKey.load


def test_load(key_file: Path, pem: str) -> None:
    assert MachineKey.load(key_file) == MachineKey("key-1", pem, "user-1")


def test_load_stringifies_ids(tmp_path: Path, pem: str) -> None:
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keyId": 123, "key": pem, "userId": 456}))
    key = MachineKey.load(private(path))
    assert (key.key_id, key.user_id) == ("123", "456")


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match=r"cannot read the machine key file .*nope\.json: No such "
                                         r"file or directory"):
        MachineKey.load(tmp_path / "nope.json")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenError):
        MachineKey.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not json", b"{", b"\xff\xfe\x00", b"[]", b"\"s\"",
                                     b"42", b"null", b'["keyId", "key", "userId"]'])
def test_load_bad_json(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.json"
    path.write_bytes(content)
    with pytest.raises(TokenError, match="not a Zitadel machine key file") as info:
        MachineKey.load(private(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("missing", ["keyId", "key", "userId"])
def test_load_missing_keys(tmp_path: Path, pem: str, missing: str) -> None:
    doc = {"keyId": "key-1", "key": pem, "userId": "user-1"}
    del doc[missing]
    path = tmp_path / "k.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TokenError, match="not a Zitadel machine key file") as info:
        MachineKey.load(private(path))
    assert "PRIVATE KEY" not in str(info.value)  # the secret never lands in the message


# ----------------------------------------------------------------------------- the assertion


def test_assertion(key_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    before = int(time.time())
    text = MachineKey.load(key_file).assertion(ISSUER)
    header = jwt.get_unverified_header(text)
    assert header["kid"] == "key-1"
    assert header["alg"] == "RS256"
    claims = jwt.decode(text, rsa_key.public_key(), algorithms=["RS256"], audience=ISSUER)
    assert claims["iss"] == claims["sub"] == "user-1"
    assert claims["aud"] == ISSUER
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 300


def test_assertion_lifetime(key_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    text = MachineKey.load(key_file).assertion("https://other", lifetime_s=60)
    claims = jwt.decode(text, rsa_key.public_key(), algorithms=["RS256"],
                        audience="https://other")
    assert claims["exp"] - claims["iat"] == 60


def test_assertion_does_not_verify_with_another_key(key_file: Path,
                                                    other_rsa_key: rsa.RSAPrivateKey) -> None:
    other = other_rsa_key
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(MachineKey.load(key_file).assertion(ISSUER), other.public_key(),
                   algorithms=["RS256"], audience=ISSUER)


@pytest.mark.parametrize("bad_pem", ["", "not a pem",
                                     "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"])
def test_unusable_pem_is_a_token_error(tmp_path: Path, bad_pem: str) -> None:
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keyId": "k", "key": bad_pem, "userId": "u"}))
    with pytest.raises(TokenError, match="not a usable RSA private key"):
        MachineKey.load(private(path)).assertion(ISSUER)


# ----------------------------------------------------------------------------- settings


def test_scopes_contain_the_project_audience(key_file: Path) -> None:
    scopes = settings_for(key_file, project_id="987654321").scopes().split(" ")
    assert "urn:zitadel:iam:org:project:id:987654321:aud" in scopes
    assert "openid" in scopes
    assert "urn:zitadel:iam:user:metadata" in scopes
    assert "urn:zitadel:iam:org:projects:roles" in scopes
    assert len(scopes) == len(set(scopes))


def test_zitadel_settings_defaults(key_file: Path) -> None:
    s = settings_for(key_file)
    assert s.mode == "zitadel"
    assert s.refresh_leeway_s == 300


@pytest.mark.parametrize("over", [
    {"issuer": "zitadel.example.net"}, {"issuer": "ftp://zitadel"}, {"issuer": ""},
    {"project_id": ""}, {"refresh_leeway_s": 0}, {"refresh_leeway_s": -1},
    {"http_timeout_s": 0},
])
def test_zitadel_settings_validation(key_file: Path, over: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        settings_for(key_file, **over)


# ----------------------------------------------------------------------------- the provider


def test_current_before_prepare(key_file: Path) -> None:
    provider = ZitadelTokenProvider(settings_for(key_file))
    with pytest.raises(TokenError, match="prepare"):
        provider.current()
    assert provider.expires_at is None
    assert "?" in provider.describe()
    # nats-py gets the callable, not a value: it raises the same until a token exists
    callback = provider.connect_options()["token"]
    assert callable(callback)
    with pytest.raises(TokenError):
        callback()


class FakeExchange:
    def __init__(self, lifetime: float = 3600, fail: int = 0,
                 stop: asyncio.Event | None = None) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.fail = fail
        self.stop = stop
        self.loop = asyncio.get_running_loop()

    def __call__(self, settings: ZitadelAuth, key: MachineKey) -> AccessToken:
        self.calls += 1
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        if self.calls <= self.fail:
            raise TokenError("token endpoint unreachable")
        now = time.time()
        return AccessToken(f"token-{self.calls}-{key.user_id}", now + self.lifetime, now)


async def test_prepare_gets_the_first_token(key_file: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeExchange()
    monkeypatch.setattr(tokens, "exchange", fake)
    provider = ZitadelTokenProvider(settings_for(key_file))
    await provider.prepare()
    assert provider.current() == "token-1-user-1"
    assert provider.connect_options()["token"]() == "token-1-user-1"
    assert provider.refreshes == 1
    assert provider.refreshed.is_set()
    assert provider.expires_at == pytest.approx(time.time() + 3600, abs=60)
    assert "user-1" in provider.describe()
    # a fresh token is not fetched again
    await provider.prepare()
    assert fake.calls == 1


async def test_prepare_refreshes_a_token_inside_its_leeway(
        key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeExchange(lifetime=100)  # shorter than the 300 s leeway: refresh at half-life
    monkeypatch.setattr(tokens, "exchange", fake)
    provider = ZitadelTokenProvider(settings_for(key_file))
    await provider.prepare()
    provider._token = AccessToken("old", time.time() + 10, time.time() - 90)
    await provider.prepare()
    assert provider.current() == "token-2-user-1"


async def test_prepare_with_a_missing_key_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "exchange", FakeExchange())
    provider = ZitadelTokenProvider(settings_for(tmp_path / "missing.json"))
    with pytest.raises(TokenError):
        await provider.prepare()


async def test_run_refreshes_then_stops(key_file: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    stop = asyncio.Event()
    fake = FakeExchange(stop=stop)
    monkeypatch.setattr(tokens, "exchange", fake)
    provider = ZitadelTokenProvider(settings_for(key_file))
    await asyncio.wait_for(provider.run(stop), 5)
    assert fake.calls == 1
    assert provider.current() == "token-1-user-1"


async def test_run_survives_a_failed_refresh(key_file: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    stop = asyncio.Event()
    fake = FakeExchange(fail=1, stop=stop)
    monkeypatch.setattr(tokens, "exchange", fake)
    provider = ZitadelTokenProvider(settings_for(key_file, refresh_retry_initial_s=30))
    await asyncio.wait_for(provider.run(stop), 5)  # stop ends the retry wait
    assert fake.calls == 1
    assert provider.refreshes == 0
    assert (provider.failed_refreshes, provider.consecutive_failures) == (1, 1)


async def test_run_returns_at_once_when_stopped(key_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeExchange()
    monkeypatch.setattr(tokens, "exchange", fake)
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(ZitadelTokenProvider(settings_for(key_file)).run(stop), 5)
    assert fake.calls == 0


# ----------------------------------------------------------------------------- exchange


class FakeResponse(io.BytesIO):
    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeUrlopen:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[urllib.request.Request] = []
        self.timeouts: list[float] = []

    def __call__(self, request: urllib.request.Request, timeout: float) -> FakeResponse:
        self.requests.append(request)
        self.timeouts.append(timeout)
        if isinstance(self.answer, BaseException):
            raise self.answer
        body = self.answer if isinstance(self.answer, bytes) else json.dumps(self.answer).encode()
        return FakeResponse(body)


def fake_urlopen(monkeypatch: pytest.MonkeyPatch, answer: Any) -> FakeUrlopen:
    fake = FakeUrlopen(answer)
    monkeypatch.setattr(tokens.urllib.request, "urlopen", fake)
    return fake


def test_exchange_request(key_file: Path, rsa_key: rsa.RSAPrivateKey,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_urlopen(monkeypatch, {"access_token": "at-1", "expires_in": 3600})
    settings = settings_for(key_file, issuer=ISSUER + "/", http_timeout_s=7)
    before = time.time()
    token = exchange(settings, MachineKey.load(key_file))
    assert token.value == "at-1"
    # expiry times are whole seconds: an issuer rounding down ends it up to 1 s earlier
    assert token.expires_at - token.obtained_at == pytest.approx(3599)
    assert before <= token.obtained_at <= time.time()
    (request,) = fake.requests
    assert request.full_url == f"{ISSUER}/oauth/v2/token"
    assert request.get_method() == "POST"
    assert request.get_header("Content-type") == "application/x-www-form-urlencoded"
    assert fake.timeouts == [7]
    assert isinstance(request.data, bytes)
    form = dict(urllib.parse.parse_qsl(request.data.decode()))
    assert form["grant_type"] == JWT_BEARER == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert form["scope"] == settings.scopes()
    # the assertion's audience is the issuer, without the trailing slash
    claims = jwt.decode(form["assertion"], rsa_key.public_key(), algorithms=["RS256"],
                        audience=ISSUER)
    assert claims["sub"] == "user-1"


@pytest.mark.parametrize(("expires_in", "usable"), [(3600, 3599), (4, 3), (2, 1), (1, 0.5), (0.5, 0.25)])
def test_an_expires_in_counts_one_second_less_or_half_of_a_short_one(
        expires_in: float, usable: float) -> None:
    assert usable_lifetime(expires_in) == usable


def test_a_short_token_is_refreshed_before_an_issuer_rounding_down_ends_it(
        key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local issuer's (and Zitadel's) exp is int(now) + lifetime: up to 1 s before what
    expires_in promises. A 4 s token is refreshed with at least 1.5 s left by its real exp."""
    fake_urlopen(monkeypatch, {"access_token": "x", "expires_in": 4})
    token = exchange(settings_for(key_file), MachineKey.load(key_file))
    earliest_exp = int(token.obtained_at) + 4  # the issuer's clock read no earlier than ours
    assert token.expires_at <= earliest_exp
    assert earliest_exp - token.refresh_at(leeway_s=60) > 1.5


def test_exchange_without_expires_in_reads_the_token(key_file: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    exp = int(time.time()) + 1800
    access = jwt.encode({"exp": exp, "sub": "user-1"}, "k" * 32, algorithm="HS256")
    fake_urlopen(monkeypatch, {"access_token": access})
    token = exchange(settings_for(key_file), MachineKey.load(key_file))
    assert token.value == access
    assert token.expires_at == pytest.approx(exp, abs=2)


@pytest.mark.parametrize("answer", [
    {"token": "x"}, {}, [], "text", b"not json", b"",
    {"access_token": "x", "expires_in": "soon"},
])
def test_exchange_bad_answers(key_file: Path, monkeypatch: pytest.MonkeyPatch,
                              answer: Any) -> None:
    fake_urlopen(monkeypatch, answer)
    with pytest.raises(TokenError):
        exchange(settings_for(key_file), MachineKey.load(key_file))


def test_exchange_refused(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    error = urllib.error.HTTPError(f"{ISSUER}/oauth/v2/token", 400, "Bad Request", None,  # type: ignore[arg-type]
                                   io.BytesIO(b'{"error":"invalid_grant"}'))
    fake_urlopen(monkeypatch, error)
    with pytest.raises(TokenError, match="400") as info:
        exchange(settings_for(key_file), MachineKey.load(key_file))
    assert "invalid_grant" in str(info.value)


@pytest.mark.parametrize("error", [urllib.error.URLError("connection refused"),
                                   TimeoutError("timed out"), ConnectionResetError()])
def test_exchange_unreachable(key_file: Path, monkeypatch: pytest.MonkeyPatch,
                              error: Exception) -> None:
    fake_urlopen(monkeypatch, error)
    with pytest.raises(TokenError, match="unreachable"):
        exchange(settings_for(key_file), MachineKey.load(key_file))


@pytest.mark.parametrize("access", ["opaque-token", "a.b.c"])
def test_exchange_opaque_token_without_expiry(key_file: Path, monkeypatch: pytest.MonkeyPatch,
                                              access: str) -> None:
    fake_urlopen(monkeypatch, {"access_token": access})
    with pytest.raises(TokenError):
        exchange(settings_for(key_file), MachineKey.load(key_file))
