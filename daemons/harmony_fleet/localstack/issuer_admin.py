"""A client of the management API (Zitadel's v1 subset the local issuer serves), authenticated
with an admin machine key: what the local stack, ``fleet stack add-user``/``add-web-client``
and tests use to configure an issuer over HTTP, the same calls as against Zitadel.

Every create looks up first: calling it twice returns what the first call made, unchanged.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import MachineKey, TokenError, exchange
from harmony_fleet.contracts.identity import DEVICE_ID_METADATA_KEY, DEVICE_ROLE, ZITADEL_API_SCOPE

from .errors import LocalStackError
from .files import write_private_file


class ManagementCallError(LocalStackError):
    """The issuer refused a management call (``status``, gRPC ``code``) or was unreachable."""

    def __init__(self, message: str, status: int = 0, code: int = 0) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class WebClientInfo:
    client_id: str
    #: only for a confidential client, only when it was just created (Zitadel shows it once)
    client_secret: str | None
    app_id: str


class IssuerAdmin:
    """``issuer_url``: where the issuer is reached; ``issuer``: its identity (default the
    same); ``admin_key_file``: a machine key of a user with ``ORG_OWNER`` (exchanged for a
    token with Zitadel's API audience), or ``pat``: that user's personal access token."""

    def __init__(self, issuer_url: str, admin_key_file: Path | None, project_id: str, *,
                 issuer: str | None = None, timeout_s: float = 10,
                 pat: str | None = None) -> None:
        if (admin_key_file is None) == (pat is None):
            raise LocalStackError("give exactly one of an admin key file and a PAT")
        self.issuer_url = issuer_url.rstrip("/")
        self.issuer = (issuer or issuer_url).rstrip("/")
        self.admin_key_file = admin_key_file
        self.project_id = project_id
        self.timeout_s = timeout_s
        self._token: str | None = pat

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IssuerAdmin:
        """The admin of a local stack, from its state document (``fleet stack up``)."""
        issuer = state.get("issuer")
        if not isinstance(issuer, dict):
            raise LocalStackError("this stack has no OIDC issuer (started with --auth dev?)")
        return cls(str(issuer["url"]), Path(issuer["admin_key_file"]),
                   str(issuer["project_id"]))

    def token(self) -> str:
        if self._token is None:
            assert self.admin_key_file is not None
            settings = ZitadelAuth(issuer=self.issuer, issuer_url=self.issuer_url,
                                   key_file=self.admin_key_file, project_id=self.project_id,
                                   extra_scopes=[ZITADEL_API_SCOPE])
            try:
                self._token = exchange(settings, MachineKey.load(self.admin_key_file)).value
            except TokenError as exc:
                raise ManagementCallError(f"no admin token: {exc}") from exc
        return self._token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One management call; :class:`ManagementCallError` with Zitadel's message if
        refused."""
        request = urllib.request.Request(  # noqa: S310 - the issuer URL is http(s)
            f"{self.issuer_url}/management/v1{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token()}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                return dict(json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read())
                message, code = str(answer.get("message")), int(answer.get("code", 0))
            except (ValueError, AttributeError, TypeError):
                message, code = exc.reason, 0
            raise ManagementCallError(f"{method} {path}: {exc.code} {message}", exc.code,
                                      code) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # HTTPException: a connection cut mid-answer (an issuer killed while it replies)
            raise ManagementCallError(f"issuer {self.issuer_url} unreachable: "
                                      f"{str(exc) or repr(exc)}") from exc

    # ---- look-ups -------------------------------------------------------------------------
    def find_user(self, user_name: str) -> dict[str, Any] | None:
        found = self.call("POST", "/users/_search", {"queries": [{"userNameQuery": {
            "userName": user_name, "method": "TEXT_QUERY_METHOD_EQUALS"}}]})
        result = found.get("result") or []
        return dict(result[0]) if result else None

    def find_web_client(self, name: str) -> dict[str, Any] | None:
        found = self.call("POST", f"/projects/{self.project_id}/apps/_search",
                          {"queries": [{"nameQuery": {"name": name}}]})
        result = found.get("result") or []
        return dict(result[0]) if result else None

    # ---- configuration ------------------------------------------------------------------
    def create_human_user(self, user_name: str, password: str, roles: Iterable[str] = (), *,
                          email: str = "", first_name: str = "",
                          last_name: str = "") -> str:
        """A human who can log in to web clients, holding ``roles`` in the fleet project;
        return the user id (an existing user of that name is returned unchanged)."""
        existing = self.find_user(user_name)
        if existing is not None:
            return str(existing["id"])
        created = self.call("POST", "/users/human/_import", {
            "userName": user_name,
            "profile": {"firstName": first_name or user_name, "lastName": last_name},
            "email": {"email": email, "isEmailVerified": bool(email)},
            "password": password, "passwordChangeRequired": False,
        })
        user_id = str(created["userId"])
        roles = sorted(set(roles))
        if roles:
            self.call("POST", f"/users/{user_id}/grants",
                      {"projectId": self.project_id, "roleKeys": roles})
        return user_id

    def create_web_client(self, name: str, redirect_uris: Iterable[str], *,
                          confidential: bool = False,
                          post_logout_redirect_uris: Iterable[str] = ()) -> WebClientInfo:
        """An OIDC web application of the fleet project (authorization code + PKCE; with
        ``confidential`` it also has a secret). An existing one of that name is returned
        (without its secret)."""
        existing = self.find_web_client(name)
        if existing is not None:
            return WebClientInfo(str(existing["oidcConfig"]["clientId"]), None,
                                 str(existing["id"]))
        created = self.call("POST", f"/projects/{self.project_id}/apps/oidc", {
            "name": name, "redirectUris": list(redirect_uris),
            "postLogoutRedirectUris": list(post_logout_redirect_uris),
            "responseTypes": ["OIDC_RESPONSE_TYPE_CODE"],
            "grantTypes": ["OIDC_GRANT_TYPE_AUTHORIZATION_CODE"],
            "appType": "OIDC_APP_TYPE_WEB" if confidential else "OIDC_APP_TYPE_USER_AGENT",
            "authMethodType": "OIDC_AUTH_METHOD_TYPE_BASIC" if confidential
            else "OIDC_AUTH_METHOD_TYPE_NONE",
        })
        return WebClientInfo(str(created["clientId"]), created.get("clientSecret") or None,
                             str(created["appId"]))

    def enroll_device(self, device_id: str, key_file: Path) -> str:
        """The device's machine user, ``device_id`` metadata, ``fleet-device`` grant and a
        new key written to ``key_file`` (0600); return the user id."""
        user_id = str(self.call("POST", "/users/machine", {
            "userName": device_id, "name": device_id,
            "accessTokenType": "ACCESS_TOKEN_TYPE_JWT"})["userId"])
        self.call("POST", f"/users/{user_id}/metadata/{DEVICE_ID_METADATA_KEY}",
                  {"value": base64.b64encode(device_id.encode()).decode()})
        self.call("POST", f"/users/{user_id}/grants",
                  {"projectId": self.project_id, "roleKeys": [DEVICE_ROLE]})
        key = self.call("POST", f"/users/{user_id}/keys", {"type": "KEY_TYPE_JSON"})
        write_private_file(key_file, base64.b64decode(key["keyDetails"]).decode())
        return user_id

    def delete_user(self, user_id: str) -> None:
        self.call("DELETE", f"/users/{user_id}")
