"""NATS plumbing: settings, credentials, connections, buckets and the command client."""

from .commands import (
    BadReply,
    CommandError,
    CommandTimeout,
    DeviceOffline,
    FleetCommandsClient,
    RemoteError,
    TransportError,
)
from .connection import ConnectError, connect, drain
from .credentials import CredentialProvider, provider_from_settings
from .kv import ensure_buckets
from .settings import NatsSettings, NoAuth, TokenAuth, UserPasswordAuth

__all__ = [
    "BadReply",
    "CommandError",
    "CommandTimeout",
    "ConnectError",
    "CredentialProvider",
    "DeviceOffline",
    "FleetCommandsClient",
    "NatsSettings",
    "NoAuth",
    "RemoteError",
    "TokenAuth",
    "TransportError",
    "UserPasswordAuth",
    "connect",
    "drain",
    "ensure_buckets",
    "provider_from_settings",
]
