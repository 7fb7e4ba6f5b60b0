"""The local issuer's identity is configured, not taken from the address a client uses:
``iss``, the audience of assertions and the discovery URLs stay the same whoever reaches it
through which address (a device container reaches the host's loopback as 10.0.2.2)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import MachineKey, TokenError, exchange
from harmony_fleet.callout.oidc import JwksCache, TokenRejected, TokenValidator
from harmony_fleet.localstack.issuer import (
    JWT_BEARER,
    OidcIssuer,
    issuer_from_document,
    registry_document,
)

EXTERNAL = "https://issuer.example"


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[OidcIssuer]:
    issuer = OidcIssuer(project_id="p-1", external_url=EXTERNAL + "/")
    await issuer.start()
    try:
        yield issuer
    finally:
        await issuer.stop()


def device_key(issuer: OidcIssuer, tmp_path: Path) -> Path:
    key_file = tmp_path / "key.json"
    issuer.enroll_device("dev-1", key_file)
    return key_file


def test_default_identity_is_the_listening_url() -> None:
    issuer = OidcIssuer(port=4567)
    assert issuer.issuer == issuer.url == "http://127.0.0.1:4567"


def test_identity_survives_the_registry() -> None:
    issuer = OidcIssuer(external_url=EXTERNAL, host="0.0.0.0")  # noqa: S104
    restored = issuer_from_document(json.loads(json.dumps(registry_document(issuer))))
    assert (restored.issuer, restored.host) == (EXTERNAL, "0.0.0.0")  # noqa: S104
    old = registry_document(OidcIssuer())
    del old["external_url"], old["host"]  # a registry written before these existed
    assert issuer_from_document(old).external_url is None


async def test_discovery_names_the_identity_whatever_the_host_header(
        issuer: OidcIssuer) -> None:
    async with aiohttp.ClientSession() as http:
        for host in (f"10.0.2.2:{issuer.port}", "evil.example"):
            async with http.get(f"{issuer.url}/.well-known/openid-configuration",
                                headers={"Host": host}) as response:
                doc = await response.json()
            assert doc["issuer"] == EXTERNAL
            assert doc["jwks_uri"] == f"{EXTERNAL}/oauth/v2/keys"
            assert doc["token_endpoint"] == f"{EXTERNAL}/oauth/v2/token"


async def test_a_device_reaching_it_by_another_address_gets_a_token(
        issuer: OidcIssuer, tmp_path: Path) -> None:
    key_file = device_key(issuer, tmp_path)
    # the device reaches the issuer at an address that is not its identity (as 10.0.2.2 from
    # a container): the assertion's audience is the identity, the Host header another address
    settings = ZitadelAuth(issuer=EXTERNAL, issuer_url=issuer.url, key_file=key_file,
                           project_id="p-1")
    token = (await asyncio.to_thread(exchange, settings, MachineKey.load(key_file))).value
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == EXTERNAL
    async with aiohttp.ClientSession() as http:
        form = {"grant_type": JWT_BEARER, "scope": settings.scopes(),
                "assertion": MachineKey.load(key_file).assertion(EXTERNAL)}
        async with http.post(f"{issuer.url}/oauth/v2/token", data=form,
                             headers={"Host": f"10.0.2.2:{issuer.port}"}) as response:
            assert response.status == 200, await response.text()

    # the callout reaches it at the same other address and checks iss against the identity
    jwks = JwksCache(EXTERNAL, url=issuer.url, min_refresh_s=0)
    identity = await TokenValidator(jwks, "p-1").validate(token)
    assert identity.device_id == "dev-1"


async def test_an_assertion_for_the_reached_address_is_refused(
        issuer: OidcIssuer, tmp_path: Path) -> None:
    key_file = device_key(issuer, tmp_path)
    wrong = ZitadelAuth(issuer=issuer.url, key_file=key_file, project_id="p-1")
    with pytest.raises(TokenError, match="InvalidAudienceError"):
        await asyncio.to_thread(exchange, wrong, MachineKey.load(key_file))


async def test_the_callout_refuses_a_discovery_document_of_another_issuer(
        issuer: OidcIssuer) -> None:
    jwks = JwksCache(issuer.url, min_refresh_s=0)  # expects iss = the URL: the doc says otherwise
    with pytest.raises(TokenRejected, match=r"jwks-unavailable.*names issuer"):
        await jwks.key("any")


def test_the_cli_refuses_an_issuer_that_is_not_a_url(tmp_path: Path) -> None:
    from harmony_fleet.localstack.issuer import main

    with pytest.raises(SystemExit):
        main(["--registry", str(tmp_path / "r.json"), "--issuer", "issuer.example"])
