"""The rollout planner: which matching devices get a Deployment's new score now.

Pure (no I/O), shared by the operator (``spec.rollout`` of a Deployment) and the
``fleet_deployment`` module (its ``rollout`` option, run batch by batch under ``wait``).

Inputs are what can be observed — the devices that match, those that already hold the new
score (``updated``), what each of those reported (``outcomes``) — plus a small
:class:`RolloutMemory` carried from one plan to the next (the operator keeps it in
``status.rollout``, so a restarted or new leader goes on where the last one stopped).

``Batched`` (see :class:`~harmony_fleet.contracts.crd.Rollout`):

* a batch is ``batchSize`` devices, or ``batchPercent`` % of the devices matching when the
  batch starts (rounded up, at least 1);
* the devices of a batch get the score at most ``maxUnavailable`` at a time (updating: given
  the score, no outcome reported yet); a batch never holds more than its size — a device that
  starts matching mid-rollout takes a free place of the batch being filled, or waits for the
  next batch;
* the next batch starts once every device of the current one reported (``Running`` or
  ``Failed``) and at least ``successThreshold`` % of it runs; else the rollout pauses
  (``BatchBelowSuccessThreshold``);
* more than ``maxFailures`` failed devices (not counting those a resume accepted) pause it at
  once (``FailureThresholdExceeded``), whatever the batch;
* ``paused`` in the spec holds it (``PausedBySpec``); a resume (a new resume token) accepts
  the failures seen so far and lets a batch under its threshold count as done;
* ``batchTimeoutSeconds``: a batch that has not finished that long after it started ends
  there. Its devices that were given the score and still reported nothing are *timed out*:
  each counts as a failed device (toward ``maxFailures`` and the batch's success threshold)
  for as long as it stays silent, and no longer takes a place of ``maxUnavailable``. A
  timed-out device that reports later counts as what it reports. So an offline device can
  hold a batch for at most the timeout, and a rollout never waits forever: it goes on, or
  pauses where a person can see why and resume. Time comes in as ``now`` (seconds, any
  clock all callers share); without it nothing times out. A rollout that starts without
  memory (a module's new run) counts the devices that already hold the score and never
  reported as timed out at once: they had their batch's time before.

A paused rollout takes nothing back: devices that hold the new score keep it; the others keep
what they had. Devices are picked in id order, so a plan is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

from harmony_fleet.contracts.crd import Rollout, RolloutStrategy

#: failing devices named in a status or a message, at most
MAX_NAMED: Final = 20


class Outcome(StrEnum):
    """What an updated device reported about the new score."""

    SUCCEEDED = "Succeeded"  # Running with the new score
    FAILED = "Failed"
    PENDING = "Pending"  # nothing yet, or a phase on the way


class RolloutPhase(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    COMPLETE = "Complete"


class PauseReason(StrEnum):
    BY_SPEC = "PausedBySpec"
    FAILURES = "FailureThresholdExceeded"
    BATCH_BELOW_THRESHOLD = "BatchBelowSuccessThreshold"


@dataclass(frozen=True)
class RolloutMemory:
    """What one plan hands the next (kept in ``status.rollout``)."""

    revision: str  # which score the rollout is about (a new one starts a new rollout)
    batch: int = 0  # the current batch, 1-based; 0: not started
    batch_size: int = 0  # its size, fixed when it started
    batch_start_updated: int = 0  # devices updated before it started
    batch_start_failed: int = 0  # of which failed
    acknowledged_failures: int = 0  # failures a resume accepted
    accepted_batch: int = 0  # a batch a resume let pass under its success threshold
    resume_token: str | None = None  # the last resume acted on
    batch_started_at: float | None = None  # when the current batch started (``now``)
    timed_out_batch: int = 0  # the last batch that ended at its timeout
    #: devices that timed out (given the score, silent past their batch's timeout), sorted
    timed_out: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # a list read back from a status or a module's memory
        if not isinstance(self.timed_out, tuple):
            object.__setattr__(self, "timed_out", tuple(sorted(self.timed_out)))


@dataclass(frozen=True)
class RolloutStep:
    """One plan: the devices that should hold the new score now, and where things stand."""

    targets: list[str]
    memory: RolloutMemory
    phase: RolloutPhase
    matched: int = 0
    updated: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    batch_updated: int = 0
    batch_succeeded: int = 0
    batch_failed: int = 0
    batch_pending: int = 0
    total_batches: int = 0
    pause_reason: PauseReason | None = None
    failing_devices: list[str] = field(default_factory=list)
    message: str = ""
    #: devices timed out and still silent (counted in ``failed``, not in ``pending``)
    timed_out_devices: list[str] = field(default_factory=list)
    #: when the current batch times out (``now``'s clock); None: it cannot
    batch_deadline: float | None = None


@dataclass(frozen=True)
class _Counts:
    matched: int
    updated: int
    succeeded: int
    failed: int
    pending: int


def batch_size(policy: Rollout, matching: int) -> int:
    """The size of a batch that starts while ``matching`` devices match (at least 1)."""
    if policy.strategy is RolloutStrategy.ALL_AT_ONCE:
        return max(matching, 1)
    if policy.batch_size is not None:
        return policy.batch_size
    percent = policy.batch_percent or 100
    return max(1, math.ceil(matching * percent / 100))


def _named(devices: Sequence[str]) -> str:
    shown = ", ".join(devices[:MAX_NAMED])
    more = len(devices) - MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def plan_rollout(
    policy: Rollout, revision: str, matching: Sequence[str], updated: Set[str],
    outcomes: Mapping[str, Outcome], *, memory: RolloutMemory | None = None,
    resume_token: str | None = None, now: float | None = None,
) -> RolloutStep:
    """Plan one step of ``policy`` for the score ``revision``.

    ``matching``: the devices the selector matches; ``updated``: those of them that hold the
    new score already; ``outcomes``: device -> what it reported about it (absent: pending);
    ``memory``: what the previous step returned (None, or another revision: a new rollout);
    ``resume_token``: the operator's resume annotation (a value not seen before resumes);
    ``now``: the time in seconds (``batchTimeoutSeconds`` is measured with it).
    """
    devices = sorted(set(matching))
    done = [d for d in devices if d in updated]
    state = {d: outcomes.get(d, Outcome.PENDING) for d in done}
    failing = [d for d in done if state[d] is Outcome.FAILED]

    if policy.strategy is RolloutStrategy.ALL_AT_ONCE:
        failed = len(failing)
        pending = sum(1 for d in done if state[d] is Outcome.PENDING)
        succeeded = len(done) - failed - pending
        complete = succeeded == len(devices)
        mem = RolloutMemory(revision, batch=1, batch_size=len(devices))
        return RolloutStep(devices, mem, RolloutPhase.COMPLETE if complete
                           else RolloutPhase.PROGRESSING, matched=len(devices),
                           updated=len(done), succeeded=succeeded, failed=failed,
                           pending=pending, batch_updated=len(devices),
                           batch_succeeded=succeeded, batch_failed=failed,
                           batch_pending=len(devices) - succeeded - failed,
                           total_batches=1, failing_devices=failing[:MAX_NAMED])

    if memory is None or memory.revision != revision:
        # a new rollout; devices that already hold the score (a leader that lost its
        # memory, a module's new run) count as earlier batches; with a batch timeout, those
        # of them that never reported had their batch's time: they count as timed out
        silent = (tuple(d for d in done if state[d] is Outcome.PENDING)
                  if policy.batch_timeout_seconds is not None else ())
        memory = RolloutMemory(revision, batch_start_updated=len(done),
                               batch_start_failed=len(failing) + len(silent),
                               resume_token=resume_token, timed_out=silent)
    step = _batched(policy, devices, done, state=state, failing=failing, memory=memory,
                    now=now)
    if resume_token is None or resume_token == memory.resume_token:
        return step
    # a new resume token: it accepts what paused the rollout (if anything did), once
    if step.pause_reason in (PauseReason.FAILURES, PauseReason.BATCH_BELOW_THRESHOLD):
        memory = replace(step.memory, acknowledged_failures=step.failed,
                         accepted_batch=step.memory.batch)
        step = _batched(policy, devices, done, state=state, failing=failing, memory=memory,
                        now=now)
    return replace(step, memory=replace(step.memory, resume_token=resume_token))


def _timeouts(policy: Rollout, memory: RolloutMemory, silent: list[str],
              now: float | None) -> RolloutMemory:
    """``memory`` with the batch's clock started (an older memory kept none) and, past the
    batch's timeout, its silent devices timed out (once per batch). Devices that reported
    since they timed out, or stopped matching, are forgotten."""
    still = set(silent)
    kept = tuple(d for d in memory.timed_out if d in still)
    if kept != memory.timed_out:
        memory = replace(memory, timed_out=kept)
    timeout = policy.batch_timeout_seconds
    if timeout is None or now is None or not memory.batch:
        return memory
    if memory.batch_started_at is None:
        return replace(memory, batch_started_at=now)
    if memory.timed_out_batch != memory.batch and now >= memory.batch_started_at + timeout:
        memory = replace(memory, timed_out=tuple(sorted(still)), timed_out_batch=memory.batch)
    return memory


def _batched(policy: Rollout, devices: list[str], done: list[str], *,
             state: Mapping[str, Outcome], failing: list[str], memory: RolloutMemory,
             now: float | None) -> RolloutStep:
    silent = [d for d in done if state[d] is Outcome.PENDING]
    memory = _timeouts(policy, memory, silent, now)
    timed_out = list(memory.timed_out)  # all still silent
    # a timed-out device counts as failed while it stays silent, and updates no longer
    failed = len(failing) + len(timed_out)
    pending = len(silent) - len(timed_out)
    counts = _Counts(matched=len(devices), updated=len(done),
                     succeeded=len(done) - len(failing) - len(silent), failed=failed,
                     pending=pending)
    holding = set(done)
    remaining = [d for d in devices if d not in holding]
    in_batch = max(0, len(done) - memory.batch_start_updated)
    b_failed = max(0, failed - memory.batch_start_failed)
    b_pending = min(pending, in_batch)
    b_succeeded = max(0, in_batch - b_failed - b_pending)
    timeout = policy.batch_timeout_seconds

    def step(targets: list[str], mem: RolloutMemory, phase: RolloutPhase,
             reason: PauseReason | None = None, message: str = "") -> RolloutStep:
        size = max(mem.batch_size, 1)
        if mem.batch:
            later = max(0, len(devices) - mem.batch_start_updated - size)
            total = mem.batch + math.ceil(later / size)
        else:
            total = math.ceil(len(devices) / batch_size(policy, len(devices)))
        deadline = None
        if timeout is not None and mem.batch_started_at is not None and \
                mem.timed_out_batch != mem.batch and phase is RolloutPhase.PROGRESSING:
            deadline = mem.batch_started_at + timeout
        return RolloutStep(sorted(targets), mem, phase, **vars(counts),
                           batch_updated=max(0, len(targets) - mem.batch_start_updated),
                           batch_succeeded=b_succeeded, batch_failed=b_failed,
                           batch_pending=b_pending, total_batches=total, pause_reason=reason,
                           failing_devices=failing[:MAX_NAMED], message=message,
                           timed_out_devices=timed_out[:MAX_NAMED], batch_deadline=deadline)

    def failures() -> str:
        named = _named(failing) if failing else "none reported"
        if timed_out:
            return f"{named}; timed out: {_named(timed_out)}"
        return named

    unaccepted = failed - memory.acknowledged_failures
    max_failures = policy.max_failures or 0
    if unaccepted > max_failures:
        return step(done, memory, RolloutPhase.PAUSED, PauseReason.FAILURES,
                    f"{failed} device(s) failed or timed out, over maxFailures={max_failures}: "
                    f"{failures()}" if timed_out else
                    f"{failed} device(s) failed, over maxFailures={max_failures}: "
                    f"{_named(failing)}")
    if policy.paused:
        return step(done, memory, RolloutPhase.PAUSED, PauseReason.BY_SPEC,
                    "spec.rollout.paused is true")

    ended = memory.batch > 0 and memory.timed_out_batch == memory.batch  # at its timeout
    batch_done = memory.batch > 0 and b_pending == 0 and (
        in_batch >= memory.batch_size or not remaining or ended)
    if batch_done:
        threshold = 100 if policy.success_threshold is None else policy.success_threshold
        ratio_ok = in_batch == 0 or b_succeeded * 100 >= threshold * in_batch
        if not ratio_ok and memory.accepted_batch != memory.batch:
            return step(done, memory, RolloutPhase.PAUSED, PauseReason.BATCH_BELOW_THRESHOLD,
                        f"batch {memory.batch}: {b_succeeded} of {in_batch} running, under "
                        f"successThreshold={threshold}%; failed: {failures()}")
        if not remaining:
            complete = pending == 0
            return step(done, memory, RolloutPhase.COMPLETE if complete
                        else RolloutPhase.PROGRESSING)
    if not remaining and pending == 0:
        return step(done, memory, RolloutPhase.COMPLETE)
    if memory.batch == 0 or batch_done:
        memory = replace(memory, batch=memory.batch + 1,
                         batch_size=batch_size(policy, len(devices)),
                         batch_start_updated=len(done), batch_start_failed=failed,
                         batch_started_at=now)
        in_batch = b_failed = b_pending = b_succeeded = 0
    limit = policy.max_unavailable if policy.max_unavailable is not None else memory.batch_size
    room = max(0, min(memory.batch_size - in_batch, limit - pending))
    picked = remaining[:room]
    targets = done + picked
    note = (f"; batch {memory.timed_out_batch} timed out: {_named(timed_out)}"
            if timed_out else "")
    return step(targets, memory, RolloutPhase.PROGRESSING,
                message=f"batch {memory.batch}: {in_batch + len(picked)} of "
                        f"{memory.batch_size} given the score{note}")
