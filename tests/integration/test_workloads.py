"""The agent runs workloads: real podman, real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.runtime import (
    LABEL_DEPLOYMENT,
    LABEL_INIT,
    LABEL_MANAGED,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
)
from harmony_fleet.bus import FleetCommandsClient
from harmony_fleet.contracts import Phase
from harmony_fleet.localstack.stack import LocalStack

from .workloads import (
    IDLE,
    by_name,
    containers,
    delete,
    init,
    policy_toml,
    put,
    service,
    wait_state,
)

pytestmark = pytest.mark.podman


async def test_put_update_delete(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    score = {"services": [service("web", fleet_image), service("worker", fleet_image)]}
    await put(admin_nc, device_id, "demo_app", score)
    state = await wait_state(admin_nc, device_id, "demo_app", Phase.RUNNING)
    assert state.device_id == device_id
    assert [s.name for s in state.services] == ["web", "worker"]
    assert all(s.state == "running" for s in state.services)
    assert state.revision is not None
    assert state.spec_hash is not None

    found = by_name(device_id)
    web = found[f"{device_id}.demo_app.web"]
    worker = found[f"{device_id}.demo_app.worker"]
    assert web["State"] == "running"
    assert web["Labels"][LABEL_MANAGED] == "true"
    assert web["Labels"][LABEL_DEPLOYMENT] == "demo_app"
    assert web["Labels"][LABEL_SERVICE] == "web"
    assert len(web["Labels"][LABEL_SPEC_HASH]) == 16

    # change one service: only that one is recreated
    score["services"][1]["env"] = {"MODE": "fast"}
    await put(admin_nc, device_id, "demo_app", score)
    first_hash = state.spec_hash
    state = await wait_state(admin_nc, device_id, "demo_app",
                             lambda s: s.phase is Phase.RUNNING and s.spec_hash != first_hash)
    found = by_name(device_id)
    assert found[f"{device_id}.demo_app.web"]["Id"] == web["Id"]
    assert found[f"{device_id}.demo_app.worker"]["Id"] != worker["Id"]

    # delete the key: containers go, state says Removed
    await delete(admin_nc, device_id, "demo_app")
    state = await wait_state(admin_nc, device_id, "demo_app", Phase.REMOVED)
    assert "removed 2 container(s)" in state.message
    assert containers(device_id) == []


async def test_agent_restart_adopts_running_containers(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True, mode="subprocess")
    await put(admin_nc, device_id, "svc_a", {"services": [service("web", fleet_image)]})
    await put(admin_nc, device_id, "svc_b", {"services": [service("web", fleet_image)]})
    for dep in ("svc_a", "svc_b"):
        await wait_state(admin_nc, device_id, dep, Phase.RUNNING)
    before = {name: c["Id"] for name, c in by_name(device_id).items()}
    assert len(before) == 2

    assert await fleet_stack.stop_device(device_id) == 0
    # the workloads keep running without their agent
    assert {c["State"] for c in containers(device_id)} == {"running"}

    first = await wait_state(admin_nc, device_id, "svc_a", Phase.RUNNING)
    await fleet_stack.add_device(device_id, runtime_enabled=True, mode="subprocess")
    # the new agent reports again once it has looked at what runs
    await wait_state(admin_nc, device_id, "svc_a", lambda s: s.updated_at > first.updated_at)
    await asyncio.sleep(2.5)  # and one periodic pass more
    after = {name: c["Id"] for name, c in by_name(device_id).items()}
    assert after == before


async def test_init_containers_run_in_order_then_services(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    volume = {"source": str(shared), "target": "/data"}
    # host paths are refused unless the device's policy allows them
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=policy_toml([(str(shared), True)]))
    score = {
        "init_containers": [
            init("first", fleet_image, "echo one >> /data/order", volumes=[volume]),
            init("second", fleet_image, "test -f /data/order && echo two >> /data/order",
                 volumes=[volume]),
        ],
        "services": [service("web", fleet_image, "cat /data/order; " + IDLE, volumes=[volume])],
    }
    await put(admin_nc, device_id, "ns_init", score)
    await wait_state(admin_nc, device_id, "ns_init", Phase.RUNNING)
    assert (shared / "order").read_text() == "one\ntwo\n"
    # init containers are gone and never listed as services
    assert containers(device_id, f"label={LABEL_INIT}") == []
    assert list(by_name(device_id)) == [f"{device_id}.ns_init.web"]


#: An init container that talks a lot before it fails: only its last lines are quoted.
CHATTY = "i=0; while [ $i -lt 15 ]; do i=$((i+1)); echo step $i; done; "


@pytest.mark.parametrize(
    ("script", "timeout", "needle", "output"),
    [
        (CHATTY + "echo 'ERROR: no database' >&2; exit 3", 300,
         "init container migrate ({dev}.ns_bad.init.migrate) exited with code 3",
         "\n".join([*(f"step {i}" for i in range(7, 16)), "ERROR: no database"])),
        (CHATTY + "echo waiting for the database; sleep 30", 1,
         "init container migrate ({dev}.ns_bad.init.migrate) timed out after",
         "\n".join([*(f"step {i}" for i in range(7, 16)), "waiting for the database"])),
    ],
    ids=["non-zero-exit", "timeout"],
)
async def test_failing_init_container_fails_the_deployment_with_its_last_output(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    script: str, timeout: int, needle: str, output: str,
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    score = {
        "init_containers": [init("migrate", fleet_image, script, timeout=timeout)],
        "services": [service("web", fleet_image)],
    }
    await put(admin_nc, device_id, "ns_bad", score)
    state = await wait_state(admin_nc, device_id, "ns_bad", Phase.FAILED)
    assert needle.format(dev=device_id) in state.message
    assert state.message.endswith("; its last output:\n" + output), state.message
    assert containers(device_id) == []  # no service started, the init container removed


async def test_bad_values_fail_only_their_deployment(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    await put(admin_nc, device_id, "ok_app", {"services": [service("web", fleet_image)]})
    good = await wait_state(admin_nc, device_id, "ok_app", Phase.RUNNING)
    good_id = by_name(device_id)[f"{device_id}.ok_app.web"]["Id"]

    cases = {
        "bad_json": (b"{not json", "desired state is not valid JSON"),
        "bad_schema": ({"services": [{"name": "Web!", "image": fleet_image}]},
                       "invalid workload: services.0.name"),
        "no_image": ({"services": [service("web", "localhost/does-not-exist:1")]},
                     "cannot pull image localhost/does-not-exist:1"),
        "empty": ({"services": []}, "invalid workload: services"),
    }
    for deployment, (value, _) in cases.items():
        await put(admin_nc, device_id, deployment, value)
    for deployment, (_, needle) in cases.items():
        state = await wait_state(admin_nc, device_id, deployment, Phase.FAILED)
        assert needle in state.message, state.message

    still = await wait_state(admin_nc, device_id, "ok_app", Phase.RUNNING)
    assert still.since == good.since  # never left Running
    assert by_name(device_id)[f"{device_id}.ok_app.web"]["Id"] == good_id
    assert (await FleetCommandsClient(admin_nc).ping(device_id)).device_id == device_id


async def test_oversized_value_fails_with_the_limit(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 runtime={"max_desired_state_bytes": 2048})
    big = {"services": [service("web", fleet_image, env={"PAD": "x" * 4000})]}
    await put(admin_nc, device_id, "big_app", big)
    state = await wait_state(admin_nc, device_id, "big_app", Phase.FAILED)
    assert "this device accepts at most 2048" in state.message


async def test_container_that_dies_later_is_reported(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    score = {"services": [service("job", fleet_image, "sleep 2; exit 7", restart_policy="no")]}
    await put(admin_nc, device_id, "ns_dies", score)
    await wait_state(admin_nc, device_id, "ns_dies", Phase.RUNNING)
    state = await wait_state(admin_nc, device_id, "ns_dies", Phase.FAILED, timeout=20)
    assert state.message == "service job exited with code 7"
    assert state.services[0].exit_code == 7
