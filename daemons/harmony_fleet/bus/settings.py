"""Typed NATS connection settings shared by every daemon and client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


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
    """

    mode: Literal["zitadel"] = "zitadel"
    issuer: str = Field(pattern=r"^https?://", description="Zitadel instance URL (the issuer)")
    key_file: Path = Field(description="Zitadel machine-key JSON (type, keyId, key, userId)")
    project_id: str = Field(min_length=1, description="The fleet project: the token audience")
    refresh_leeway_s: float = Field(
        default=300, gt=0, description="Fetch a new token this long before the current expires"
    )
    http_timeout_s: float = Field(default=10, gt=0)

    def scopes(self) -> str:
        return " ".join((
            "openid",
            f"urn:zitadel:iam:org:project:id:{self.project_id}:aud",
            "urn:zitadel:iam:org:projects:roles",
            "urn:zitadel:iam:user:metadata",
        ))


class NoAuth(_Settings):
    mode: Literal["none"] = "none"


AuthSettings = Annotated[
    UserPasswordAuth | TokenAuth | ZitadelAuth | NoAuth, Field(discriminator="mode")
]


class NatsSettings(_Settings):
    """Where and how to reach NATS."""

    urls: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    auth: AuthSettings = Field(default_factory=NoAuth)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    #: Waits between attempts of the *first* connect; the last value repeats.
    connect_backoff_s: list[float] = Field(default_factory=lambda: [0.2, 0.5, 1, 2, 5, 10])
    #: ``None`` retries the first connect forever (daemons); clients give up after N.
    connect_attempts: int | None = Field(default=None, ge=1)
    #: Once connected, nats-py reconnects on its own with this wait (forever).
    reconnect_wait_s: float = Field(default=1.0, gt=0)
    drain_timeout_s: float = Field(default=5.0, gt=0)
