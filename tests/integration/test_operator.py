"""fleet-operator against the Kubernetes API emulator, a real nats-server and simulated devices.

Devices here are SIMULATED (harmony_fleet.testing.simulate): their reports are written to the
buckets directly and a simulated runtime answers desired-state keys with Running/Failed. The
real agent is covered by the agent and identity tests; one test below pings a real agent
through the operator's command client.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.contracts import BUCKET_DESIRED_STATE, Phase, PodmanScore
from harmony_fleet.operator.app import FleetOperator, OperatorSettings
from harmony_fleet.operator.kube import KubeTarget
from harmony_fleet.operator.main import OperatorConfig, OperatorSection, run_operator
from harmony_fleet.testing.kube_emulator import (
    RunningKubeEmulator,
    max_per_window,
    start_kube_emulator,
)
from harmony_fleet.testing.pytest_plugin import unique_device_id
from harmony_fleet.testing.simulate import SimulatedFleet
from harmony_fleet.testing.stack import LocalStack

DEPLOYMENTS = "fleet.nationtech.io/v1alpha1/deployments"
DEVICES = "fleet.nationtech.io/v1alpha1/devices"
IMAGE = "localhost/fleet-busybox:latest"


def score(tag: str = "1") -> dict[str, Any]:
    return {"services": [{"name": "web", "image": IMAGE, "env": {"TAG": tag}}]}


def deployment(name: str, selector: dict[str, Any], spec_score: dict[str, Any],
               namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "fleet.nationtech.io/v1alpha1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"targetSelector": selector, "score": spec_score}}


@pytest.fixture
async def kube() -> AsyncIterator[RunningKubeEmulator]:
    async with start_kube_emulator() as running:
        yield running


class OperatorRun:
    def __init__(self, stack: LocalStack, kube: RunningKubeEmulator) -> None:
        self.stack, self.kube = stack, kube
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.operator: FleetOperator | None = None

    async def start(self) -> FleetOperator:
        self.stop = asyncio.Event()
        holder: list[FleetOperator] = []
        config = OperatorConfig(nats=self.stack.admin_settings(),
                                operator=OperatorSection(probe_listen=None))
        self.task = asyncio.create_task(run_operator(
            config, self.stop, target=KubeTarget(self.kube.url, insecure=True),
            settings=OperatorSettings(identity="op-test", offline_after_s=2,
                                      device_interval_s=0.3, replan_interval_s=2),
            kopf_tune={"watching.server_timeout": 30, "posting.enabled": False},
            holder=holder))
        for _ in range(200):
            if holder and holder[0].elector.is_leader and holder[0]._views_ready():
                self.operator = holder[0]
                return holder[0]
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.05)
        raise AssertionError("the operator did not become ready")

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def run(fleet_stack: LocalStack, kube: RunningKubeEmulator) -> AsyncIterator[OperatorRun]:
    runner = OperatorRun(fleet_stack, kube)
    yield runner
    await runner.halt()


async def eventually(check: Any, timeout: float = 15.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition never held (last: {last!r})")


async def keys_of(nc: NatsClient, token: str) -> set[str]:
    return set(await read_bucket(nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}"))


async def test_keys_follow_selector_labels_and_deletion(
    run: OperatorRun, admin_nc: NatsClient
) -> None:
    site = unique_device_id("site")
    d0, d1, d2 = (unique_device_id(f"dev{i}") for i in range(3))
    fleet = SimulatedFleet(admin_nc, {d0: {"site": site, "role": "cam"},
                                      d1: {"site": site, "role": "gateway"},
                                      d2: {"site": "elsewhere"}})
    await fleet.publish_info()
    await fleet.heartbeat()
    await run.start()
    name = unique_device_id("web")
    token = f"shop_{name}"
    selector = {"matchLabels": {"site": site},
                "matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["gateway"]}]}
    run.kube.emulator.create_object(DEPLOYMENTS, deployment(name, selector, score()),
                                    namespace="shop")

    async def keys() -> set[str]:
        return await keys_of(admin_nc, token)

    await eventually(lambda: _eq(keys, {f"{d0}.{token}"}))
    stored = await read_bucket(admin_nc.jetstream(), BUCKET_DESIRED_STATE, f"{d0}.{token}")
    assert PodmanScore.model_validate_json(stored[f"{d0}.{token}"]).services[0].env == {"TAG": "1"}

    await fleet.relabel(d1, {"site": site, "role": "cam"})  # now it matches
    await eventually(lambda: _eq(keys, {f"{d0}.{token}", f"{d1}.{token}"}))
    await fleet.relabel(d0, {"site": "moved"})  # no longer matches
    await eventually(lambda: _eq(keys, {f"{d1}.{token}"}))

    # the finalizer keeps the Deployment until its keys are gone
    obj = run.kube.emulator.get_object(DEPLOYMENTS, name, namespace="shop")
    assert obj is not None
    assert "fleet.nationtech.io/desired-state-cleanup" in obj["metadata"]["finalizers"]
    run.kube.emulator.delete_object(DEPLOYMENTS, name, namespace="shop")
    await eventually(lambda: _eq(keys, set()))
    await eventually(lambda: run.kube.emulator.get_object(DEPLOYMENTS, name,
                                                         namespace="shop") is None)


async def _eq(getter: Any, expected: set[str]) -> bool:
    return bool(await getter() == expected)


async def test_restart_rewrites_nothing(run: OperatorRun, admin_nc: NatsClient) -> None:
    site = unique_device_id("site")
    devices = {unique_device_id(f"r{i}"): {"site": site} for i in range(5)}
    fleet = SimulatedFleet(admin_nc, devices)
    await fleet.publish_info()
    await run.start()
    name = unique_device_id("app")
    run.kube.emulator.create_object(
        DEPLOYMENTS, deployment(name, {"matchLabels": {"site": site}}, score()), namespace="shop")
    await eventually(lambda: _len(keys_of(admin_nc, f"shop_{name}"), 5))
    kv = await admin_nc.jetstream().key_value(BUCKET_DESIRED_STATE)
    revisions = {d: (await kv.get(f"{d}.shop_{name}")).revision for d in devices}
    await run.halt()

    second = await run.start()
    await asyncio.sleep(2.5)  # a periodic re-plan too
    assert second.key_writes == 0
    assert {d: (await kv.get(f"{d}.shop_{name}")).revision for d in devices} == revisions


async def _len(keys: Any, n: int) -> bool:
    return len(await keys) == n


async def test_devices_become_device_resources_and_go_offline(
    run: OperatorRun, admin_nc: NatsClient
) -> None:
    device = unique_device_id("cr")
    fleet = SimulatedFleet(admin_nc, {device: {"site": "lab", "example.com/tier": "edge"}})
    await fleet.publish_info()
    await fleet.heartbeat()
    await run.start()
    emulator = run.kube.emulator
    cr = await eventually(lambda: emulator.get_object(DEVICES, device))
    assert cr["metadata"]["labels"] == {"site": "lab", "example.com/tier": "edge"}
    assert cr["spec"]["inventory"]["os"] == "Simulated Linux"
    await eventually(lambda: (emulator.get_object(DEVICES, device) or {}).get(
        "status", {}).get("online") is True)
    await fleet.relabel(device, {"site": "field"})
    await eventually(lambda: (emulator.get_object(DEVICES, device) or {})["metadata"].get(
        "labels") == {"site": "field"})
    # no heartbeat for longer than offline_after_s (2 s): offline, desired state untouched
    status = await eventually(lambda: _offline(emulator, device), timeout=10)
    assert status["lastSeen"].endswith("Z")


def _offline(emulator: Any, device: str) -> dict[str, Any] | None:
    status = (emulator.get_object(DEVICES, device) or {}).get("status") or {}
    return status if status.get("online") is False else None


async def test_status_aggregates_and_is_coalesced(run: OperatorRun, admin_nc: NatsClient) -> None:
    site = unique_device_id("site")
    devices = {unique_device_id(f"s{i}"): {"site": site} for i in range(4)}
    fleet = SimulatedFleet(admin_nc, devices)
    await fleet.publish_info()
    stop = asyncio.Event()
    runtime = asyncio.create_task(fleet.run_runtime(stop))
    try:
        await run.start()
        name = unique_device_id("agg")
        emulator = run.kube.emulator
        emulator.create_object(DEPLOYMENTS, deployment(name, {"matchLabels": {"site": site}},
                                                       score()), namespace="shop")

        def aggregate() -> dict[str, Any]:
            obj = emulator.get_object(DEPLOYMENTS, name, namespace="shop") or {}
            return dict((obj.get("status") or {}).get("aggregate") or {})

        await eventually(lambda: aggregate().get("succeeded") == 4)
        token = f"shop_{name}"
        spec_hash = PodmanScore.model_validate(score()).spec_hash()
        first = next(iter(devices))
        # a burst of state changes: 60 writes in about a second

        for i in range(60):
            phase = Phase.FAILED if i % 2 else Phase.STARTING
            await fleet.report(first, token, phase, spec_hash, f"burst {i}")
            await asyncio.sleep(0.015)
        await fleet.report(first, token, Phase.FAILED, spec_hash, "disk full")
        final = await eventually(lambda: "disk full" in str(aggregate().get("lastError"))
                                 and aggregate())
        assert final == {"matchedDeviceCount": 4, "succeeded": 3, "failed": 1, "pending": 0,
                         "lastError": f"{first}: disk full"}
        patches = emulator.writes(method="PATCH", resource=DEPLOYMENTS, name=name,
                                  subresource="status")
        assert max_per_window(patches, 0.98) <= 1
        obj = emulator.get_object(DEPLOYMENTS, name, namespace="shop")
        assert obj is not None
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"
        assert ready["reason"] == "DevicesFailed"
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    finally:
        stop.set()
        await runtime


async def test_invalid_score_gets_a_condition_and_no_keys(
    run: OperatorRun, admin_nc: NatsClient
) -> None:
    device = unique_device_id("inv")
    fleet = SimulatedFleet(admin_nc, {device: {"site": device}})
    await fleet.publish_info()
    await run.start()
    name = unique_device_id("bad")
    twice = {"services": [{"name": "web", "image": IMAGE}, {"name": "web", "image": IMAGE}]}
    run.kube.emulator.create_object(
        DEPLOYMENTS, deployment(name, {"matchLabels": {"site": device}}, twice), namespace="shop")

    def valid_condition() -> dict[str, Any] | None:
        obj = run.kube.emulator.get_object(DEPLOYMENTS, name, namespace="shop") or {}
        return next((c for c in (obj.get("status") or {}).get("conditions") or []
                     if c["type"] == "Valid"), None)

    condition = await eventually(valid_condition)
    assert condition["status"] == "False"
    assert condition["reason"] == "InvalidScore"
    assert "used more than once" in condition["message"]
    assert await keys_of(admin_nc, f"shop_{name}") == set()


async def test_operator_pings_a_real_agent(
    run: OperatorRun, fleet_stack: LocalStack, device_id: str
) -> None:
    await fleet_stack.add_device(device_id)
    operator = await run.start()
    reply = await operator.commands.ping(device_id)
    assert reply.device_id == device_id


@pytest.mark.skipif(not os.environ.get("FLEET_E2E_KUBECONFIG"),
                    reason="needs a real cluster: set FLEET_E2E_KUBECONFIG (none can run here)")
def test_against_a_real_cluster() -> None:  # pragma: no cover - gated
    """The same flows against a real API server: apply the CRDs, run the operator with the
    kubeconfig's credentials, apply examples/deployment.yaml and expect its keys."""
    import subprocess

    kubeconfig = os.environ["FLEET_E2E_KUBECONFIG"]
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "apply", "-f", "manifests/crds/"],
                   check=True)
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "apply", "-f",
                    "examples/deployment.yaml"], check=True)


async def test_two_replicas_one_writer_and_failover(
    fleet_stack: LocalStack, kube: RunningKubeEmulator, admin_nc: NatsClient
) -> None:
    site = unique_device_id("site")
    devices = {unique_device_id(f"ha{i}"): {"site": site} for i in range(3)}
    await SimulatedFleet(admin_nc, devices).publish_info()
    runs = [OperatorRun(fleet_stack, kube) for _ in range(2)]
    operators: list[FleetOperator] = []
    try:
        for i, replica in enumerate(runs):
            holder: list[FleetOperator] = []
            replica.task = asyncio.create_task(run_operator(
                OperatorConfig(nats=fleet_stack.admin_settings(),
                               operator=OperatorSection(probe_listen=None)),
                replica.stop, target=KubeTarget(kube.url, insecure=True),
                settings=OperatorSettings(identity=f"replica-{i}", lease_duration_s=3,
                                          lease_renew_s=0.5, device_resources=False),
                kopf_tune={"posting.enabled": False}, holder=holder))
            await eventually(lambda h=holder: bool(h))
            operators.append(holder[0])
        await asyncio.sleep(1.5)
        assert sum(op.elector.is_leader for op in operators) == 1
        leader = next(op for op in operators if op.elector.is_leader)
        follower = next(op for op in operators if not op.elector.is_leader)
        name = unique_device_id("ha")
        kube.emulator.create_object(DEPLOYMENTS, deployment(
            name, {"matchLabels": {"site": site}}, score()), namespace="shop")
        await eventually(lambda: _len(keys_of(admin_nc, f"shop_{name}"), 3))
        await eventually(lambda: f"shop_{name}" in follower.deployments)  # it watches too
        assert leader.key_writes == 3
        assert follower.key_writes == 0
        # the leader goes away: the follower takes over once the lease expires
        await runs[operators.index(leader)].halt()
        await eventually(lambda: follower.elector.is_leader, timeout=10)
        kube.emulator.patch_object(DEPLOYMENTS, name, {"spec": {"score": score("2")}},
                                   namespace="shop")
        await eventually(lambda: follower.key_writes == 3)
    finally:
        for replica in runs:
            await replica.halt()


async def test_bad_entries_are_skipped_and_rbac_covers_every_write(
    run: OperatorRun, admin_nc: NatsClient
) -> None:
    from harmony_fleet.contracts import BUCKET_DEVICE_INFO, BUCKET_DEVICE_STATE
    from harmony_fleet.operator.app import BAD_ENTRIES

    bad_before = BAD_ENTRIES.labels(bucket=BUCKET_DEVICE_INFO)._value.get()
    js = admin_nc.jetstream()
    broken = unique_device_id("broken")
    await (await js.key_value(BUCKET_DEVICE_INFO)).put(f"info.{broken}", b"{not json")
    await (await js.key_value(BUCKET_DEVICE_STATE)).put(f"state.{broken}.ns_x", b'{"phase": 1}')
    device = unique_device_id("fine")
    fleet = SimulatedFleet(admin_nc, {device: {"site": device}})
    await fleet.publish_info()
    await fleet.heartbeat()
    await run.start()
    name = unique_device_id("ok")
    run.kube.emulator.create_object(DEPLOYMENTS, deployment(
        name, {"matchLabels": {"site": device}}, score()), namespace="shop")
    await eventually(lambda: _len(keys_of(admin_nc, f"shop_{name}"), 1))
    await eventually(lambda: run.kube.emulator.get_object(DEVICES, device))
    await eventually(lambda: (run.kube.emulator.get_object(DEPLOYMENTS, name, namespace="shop")
                              or {}).get("status", {}).get("aggregate"))
    assert BAD_ENTRIES.labels(bucket=BUCKET_DEVICE_INFO)._value.get() > bad_before
    run.kube.emulator.delete_object(DEPLOYMENTS, name, namespace="shop")
    await eventually(lambda: run.kube.emulator.get_object(DEPLOYMENTS, name,
                                                         namespace="shop") is None)
    await run.halt()
    assert_rbac_covers(run.kube.emulator.write_log)


def assert_rbac_covers(writes: list[Any]) -> None:
    """Every write the operator made is allowed by manifests/operator/rbac.yaml."""
    from pathlib import Path

    import yaml

    docs = list(yaml.safe_load_all(
        (Path(__file__).parents[2] / "manifests/operator/rbac.yaml").read_text()))
    allowed = {(group, resource, verb)
               for doc in docs if doc["kind"] in ("ClusterRole", "Role")
               for rule in doc["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    verbs = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
    seen = set()
    for record in writes:
        if record.resource is None:
            continue
        resource = record.resource.plural + (f"/{record.subresource}" if record.subresource
                                             else "")
        need = (record.resource.group or "", resource, verbs[record.method])
        seen.add(need)
        assert need in allowed, f"{record.method} {record.path} needs {need} in the RBAC"
    assert ("fleet.nationtech.io", "deployments/status", "patch") in seen
    assert ("fleet.nationtech.io", "devices", "create") in seen


async def test_operator_with_token_credentials_survives_rollovers(
    kube: RunningKubeEmulator, tmp_path: Any
) -> None:
    from harmony_fleet.bus import NatsSettings
    from harmony_fleet.testing.services import start_services

    services = await asyncio.to_thread(start_services, tmp_path / "srv", auth="callout",
                                       token_lifetime_s=4)
    stack = LocalStack(services.workdir, services, owns_server=False)
    try:
        await stack.ensure_buckets()
        admin = await stack.admin_connect()
        site = unique_device_id("site")
        await SimulatedFleet(admin, {unique_device_id("tok"): {"site": site}}).publish_info()
        settings = NatsSettings.model_validate({"urls": [services.nats_url],
                                                "auth": stack._admin_auth()})
        assert settings.auth.mode == "zitadel"
        replica = OperatorRun(stack, kube)
        holder: list[FleetOperator] = []
        replica.task = asyncio.create_task(run_operator(
            OperatorConfig(nats=settings, operator=OperatorSection(probe_listen=None)),
            replica.stop, target=KubeTarget(kube.url, insecure=True),
            settings=OperatorSettings(identity="tok-op", device_resources=False),
            kopf_tune={"posting.enabled": False}, holder=holder))
        try:
            await eventually(lambda: holder and holder[0].elector.is_leader
                             and holder[0]._views_ready())
            await asyncio.sleep(10)  # several token lifetimes
            assert holder[0].nc.is_connected
            name = unique_device_id("late")
            kube.emulator.create_object(DEPLOYMENTS, deployment(
                name, {"matchLabels": {"site": site}}, score()), namespace="shop")
            await eventually(lambda: _len(keys_of(admin, f"shop_{name}"), 1))
        finally:
            await replica.halt()
            await admin.drain()
    finally:
        await asyncio.to_thread(services.stop)


async def test_namespace_limited_watching_and_health_probe(
    fleet_stack: LocalStack, kube: RunningKubeEmulator, admin_nc: NatsClient
) -> None:
    import json
    import urllib.request

    from harmony_fleet.testing.nats_server import free_port

    device = unique_device_id("ns")
    await SimulatedFleet(admin_nc, {device: {"site": device}}).publish_info()
    port = free_port()
    replica = OperatorRun(fleet_stack, kube)
    holder: list[FleetOperator] = []
    replica.task = asyncio.create_task(run_operator(
        OperatorConfig(nats=fleet_stack.admin_settings(), operator=OperatorSection(
            namespaces=["shop"], probe_listen=f"127.0.0.1:{port}")),
        replica.stop, target=KubeTarget(kube.url, insecure=True),
        settings=OperatorSettings(identity="ns-op", device_resources=False),
        kopf_tune={"posting.enabled": False}, holder=holder))
    try:
        await eventually(lambda: holder and holder[0].elector.is_leader)
        selector = {"matchLabels": {"site": device}}
        kube.emulator.create_object(DEPLOYMENTS, deployment("outside", selector, score(),
                                                            namespace="other"),
                                    namespace="other")
        kube.emulator.create_object(DEPLOYMENTS, deployment("inside", selector, score()),
                                    namespace="shop")
        await eventually(lambda: _len(keys_of(admin_nc, "shop_inside"), 1))
        await asyncio.sleep(1)
        assert await keys_of(admin_nc, "other_outside") == set()
        assert "other_outside" not in holder[0].deployments

        def probe() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert resp.status == 200
                return dict(json.loads(resp.read()))

        health = await eventually(lambda: _try(probe))
        assert health.get("leader") is True
    finally:
        await replica.halt()


def _try(fn: Any) -> Any:
    try:
        return fn()
    except OSError:
        return None
