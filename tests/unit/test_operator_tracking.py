"""How the operator tracks Deployment events (no I/O: the NATS and Kubernetes clients are
never called here).

kopf hands the operator an event for every change of a Deployment, its own status patches
included. Such an event must not throw away what the last plan found (the rollout step, whose
loss logged a pause again and rewrote the status) nor ask for a plan; a change of what the
planner reads (the spec, the resume annotation) asks for a plan of that Deployment alone.
"""

from __future__ import annotations

from typing import Any, cast

from nats.aio.client import Client as NatsClient

from harmony_fleet.operator.app import FleetOperator
from harmony_fleet.operator.config import OperatorSection
from harmony_fleet.operator.kube import KubeClient
from harmony_fleet.rollout import RolloutMemory, RolloutPhase, RolloutStep


def body(**extra: Any) -> dict[str, Any]:
    spec = {"targetSelector": {"matchLabels": {"site": "a"}},
            "score": {"services": [{"name": "web", "image": "localhost/x:1"}]},
            "rollout": {"strategy": "Batched", "batchSize": 2, "batchTimeoutSeconds": 30}}
    return {"metadata": {"namespace": "shop", "name": "web", "generation": 1,
                         **extra.pop("metadata", {})},
            "spec": {**spec, **extra.pop("spec", {})}, **extra}


def operator() -> FleetOperator:
    return FleetOperator(cast("NatsClient", None), cast("KubeClient", None),
                         OperatorSection(identity="unit", probe_listen=None))


def test_our_own_status_patch_keeps_the_plan_and_asks_for_none() -> None:
    op = operator()
    tracked = op.track(body())
    assert op._plan_tokens == {"shop_web"}
    assert tracked.view.rollout.batch_timeout_seconds == 30
    step = RolloutStep(["d1"], RolloutMemory("rev", batch=1, batch_size=2),
                       RolloutPhase.PROGRESSING)
    tracked.rollout = step
    op._plan_tokens.clear()
    op._plan_all = False
    op._plan_dirty.clear()
    # the event of the status we patched: same spec, a status
    again = op.track(body(status={"aggregate": {"matchedDeviceCount": 1}}))
    assert again is tracked
    assert again.rollout is step
    assert not op._plan_dirty.is_set()
    assert op._plan_tokens == set()
    # a resume: that Deployment alone is planned
    op.track(body(metadata={"annotations": {"fleet.nationtech.io/resume-rollout": "1"}}))
    assert op._plan_tokens == {"shop_web"}
    assert op._plan_all is False
    assert tracked.view.resume_token == "1"
    assert tracked.rollout is step


def test_a_spec_change_asks_for_a_plan_and_a_restart_reads_the_memory() -> None:
    op = operator()
    op.track(body())
    op._plan_tokens.clear()
    op._plan_dirty.clear()
    tracked = op.track(body(spec={"rollout": {"strategy": "Batched", "batchSize": 5}},
                            metadata={"generation": 2}))
    assert op._plan_tokens == {"shop_web"}
    assert tracked.generation == 2
    # a new operator finds the rollout's memory, timed-out devices included, in the status
    status = {"rollout": {"strategy": "Batched", "revision": "rev", "currentBatch": 3,
                          "batchSize": 2, "timedOutBatch": 3, "timedOut": 2,
                          "timedOutDevices": ["b", "a"],
                          "batchStartedAt": "2026-12-02T05:00:00Z"}}
    fresh = operator().track(body(status=status))
    memory = fresh.view.memory
    assert memory is not None
    assert memory.timed_out == ("a", "b")
    assert memory.timed_out_batch == 3
    assert memory.batch_started_at == 1796187600.0
