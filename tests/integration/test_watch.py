"""The agent's scoped desired-state watch on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from harmony_fleet.agent.watch import DesiredStateWatcher
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    desired_state_key,
    device_consumer_name,
    kv_stream_name,
)


@pytest.fixture
async def desired(admin_nc: NatsClient) -> KeyValue:
    return await admin_nc.jetstream().key_value(BUCKET_DESIRED_STATE)


async def wait_for(watcher: DesiredStateWatcher, expected: dict[str, bytes],
                   timeout: float = 10.0) -> None:
    async def until() -> None:
        while True:
            view = {k: v.value for k, v in watcher.view.values.items()}
            if watcher.view.complete and view == expected:
                return
            watcher.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.changed.wait(), 0.5)

    await asyncio.wait_for(until(), timeout)


@pytest.fixture
async def running(admin_nc: NatsClient, device_id: str) -> AsyncIterator[DesiredStateWatcher]:
    watcher = DesiredStateWatcher(admin_nc, device_id, idle_heartbeat_s=0.5, backoff_s=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    yield watcher
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_snapshot_then_updates_and_deletes(
    admin_nc: NatsClient, desired: KeyValue, device_id: str
) -> None:
    await desired.put(desired_state_key(device_id, "ns_a"), b"a1")
    await desired.put(desired_state_key(device_id, "ns_a"), b"a2")
    await desired.put(desired_state_key(device_id, "ns_b"), b"b1")
    await desired.put(desired_state_key(f"{device_id}-other", "ns_a"), b"not mine")
    watcher = DesiredStateWatcher(admin_nc, device_id, idle_heartbeat_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        await wait_for(watcher, {"ns_a": b"a2", "ns_b": b"b1"})
        generation = watcher.view.generation
        await desired.put(desired_state_key(device_id, "ns_c"), b"c1")
        await desired.delete(desired_state_key(device_id, "ns_a"))
        await wait_for(watcher, {"ns_b": b"b1", "ns_c": b"c1"})
        assert watcher.view.generation > generation
        assert watcher.view.values["ns_c"].revision > 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_empty_snapshot_is_complete(running: DesiredStateWatcher) -> None:
    await wait_for(running, {})


async def test_deleted_keys_are_not_in_the_snapshot(
    admin_nc: NatsClient, desired: KeyValue, device_id: str
) -> None:
    await desired.put(desired_state_key(device_id, "gone"), b"x")
    await desired.delete(desired_state_key(device_id, "gone"))
    await desired.put(desired_state_key(device_id, "kept"), b"y")
    watcher = DesiredStateWatcher(admin_nc, device_id)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        await wait_for(watcher, {"kept": b"y"})
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_consumer_deleted_under_it_is_recreated(
    running: DesiredStateWatcher, desired: KeyValue, admin_nc: NatsClient, device_id: str
) -> None:
    await desired.put(desired_state_key(device_id, "app"), b"v1")
    await wait_for(running, {"app": b"v1"})
    sessions = running.sessions
    assert running.consumer_name == device_consumer_name(device_id)
    await admin_nc.jetstream().delete_consumer(kv_stream_name(BUCKET_DESIRED_STATE),
                                               device_consumer_name(device_id))
    await desired.put(desired_state_key(device_id, "app"), b"v2")
    await wait_for(running, {"app": b"v2"})
    assert running.sessions > sessions
    assert running.consumer_name == device_consumer_name(device_id)


async def test_reset_request_resnapshots(
    running: DesiredStateWatcher, desired: KeyValue, device_id: str
) -> None:
    await desired.put(desired_state_key(device_id, "app"), b"v1")
    await wait_for(running, {"app": b"v1"})
    generation = running.view.generation
    sessions = running.sessions
    running.request_reset()
    for _ in range(100):
        if running.sessions > sessions and running.view.complete:
            break
        await asyncio.sleep(0.05)
    assert running.sessions > sessions
    assert running.view.generation > generation
    assert {k: v.value for k, v in running.view.values.items()} == {"app": b"v1"}
