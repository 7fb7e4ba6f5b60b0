"""Pure control-plane logic shared by the operator and the ``fleet_deployment`` module.

* :func:`selector_matches` — Kubernetes LabelSelector semantics over device labels;
* :func:`device_online` — liveness from the last heartbeat;
* :func:`plan_desired_keys` — which ``desired-state`` keys to put, keep or delete so that
  exactly the targeted devices hold a deployment's score, touching nothing that is already
  right (an unchanged value is never rewritten: a rewrite would bump the revision and make
  agents look again for nothing).

No I/O: inputs are plain values, outputs are plain values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from harmony_fleet.contracts import Heartbeat, PodmanScore, canonical_json
from harmony_fleet.contracts.crd import LabelSelector, SelectorOperator


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """``matchLabels`` AND every requirement; the empty selector matches everything."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator is SelectorOperator.IN and (not present or labels[req.key] not in req.values):
            return False
        if req.operator is SelectorOperator.NOT_IN and present and labels[req.key] in req.values:
            return False
        if req.operator is SelectorOperator.EXISTS and not present:
            return False
        if req.operator is SelectorOperator.DOES_NOT_EXIST and present:
            return False
    return True


def device_online(heartbeat: Heartbeat | None, now: datetime, offline_after: timedelta) -> bool:
    """Online: a heartbeat no older than ``offline_after``."""
    return heartbeat is not None and now - heartbeat.timestamp <= offline_after


def matching_devices(
    selector: LabelSelector, device_labels: Mapping[str, Mapping[str, str]]
) -> list[str]:
    return sorted(d for d, labels in device_labels.items() if selector_matches(selector, labels))


def score_bytes(score: PodmanScore) -> bytes:
    """The desired-state value written for a score: canonical JSON, so equal scores are equal bytes."""
    return canonical_json(score.model_dump(mode="json"))


def same_value(current: bytes | None, wanted: bytes) -> bool:
    """Compare by meaning (JSON), not by bytes: another writer may format differently."""
    if current is None:
        return False
    if current == wanted:
        return True
    try:
        return bool(json.loads(current) == json.loads(wanted))
    except (ValueError, RecursionError):  # unreadable: different, so it gets overwritten
        return False


@dataclass
class KeyPlan:
    put: dict[str, bytes] = field(default_factory=dict)  # device -> value (new or changed)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.put or self.delete)


def plan_desired_keys(
    targets: Iterable[str], value: bytes | None, current: Mapping[str, bytes]
) -> KeyPlan:
    """Make exactly ``targets`` hold ``value`` (``None``: the deployment is being removed).

    ``current`` is device -> value of this deployment's existing keys.
    """
    plan = KeyPlan()
    wanted = set(targets) if value is not None else set()
    for device in sorted(wanted):
        existing = current.get(device)
        assert value is not None
        if same_value(existing, value):
            plan.unchanged.append(device)
        else:
            plan.put[device] = value
            (plan.updated if existing is not None else plan.created).append(device)
    plan.delete = sorted(set(current) - wanted)
    return plan
