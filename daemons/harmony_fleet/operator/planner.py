"""Pure planning for the operator: Deployments x Devices -> desired-state keys, and the diff.

``plan_desired_state`` says what the ``desired-state`` bucket should hold for the Deployments
the operator manages; ``diff_desired_state`` compares that with what the bucket holds and
returns only the difference. Keys of deployment tokens the operator does not manage (e.g.
written by the ``fleet_deployment`` Ansible module) are never touched.

Secrets: a Deployment's ``spec.secrets`` are read from Kubernetes Secrets by the operator (I/O,
outside this module) and handed in as plaintext; the planner seals them to each target
device's published key (:func:`harmony_fleet.planning.seal_for_devices`), so each device's
key holds its own value. Sealing is deterministic: an unchanged secret plans the same bytes
and nothing is rewritten. A matching device that published no key cannot receive the
Deployment: it gets no key (:func:`unsealable_devices` says which, for the status).

Rollouts: every Deployment's targets pass through :func:`rollout_step`, the shared planner of
:mod:`harmony_fleet.rollout`: ``AllAtOnce`` targets every matching device; ``Batched`` targets
the batches started so far, judged from the devices' reports (``states``). A matching device
not targeted yet keeps the value it holds (an older score keeps running until its batch).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harmony_fleet.contracts import (
    DeploymentState,
    Phase,
    ScoreTemplate,
    desired_state_key,
    parse_desired_state_key,
    spec_hash,
)
from harmony_fleet.contracts.crd import LabelSelector, Rollout, RolloutStrategy
from harmony_fleet.planning import (
    SealingCache,
    matching_devices,
    revision_of,
    same_value,
    score_bytes,
    seal_for_devices,
)
from harmony_fleet.rollout import Outcome, RolloutMemory, RolloutStep, plan_rollout

#: Why a matching device gets no key of a Deployment with secrets (shown in its status).
NO_SEALING_KEY = "publishes no sealing key, so the Deployment's secrets cannot be sealed to it"


@dataclass(frozen=True)
class DeploymentView:
    """What the planner needs of a Deployment resource."""

    token: str  # <namespace>_<name>
    selector: LabelSelector
    score: ScoreTemplate | None  # None: invalid, see ``error``
    rollout: Rollout = field(default_factory=Rollout)
    error: str | None = None
    error_reason: str = "InvalidScore"  # the Valid condition's reason when ``error`` is set
    deleting: bool = False  # deletionTimestamp set: its keys must go
    #: spec.secrets resolved from Kubernetes Secrets (name -> plaintext); never shown
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    #: what the last rollout step handed on (from status.rollout after a restart)
    memory: RolloutMemory | None = None
    #: the resume annotation's value (a new value resumes a paused rollout)
    resume_token: str | None = None

    @property
    def revision(self) -> str:
        """Names the score and secrets being rolled out (a change starts a new rollout)."""
        return revision_of(self.score, self.secrets) if self.score is not None else ""

    @property
    def value(self) -> bytes | None:
        """The value every target gets when there are no secrets (None: invalid)."""
        return score_bytes(self.score) if self.score is not None else None


def unsealable_devices(view: DeploymentView, devices: Iterable[str],
                       sealing_keys: Mapping[str, str | None]) -> list[str]:
    """The devices among ``devices`` that cannot receive ``view`` (secrets, but no key)."""
    if not view.secrets:
        return []
    return sorted(d for d in devices if not sealing_keys.get(d))


def device_values(view: DeploymentView, devices: Iterable[str],
                  sealing_keys: Mapping[str, str | None],
                  *, cache: SealingCache | None = None) -> dict[str, bytes]:
    """device -> desired-state value, for the devices that can receive ``view``."""
    if view.score is None:
        return {}
    blocked = set(unsealable_devices(view, devices, sealing_keys))
    targets = [d for d in devices if d not in blocked]
    return seal_for_devices(view.score, view.token, view.secrets, sealing_keys, targets,
                            cache=cache)


def outcomes_of(values: Mapping[str, bytes], states: Mapping[str, DeploymentState]
                ) -> dict[str, Outcome]:
    """device -> what it reported about the value it was given (``values``)."""
    hashes: dict[bytes, str] = {}
    out: dict[str, Outcome] = {}
    for device, value in values.items():
        state = states.get(device)
        if state is None:
            continue
        expected = hashes.get(value)
        if expected is None:
            expected = hashes[value] = spec_hash(json.loads(value))
        if state.spec_hash != expected:
            continue
        if state.phase is Phase.RUNNING:
            out[device] = Outcome.SUCCEEDED
        elif state.phase is Phase.FAILED:
            out[device] = Outcome.FAILED
    return out


class _SameValues:
    """:func:`same_value` remembered per pair of values: a fleet holds a few distinct values
    (the old score, the new one), so a plan of 10,000 devices parses a few, not 20,000."""

    def __init__(self) -> None:
        self._known: dict[tuple[bytes, bytes], bool] = {}

    def __call__(self, current: bytes | None, wanted: bytes) -> bool:
        if current is None:
            return False
        if current == wanted:
            return True
        pair = (current, wanted)
        known = self._known.get(pair)
        if known is None:
            known = self._known[pair] = same_value(current, wanted)
        return known


def rollout_step(view: DeploymentView, matching: list[str], values: Mapping[str, bytes],
                 current: Mapping[str, bytes], states: Mapping[str, DeploymentState],
                 *, now: float | None = None) -> RolloutStep:
    """The rollout planner on what the operator observes: ``values`` (device -> the value it
    should end up holding), ``current`` (desired-state key -> value), ``states`` (device ->
    its report for this Deployment), ``now`` (seconds, for ``batchTimeoutSeconds``)."""
    same = _SameValues()
    holders = {d for d, v in values.items()
               if same(current.get(desired_state_key(d, view.token)), v)}
    return plan_rollout(view.rollout, view.revision, [d for d in matching if d in values],
                        holders, outcomes_of({d: values[d] for d in holders}, states),
                        memory=view.memory, resume_token=view.resume_token, now=now)


def rollout_targets(view: DeploymentView, matching: list[str],
                    current: Mapping[str, bytes] | None = None,
                    states: Mapping[str, DeploymentState] | None = None) -> list[str]:
    """The devices that should hold ``view``'s score now (every matching device for
    ``AllAtOnce``)."""
    if view.rollout.strategy is RolloutStrategy.ALL_AT_ONCE or view.score is None:
        return matching
    values = dict.fromkeys(matching, view.value or b"")
    return rollout_step(view, matching, values, current or {}, states or {}).targets


@dataclass
class FleetPlan:
    plan: dict[str, bytes] = field(default_factory=dict)
    matched: dict[str, list[str]] = field(default_factory=dict)
    managed: set[str] = field(default_factory=set)
    #: token -> its rollout step (valid Deployments that are not being deleted)
    rollouts: dict[str, RolloutStep] = field(default_factory=dict)


def plan_desired_state(
    deployments: Iterable[DeploymentView], device_labels: Mapping[str, Mapping[str, str]],
    sealing_keys: Mapping[str, str | None] | None = None, *, cache: SealingCache | None = None,
) -> tuple[dict[str, bytes], dict[str, list[str]], set[str]]:
    """Return ``(plan, matched, managed)`` of :func:`plan_fleet` with nothing rolled out yet
    (every strategy's first step)."""
    fleet = plan_fleet(deployments, device_labels, sealing_keys, cache=cache)
    return fleet.plan, fleet.matched, fleet.managed


def plan_fleet(
    deployments: Iterable[DeploymentView], device_labels: Mapping[str, Mapping[str, str]],
    sealing_keys: Mapping[str, str | None] | None = None, *, cache: SealingCache | None = None,
    current: Mapping[str, bytes] | None = None,
    states: Mapping[str, Mapping[str, DeploymentState]] | None = None,
    now: float | None = None,
) -> FleetPlan:
    """What the bucket should hold; ``sealing_keys`` is device -> published key, ``cache``
    spares resealing what did not change (the result is the same without it), ``current``
    is what the bucket holds (key -> value), ``states`` token -> device -> report and
    ``now`` the time in seconds (batch timeouts).

    * ``plan``: key -> value for every key that should exist;
    * ``matched``: token -> the devices its selector matches (for aggregation);
    * ``managed``: the tokens whose keys the operator owns now. An invalid Deployment is not
      managed (its existing keys are left as they are: the last valid score keeps running)
      unless it is being deleted;
    * ``rollouts``: token -> the rollout step taken.
    """
    out = FleetPlan()
    current = current or {}
    for view in deployments:
        if view.deleting:
            out.managed.add(view.token)
            out.matched[view.token] = []
            continue
        if view.score is None:
            continue
        devices = matching_devices(view.selector, device_labels)
        try:
            values = device_values(view, devices, sealing_keys or {}, cache=cache)
        except ValueError:  # a reference without a value: the operator resolves them all first
            continue
        step = rollout_step(view, devices, values, current, (states or {}).get(view.token, {}),
                            now=now)
        out.rollouts[view.token] = step
        out.managed.add(view.token)
        out.matched[view.token] = devices
        targets = set(step.targets)
        for device in devices:
            key = desired_state_key(device, view.token)
            if device in targets:
                out.plan[key] = values[device]
            elif key in current:  # not its turn yet: it keeps what it runs
                out.plan[key] = current[key]
    return out


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
    same = _SameValues()
    for key, value in plan.items():
        if not same(current.get(key), value):
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
