"""Create and verify the fleet's KV buckets."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from harmony_fleet.contracts import BUCKETS, BucketSpec, kv_stream_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BucketCheck:
    bucket: str
    created: bool
    updated: list[str]


def _drift(spec: BucketSpec, config: StreamConfig) -> dict[str, tuple[object, object]]:
    """Settings that differ from the spec, as ``field: (have, want)``."""
    want_age = spec.ttl.total_seconds() if spec.ttl else None
    have_age = config.max_age or None
    diff: dict[str, tuple[object, object]] = {}
    if config.max_msgs_per_subject != spec.history:
        diff["history"] = (config.max_msgs_per_subject, spec.history)
    if not config.allow_direct:
        diff["allow_direct"] = (config.allow_direct, True)
    if config.max_msg_size != spec.max_value_size:
        diff["max_value_size"] = (config.max_msg_size, spec.max_value_size)
    if (have_age or None) != want_age:
        diff["ttl"] = (have_age, want_age)
    return diff


async def ensure_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int = 1) -> BucketCheck:
    """Create the bucket if missing; bring drifted settings back to the spec."""
    stream = kv_stream_name(spec.name)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await js.create_key_value(
            bucket=spec.name,
            description=spec.description,
            history=spec.history,
            max_value_size=spec.max_value_size,
            ttl=spec.ttl.total_seconds() if spec.ttl else None,
            direct=True,
            storage=StorageType.FILE,
            replicas=replicas,
        )
        log.info("created bucket %s", spec.name)
        return BucketCheck(spec.name, created=True, updated=[])
    drift = _drift(spec, info.config)
    if drift:
        config = info.config
        config.max_msgs_per_subject = spec.history
        config.allow_direct = True
        config.max_msg_size = spec.max_value_size
        config.max_age = spec.ttl.total_seconds() if spec.ttl else 0
        await js.update_stream(config)
        log.warning(
            "bucket %s had drifted settings, updated: %s",
            spec.name,
            ", ".join(f"{k} {have!r} -> {want!r}" for k, (have, want) in drift.items()),
        )
    return BucketCheck(spec.name, created=False, updated=sorted(drift))


async def ensure_buckets(js: JetStreamContext, replicas: int = 1) -> list[BucketCheck]:
    """Create/verify all four fleet buckets (idempotent)."""
    return [await ensure_bucket(js, spec, replicas) for spec in BUCKETS]


async def read_bucket(js: JetStreamContext, bucket: str, keys: str = ">") -> dict[str, bytes]:
    """Current value of every key matching ``keys`` (deleted keys omitted), in one pass."""
    kv = await js.key_value(bucket)
    values: dict[str, bytes] = {}
    watcher = await kv.watch(keys, ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                break
            if entry.value is not None:
                values[entry.key] = bytes(entry.value)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
    return values
