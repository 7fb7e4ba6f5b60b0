"""A human logs in to a web client at the local issuer (authorization code + PKCE S256), driven
by authlib as an independent client, and the attacks on that flow are refused."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.discovery import OpenIDProviderMetadata
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.contracts.identity import ROLES_CLAIM, ROLES_SCOPE
from harmony_fleet.localstack.issuer import OidcIssuer, WebClient, load_registry
from harmony_fleet.localstack.issuer_login import LOGIN_PATH, s256

with warnings.catch_warnings():  # authlib.jose is deprecated for joserfc; its ID token
    warnings.simplefilter("ignore")  # claims check (CodeIDToken) still lives there
    from authlib.jose import JsonWebKey
    from authlib.jose import jwt as authlib_jwt
    from authlib.oidc.core import CodeIDToken

REDIRECT = "http://127.0.0.1:9/callback"
LOGOUT = "http://127.0.0.1:9/signed-out"
PASSWORD = "correct horse battery"


@dataclass
class Setup:
    issuer: OidcIssuer
    client: WebClient
    secret: str | None
    metadata: dict[str, Any]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    issuer = OidcIssuer(project_id="p-1", registry=tmp_path / "registry.json")
    issuer.create_human_user("alice", PASSWORD, roles=["fleet-admin"], email="a@example.org")
    issuer.create_human_user("bob", PASSWORD)  # no role
    client, secret = issuer.register_web_client("dashboard", [REDIRECT],
                                                post_logout_redirect_uris=[LOGOUT])
    await issuer.start()
    try:
        metadata = issuer.discovery_document()
        OpenIDProviderMetadata(metadata).validate()
        yield Setup(issuer, client, secret, metadata)
    finally:
        await issuer.stop()


def log_in(setup: Setup, authorize_url: str, user: str = "alice",
           password: str = PASSWORD) -> requests.Response:
    """What the browser does: follow to the login form, post it; the answer (a redirect to
    the client, or the form again)."""
    http = requests.Session()
    form = http.get(authorize_url, timeout=10)
    assert form.status_code == 200, form.text
    assert urlsplit(form.url).path == LOGIN_PATH
    csp = form.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "<script" not in form.text
    assert " style=" not in form.text
    request_id = re.search(r'name="authRequestID" value="([^"]+)"', form.text)
    assert request_id is not None
    return http.post(f"{setup.issuer.url}{LOGIN_PATH}", allow_redirects=False, timeout=10,
                     data={"authRequestID": request_id.group(1), "username": user,
                           "password": password})


def session(setup: Setup, scope: str = f"openid profile email {ROLES_SCOPE}") -> OAuth2Session:
    return OAuth2Session(setup.client.client_id, setup.secret, scope=scope,
                         redirect_uri=REDIRECT, code_challenge_method="S256",
                         token_endpoint_auth_method="none")


def authorize(setup: Setup, client: OAuth2Session) -> tuple[str, str, str, str]:
    """(authorization URL, state, nonce, verifier)."""
    verifier, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(12)
    url, state = client.create_authorization_url(setup.metadata["authorization_endpoint"],
                                                 code_verifier=verifier, nonce=nonce)
    # the metadata names the issuer's identity: reach it where it listens
    return url.replace(setup.issuer.issuer, setup.issuer.url), state, nonce, verifier


def token_url(setup: Setup) -> str:
    return setup.metadata["token_endpoint"].replace(setup.issuer.issuer, setup.issuer.url)


def flow(setup: Setup) -> dict[str, Any]:
    client = session(setup)
    url, state, nonce, verifier = authorize(setup, client)
    answer = log_in(setup, url)
    assert answer.status_code == 303
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT)
    assert parse_qs(urlsplit(location).query)["state"] == [state]
    token = dict(client.fetch_token(token_url(setup), authorization_response=location,
                                    code_verifier=verifier))
    jwks = JsonWebKey.import_key_set(requests.get(
        setup.metadata["jwks_uri"].replace(setup.issuer.issuer, setup.issuer.url),
        timeout=10).json())
    claims = authlib_jwt.decode(token["id_token"], jwks, claims_cls=CodeIDToken,
                                claims_options={"iss": {"value": setup.issuer.issuer}},
                                claims_params={"nonce": nonce,
                                               "client_id": setup.client.client_id})
    claims.validate()  # iss, aud = the client, exp, iat, nonce, azp
    return {"token": token, "claims": dict(claims)}


async def test_the_code_flow_with_pkce(setup: Setup) -> None:
    result = await asyncio.to_thread(flow, setup)
    claims = result["claims"]
    alice = setup.issuer.find_user("alice")
    assert alice is not None
    assert claims["sub"] == alice.user_id
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "a@example.org"
    assert claims[ROLES_CLAIM] == {"fleet-admin": {"fleet-org": "fleet.local"}}
    assert "p-1" in claims["aud"]
    assert setup.client.client_id in claims["aud"]


async def test_no_roles_claim_unless_asked(setup: Setup) -> None:
    def run() -> dict[str, Any]:
        client = session(setup, scope="openid")
        url, _, _, verifier = authorize(setup, client)
        location = log_in(setup, url).headers["Location"]
        return dict(client.fetch_token(token_url(setup), authorization_response=location,
                                       code_verifier=verifier))

    token = await asyncio.to_thread(run)
    payload = token["id_token"].split(".")[1]
    assert "roles" not in base64.urlsafe_b64decode(payload + "==").decode()


async def test_attacks_on_the_code_flow_are_refused(setup: Setup) -> None:
    def run() -> None:
        client = session(setup)
        url, _, _, verifier = authorize(setup, client)
        location = log_in(setup, url).headers["Location"]
        code = parse_qs(urlsplit(location).query)["code"][0]

        def exchange(**over: str) -> requests.Response:
            data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                    "client_id": setup.client.client_id, "code_verifier": verifier, **over}
            return requests.post(token_url(setup), data=data, timeout=10)

        # a wrong verifier burns the code: the right one afterwards gets nothing either
        wrong = exchange(code_verifier=secrets.token_urlsafe(48))
        assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
        assert "code_verifier" in wrong.json()["error_description"]
        replay = exchange()
        assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")

        # a good exchange once, then the replay of the same code
        url, _, _, verifier2 = authorize(setup, client)
        code2 = parse_qs(urlsplit(log_in(setup, url).headers["Location"]).query)["code"][0]
        assert exchange(code=code2, code_verifier=verifier2).status_code == 200
        again = exchange(code=code2, code_verifier=verifier2)
        assert (again.status_code, again.json()["error_description"]) == \
            (400, "the code was already used")

        # another redirect_uri at the exchange, an unknown client
        url, _, _, verifier3 = authorize(setup, client)
        code3 = parse_qs(urlsplit(log_in(setup, url).headers["Location"]).query)["code"][0]
        assert exchange(code=code3, code_verifier=verifier3,
                        redirect_uri="http://127.0.0.1:9/other").status_code == 400
        assert exchange(code=code3, client_id="nobody").status_code == 401

    await asyncio.to_thread(run)


async def test_authorization_requests_that_are_refused(setup: Setup) -> None:
    def run() -> None:
        client = session(setup)
        url, state, _, _ = authorize(setup, client)
        http = requests.Session()
        # a redirect_uri that is not registered: answered at the issuer, never redirected to
        evil = url.replace("callback", "evil")
        answer = http.get(evil, allow_redirects=False, timeout=10)
        assert answer.status_code == 400
        assert "Location" not in answer.headers
        unknown = http.get(url.replace(quote(setup.client.client_id, safe=""), "nobody"),
                           allow_redirects=False, timeout=10)
        assert unknown.status_code == 400
        # no PKCE, or plain: back to the client with an error and the state
        for strip in ("&code_challenge_method=S256", "S256"):
            bad = url.replace(strip, "" if strip.startswith("&") else "plain")
            answer = http.get(bad, allow_redirects=False, timeout=10)
            query = parse_qs(urlsplit(answer.headers["Location"]).query)
            assert (query["error"], query["state"]) == (["invalid_request"], [state])
        no_openid = url.replace("scope=openid", "scope=profile")
        query = parse_qs(urlsplit(http.get(no_openid, allow_redirects=False, timeout=10)
                                  .headers["Location"]).query)
        assert query["error"] == ["invalid_scope"]

    await asyncio.to_thread(run)


async def test_wrong_passwords(setup: Setup) -> None:
    def run() -> None:
        client = session(setup)
        url, _, _, _ = authorize(setup, client)
        http = requests.Session()
        form = http.get(url, timeout=10)
        request_id = re.search(r'name="authRequestID" value="([^"]+)"', form.text)
        assert request_id is not None
        statuses = []
        for user in ("alice", "mallory", "alice", "alice", "alice", "alice"):
            answer = http.post(f"{setup.issuer.url}{LOGIN_PATH}", allow_redirects=False,
                               data={"authRequestID": request_id.group(1), "username": user,
                                     "password": "guess-guess"}, timeout=10)
            statuses.append(answer.status_code)
            assert "Location" not in answer.headers
        # the same answer for a wrong password and an unknown user; then the request is dead
        assert statuses == [401, 401, 401, 401, 429, 400]

    await asyncio.to_thread(run)


async def test_end_session(setup: Setup) -> None:
    def run() -> None:
        token = flow(setup)["token"]
        end = setup.metadata["end_session_endpoint"].replace(setup.issuer.issuer,
                                                             setup.issuer.url)
        back = requests.get(end, params={"id_token_hint": token["id_token"],
                                         "post_logout_redirect_uri": LOGOUT, "state": "s1"},
                            allow_redirects=False, timeout=10)
        assert back.headers["Location"] == f"{LOGOUT}?state=s1"
        elsewhere = requests.get(end, params={"id_token_hint": token["id_token"],
                                              "post_logout_redirect_uri": "http://evil.example/"},
                                 allow_redirects=False, timeout=10)
        assert (elsewhere.status_code, "Location" in elsewhere.headers) == (400, False)

    await asyncio.to_thread(run)


async def test_confidential_client_and_persistence(setup: Setup) -> None:
    issuer = setup.issuer
    client, secret = issuer.register_web_client("confidential", [REDIRECT], confidential=True)
    assert secret is not None
    assert issuer.registry is not None
    restored = load_registry(issuer.registry)
    assert restored.clients[client.client_id].secret_hash == client.secret_hash
    assert secret not in issuer.registry.read_text()
    assert PASSWORD not in issuer.registry.read_text()

    def run(with_secret: str) -> int:
        confidential = Setup(issuer, client, with_secret, setup.metadata)
        oauth = OAuth2Session(client.client_id, with_secret, scope="openid",
                              redirect_uri=REDIRECT, code_challenge_method="S256",
                              token_endpoint_auth_method="client_secret_basic")
        url, _, _, verifier = authorize(confidential, oauth)
        location = log_in(confidential, url).headers["Location"]
        code = parse_qs(urlsplit(location).query)["code"][0]
        return requests.post(token_url(setup), auth=(client.client_id, with_secret),
                             data={"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": REDIRECT, "code_verifier": verifier},
                             timeout=10).status_code

    assert await asyncio.to_thread(run, secret) == 200
    assert await asyncio.to_thread(run, "not-the-secret") == 401


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~",
               min_size=43, max_size=128))
def test_s256_agrees_with_authlib(verifier: str) -> None:
    assert s256(verifier) == create_s256_code_challenge(verifier)
