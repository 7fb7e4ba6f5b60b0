"""Revoked devices: the ``device-revocations`` bucket (an extension of the wire contract) and
the NATS system-account subjects that close a device's live connections.

| bucket               | key                 | writer            | reader       | value        |
|----------------------|---------------------|-------------------|--------------|--------------|
| ``device-revocations`` | ``revoked.<device>`` | the control side | fleet-callout | :class:`Revocation` |

A key present (with a value) means the device is revoked: the auth callout refuses it,
whatever token it presents. Deleting the key lifts the revocation (re-enrollment). Devices
can neither read nor write this bucket (they have no JetStream API at all).

Closing live connections goes through the system account (nats-server 2.10+):
``$SYS.REQ.SERVER.PING.CONNZ`` (every server of a cluster answers) finds them, and
``$SYS.REQ.SERVER.<server_id>.KICK`` with ``{"cid": N}`` closes one.
"""

from __future__ import annotations

from typing import Final

from pydantic import Field

from .base import UtcDatetime, WireModel
from .ids import DeviceId, InvalidIdError, validate_device_id
from .kv import BucketSpec, KeyFormatError

BUCKET_DEVICE_REVOCATIONS: Final = "device-revocations"
REVOCATION_KEY_PREFIX: Final = "revoked"
MAX_REVOCATION_BYTES: Final = 4096
MAX_REVOCATION_REASON: Final = 512

#: Written by the control plane only; 5 revisions keep who revoked and restored a device,
#: and when, for a while.
REVOCATIONS_BUCKET: Final = BucketSpec(
    BUCKET_DEVICE_REVOCATIONS,
    "Harmony Fleet: revoked devices per revoked.<device>, refused by the auth callout",
    history=5,
    max_value_size=MAX_REVOCATION_BYTES,
)

#: Buckets beyond the original four (same creation and verification path).
EXTENSION_BUCKETS: Final[tuple[BucketSpec, ...]] = (REVOCATIONS_BUCKET,)

#: System-account requests (nats-server's monitoring over NATS)
SYS_CONNZ_PING_SUBJECT: Final = "$SYS.REQ.SERVER.PING.CONNZ"


def sys_kick_subject(server_id: str) -> str:
    """``$SYS.REQ.SERVER.<server_id>.KICK`` (payload ``{"cid": N}``)."""
    if not server_id or any(c in server_id for c in ". *>\t\r\n"):
        raise ValueError(f"{server_id!r} is not a server id")
    return f"$SYS.REQ.SERVER.{server_id}.KICK"


def device_revocation_key(device_id: str) -> str:
    """``revoked.<device>`` in bucket ``device-revocations``."""
    return f"{REVOCATION_KEY_PREFIX}.{validate_device_id(device_id)}"


def parse_device_revocation_key(key: str) -> str:
    """The device id of a ``revoked.<device>`` key (:class:`KeyFormatError` otherwise)."""
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) != 2 or parts[0] != REVOCATION_KEY_PREFIX:
        raise KeyFormatError(f"{BUCKET_DEVICE_REVOCATIONS}: key {key!r} is not "
                             f"{REVOCATION_KEY_PREFIX}.<device>")
    try:
        return validate_device_id(parts[1])
    except InvalidIdError as exc:
        raise KeyFormatError(f"{BUCKET_DEVICE_REVOCATIONS}: key {key!r}: {exc}") from exc


class Revocation(WireModel):
    """Why and when a device was revoked (the value of ``revoked.<device>``)."""

    device_id: DeviceId
    revoked_at: UtcDatetime
    reason: str = Field(default="", max_length=MAX_REVOCATION_REASON)
    revoked_by: str | None = Field(default=None, max_length=256)
