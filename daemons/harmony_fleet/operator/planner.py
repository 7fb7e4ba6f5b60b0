"""Pure planning for the operator: Deployments x Devices -> desired-state keys, and the diff.

``plan_desired_state`` says what the ``desired-state`` bucket should hold for the Deployments
the operator manages; ``diff_desired_state`` compares that with what the bucket holds and
returns only the difference. Keys of deployment tokens the operator does not manage (e.g.
written by the ``fleet_deployment`` Ansible module) are never touched.

Rollouts: every Deployment's targets pass through :func:`rollout_targets`, which today
implements ``AllAtOnce``. A batched strategy (batch size, max unavailable, failure threshold)
plugs in there: it receives the matching devices and their reported states and returns the
subset that should hold the new score now; the rest of the planner does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harmony_fleet.contracts import (
    PodmanScore,
    desired_state_key,
    parse_desired_state_key,
)
from harmony_fleet.contracts.crd import LabelSelector, Rollout
from harmony_fleet.planning import matching_devices, same_value, score_bytes


@dataclass(frozen=True)
class DeploymentView:
    """What the planner needs of a Deployment resource."""

    token: str  # <namespace>_<name>
    selector: LabelSelector
    score: PodmanScore | None  # None: invalid, see ``error``
    rollout: Rollout = field(default_factory=Rollout)
    error: str | None = None
    deleting: bool = False  # deletionTimestamp set: its keys must go

    @property
    def value(self) -> bytes | None:
        return score_bytes(self.score) if self.score is not None else None


def rollout_targets(view: DeploymentView, matching: list[str]) -> list[str]:
    """The devices that should hold ``view``'s score now.

    ``AllAtOnce`` (the only strategy the CRD accepts today) targets every matching device.
    A batched strategy would also take the devices' reported states and return a subset.
    """
    return matching


def plan_desired_state(
    deployments: Iterable[DeploymentView], device_labels: Mapping[str, Mapping[str, str]],
) -> tuple[dict[str, bytes], dict[str, list[str]], set[str]]:
    """Return ``(plan, matched, managed)``.

    * ``plan``: key -> value for every key that should exist;
    * ``matched``: token -> the devices its selector matches (for aggregation);
    * ``managed``: the tokens whose keys the operator owns now. An invalid Deployment is not
      managed (its existing keys are left as they are: the last valid score keeps running)
      unless it is being deleted.
    """
    plan: dict[str, bytes] = {}
    matched: dict[str, list[str]] = {}
    managed: set[str] = set()
    for view in deployments:
        if view.deleting:
            managed.add(view.token)
            matched[view.token] = []
            continue
        if view.value is None:
            continue
        managed.add(view.token)
        devices = matching_devices(view.selector, device_labels)
        matched[view.token] = devices
        for device in rollout_targets(view, devices):
            plan[desired_state_key(device, view.token)] = view.value
    return plan, matched, managed


@dataclass
class DesiredDiff:
    put: dict[str, bytes] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.put or self.delete)


def diff_desired_state(
    plan: Mapping[str, bytes], current: Mapping[str, bytes], managed: set[str]
) -> DesiredDiff:
    """Only the difference: new or changed keys to put, stale keys of managed tokens to delete."""
    diff = DesiredDiff()
    for key, value in plan.items():
        if not same_value(current.get(key), value):
            diff.put[key] = value
    for key in current:
        if key in plan:
            continue
        try:
            token = parse_desired_state_key(key).deployment
        except ValueError:
            continue  # not ours to judge
        if token in managed:
            diff.delete.append(key)
    diff.delete.sort()
    return diff
