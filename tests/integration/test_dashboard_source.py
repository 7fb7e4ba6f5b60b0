"""The dashboard's bucket watches (``fleet dashboard``'s source) against a real nats-server:
they follow changes, record unreadable entries without stopping, and converge again after
nats-server is killed with -9 and started again (deletions made meanwhile included)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harmony_fleet.bus import connect, drain
from harmony_fleet.contracts import BUCKET_DEVICE_INFO, device_info_key
from harmony_fleet.dashboard.source import BucketSource
from harmony_fleet.localstack.services import start_services
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet_harness.chaos import kill_and_restart
from harmony_fleet_harness.pytest_plugin import unique_device_id
from harmony_fleet_harness.simulate import SimulatedFleet


async def until(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("never true")
        await asyncio.sleep(0.05)


async def test_watches_follow_survive_garbage_and_a_killed_server(tmp_path: Path) -> None:
    services = await asyncio.to_thread(start_services, tmp_path / "stack", auth="dev")
    stack = LocalStack(tmp_path / "stack", services, owns_server=True)
    stop = asyncio.Event()
    try:
        await stack.ensure_buckets()
        admin = await stack.admin_connect("dashboard-source-test")
        sources: list[BucketSource] = []

        async def reconnected() -> None:  # as fleet dashboard wires it
            await sources[0].reconnected()

        reader = await connect(stack.admin_settings(connect_attempts=3), name="dashboard",
                               reconnected_cb=reconnected)
        source = BucketSource(reader)
        sources.append(source)
        tasks = [asyncio.create_task(t) for t in source.tasks(stop).values()]
        await source.wait_ready()
        a, b, c = (unique_device_id(f"src-{n}") for n in "abc")
        fleet = SimulatedFleet(admin, {a: {"site": "x"}, b: {"site": "x"}, c: {"site": "y"}})
        await fleet.publish_info([a, b])
        await fleet.heartbeat([a, b])
        await until(lambda: {a, b} <= set(source.infos) and {a, b} <= set(source.heartbeats))

        # an entry no reader can parse: recorded as a problem, the rest goes on
        kv = await admin.jetstream().key_value(BUCKET_DEVICE_INFO)
        await kv.put(device_info_key(unique_device_id("garbage")), b"{not json")
        await until(lambda: any("garbage" in p for p in source.problems.values()))
        assert source.snapshot().problems

        await kill_and_restart(services.server)
        # after the restart: one device goes, another comes
        await until(lambda: admin.is_connected, 20)
        await kv.delete(device_info_key(b))
        await fleet.publish_info([c])
        restarted = time.monotonic()
        await until(lambda: b not in source.infos and c in source.infos, 30)
        print(f"the dashboard's watches converged {time.monotonic() - restarted:.2f}s after "
              "the restart")
        assert a in source.infos
        for task in tasks:
            assert not task.done(), task
        await drain(admin)
    finally:
        stop.set()
        await asyncio.sleep(1.2)  # the watches see the stop flag within a second
        if "reader" in locals():
            await drain(reader)
        await stack.down()
