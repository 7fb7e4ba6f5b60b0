"""Helpers for workload tests: put scores, wait for reported state, look at podman."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.runtime import LABEL_DEVICE
from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    Phase,
    desired_state_key,
    device_state_key,
)

#: A service that starts at once and stops at once on SIGTERM.
IDLE = "trap 'exit 0' TERM; echo started; while :; do sleep 1 & wait $!; done"


def service(name: str, image: str, script: str = IDLE, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "command": ["sh", "-c"], "args": [script], **extra}


def init(name: str, image: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "command": ["sh", "-c"], "args": [script], **extra}


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
