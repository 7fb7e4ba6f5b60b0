"""The local issuer honours ``scope`` as Zitadel does (nothing added unasked) and publishes a
discovery document that an independent library accepts and that advertises only what it
serves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from authlib.oidc.discovery import OpenIDProviderMetadata
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import MachineKey, exchange
from harmony_fleet.callout.oidc import JwksCache, TokenValidator
from harmony_fleet.contracts.identity import (
    METADATA_CLAIM,
    METADATA_SCOPE,
    ROLES_CLAIM,
    ROLES_SCOPE,
    fleet_scopes,
    project_audience_scope,
    project_roles_claim,
)
from harmony_fleet.localstack.issuer import JWT_BEARER, OidcIssuer, Scopes

PROJECT = "p-1"


@pytest.fixture
async def issuer() -> AsyncIterator[OidcIssuer]:
    issuer = OidcIssuer(project_id=PROJECT)
    await issuer.start()
    try:
        yield issuer
    finally:
        await issuer.stop()


async def token_request(issuer: OidcIssuer, key_file: Path, scope: str | None,
                        grant_type: str = JWT_BEARER) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": grant_type,
            "assertion": MachineKey.load(key_file).assertion(issuer.issuer)}
    if scope is not None:
        form["scope"] = scope
    async with aiohttp.ClientSession() as http, \
            http.post(f"{issuer.url}/oauth/v2/token", data=form) as response:
        return response.status, await response.json()


async def claims_for(issuer: OidcIssuer, key_file: Path, scope: str) -> dict[str, Any]:
    status, body = await token_request(issuer, key_file, scope)
    assert status == 200, body
    return dict(jwt.decode(body["access_token"], options={"verify_signature": False}))


async def test_nothing_is_added_unasked(issuer: OidcIssuer, tmp_path: Path) -> None:
    user = issuer.enroll_device("dev-1", tmp_path / "k.json")
    key = tmp_path / "k.json"
    aud = project_audience_scope(PROJECT)

    bare = await claims_for(issuer, key, "openid")
    assert bare["aud"] == [user.user_id]
    assert ROLES_CLAIM not in bare
    assert METADATA_CLAIM not in bare

    project = await claims_for(issuer, key, f"openid {aud}")
    assert project["aud"] == [PROJECT, user.user_id]
    assert ROLES_CLAIM not in project
    assert METADATA_CLAIM not in project

    roles = await claims_for(issuer, key, f"openid {aud} {ROLES_SCOPE}")
    expected = {"fleet-device": {"fleet-org": "fleet.local"}}
    assert roles[ROLES_CLAIM] == roles[project_roles_claim(PROJECT)] == expected
    assert METADATA_CLAIM not in roles

    metadata = await claims_for(issuer, key, f"openid {METADATA_SCOPE}")
    assert metadata[METADATA_CLAIM] == {"device_id": "ZGV2LTE="}
    assert ROLES_CLAIM not in metadata
    assert metadata["aud"] == [user.user_id]

    # the roles of a project that is not in the audience are not lent
    alone = await claims_for(issuer, key, f"openid {ROLES_SCOPE}")
    assert not any(k.endswith(":roles") for k in alone)
    # an unknown project's audience is not granted
    other = await claims_for(issuer, key, f"openid {project_audience_scope('other')}")
    assert other["aud"] == [user.user_id]


async def test_openid_is_required(issuer: OidcIssuer, tmp_path: Path) -> None:
    issuer.enroll_device("dev-1", tmp_path / "k.json")
    for scope in (None, "", f"{ROLES_SCOPE} {METADATA_SCOPE}"):
        status, body = await token_request(issuer, tmp_path / "k.json", scope)
        assert (status, body["error"]) == (400, "invalid_scope")


async def test_the_fleet_clients_scopes_work_end_to_end(issuer: OidcIssuer,
                                                        tmp_path: Path) -> None:
    key_file = tmp_path / "k.json"
    issuer.enroll_device("dev-1", key_file)
    settings = ZitadelAuth(issuer=issuer.issuer, key_file=key_file, project_id=PROJECT)
    assert settings.scopes() == fleet_scopes(PROJECT)
    token = (await asyncio.to_thread(exchange, settings, MachineKey.load(key_file))).value
    identity = await TokenValidator(JwksCache(issuer.issuer), PROJECT).validate(token)
    assert (identity.device_id, identity.roles) == ("dev-1", frozenset({"fleet-device"}))


async def test_discovery_is_valid_provider_metadata(issuer: OidcIssuer) -> None:
    async with aiohttp.ClientSession() as http, \
            http.get(f"{issuer.url}/.well-known/openid-configuration") as response:
        doc = await response.json()
    OpenIDProviderMetadata(doc).validate()  # raises on a missing or malformed field
    for field in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri",
                  "response_types_supported", "subject_types_supported",
                  "id_token_signing_alg_values_supported", "grant_types_supported",
                  "scopes_supported", "token_endpoint_auth_methods_supported"):
        assert doc[field], field
    assert "client_credentials" not in doc["grant_types_supported"]


async def test_only_advertised_grants_are_served(issuer: OidcIssuer, tmp_path: Path) -> None:
    issuer.enroll_device("dev-1", tmp_path / "k.json")
    advertised = set(issuer.discovery_document()["grant_types_supported"])
    for grant in advertised | {"client_credentials", "password", "refresh_token"}:
        status, body = await token_request(issuer, tmp_path / "k.json", "openid", grant)
        refused = body.get("error") == "unsupported_grant_type"
        assert refused == (grant not in advertised), (grant, status, body)


@given(st.lists(st.sampled_from(["openid", ROLES_SCOPE, METADATA_SCOPE, "profile", "email",
                                 project_audience_scope("a"), project_audience_scope("b"),
                                 "urn:zitadel:iam:org:project:id::aud"])))
def test_scope_parsing_ignores_order_duplicates_and_unknown_scopes(items: list[str]) -> None:
    parsed = Scopes.parse(" ".join(items))
    again = Scopes.parse("  ".join(reversed(items)))
    assert (parsed.openid, parsed.roles, parsed.metadata) == \
        (again.openid, again.roles, again.metadata)
    assert set(parsed.projects) == set(again.projects) <= {"a", "b"}
    assert set(parsed.granted) <= set(items)
    assert len(parsed.granted) == len(set(parsed.granted))
