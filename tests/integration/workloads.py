"""Helpers for workload tests: put scores, wait for reported state, look at podman."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.plan import deployment_secrets, leftover_secrets
from harmony_fleet.agent.runtime import LABEL_DEVICE
from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    DeviceInfo,
    Phase,
    desired_state_key,
    device_info_key,
    device_state_key,
)

#: A service that starts at once and stops at once on SIGTERM.
IDLE = "trap 'exit 0' TERM; echo started; while :; do sleep 1 & wait $!; done"


def service(name: str, image: str, script: str = IDLE, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "command": ["sh", "-c"], "args": [script], **extra}


def init(name: str, image: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "command": ["sh", "-c"], "args": [script], **extra}


def policy_toml(
    host_paths: Sequence[tuple[str, bool]] = (), *, privileged_ports: Sequence[int] = (),
    host_ips: Sequence[str] | None = None, userns: str = "auto",
) -> str:
    """A ``[policy]`` section (replaces the local stack's)."""
    rules = ", ".join(f"{{ prefix = {json.dumps(p)}, writable = {str(w).lower()} }}"
                      for p, w in host_paths)
    text = (f"[policy]\nhost_paths = [{rules}]\nprivileged_ports = {list(privileged_ports)}\n"
            f"userns = {json.dumps(userns)}\n")
    if host_ips is not None:
        text += f"host_ips = {json.dumps(list(host_ips))}\n"
    return text


async def put(nc: NatsClient, device: str, deployment: str, value: dict[str, Any] | bytes) -> int:
    kv = await nc.jetstream().key_value(BUCKET_DESIRED_STATE)
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    return await kv.put(desired_state_key(device, deployment), data)


async def delete(nc: NatsClient, device: str, deployment: str) -> None:
    kv = await nc.jetstream().key_value(BUCKET_DESIRED_STATE)
    await kv.delete(desired_state_key(device, deployment))


async def read_state(nc: NatsClient, device: str, deployment: str) -> DeploymentState | None:
    key = device_state_key(device, deployment)
    values = await read_bucket(nc.jetstream(), BUCKET_DEVICE_STATE, key)
    return DeploymentState.model_validate_json(values[key]) if key in values else None


async def wait_state(
    nc: NatsClient, device: str, deployment: str,
    until: Callable[[DeploymentState], bool] | Phase, timeout: float = 30.0,
) -> DeploymentState:
    check = (lambda s: s.phase is until) if isinstance(until, Phase) else until
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: DeploymentState | None = None
    while loop.time() < deadline:
        last = await read_state(nc, device, deployment)
        if last is not None and check(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"state of {device}/{deployment} never matched; last: {last!r}")


def containers(device: str, *filters: str) -> list[dict[str, Any]]:
    args = ["podman", "ps", "--all", "--format", "json", "--filter",
            f"label={LABEL_DEVICE}={device}"]
    for f in filters:
        args += ["--filter", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def by_name(device: str) -> dict[str, dict[str, Any]]:
    return {c["Names"][0]: c for c in containers(device)}


async def sealing_key(nc: NatsClient, device: str, timeout: float = 20.0) -> str:
    """The public sealing key ``device`` published in device-info (waits for it)."""
    key = device_info_key(device)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        values = await read_bucket(nc.jetstream(), BUCKET_DEVICE_INFO, key)
        if key in values:
            published = DeviceInfo.model_validate_json(values[key]).sealing_key
            if published:
                return published
        await asyncio.sleep(0.1)
    raise AssertionError(f"{device} published no sealing key within {timeout}s")


def podman_secrets(device: str, deployment: str | None = None) -> list[str]:
    """The podman secrets the agent of ``device`` holds (of one deployment, or all)."""
    out = subprocess.run(["podman", "secret", "ls", "--noheading", "--format", "{{.Name}}"],
                         capture_output=True, text=True, check=True)
    names = out.stdout.split()
    if deployment is not None:
        return deployment_secrets(device, deployment, names)
    return leftover_secrets(device, names, known=())


class StateRecorder:
    """Every state report of one deployment, as the bucket gets it, with its arrival time
    (``time.monotonic()``): a KV watch, so no report is missed between two polls."""

    def __init__(self, nc: NatsClient, device: str, deployment: str) -> None:
        self._nc = nc
        self._key = device_state_key(device, deployment)
        self.seen: list[tuple[float, DeploymentState]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StateRecorder:
        kv = await self._nc.jetstream().key_value(BUCKET_DEVICE_STATE)
        watcher = await kv.watch(self._key, ignore_deletes=True)

        async def follow() -> None:
            try:
                async for entry in watcher:
                    if entry is not None and entry.value:
                        state = DeploymentState.model_validate_json(entry.value)
                        self.seen.append((time.monotonic(), state))
                        self._arrived.set()
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]

        self._task = asyncio.create_task(follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait(
        self, until: Callable[[DeploymentState], bool], *, after: float = 0.0,
        timeout: float = 30.0,
    ) -> tuple[float, DeploymentState]:
        """The first report that arrived after ``after`` (monotonic) and matches ``until``."""
        deadline = time.monotonic() + timeout
        while True:
            for arrived, state in self.seen:
                if arrived > after and until(state):
                    return arrived, state
            left = deadline - time.monotonic()
            if left <= 0:
                last = self.seen[-1][1] if self.seen else None
                raise AssertionError(f"no matching state report within {timeout}s; last: {last!r}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def phases(self, after: float = 0.0) -> list[Phase]:
        return [state.phase for arrived, state in self.seen if arrived > after]
