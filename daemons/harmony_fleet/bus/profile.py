"""Where clients find NATS: explicit options, environment, or a connection file.

A *connection file* is JSON or YAML holding a :class:`NatsSettings` document, either at the
top level or under a ``connection`` key (the local stack's state file has that shape), e.g.::

    {"urls": ["nats://nats.example.net:4222"],
     "auth": {"mode": "userpass", "user": "admin", "password_file": "/root/.fleet/pw"}}

Resolution order, highest first: explicit values, ``FLEET_NATS_URL`` / ``FLEET_NATS_USER`` /
``FLEET_NATS_PASSWORD`` / ``FLEET_NATS_TOKEN`` / ``FLEET_NATS_TLS_CA_FILE`` /
``FLEET_NATS_TLS_CERT_FILE`` / ``FLEET_NATS_TLS_KEY_FILE``, the connection file (explicit, else
``FLEET_CONNECTION_FILE``, else the local stack's state file if it exists). TLS settings
(``tls_ca_file``, ``tls_cert_file``, ``tls_key_file``) come with the connection file unless
given explicitly.

The *system* connection (the NATS system account: closing a revoked device's connections) is
resolved the same way by :func:`resolve_system_settings`, from ``FLEET_NATS_SYSTEM_USER`` /
``FLEET_NATS_SYSTEM_PASSWORD`` or a connection file's ``system_connection`` (the local stack's
state file has one). It is the control side's alone: no device ever holds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harmony_fleet.contracts import validation_summary
from harmony_fleet.errors import FleetError

from .settings import AuthSettings, NatsSettings, NoAuth, TokenAuth, UserPasswordAuth

ENV_URL = "FLEET_NATS_URL"
ENV_USER = "FLEET_NATS_USER"
ENV_PASSWORD = "FLEET_NATS_PASSWORD"  # noqa: S105 - the variable's name, not a secret
ENV_TOKEN = "FLEET_NATS_TOKEN"  # noqa: S105
ENV_CONNECTION_FILE = "FLEET_CONNECTION_FILE"
ENV_TLS_CA_FILE = "FLEET_NATS_TLS_CA_FILE"
ENV_TLS_CERT_FILE = "FLEET_NATS_TLS_CERT_FILE"
ENV_TLS_KEY_FILE = "FLEET_NATS_TLS_KEY_FILE"
ENV_SYSTEM_USER = "FLEET_NATS_SYSTEM_USER"
ENV_SYSTEM_PASSWORD = "FLEET_NATS_SYSTEM_PASSWORD"  # noqa: S105 - the variable's name
#: the key of a connection file (the local stack's state file) holding the system connection
SYSTEM_CONNECTION_KEY = "system_connection"


class ConnectionConfigError(FleetError, ValueError):
    """No usable NATS connection could be assembled; the message says what is missing."""


def load_connection_file(path: Path, key: str = "connection") -> NatsSettings:
    """The settings in ``path``: at the top level, or under ``key`` when the file has it
    (with ``key`` other than ``connection``, the file must have it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConnectionConfigError(f"cannot read connection file {path}: {exc}") from exc
    try:
        data: Any = json.loads(text)
    except ValueError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            # PyYAML's messages span lines (with a caret under the spot): keep the gist
            where = getattr(exc, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConnectionConfigError(
                f"{path} is neither JSON nor YAML: {problem}{at}") from exc
    if isinstance(data, dict) and key in data:
        data = data[key]
    elif key != "connection":
        raise ConnectionConfigError(f"{path} has no {key!r}: give the system account's "
                                    f"user and password ({ENV_SYSTEM_USER}, "
                                    f"{ENV_SYSTEM_PASSWORD})")
    if not isinstance(data, dict):
        raise ConnectionConfigError(f"{path}: expected a mapping with 'urls' and 'auth'")
    try:
        return NatsSettings.model_validate(data)
    except ValidationError as exc:
        raise ConnectionConfigError(f"{path}: {validation_summary(exc)}") from exc


def default_state_dir() -> Path:
    """Where the local stack keeps its state file: ``$FLEET_STATE_DIR``, else
    ``$XDG_STATE_HOME/harmony-fleet``, else ``~/.local/state/harmony-fleet``."""
    explicit = os.environ.get("FLEET_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "harmony-fleet"


def default_state_file() -> Path:
    return default_state_dir() / "stack.json"


def _default_connection_file() -> Path | None:
    explicit = os.environ.get(ENV_CONNECTION_FILE)
    if explicit:
        return Path(explicit)
    candidate = default_state_file()
    return candidate if candidate.exists() else None


def resolve_settings(
    *,
    url: str | list[str] | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    connection_file: str | Path | None = None,
    timeout: float | None = None,
    use_environment: bool = True,
    tls_ca_file: str | Path | None = None,
    tls_cert_file: str | Path | None = None,
    tls_key_file: str | Path | None = None,
) -> NatsSettings:
    """Assemble :class:`NatsSettings` from the sources above (see module docstring)."""
    env = os.environ if use_environment else {}
    tls = {name: value for name, value in (
        ("tls_ca_file", tls_ca_file or env.get(ENV_TLS_CA_FILE)),
        ("tls_cert_file", tls_cert_file or env.get(ENV_TLS_CERT_FILE)),
        ("tls_key_file", tls_key_file or env.get(ENV_TLS_KEY_FILE))) if value}
    url = url or env.get(ENV_URL)
    user = user or env.get(ENV_USER)
    password = password or env.get(ENV_PASSWORD)
    token = token or env.get(ENV_TOKEN)
    if password and token:
        raise ConnectionConfigError("give either a password or a token, not both")

    base: NatsSettings | None = None
    file = Path(connection_file) if connection_file else (
        _default_connection_file() if use_environment else None
    )
    if file is not None:
        base = load_connection_file(file)

    if url is None and base is None:
        raise ConnectionConfigError(
            f"no NATS server given: set the url (or {ENV_URL}), a connection file "
            f"(or {ENV_CONNECTION_FILE}), or start a local stack with 'fleet stack up'"
        )
    urls = ([url] if isinstance(url, str) else url) if url else base.urls  # type: ignore[union-attr]
    urls = [u.strip() for item in urls for u in item.split(",") if u.strip()]

    try:
        return _assemble(urls, base, token=token, user=user, password=password, timeout=timeout,
                         tls=tls)
    except ValidationError as exc:  # the summary names fields and rules, never values
        raise ConnectionConfigError(f"connection settings: {validation_summary(exc)}") from None


def _assemble(urls: list[str], base: NatsSettings | None, *, token: str | None, user: str | None,
              password: str | None, timeout: float | None,
              tls: dict[str, Any] | None = None) -> NatsSettings:
    auth: AuthSettings
    if token:
        auth = TokenAuth(token=token)
    elif user or password:
        if not (user and password):
            raise ConnectionConfigError("user and password go together")
        auth = UserPasswordAuth(user=user, password=password)
    elif base is not None:
        auth = base.auth
    else:
        auth = NoAuth()

    values: dict[str, Any] = {"urls": urls, "auth": auth, "connect_attempts": 1}
    if base is not None:
        values = base.model_dump(exclude={"urls", "auth"}) | values
    if timeout is not None:
        values["connect_timeout_s"] = timeout
    values.update(tls or {})
    try:
        return NatsSettings.model_validate(values)
    except ValidationError as exc:
        raise ConnectionConfigError(validation_summary(exc)) from exc


def resolve_system_settings(
    fleet: NatsSettings,
    *,
    user: str | None = None,
    password: str | None = None,
    connection_file: str | Path | None = None,
    use_environment: bool = True,
) -> NatsSettings:
    """The NATS *system account* connection (``$SYS``): a user and password of the system
    account on the servers of ``fleet`` (same URLs and TLS), else the ``system_connection`` of
    a connection file (explicit, ``FLEET_CONNECTION_FILE`` or the local stack's state file).
    :class:`ConnectionConfigError` when there is none."""
    env = os.environ if use_environment else {}
    user = user or env.get(ENV_SYSTEM_USER)
    password = password or env.get(ENV_SYSTEM_PASSWORD)
    if user or password:
        if not (user and password):
            raise ConnectionConfigError("the system user and password go together")
        values = fleet.model_dump(exclude={"auth"}) | {
            "auth": UserPasswordAuth(user=user, password=password)}
        try:
            return NatsSettings.model_validate(values)
        except ValidationError as exc:
            raise ConnectionConfigError(
                f"system connection: {validation_summary(exc)}") from None
    file = Path(connection_file) if connection_file else (
        _default_connection_file() if use_environment else None)
    if file is None:
        raise ConnectionConfigError(
            "no system account credentials: give the system user and password "
            f"({ENV_SYSTEM_USER}, {ENV_SYSTEM_PASSWORD}) or a connection file with "
            f"{SYSTEM_CONNECTION_KEY!r} (the local stack's state file has one)")
    settings = load_connection_file(file, SYSTEM_CONNECTION_KEY)
    return settings.model_copy(update={"connect_attempts": 1})
