"""``supervise``: root tasks, the stop flag, and a shutdown that lets cleanup finish."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from harmony_fleet.daemon import DaemonExit, supervise


async def _cleans_up(stop: asyncio.Event, cleanup_s: float, done: list[str], name: str) -> None:
    try:
        await stop.wait()
    finally:
        await asyncio.sleep(cleanup_s)  # draining a subscription, closing a connection...
        done.append(name)


async def test_with_a_grace_period_cleanup_is_not_cancelled() -> None:
    stop, done = asyncio.Event(), []
    runner = asyncio.create_task(supervise(
        {"a": _cleans_up(stop, 0.2, done, "a"), "b": _cleans_up(stop, 0.1, done, "b")},
        stop, shutdown_timeout=1, grace_s=2))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(runner, 3)
    assert sorted(done) == ["a", "b"]


async def test_without_a_grace_period_a_slow_cleanup_is_cancelled() -> None:
    stop, done = asyncio.Event(), []

    async def first_ends() -> None:
        await asyncio.sleep(0.05)

    async def slow(stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(5)
        done.append("slow")

    await asyncio.wait_for(supervise({"first": first_ends(), "slow": slow(stop)}, stop,
                                     shutdown_timeout=1), 3)
    assert done == []
    assert stop.is_set()


async def test_a_task_that_ignores_stop_is_cancelled_after_the_grace_period() -> None:
    stop = asyncio.Event()

    async def deaf() -> None:
        await asyncio.sleep(60)

    runner = asyncio.create_task(supervise({"deaf": deaf()}, stop, shutdown_timeout=1,
                                           grace_s=0.2))
    await asyncio.sleep(0.05)
    stop.set()
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(runner, 3)
    assert 0.15 < asyncio.get_running_loop().time() - started < 1.5


async def test_failures_while_stopping_are_raised_and_retrieved(
        caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def fails_on_the_way_out(message: str) -> None:
        await stop.wait()
        await asyncio.sleep(0.05)  # while supervise waits out the grace period
        raise RuntimeError(message)

    loop = asyncio.get_running_loop()
    unretrieved: list[object] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    runner = asyncio.create_task(supervise(
        {"x": fails_on_the_way_out("x"), "y": fails_on_the_way_out("y")}, stop,
        shutdown_timeout=1, grace_s=1))
    await asyncio.sleep(0.01)
    stop.set()
    with pytest.raises(RuntimeError, match=r"^[xy]$"):
        await asyncio.wait_for(runner, 3)
    del runner
    gc.collect()
    await asyncio.sleep(0)
    assert unretrieved == []  # both failures were retrieved, none "never retrieved"
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 2
    assert all("while stopping" in m for m in failed)


async def test_a_daemon_exit_is_raised_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def refuses() -> None:
        raise DaemonExit("cannot read the seed file /x")

    with pytest.raises(DaemonExit):
        await supervise({"r": refuses()}, stop, shutdown_timeout=1, grace_s=1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
