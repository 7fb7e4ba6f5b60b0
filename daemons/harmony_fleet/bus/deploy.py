"""Ansible as the control plane: write (or remove) one deployment's desired-state keys.

The same contract the operator follows: one key ``<device>.<namespace>_<name>`` per targeted
device holding the score; keys of devices no longer targeted are deleted; unchanged values are
not rewritten. Targets are an explicit device list or a label selector evaluated against the
``device-info`` bucket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client as NatsClient

from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    Phase,
    PodmanScore,
    desired_state_key,
    device_state_key,
    parse_desired_state_key,
    validate_device_id,
)
from harmony_fleet.contracts.crd import LabelSelector
from harmony_fleet.planning import KeyPlan, matching_devices, plan_desired_keys, score_bytes

from .fleetview import read_fleet
from .kv import read_bucket


async def current_keys(nc: NatsClient, token: str) -> dict[str, bytes]:
    """device -> value of every existing desired-state key of deployment ``token``."""
    values = await read_bucket(nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
    return {parse_desired_state_key(k).device_id: v for k, v in values.items()}


async def resolve_targets(
    nc: NatsClient, devices: Sequence[str] | None, selector: LabelSelector | None
) -> list[str]:
    if devices is not None:
        return sorted({validate_device_id(d) for d in devices})
    assert selector is not None
    view = await read_fleet(nc.jetstream())
    return matching_devices(selector, {d: v.info.labels for d, v in view.devices.items()})


async def apply_desired_state(
    nc: NatsClient, token: str, score: PodmanScore | None, targets: Sequence[str],
    *, check_mode: bool = False,
) -> tuple[KeyPlan, dict[str, bytes]]:
    """Converge the keys of ``token``; return the plan and the values before."""
    before = await current_keys(nc, token)
    plan = plan_desired_keys(targets, score_bytes(score) if score else None, before)
    if not check_mode:
        kv = await nc.jetstream().key_value(BUCKET_DESIRED_STATE)
        for device, value in plan.put.items():
            await kv.put(desired_state_key(device, token), value)
        for device in plan.delete:
            await kv.delete(desired_state_key(device, token))
    return plan, before


async def read_states(nc: NatsClient, token: str, devices: Sequence[str]) -> dict[str, DeploymentState]:
    values = await read_bucket(nc.jetstream(), BUCKET_DEVICE_STATE, f"state.*.{token}")
    states = {}
    for device in devices:
        raw = values.get(device_state_key(device, token))
        if raw is not None:
            states[device] = DeploymentState.model_validate_json(raw)
    return states


async def wait_for_rollout(
    nc: NatsClient, token: str, devices: Sequence[str], spec_hash: str | None, timeout: float,
    *, removed: bool = False,
) -> tuple[bool, dict[str, DeploymentState]]:
    """Wait until every device reports Running for ``spec_hash`` (or Removed), or any Failed.

    Returns ``(ok, states)``; ``ok`` is False on a failure or the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        states = await read_states(nc, token, devices)
        if removed:
            done = all(s.phase is Phase.REMOVED for d, s in states.items())
            if done:
                return True, states
        else:
            current = {d: s for d, s in states.items() if s.spec_hash == spec_hash}
            if any(s.phase is Phase.FAILED for s in current.values()):
                return False, states
            if len(current) == len(devices) and all(
                s.phase is Phase.RUNNING for s in current.values()
            ):
                return True, states
        if time.monotonic() >= deadline:
            return False, states
        await asyncio.sleep(0.2)


def state_summary(states: dict[str, DeploymentState]) -> dict[str, Any]:
    return {d: {"phase": s.phase.value, "message": s.message, "spec_hash": s.spec_hash}
            for d, s in sorted(states.items())}
