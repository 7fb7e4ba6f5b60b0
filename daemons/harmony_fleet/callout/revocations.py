"""Is this device revoked? The callout asks the ``device-revocations`` bucket on every device
authentication (a direct get, about a millisecond), so a revocation holds from the moment it
is written, across callout restarts, on every callout replica.

It fails closed: when the bucket cannot be read (JetStream down, a timeout) devices are
refused with reason ``revocation-check-failed``; a bucket that does not exist means nobody was
ever revoked (revoking creates it, see :func:`harmony_fleet.control.revocation.revoke_device`).
"""

from __future__ import annotations

import logging

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue
from pydantic import ValidationError

from harmony_fleet.contracts import BUCKET_DEVICE_REVOCATIONS, Revocation, device_revocation_key
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.errors import FleetError

log = logging.getLogger(__name__)


class RevocationUnknown(FleetError):
    """Whether a device is revoked cannot be told right now (the bucket cannot be read)."""


class RevocationCheck:
    """Looks devices up in ``device-revocations`` over a FLEET-account connection."""

    def __init__(self, nc: NatsClient, timeout_s: float = 0.5) -> None:
        self._nc = nc
        self._timeout = timeout_s
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue | None:
        if self._kv is None:
            try:
                self._kv = await self._nc.jetstream(timeout=self._timeout).key_value(
                    BUCKET_DEVICE_REVOCATIONS)
            except nats.js.errors.BucketNotFoundError:
                return None
        return self._kv

    async def revocation(self, device_id: str) -> Revocation | None:
        """The device's revocation, None if it is not revoked; :class:`RevocationUnknown`."""
        key = device_revocation_key(device_id)
        try:
            kv = await self._bucket()
            if kv is None:
                return None
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # never revoked, or restored (deleted)
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            self._kv = None  # look the bucket up again next time (it may have been re-made)
            raise RevocationUnknown(f"cannot read {BUCKET_DEVICE_REVOCATIONS} {key}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        if not entry.value:
            return None
        try:
            return Revocation.model_validate_json(entry.value)
        except ValidationError:
            # a value that is not a Revocation still revokes: fail closed, say why in the log
            log.warning("%s %s holds an unreadable value: the device stays revoked",
                        BUCKET_DEVICE_REVOCATIONS, key)
            return Revocation(device_id=device_id, revoked_at=utcnow(), reason="(unreadable)")
