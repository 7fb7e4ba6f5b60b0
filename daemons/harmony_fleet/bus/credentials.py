"""Credential providers: turn auth settings into ``nats.connect`` keyword arguments.

A provider is asked for its options on every connect. Token providers (arriving with the
identity work) return a zero-argument callable for ``token`` so that nats-py fetches the
current token on every reconnect, which a background task keeps fresh.
"""

from __future__ import annotations

from typing import Any, Protocol

from .settings import AuthSettings, NoAuth, TokenAuth, UserPasswordAuth, ZitadelAuth


class CredentialProvider(Protocol):
    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (secrets included: never log them)."""

    def describe(self) -> str:
        """What kind of credential this is, safe to log."""


class UserPasswordProvider:
    def __init__(self, user: str, password: str) -> None:
        self._user = user
        self._password = password

    def connect_options(self) -> dict[str, Any]:
        return {"user": self._user, "password": self._password}

    def describe(self) -> str:
        return f"user/password ({self._user})"


class StaticTokenProvider:
    def __init__(self, token: str) -> None:
        self._token = token

    def connect_options(self) -> dict[str, Any]:
        return {"token": self._token}

    def describe(self) -> str:
        return "static token"


class AnonymousProvider:
    def connect_options(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        return "anonymous"


def provider_from_settings(auth: AuthSettings) -> CredentialProvider:
    """Build the provider for a settings block."""
    if isinstance(auth, UserPasswordAuth):
        return UserPasswordProvider(auth.user, auth.resolve_password())
    if isinstance(auth, TokenAuth):
        return StaticTokenProvider(auth.resolve_token())
    if isinstance(auth, NoAuth):
        return AnonymousProvider()
    if isinstance(auth, ZitadelAuth):
        from .tokens import ZitadelTokenProvider

        return ZitadelTokenProvider(auth)
    raise TypeError(f"unsupported auth settings: {type(auth).__name__}")
