"""Typed NATS connection settings shared by every daemon and client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

from harmony_fleet.contracts.identity import fleet_scopes

#: the URL schemes nats-py connects with
NATS_URL_SCHEMES = ("nats", "tls", "ws", "wss")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserPasswordAuth(_Settings):
    """Shared user/password (development only: every device holds the same secret)."""

    mode: Literal["userpass"] = "userpass"
    user: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = Field(
        default=None, description="Read the password from this file instead (no trailing newline)"
    )

    @model_validator(mode="after")
    def _one_password(self) -> UserPasswordAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password and password_file")
        return self

    def resolve_password(self) -> str:
        if self.password is not None:
            return self.password.get_secret_value()
        assert self.password_file is not None
        return self.password_file.read_text(encoding="utf-8").rstrip("\n")


class TokenAuth(_Settings):
    """A static bearer token (e.g. an access token obtained elsewhere)."""

    mode: Literal["token"] = "token"
    token: SecretStr | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_token(self) -> TokenAuth:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of token and token_file")
        return self

    def resolve_token(self) -> str:
        if self.token is not None:
            return self.token.get_secret_value()
        assert self.token_file is not None
        return self.token_file.read_text(encoding="utf-8").strip()


class ZitadelAuth(_Settings):
    """A Zitadel machine key exchanged for short-lived access tokens (RFC 7523 JWT profile).

    The NATS auth callout validates the token; the connection is refreshed before it expires.
    A refresh that fails is retried with exponential backoff and full jitter
    (``refresh_retry_*``) while the connection, authenticated with the current token, goes on
    serving.
    """

    mode: Literal["zitadel"] = "zitadel"
    issuer: str = Field(pattern=r"^https?://", description="Zitadel instance URL (the issuer)")
    issuer_url: str | None = Field(
        default=None, pattern=r"^https?://",
        description="Where to reach the issuer when that is not its identity ``issuer`` (e.g. "
                    "http://10.0.2.2:PORT from a device container); the assertion's audience "
                    "stays ``issuer``",
    )
    key_file: Path = Field(description="Zitadel machine-key JSON (type, keyId, key, userId)")
    project_id: str = Field(min_length=1, description="The fleet project: the token audience")
    refresh_leeway_s: float = Field(
        default=300, gt=0, description="Fetch a new token this long before the current expires"
    )
    http_timeout_s: float = Field(default=10, gt=0)
    extra_scopes: list[str] = Field(
        default_factory=list,
        description="Scopes asked for besides the fleet's (e.g. "
                    "urn:zitadel:iam:org:project:id:zitadel:aud for Zitadel's own API)",
    )
    refresh_retry_initial_s: float = Field(
        default=1, gt=0,
        description="After a failed refresh, wait a random time up to this before retrying",
    )
    refresh_retry_factor: float = Field(
        default=2, ge=1, description="Each further failure multiplies that upper bound by this"
    )
    refresh_retry_max_s: float = Field(
        default=60, gt=0, description="The upper bound never grows past this (full jitter)"
    )
    allow_insecure_key_permissions: bool = Field(
        default=False,
        description="Use a key file that group or others can access (with a warning); by "
                    "default such a file is refused, as ssh refuses a private key",
    )

    @model_validator(mode="after")
    def _retry_bounds(self) -> ZitadelAuth:
        if self.refresh_retry_max_s < self.refresh_retry_initial_s:
            raise ValueError("refresh_retry_max_s must be at least refresh_retry_initial_s")
        return self

    def endpoint(self) -> str:
        """The base URL the token endpoint is reached at (``issuer_url`` or ``issuer``)."""
        return (self.issuer_url or self.issuer).rstrip("/")

    def scopes(self) -> str:
        """What the token request asks for: Zitadel adds the project audience, the roles and
        the metadata claims only when asked (``extra_scopes`` appended)."""
        return fleet_scopes(self.project_id, *self.extra_scopes)


class NoAuth(_Settings):
    mode: Literal["none"] = "none"


AuthSettings = Annotated[
    UserPasswordAuth | TokenAuth | ZitadelAuth | NoAuth, Field(discriminator="mode")
]


def _redacted(url: str) -> str:
    """``url`` with any user info replaced: URLs may carry a password (``nats://u:p@h``)."""
    scheme, sep, rest = url.rpartition("://") if "://" in url else ("", "", url)
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at and userinfo else url


def check_nats_url(url: str) -> str:
    """Return ``url`` if nats-py can connect to it, else :class:`ValueError` saying why (pure).

    nats-py turns anything it does not recognise into a server address and fails later, at
    connect time, with a message about something else (``nats//x`` becomes host ``nats``):
    so every URL is checked here, where every daemon and client reads its settings."""
    shown = _redacted(url)
    if not url or url != url.strip() or any(c.isspace() for c in url):
        raise ValueError(f"{shown!r} is not a NATS URL: it is empty or contains spaces")
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        raise ValueError(f"{shown!r} is not a NATS URL: expected nats://HOST:PORT")
    if parts.scheme not in NATS_URL_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in NATS_URL_SCHEMES)
        raise ValueError(f"{shown!r} is not a NATS URL: the scheme must be one of {schemes}")
    if not parts.hostname:
        raise ValueError(f"{shown!r} is not a NATS URL: it names no host")
    try:
        port = parts.port  # None without one; ValueError when not a number below 65536
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{shown!r} is not a NATS URL: the port must be a number from 1 to "
                         "65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{shown!r} is not a NATS URL: nothing may follow HOST:PORT")
    return url


NatsUrl = Annotated[str, AfterValidator(check_nats_url)]


class NatsSettings(_Settings):
    """Where and how to reach NATS."""

    urls: list[NatsUrl] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"],
                                min_length=1)
    auth: AuthSettings = Field(default_factory=NoAuth)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    #: Waits between attempts of the *first* connect; the last value repeats.
    connect_backoff_s: list[float] = Field(default_factory=lambda: [0.2, 0.5, 1, 2, 5, 10])
    #: ``None`` retries the first connect forever (daemons); clients give up after N.
    connect_attempts: int | None = Field(default=None, ge=1)
    #: Once connected, nats-py reconnects on its own with this wait (forever).
    reconnect_wait_s: float = Field(default=1.0, gt=0)
    #: A server that refuses this client's credentials (a revoked device, a deleted user) is
    #: asked again after a wait that doubles from ``reconnect_wait_s`` up to this: each
    #: attempt costs the auth callout a check. A successful reconnect resets it.
    refused_reconnect_wait_max_s: float = Field(default=30.0, gt=0)
    drain_timeout_s: float = Field(default=5.0, gt=0)
    #: TLS. The server's certificate is always verified, its name included (no switch turns
    #: that off): ``tls_ca_file`` names the CA bundle to trust (else the system's). Setting any
    #: ``tls_*`` field, or a ``tls://`` URL, makes the connection TLS; a ``nats://`` URL to a
    #: server that requires TLS is upgraded when a ``tls_*`` field is set.
    tls_ca_file: Path | None = Field(
        default=None, description="PEM bundle of the CAs that sign the server's certificate")
    tls_cert_file: Path | None = Field(
        default=None, description="Client certificate (PEM) for servers that ask for one")
    tls_key_file: Path | None = Field(
        default=None, description="The client certificate's private key (PEM)")

    @model_validator(mode="after")
    def _client_certificate(self) -> NatsSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether connections are TLS (a ``tls_*`` field, or a ``tls``/``wss`` URL)."""
        return (self.tls_ca_file is not None or self.tls_cert_file is not None
                or any(urlsplit(u).scheme in ("tls", "wss") for u in self.urls))
