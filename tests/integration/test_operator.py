"""fleet-operator against the Kubernetes API emulator, a real nats-server and simulated devices.

Devices here are SIMULATED (harmony_fleet_harness.simulate): their reports are written to the
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
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet.operator.app import FleetOperator
from harmony_fleet.operator.config import OperatorSection
from harmony_fleet.operator.kube import KubeTarget
from harmony_fleet.operator.main import OperatorConfig, run_operator
from harmony_fleet_harness.kube_emulator import (
    RunningKubeEmulator,
    max_per_window,
    start_kube_emulator,
)
from harmony_fleet_harness.pytest_plugin import unique_device_id
from harmony_fleet_harness.simulate import SimulatedFleet

from .identity import long_lived_admin

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
            settings=OperatorSection(identity="op-test", offline_after_s=2,
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
                settings=OperatorSection(identity=f"replica-{i}", lease_duration_s=3,
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


#: the roles bound to the operator's ServiceAccount (the others in rbac.yaml are for users)
OPERATOR_ROLES = ("fleet-operator", "fleet-operator-leader")


def assert_rbac_covers(writes: list[Any]) -> None:
    """Every write the operator made is allowed by manifests/operator/rbac.yaml."""
    from pathlib import Path

    import yaml

    docs = yaml.safe_load(
        (Path(__file__).parents[2] / "manifests/operator/rbac.yaml").read_text())["items"]
    allowed = {(group, resource, verb)
               for doc in docs if doc["kind"] in ("ClusterRole", "Role")
               and doc["metadata"]["name"] in OPERATOR_ROLES
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
    from harmony_fleet.localstack.services import start_services

    services = await asyncio.to_thread(start_services, tmp_path / "srv", auth="callout",
                                       token_lifetime_s=4)
    stack = LocalStack(services.workdir, services, owns_server=False)
    try:
        await stack.ensure_buckets()
        # the test's own eyes outlive the 4 s tokens (the operator's connection is the subject)
        admin = await long_lived_admin(services)
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
            settings=OperatorSection(identity="tok-op", device_resources=False),
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

    from harmony_fleet.localstack.nats_server import free_port

    device = unique_device_id("ns")
    await SimulatedFleet(admin_nc, {device: {"site": device}}).publish_info()
    port = free_port()
    replica = OperatorRun(fleet_stack, kube)
    holder: list[FleetOperator] = []
    replica.task = asyncio.create_task(run_operator(
        OperatorConfig(nats=fleet_stack.admin_settings(), operator=OperatorSection(
            namespaces=["shop"], probe_listen=f"127.0.0.1:{port}")),
        replica.stop, target=KubeTarget(kube.url, insecure=True),
        settings=OperatorSection(identity="ns-op", device_resources=False),
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


# ----------------------------------------------------------------------------- secrets


def secret_deployment(name: str, selector: dict[str, Any], secret: str,
                      key: str = "password") -> dict[str, Any]:
    body = deployment(name, selector, {"services": [{"name": "web", "image": IMAGE,
                                                     "secrets": ["db"]}]})
    body["spec"]["secrets"] = [{"name": "db", "secretKeyRef": {"name": secret, "key": key}}]
    return body


def kube_secret(name: str, value: bytes, namespace: str = "shop") -> dict[str, Any]:
    import base64

    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"password": base64.b64encode(value).decode()}}


def condition(emulator: Any, name: str, kind: str) -> dict[str, Any] | None:
    obj = emulator.get_object(DEPLOYMENTS, name, namespace="shop") or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == kind), None)


async def test_kubernetes_secrets_are_sealed_to_each_device(
    run: OperatorRun, admin_nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging
    import secrets as random_secrets

    from harmony_fleet.contracts.sealing import generate_private_key
    from harmony_fleet_harness.kube_emulator import SECRETS

    caplog.set_level(logging.DEBUG)
    site = unique_device_id("site")
    d0, d1, keyless = (unique_device_id(f"sec{i}") for i in range(3))
    fleet = SimulatedFleet(admin_nc, {d: {"site": site} for d in (d0, d1, keyless)},
                           sealing_keys={d0: generate_private_key(), d1: generate_private_key()})
    await fleet.publish_info()
    stop = asyncio.Event()
    runtime = asyncio.create_task(fleet.run_runtime(stop))
    try:
        await run.start()
        emulator = run.kube.emulator
        value = ("pw-" + random_secrets.token_hex(16)).encode()
        secret_name = unique_device_id("creds")
        emulator.create_object(SECRETS, kube_secret(secret_name, value), namespace="shop")
        name = unique_device_id("vault")
        token = f"shop_{name}"
        emulator.create_object(DEPLOYMENTS, secret_deployment(
            name, {"matchLabels": {"site": site}}, secret_name), namespace="shop")

        # the two devices with a key get their own sealing; the keyless one gets nothing
        await eventually(lambda: _eq(lambda: keys_of(admin_nc, token),
                                     {f"{d0}.{token}", f"{d1}.{token}"}))
        stored = await read_bucket(admin_nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
        assert stored[f"{d0}.{token}"] != stored[f"{d1}.{token}"]
        assert all(value not in raw for raw in stored.values())
        await eventually(lambda: all(fleet.opened.get(f"{d}.{token}") == {"db": value}
                                     for d in (d0, d1)))

        def agg() -> dict[str, Any]:
            obj = emulator.get_object(DEPLOYMENTS, name, namespace="shop") or {}
            return dict((obj.get("status") or {}).get("aggregate") or {})

        final = await eventually(lambda: agg().get("succeeded") == 2 and agg())
        assert final["matchedDeviceCount"] == 3
        assert final["failed"] == 1
        assert final["lastError"].startswith(f"{keyless}: publishes no sealing key")

        # a restart reseals to the same bytes: nothing is rewritten
        await run.halt()
        second = await run.start()
        await asyncio.sleep(2.5)  # a periodic re-plan too
        assert second.key_writes == 0

        # a device with a new key gets the secret sealed to that key
        before_rekey = (await read_bucket(admin_nc.jetstream(), BUCKET_DESIRED_STATE,
                                          f"{d0}.{token}"))[f"{d0}.{token}"]
        fleet.opened.pop(f"{d0}.{token}")
        await fleet.rekey(d0, generate_private_key())
        await eventually(lambda: fleet.opened.get(f"{d0}.{token}") == {"db": value})
        after_rekey = (await read_bucket(admin_nc.jetstream(), BUCKET_DESIRED_STATE,
                                         f"{d0}.{token}"))[f"{d0}.{token}"]
        assert after_rekey != before_rekey

        # a new value in the Kubernetes Secret reaches the devices at the next plan
        new_value = ("pw-" + random_secrets.token_hex(16)).encode()
        emulator.patch_object(SECRETS, secret_name, kube_secret(secret_name, new_value),
                              namespace="shop")
        await eventually(lambda: all(fleet.opened.get(f"{d}.{token}") == {"db": new_value}
                                     for d in (d0, d1)), timeout=20)

        # a Secret that goes away makes the Deployment invalid; the keys stay as they were
        before = await read_bucket(admin_nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
        emulator.delete_object(SECRETS, secret_name, namespace="shop")
        valid = await eventually(lambda: (c := condition(emulator, name, "Valid"))
                                 and c["status"] == "False" and c, timeout=20)
        assert valid["reason"] == "SecretUnavailable"
        assert valid["message"] == (f"secret db: Kubernetes Secret shop/{secret_name} "
                                    "does not exist")
        assert await read_bucket(admin_nc.jetstream(), BUCKET_DESIRED_STATE,
                                 f"*.{token}") == before

        # the plaintext is in no log record and nowhere in the Deployment
        shown = json.dumps(emulator.get_object(DEPLOYMENTS, name, namespace="shop"))
        for plain in (value, new_value):
            assert plain.decode() not in shown
            assert plain.decode() not in caplog.text
    finally:
        stop.set()
        await runtime


async def test_a_missing_secret_key_is_a_clear_condition_and_writes_nothing(
    run: OperatorRun, admin_nc: NatsClient
) -> None:
    from harmony_fleet.contracts.sealing import generate_private_key
    from harmony_fleet_harness.kube_emulator import SECRETS

    device = unique_device_id("nokey")
    await SimulatedFleet(admin_nc, {device: {"site": device}},
                         sealing_keys={device: generate_private_key()}).publish_info()
    await run.start()
    emulator = run.kube.emulator
    secret_name = unique_device_id("creds")
    emulator.create_object(SECRETS, kube_secret(secret_name, b"x"), namespace="shop")
    name = unique_device_id("wrongkey")
    emulator.create_object(DEPLOYMENTS, secret_deployment(
        name, {"matchLabels": {"site": device}}, secret_name, key="token"), namespace="shop")
    valid = await eventually(lambda: condition(emulator, name, "Valid"))
    assert valid["status"] == "False"
    assert valid["reason"] == "SecretUnavailable"
    assert valid["message"] == f"secret db: Kubernetes Secret shop/{secret_name} has no key 'token'"
    assert await keys_of(admin_nc, f"shop_{name}") == set()


def test_rbac_reads_secrets_by_name_only() -> None:
    """The operator reads the Secrets it is pointed at (get) and cannot enumerate others."""
    from pathlib import Path

    import yaml

    docs = yaml.safe_load(
        (Path(__file__).parents[2] / "manifests/operator/rbac.yaml").read_text())["items"]
    verbs = {verb for doc in docs if doc["kind"] in ("ClusterRole", "Role")
             and doc["metadata"]["name"] in OPERATOR_ROLES
             for rule in doc["rules"] if "" in rule["apiGroups"] and "secrets" in rule["resources"]
             for verb in rule["verbs"]}
    assert verbs == {"get"}


# ---- batched rollouts -----------------------------------------------------------------------


def rollout_of(emulator: Any, name: str) -> dict[str, Any]:
    obj = emulator.get_object(DEPLOYMENTS, name, namespace="shop") or {}
    return dict((obj.get("status") or {}).get("rollout") or {})


async def test_batched_rollout_pauses_on_failures_and_resumes(
    run: OperatorRun, admin_nc: NatsClient
) -> None:
    """300 simulated devices, batches of 20 %, at most 2 failures: 3 injected failures in
    the second batch pause the rollout with the devices named; the first score keeps running
    on the batches not reached; a resume (the annotation) accepts them and the rollout
    completes; a new score is rolled out batch by batch again."""
    site = unique_device_id("rollout")
    devices = {f"{site}-{i:03d}": {"site": site} for i in range(300)}
    ordered = sorted(devices)
    fleet = SimulatedFleet(admin_nc, devices, concurrency=64)
    fleet.failing = set(ordered[70:73])  # batch 2 is ordered[60:120]
    await fleet.publish_info()
    stop = asyncio.Event()
    runtime = asyncio.create_task(fleet.run_runtime(stop))
    emulator = run.kube.emulator
    name = unique_device_id("batched")
    token = f"shop_{name}"
    try:
        await run.start()
        body = deployment(name, {"matchLabels": {"site": site}}, score("1"))
        body["spec"]["rollout"] = {"strategy": "Batched", "batchPercent": 20,
                                   "successThreshold": 90, "maxFailures": 2}
        emulator.create_object(DEPLOYMENTS, body, namespace="shop")
        # batch 1: exactly 60 keys until its devices report
        paused = await eventually(lambda: rollout_of(emulator, name).get("phase") == "Paused"
                                  and rollout_of(emulator, name), timeout=60)
        assert paused["pauseReason"] == "FailureThresholdExceeded"
        assert paused["currentBatch"] == 2
        assert paused["batchSize"] == 60
        assert paused["failingDevices"] == ordered[70:73]
        keys = await keys_of(admin_nc, token)
        assert len(keys) <= 120  # never past the second batch
        assert {f"{d}.{token}" for d in ordered[:60]} <= keys
        cond = condition(emulator, name, "RolloutPaused")
        assert cond is not None
        assert cond["status"] == "True"
        assert cond["reason"] == "FailureThresholdExceeded"
        assert all(d in cond["message"] for d in ordered[70:73])
        await asyncio.sleep(1.5)  # paused means paused
        assert len(await keys_of(admin_nc, token)) == len(keys)

        emulator.patch_object(DEPLOYMENTS, name, {"metadata": {"annotations": {
            "fleet.nationtech.io/resume-rollout": "1"}}}, namespace="shop")
        done = await eventually(lambda: rollout_of(emulator, name).get("phase") == "Complete"
                                and rollout_of(emulator, name), timeout=90)
        assert done["updated"] == 300
        assert done["currentBatch"] == 5
        assert len(await keys_of(admin_nc, token)) == 300
        cond = condition(emulator, name, "RolloutPaused")
        assert cond is not None
        assert cond["status"] == "False"

        # a new score: batch by batch again, the old one keeps running meanwhile
        fleet.failing = set()
        spec = dict(body["spec"], score=score("2"))
        emulator.patch_object(DEPLOYMENTS, name, {"spec": spec}, namespace="shop")
        first = await eventually(lambda: rollout_of(emulator, name).get("revision") not in (
            None, done["revision"]) and rollout_of(emulator, name), timeout=30)
        assert first["currentBatch"] >= 1
        stored = await read_bucket(admin_nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
        assert len(stored) == 300  # nobody lost its score
        await eventually(lambda: rollout_of(emulator, name).get("phase") == "Complete"
                         and rollout_of(emulator, name).get("revision") == first["revision"],
                         timeout=90)
        stored = await read_bucket(admin_nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
        assert {PodmanScore.model_validate_json(v).services[0].env["TAG"]
                for v in stored.values()} == {"2"}
    finally:
        stop.set()
        await runtime


async def test_offline_devices_time_out_their_batch(
    run: OperatorRun, admin_nc: NatsClient
) -> None:
    """40 simulated devices, batches of 10, 3 s per batch, 80 % to pass, 2 failures
    tolerated. One device of batch 1 never answers: the batch ends at its timeout (9 of 10
    ran) and batch 2 starts. Two of batch 3 never answer either: 3 timed out, over
    maxFailures, so the rollout pauses naming them, and stays paused across an operator
    restart. A resume finishes it while they are still offline (their keys wait for them);
    one of them coming back counts as what it reports."""
    site = unique_device_id("tmo")
    devices = {f"{site}-{i:03d}": {"site": site} for i in range(40)}
    ordered = sorted(devices)
    offline = [ordered[3], ordered[24], ordered[27]]
    fleet = SimulatedFleet(admin_nc, devices, concurrency=32)
    fleet.silent = set(offline)
    await fleet.publish_info()
    stop = asyncio.Event()
    runtime = asyncio.create_task(fleet.run_runtime(stop))
    emulator = run.kube.emulator
    name = unique_device_id("timeout")
    token = f"shop_{name}"
    try:
        await run.start()
        body = deployment(name, {"matchLabels": {"site": site}}, score("1"))
        body["spec"]["rollout"] = {"strategy": "Batched", "batchSize": 10,
                                   "successThreshold": 80, "maxFailures": 2,
                                   "batchTimeoutSeconds": 3}
        emulator.create_object(DEPLOYMENTS, body, namespace="shop")
        # batch 1 waits for its silent device until the timeout, then batch 2 starts
        first = await eventually(lambda: rollout_of(emulator, name).get("currentBatch") == 1
                                 and rollout_of(emulator, name), timeout=15)
        assert first["timedOutDevices"] == []
        later = await eventually(lambda: rollout_of(emulator, name).get("currentBatch", 0) >= 2
                                 and rollout_of(emulator, name), timeout=30)
        assert later["timedOutDevices"][:1] == [ordered[3]]
        paused = await eventually(lambda: rollout_of(emulator, name).get("phase") == "Paused"
                                  and rollout_of(emulator, name), timeout=60)
        assert paused["pauseReason"] == "FailureThresholdExceeded"
        assert paused["currentBatch"] == 3
        assert paused["timedOutDevices"] == offline
        assert paused["timedOut"] == 3
        assert all(d in paused["message"] for d in offline)
        cond = condition(emulator, name, "RolloutPaused")
        assert cond is not None
        assert cond["status"] == "True"
        assert all(d in cond["message"] for d in offline)
        assert len(await keys_of(admin_nc, token)) == 30  # nothing past batch 3

        # a restarted operator finds the pause and the timed-out devices in the status
        await run.halt()
        await run.start()
        await asyncio.sleep(1.5)
        assert rollout_of(emulator, name)["phase"] == "Paused"
        assert rollout_of(emulator, name)["timedOutDevices"] == offline
        assert len(await keys_of(admin_nc, token)) == 30

        emulator.patch_object(DEPLOYMENTS, name, {"metadata": {"annotations": {
            "fleet.nationtech.io/resume-rollout": "1"}}}, namespace="shop")
        done = await eventually(lambda: rollout_of(emulator, name).get("phase") == "Complete"
                                and rollout_of(emulator, name), timeout=30)
        assert done["updated"] == 40
        assert done["timedOutDevices"] == offline
        assert len(await keys_of(admin_nc, token)) == 40
        obj = emulator.get_object(DEPLOYMENTS, name, namespace="shop")
        assert obj["status"]["aggregate"]["pending"] == 3

        # one comes back and runs: no longer timed out
        spec_hash = PodmanScore.model_validate(score("1")).spec_hash()
        await fleet.report(ordered[3], token, Phase.RUNNING, spec_hash)
        await eventually(lambda: rollout_of(emulator, name).get("timedOutDevices")
                         == offline[1:], timeout=15)
    finally:
        stop.set()
        await runtime


@pytest.mark.parametrize(("rollout", "reason"), [
    ({"strategy": "Batched"}, "InvalidRollout"),
    ({"strategy": "Batched", "batchPercent": 120}, "InvalidRollout"),
    ({"strategy": "AllAtOnce", "maxFailures": 3}, "InvalidRollout"),
])
async def test_bad_rollout_is_invalid_and_writes_nothing(
    run: OperatorRun, admin_nc: NatsClient, rollout: dict[str, Any], reason: str
) -> None:
    """The API server rejects these at admission (CRD schema, CEL); an object that got in
    anyway (an older CRD) is Valid=False with the reason, and nothing is written."""
    site = unique_device_id("badroll")
    fleet = SimulatedFleet(admin_nc, {unique_device_id("d"): {"site": site}})
    await fleet.publish_info()
    await run.start()
    name = unique_device_id("bad")
    body = deployment(name, {"matchLabels": {"site": site}}, score())
    body["spec"]["rollout"] = rollout
    run.kube.emulator.create_object(DEPLOYMENTS, body, namespace="shop")
    valid = await eventually(lambda: condition(run.kube.emulator, name, "Valid"))
    assert valid["status"] == "False"
    assert valid["reason"] == reason
    assert await keys_of(admin_nc, f"shop_{name}") == set()


async def test_contradictory_selector_is_invalid(run: OperatorRun, admin_nc: NatsClient) -> None:
    await run.start()
    name = unique_device_id("never")
    selector = {"matchLabels": {"site": "a"},
                "matchExpressions": [{"key": "site", "operator": "NotIn", "values": ["a"]}]}
    run.kube.emulator.create_object(DEPLOYMENTS, deployment(name, selector, score()),
                                    namespace="shop")
    valid = await eventually(lambda: condition(run.kube.emulator, name, "Valid"))
    assert valid["status"] == "False"
    assert valid["reason"] == "InvalidSelector"
    assert "site" in valid["message"]
