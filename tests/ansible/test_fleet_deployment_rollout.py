"""harmony.fleet.fleet_deployment with a Batched rollout, under ``wait``, to SIMULATED devices.

The stack is ``fleet stack up`` (real nats-server, callout, writer); 40 devices are simulated
(harmony_fleet_harness.simulate: their reports are written to the buckets directly), so a
batch's outcome is whatever the test injects. The real-agent path of the module is covered by
test_fleet_deployment.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.bus import drain
from harmony_fleet.bus.connection import connect
from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.contracts import BUCKET_DESIRED_STATE
from harmony_fleet_harness.simulate import SimulatedFleet

from .conftest import CliStack, task_results, write_play

SCORE = {"services": [{"name": "web", "image": "localhost/fleet-busybox:latest"}]}


@pytest.fixture
async def admin(cli_stack: CliStack) -> AsyncIterator[NatsClient]:
    nc = await connect(NatsSettings.model_validate(cli_stack.state["connection"]),
                       name="pytest-rollout")
    try:
        yield nc
    finally:
        await drain(nc)


def task(site: str, **rollout: Any) -> dict[str, Any]:
    return {"name": "deploy", "harmony.fleet.fleet_deployment": {
        "name": "batched", "namespace": site, "selector": {"matchLabels": {"site": site}},
        "score": SCORE, "wait": True, "wait_timeout": 60,
        "rollout": {"strategy": "Batched", **rollout}}}


async def test_batches_stop_at_the_failure_threshold(
    cli_stack: CliStack, admin: NatsClient, tmp_path: Path
) -> None:
    site = f"{cli_stack.prefix}-roll"
    devices = {f"{site}-{i:02d}": {"site": site} for i in range(40)}
    ordered = sorted(devices)
    fleet = SimulatedFleet(admin, devices)
    fleet.failing = {ordered[15]}  # in the second batch of 10
    await fleet.publish_info()
    stop = asyncio.Event()
    runtime = asyncio.create_task(fleet.run_runtime(stop))
    token = f"{site}_batched"
    try:
        play = write_play(tmp_path, [task(site, batch_size=10)], "first.yml")
        res = task_results(await asyncio.to_thread(cli_stack.playbook, play), "deploy")
        assert res["failed"] is True
        assert "FailureThresholdExceeded" in res["msg"]
        assert ordered[15] in res["msg"]
        assert res["rollout"]["current_batch"] == 2
        assert res["rollout"]["failing_devices"] == [ordered[15]]
        assert "memory" not in res["rollout"]
        held = await read_bucket(admin.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
        assert set(held) == {f"{d}.{token}" for d in ordered[:20]}  # nothing past batch 2

        # tolerating one failure, the same task goes on batch by batch to the end
        play = write_play(tmp_path, [task(site, batch_percent=25, max_failures=1)], "next.yml")
        res = task_results(await asyncio.to_thread(cli_stack.playbook, play), "deploy")
        assert res.get("failed") is not True, res
        assert res["rollout"]["phase"] == "Complete"
        assert res["rollout"]["updated"] == 40
        assert res["rolled_out"] is False  # one device failed
        assert res["states"][ordered[15]]["phase"] == "Failed"
        held = await read_bucket(admin.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
        assert len(held) == 40
    finally:
        stop.set()
        await runtime


async def test_an_offline_device_times_out_its_batch(
    cli_stack: CliStack, admin: NatsClient, tmp_path: Path
) -> None:
    """Batches of 5, 2 s each, no failure tolerated: a device of the first batch never
    answers, so at 2 s it times out, the task fails naming it, and nothing is written past
    that batch. Tolerating one failure, the task goes through to the end (the device's key
    waits for it)."""
    site = f"{cli_stack.prefix}-tmo"
    devices = {f"{site}-{i:02d}": {"site": site} for i in range(10)}
    ordered = sorted(devices)
    fleet = SimulatedFleet(admin, devices)
    fleet.silent = {ordered[2]}
    await fleet.publish_info()
    stop = asyncio.Event()
    runtime = asyncio.create_task(fleet.run_runtime(stop))
    token = f"{site}_batched"
    try:
        play = write_play(tmp_path, [task(site, batch_size=5, batch_timeout_seconds=2)],
                          "first.yml")
        res = task_results(await asyncio.to_thread(cli_stack.playbook, play), "deploy")
        assert res["failed"] is True
        assert "FailureThresholdExceeded" in res["msg"]
        assert ordered[2] in res["msg"]
        assert res["rollout"]["timed_out_devices"] == [ordered[2]]
        assert res["rollout"]["failed"] == 1
        held = await read_bucket(admin.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
        assert set(held) == {f"{d}.{token}" for d in ordered[:5]}

        play = write_play(tmp_path, [task(site, batch_size=5, batch_timeout_seconds=2,
                                          max_failures=1)], "next.yml")
        res = task_results(await asyncio.to_thread(cli_stack.playbook, play), "deploy")
        assert res.get("failed") is not True, res
        assert res["rollout"]["phase"] == "Complete"
        assert res["rollout"]["updated"] == 10
        assert res["rollout"]["timed_out_devices"] == [ordered[2]]
        assert res["rolled_out"] is False
    finally:
        stop.set()
        await runtime


def test_bad_rollout_options_are_refused(cli_stack: CliStack, tmp_path: Path) -> None:
    play = write_play(tmp_path, [task("nowhere", batch_size=0)])
    res = task_results(cli_stack.playbook(play), "deploy")
    assert res["failed"] is True
    assert res["error"] == "InvalidInput"
    assert "batch_size" in res["msg"] or "batchSize" in res["msg"]
    play = write_play(tmp_path, [task("nowhere", batch_size=1, batch_timeout_seconds=0)],
                      "timeout.yml")
    res = task_results(cli_stack.playbook(play), "deploy")
    assert res["failed"] is True
    assert res["error"] == "InvalidInput"
    assert "batch_timeout_seconds" in res["msg"] or "batchTimeoutSeconds" in res["msg"]
