"""Pure aggregation: device-state entries -> a Deployment's status, and Device CRs from reports.

A device counts as ``succeeded`` when it reports ``Running`` for the Deployment's *current*
score (spec hash), ``failed`` when it reports ``Failed`` for it, and ``pending`` otherwise
(no report yet, an older score, or a phase on the way). ``lastError`` is the newest failure
message (``<device>: <message>``).
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
from harmony_fleet.contracts.crd import Aggregate, Condition, DeploymentStatus
from harmony_fleet.planning import device_online

__all__ = ["aggregate", "deployment_status", "device_body", "device_online", "device_status",
           "same_status", "status_patch"]

READY = "Ready"
VALID = "Valid"


def aggregate(
    matched: Sequence[str], states: Mapping[str, DeploymentState], spec_hash: str | None,
) -> Aggregate:
    succeeded = failed = 0
    last_error: tuple[datetime, str] | None = None
    for device in matched:
        state = states.get(device)
        if state is None or state.spec_hash != spec_hash:
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
        last_error=last_error[1] if last_error else None,
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


def deployment_status(
    *, generation: int | None, error: str | None, agg: Aggregate | None,
    previous: Sequence[Condition], now: datetime,
) -> DeploymentStatus:
    """The whole status of a Deployment (aggregate, conditions, observedGeneration)."""
    if error is not None:
        conditions = [
            _condition(VALID, False, "InvalidScore", error, previous=previous, now=now),
            _condition(READY, False, "InvalidScore", "nothing was written", previous=previous,
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
    conditions = [
        _condition(VALID, True, "ScoreValid", "the score is valid", previous=previous, now=now),
        _condition(READY, ready, reason, message, previous=previous, now=now),
    ]
    return DeploymentStatus(observed_generation=generation, aggregate=agg, conditions=conditions)


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
        "apiVersion": "fleet.nationtech.io/v1alpha1",
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
