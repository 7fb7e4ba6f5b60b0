"""How the reconciler's loop uses podman's events: the deployment an event names is listed and
re-planned alone; an event it cannot place (no deployment, one not desired any more, a
restarted stream) brings a full pass; and events never postpone the periodic pass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from harmony_fleet.agent.config import RuntimeSection
from harmony_fleet.agent.plan import service_spec
from harmony_fleet.agent.reconciler import Reconciler, ReconcilerSettings
from harmony_fleet.agent.runtime import LABEL_DEPLOYMENT, ContainerInfo, Userns
from harmony_fleet.agent.watch import DesiredEntry
from harmony_fleet.contracts import DeploymentState, PodmanScore

from .test_reconciler_retry import FailingCreates

DEVICE = "pi-1"
SCORE = {"services": [{"name": "web", "image": "localhost/web:1"}]}


class Converged(FailingCreates):
    """Every desired deployment runs as its score says; listings are recorded."""

    def __init__(self, tokens: list[str]) -> None:
        super().__init__(AssertionError("nothing to create"))
        score = PodmanScore.model_validate(SCORE)
        self.containers = [
            ContainerInfo(id=f"id-{t}", name=f"{DEVICE}.{t}.web", state="running",
                          labels=dict(service_spec(DEVICE, t, score.services[0], [],
                                                   userns=Userns.HOST).labels))
            for t in tokens]
        self.listings: list[str | None] = []  # deployment listed, None: all of them

    async def list_managed(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        token = labels.get(LABEL_DEPLOYMENT)
        self.listings.append(token)
        return [c for c in self.containers if token in (None, c.labels[LABEL_DEPLOYMENT])]


async def running_loop(
    runtime: Converged, view: dict[str, DesiredEntry], interval: float = 300.0
) -> tuple[Reconciler, asyncio.Event, asyncio.Task[None]]:
    async def sink(state: DeploymentState) -> None:
        pass

    policy = ReconcilerSettings().policy.model_copy(update={"userns": Userns.HOST})
    reconciler = Reconciler(DEVICE, runtime, sink,
                            ReconcilerSettings(RuntimeSection(reconcile_interval_s=interval),
                                               policy))
    stop = asyncio.Event()
    task = asyncio.create_task(reconciler.run(lambda: view, asyncio.Event(), stop))
    await settle(runtime, 1)
    return reconciler, stop, task


async def settle(runtime: Converged, listings: int) -> None:
    for _ in range(200):
        if len(runtime.listings) >= listings:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


def entries(*tokens: str) -> dict[str, DesiredEntry]:
    value = json.dumps(SCORE).encode()
    return {t: DesiredEntry(t, value, revision=i + 1) for i, t in enumerate(tokens)}


async def test_an_event_relists_its_deployment_only() -> None:
    runtime = Converged(["ns_a", "ns_b"])
    reconciler, stop, task = await running_loop(runtime, entries("ns_a", "ns_b"))
    assert runtime.listings == [None]  # the first, full pass
    reconciler.containers_changed("ns_b")
    await settle(runtime, 2)
    assert runtime.listings == [None, "ns_b"]
    reconciler.containers_changed("ns_a")
    reconciler.containers_changed("ns_b")
    await settle(runtime, 4)
    assert sorted(runtime.listings[2:]) == ["ns_a", "ns_b"]
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_events_it_cannot_place_bring_a_full_pass() -> None:
    runtime = Converged(["ns_a"])
    reconciler, stop, task = await running_loop(runtime, entries("ns_a"))
    reconciler.containers_changed(None)  # a restarted stream: anything may have happened
    await settle(runtime, 2)
    assert runtime.listings == [None, None]
    reconciler.containers_changed("ns_deleted")  # not desired: only a pass may remove it
    await settle(runtime, 3)
    assert runtime.listings == [None, None, None]
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_events_do_not_postpone_the_periodic_pass() -> None:
    runtime = Converged(["ns_a"])
    reconciler, stop, task = await running_loop(runtime, entries("ns_a"), interval=0.4)
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.3
    while loop.time() < end:  # an event every 0.1 s, more often than the interval
        reconciler.containers_changed("ns_a")
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert runtime.listings.count(None) >= 3  # the first pass and one every 0.4 s
    assert runtime.listings.count("ns_a") >= 5
