"""Snapshot reads of a bucket (``read_entries``, ``KeyWatch``) on a real nats-server: complete
even when nats-py's end-of-initial-values marker comes early, as it can on a clustered stream
(nats-io/nats.py#995; seen here as a chaos run whose final read missed desired-state keys)."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from harmony_fleet.bus import kv as kvmod
from harmony_fleet.bus.kv import KeyWatch, KVError, read_entries
from harmony_fleet.contracts import BUCKET_DESIRED_STATE, desired_state_key

DEVICES = [f"snap-{i:03d}" for i in range(300)]


@pytest.fixture
async def written(admin_nc: NatsClient) -> AsyncIterator[tuple[KeyValue, str]]:
    """300 keys of a fresh deployment token, each written twice, every tenth deleted."""
    kv = await admin_nc.jetstream().key_value(BUCKET_DESIRED_STATE)
    token = f"snap_{secrets.token_hex(4)}"
    for device in DEVICES:
        await kv.put(desired_state_key(device, token), b"{}")
        await kv.put(desired_state_key(device, token), device.encode())
    for device in DEVICES[::10]:
        await kv.delete(desired_state_key(device, token))
    yield kv, token
    for device in DEVICES:
        await kv.delete(desired_state_key(device, token))


def expected(token: str) -> dict[str, bytes]:
    return {desired_state_key(d, token): d.encode() for d in DEVICES if d not in DEVICES[::10]}


async def test_read_entries_returns_every_current_value(
    admin_nc: NatsClient, written: tuple[KeyValue, str]
) -> None:
    _, token = written
    entries = await read_entries(admin_nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
    assert {k: e.value for k, e in entries.items()} == expected(token)
    assert all(e.revision for e in entries.values())
    assert await read_entries(admin_nc.jetstream(), BUCKET_DESIRED_STATE, "*.snap_none") == {}


class EarlyMarker:
    """nats-py's watcher, as on a clustered stream whose pending count reaches 0 early: an
    end-of-initial-values marker before any value, and another after 40 of them."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.delivered = inner, 0

    async def updates(self, timeout: float) -> Any:
        if self.delivered in (0, 40):
            self.delivered += 1
            return None
        self.delivered += 1
        return await self.inner.updates(timeout=timeout)

    async def stop(self) -> None:
        await self.inner.stop()


async def test_an_early_marker_does_not_end_the_snapshot(
    admin_nc: NatsClient, written: tuple[KeyValue, str]
) -> None:
    _, token = written
    seen: dict[str, bytes | None] = {}
    async with KeyWatch(admin_nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}") as watch:
        watch._watcher = EarlyMarker(watch._watcher)
        while (entry := await watch.updates(timeout=5.0)) is not None:
            seen[entry.key] = None if entry.operation in ("DEL", "PURGE") else entry.value
        assert watch.caught_up
        # the deletes came through too: they may be the newest revision, the boundary
        assert {k: v for k, v in seen.items() if v is not None} == expected(token)
        assert len(seen) == len(DEVICES)
        # and the watch goes on with live changes
        await written[0].put(desired_state_key("snap-late", token), b"late")
        entry = await watch.updates(timeout=5.0)
        assert (entry.key, entry.value) == (desired_state_key("snap-late", token), b"late")
    await written[0].delete(desired_state_key("snap-late", token))


async def test_a_boundary_gone_before_it_was_read_ends_the_snapshot_when_idle(
    admin_nc: NatsClient, written: tuple[KeyValue, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest message named as the boundary expired (a TTL) before the watch read it:
    once idle, the watch asks again and ends the snapshot instead of waiting for it forever."""
    _, token = written
    real = kvmod.last_revision
    calls = 0

    async def expired_once(js: Any, bucket: str, keys: str = ">") -> int | None:
        nonlocal calls
        calls += 1
        latest = await real(js, bucket, keys)
        return (latest or 0) + 1_000_000 if calls == 1 else latest

    monkeypatch.setattr(kvmod, "last_revision", expired_once)
    started = time.monotonic()
    entries = await read_entries(admin_nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
    assert {k: e.value for k, e in entries.items()} == expected(token)
    assert calls >= 2
    assert time.monotonic() - started < 10


async def test_a_missing_bucket_is_named(admin_nc: NatsClient) -> None:
    with pytest.raises(KVError, match="bucket no-such-bucket does not exist"):
        await read_entries(admin_nc.jetstream(), "no-such-bucket")
