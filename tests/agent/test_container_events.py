"""The agent's follower of podman's event stream (agent.events.ContainerEvents), against a
stand-in runtime whose event streams end the way a killed ``podman events`` does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from harmony_fleet.agent.events import ContainerEvents, EventStreamSettings
from harmony_fleet.agent.runtime import (
    LABEL_DEPLOYMENT,
    LABEL_DEVICE,
    ContainerEvent,
    ContainerRuntimeError,
)


class Streams:
    """``events()`` plays one script per call, then ends like podman killed under it."""

    def __init__(self, *scripts: list[ContainerEvent]) -> None:
        self.scripts = list(scripts)
        self.calls: list[tuple[str, str, float]] = []

    async def events(self, label: str, value: str, *, since: float
                     ) -> AsyncIterator[ContainerEvent]:
        self.calls.append((label, value, since))
        script = self.scripts.pop(0) if self.scripts else []
        for item in script:
            yield item
        if not self.scripts and not script:
            await asyncio.Event().wait()  # the last stream stays up
        raise ContainerRuntimeError("podman events exited with status -9")


def ev(status: str, deployment: str | None) -> ContainerEvent:
    labels = {LABEL_DEVICE: "pi-1"} | ({LABEL_DEPLOYMENT: deployment} if deployment else {})
    return ContainerEvent("id", "pi-1.x", status, labels)


async def test_streams_are_followed_again_and_each_restart_asks_for_a_full_pass() -> None:
    runtime = Streams([ev("died", "ns_a"), ev("exec", "ns_a"), ev("start", None)],
                      [ev("remove", "ns_b")])
    seen: list[str | None] = []
    first_notice: list[float] = []

    def notify(deployment: str | None) -> None:
        if not first_notice:
            first_notice.append(time.time())
        seen.append(deployment)

    follower = ContainerEvents(runtime, "pi-1", notify,  # type: ignore[arg-type]
                               EventStreamSettings(retry_initial_s=0.01, retry_max_s=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    for _ in range(200):
        if follower.streams == 3:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert follower.streams == 3
    # each stream starts with a full pass (None), then the deployments its events touched
    assert seen == [None, "ns_a", None, "ns_b", None]
    assert [(label, value) for label, value, _ in runtime.calls] == [(LABEL_DEVICE, "pi-1")] * 3
    assert runtime.calls[0][2] <= first_notice[0]  # events from before the full pass replayed


async def test_stop_ends_a_stream_that_is_up() -> None:
    runtime = Streams([])
    follower = ContainerEvents(runtime, "pi-1", lambda _: None)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert follower.streams == 1


async def test_every_attempt_to_follow_again_is_logged_and_numbered(
    caplog: pytest.LogCaptureFixture
) -> None:
    # six streams that end after one event, then one that stays up
    runtime = Streams(*[[ev("died", "ns_a")] for _ in range(6)])
    follower = ContainerEvents(runtime, "pi-1", lambda _: None,  # type: ignore[arg-type]
                               EventStreamSettings(retry_initial_s=0.01, retry_max_s=0.04))
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    for _ in range(300):
        if follower.streams == 7:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    attempts = [r.getMessage() for r in caplog.records if "podman events stopped" in r.getMessage()]
    assert len(attempts) == 6
    assert "attempt #1 " in attempts[0]
    assert "attempt #6 " in attempts[5]
    assert "status -9" in attempts[0]
