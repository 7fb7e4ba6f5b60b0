"""The operator's bucket views against a real nats-server killed with -9 and started again:
wired as ``fleet-operator`` wires them (the connection's ``reconnected_cb``), they follow the
changes made after the restart within seconds, deletions included, instead of waiting for
nats-py to notice its lost consumers (about 19 s before)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from harmony_fleet.bus import connect, drain
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_INFO,
    desired_state_key,
    device_info_key,
)
from harmony_fleet.localstack.services import start_services
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet.operator.app import FleetOperator
from harmony_fleet.operator.kube import KubeClient, KubeTarget
from harmony_fleet_harness.chaos import kill_and_restart
from harmony_fleet_harness.pytest_plugin import unique_device_id
from harmony_fleet_harness.simulate import SimulatedFleet

#: how soon after the restart the views must have followed (they took about 19 s before)
CONVERGED_WITHIN_S = 10.0


async def until(check: object, timeout: float) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise AssertionError(f"never true within {timeout}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def operator_views(tmp_path: Path, *, buckets: bool = True
                         ) -> AsyncIterator[tuple[LocalStack, FleetOperator, list[asyncio.Task[None]]]]:
    """A stack of its own and an operator's bucket views on it (no lease, no writers), wired
    as run_operator wires them (the connection's ``reconnected_cb``)."""
    services = await asyncio.to_thread(start_services, tmp_path / "stack", auth="dev")
    stack = LocalStack(tmp_path / "stack", services, owns_server=True)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    reader = None
    try:
        if buckets:
            await stack.ensure_buckets()
        operators: list[FleetOperator] = []

        async def reconnected() -> None:
            for each in operators:
                each.reconnected()

        reader = await connect(stack.admin_settings(connect_attempts=3), name="operator-views",
                               reconnected_cb=reconnected)
        operator = FleetOperator(reader, KubeClient(KubeTarget("https://127.0.0.1:1")))
        operators.append(operator)
        for name, work in operator.tasks(stop).items():
            if name.startswith("watch-"):
                tasks.append(asyncio.create_task(work))
            else:
                work.close()
        yield stack, operator, tasks
        for task in tasks:
            assert not task.done(), task
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if reader is not None:
            await drain(reader)
        await stack.down()


async def test_views_follow_a_restarted_server(tmp_path: Path) -> None:
    async with operator_views(tmp_path) as (stack, operator, _tasks):
        admin = await stack.admin_connect("operator-views-test")
        a, b, c = (unique_device_id(f"opv-{n}") for n in "abc")
        fleet = SimulatedFleet(admin, {a: {"site": "x"}, b: {"site": "x"}, c: {"site": "y"}})
        await fleet.publish_info([a, b])
        desired = await admin.jetstream().key_value(BUCKET_DESIRED_STATE)
        await desired.put(desired_state_key(a, "ns_app"), b"{}")
        await until(lambda: {a, b} <= set(operator.view.infos)
                    and desired_state_key(a, "ns_app") in operator.view.desired, 20)

        await kill_and_restart(stack.services.server)
        await until(lambda: admin.is_connected and operator.nc.is_connected, 20)
        # after the restart: a device goes, another comes, a key is deleted
        await fleet.publish_info([c])
        await desired.delete(desired_state_key(a, "ns_app"))
        info = await admin.jetstream().key_value(BUCKET_DEVICE_INFO)
        await info.delete(device_info_key(b))
        took = await until(lambda: c in operator.view.infos and b not in operator.view.infos
                           and desired_state_key(a, "ns_app") not in operator.view.desired, 30)
        print(f"the operator's views followed {took:.2f}s after the restart")
        assert took < CONVERGED_WITHIN_S, took
        assert a in operator.view.infos
        await drain(admin)


async def test_views_outlive_failed_watches_and_buckets_made_late(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Started before the buckets exist (a fresh cluster: the bucket Job has not run yet),
    and with the JetStream API timing out the first reads (what a cluster electing a new stream
    leader answers): the views start their watches again until they work, and the tasks never
    end (the operator used to stop on the first such error)."""
    from harmony_fleet.bus import kv as kvmod
    from harmony_fleet.operator import app as appmod

    real_last_revision = kvmod.last_revision
    timeouts = {"left": 3}

    async def flaky_last_revision(*args: Any, **kwargs: Any) -> int | None:
        if timeouts["left"] > 0:
            timeouts["left"] -= 1
            raise nats.errors.TimeoutError
        return await real_last_revision(*args, **kwargs)

    monkeypatch.setattr(kvmod, "last_revision", flaky_last_revision)
    monkeypatch.setattr(appmod, "WATCH_RETRY_MAX_S", 0.5)
    failures = appmod.WATCH_FAILURES.labels(bucket=BUCKET_DESIRED_STATE)
    failed_before = failures._value.get()
    async with operator_views(tmp_path, buckets=False) as (stack, operator, _tasks):
        await asyncio.sleep(2)  # no bucket yet: the watches fail and wait
        assert not operator._views_ready()
        assert failures._value.get() > failed_before
        await stack.ensure_buckets()
        admin = await stack.admin_connect("operator-views-late")
        device = unique_device_id("opv-late")
        await SimulatedFleet(admin, {device: {"site": "x"}}).publish_info([device])
        desired = await admin.jetstream().key_value(BUCKET_DESIRED_STATE)
        await desired.put(desired_state_key(device, "ns_app"), b"{}")
        took = await until(lambda: operator._views_ready() and device in operator.view.infos
                           and desired_state_key(device, "ns_app") in operator.view.desired, 30)
        print(f"\nviews ready {took:.2f}s after the buckets were made "
              f"({failures._value.get() - failed_before:.0f} failed desired-state watches)")
        assert timeouts["left"] == 0
        await drain(admin)
