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

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from harmony_fleet.errors import InvalidInput

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
#: Largest report of each kind the writer accepts (and the bucket stores). A state report
#: carries a phase, a message (at most :data:`MAX_STATE_MESSAGE_BYTES`) and the services;
#: agents trim what does not fit (:func:`harmony_fleet.agent.reporter.fit_state`).
MAX_STATE_REPORT_BYTES: Final = 16 * 1024
MAX_INFO_REPORT_BYTES: Final = 16 * 1024
MAX_HEARTBEAT_REPORT_BYTES: Final = 1024
#: Longest ``message`` of a state report, in UTF-8 bytes (agents truncate longer ones).
MAX_STATE_MESSAGE_BYTES: Final = 4096
#: Most deployments one device runs; the report writer keeps at most this many state keys
#: per device, which is what sizes the device-state bucket.
MAX_DEPLOYMENTS_PER_DEVICE: Final = 32
#: Devices a fleet's buckets are sized for when nothing else is said (``ensure_buckets``).
DEFAULT_FLEET_CAPACITY: Final = 1000
#: Consumers on the desired-state stream beyond one per device: the control plane's own
#: watches (operator replicas, fleet_deployment, the inventory, the report writer).
CONTROL_PLANE_CONSUMERS: Final = 1000


@dataclass(frozen=True)
class BucketSpec:
    """How a bucket is created and what :func:`harmony_fleet.bus.kv.ensure_buckets` verifies.

    All buckets keep ``allow_direct`` on (fast reads for the control plane). Buckets that
    devices report into are sized from the per-device caps the report writer enforces
    (``keys_per_device`` values of at most ``max_value_size``): with the fleet's capacity they
    give ``max_bytes``, so a full bucket means more devices than planned, never one device
    crowding out the others (it cannot hold more than its share).
    """

    name: str
    description: str
    history: int
    max_value_size: int
    ttl: timedelta | None = None
    #: keys one device may hold (None: written by the control plane only, not capped)
    keys_per_device: int | None = None
    #: readers must see expired entries go (delete markers), see :data:`REMOVED_STATE_TTL`
    expiry_markers: bool = False

    def max_bytes(self, capacity: int) -> int | None:
        """Byte limit for a fleet of ``capacity`` devices (None: unlimited)."""
        if self.keys_per_device is None:
            return None
        return capacity * self.keys_per_device * self.max_value_size * self.history

    def max_consumers(self, capacity: int) -> int:
        """One watch per device on desired-state, plus the control plane's own."""
        if self.name == BUCKET_DESIRED_STATE:
            return capacity + CONTROL_PLANE_CONSUMERS
        return CONTROL_PLANE_CONSUMERS


#: How long a ``Removed`` report stays in device-state after its deployment was deleted: the
#: writer stores it with this per-message TTL (so deleted deployments do not accumulate) and
#: accepts ``Removed`` reports this long after the desired-state key went away.
REMOVED_STATE_TTL: Final = timedelta(minutes=15)

#: The chosen settings, and why:
#:  * desired-state keeps 5 revisions: enough to see what a device was told recently;
#:    readers only ever use the latest. Only the control plane writes it.
#:  * state/info keep 1: they are "latest wins" reports, older ones are noise; they are sized
#:    from the writer's per-device caps; Removed states expire (with delete markers).
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
        max_value_size=MAX_STATE_REPORT_BYTES,
        keys_per_device=MAX_DEPLOYMENTS_PER_DEVICE,
        expiry_markers=True,
    ),
    BucketSpec(
        BUCKET_DEVICE_INFO,
        "Harmony Fleet: labels and inventory per info.<device>",
        history=1,
        max_value_size=MAX_INFO_REPORT_BYTES,
        keys_per_device=1,
    ),
    BucketSpec(
        BUCKET_DEVICE_HEARTBEAT,
        "Harmony Fleet: liveness per heartbeat.<device>",
        history=1,
        max_value_size=MAX_HEARTBEAT_REPORT_BYTES,
        ttl=timedelta(days=1),
        keys_per_device=1,
    ),
)


class KeyFormatError(InvalidInput):
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


@functools.lru_cache(maxsize=1 << 17)
def desired_state_key(device_id: str, deployment: str) -> str:
    """``<device>.<deployment>`` in bucket ``desired-state`` (remembered: a plan of a large
    fleet asks for the same keys every time)."""
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


#: Each bucket's key format, as documentation and error messages show it.
KEY_FORMATS: Final[dict[str, str]] = {
    BUCKET_DESIRED_STATE: "<device>.<deployment>",
    BUCKET_DEVICE_STATE: f"{STATE_KEY_PREFIX}.<device>.<deployment>",
    BUCKET_DEVICE_INFO: f"{INFO_KEY_PREFIX}.<device>",
    BUCKET_DEVICE_HEARTBEAT: f"{HEARTBEAT_KEY_PREFIX}.<device>",
}

_KEY_PARSERS: Final[dict[str, Callable[[str], object]]] = {
    BUCKET_DESIRED_STATE: parse_desired_state_key,
    BUCKET_DEVICE_STATE: parse_device_state_key,
    BUCKET_DEVICE_INFO: parse_device_info_key,
    BUCKET_DEVICE_HEARTBEAT: parse_device_heartbeat_key,
}


def _check_bucket(bucket: str) -> str:
    if bucket not in _KEY_PARSERS:
        raise KeyFormatError(f"unknown bucket {bucket!r}; the fleet's buckets are "
                             f"{', '.join(_KEY_PARSERS)}")
    return bucket


def parse_bucket_key(bucket: str, key: str) -> object:
    """Parse ``key`` with the parser of ``bucket`` (:class:`KeyFormatError` if it is not one
    of the fleet's buckets or the key breaks its format)."""
    return _KEY_PARSERS[_check_bucket(bucket)](key)


def validate_key_filter(bucket: str, pattern: str) -> str:
    """Return ``pattern`` if it selects keys of ``bucket``: a key, or a NATS filter where ``*``
    stands for one token and a final ``>`` for one or more. Every literal token must be what
    the bucket's key format allows in its place (checked with the bucket's own parser, the
    wildcards standing in for valid tokens); :class:`KeyFormatError` otherwise."""
    _check_bucket(bucket)
    if not isinstance(pattern, str) or not pattern:
        raise KeyFormatError(f"{bucket}: key filter must be a non-empty string")
    fmt = KEY_FORMATS[bucket]
    shape = fmt.split(".")
    tokens = pattern.split(".")
    if ">" in tokens[:-1]:
        raise KeyFormatError(f"{bucket}: key filter {pattern!r}: '>' may only be the last token")
    if tokens[-1] == ">":
        if len(tokens) > len(shape):
            raise KeyFormatError(f"{bucket}: key filter {pattern!r} has more tokens than the "
                                 f"keys ({fmt})")
        tokens = tokens[:-1] + ["*"] * (len(shape) - len(tokens) + 1)
    elif len(tokens) != len(shape):
        raise KeyFormatError(f"{bucket}: key filter {pattern!r} has {len(tokens)} token(s); "
                             f"the keys have {len(shape)} ({fmt})")
    # a wildcard stands for a token the format allows there: the fixed prefix, or an id
    stand_ins = [part if not part.startswith("<") else "x" for part in shape]
    probe = ".".join(stand_ins[i] if tok == "*" else tok for i, tok in enumerate(tokens))
    try:
        parse_bucket_key(bucket, probe)
    except KeyFormatError as exc:
        reason = exc.__cause__ if isinstance(exc.__cause__, InvalidIdError) else exc
        raise KeyFormatError(f"{bucket}: key filter {pattern!r} does not select keys of the "
                             f"form {fmt}: {reason}") from exc
    return pattern
