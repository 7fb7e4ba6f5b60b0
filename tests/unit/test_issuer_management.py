"""The local issuer's management API (Zitadel Management API v1 subset): look-up-before-create,
Zitadel's shapes and errors, revocation (a deleted user or a removed key gets no token), who
may call it, and that everything persists in the registry."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.bus.tokens import MachineKey
from harmony_fleet.contracts.identity import (
    ROLES_SCOPE,
    ZITADEL_API_SCOPE,
    project_audience_scope,
    project_roles_claim,
)
from harmony_fleet.localstack.issuer import (
    JWT_BEARER,
    InvalidArgument,
    OidcIssuer,
    load_registry,
    registry_document,
)
from harmony_fleet.localstack.issuer_api import page, text_matches

API = [ZITADEL_API_SCOPE, "openid"]


class Client:
    def __init__(self, issuer: OidcIssuer, http: aiohttp.ClientSession, token: str | None):
        self.issuer, self.http, self.token = issuer, http, token

    async def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(method, f"{self.issuer.url}/management/v1{path}",
                                     json=body, headers=headers) as response:
            return response.status, await response.json()

    async def token_for(self, key: dict[str, str], scope: str = "openid") -> tuple[int, Any]:
        form = {"grant_type": JWT_BEARER, "scope": scope,
                "assertion": MachineKey(key["keyId"], key["key"], key["userId"])
                .assertion(self.issuer.issuer)}
        async with self.http.post(f"{self.issuer.url}/oauth/v2/token", data=form) as response:
            return response.status, await response.json()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    issuer = OidcIssuer(project_id="p-1", registry=tmp_path / "registry.json")
    admin = issuer.enroll_admin("admin", tmp_path / "admin.json")
    await issuer.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Client(issuer, http, issuer.issue_token(admin, scopes=API))
    finally:
        await issuer.stop()


def by_name(name: str, method: str = "TEXT_QUERY_METHOD_EQUALS") -> dict[str, Any]:
    return {"queries": [{"userNameQuery": {"userName": name, "method": method}}]}


async def test_look_up_before_create_and_duplicates(api: Client) -> None:
    status, found = await api("POST", "/users/_search", by_name("dev-1"))
    assert (status, found["details"]["totalResult"], "result" in found) == (200, "0", False)
    status, created = await api("POST", "/users/machine",
                                {"userName": "dev-1", "name": "Device 1",
                                 "accessTokenType": "ACCESS_TOKEN_TYPE_JWT"})
    assert status == 200
    user_id = created["userId"]
    status, again = await api("POST", "/users/machine", {"userName": "dev-1"})
    assert (status, again["code"]) == (409, 6)
    assert again["details"][0]["id"] == "Errors.User.AlreadyExists"
    status, found = await api("POST", "/users/_search", by_name("DEV-", "TEXT_QUERY_METHOD_"
                                                                       "STARTS_WITH_IGNORE_CASE"))
    assert [u["id"] for u in found["result"]] == [user_id]
    assert found["result"][0]["machine"]["name"] == "Device 1"
    status, got = await api("GET", f"/users/{user_id}")
    assert (status, got["user"]["userName"], got["user"]["state"]) == \
        (200, "dev-1", "USER_STATE_ACTIVE")


async def test_a_deleted_user_and_a_removed_key_get_no_token(api: Client) -> None:
    _, created = await api("POST", "/users/machine", {"userName": "dev-1"})
    user_id = created["userId"]
    keys = []
    for _ in range(2):
        _, key = await api("POST", f"/users/{user_id}/keys", {"type": "KEY_TYPE_JSON"})
        keys.append(json.loads(base64.b64decode(key["keyDetails"])))
    _, listed = await api("POST", f"/users/{user_id}/keys/_search", {})
    assert sorted(k["id"] for k in listed["result"]) == sorted(k["keyId"] for k in keys)
    assert (await api.token_for(keys[0]))[0] == 200

    status, _ = await api("DELETE", f"/users/{user_id}/keys/{keys[0]['keyId']}")
    assert status == 200
    status, refused = await api.token_for(keys[0])
    assert (status, refused["error"]) == (400, "invalid_grant")
    assert "unknown machine key" in refused["error_description"]
    assert (await api.token_for(keys[1]))[0] == 200  # the other key still works
    status, again = await api("DELETE", f"/users/{user_id}/keys/{keys[0]['keyId']}")
    assert (status, again["code"]) == (404, 5)

    assert (await api("DELETE", f"/users/{user_id}"))[0] == 200
    status, refused = await api.token_for(keys[1])
    assert (status, refused["error"]) == (400, "invalid_grant")
    status, gone = await api("GET", f"/users/{user_id}")
    assert (status, gone["code"]) == (404, 5)
    assert (await api("DELETE", f"/users/{user_id}"))[0] == 404


async def test_projects_roles_and_grants(api: Client) -> None:
    status, created = await api("POST", "/projects", {"name": "other"})
    project_id = created["id"]
    assert status == 200
    assert (await api("POST", "/projects", {"name": "other"}))[0] == 409
    _, found = await api("POST", "/projects/_search",
                         {"queries": [{"nameQuery": {"name": "harmony-fleet"}}]})
    assert [p["id"] for p in found["result"]] == ["p-1"]  # the fleet project exists
    assert (await api("POST", f"/projects/{project_id}/roles",
                      {"roleKey": "reader", "displayName": "Reader"}))[0] == 200
    status, dup = await api("POST", f"/projects/{project_id}/roles", {"roleKey": "reader"})
    assert (status, dup["code"]) == (409, 6)
    _, roles = await api("POST", f"/projects/{project_id}/roles/_search",
                         {"queries": [{"keyQuery": {"key": "read",
                                                    "method": "TEXT_QUERY_METHOD_STARTS_WITH"}}]})
    assert [(r["key"], r["displayName"]) for r in roles["result"]] == [("reader", "Reader")]
    assert (await api("POST", "/projects/404/roles", {"roleKey": "x"}))[0] == 404

    _, user = await api("POST", "/users/machine", {"userName": "svc"})
    user_id = user["userId"]
    status, missing = await api("POST", f"/users/{user_id}/grants",
                                {"projectId": project_id, "roleKeys": ["writer"]})
    assert (status, missing["code"]) == (400, 9)  # FAILED_PRECONDITION: no such role
    status, grant = await api("POST", f"/users/{user_id}/grants",
                              {"projectId": project_id, "roleKeys": ["reader"]})
    assert status == 200
    status, dup = await api("POST", f"/users/{user_id}/grants",
                            {"projectId": project_id, "roleKeys": ["reader"]})
    assert (status, dup["code"]) == (409, 6)
    _, grants = await api("POST", "/users/grants/_search",
                          {"queries": [{"userIdQuery": {"userId": user_id}},
                                       {"projectIdQuery": {"projectId": project_id}}]})
    assert [(g["id"], g["roleKeys"], g["projectName"]) for g in grants["result"]] == \
        [(grant["userGrantId"], ["reader"], "other")]

    # the grant shows in a token that asks for that project and its roles
    _, key = await api("POST", f"/users/{user_id}/keys", {"type": "KEY_TYPE_JSON"})
    status, answer = await api.token_for(
        json.loads(base64.b64decode(key["keyDetails"])),
        f"openid {project_audience_scope(project_id)} {ROLES_SCOPE}")
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert project_id in claims["aud"]
    assert claims[project_roles_claim(project_id)] == {"reader": {"fleet-org": "fleet.local"}}


async def test_metadata(api: Client) -> None:
    _, user = await api("POST", "/users/machine", {"userName": "dev-1"})
    user_id = user["userId"]
    status, missing = await api("GET", f"/users/{user_id}/metadata/device_id")
    assert (status, missing["code"]) == (404, 5)
    value = base64.b64encode(b"dev-1").decode()
    await api("POST", f"/users/{user_id}/metadata/device_id", {"value": value})
    _, got = await api("GET", f"/users/{user_id}/metadata/device_id")
    assert (got["metadata"]["key"], got["metadata"]["value"]) == ("device_id", value)
    _, found = await api("POST", f"/users/{user_id}/metadata/_search", {})
    assert [m["key"] for m in found["result"]] == ["device_id"]


async def test_who_may_call_it(api: Client, tmp_path: Path) -> None:
    issuer = api.issuer
    plain = issuer.create_machine_user("plain")
    issuer.grant_roles(plain.user_id, ["fleet-admin"])  # a fleet role is no org membership
    cases = {
        None: (401, 16),
        "garbage": (401, 16),
        issuer.issue_token(plain): (401, 16),  # no API audience
        OidcIssuer().issue_token(plain, scopes=API): (401, 16),  # another issuer's key
        issuer.issue_token(plain, scopes=API, lifetime_s=-60): (401, 16),  # expired
        issuer.issue_token(plain, scopes=API): (403, 7),  # valid, but no rights
    }
    for token, expected in cases.items():
        status, answer = await Client(issuer, api.http, token)(
            "POST", "/users/machine", {"userName": "intruder"})
        assert (status, answer["code"]) == expected, token
    assert issuer.find_user("intruder") is None
    # a manager that was deleted loses the API with its next call
    manager = issuer.enroll_admin("second", tmp_path / "second.json")
    token = issuer.issue_token(manager, scopes=API)
    issuer.delete_user(manager.user_id)
    assert (await Client(issuer, api.http, token)("POST", "/users/_search", {}))[0] == 401


async def test_everything_persists(api: Client) -> None:
    _, project = await api("POST", "/projects", {"name": "other"})
    await api("POST", f"/projects/{project['id']}/roles", {"roleKey": "reader"})
    _, user = await api("POST", "/users/machine", {"userName": "svc"})
    await api("POST", f"/users/{user['userId']}/grants",
              {"projectId": project["id"], "roleKeys": ["reader"]})
    await api("POST", f"/users/{user['userId']}/keys", {"type": "KEY_TYPE_JSON"})
    assert api.issuer.registry is not None
    assert registry_document(load_registry(api.issuer.registry)) == \
        registry_document(api.issuer)


@pytest.mark.parametrize(("body", "message"), [
    ({"queries": [{"nameQuery": {"name": "x"}}]}, "unsupported query"),
    ({"queries": {"userNameQuery": {}}}, "must be a list"),
    ({"queries": [{"userNameQuery": {"userName": 3}}]}, "userName must be a string"),
    ({"queries": [{"userNameQuery": {"userName": "x", "method": "FUZZY"}}]}, "method"),
    ({"query": {"limit": "many"}}, "numbers"),
])
async def test_bad_searches_are_invalid_arguments(api: Client, body: Any, message: str) -> None:
    status, answer = await api("POST", "/users/_search", body)
    assert (status, answer["code"]) == (400, 3)
    assert message in answer["message"]


def test_page_offsets_and_limits() -> None:
    items = [{"n": i} for i in range(5)]
    assert page(items, {"query": {"offset": "1", "limit": 2}})["result"] == items[1:3]
    assert page(items, {"query": {"asc": False, "limit": 1}})["result"] == [items[4]]
    empty = page(items, {"query": {"offset": 9}})
    assert (empty["details"]["totalResult"], "result" in empty) == ("5", False)
    with pytest.raises(InvalidArgument):
        page(items, {"query": {"offset": -1}})


@given(st.text(max_size=8), st.text(max_size=4))
def test_text_query_methods(value: str, wanted: str) -> None:
    assert text_matches(value, wanted, None) == (value == wanted)
    assert text_matches(value, wanted, "TEXT_QUERY_METHOD_CONTAINS") == (wanted in value)
    assert text_matches(value, wanted, 2) == value.startswith(wanted)
    assert text_matches(value, wanted, "TEXT_QUERY_METHOD_ENDS_WITH_IGNORE_CASE") == \
        value.casefold().endswith(wanted.casefold())


async def test_humans_and_web_clients(api: Client) -> None:
    human = {"userName": "alice", "profile": {"firstName": "Alice"},
             "email": {"email": "a@example.org"}, "password": "long enough password"}
    status, created = await api("POST", "/users/human/_import", human)
    assert status == 200
    _, got = await api("GET", f"/users/{created['userId']}")
    assert got["user"]["human"]["email"]["email"] == "a@example.org"
    assert (await api("POST", "/users/human/_import", human))[0] == 409
    status, short = await api("POST", "/users/human/_import",
                              {**human, "userName": "bob", "password": "short"})
    assert (status, short["code"]) == (400, 3)
    assert "long enough password" not in api.issuer.registry.read_text()  # type: ignore[union-attr]

    app = {"name": "dashboard", "redirectUris": ["http://127.0.0.1:9/cb"],
           "authMethodType": "OIDC_AUTH_METHOD_TYPE_NONE"}
    status, public = await api("POST", "/projects/p-1/apps/oidc", app)
    assert (status, "clientSecret" in public) == (200, False)
    assert (await api("POST", "/projects/p-1/apps/oidc", app))[0] == 409
    _, confidential = await api("POST", "/projects/p-1/apps/oidc",
                                {**app, "name": "c", "authMethodType": "OIDC_AUTH_METHOD_TYPE_BASIC"})
    assert confidential["clientSecret"]
    _, found = await api("POST", "/projects/p-1/apps/_search",
                         {"queries": [{"nameQuery": {"name": "dashboard"}}]})
    assert [a["oidcConfig"]["clientId"] for a in found["result"]] == [public["clientId"]]
    for bad in ({**app, "name": "x", "authMethodType": "OIDC_AUTH_METHOD_TYPE_PRIVATE_KEY_JWT"},
                {**app, "name": "y", "redirectUris": ["http://127.0.0.1:9/cb#frag"]},
                {**app, "name": "z", "redirectUris": []},
                {**app, "name": "w", "grantTypes": ["OIDC_GRANT_TYPE_IMPLICIT"]}):
        status, answer = await api("POST", "/projects/p-1/apps/oidc", bad)
        assert (status, answer["code"]) == (400, 3), bad


async def test_personal_access_tokens(api: Client) -> None:
    issuer = api.issuer
    robot = issuer.create_machine_user("ansible")
    issuer.add_membership(robot.user_id, "ORG_OWNER")
    status, created = await api("POST", f"/users/{robot.user_id}/pats",
                                {"expirationDate": "2099-01-01T00:00:00Z"})
    assert status == 200
    pat = Client(issuer, api.http, created["token"])
    assert (await pat("POST", "/users/_search", {}))[0] == 200
    _, listed = await api("POST", f"/users/{robot.user_id}/pats/_search", {})
    assert [p["id"] for p in listed["result"]] == [created["tokenId"]]
    assert created["token"] not in issuer.registry.read_text()  # type: ignore[union-attr]

    plain = issuer.create_machine_user("plain")
    _, plain_pat = issuer.add_pat(plain.user_id)
    assert (await Client(issuer, api.http, plain_pat)("POST", "/users/_search", {}))[0] == 403
    assert (await api("POST", f"/users/{robot.user_id}/pats",
                      {"expirationDate": "2001-01-01T00:00:00Z"}))[0] == 400
    human = issuer.create_human_user("carol", "long enough password")
    assert (await api("POST", f"/users/{human.user_id}/pats", {}))[0] == 400

    # expired, then revoked: refused
    issuer.users[robot.user_id].pats[created["tokenId"]]["expires"] = "2001-01-01T00:00:00Z"
    assert (await pat("POST", "/users/_search", {}))[0] == 401
    issuer.users[robot.user_id].pats[created["tokenId"]]["expires"] = "2099-01-01T00:00:00Z"
    assert (await api("DELETE", f"/users/{robot.user_id}/pats/{created['tokenId']}"))[0] == 200
    status, answer = await pat("POST", "/users/_search", {})
    assert (status, answer["code"]) == (401, 16)
