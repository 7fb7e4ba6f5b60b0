"""The four JetStream KV buckets and their key formats.

| bucket             | key                              | value                      |
|--------------------|----------------------------------|----------------------------|
| ``desired-state``  | ``<device>.<deployment>``        | :class:`~.score.PodmanScore` |
| ``device-state``   | ``state.<device>.<deployment>``  | :class:`~.state.DeploymentState` |
| ``device-info``    | ``info.<device>``                | :class:`~.info.DeviceInfo` |
| ``device-heartbeat`` | ``heartbeat.<device>``         | :class:`~.info.Heartbeat`  |

Every builder validates its ids and every parser rejects malformed keys with a
:class:`KeyFormatError` that names the bucket and the rule broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from .ids import InvalidIdError, validate_deployment_token, validate_device_id

BUCKET_DESIRED_STATE: Final = "desired-state"
BUCKET_DEVICE_STATE: Final = "device-state"
BUCKET_DEVICE_INFO: Final = "device-info"
BUCKET_DEVICE_HEARTBEAT: Final = "device-heartbeat"

STATE_KEY_PREFIX: Final = "state"
INFO_KEY_PREFIX: Final = "info"
HEARTBEAT_KEY_PREFIX: Final = "heartbeat"

#: Largest desired-state value (a workload) accepted anywhere: writers refuse bigger ones,
#: the bucket refuses bigger ones, and the agent fails the deployment if one slips through.
MAX_DESIRED_STATE_BYTES: Final = 256 * 1024
#: Largest report value (state, info, heartbeat).
MAX_REPORT_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class BucketSpec:
    """How a bucket is created and what :func:`harmony_fleet.bus.kv.ensure_buckets` verifies.

    All buckets keep ``allow_direct`` on: a direct get is the only read that a subject
    permission can scope to a single key (NATS-NOTES.md).
    """

    name: str
    description: str
    history: int
    max_value_size: int
    ttl: timedelta | None = None


#: The chosen settings, and why:
#:  * desired-state keeps 5 revisions: enough to see what a device was told recently;
#:    readers only ever use the latest.
#:  * state/info keep 1: they are "latest wins" reports, older ones are noise.
#:  * heartbeat keeps 1 and ages out after a day, so devices that vanished for good do not
#:    accumulate; liveness is judged from the timestamp long before that.
BUCKETS: Final[tuple[BucketSpec, ...]] = (
    BucketSpec(
        BUCKET_DESIRED_STATE,
        "Harmony Fleet: workload per <device>.<deployment>, written by the control plane",
        history=5,
        max_value_size=MAX_DESIRED_STATE_BYTES,
    ),
    BucketSpec(
        BUCKET_DEVICE_STATE,
        "Harmony Fleet: reconcile phase per state.<device>.<deployment>",
        history=1,
        max_value_size=MAX_REPORT_BYTES,
    ),
    BucketSpec(
        BUCKET_DEVICE_INFO,
        "Harmony Fleet: labels and inventory per info.<device>",
        history=1,
        max_value_size=MAX_REPORT_BYTES,
    ),
    BucketSpec(
        BUCKET_DEVICE_HEARTBEAT,
        "Harmony Fleet: liveness per heartbeat.<device>",
        history=1,
        max_value_size=MAX_REPORT_BYTES,
        ttl=timedelta(days=1),
    ),
)


class KeyFormatError(ValueError):
    """A KV key does not follow the contract of its bucket."""


@dataclass(frozen=True)
class DesiredStateKey:
    device_id: str
    deployment: str

    def __str__(self) -> str:
        return desired_state_key(self.device_id, self.deployment)


@dataclass(frozen=True)
class DeviceStateKey:
    device_id: str
    deployment: str

    def __str__(self) -> str:
        return device_state_key(self.device_id, self.deployment)


def desired_state_key(device_id: str, deployment: str) -> str:
    """``<device>.<deployment>`` in bucket ``desired-state``."""
    return f"{validate_device_id(device_id)}.{validate_deployment_token(deployment)}"


def desired_state_filter(device_id: str) -> str:
    """The key filter a device watches: ``<device>.>``."""
    return f"{validate_device_id(device_id)}.>"


def device_state_key(device_id: str, deployment: str) -> str:
    """``state.<device>.<deployment>`` in bucket ``device-state``."""
    return (
        f"{STATE_KEY_PREFIX}.{validate_device_id(device_id)}."
        f"{validate_deployment_token(deployment)}"
    )


def device_state_filter(device_id: str | None = None) -> str:
    """``state.<device>.>`` for one device, ``state.>`` for all."""
    if device_id is None:
        return f"{STATE_KEY_PREFIX}.>"
    return f"{STATE_KEY_PREFIX}.{validate_device_id(device_id)}.>"


def device_info_key(device_id: str) -> str:
    """``info.<device>`` in bucket ``device-info``."""
    return f"{INFO_KEY_PREFIX}.{validate_device_id(device_id)}"


def device_heartbeat_key(device_id: str) -> str:
    """``heartbeat.<device>`` in bucket ``device-heartbeat``."""
    return f"{HEARTBEAT_KEY_PREFIX}.{validate_device_id(device_id)}"


def _tokens(key: str, bucket: str, expected: int) -> list[str]:
    if not isinstance(key, str) or not key:
        raise KeyFormatError(f"{bucket}: key must be a non-empty string, got {key!r}")
    parts = key.split(".")
    if len(parts) != expected:
        raise KeyFormatError(
            f"{bucket}: key {key!r} has {len(parts)} token(s), expected {expected}"
        )
    return parts


def _wrap(bucket: str, key: str, exc: InvalidIdError) -> KeyFormatError:
    return KeyFormatError(f"{bucket}: key {key!r}: {exc}")


def parse_desired_state_key(key: str) -> DesiredStateKey:
    device, deployment = _tokens(key, BUCKET_DESIRED_STATE, 2)
    try:
        return DesiredStateKey(validate_device_id(device), validate_deployment_token(deployment))
    except InvalidIdError as exc:
        raise _wrap(BUCKET_DESIRED_STATE, key, exc) from exc


def _parse_prefixed(key: str, bucket: str, prefix: str, expected: int) -> list[str]:
    parts = _tokens(key, bucket, expected)
    if parts[0] != prefix:
        raise KeyFormatError(f"{bucket}: key {key!r} must start with '{prefix}.'")
    return parts[1:]


def parse_device_state_key(key: str) -> DeviceStateKey:
    device, deployment = _parse_prefixed(key, BUCKET_DEVICE_STATE, STATE_KEY_PREFIX, 3)
    try:
        return DeviceStateKey(validate_device_id(device), validate_deployment_token(deployment))
    except InvalidIdError as exc:
        raise _wrap(BUCKET_DEVICE_STATE, key, exc) from exc


def parse_device_info_key(key: str) -> str:
    """Return the device id of an ``info.<device>`` key."""
    (device,) = _parse_prefixed(key, BUCKET_DEVICE_INFO, INFO_KEY_PREFIX, 2)
    try:
        return validate_device_id(device)
    except InvalidIdError as exc:
        raise _wrap(BUCKET_DEVICE_INFO, key, exc) from exc


def parse_device_heartbeat_key(key: str) -> str:
    """Return the device id of a ``heartbeat.<device>`` key."""
    (device,) = _parse_prefixed(key, BUCKET_DEVICE_HEARTBEAT, HEARTBEAT_KEY_PREFIX, 2)
    try:
        return validate_device_id(device)
    except InvalidIdError as exc:
        raise _wrap(BUCKET_DEVICE_HEARTBEAT, key, exc) from exc


def kv_stream_name(bucket: str) -> str:
    """The JetStream stream backing a KV bucket (``KV_<bucket>``)."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The raw JetStream subject of a KV key (``$KV.<bucket>.<key>``)."""
    return f"$KV.{bucket}.{key}"
