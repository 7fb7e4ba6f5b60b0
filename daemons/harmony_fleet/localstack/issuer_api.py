"""The local issuer's management API: the subset of Zitadel's Management API v1 the fleet
uses, with Zitadel's paths, JSON shapes (gRPC-gateway: camelCase, int64 as strings, empty
lists left out) and errors (``{code, message, details}`` with Zitadel's HTTP statuses).

Every call needs ``Authorization: Bearer <token>``: a token of this issuer with Zitadel's API
audience (scope ``urn:zitadel:iam:org:project:id:zitadel:aud``; else 401 UNAUTHENTICATED)
from a user with an ``ORG_OWNER``/``IAM_OWNER`` membership (else 403 PERMISSION_DENIED).
docs/zitadel-api.md lists the endpoints.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .issuer import (
    KEY_EXPIRATION,
    ORG_DOMAIN,
    ORG_ID,
    Grant,
    InvalidArgument,
    MachineUser,
    NotFound,
    Project,
    WebClient,
    now_iso,
)

if TYPE_CHECKING:
    from .issuer import OidcIssuer

V1 = "/management/v1"
#: Zitadel's TextQueryMethod
TEXT_METHODS = ("TEXT_QUERY_METHOD_EQUALS", "TEXT_QUERY_METHOD_EQUALS_IGNORE_CASE",
                "TEXT_QUERY_METHOD_STARTS_WITH", "TEXT_QUERY_METHOD_STARTS_WITH_IGNORE_CASE",
                "TEXT_QUERY_METHOD_CONTAINS", "TEXT_QUERY_METHOD_CONTAINS_IGNORE_CASE",
                "TEXT_QUERY_METHOD_ENDS_WITH", "TEXT_QUERY_METHOD_ENDS_WITH_IGNORE_CASE")
MAX_LIMIT = 1000


def text_matches(value: str, wanted: str, method: str | int | None) -> bool:
    """Zitadel's text query (pure); :class:`InvalidArgument` for an unknown method."""
    if method is None or method == "":
        method = TEXT_METHODS[0]
    if isinstance(method, int) and 0 <= method < len(TEXT_METHODS):
        method = TEXT_METHODS[method]
    if method not in TEXT_METHODS:
        raise InvalidArgument(f"unknown text query method {method!r}", "Errors.Query.Invalid")
    assert isinstance(method, str)
    if method.endswith("_IGNORE_CASE"):
        value, wanted = value.casefold(), wanted.casefold()
    if "EQUALS" in method:
        return value == wanted
    if "STARTS_WITH" in method:
        return value.startswith(wanted)
    if "ENDS_WITH" in method:
        return value.endswith(wanted)
    return wanted in value


def page(items: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
    """A list response for ``query`` {offset, limit, asc} (pure)."""
    query = body.get("query") or {}
    if not isinstance(query, dict):
        raise InvalidArgument("query must be an object", "Errors.Query.Invalid")
    try:
        offset = int(query.get("offset") or 0)
        limit = int(query.get("limit") or 0) or MAX_LIMIT
    except (TypeError, ValueError):
        raise InvalidArgument("offset and limit must be numbers", "Errors.Query.Invalid") \
            from None
    if offset < 0 or limit < 0:
        raise InvalidArgument("offset and limit must not be negative", "Errors.Query.Invalid")
    if query.get("asc") is False:
        items = list(reversed(items))
    result: dict[str, Any] = {"details": {"totalResult": str(len(items)),
                                          "viewTimestamp": now_iso()}}
    chosen = items[offset:offset + min(limit, MAX_LIMIT)]
    if chosen:  # gRPC-gateway leaves an empty list out
        result["result"] = chosen
    return result


def _queries(body: dict[str, Any], known: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    queries = body.get("queries") or []
    if not isinstance(queries, list):
        raise InvalidArgument("queries must be a list", "Errors.Query.Invalid")
    parsed = []
    for query in queries:
        if not isinstance(query, dict) or len(query) != 1:
            raise InvalidArgument("each query must be an object with one key",
                                  "Errors.Query.Invalid")
        ((kind, value),) = query.items()
        if kind not in known or not isinstance(value, dict):
            raise InvalidArgument(f"unsupported query {kind!r}", "Errors.Query.Invalid")
        parsed.append((kind, value))
    return parsed


def _text(query: dict[str, Any], field: str) -> str:
    value = query.get(field)
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string", "Errors.Query.Invalid")
    return value


def _details(created: str) -> dict[str, Any]:
    return {"sequence": "1", "creationDate": created, "changeDate": created,
            "resourceOwner": ORG_ID}


def user_json(user: MachineUser) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": user.user_id, "details": _details(user.created), "state": "USER_STATE_ACTIVE",
        "userName": user.user_name, "loginNames": [f"{user.user_name}@{ORG_DOMAIN}"],
        "preferredLoginName": f"{user.user_name}@{ORG_DOMAIN}",
    }
    if user.human is not None:
        doc["human"] = {
            "profile": {"firstName": user.human.first_name, "lastName": user.human.last_name,
                        "displayName": user.human.display_name},
            "email": {"email": user.human.email, "isEmailVerified": bool(user.human.email)},
        }
    else:
        doc["machine"] = {"name": user.name, "description": user.description,
                          "accessTokenType": "ACCESS_TOKEN_TYPE_JWT"}
    return doc


def project_json(project: Project) -> dict[str, Any]:
    return {"id": project.project_id, "details": _details(project.created),
            "name": project.name, "state": "PROJECT_STATE_ACTIVE",
            "projectRoleAssertion": False, "projectRoleCheck": False, "hasProjectCheck": False,
            "privateLabelingSetting": "PRIVATE_LABELING_SETTING_UNSPECIFIED"}


def grant_json(issuer: OidcIssuer, user: MachineUser, project_id: str,
               grant: Grant) -> dict[str, Any]:
    project = issuer.projects.get(project_id)
    return {"id": grant.grant_id, "details": _details(grant.created),
            "roleKeys": sorted(grant.roles), "state": "USER_GRANT_STATE_ACTIVE",
            "userId": user.user_id, "userName": user.user_name,
            "userType": "TYPE_HUMAN" if user.human else "TYPE_MACHINE",
            "projectId": project_id, "projectName": project.name if project else "",
            "orgId": ORG_ID, "orgDomain": ORG_DOMAIN, "orgName": ORG_ID}


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise InvalidArgument("a JSON object body is required", "Errors.Body.Invalid")
    return body


def _done() -> web.Response:
    return web.json_response({"details": _details(now_iso())})


Route = Callable[[web.Request], Awaitable[web.Response]]


class _Api:
    """The management handlers (each wrapped by :func:`add_routes` behind the manager check)."""

    def __init__(self, issuer: OidcIssuer) -> None:
        self.issuer = issuer

    # ---- users ------------------------------------------------------------------------
    async def create_machine_user(self, request: web.Request) -> web.Response:
        body = await _body(request)
        user_name = body.get("userName")
        if not isinstance(user_name, str) or not user_name:
            raise InvalidArgument("userName must be a non-empty string", "Errors.User.Invalid")
        user = self.issuer.create_machine_user(
            user_name, name=str(body.get("name") or ""),
            description=str(body.get("description") or ""))
        return web.json_response({"userId": user.user_id, "details": _details(user.created)})

    async def search_users(self, request: web.Request) -> web.Response:
        body = await _body(request)
        queries = _queries(body, ("userNameQuery", "loginNameQuery", "typeQuery",
                                  "inUserIdsQuery"))
        users = sorted(self.issuer.users.values(), key=lambda u: u.user_name)
        for kind, query in queries:
            users = [u for u in users if _user_matches(u, kind, query)]
        return web.json_response(page([user_json(u) for u in users], body))

    async def get_user(self, request: web.Request) -> web.Response:
        return web.json_response({"user": user_json(self.issuer.user(request.match_info["id"]))})

    async def delete_user(self, request: web.Request) -> web.Response:
        self.issuer.delete_user(request.match_info["id"])
        return _done()

    async def import_human(self, request: web.Request) -> web.Response:
        """Zitadel's ``ImportHumanUser``: a human with a password (stored hashed)."""
        body = await _body(request)
        user_name, password = body.get("userName"), body.get("password")
        profile, email = body.get("profile") or {}, body.get("email") or {}
        if not isinstance(user_name, str) or not isinstance(password, str):
            raise InvalidArgument("userName and password must be strings", "Errors.User.Invalid")
        if not isinstance(profile, dict) or not isinstance(email, dict):
            raise InvalidArgument("profile and email must be objects", "Errors.User.Invalid")
        user = self.issuer.create_human_user(
            user_name, password, first_name=str(profile.get("firstName") or ""),
            last_name=str(profile.get("lastName") or ""), email=str(email.get("email") or ""))
        return web.json_response({"userId": user.user_id, "details": _details(user.created)})

    # ---- machine keys -----------------------------------------------------------------
    async def add_key(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if body.get("type", "KEY_TYPE_JSON") != "KEY_TYPE_JSON":
            raise InvalidArgument("only KEY_TYPE_JSON keys are served", "Errors.Key.Invalid")
        key = self.issuer.add_key(request.match_info["id"])
        details = base64.b64encode(json.dumps(key).encode()).decode()
        return web.json_response({"keyId": key["keyId"], "keyDetails": details,
                                  "details": _details(now_iso())})

    async def search_keys(self, request: web.Request) -> web.Response:
        body = await _body(request)
        user = self.issuer.user(request.match_info["id"])
        keys = [{"id": key_id, "details": _details(user.created), "type": "KEY_TYPE_JSON",
                 "expirationDate": KEY_EXPIRATION} for key_id in user.keys]
        return web.json_response(page(keys, body))

    async def remove_key(self, request: web.Request) -> web.Response:
        self.issuer.remove_key(request.match_info["id"], request.match_info["key_id"])
        return _done()

    # ---- personal access tokens ----------------------------------------------------------
    async def add_pat(self, request: web.Request) -> web.Response:
        body = await _body(request)
        expiration = body.get("expirationDate") or KEY_EXPIRATION
        if not isinstance(expiration, str):
            raise InvalidArgument("expirationDate must be a string", "Errors.User.PAT.Invalid")
        token_id, token = self.issuer.add_pat(request.match_info["id"], expiration)
        return web.json_response({"tokenId": token_id, "token": token,
                                  "details": _details(now_iso())})

    async def search_pats(self, request: web.Request) -> web.Response:
        body = await _body(request)
        user = self.issuer.user(request.match_info["id"])
        pats = [{"id": token_id, "details": _details(user.created),
                 "expirationDate": pat["expires"]} for token_id, pat in user.pats.items()]
        return web.json_response(page(pats, body))

    async def remove_pat(self, request: web.Request) -> web.Response:
        self.issuer.remove_pat(request.match_info["id"], request.match_info["token_id"])
        return _done()

    # ---- metadata ---------------------------------------------------------------------
    async def set_metadata(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self.issuer.user(request.match_info["id"])
        try:
            value = base64.b64decode(str(body["value"]), validate=True).decode()
        except (KeyError, ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
            raise InvalidArgument("value must be base64-encoded UTF-8",
                                  "Errors.Metadata.Invalid") from None
        self.issuer.set_metadata(request.match_info["id"], request.match_info["key"], value)
        return _done()

    async def get_metadata(self, request: web.Request) -> web.Response:
        user = self.issuer.user(request.match_info["id"])
        key = request.match_info["key"]
        if key not in user.metadata:
            raise NotFound("Metadata not found", "Errors.Metadata.NotFound")
        return web.json_response({"metadata": _metadata_json(user, key)})

    async def search_metadata(self, request: web.Request) -> web.Response:
        body = await _body(request)
        user = self.issuer.user(request.match_info["id"])
        keys = sorted(user.metadata)
        for _kind, query in _queries(body, ("keyQuery",)):
            keys = [k for k in keys if text_matches(k, _text(query, "key"), query.get("method"))]
        return web.json_response(page([_metadata_json(user, k) for k in keys], body))

    async def remove_metadata(self, request: web.Request) -> web.Response:
        self.issuer.remove_metadata(request.match_info["id"], request.match_info["key"])
        return _done()

    # ---- user grants ------------------------------------------------------------------
    async def add_grant(self, request: web.Request) -> web.Response:
        body = await _body(request)
        roles = body.get("roleKeys", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidArgument("roleKeys must be a list of strings", "Errors.UserGrant.Invalid")
        project_id = body.get("projectId")
        if not isinstance(project_id, str) or not project_id:
            raise InvalidArgument("projectId must be a non-empty string",
                                  "Errors.UserGrant.Invalid")
        grant = self.issuer.add_user_grant(request.match_info["id"], project_id, roles)
        return web.json_response({"userGrantId": grant.grant_id,
                                  "details": _details(grant.created)})

    async def update_grant(self, request: web.Request) -> web.Response:
        body = await _body(request)
        roles = body.get("roleKeys", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidArgument("roleKeys must be a list of strings", "Errors.UserGrant.Invalid")
        self.issuer.set_grant_roles(request.match_info["id"], request.match_info["grant_id"], roles)
        return _done()

    async def remove_grant(self, request: web.Request) -> web.Response:
        self.issuer.remove_grant(request.match_info["id"], request.match_info["grant_id"])
        return _done()

    async def search_grants(self, request: web.Request) -> web.Response:
        body = await _body(request)
        queries = _queries(body, ("userIdQuery", "projectIdQuery", "roleKeyQuery",
                                  "userNameQuery"))
        found = []
        for user in sorted(self.issuer.users.values(), key=lambda u: u.user_name):
            for project_id, grant in sorted(user.grants.items()):
                if all(_grant_matches(user, project_id, grant, kind, query)
                       for kind, query in queries):
                    found.append(grant_json(self.issuer, user, project_id, grant))
        return web.json_response(page(found, body))

    # ---- projects and roles -----------------------------------------------------------
    async def create_project(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidArgument("name must be a string", "Errors.Project.Invalid")
        project = self.issuer.create_project(name)
        return web.json_response({"id": project.project_id,
                                  "details": _details(project.created)})

    async def search_projects(self, request: web.Request) -> web.Response:
        body = await _body(request)
        projects = sorted(self.issuer.projects.values(), key=lambda p: p.name)
        for _kind, query in _queries(body, ("nameQuery",)):
            projects = [p for p in projects
                        if text_matches(p.name, _text(query, "name"), query.get("method"))]
        return web.json_response(page([project_json(p) for p in projects], body))

    async def get_project(self, request: web.Request) -> web.Response:
        project = self.issuer.project(request.match_info["id"])
        return web.json_response({"project": project_json(project)})

    async def add_role(self, request: web.Request) -> web.Response:
        body = await _body(request)
        key = body.get("roleKey")
        if not isinstance(key, str):
            raise InvalidArgument("roleKey must be a string", "Errors.Project.Role.Invalid")
        self.issuer.add_project_role(
            request.match_info["id"], key, str(body.get("displayName") or ""),
            str(body.get("group") or ""))
        return _done()

    async def add_oidc_app(self, request: web.Request) -> web.Response:
        """Zitadel's ``AddOIDCApp``, for what the issuer serves: the code flow with PKCE;
        ``authMethodType`` NONE (public) or BASIC/POST (confidential: a secret, shown once)."""
        body = await _body(request)
        project_id = request.match_info["id"]
        self.issuer.project(project_id)
        if body.get("responseTypes", ["OIDC_RESPONSE_TYPE_CODE"]) != ["OIDC_RESPONSE_TYPE_CODE"]:
            raise InvalidArgument("only OIDC_RESPONSE_TYPE_CODE is served", "Errors.App.Invalid")
        if body.get("grantTypes", ["OIDC_GRANT_TYPE_AUTHORIZATION_CODE"]) != \
                ["OIDC_GRANT_TYPE_AUTHORIZATION_CODE"]:
            raise InvalidArgument("only OIDC_GRANT_TYPE_AUTHORIZATION_CODE is served",
                                  "Errors.App.Invalid")
        method = body.get("authMethodType", "OIDC_AUTH_METHOD_TYPE_BASIC")
        if method not in AUTH_METHODS:
            raise InvalidArgument(f"authMethodType {method!r} is not served",
                                  "Errors.App.Invalid")
        uris, logout = body.get("redirectUris"), body.get("postLogoutRedirectUris") or []
        if not isinstance(uris, list) or not isinstance(logout, list):
            raise InvalidArgument("redirectUris must be a list", "Errors.App.Invalid")
        client, secret = self.issuer.register_web_client(
            str(body.get("name") or ""), [str(u) for u in uris],
            confidential=method != "OIDC_AUTH_METHOD_TYPE_NONE",
            post_logout_redirect_uris=[str(u) for u in logout], project_id=project_id)
        answer: dict[str, Any] = {"appId": client.app_id, "details": _details(now_iso()),
                                  "clientId": client.client_id, "noneCompliant": False}
        if secret is not None:
            answer["clientSecret"] = secret
        return web.json_response(answer)

    async def search_apps(self, request: web.Request) -> web.Response:
        body = await _body(request)
        project = self.issuer.project(request.match_info["id"])
        clients = sorted((c for c in self.issuer.clients.values()
                          if c.project_id == project.project_id), key=lambda c: c.name)
        for _kind, query in _queries(body, ("nameQuery",)):
            clients = [c for c in clients
                       if text_matches(c.name, _text(query, "name"), query.get("method"))]
        return web.json_response(page([app_json(c) for c in clients], body))

    async def search_roles(self, request: web.Request) -> web.Response:
        body = await _body(request)
        project = self.issuer.project(request.match_info["id"])
        roles = sorted(project.roles.items())
        for kind, query in _queries(body, ("keyQuery", "displayNameQuery")):
            field = "key" if kind == "keyQuery" else "displayName"
            roles = [(k, v) for k, v in roles
                     if text_matches(k if field == "key" else v["displayName"],
                                     _text(query, field), query.get("method"))]
        return web.json_response(page([
            {"key": k, "details": _details(project.created), "displayName": v["displayName"],
             "group": v["group"]} for k, v in roles], body))


def add_routes(issuer: OidcIssuer, app: web.Application) -> None:
    """The management routes, each behind :meth:`OidcIssuer.manager`."""
    api = _Api(issuer)

    def managed(handler: Route) -> Route:
        async def wrapped(request: web.Request) -> web.Response:
            issuer.manager(request.headers.get("Authorization", ""))
            return await handler(request)
        return wrapped

    routes: list[tuple[str, str, Route]] = [
        ("POST", "/users/human/_import", api.import_human),
        ("POST", "/projects/{id}/apps/oidc", api.add_oidc_app),
        ("POST", "/projects/{id}/apps/_search", api.search_apps),
        ("POST", "/users/machine", api.create_machine_user),
        ("POST", "/users/_search", api.search_users),
        ("POST", "/users/grants/_search", api.search_grants),
        ("GET", "/users/{id}", api.get_user),
        ("DELETE", "/users/{id}", api.delete_user),
        ("POST", "/users/{id}/keys", api.add_key),
        ("POST", "/users/{id}/keys/_search", api.search_keys),
        ("DELETE", "/users/{id}/keys/{key_id}", api.remove_key),
        ("POST", "/users/{id}/pats", api.add_pat),
        ("POST", "/users/{id}/pats/_search", api.search_pats),
        ("DELETE", "/users/{id}/pats/{token_id}", api.remove_pat),
        ("POST", "/users/{id}/metadata/_search", api.search_metadata),
        ("POST", "/users/{id}/metadata/{key}", api.set_metadata),
        ("GET", "/users/{id}/metadata/{key}", api.get_metadata),
        ("DELETE", "/users/{id}/metadata/{key}", api.remove_metadata),
        ("POST", "/users/{id}/grants", api.add_grant),
        ("PUT", "/users/{id}/grants/{grant_id}", api.update_grant),
        ("DELETE", "/users/{id}/grants/{grant_id}", api.remove_grant),
        ("POST", "/projects", api.create_project),
        ("POST", "/projects/_search", api.search_projects),
        ("GET", "/projects/{id}", api.get_project),
        ("POST", "/projects/{id}/roles", api.add_role),
        ("POST", "/projects/{id}/roles/_search", api.search_roles),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, V1 + path, managed(handler))


AUTH_METHODS = ("OIDC_AUTH_METHOD_TYPE_NONE", "OIDC_AUTH_METHOD_TYPE_BASIC",
                "OIDC_AUTH_METHOD_TYPE_POST")


def app_json(client: WebClient) -> dict[str, Any]:
    return {"id": client.app_id, "details": _details(now_iso()), "state": "APP_STATE_ACTIVE",
            "name": client.name, "oidcConfig": {
                "clientId": client.client_id, "redirectUris": list(client.redirect_uris),
                "postLogoutRedirectUris": list(client.post_logout_redirect_uris),
                "responseTypes": ["OIDC_RESPONSE_TYPE_CODE"],
                "grantTypes": ["OIDC_GRANT_TYPE_AUTHORIZATION_CODE"],
                "appType": "OIDC_APP_TYPE_WEB" if client.secret_hash
                else "OIDC_APP_TYPE_USER_AGENT",
                "authMethodType": "OIDC_AUTH_METHOD_TYPE_BASIC" if client.secret_hash
                else "OIDC_AUTH_METHOD_TYPE_NONE"}}


def _metadata_json(user: MachineUser, key: str) -> dict[str, Any]:
    return {"details": _details(user.created), "key": key,
            "value": base64.b64encode(user.metadata[key].encode()).decode()}


def _user_matches(user: MachineUser, kind: str, query: dict[str, Any]) -> bool:
    if kind == "userNameQuery":
        return text_matches(user.user_name, _text(query, "userName"), query.get("method"))
    if kind == "loginNameQuery":
        return text_matches(f"{user.user_name}@{ORG_DOMAIN}", _text(query, "loginName"),
                            query.get("method"))
    if kind == "typeQuery":
        wanted = str(query.get("type"))
        if wanted not in ("TYPE_HUMAN", "TYPE_MACHINE"):
            raise InvalidArgument("type must be TYPE_HUMAN or TYPE_MACHINE",
                                  "Errors.Query.Invalid")
        return bool((user.human is not None) == (wanted == "TYPE_HUMAN"))
    ids = query.get("userIds")
    if not isinstance(ids, list):
        raise InvalidArgument("userIds must be a list", "Errors.Query.Invalid")
    return user.user_id in ids


def _grant_matches(user: MachineUser, project_id: str, grant: Grant, kind: str,
                   query: dict[str, Any]) -> bool:
    if kind == "userIdQuery":
        return user.user_id == _text(query, "userId")
    if kind == "projectIdQuery":
        return project_id == _text(query, "projectId")
    if kind == "roleKeyQuery":
        wanted = _text(query, "roleKey")
        return any(text_matches(r, wanted, query.get("method")) for r in grant.roles)
    return text_matches(user.user_name, _text(query, "userName"), query.get("method"))
