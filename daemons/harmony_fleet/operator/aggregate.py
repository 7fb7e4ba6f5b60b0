"""Pure aggregation: device-state entries -> a Deployment's status, and Device CRs from reports.

A device counts as ``succeeded`` when it reports ``Running`` for the Deployment's *current*
score (spec hash), ``failed`` when it reports ``Failed`` for it, and ``pending`` otherwise
(no report yet, an older score, or a phase on the way). ``lastError`` is the newest failure
message (``<device>: <message>``). With secrets each device's score (and hash) is its own, and
a device the operator cannot seal to (no published key) counts as failed with that reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from harmony_fleet.contracts import (
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    Phase,
)
from harmony_fleet.contracts.crd import (
    API_VERSION,
    GROUP,
    Aggregate,
    Condition,
    DeploymentStatus,
    RolloutStatus,
    RolloutStrategy,
)
from harmony_fleet.planning import device_online
from harmony_fleet.rollout import RolloutMemory, RolloutStep

__all__ = [
    "RESUME_ANNOTATION",
    "aggregate",
    "deployment_status",
    "device_body",
    "device_online",
    "device_status",
    "memory_from_status",
    "rollout_status",
    "same_status",
    "status_patch",
]

READY = "Ready"
VALID = "Valid"
ROLLOUT_PAUSED = "RolloutPaused"
#: A new value of this annotation on a Deployment resumes a rollout the operator paused
#: (``kubectl annotate deployment.fleet.nationtech.io web fleet.nationtech.io/resume-rollout=2
#: --overwrite``).
RESUME_ANNOTATION = f"{GROUP}/resume-rollout"


def aggregate(
    matched: Sequence[str], states: Mapping[str, DeploymentState],
    spec_hash: str | Mapping[str, str] | None, blocked: Mapping[str, str] | None = None,
) -> Aggregate:
    """``spec_hash``: the current score's hash, or device -> hash when each device's differs;
    ``blocked``: device -> why the operator could not give it the Deployment."""
    succeeded = failed = 0
    last_error: tuple[datetime, str] | None = None
    first_blocked: str | None = None
    for device in matched:
        if blocked and device in blocked:
            failed += 1
            first_blocked = first_blocked or f"{device}: {blocked[device]}"
            continue
        state = states.get(device)
        expected = spec_hash.get(device) if isinstance(spec_hash, Mapping) else spec_hash
        if state is None or state.spec_hash != expected:
            continue
        if state.phase is Phase.RUNNING:
            succeeded += 1
        elif state.phase is Phase.FAILED:
            failed += 1
            if last_error is None or state.updated_at > last_error[0]:
                last_error = (state.updated_at, f"{device}: {state.message}")
    return Aggregate(
        matched_device_count=len(matched), succeeded=succeeded, failed=failed,
        pending=len(matched) - succeeded - failed,
        last_error=last_error[1] if last_error else first_blocked,
    )


def _condition(kind: str, ok: bool, reason: str, message: str, *,
               previous: Sequence[Condition], now: datetime) -> Condition:
    status = "True" if ok else "False"
    before = next((c for c in previous if c.type == kind), None)
    changed = before is None or before.status != status
    return Condition(
        type=kind, status=status, reason=reason, message=message,
        last_transition_time=now if changed or before is None else before.last_transition_time,
    )


def rollout_status(strategy: RolloutStrategy, step: RolloutStep) -> RolloutStatus:
    """``status.rollout`` from a rollout step (its memory included, for the next leader)."""
    mem = step.memory
    return RolloutStatus(
        strategy=strategy, revision=mem.revision, phase=step.phase.value,
        current_batch=mem.batch, total_batches=step.total_batches, batch_size=mem.batch_size,
        batch_updated=step.batch_updated, batch_succeeded=step.batch_succeeded,
        batch_failed=step.batch_failed, batch_pending=step.batch_pending,
        updated=step.updated, pause_reason=step.pause_reason.value if step.pause_reason else None,
        message=step.message, failing_devices=step.failing_devices,
        batch_start_updated=mem.batch_start_updated, batch_start_failed=mem.batch_start_failed,
        acknowledged_failures=mem.acknowledged_failures, accepted_batch=mem.accepted_batch,
        resume_token=mem.resume_token,
        batch_started_at=None if mem.batch_started_at is None
        else datetime.fromtimestamp(mem.batch_started_at, UTC),
        timed_out=len(mem.timed_out), timed_out_devices=list(mem.timed_out),
        timed_out_batch=mem.timed_out_batch)


def memory_from_status(status: Mapping[str, Any] | None) -> RolloutMemory | None:
    """The rollout memory a status kept (None: none, or unreadable)."""
    raw = (status or {}).get("rollout")
    if not raw:
        return None
    try:
        kept = RolloutStatus.model_validate(raw)
    except ValueError:
        return None
    if not kept.revision:
        return None
    return RolloutMemory(kept.revision, batch=kept.current_batch, batch_size=kept.batch_size,
                         batch_start_updated=kept.batch_start_updated,
                         batch_start_failed=kept.batch_start_failed,
                         acknowledged_failures=kept.acknowledged_failures,
                         accepted_batch=kept.accepted_batch, resume_token=kept.resume_token,
                         batch_started_at=None if kept.batch_started_at is None
                         else kept.batch_started_at.timestamp(),
                         timed_out_batch=kept.timed_out_batch,
                         timed_out=tuple(sorted(kept.timed_out_devices)))


def deployment_status(
    *, generation: int | None, error: str | None, agg: Aggregate | None,
    previous: Sequence[Condition], now: datetime, error_reason: str = "InvalidScore",
    rollout: RolloutStatus | None = None,
) -> DeploymentStatus:
    """The whole status of a Deployment (aggregate, rollout, conditions, observedGeneration).

    ``error_reason`` names the kind of ``error`` (``InvalidScore``, ``InvalidRollout``,
    ``InvalidSelector``, ``SecretUnavailable``). With a ``rollout``, the ``RolloutPaused``
    condition says whether it is paused, why, and which devices failed.
    """
    if error is not None:
        conditions = [
            _condition(VALID, False, error_reason, error, previous=previous, now=now),
            _condition(READY, False, error_reason, "nothing was written", previous=previous,
                       now=now),
        ]
        return DeploymentStatus(observed_generation=generation, aggregate=agg or Aggregate(),
                                conditions=conditions)
    assert agg is not None
    ready = agg.matched_device_count > 0 and agg.succeeded == agg.matched_device_count
    if agg.matched_device_count == 0:
        reason, message = "NoMatchingDevices", "the selector matches no device"
    elif ready:
        reason, message = "AllRunning", f"{agg.succeeded}/{agg.matched_device_count} running"
    elif agg.failed:
        reason, message = "DevicesFailed", (f"{agg.failed} of {agg.matched_device_count} "
                                            f"failed; last: {agg.last_error}")
    else:
        reason, message = "RollingOut", (f"{agg.succeeded}/{agg.matched_device_count} running, "
                                         f"{agg.pending} pending")
    if rollout is not None and rollout.phase == "Paused" and not ready:
        reason, message = "RolloutPaused", rollout.message
    conditions = [
        _condition(VALID, True, "ScoreValid", "the score is valid", previous=previous, now=now),
        _condition(READY, ready, reason, message, previous=previous, now=now),
    ]
    if rollout is not None:
        paused = rollout.phase == "Paused"
        conditions.append(_condition(
            ROLLOUT_PAUSED, paused, rollout.pause_reason or "NotPaused",
            rollout.message if paused else f"batch {rollout.current_batch} of "
            f"{rollout.total_batches}: {rollout.phase}", previous=previous, now=now))
    return DeploymentStatus(observed_generation=generation, aggregate=agg, rollout=rollout,
                            conditions=conditions)


def status_patch(status: DeploymentStatus) -> dict[str, Any]:
    """A merge patch: absent keys are kept by the server, so a cleared lastError is an
    explicit null."""
    doc = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["aggregate"].setdefault("lastError", None)
    return {"status": doc}


def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """Equal apart from condition transition times (which only move on a status change)."""
    def strip(doc: Mapping[str, Any] | None) -> Any:
        if not doc:
            return None
        out = dict(doc)
        out["aggregate"] = {k: v for k, v in (doc.get("aggregate") or {}).items()
                            if v is not None}
        out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                             for c in doc.get("conditions") or []]
        return out
    return bool(strip(a) == strip(b))


# ---------------------------------------------------------------------------- devices


def device_body(info: DeviceInfo) -> dict[str, Any]:
    """The Device CR the operator keeps for ``info`` (metadata.labels + spec.inventory)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Device",
        "metadata": {"name": info.device_id, "labels": dict(info.labels)},
        "spec": {"inventory": info.inventory.model_dump(mode="json")},
    }


def device_status(
    info: DeviceInfo | None, heartbeat: Heartbeat | None, now: datetime,
    offline_after: timedelta,
) -> dict[str, Any]:
    status: dict[str, Any] = {"online": device_online(heartbeat, now, offline_after)}
    if heartbeat is not None:
        status["lastSeen"] = heartbeat.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if info is not None:
        status["agentVersion"] = info.agent_version
    return status
