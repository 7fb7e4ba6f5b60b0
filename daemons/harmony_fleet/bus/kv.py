"""Create and verify the fleet's KV buckets; read and write their entries.

Reads and writes raise :class:`KVError` when JetStream fails underneath (no such bucket, no
JetStream, a timeout, a refused request) and :class:`RevisionMismatch` when a compare-and-set
finds another revision than the one expected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from harmony_fleet.contracts import (
    BUCKETS,
    DEFAULT_FLEET_CAPACITY,
    EXTENSION_BUCKETS,
    BucketSpec,
    kv_stream_name,
)
from harmony_fleet.errors import FleetError

log = logging.getLogger(__name__)

#: JetStream's error codes for "the subject's last sequence is not the one expected".
_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
#: JetStream's error code for "no message found" (as opposed to "no such stream").
_NO_MESSAGE_FOUND = 10037
#: The header a KV delete or purge marker carries its operation in; the header of the
#: markers nats-server >= 2.11 places itself (a TTL expiry, for one).
KV_OPERATION = "KV-Operation"
KV_MARKER_REASON = "Nats-Marker-Reason"


def removes_value(headers: dict[str, str] | None) -> bool:
    """Whether a KV message with these headers leaves its key without a value (a delete or
    purge marker, written by a client or placed by the server)."""
    headers = headers or {}
    return headers.get(KV_OPERATION) in ("DEL", "PURGE") or bool(headers.get(KV_MARKER_REASON))


class KVError(FleetError):
    """A JetStream KV read or write failed (no such bucket, JetStream unavailable, a timeout,
    a request the connection may not make); the message names the bucket and the key."""


class RevisionMismatch(KVError):
    """A compare-and-set write found the key at another revision than the one expected: someone
    else changed it in between, or the expectation was wrong. Nothing was written."""

    def __init__(self, bucket: str, key: str, expected: int, actual: int | None) -> None:
        found = f"revision {actual}" if actual is not None else "no value"
        super().__init__(f"{bucket} {key}: expected revision {expected}, found {found}; "
                         "nothing was written")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class KVEntry:
    """One key's current state. ``value`` is None when the key has no value (never written,
    deleted or purged); ``revision`` is then the delete marker's, or None if there is none."""

    key: str
    value: bytes | None
    revision: int | None


@asynccontextmanager
async def _kv_errors(bucket: str, what: str) -> AsyncIterator[None]:
    """Turn nats-py's failures of a KV call into :class:`KVError`."""
    try:
        yield
    except nats.js.errors.BucketNotFoundError as exc:
        raise KVError(f"{what}: bucket {bucket} does not exist (are the fleet's buckets "
                      "created?)") from exc
    except nats.errors.Error as exc:
        raise KVError(f"{what}: {type(exc).__name__}: {exc}") from exc


#: How long a delete marker left by an expired entry lives (readers see the expiry as a
#: PURGE; see contracts.REMOVED_STATE_TTL).
EXPIRY_MARKER_TTL_S = 300.0


@dataclass(frozen=True)
class BucketCheck:
    bucket: str
    created: bool
    updated: list[str]


def wanted_settings(spec: BucketSpec, capacity: int) -> dict[str, Any]:
    """The stream settings a bucket must have, as ``StreamConfig`` field -> value."""
    max_bytes = spec.max_bytes(capacity)
    return {
        "max_msgs_per_subject": spec.history,
        "allow_direct": True,
        "max_msg_size": spec.max_value_size,
        "max_age": spec.ttl.total_seconds() if spec.ttl else 0.0,
        "max_bytes": -1 if max_bytes is None else max_bytes,
        "max_consumers": spec.max_consumers(capacity),
        "allow_msg_ttl": True,
        "subject_delete_marker_ttl": EXPIRY_MARKER_TTL_S if spec.expiry_markers else None,
    }


def _drift(want: dict[str, Any], config: StreamConfig) -> dict[str, tuple[object, object]]:
    """Settings that differ from ``want``, as ``field: (have, want)``."""
    diff: dict[str, tuple[object, object]] = {}
    for name, value in want.items():
        have = getattr(config, name)
        if name == "max_age":
            have = have or 0.0
        if name in ("max_bytes", "max_consumers") and have in (None, 0):
            have = -1
        if have != value:
            diff[name] = (have, value)
    return diff


async def ensure_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int = 1,
                        capacity: int = DEFAULT_FLEET_CAPACITY) -> BucketCheck:
    """Create the bucket if missing; bring drifted settings back to the spec."""
    stream = kv_stream_name(spec.name)
    want = wanted_settings(spec, capacity)
    created = False
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await js.create_key_value(
            bucket=spec.name,
            description=spec.description,
            history=spec.history,
            max_value_size=spec.max_value_size,
            max_bytes=want["max_bytes"],
            ttl=spec.ttl.total_seconds() if spec.ttl else None,
            direct=True,
            storage=StorageType.FILE,
            replicas=replicas,
        )
        log.info("created bucket %s", spec.name)
        created = True
        # create_key_value cannot set every limit (consumers, expiry markers): update below
        info = await js.stream_info(stream)
    drift = _drift(want, info.config)
    if drift:
        config = info.config
        for name, value in want.items():
            setattr(config, name, value)
        await js.update_stream(config)
        if not created:
            log.warning(
                "bucket %s had drifted settings, updated: %s",
                spec.name,
                ", ".join(f"{k} {have!r} -> {new!r}" for k, (have, new) in drift.items()),
            )
    return BucketCheck(spec.name, created=created, updated=[] if created else sorted(drift))


async def ensure_buckets(js: JetStreamContext, replicas: int = 1,
                         capacity: int = DEFAULT_FLEET_CAPACITY) -> list[BucketCheck]:
    """Create/verify the four fleet buckets and the extensions (``device-revocations``),
    idempotently, sized for ``capacity`` devices."""
    return [await ensure_bucket(js, spec, replicas, capacity)
            for spec in (*BUCKETS, *EXTENSION_BUCKETS)]


async def last_revision(js: JetStreamContext, bucket: str, keys: str = ">") -> int | None:
    """The revision of the newest message (value or delete marker) of any key matching
    ``keys`` (None: none), asked of the stream's leader: the boundary a snapshot read must
    reach. A watch's own end-of-initial-values marker cannot be trusted for that: on a
    clustered stream the pending count it relies on can reach 0 before the replay is over
    (nats-io/nats.py#995), and a read would silently miss keys."""
    try:
        return int((await js.get_msg(kv_stream_name(bucket),
                                     subject=f"$KV.{bucket}.{keys}")).seq or 0) or None
    except NotFoundError as exc:
        if exc.err_code == _NO_MESSAGE_FOUND:
            return None
        raise


class KeyWatch:
    """A watch of a bucket's keys (the current value of each, then every change) whose
    end-of-initial-values marker can be trusted: :meth:`updates` returns ``None`` once, when
    the newest revision that existed when the watch started (see :func:`last_revision`) has
    been delivered. nats-py's own marker relies on a pending count that can reach 0 before
    the replay is over on a clustered stream, and a reader acting on it would take a partial
    view for the whole (nats-io/nats.py#995). Delete and purge markers are delivered (they
    count towards the boundary): check ``entry.operation``."""

    def __init__(self, js: JetStreamContext, bucket: str, keys: str = ">", *,
                 meta_only: bool = False) -> None:
        self._js, self.bucket, self.keys, self._meta_only = js, bucket, keys, meta_only
        self._watcher: Any = None
        self._boundary: int | None = None
        self._seen = 0
        self._done = False
        self._marker_due = False

    async def start(self) -> KeyWatch:
        kv = await self._js.key_value(self.bucket)
        self._boundary = await last_revision(self._js, self.bucket, self.keys)
        self._watcher = await kv.watch(self.keys, include_history=False,
                                       meta_only=self._meta_only)
        self._marker_due = self._boundary is None
        return self

    async def stop(self) -> None:
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            await watcher.stop()

    async def __aenter__(self) -> KeyWatch:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def caught_up(self) -> bool:
        """Whether the initial values are all through (the marker was returned)."""
        return self._done

    async def updates(self, timeout: float) -> Any:
        """The next entry (a nats-py ``KeyValue.Entry``), or ``None`` once when the initial
        values are all through; raises :class:`TimeoutError` if nothing comes in ``timeout``."""
        if self._marker_due and not self._done:
            self._done = True
            return None
        while True:
            try:
                entry = await self._watcher.updates(timeout=timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                if not self._done:  # the boundary may have expired since (a TTL)
                    latest = await last_revision(self._js, self.bucket, self.keys)
                    if latest is None or latest <= self._seen:
                        self._done = True
                        return None
                raise TimeoutError(f"no update of {self.bucket} in {timeout:g}s") from None
            if entry is None:  # nats-py's marker: only a hint
                if not self._done and (self._boundary is None or self._seen >= self._boundary):
                    self._done = True
                    return None
                continue
            self._seen = max(self._seen, entry.revision or 0)
            if not self._done and self._boundary is not None and self._seen >= self._boundary:
                self._marker_due = True
            return entry


async def read_entries(js: JetStreamContext, bucket: str, keys: str = ">", *,
                       timeout: float = 30.0) -> dict[str, KVEntry]:
    """Current value and revision of every key matching ``keys`` (a key or a NATS wildcard
    filter; deleted keys omitted), in one pass (see :class:`KeyWatch`)."""
    entries: dict[str, KVEntry] = {}
    deadline = time.monotonic() + timeout
    async with _kv_errors(bucket, f"reading {bucket} {keys}"), KeyWatch(js, bucket, keys) as watch:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise nats.errors.TimeoutError
            try:
                entry = await watch.updates(timeout=min(left, 1.0))
            except TimeoutError:
                continue
            if entry is None:
                return entries
            if entry.operation in ("DEL", "PURGE") or entry.value is None:
                entries.pop(entry.key, None)
            else:
                entries[entry.key] = KVEntry(entry.key, bytes(entry.value), entry.revision)


async def read_bucket(js: JetStreamContext, bucket: str, keys: str = ">") -> dict[str, bytes]:
    """Current value of every key matching ``keys`` (deleted keys omitted), in one pass."""
    return {k: e.value for k, e in (await read_entries(js, bucket, keys)).items()
            if e.value is not None}


async def get_entry(js: JetStreamContext, bucket: str, key: str, *,
                    revision: int | None = None) -> KVEntry:
    """One key's current value and revision (a direct get); with ``revision``, the value it
    had at that revision, if the bucket's history still holds it (no value otherwise)."""
    async with _kv_errors(bucket, f"reading {bucket} {key}"):
        kv = await js.key_value(bucket)
        try:
            entry = await kv.get(key, revision=revision)
        except nats.js.errors.KeyNotFoundError as exc:  # also what a deleted key raises
            marker = getattr(exc, "entry", None)
            return KVEntry(key, None, marker.revision if marker is not None else None)
    return KVEntry(key, bytes(entry.value or b""), entry.revision)


async def put_entry(js: JetStreamContext, bucket: str, key: str, value: bytes, *,
                    last: int | None = None) -> int:
    """Write ``value``; with ``last``, only if the key is still at that revision (0: it has
    never been written). Returns the new revision; :class:`RevisionMismatch` otherwise."""
    async with _kv_errors(bucket, f"writing {bucket} {key}"):
        kv = await js.key_value(bucket)
        try:
            if last is None:
                return await kv.put(key, value)
            return await kv.update(key, value, last=last)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise RevisionMismatch(bucket, key, last or 0,
                                   (await get_entry(js, bucket, key)).revision) from exc


async def delete_entry(js: JetStreamContext, bucket: str, key: str, *,
                       last: int | None = None) -> None:
    """Delete the key (a delete marker, as the agents' watches expect); with ``last``, only
    if it is still at that revision."""
    async with _kv_errors(bucket, f"deleting {bucket} {key}"):
        kv = await js.key_value(bucket)
        try:
            await kv.delete(key, last=last)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in _WRONG_LAST_SEQUENCE or last is None:
                raise
            raise RevisionMismatch(bucket, key, last,
                                   (await get_entry(js, bucket, key)).revision) from exc
