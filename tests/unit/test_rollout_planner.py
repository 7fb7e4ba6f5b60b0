"""The rollout planner (harmony_fleet.rollout), on a model fleet.

The model: devices match or not, hold the new score once a plan targets them, and then report
Running or Failed (a chosen set fails). Properties, over random policies, fleets, failures,
late-matching devices, resumes and report orders:

* a batch never holds more than its size, and no more than ``maxUnavailable`` devices are
  updating at once;
* a device that holds the new score keeps it (nothing is taken back);
* past the failure threshold, or after a batch under its success threshold, no device is
  added until a resume;
* when every device succeeds the rollout converges: every matching device holds the score
  and the phase is Complete.

With ``batchTimeoutSeconds`` and devices that never report (offline), over random policies,
timeouts, clocks and offline sets:

* a device silent past its batch's timeout counts as failed: past ``maxFailures`` the rollout
  pauses and adds nothing; timed-out devices take no place of ``maxUnavailable``;
* the rollout never stalls: resuming whenever it pauses, every matching device is given the
  score and the phase is Complete, whatever stays offline.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from harmony_fleet.contracts.crd import Rollout, RolloutStrategy
from harmony_fleet.rollout import (
    Outcome,
    PauseReason,
    RolloutMemory,
    RolloutPhase,
    batch_size,
    plan_rollout,
)

from .strategies import PROPERTY


def batched(**kw: object) -> Rollout:
    return Rollout.model_validate({"strategy": "Batched", **kw})


def devs(n: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


# ---- policy validation ----------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    {"strategy": "Batched"},
    {"strategy": "Batched", "batchSize": 2, "batchPercent": 10},
    {"strategy": "Batched", "batchSize": 0},
    {"strategy": "Batched", "batchPercent": 0},
    {"strategy": "Batched", "batchPercent": 101},
    {"strategy": "Batched", "batchSize": 2, "successThreshold": 101},
    {"strategy": "Batched", "batchSize": 2, "successThreshold": -1},
    {"strategy": "Batched", "batchSize": 2, "maxUnavailable": 0},
    {"strategy": "Batched", "batchSize": 2, "maxFailures": -1},
    {"strategy": "AllAtOnce", "batchSize": 2},
    {"strategy": "AllAtOnce", "batchTimeoutSeconds": 60},
    {"strategy": "Batched", "batchSize": 2, "batchTimeoutSeconds": 0},
    {"strategy": "Batched", "batchSize": 2, "batchTimeoutSeconds": 2_592_001},
    {"strategy": "Canary"},
])
def test_bad_policies_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Rollout.model_validate(raw)


def test_policy_round_trips_without_unset_fields() -> None:
    assert Rollout().model_dump(mode="json", by_alias=True) == {"strategy": "AllAtOnce"}
    raw = {"strategy": "Batched", "batchPercent": 10, "successThreshold": 90, "paused": True}
    assert Rollout.model_validate(raw).model_dump(mode="json", by_alias=True) == raw


@pytest.mark.parametrize(("policy", "matching", "size"), [
    (batched(batchSize=7), 100, 7),
    (batched(batchPercent=10), 95, 10),
    (batched(batchPercent=10), 100, 10),
    (batched(batchPercent=1), 5, 1),
    (batched(batchPercent=100), 0, 1),
    (Rollout(), 40, 40),
])
def test_batch_size(policy: Rollout, matching: int, size: int) -> None:
    assert batch_size(policy, matching) == size


# ---- examples -------------------------------------------------------------------------------


def test_all_at_once_targets_every_matching_device() -> None:
    step = plan_rollout(Rollout(), "r1", ["b", "a"], set(), {})
    assert step.targets == ["a", "b"]
    assert step.phase is RolloutPhase.PROGRESSING
    step = plan_rollout(Rollout(), "r1", ["a", "b"], {"a", "b"},
                        {"a": Outcome.SUCCEEDED, "b": Outcome.SUCCEEDED})
    assert step.phase is RolloutPhase.COMPLETE


def test_batches_advance_when_the_batch_succeeded() -> None:
    policy = batched(batchSize=2)
    fleet = devs(5)
    step = plan_rollout(policy, "r1", fleet, set(), {})
    assert step.targets == fleet[:2]
    assert step.memory.batch == 1
    assert step.total_batches == 3
    # one of the batch reported: the next batch waits
    updated = set(step.targets)
    step = plan_rollout(policy, "r1", fleet, updated, {fleet[0]: Outcome.SUCCEEDED},
                        memory=step.memory)
    assert step.targets == fleet[:2]
    assert step.batch_pending == 1
    step = plan_rollout(policy, "r1", fleet, updated,
                        dict.fromkeys(fleet[:2], Outcome.SUCCEEDED), memory=step.memory)
    assert step.targets == fleet[:4]
    assert step.memory.batch == 2
    assert step.batch_updated == 2


def test_a_failure_pauses_and_a_resume_accepts_it() -> None:
    policy = batched(batchSize=2)
    fleet = devs(4)
    first = plan_rollout(policy, "r1", fleet, set(), {}, resume_token="t0")
    outcomes = {fleet[0]: Outcome.SUCCEEDED, fleet[1]: Outcome.FAILED}
    paused = plan_rollout(policy, "r1", fleet, set(first.targets), outcomes, memory=first.memory,
                          resume_token="t0")
    assert paused.phase is RolloutPhase.PAUSED
    assert paused.pause_reason is PauseReason.FAILURES
    assert paused.targets == fleet[:2]
    assert fleet[1] in paused.message
    assert paused.failing_devices == [fleet[1]]
    # the same token again: still paused
    again = plan_rollout(policy, "r1", fleet, set(first.targets), outcomes, memory=paused.memory,
                         resume_token="t0")
    assert again.phase is RolloutPhase.PAUSED
    resumed = plan_rollout(policy, "r1", fleet, set(first.targets), outcomes, memory=again.memory,
                           resume_token="t1")
    assert resumed.phase is RolloutPhase.PROGRESSING
    assert resumed.targets == fleet
    assert resumed.memory.batch == 2


def test_success_threshold_gates_the_next_batch() -> None:
    policy = batched(batchSize=4, successThreshold=75, maxFailures=10)
    fleet = devs(8)
    first = plan_rollout(policy, "r1", fleet, set(), {})
    two_failed = {fleet[0]: Outcome.FAILED, fleet[1]: Outcome.FAILED,
                  fleet[2]: Outcome.SUCCEEDED, fleet[3]: Outcome.SUCCEEDED}
    step = plan_rollout(policy, "r1", fleet, set(first.targets), two_failed, memory=first.memory)
    assert step.pause_reason is PauseReason.BATCH_BELOW_THRESHOLD
    assert step.targets == fleet[:4]
    one_failed = dict(two_failed, **{fleet[1]: Outcome.SUCCEEDED})
    step = plan_rollout(policy, "r1", fleet, set(first.targets), one_failed, memory=first.memory)
    assert step.phase is RolloutPhase.PROGRESSING
    assert step.targets == fleet


def test_paused_by_spec_holds_and_max_unavailable_paces() -> None:
    fleet = devs(6)
    step = plan_rollout(batched(batchSize=4, paused=True), "r1", fleet, set(), {})
    assert step.targets == []
    assert step.pause_reason is PauseReason.BY_SPEC
    step = plan_rollout(batched(batchSize=4, maxUnavailable=1), "r1", fleet, set(), {})
    assert step.targets == fleet[:1]


def test_a_new_revision_starts_over_and_a_lost_memory_counts_holders_as_done() -> None:
    policy = batched(batchSize=2)
    fleet = devs(6)
    old = RolloutMemory("r1", batch=3, batch_size=2, batch_start_updated=4)
    step = plan_rollout(policy, "r2", fleet, set(), {}, memory=old)
    assert step.memory.revision == "r2"
    assert step.memory.batch == 1
    assert step.targets == fleet[:2]
    # a leader without memory finds 4 devices holding the score: they were batches before,
    # the next batch takes the rest
    holders = set(fleet[:4])
    step = plan_rollout(policy, "r2", fleet, holders, dict.fromkeys(holders, Outcome.SUCCEEDED))
    assert step.targets == fleet
    assert step.memory.batch_start_updated == 4


def test_late_matching_device_waits_for_a_free_place() -> None:
    policy = batched(batchSize=2)
    fleet = devs(4)
    step = plan_rollout(policy, "r1", fleet, set(), {})
    late = [*fleet, "a-late"]  # sorts first, but the batch is full
    step = plan_rollout(policy, "r1", late, set(step.targets), {}, memory=step.memory)
    assert step.targets == fleet[:2]
    assert step.batch_updated == 2


def test_a_silent_device_times_out_and_counts_as_failed() -> None:
    """Batches of 3, one failure tolerated, 10 s per batch: d001 never reports. At 10 s its
    batch ends with it timed out (1 failure: tolerated, and 2 of 3 ran: over 60 %), the next
    batch starts with its own clock; a second silent device pauses the rollout."""
    policy = batched(batchSize=3, maxFailures=1, successThreshold=60, batchTimeoutSeconds=10)
    fleet = devs(9)
    step = plan_rollout(policy, "r1", fleet, set(), {}, now=100.0)
    assert step.targets == fleet[:3]
    assert step.batch_deadline == 110.0
    outcomes = {fleet[0]: Outcome.SUCCEEDED, fleet[2]: Outcome.SUCCEEDED}
    held = plan_rollout(policy, "r1", fleet, set(step.targets), outcomes, memory=step.memory,
                        now=109.9)
    assert held.targets == fleet[:3]  # not yet
    assert held.timed_out_devices == []
    step = plan_rollout(policy, "r1", fleet, set(held.targets), outcomes, memory=held.memory,
                        now=110.0)
    assert step.timed_out_devices == [fleet[1]]
    assert step.memory.timed_out == (fleet[1],)
    assert step.failed == 1
    assert step.pending == 0
    assert step.memory.batch == 2
    assert step.targets == fleet[:6]
    assert step.batch_deadline == 120.0
    assert "timed out" in step.message
    # batch 2: d004 stays silent too -> 2 failures, over maxFailures=1: paused, both named
    outcomes.update({fleet[3]: Outcome.SUCCEEDED, fleet[5]: Outcome.SUCCEEDED})
    paused = plan_rollout(policy, "r1", fleet, set(step.targets), outcomes, memory=step.memory,
                          now=121.0)
    assert paused.pause_reason is PauseReason.FAILURES
    assert paused.timed_out_devices == [fleet[1], fleet[4]]
    assert fleet[1] in paused.message
    assert fleet[4] in paused.message
    assert paused.batch_deadline is None
    # d001 comes back and runs: it counts as what it reports, no longer as timed out
    outcomes[fleet[1]] = Outcome.SUCCEEDED
    going = plan_rollout(policy, "r1", fleet, set(paused.targets), outcomes,
                         memory=paused.memory, now=122.0)
    assert going.timed_out_devices == [fleet[4]]
    assert going.phase is RolloutPhase.PROGRESSING
    assert going.targets == fleet
    # the rest run, d004 never does: the rollout still completes (its key waits for it)
    outcomes.update(dict.fromkeys(fleet[6:], Outcome.SUCCEEDED))
    done = plan_rollout(policy, "r1", fleet, set(going.targets), outcomes, memory=going.memory,
                        now=123.0)
    assert done.phase is RolloutPhase.COMPLETE
    assert done.timed_out_devices == [fleet[4]]


def test_timed_out_devices_free_max_unavailable_and_resume_accepts_them() -> None:
    policy = batched(batchSize=4, maxUnavailable=2, batchTimeoutSeconds=5)
    fleet = devs(4)
    step = plan_rollout(policy, "r1", fleet, set(), {}, now=0.0)
    assert step.targets == fleet[:2]
    # both silent: at 5 s they time out, 2 failures > 0: paused
    paused = plan_rollout(policy, "r1", fleet, set(step.targets), {}, memory=step.memory,
                          now=5.0, resume_token=None)
    assert paused.pause_reason is PauseReason.FAILURES
    assert paused.targets == fleet[:2]
    # a resume accepts them; the batch ended at its timeout and was under 100 %: accepted
    # too; the next batch takes the rest, the silent two no longer hold places
    resumed = plan_rollout(policy, "r1", fleet, set(paused.targets), {}, memory=paused.memory,
                           now=6.0, resume_token="r")
    assert resumed.phase is RolloutPhase.PROGRESSING
    assert resumed.targets == fleet
    assert resumed.memory.acknowledged_failures == 2


def test_without_memory_silent_holders_count_as_timed_out() -> None:
    """A module's new run: the devices holding the score that never reported had their
    batch's time in the earlier run; with a timeout they count as timed out at once, and
    take no place of the next batch."""
    policy = batched(batchSize=2, maxFailures=1, batchTimeoutSeconds=5)
    fleet = devs(4)
    step = plan_rollout(policy, "r1", fleet, set(fleet[:2]), {fleet[0]: Outcome.SUCCEEDED},
                        now=0.0)
    assert step.timed_out_devices == [fleet[1]]
    assert step.failed == 1
    assert step.targets == fleet
    assert step.batch_pending == 0
    # without a timeout it is pending, as before
    step = plan_rollout(batched(batchSize=2, maxFailures=1), "r1", fleet, set(fleet[:2]),
                        {fleet[0]: Outcome.SUCCEEDED}, now=0.0)
    assert step.timed_out_devices == []
    assert step.pending == 1


def test_no_timeout_without_a_clock_and_memory_reads_back() -> None:
    policy = batched(batchSize=2, batchTimeoutSeconds=1)
    fleet = devs(2)
    step = plan_rollout(policy, "r1", fleet, set(), {})
    held = plan_rollout(policy, "r1", fleet, set(step.targets), {}, memory=step.memory)
    assert held.timed_out_devices == []
    assert held.batch_deadline is None
    # an older memory (no clock kept) starts the clock at the next plan
    later = plan_rollout(policy, "r1", fleet, set(step.targets), {}, memory=held.memory,
                         now=50.0)
    assert later.batch_deadline == 51.0
    # a module hands the memory back as JSON: lists become the tuple again
    again = RolloutMemory(**{**vars(later.memory), "timed_out": ["b", "a"]})
    assert again.timed_out == ("a", "b")


def test_no_matching_device_is_complete() -> None:
    step = plan_rollout(batched(batchPercent=50), "r1", [], set(), {})
    assert step.phase is RolloutPhase.COMPLETE
    assert step.targets == []


# ---- properties -----------------------------------------------------------------------------

policies = st.builds(
    lambda size, pct, use_pct, threshold, unavailable, failures: batched(
        **({"batchPercent": pct} if use_pct else {"batchSize": size}),
        **({} if threshold is None else {"successThreshold": threshold}),
        **({} if unavailable is None else {"maxUnavailable": unavailable}),
        **({} if failures is None else {"maxFailures": failures})),
    st.integers(1, 12), st.integers(1, 100), st.booleans(),
    st.one_of(st.none(), st.integers(0, 100)), st.one_of(st.none(), st.integers(1, 10)),
    st.one_of(st.none(), st.integers(0, 5)))


@PROPERTY
@given(policy=policies, n=st.integers(0, 40), late=st.integers(0, 10),
       failing=st.sets(st.integers(0, 49), max_size=8), seed=st.integers(0, 2**32 - 1),
       resume_every=st.one_of(st.none(), st.integers(2, 6)))
def test_rollout_invariants(policy: Rollout, n: int, late: int, failing: set[int], seed: int,
                            resume_every: int | None) -> None:
    rng = random.Random(seed)  # noqa: S311 - a reproducible report order
    fleet = devs(n)
    late_devices = devs(late, prefix="late")
    fails = {f"d{i:03d}" for i in failing}
    updated: set[str] = set()
    outcomes: dict[str, Outcome] = {}
    memory: RolloutMemory | None = None
    token: str | None = None
    threshold = 100 if policy.success_threshold is None else policy.success_threshold
    limit_unavailable = policy.max_unavailable
    for rnd in range(400):
        if late_devices and rng.random() < 0.1:
            fleet.append(late_devices.pop())
        if resume_every and rnd % resume_every == 0:
            token = f"t{rnd}"
        before = set(updated)
        step = plan_rollout(policy, "rev", fleet, updated, outcomes, memory=memory, resume_token=token)
        targets = set(step.targets)
        # nothing is taken back; nothing outside the matching devices is targeted
        assert before & set(fleet) <= targets <= set(fleet)
        added = targets - before
        mem = step.memory
        # a batch never holds more than its size
        assert len(targets) - mem.batch_start_updated <= mem.batch_size or not added
        # at most maxUnavailable (default: the batch size) updating at once
        updating = sum(1 for d in targets if outcomes.get(d, Outcome.PENDING) is Outcome.PENDING)
        assert updating <= (limit_unavailable or mem.batch_size) or not added
        failed_now = sum(1 for d in before if outcomes.get(d) is Outcome.FAILED)
        new_token = token is not None and token != (memory.resume_token if memory else None)
        acknowledged = memory.acknowledged_failures if memory else 0
        # failures are accepted only by a new resume token, and only those seen
        if not new_token and memory is not None and memory.revision == mem.revision:
            assert mem.acknowledged_failures == acknowledged
        assert mem.acknowledged_failures <= failed_now
        if failed_now - mem.acknowledged_failures > (policy.max_failures or 0):
            assert not added
            assert step.pause_reason is PauseReason.FAILURES
        if step.pause_reason is not None:
            assert not added
        if step.pause_reason is PauseReason.BATCH_BELOW_THRESHOLD:
            assert step.batch_succeeded * 100 < threshold * max(step.batch_updated, 1)
        updated = targets
        memory = mem
        # some updating devices report
        for device in sorted(updated):
            if device not in outcomes and rng.random() < 0.5:
                outcomes[device] = Outcome.FAILED if device in fails else Outcome.SUCCEEDED
        if step.phase is RolloutPhase.COMPLETE and not late_devices:
            break
    if not fails and not late_devices:
        assert step.phase is RolloutPhase.COMPLETE
        assert updated == set(fleet)


@PROPERTY
@given(policy=policies, n=st.integers(1, 60))
def test_all_succeeding_converges_in_the_number_of_batches(policy: Rollout, n: int) -> None:
    fleet = devs(n)
    updated: set[str] = set()
    memory = None
    plans = 0
    while True:
        step = plan_rollout(policy, "rev", fleet, updated, dict.fromkeys(
            updated, Outcome.SUCCEEDED), memory=memory)
        plans += 1
        if step.phase is RolloutPhase.COMPLETE:
            break
        assert set(step.targets) > updated or step.batch_pending  # progress every plan
        updated, memory = set(step.targets), step.memory
        assert plans <= 2 * n + 2
    assert updated == set(fleet)
    size = batch_size(policy, n)
    per_plan = min(size, policy.max_unavailable or size)
    assert plans <= math.ceil(n / per_plan) + math.ceil(n / size) + 1


@PROPERTY
@given(policy=policies, n=st.integers(1, 40), offline=st.sets(st.integers(0, 39), max_size=10),
       timeout=st.integers(1, 20), dt=st.integers(1, 7), seed=st.integers(0, 2**32 - 1))
def test_offline_devices_never_stall_a_rollout_with_a_timeout(
        policy: Rollout, n: int, offline: set[int], timeout: int, dt: int, seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - a reproducible report order
    policy = policy.model_copy(update={"batch_timeout_seconds": timeout})
    fleet = devs(n)
    silent = {f"d{i:03d}" for i in offline}
    updated: set[str] = set()
    outcomes: dict[str, Outcome] = {}
    memory: RolloutMemory | None = None
    token: str | None = None
    now = 1000.0
    for rnd in range(2000):
        before = set(updated)
        step = plan_rollout(policy, "rev", fleet, updated, outcomes, memory=memory,
                            resume_token=token, now=now)
        targets = set(step.targets)
        added = targets - before
        mem = step.memory
        assert before <= targets <= set(fleet)
        timed = set(mem.timed_out)
        # only devices given the score and still silent are timed out (a slow one may be)
        assert timed <= {d for d in targets if d not in outcomes}
        # a timed-out device counts as failed
        assert step.failed == sum(1 for d in targets if outcomes.get(d) is Outcome.FAILED) + \
            len(timed)
        if step.failed - mem.acknowledged_failures > (policy.max_failures or 0):
            assert step.pause_reason is PauseReason.FAILURES
            assert not added
        # maxUnavailable counts the devices updating, not the timed-out ones
        updating = sum(1 for d in targets if d not in outcomes and d not in timed)
        assert updating <= (policy.max_unavailable or mem.batch_size) or not added
        assert len(targets) - mem.batch_start_updated <= mem.batch_size or not added
        if step.phase is RolloutPhase.COMPLETE:
            break
        if step.phase is RolloutPhase.PAUSED:
            token = f"t{rnd}"  # a person resumes
        updated, memory = targets, mem
        for device in sorted(updated):
            if device not in outcomes and device not in silent and rng.random() < 0.5:
                outcomes[device] = Outcome.SUCCEEDED
        now += dt
    assert step.phase is RolloutPhase.COMPLETE, step
    assert set(step.targets) == set(fleet)


def test_strategy_enum_is_what_the_crd_lists() -> None:
    assert [s.value for s in RolloutStrategy] == ["AllAtOnce", "Batched"]
