"""Credential providers: turn auth settings into ``nats.connect`` keyword arguments.

A provider is asked for its options on every connect. Static ones (user/password, a token)
are :class:`CredentialProvider`; providers whose credentials expire are
:class:`RefreshingCredentials`: they fetch the first token in ``prepare()``, keep it fresh
in ``run()``, and set ``refreshed`` after each refresh, so that long-lived clients move to a
connection authenticated with the new token (:mod:`.connection`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from harmony_fleet.daemon import DaemonExit

from .settings import AuthSettings, NoAuth, TokenAuth, UserPasswordAuth, ZitadelAuth


class CredentialProvider(Protocol):
    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (secrets included: never log them)."""

    def describe(self) -> str:
        """What kind of credential this is, safe to log."""


@runtime_checkable
class RefreshingCredentials(Protocol):
    """Credentials that expire and are renewed in the background."""

    refreshed: asyncio.Event

    def connect_options(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...

    async def prepare(self) -> None:
        """Obtain the first credentials (before the first connect)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Keep them fresh until ``stop``; set :attr:`refreshed` after each renewal."""


def refreshing(credentials: CredentialProvider) -> RefreshingCredentials | None:
    """``credentials`` if they expire and renew themselves, else None."""
    return credentials if isinstance(credentials, RefreshingCredentials) else None


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


class CredentialsError(DaemonExit):
    """A credential the settings name cannot be read (a file missing, unreadable, empty): a
    configuration to fix, said in one line (daemons exit 2, as for a bad config file)."""

    exit_code = 2


def _read_secret(what: str, path: Path, read: Callable[[], str]) -> str:
    try:
        secret = read()
    except OSError as exc:
        raise CredentialsError(f"cannot read the {what} file {path}: "
                               f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"the {what} file {path} is not text") from None
    if not secret:
        raise CredentialsError(f"the {what} file {path} is empty")
    return secret


def check_credential_files(auth: AuthSettings) -> None:
    """:class:`CredentialsError` if a password or token file that ``auth`` names cannot be
    used (``--check-config``; machine key files have their own check in :mod:`.tokens`)."""
    if isinstance(auth, UserPasswordAuth) and auth.password_file is not None:
        _read_secret("password", auth.password_file, auth.resolve_password)
    if isinstance(auth, TokenAuth) and auth.token_file is not None:
        _read_secret("token", auth.token_file, auth.resolve_token)


def provider_from_settings(auth: AuthSettings) -> CredentialProvider:
    """Build the provider for a settings block (:class:`CredentialsError` if a password or
    token file cannot be read)."""
    if isinstance(auth, UserPasswordAuth):
        password = (_read_secret("password", auth.password_file, auth.resolve_password)
                    if auth.password_file is not None else auth.resolve_password())
        return UserPasswordProvider(auth.user, password)
    if isinstance(auth, TokenAuth):
        token = (_read_secret("token", auth.token_file, auth.resolve_token)
                 if auth.token_file is not None else auth.resolve_token())
        return StaticTokenProvider(token)
    if isinstance(auth, NoAuth):
        return AnonymousProvider()
    if isinstance(auth, ZitadelAuth):
        from .tokens import ZitadelTokenProvider

        return ZitadelTokenProvider(auth)
    raise TypeError(f"unsupported auth settings: {type(auth).__name__}")
