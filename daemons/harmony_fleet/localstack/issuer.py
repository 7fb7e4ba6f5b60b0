"""A small OIDC issuer that speaks the Zitadel flows the fleet uses (local stack and tests).

It behaves like Zitadel wherever the fleet's code depends on it (docs/zitadel-api.md lists
exactly which endpoints the project uses and which this issuer serves):

* identity: ``issuer`` (``iss`` of its tokens, the audience its token endpoint expects in
  client assertions, the base of its discovery URLs) is ``external_url`` when set, else the
  URL it listens on; never the address a client happens to reach it by (a device container
  reaches the host's loopback as ``10.0.2.2``);
* ``GET /.well-known/openid-configuration`` (only what is served) and ``GET /oauth/v2/keys``;
* ``POST /oauth/v2/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``:
  the assertion is an RS256 JWT signed with a registered machine key (header ``kid`` = key
  id, ``iss`` = ``sub`` = user id, ``aud`` = the issuer). ``scope`` is honoured as Zitadel
  does: ``openid`` is required, the project audience comes only with
  ``urn:zitadel:iam:org:project:id:<id>:aud``, the roles claims only with
  ``urn:zitadel:iam:org:projects:roles``, the metadata claim only with
  ``urn:zitadel:iam:user:metadata``; Zitadel's own API audience with
  ``urn:zitadel:iam:org:project:id:zitadel:aud``;
* the management API v1 subset (:mod:`.issuer_api`), behind a bearer token with Zitadel's API
  audience from a user holding an ``ORG_OWNER``/``IAM_OWNER`` membership;
* the login of humans for web clients (:mod:`.issuer_login`): authorization code + PKCE.

``token_lifetime_s`` is configurable so tests can force token rollovers within seconds.

Run as its own process (``python -m harmony_fleet.localstack.issuer --registry FILE``, what the
local stack does) it loads everything from the registry file and saves every change its
management API makes there (atomically, mode 0600) *before* answering, so a restart, even a
``kill -9``, loses no enrollment that was acknowledged.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harmony_fleet.contracts.identity import (
    ADMIN_ROLE,
    DEVICE_ID_METADATA_KEY,
    DEVICE_ROLE,
    METADATA_CLAIM,
    METADATA_SCOPE,
    OPENID_SCOPE,
    OPERATOR_ROLE,
    PROJECT_NAME,
    ROLES_CLAIM,
    ROLES_SCOPE,
    ZITADEL_API_SCOPE,
    fleet_scopes,
    project_roles_claim,
)
from harmony_fleet.errors import FleetError

from .errors import LocalStackError
from .files import write_private_file

log = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
AUTHORIZATION_CODE = "authorization_code"
#: the grants the token endpoint serves (and the discovery document advertises)
GRANT_TYPES = (JWT_BEARER, AUTHORIZATION_CODE)
#: how a client authenticates at the token endpoint: none (the JWT profile; a public web
#: client, with PKCE) or its secret (a confidential web client)
TOKEN_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
ORG_ID = "fleet-org"
ORG_DOMAIN = "fleet.local"
#: the audience Zitadel's own API requires (what ``ZITADEL_API_SCOPE`` adds to ``aud``)
ZITADEL_PROJECT_ID = "zitadel"
#: memberships that may use the management API (Zitadel's organisation/instance owners)
MANAGER_ROLES = frozenset({"ORG_OWNER", "IAM_OWNER"})
#: the fleet project's roles, as the local issuer creates them
FLEET_ROLES = {DEVICE_ROLE: "Fleet device", ADMIN_ROLE: "Fleet administrator",
               OPERATOR_ROLE: "Fleet operator"}
KEY_EXPIRATION = "9999-12-31T23:59:59Z"
_PROJECT_AUD = re.compile(r"^urn:zitadel:iam:org:project:id:([^:\s]+):aud$")


class RegistryError(LocalStackError):
    """The registry file cannot be read, is not a registry, or a change could not be saved."""


class ManagementError(LocalStackError):
    """A management call refused as Zitadel refuses it (gRPC code, HTTP status, i18n id)."""

    grpc_code = 3
    status = 400

    def __init__(self, message: str, error_id: str) -> None:
        super().__init__(message)
        self.error_id = error_id


class InvalidArgument(ManagementError):
    grpc_code, status = 3, 400


class NotFound(ManagementError):
    grpc_code, status = 5, 404


class AlreadyExists(ManagementError):
    grpc_code, status = 6, 409


class PermissionDenied(ManagementError):
    grpc_code, status = 7, 403


class PreconditionFailed(ManagementError):
    grpc_code, status = 9, 400


class Unauthenticated(ManagementError):
    grpc_code, status = 16, 401


def _new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _load_private_pem(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def new_id() -> str:
    """An id shaped like Zitadel's (a decimal snowflake)."""
    return str(10**17 + secrets.randbelow(9 * 10**17))


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- passwords (humans) -------------------------------------------------------------------
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``: never the password itself."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "$".join(("scrypt", str(_SCRYPT["n"]), str(_SCRYPT["r"]), str(_SCRYPT["p"]),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt),
                                dklen=len(expected), n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# ---- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scopes:
    """What a token request asks for, as Zitadel reads it (unknown scopes are dropped)."""

    openid: bool = False
    roles: bool = False
    metadata: bool = False
    projects: tuple[str, ...] = ()
    granted: tuple[str, ...] = ()

    @classmethod
    def parse(cls, scope: str) -> Scopes:
        openid = roles = metadata = False
        projects: list[str] = []
        granted: list[str] = []
        for item in dict.fromkeys(scope.split()):
            match = _PROJECT_AUD.match(item)
            if item == OPENID_SCOPE:
                openid = True
            elif item == ROLES_SCOPE:
                roles = True
            elif item == METADATA_SCOPE:
                metadata = True
            elif match:
                projects.append(match.group(1))
            elif item not in ("profile", "email"):
                continue
            granted.append(item)
        return cls(openid, roles, metadata, tuple(projects), tuple(granted))


@dataclass
class Project:
    project_id: str
    name: str
    #: role key -> {"displayName": ..., "group": ...}
    roles: dict[str, dict[str, str]] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)


@dataclass
class Grant:
    """A user grant: the roles a user holds in one project."""

    grant_id: str
    roles: set[str] = field(default_factory=set)
    created: str = field(default_factory=now_iso)


@dataclass
class Human:
    """What a human user has besides a machine user's: a profile and a password (hashed)."""

    password_hash: str
    first_name: str = ""
    last_name: str = ""
    email: str = ""

    @property
    def display_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


@dataclass
class MachineUser:
    """A user of the issuer: a machine user, or a human when ``human`` is set (the name is
    the historical one: machine users came first)."""

    user_id: str
    user_name: str
    metadata: dict[str, str] = field(default_factory=dict)
    #: project id -> grant
    grants: dict[str, Grant] = field(default_factory=dict)
    #: key id -> public key (PEM): what a JWT-profile assertion is checked with
    keys: dict[str, str] = field(default_factory=dict)
    #: organisation/instance memberships (``ORG_OWNER`` may use the management API)
    memberships: set[str] = field(default_factory=set)
    name: str = ""
    description: str = ""
    human: Human | None = None
    created: str = field(default_factory=now_iso)
    #: personal access tokens: token id -> {"sha256": hex digest, "expires": ISO time}
    pats: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def roles(self) -> set[str]:
        """The roles granted in any project (a copy; change them with ``grant_roles``)."""
        return {r for g in self.grants.values() for r in g.roles}

    def roles_in(self, project_id: str) -> set[str]:
        grant = self.grants.get(project_id)
        return set(grant.roles) if grant else set()


@dataclass
class WebClient:
    """An OIDC web application (authorization code + PKCE); ``secret_hash`` set: confidential."""

    client_id: str
    name: str
    project_id: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    secret_hash: str | None = None
    app_id: str = field(default_factory=new_id)


class OidcIssuer:
    """Zitadel stand-in. ``await start()`` serves it on ``host`` (default 127.0.0.1).

    With ``registry`` set, every change (users, keys, metadata, grants, projects, clients,
    signing keys) is saved to that file before the call that made it returns; a change that
    cannot be saved is undone and raises :class:`RegistryError`. Without it the issuer lives
    in memory only. The fleet project (``project_id``, named ``PROJECT_NAME``, with the fleet
    roles) always exists.
    """

    def __init__(self, *, project_id: str = "fleet-project", token_lifetime_s: int = 3600,
                 port: int = 0, registry: Path | None = None, external_url: str | None = None,
                 host: str = "127.0.0.1") -> None:
        self.project_id = project_id
        self.token_lifetime_s = token_lifetime_s
        self.port = port
        self.host = host
        self.registry = registry
        #: the issuer's identity when it is not the address it listens on (a Zitadel behind
        #: its external domain): ``iss``, the audience of assertions, the discovery URLs
        self.external_url = external_url.rstrip("/") if external_url else None
        self._signing_key = _new_rsa()
        self._kid = secrets.token_hex(8)
        self._retired: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.users: dict[str, MachineUser] = {}
        self.projects: dict[str, Project] = {project_id: Project(
            project_id, PROJECT_NAME,
            {k: {"displayName": v, "group": ""} for k, v in FLEET_ROLES.items()})}
        self.clients: dict[str, WebClient] = {}
        self.tokens_issued = 0
        self._runner: web.AppRunner | None = None
        self._login: Any = None  # the login flow (issuer_login.Login), made with the app

    @property
    def url(self) -> str:
        """Where this process listens (on loopback: ``127.0.0.1`` whatever ``host`` is)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @property
    def issuer(self) -> str:
        """The issuer's identity: ``iss`` of its tokens, the audience its token endpoint
        expects in assertions and the base of its discovery URLs. ``external_url`` if set,
        else the URL it listens on. Independent of the address a client reaches it by
        (``10.0.2.2:<port>`` from a device container): no request header changes it."""
        return self.external_url or self.url

    # ---- server ------------------------------------------------------------------------
    def app(self) -> web.Application:
        from . import issuer_api, issuer_login

        app = web.Application(middlewares=[_registry_errors])
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/oauth/v2/keys", self._jwks)
        app.router.add_post("/oauth/v2/token", self._token)
        issuer_api.add_routes(self, app)
        self._login = issuer_login.Login(self)
        self._login.add_routes(app)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- persistence ---------------------------------------------------------------------
    def save(self) -> None:
        """Write the registry file now (no-op without one)."""
        if self.registry is not None:
            write_private_file(self.registry, json.dumps(registry_document(self)))

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Wrap one change: saved when the block ends, or undone if it cannot be saved.
        Callers check everything before the block: it is not undone if it raises."""
        if self.registry is None:
            yield
            return
        before = registry_document(self)
        yield
        try:
            self.save()
        except OSError as exc:
            self._restore(before)
            raise RegistryError(f"registry {self.registry} not saved ({exc}); "
                                "the change was undone") from exc

    def _restore(self, doc: dict[str, Any]) -> None:
        restored = issuer_from_document(doc)
        self.users, self.projects, self.clients = \
            restored.users, restored.projects, restored.clients
        self._signing_key, self._kid = restored._signing_key, restored._kid
        self._retired = restored._retired

    # ---- look-ups ------------------------------------------------------------------------
    def user(self, user_id: str) -> MachineUser:
        user = self.users.get(user_id)
        if user is None:
            raise NotFound("User could not be found", "Errors.User.NotFound")
        return user

    def find_user(self, user_name: str) -> MachineUser | None:
        """The user called ``user_name`` (user names are unique), or None."""
        return next((u for u in self.users.values() if u.user_name == user_name), None)

    def project(self, project_id: str) -> Project:
        project = self.projects.get(project_id)
        if project is None:
            raise NotFound("Project not found", "Errors.Project.NotFound")
        return project

    # ---- administration (what the management API does; also the Python API) -------------
    def create_machine_user(self, user_name: str, *, name: str = "",
                            description: str = "") -> MachineUser:
        """A new machine user; :class:`AlreadyExists` if the user name is taken."""
        self._check_new_user_name(user_name)
        user = MachineUser(user_id=new_id(), user_name=user_name, name=name or user_name,
                           description=description)
        with self._changing():
            self.users[user.user_id] = user
        return user

    def create_human_user(self, user_name: str, password: str, *, first_name: str = "",
                          last_name: str = "", email: str = "",
                          roles: Iterable[str] = ()) -> MachineUser:
        """A human who logs in with ``password`` (stored hashed) and holds ``roles`` in the
        fleet project; :class:`AlreadyExists` if the user name is taken."""
        self._check_new_user_name(user_name)
        if len(password) < 8:
            raise InvalidArgument("Password must be at least 8 characters",
                                  "Errors.User.PasswordComplexityPolicy.MinLength")
        roles = sorted(set(roles))
        self._check_roles(self.project_id, roles)
        human = Human(hash_password(password), first_name or user_name, last_name, email)
        user = MachineUser(user_id=new_id(), user_name=user_name, name=human.display_name,
                           human=human)
        if roles:
            user.grants[self.project_id] = Grant(new_id(), set(roles))
        with self._changing():
            self.users[user.user_id] = user
        return user

    def set_password(self, user_id: str, password: str) -> None:
        user = self.user(user_id)
        if user.human is None:
            raise PreconditionFailed("User is not a human", "Errors.User.NotHuman")
        if len(password) < 8:
            raise InvalidArgument("Password must be at least 8 characters",
                                  "Errors.User.PasswordComplexityPolicy.MinLength")
        with self._changing():
            user.human.password_hash = hash_password(password)

    def _check_new_user_name(self, user_name: str) -> None:
        if not user_name or len(user_name) > 200 or user_name != user_name.strip():
            raise InvalidArgument("userName must be 1-200 characters without surrounding "
                                  "spaces", "Errors.User.Invalid")
        if self.find_user(user_name) is not None:
            raise AlreadyExists("User already exists", "Errors.User.AlreadyExists")

    def delete_user(self, user_id: str) -> None:
        """Remove the user, its keys, grants and metadata: it gets no token any more."""
        self.user(user_id)
        with self._changing():
            del self.users[user_id]

    def add_key(self, user_id: str) -> dict[str, str]:
        """Mint a machine key; return Zitadel's JSON key file content."""
        user = self.user(user_id)
        if user.human is not None:
            raise PreconditionFailed("User is not a machine user", "Errors.User.NotMachine")
        private = _new_rsa()
        key_id = new_id()
        with self._changing():
            user.keys[key_id] = _public_pem(private)
        return {"type": "serviceaccount", "keyId": key_id, "key": _pem(private),
                "userId": user_id}

    def remove_key(self, user_id: str, key_id: str) -> None:
        """Revoke a machine key: assertions signed with it get no token any more."""
        user = self.user(user_id)
        if key_id not in user.keys:
            raise NotFound("Machine key not found", "Errors.User.Machine.Key.NotFound")
        with self._changing():
            del user.keys[key_id]

    def set_metadata(self, user_id: str, key: str, value: str) -> None:
        user = self.user(user_id)
        if not key:
            raise InvalidArgument("metadata key must not be empty", "Errors.Metadata.Invalid")
        with self._changing():
            user.metadata[key] = value

    def remove_metadata(self, user_id: str, key: str) -> None:
        user = self.user(user_id)
        if key not in user.metadata:
            raise NotFound("Metadata not found", "Errors.Metadata.NotFound")
        with self._changing():
            del user.metadata[key]

    def grant_roles(self, user_id: str, roles: Iterable[str],
                    project_id: str | None = None) -> Grant:
        """Add ``roles`` (in the fleet project by default) to the user's grant there,
        creating the grant if there is none. The Python API does not check that the roles
        exist (tests grant made-up roles); the management API does."""
        user = self.user(user_id)
        project = self.project(project_id or self.project_id)
        with self._changing():
            grant = user.grants.setdefault(project.project_id, Grant(new_id()))
            grant.roles.update(roles)
        return grant

    def set_grant_roles(self, user_id: str, grant_id: str, roles: Iterable[str]) -> Grant:
        """Replace the roles of a grant (Zitadel's ``PUT .../grants/{id}``)."""
        user = self.user(user_id)
        project_id, grant = self._grant(user, grant_id)
        roles = set(roles)
        self._check_roles(project_id, roles)
        with self._changing():
            grant.roles = roles
        return grant

    def remove_grant(self, user_id: str, grant_id: str) -> None:
        user = self.user(user_id)
        project_id = self._grant(user, grant_id)[0]
        with self._changing():
            del user.grants[project_id]

    def _grant(self, user: MachineUser, grant_id: str) -> tuple[str, Grant]:
        for project_id, grant in user.grants.items():
            if grant.grant_id == grant_id:
                return project_id, grant
        raise NotFound("User grant not found", "Errors.UserGrant.NotFound")

    def add_user_grant(self, user_id: str, project_id: str, roles: Iterable[str]) -> Grant:
        """A new grant (Zitadel's ``POST .../grants``): the project and every role must exist;
        :class:`AlreadyExists` if the user already has a grant on that project."""
        user = self.user(user_id)
        self.project(project_id)
        roles = set(roles)
        self._check_roles(project_id, roles)
        if project_id in user.grants:
            raise AlreadyExists("User grant already exists", "Errors.UserGrant.AlreadyExists")
        return self.grant_roles(user_id, roles, project_id)

    def _check_roles(self, project_id: str, roles: Iterable[str]) -> None:
        missing = sorted(set(roles) - set(self.project(project_id).roles))
        if missing:
            raise PreconditionFailed(f"Project roles not found: {', '.join(missing)}",
                                     "Errors.Project.Role.NotFound")

    def add_pat(self, user_id: str, expiration: str = KEY_EXPIRATION) -> tuple[str, str]:
        """A personal access token for a machine user (Zitadel's PAT: an opaque bearer for
        Zitadel's own API, e.g. from Ansible's ``uri``); return (token id, token). Only its
        SHA-256 is kept."""
        user = self.user(user_id)
        if user.human is not None:
            raise PreconditionFailed("User is not a machine user", "Errors.User.NotMachine")
        try:
            expires = dt.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgument("expirationDate must be an RFC 3339 time",
                                  "Errors.User.PAT.Invalid") from None
        if expires.tzinfo is None or expires <= dt.datetime.now(dt.UTC):
            raise InvalidArgument("expirationDate must be a future time with a zone",
                                  "Errors.User.PAT.Invalid")
        token_id, token = new_id(), secrets.token_urlsafe(48)
        with self._changing():
            user.pats[token_id] = {"sha256": hashlib.sha256(token.encode()).hexdigest(),
                                   "expires": expiration}
        return token_id, token

    def remove_pat(self, user_id: str, token_id: str) -> None:
        user = self.user(user_id)
        if token_id not in user.pats:
            raise NotFound("Personal access token not found", "Errors.User.PAT.NotFound")
        with self._changing():
            del user.pats[token_id]

    def _pat_user(self, token: str) -> MachineUser | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = dt.datetime.now(dt.UTC)
        for user in self.users.values():
            for pat in user.pats.values():
                if hmac.compare_digest(pat["sha256"], digest):
                    expires = dt.datetime.fromisoformat(pat["expires"].replace("Z", "+00:00"))
                    return user if expires > now else None
        return None

    def add_membership(self, user_id: str, role: str = "ORG_OWNER") -> None:
        """An organisation membership (``ORG_OWNER`` may use the management API)."""
        user = self.user(user_id)
        with self._changing():
            user.memberships.add(role)

    def create_project(self, name: str) -> Project:
        if not name or len(name) > 200:
            raise InvalidArgument("name must be 1-200 characters", "Errors.Project.Invalid")
        if any(p.name == name for p in self.projects.values()):
            raise AlreadyExists("Project already exists", "Errors.Project.AlreadyExists")
        project = Project(new_id(), name)
        with self._changing():
            self.projects[project.project_id] = project
        return project

    def add_project_role(self, project_id: str, key: str, display_name: str = "",
                         group: str = "") -> None:
        project = self.project(project_id)
        if not key or len(key) > 200 or any(c.isspace() for c in key):
            raise InvalidArgument("roleKey must be 1-200 characters without spaces",
                                  "Errors.Project.Role.Invalid")
        if key in project.roles:
            raise AlreadyExists("Project role already exists",
                                "Errors.Project.Role.AlreadyExists")
        with self._changing():
            project.roles[key] = {"displayName": display_name or key, "group": group}

    def register_web_client(self, name: str, redirect_uris: Iterable[str], *,
                            confidential: bool = False,
                            post_logout_redirect_uris: Iterable[str] = (),
                            project_id: str | None = None) -> tuple[WebClient, str | None]:
        """An OIDC web application (authorization code + PKCE S256) of the fleet project by
        default; ``confidential``: it also authenticates with a secret, returned once (only
        its hash is kept). Return the client and the secret (None for a public client)."""
        project = self.project(project_id or self.project_id)
        uris = list(dict.fromkeys(redirect_uris))
        logout = list(dict.fromkeys(post_logout_redirect_uris))
        for uri in [*uris, *logout]:
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                raise InvalidArgument(f"not an absolute http(s) URI without fragment: {uri!r}",
                                      "Errors.App.OIDCConfig.RedirectUri.Invalid")
        if not uris:
            raise InvalidArgument("at least one redirect URI is required",
                                  "Errors.App.OIDCConfig.RedirectUri.Invalid")
        if not name:
            raise InvalidArgument("name must not be empty", "Errors.App.Invalid")
        if any(c.name == name and c.project_id == project.project_id
               for c in self.clients.values()):
            raise AlreadyExists("Application already exists", "Errors.Project.App.AlreadyExists")
        secret = secrets.token_urlsafe(32) if confidential else None
        client = WebClient(f"{new_id()}@{project.name}", name, project.project_id, uris, logout,
                           hash_password(secret) if secret else None)
        with self._changing():
            self.clients[client.client_id] = client
        return client, secret

    def enroll_device(self, device_id: str, key_file: Path) -> MachineUser:
        """Machine user + device_id metadata + fleet-device role + key file (mode 0600)."""
        user = self.create_machine_user(device_id)
        self.set_metadata(user.user_id, DEVICE_ID_METADATA_KEY, device_id)
        self.grant_roles(user.user_id, [DEVICE_ROLE])
        write_private_file(key_file, json.dumps(self.add_key(user.user_id)))
        return user

    def enroll_admin(self, name: str, key_file: Path, role: str = ADMIN_ROLE) -> MachineUser:
        """A machine user holding ``role`` and an ``ORG_OWNER`` membership (it may use the
        management API), its key written to ``key_file`` (mode 0600)."""
        user = self.create_machine_user(name)
        self.grant_roles(user.user_id, [role])
        self.add_membership(user.user_id, "ORG_OWNER")
        write_private_file(key_file, json.dumps(self.add_key(user.user_id)))
        return user

    def rotate_signing_key(self) -> None:
        """New signing key; the old one stays in the JWKS (tokens it signed remain valid)."""
        with self._changing():
            self._retired.append((self._kid, self._signing_key))
            self._signing_key, self._kid = _new_rsa(), secrets.token_hex(8)

    # ---- tokens --------------------------------------------------------------------------
    def issue_token(self, user: MachineUser, *, lifetime_s: int | None = None,
                    audience: str | None = None, issuer: str | None = None,
                    scopes: Iterable[str] | None = None, client_id: str | None = None,
                    nonce: str | None = None, id_token: bool = False) -> str:
        """A token for ``user`` as Zitadel issues it for ``scopes`` (default: what the
        fleet's clients ask for, :func:`fleet_scopes`). ``audience``/``issuer`` override the
        project audience / ``iss`` (tests forging bad tokens). ``id_token``: an ID token for
        ``client_id`` (audience = the client, ``nonce`` echoed)."""
        asked = Scopes.parse(fleet_scopes(self.project_id) if scopes is None
                             else " ".join(scopes))
        projects = [p for p in asked.projects if p in self.projects]
        api = ZITADEL_PROJECT_ID in asked.projects
        if audience is not None:
            projects = [audience]
        now = int(time.time())
        own = client_id or user.user_id
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "sub": user.user_id,
            "aud": [*projects, *([ZITADEL_PROJECT_ID] if api else []), own],
            "client_id": client_id or user.user_name,
            "iat": now,
            "nbf": now,
            "exp": now + (self.token_lifetime_s if lifetime_s is None else lifetime_s),
            "jti": secrets.token_hex(8),
        }
        if id_token:
            claims["azp"] = own
            claims["auth_time"] = now
            if nonce is not None:
                claims["nonce"] = nonce
            claims["preferred_username"] = user.user_name
            if user.human is not None and "email" in asked.granted and user.human.email:
                claims["email"] = user.human.email
            if user.human is not None and "profile" in asked.granted:
                claims["name"] = user.human.display_name
        else:
            claims["scope"] = " ".join(asked.granted)
        if asked.metadata:
            claims[METADATA_CLAIM] = {
                k: base64.b64encode(v.encode()).decode() for k, v in user.metadata.items()}
        if asked.roles:
            owned = {pid: {r: {ORG_ID: ORG_DOMAIN} for r in sorted(user.roles_in(pid))}
                     for pid in (projects if audience is None else [self.project_id])}
            for pid, roles in owned.items():
                claims[project_roles_claim(pid)] = roles
            if len(owned) == 1:  # the generic claim: the roles of the one project asked for
                claims[ROLES_CLAIM] = next(iter(owned.values()))
        self.tokens_issued += 1
        return jwt.encode(claims, self._signing_key, algorithm="RS256",
                          headers={"kid": self._kid})

    def verify_token(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token this issuer signed (current or retired key) for
        ``audience``; :class:`Unauthenticated` otherwise."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Unauthenticated("Token is invalid", "Errors.Token.Invalid") from None
        keys = dict([(self._kid, self._signing_key), *self._retired])
        key = keys.get(str(kid))
        if key is None:
            raise Unauthenticated("Token is invalid", "Errors.Token.Invalid")
        try:
            return dict(jwt.decode(token, key.public_key(), algorithms=["RS256"],
                                   audience=audience, issuer=self.issuer,
                                   options={"require": ["exp", "sub", "aud", "iss"]}))
        except jwt.PyJWTError:
            raise Unauthenticated("Token is invalid", "Errors.Token.Invalid") from None

    def manager(self, authorization: str) -> MachineUser:
        """The user an ``Authorization`` header authenticates for the management API:
        a token with Zitadel's API audience (:class:`Unauthenticated` otherwise) from an
        existing user with a manager membership (:class:`PermissionDenied` otherwise)."""
        if not authorization.startswith("Bearer "):
            raise Unauthenticated("auth header missing", "AUTH-7fs1e")
        bearer = authorization[7:].strip()
        if bearer.count(".") == 2:  # a JWT access token
            claims = self.verify_token(bearer, ZITADEL_PROJECT_ID)
            user = self.users.get(str(claims["sub"]))
        else:  # a personal access token
            user = self._pat_user(bearer)
        if user is None:
            raise Unauthenticated("User could not be found", "Errors.User.NotFound")
        if not user.memberships & MANAGER_ROLES:
            raise PermissionDenied("No matching permissions found",
                                   "AUTH-5mWD2")
        return user

    # ---- handlers ----------------------------------------------------------------------
    def discovery_document(self) -> dict[str, Any]:
        """The OpenID provider metadata: what this issuer serves, nothing more."""
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/oauth/v2/authorize",
            "token_endpoint": f"{base}/oauth/v2/token",
            "jwks_uri": f"{base}/oauth/v2/keys",
            "scopes_supported": [OPENID_SCOPE, "profile", "email", ROLES_SCOPE, METADATA_SCOPE,
                                 ZITADEL_API_SCOPE,
                                 "urn:zitadel:iam:org:project:id:{projectid}:aud"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(GRANT_TYPES),
            "code_challenge_methods_supported": ["S256"],
            "end_session_endpoint": f"{base}/oidc/v1/end_session",
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id",
                                 "azp", "nonce", "auth_time", "preferred_username", "name",
                                 "email", ROLES_CLAIM, METADATA_CLAIM],
        }

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(self.discovery_document())

    async def _jwks(self, request: web.Request) -> web.Response:
        keys = []
        for kid, key in [(self._kid, self._signing_key), *self._retired]:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") == AUTHORIZATION_CODE and self._login is not None:
            response: web.Response = await self._login.exchange(request, form)
            return response
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error("unsupported_grant_type",
                                f"served grants: {', '.join(GRANT_TYPES)}")
        asked = Scopes.parse(str(form.get("scope", "")))
        if not asked.openid:
            return _oauth_error("invalid_scope", "the scope must contain openid")
        try:
            user = self._verify_assertion(str(form.get("assertion", "")))
        except _GrantRefused as exc:
            return _oauth_error("invalid_grant", str(exc))
        token = self.issue_token(user, scopes=asked.granted)
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": self.token_lifetime_s})

    def _verify_assertion(self, assertion: str) -> MachineUser:
        """The machine user whose registered key signed ``assertion``, else _GrantRefused."""
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _GrantRefused(f"assertion rejected: {type(exc).__name__}") from None
        user = self.users.get(str(unverified.get("sub")))
        if user is None:
            raise _GrantRefused("assertion rejected: unknown machine user")
        public = user.keys.get(str(header.get("kid")))
        if public is None:
            raise _GrantRefused("assertion rejected: unknown machine key")
        try:
            claims = jwt.decode(assertion, public, algorithms=["RS256"], audience=self.issuer,
                                options={"require": ["exp", "iat", "iss", "sub", "aud"]})
        except jwt.PyJWTError as exc:
            raise _GrantRefused(f"assertion rejected: {type(exc).__name__}") from None
        if claims["iss"] != claims["sub"]:
            raise _GrantRefused("assertion iss must equal sub")
        return user


class _GrantRefused(FleetError):
    """A token request is refused; the message is the OAuth ``error_description``."""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _registry_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A change that could not be saved is refused (and was undone), never half-acknowledged;
    a refused management call is answered as Zitadel answers it."""
    try:
        return await handler(request)
    except RegistryError as exc:
        log.error("%s", exc)
        return web.json_response({"code": 14, "message": str(exc)}, status=503)
    except ManagementError as exc:
        return zitadel_error(exc)


def zitadel_error(exc: ManagementError) -> web.Response:
    """gRPC-gateway's JSON error, as Zitadel sends it."""
    return web.json_response({
        "code": exc.grpc_code, "message": f"{exc} ({exc.error_id})",
        "details": [{"@type": "type.googleapis.com/zitadel.v1.ErrorDetail",
                     "id": exc.error_id, "message": str(exc)}],
    }, status=exc.status)


def _oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return web.json_response({"error": error, "error_description": description},
                             status=status)


# ---- the registry document (pure) and its file -------------------------------------------


def _user_document(u: MachineUser) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "user_id": u.user_id, "user_name": u.user_name, "name": u.name,
        "description": u.description, "created": u.created, "metadata": dict(u.metadata),
        "grants": {pid: {"id": g.grant_id, "roles": sorted(g.roles), "created": g.created}
                   for pid, g in u.grants.items()},
        "keys": dict(u.keys), "memberships": sorted(u.memberships),
        "pats": {k: dict(v) for k, v in u.pats.items()},
    }
    if u.human is not None:
        doc["human"] = {"password_hash": u.human.password_hash,
                        "first_name": u.human.first_name, "last_name": u.human.last_name,
                        "email": u.human.email}
    return doc


def registry_document(issuer: OidcIssuer) -> dict[str, Any]:
    """Everything the issuer knows, signing keys included, as one JSON-able document."""
    return {
        "project_id": issuer.project_id,
        "token_lifetime_s": issuer.token_lifetime_s,
        "port": issuer.port,
        "host": issuer.host,
        "external_url": issuer.external_url,
        "kid": issuer._kid,
        "signing_key": _pem(issuer._signing_key),
        "retired_signing_keys": [{"kid": kid, "key": _pem(key)} for kid, key in issuer._retired],
        "users": [_user_document(u) for u in issuer.users.values()],
        "projects": [{"id": p.project_id, "name": p.name, "created": p.created,
                      "roles": {k: dict(v) for k, v in p.roles.items()}}
                     for p in issuer.projects.values()],
        "clients": [{"client_id": c.client_id, "name": c.name, "project_id": c.project_id,
                     "redirect_uris": list(c.redirect_uris),
                     "post_logout_redirect_uris": list(c.post_logout_redirect_uris),
                     "secret_hash": c.secret_hash, "app_id": c.app_id}
                    for c in issuer.clients.values()],
    }


def _user_from_document(u: dict[str, Any], project_id: str) -> MachineUser:
    user = MachineUser(str(u["user_id"]), str(u["user_name"]),
                       {str(k): str(v) for k, v in u["metadata"].items()},
                       keys={str(k): str(v) for k, v in u["keys"].items()},
                       name=str(u.get("name", "")), description=str(u.get("description", "")),
                       created=str(u.get("created") or now_iso()))
    if "grants" in u:
        user.grants = {str(pid): Grant(str(g["id"]), {str(r) for r in g["roles"]},
                                       str(g.get("created") or now_iso()))
                       for pid, g in u["grants"].items()}
    elif u.get("roles"):  # a registry written before projects: roles of the fleet project
        user.grants = {project_id: Grant(new_id(), {str(r) for r in u["roles"]})}
    user.pats = {str(k): {"sha256": str(v["sha256"]), "expires": str(v["expires"])}
                 for k, v in u.get("pats", {}).items()}
    if "memberships" in u:
        user.memberships = {str(m) for m in u["memberships"]}
    elif ADMIN_ROLE in user.roles:  # before memberships: the admin managed the issuer
        user.memberships = {"ORG_OWNER"}
    if u.get("human"):
        h = u["human"]
        user.human = Human(str(h["password_hash"]), str(h.get("first_name", "")),
                           str(h.get("last_name", "")), str(h.get("email", "")))
    return user


def issuer_from_document(doc: Any, *, registry: Path | None = None) -> OidcIssuer:
    """The issuer a :func:`registry_document` describes; :class:`RegistryError` if it is not
    one (the message names what is wrong, never a key)."""
    try:
        issuer = OidcIssuer(project_id=str(doc["project_id"]),
                            token_lifetime_s=int(doc["token_lifetime_s"]), port=int(doc["port"]),
                            host=str(doc.get("host") or "127.0.0.1"),
                            external_url=str(doc["external_url"]) if doc.get("external_url")
                            else None)
        issuer._signing_key, issuer._kid = _load_private_pem(doc["signing_key"]), str(doc["kid"])
        issuer._retired = [(str(r["kid"]), _load_private_pem(r["key"]))
                           for r in doc.get("retired_signing_keys", [])]
        for u in doc["users"]:
            user = _user_from_document(u, issuer.project_id)
            issuer.users[user.user_id] = user
        for p in doc.get("projects", []):
            issuer.projects[str(p["id"])] = Project(
                str(p["id"]), str(p["name"]),
                {str(k): {"displayName": str(v.get("displayName", "")),
                          "group": str(v.get("group", ""))} for k, v in p["roles"].items()},
                str(p.get("created") or now_iso()))
        for c in doc.get("clients", []):
            issuer.clients[str(c["client_id"])] = WebClient(
                str(c["client_id"]), str(c["name"]), str(c["project_id"]),
                [str(x) for x in c["redirect_uris"]],
                [str(x) for x in c.get("post_logout_redirect_uris", [])],
                str(c["secret_hash"]) if c.get("secret_hash") else None,
                str(c.get("app_id") or new_id()))
    except KeyError as exc:
        raise RegistryError(f"not an issuer registry: missing {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise RegistryError(f"not an issuer registry: {type(exc).__name__}") from None
    issuer.registry = registry
    return issuer


def save_registry(issuer: OidcIssuer, path: Path) -> None:
    """Write everything the issuer knows to ``path`` (atomically, mode 0600)."""
    write_private_file(path, json.dumps(registry_document(issuer)))


def load_registry(path: Path, *, persist: bool = False) -> OidcIssuer:
    """The issuer saved in ``path``. With ``persist`` it saves its own changes back there
    (only the process serving the registry may: one writer per file)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegistryError(f"cannot read the issuer registry {path}: {exc}") from exc
    except ValueError as exc:
        raise RegistryError(f"{path} is not JSON: {exc}") from exc
    try:
        return issuer_from_document(doc, registry=path if persist else None)
    except RegistryError as exc:
        raise RegistryError(f"{path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio
    import signal
    import sys

    parser = argparse.ArgumentParser(description="local OIDC issuer (Zitadel stand-in)")
    parser.add_argument("--registry", type=Path, required=True,
                        help="the registry file: read at start, every change saved back")
    parser.add_argument("--issuer", metavar="URL",
                        help="the issuer's identity (iss, assertion audience, discovery URLs) "
                             "when it is not the URL it listens on, e.g. https://issuer.example; "
                             "saved in the registry")
    parser.add_argument("--host", help="listen on this address (default: the registry's, "
                                       "127.0.0.1)")
    args = parser.parse_args(argv)
    if args.issuer is not None and not args.issuer.startswith(("http://", "https://")):
        parser.error("--issuer must be an http(s) URL")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        issuer = load_registry(args.registry, persist=True)
    except RegistryError as exc:
        print(f"oidc-issuer: {exc}", file=sys.stderr)
        return 2
    if args.issuer is not None:
        issuer.external_url = args.issuer.rstrip("/")
    if args.host is not None:
        issuer.host = args.host

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        chosen_at_start = issuer.port == 0
        await issuer.start()
        # a restart must bind the same port (the clients know this one) and keep the identity
        if chosen_at_start or args.issuer is not None or args.host is not None:
            try:
                issuer.save()
            except OSError as exc:
                log.error("registry %s not saved (%s): a restart will pick another port",
                          issuer.registry, exc)
        print(f"issuer listening on {issuer.url} as {issuer.issuer} "
              f"({len(issuer.users)} machine users)",
              flush=True)
        await stop.wait()
        await issuer.stop()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
