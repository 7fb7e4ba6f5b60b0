"""Ansible as the control plane: write (or remove) one deployment's desired-state keys.

The same contract the operator follows: one key ``<device>.<namespace>_<name>`` per targeted
device holding the score; keys of devices no longer targeted are deleted; unchanged values are
not rewritten. Targets are an explicit device list or a label selector evaluated against the
``device-info`` bucket. Secrets are sealed per device to the key each agent publishes in
``device-info``, so each device's value is its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from harmony_fleet.bus.kv import KVEntry, delete_entry, put_entry, read_bucket, read_entries
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    DeviceInfo,
    Phase,
    PodmanScore,
    desired_state_key,
    device_state_key,
    parse_desired_state_key,
    parse_device_info_key,
    validate_device_id,
)
from harmony_fleet.contracts.crd import LabelSelector, Rollout
from harmony_fleet.planning import KeyPlan, matching_devices, plan_desired_keys, same_value
from harmony_fleet.rollout import Outcome, RolloutMemory, RolloutStep, plan_rollout

from .fleetview import read_fleet


async def current_entries(nc: NatsClient, token: str) -> dict[str, KVEntry]:
    """device -> value and revision of every existing desired-state key of ``token``."""
    entries = await read_entries(nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
    return {parse_desired_state_key(k).device_id: e for k, e in entries.items()
            if e.value is not None}


async def resolve_targets(
    nc: NatsClient, devices: Sequence[str] | None, selector: LabelSelector | None
) -> list[str]:
    if devices is not None:
        return sorted({validate_device_id(d) for d in devices})
    assert selector is not None
    view = await read_fleet(nc.jetstream())
    return matching_devices(selector, {d: v.info.labels for d, v in view.devices.items()})


async def sealing_keys(nc: NatsClient, devices: Sequence[str]) -> dict[str, str | None]:
    """device -> the public sealing key it published (None: none, or no readable device-info)."""
    values = await read_bucket(nc.jetstream(), BUCKET_DEVICE_INFO)
    keys: dict[str, str | None] = dict.fromkeys(devices)
    for key, raw in values.items():
        try:
            device = parse_device_info_key(key)
            if device in keys:
                keys[device] = DeviceInfo.model_validate_json(raw).sealing_key
        except ValueError:  # a malformed entry: that device has no usable key
            continue
    return keys


async def apply_desired_state(
    nc: NatsClient, token: str, values: Mapping[str, bytes] | None, targets: Sequence[str],
    *, check_mode: bool = False, keep: Collection[str] = (),
) -> tuple[KeyPlan, dict[str, bytes], dict[str, int]]:
    """Converge the keys of ``token`` to ``values`` (device -> value; None: remove them all);
    return the plan, the values before and the revision each remaining key has now (device
    -> revision: a report about an older revision is about an earlier write). Devices of
    ``keep`` that are not targeted keep what they hold (a batched rollout has not reached
    them yet)."""
    entries = await current_entries(nc, token)
    before = {d: e.value for d, e in entries.items() if e.value is not None}
    plan = plan_desired_keys(targets, values, before)
    if values is not None and keep:
        kept = set(keep)
        plan.delete = [d for d in plan.delete if d not in kept]
    revisions = {d: e.revision for d, e in entries.items()
                 if e.revision is not None and d not in plan.delete}
    if not check_mode:
        js = nc.jetstream()
        for device, value in plan.put.items():
            revisions[device] = await put_entry(js, BUCKET_DESIRED_STATE,
                                                desired_state_key(device, token), value)
        for device in plan.delete:
            await delete_entry(js, BUCKET_DESIRED_STATE, desired_state_key(device, token))
    return plan, before, revisions


async def read_states(nc: NatsClient, token: str, devices: Sequence[str]) -> dict[str, DeploymentState]:
    values = await read_bucket(nc.jetstream(), BUCKET_DEVICE_STATE, f"state.*.{token}")
    states = {}
    for device in devices:
        raw = values.get(device_state_key(device, token))
        if raw is not None:
            with contextlib.suppress(ValidationError):  # the writer validated it; else no report
                states[device] = DeploymentState.model_validate_json(raw)
    return states


#: The label of a device that has reported nothing about the score it was given yet.
WAITING = "Waiting"
#: The order phases are listed in (progress output).
PHASE_ORDER = (WAITING, *(p.value for p in Phase))


@dataclass(frozen=True)
class RolloutProgress:
    """Where a rollout stands: ``done`` once nothing more will come (every device ``Running``,
    or one ``Failed``; for a removal every device ``Removed``), ``ok`` if that is success, and
    how many devices are in each phase (:data:`WAITING`: nothing reported for this score yet)."""

    done: bool
    ok: bool
    counts: dict[str, int]


def reports_on(state: DeploymentState | None, spec_hash: str | None,
               revision: int | None = None) -> bool:
    """Whether ``state`` is a report about the score with ``spec_hash`` as written at
    ``revision`` (None: any write of it). A report about an older revision is about an
    earlier write of the key, such as the same score deleted and written again, and says
    nothing about this one yet; a report without a revision is judged by its hash alone."""
    if state is None or state.spec_hash != spec_hash:
        return False
    return revision is None or state.revision is None or state.revision >= revision


def rollout_progress(
    devices: Sequence[str], spec_hashes: Mapping[str, str], states: Mapping[str, DeploymentState],
    *, removed: bool = False, revisions: Mapping[str, int] | None = None,
) -> RolloutProgress:
    """Judge a rollout from the devices' reports (device -> state). A device counts in its
    reported phase only when the report is about the score it was given (device -> hash; with
    secrets each device's is its own) at the revision it was written with (device ->
    revision, see :func:`reports_on`); for a removal, a device with no report left runs
    nothing and counts as ``Removed``."""
    labels: dict[str, str] = {}
    for device in devices:
        state = states.get(device)
        if removed:
            labels[device] = state.phase.value if state is not None else Phase.REMOVED.value
        elif state is not None and reports_on(state, spec_hashes.get(device),
                                              (revisions or {}).get(device)):
            labels[device] = state.phase.value
        else:
            labels[device] = WAITING
    counts = {phase: n for phase in PHASE_ORDER
              if (n := sum(1 for label in labels.values() if label == phase))}
    if removed:
        ok = all(label == Phase.REMOVED.value for label in labels.values())
        return RolloutProgress(done=ok, ok=ok, counts=counts)
    if Phase.FAILED.value in counts:
        return RolloutProgress(done=True, ok=False, counts=counts)
    ok = all(label == Phase.RUNNING.value for label in labels.values())
    return RolloutProgress(done=ok, ok=ok, counts=counts)


def state_summary(states: Mapping[str, DeploymentState]) -> dict[str, Any]:
    return {d: {"phase": s.phase.value, "message": s.message, "spec_hash": s.spec_hash}
            for d, s in sorted(states.items())}


async def rollout_step(nc: NatsClient, token: str, policy: Rollout, revision: str,
                       values: Mapping[str, bytes], *, memory: Mapping[str, Any] | None
                       ) -> RolloutStep:
    """The shared rollout planner on what the bucket holds and the devices reported;
    ``values``: device -> the value each matching device should end up holding."""
    current = await current_entries(nc, token)
    holders = sorted(d for d, v in values.items()
                     if d in current and same_value(current[d].value, v))
    states = await read_states(nc, token, holders)
    hashes = {d: _spec_hash_of(values[d]) for d in holders}
    outcomes = {}
    for device, state in states.items():
        if not reports_on(state, hashes.get(device), current[device].revision):
            continue
        if state.phase is Phase.RUNNING:
            outcomes[device] = Outcome.SUCCEEDED
        elif state.phase is Phase.FAILED:
            outcomes[device] = Outcome.FAILED
    kept = None
    if memory:
        with contextlib.suppress(TypeError):
            kept = RolloutMemory(**memory)
    return plan_rollout(policy, revision, list(values), set(holders), outcomes, memory=kept,
                        now=time.time())


def _spec_hash_of(value: bytes) -> str | None:
    try:
        return PodmanScore.model_validate_json(value).spec_hash()
    except ValueError:
        return None


def step_document(step: RolloutStep) -> dict[str, Any]:
    """A rollout step as the module returns it (``memory`` is handed back by the next call)."""
    return {
        "phase": step.phase.value,
        "current_batch": step.memory.batch,
        "total_batches": step.total_batches,
        "batch_size": step.memory.batch_size,
        "updated": step.updated,
        "succeeded": step.succeeded,
        "failed": step.failed,
        "pending": step.pending,
        "pause_reason": step.pause_reason.value if step.pause_reason else None,
        "message": step.message,
        "failing_devices": step.failing_devices,
        "timed_out_devices": step.timed_out_devices,
        "memory": asdict(step.memory),
    }
