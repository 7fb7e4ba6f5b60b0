"""A small OIDC issuer that speaks the Zitadel flows the fleet uses (local stack and tests).

Endpoints (paths as in Zitadel):

* ``GET /.well-known/openid-configuration`` and ``GET /oauth/v2/keys`` (JWKS);
* ``POST /oauth/v2/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``:
  the assertion is an RS256 JWT signed with a registered machine key (header ``kid`` = key
  id, ``iss`` = ``sub`` = user id, ``aud`` = the issuer); the answer is a JWT access token;
* the management API enrollment needs, behind an admin bearer token:
  ``POST /management/v1/users/machine`` (create a machine user),
  ``POST /management/v1/users/{id}/keys`` (mint a JSON machine key, returned base64 in
  ``keyDetails``), ``POST /management/v1/users/{id}/metadata/{key}`` (value base64) and
  ``POST /management/v1/users/{id}/grants`` (project roles).

Access tokens carry what Zitadel's carry for a machine user with the metadata and project
audience scopes: ``iss``, ``sub``, ``aud`` (project id, client id), ``exp``, ``iat``,
``client_id``, ``urn:zitadel:iam:user:metadata`` (base64 values) and
``urn:zitadel:iam:org:project:roles``. ``token_lifetime_s`` is configurable so tests can
force token rollovers within seconds.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ORG_ID = "fleet-org"
ORG_DOMAIN = "fleet.local"


def _new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass
class MachineUser:
    user_id: str
    user_name: str
    metadata: dict[str, str] = field(default_factory=dict)
    roles: set[str] = field(default_factory=set)
    keys: dict[str, Any] = field(default_factory=dict)  # key id -> public key


class OidcIssuer:
    """In-memory Zitadel stand-in. ``await start()`` serves it on 127.0.0.1."""

    def __init__(self, *, project_id: str = "fleet-project", token_lifetime_s: int = 3600,
                 port: int = 0) -> None:
        self.project_id = project_id
        self.token_lifetime_s = token_lifetime_s
        self.port = port
        self._signing_key = _new_rsa()
        self._kid = secrets.token_hex(8)
        self._retired: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.users: dict[str, MachineUser] = {}
        self.tokens_issued = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- server ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/oauth/v2/keys", self._jwks)
        app.router.add_post("/oauth/v2/token", self._token)
        app.router.add_post("/management/v1/users/machine", self._create_machine_user)
        app.router.add_post("/management/v1/users/{user_id}/keys", self._add_key)
        app.router.add_post("/management/v1/users/{user_id}/metadata/{key}", self._set_metadata)
        app.router.add_post("/management/v1/users/{user_id}/grants", self._grant)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- in-process administration (what enrollment does through the API) ------------
    def create_machine_user(self, user_name: str) -> MachineUser:
        user = MachineUser(user_id=str(10**17 + secrets.randbelow(10**17)), user_name=user_name)
        self.users[user.user_id] = user
        return user

    def add_key(self, user_id: str) -> dict[str, str]:
        """Mint a machine key; return Zitadel's JSON key file content."""
        user = self.users[user_id]
        private = _new_rsa()
        key_id = str(10**17 + secrets.randbelow(10**17))
        user.keys[key_id] = private.public_key()
        return {"type": "serviceaccount", "keyId": key_id, "key": _pem(private),
                "userId": user_id}

    def enroll_device(self, device_id: str, key_file: Path) -> MachineUser:
        """Machine user + device_id metadata + fleet-device role + key file (mode 0600)."""
        user = self.create_machine_user(device_id)
        user.metadata["device_id"] = device_id
        user.roles.add("fleet-device")
        _write_secret(key_file, json.dumps(self.add_key(user.user_id)))
        return user

    def enroll_admin(self, name: str, key_file: Path, role: str = "fleet-admin") -> MachineUser:
        user = self.create_machine_user(name)
        user.roles.add(role)
        _write_secret(key_file, json.dumps(self.add_key(user.user_id)))
        return user

    def rotate_signing_key(self) -> None:
        """New signing key; the old one stays in the JWKS (tokens it signed remain valid)."""
        self._retired.append((self._kid, self._signing_key))
        self._signing_key, self._kid = _new_rsa(), secrets.token_hex(8)

    def issue_token(self, user: MachineUser, *, lifetime_s: int | None = None,
                    audience: str | None = None, issuer: str | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.url,
            "sub": user.user_id,
            "aud": [audience or self.project_id, user.user_id],
            "client_id": user.user_name,
            "iat": now,
            "nbf": now,
            "exp": now + (self.token_lifetime_s if lifetime_s is None else lifetime_s),
            "jti": secrets.token_hex(8),
            "urn:zitadel:iam:user:metadata": {
                k: base64.b64encode(v.encode()).decode() for k, v in user.metadata.items()
            },
            "urn:zitadel:iam:org:project:roles": {r: {ORG_ID: ORG_DOMAIN} for r in user.roles},
        }
        self.tokens_issued += 1
        return jwt.encode(claims, self._signing_key, algorithm="RS256",
                          headers={"kid": self._kid})

    # ---- handlers ----------------------------------------------------------------------
    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.url,
            "jwks_uri": f"{self.url}/oauth/v2/keys",
            "token_endpoint": f"{self.url}/oauth/v2/token",
            "grant_types_supported": [JWT_BEARER, "client_credentials"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })

    async def _jwks(self, request: web.Request) -> web.Response:
        keys = []
        for kid, key in [(self._kid, self._signing_key), *self._retired]:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error("unsupported_grant_type", "only the JWT profile grant is served")
        assertion = str(form.get("assertion", ""))
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            user = self.users[str(unverified["sub"])]
            public = user.keys[str(header["kid"])]
            claims = jwt.decode(assertion, public, algorithms=["RS256"], audience=self.url,
                                options={"require": ["exp", "iat", "iss", "sub", "aud"]})
        except (jwt.PyJWTError, KeyError) as exc:
            return _oauth_error("invalid_grant", f"assertion rejected: {type(exc).__name__}")
        if claims["iss"] != claims["sub"]:
            return _oauth_error("invalid_grant", "assertion iss must equal sub")
        token = self.issue_token(user)
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": self.token_lifetime_s})

    def _admin(self, request: web.Request) -> MachineUser | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        try:
            claims = jwt.decode(auth[7:], self._signing_key.public_key(), algorithms=["RS256"],
                                audience=self.project_id, issuer=self.url)
        except jwt.PyJWTError:
            return None
        user = self.users.get(str(claims["sub"]))
        return user if user and "fleet-admin" in user.roles else None

    async def _create_machine_user(self, request: web.Request) -> web.Response:
        if self._admin(request) is None:
            return _unauthenticated()
        body = await request.json()
        user = self.create_machine_user(str(body["userName"]))
        return web.json_response({"userId": user.user_id, "details": {"resourceOwner": ORG_ID}})

    async def _add_key(self, request: web.Request) -> web.Response:
        if self._admin(request) is None:
            return _unauthenticated()
        user_id = request.match_info["user_id"]
        if user_id not in self.users:
            return web.json_response({"code": 5, "message": "User not found"}, status=404)
        key = self.add_key(user_id)
        details = base64.b64encode(json.dumps(key).encode()).decode()
        return web.json_response({"keyId": key["keyId"], "keyDetails": details})

    async def _set_metadata(self, request: web.Request) -> web.Response:
        if self._admin(request) is None:
            return _unauthenticated()
        user = self.users.get(request.match_info["user_id"])
        if user is None:
            return web.json_response({"code": 5, "message": "User not found"}, status=404)
        body = await request.json()
        user.metadata[request.match_info["key"]] = base64.b64decode(body["value"]).decode()
        return web.json_response({"details": {"resourceOwner": ORG_ID}})

    async def _grant(self, request: web.Request) -> web.Response:
        if self._admin(request) is None:
            return _unauthenticated()
        user = self.users.get(request.match_info["user_id"])
        if user is None:
            return web.json_response({"code": 5, "message": "User not found"}, status=404)
        body = await request.json()
        if body.get("projectId") != self.project_id:
            return web.json_response({"code": 5, "message": "Project not found"}, status=404)
        user.roles.update(str(r) for r in body.get("roleKeys", []))
        return web.json_response({"userGrantId": secrets.token_hex(8)})


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


def _unauthenticated() -> web.Response:
    return web.json_response({"code": 16, "message": "Unauthenticated"}, status=401)


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text, encoding="utf-8")


# ---- persistence: the local stack runs the issuer as its own process -----------------------


def save_registry(issuer: OidcIssuer, path: Path) -> None:
    """Everything the issuer knows (signing key included): mode 0600, for ``--registry``."""
    doc = {
        "project_id": issuer.project_id,
        "token_lifetime_s": issuer.token_lifetime_s,
        "port": issuer.port,
        "kid": issuer._kid,
        "signing_key": _pem(issuer._signing_key),
        "users": [
            {"user_id": u.user_id, "user_name": u.user_name, "metadata": u.metadata,
             "roles": sorted(u.roles),
             "keys": {kid: k.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()
                      for kid, k in u.keys.items()}}
            for u in issuer.users.values()
        ],
    }
    _write_secret(path, json.dumps(doc))


def load_registry(path: Path) -> OidcIssuer:
    doc = json.loads(path.read_text(encoding="utf-8"))
    issuer = OidcIssuer(project_id=doc["project_id"], token_lifetime_s=doc["token_lifetime_s"],
                        port=doc["port"])
    key = serialization.load_pem_private_key(doc["signing_key"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    issuer._signing_key, issuer._kid = key, doc["kid"]
    for u in doc["users"]:
        user = MachineUser(u["user_id"], u["user_name"], dict(u["metadata"]), set(u["roles"]))
        user.keys = {kid: serialization.load_pem_public_key(pem.encode())
                     for kid, pem in u["keys"].items()}
        issuer.users[user.user_id] = user
    return issuer


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio
    import signal

    parser = argparse.ArgumentParser(description="local OIDC issuer (Zitadel stand-in)")
    parser.add_argument("--registry", type=Path, required=True)
    args = parser.parse_args(argv)
    issuer = load_registry(args.registry)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await issuer.start()
        print(f"issuer listening on {issuer.url}", flush=True)
        await stop.wait()
        await issuer.stop()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
