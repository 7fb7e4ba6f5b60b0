"""A container podman keeps in a transition (``stopping`` that never ends: a wedged conmon, a
hung storage driver) is waited for only so long: after the runtime's ``transition_timeout_s``
(and at least its stop timeout plus 30 s) the agent removes it by force and applies the score
again, instead of leaving the deployment stuck forever."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from harmony_fleet.agent import reconciler as reconciler_module
from harmony_fleet.agent.config import RuntimeSection
from harmony_fleet.agent.plan import service_spec
from harmony_fleet.agent.reconciler import Reconciler, ReconcilerSettings
from harmony_fleet.agent.runtime import ContainerInfo, ContainerSpec, Userns
from harmony_fleet.agent.watch import DesiredEntry
from harmony_fleet.contracts import DeploymentState, PodmanScore

from .test_reconciler_retry import FailingCreates, settle

DEVICE, TOKEN = "pi-1", "ns_web"
SCORE = {"services": [{"name": "web", "image": "localhost/web:1"}]}


class Wedged(FailingCreates):
    """One container of the deployment, ``stopping`` until removed; creates succeed."""

    def __init__(self) -> None:
        super().__init__(AssertionError("unused"))
        spec = service_spec(DEVICE, TOKEN, PodmanScore.model_validate(SCORE).services[0], [],
                            userns=Userns.HOST)
        self.containers = [ContainerInfo(id="wedged", name=spec.name, state="stopping",
                                         labels=dict(spec.labels))]
        self.removed: list[str] = []

    async def list_managed(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        return list(self.containers)

    async def remove(self, container: str, *, stop_timeout_s: int) -> None:
        self.removed.append(container)
        self.containers = [c for c in self.containers if c.id != container]

    async def create(self, spec: ContainerSpec) -> str:
        self.creates += 1
        self.containers.append(ContainerInfo(id=f"new-{self.creates}", name=spec.name,
                                             state="created", labels=dict(spec.labels)))
        return f"new-{self.creates}"

    async def start(self, container: str) -> None:
        self.containers = [ContainerInfo(c.id, c.name, "running", c.labels)
                           if c.id == container else c for c in self.containers]


@pytest.mark.parametrize(("timeout_s", "stop_timeout_s", "limit_s"),
                         [(300.0, 10, 300.0), (5.0, 20, 50.0)],
                         ids=["transition-timeout", "stop-timeout-plus-30"])
async def test_a_wedged_container_is_waited_for_then_removed_by_force(
    monkeypatch: pytest.MonkeyPatch, timeout_s: float, stop_timeout_s: int, limit_s: float
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(reconciler_module.time, "monotonic", lambda: clock[0])
    runtime = Wedged()
    reports: list[DeploymentState] = []

    async def sink(state: DeploymentState) -> None:
        reports.append(state)

    policy = ReconcilerSettings().policy.model_copy(update={"userns": Userns.HOST})
    runtime_settings = RuntimeSection(transition_timeout_s=timeout_s,
                                      stop_timeout_s=stop_timeout_s)
    reconciler = Reconciler(DEVICE, runtime, sink, ReconcilerSettings(runtime_settings, policy))
    view = {TOKEN: DesiredEntry(TOKEN, json.dumps(SCORE).encode(), revision=3)}

    async def one_pass(after_s: float) -> None:
        clock[0] += after_s
        await reconciler.reconcile_pass(view)
        await settle(reconciler)

    await one_pass(0)
    await one_pass(limit_s - 1)  # still within the limit: waited for, nothing touched
    assert (runtime.removed, runtime.creates) == ([], 0)
    await one_pass(2)  # past it: removed by force, the score applied again
    assert runtime.removed == ["wedged"]
    assert runtime.creates == 1
    assert [c.state for c in runtime.containers] == ["running"]
    assert reports[-1].phase.value == "Running"
    await one_pass(1)
    assert runtime.creates == 1
    assert reconciler._in_transition == {}  # nothing left to remember
