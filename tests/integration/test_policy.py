"""The device's workload policy, attacked: the real agent, real podman, real nats-server.

Every test performs the attack a deployer with write access to desired-state could make and
checks the device refused it before creating (or pulling) anything, or, for what the policy
allows, that the workload really runs with what it was given.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.agent import policy as policy_module
from harmony_fleet.agent.config import AgentConfig, PolicySection
from harmony_fleet.agent.runtime import Userns
from harmony_fleet.contracts import Phase
from harmony_fleet.localstack.stack import LocalStack, StackError, remove_device_containers

from .workloads import (
    IDLE,
    by_name,
    containers,
    init,
    policy_toml,
    put,
    service,
    wait_state,
)

pytestmark = pytest.mark.podman

#: Generous: other helpers run podman on the same two cores.
SLOW = 90.0
REFUSED = "refused by this device's workload policy: "


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A host directory for bind mounts. Not pytest's tmp_path: the symlink attack resolves
    paths, and that tree's parents are private; a plain temp dir is enough and is removed."""
    path = Path(tempfile.mkdtemp(prefix="fleet-policy-"))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def logs(name: str) -> str:
    out = subprocess.run(["podman", "logs", name], capture_output=True, text=True, check=False)
    return out.stdout + out.stderr


def inspect(name: str) -> dict[str, Any]:
    out = subprocess.run(["podman", "container", "inspect", name], capture_output=True,
                         text=True, check=True)
    docs: list[dict[str, Any]] = json.loads(out.stdout)
    return docs[0]


def uid_map(name: str) -> list[str]:
    """The container's user namespace mapping (``container:host:size``); empty without one."""
    mappings = inspect(name)["HostConfig"].get("IDMappings") or {}
    return list(mappings.get("UidMap") or [])


async def wait_for(what: str, check: Any, timeout: float = SLOW) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} never happened")
        await asyncio.sleep(0.2)


# ---- host paths that must never be mounted ---------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "volume", "in_init", "reason"),
    [
        ([], {"source": "/", "target": "/host"}, False,
         "service web: host path / is outside the allowed host paths (none)"),
        ([], {"source": "/etc", "target": "/host-etc"}, False,
         "service web: host path /etc is outside the allowed host paths (none)"),
        ([("/tmp", True)], {"source": "/tmp/../etc", "target": "/host-etc"}, False,
         "service web: host path /tmp/../etc (that is /etc) is outside the allowed host "
         "paths (/tmp)"),
        ([], {"source": "/etc/shadow", "target": "/shadow", "read_only": True}, True,
         "init container prep: host path /etc/shadow is outside the allowed host paths "
         "(none)"),
    ],
    ids=["root", "etc-rw", "dot-dot", "init-container"],
)
async def test_host_path_outside_the_policy_is_refused_before_anything_is_created(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    allowed: list[tuple[str, bool]], volume: dict[str, Any], in_init: bool, reason: str,
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=policy_toml(allowed) if allowed else "")
    # an image this machine does not have: had the agent pulled before checking, the state
    # would say "cannot pull image"
    missing_image = f"localhost/never-pulled-{device_id}:1"
    script = "echo pwned > /host/pwned; cat /host-etc/shadow; " + IDLE
    score: dict[str, Any] = {"services": [service("web", missing_image, script)]}
    if in_init:
        score["init_containers"] = [init("prep", missing_image, "cat /shadow",
                                         volumes=[volume])]
    else:
        score["services"][0]["volumes"] = [volume]
    await put(admin_nc, device_id, "evil_app", score)
    state = await wait_state(admin_nc, device_id, "evil_app", Phase.FAILED, timeout=SLOW)
    assert state.message == REFUSED + reason
    assert containers(device_id) == []
    assert not Path("/pwned").exists()


async def test_symlink_inside_an_allowed_prefix_pointing_to_etc_is_refused(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    host_dir: Path,
) -> None:
    (host_dir / "config").symlink_to("/etc")
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=policy_toml([(str(host_dir), True)]))
    volume = {"source": f"{host_dir}/config", "target": "/config"}
    await put(admin_nc, device_id, "link_app",
              {"services": [service("web", fleet_image, "cat /config/shadow; " + IDLE,
                                    volumes=[volume])]})
    state = await wait_state(admin_nc, device_id, "link_app", Phase.FAILED, timeout=SLOW)
    assert state.message == (
        f"{REFUSED}service web: host path {host_dir}/config resolves to /etc, outside the "
        f"allowed host paths ({host_dir})"
    )
    assert containers(device_id) == []


async def test_read_only_prefix_refuses_writes_and_serves_reads(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    host_dir: Path,
) -> None:
    shared = host_dir / "shared"
    shared.mkdir()
    (shared / "motd").write_text("hello from the device owner\n")
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=policy_toml([(str(host_dir), False)]))
    script = "cat /shared/motd; echo tamper > /shared/motd || echo write-refused; " + IDLE

    rw = {"source": str(shared), "target": "/shared", "read_only": False}
    await put(admin_nc, device_id, "ro_app",
              {"services": [service("web", fleet_image, script, volumes=[rw])]})
    state = await wait_state(admin_nc, device_id, "ro_app", Phase.FAILED, timeout=SLOW)
    assert state.message == (
        f"{REFUSED}service web: host path {shared} is under {host_dir}, which this device "
        "allows read-only; mount it with read_only: true"
    )
    assert containers(device_id) == []

    ro = {**rw, "read_only": True}
    await put(admin_nc, device_id, "ro_app",
              {"services": [service("web", fleet_image, script, volumes=[ro])]})
    await wait_state(admin_nc, device_id, "ro_app", Phase.RUNNING, timeout=SLOW)
    name = f"{device_id}.ro_app.web"
    await wait_for("the workload's output", lambda: "write-refused" in logs(name))
    assert "hello from the device owner" in logs(name)
    assert (shared / "motd").read_text() == "hello from the device owner\n"


@pytest.mark.parametrize("userns", ["auto", "host"])
async def test_writable_prefix_and_whether_container_root_is_host_root(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    host_dir: Path, userns: str,
) -> None:
    data = host_dir / "data"
    data.mkdir()
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=policy_toml([(str(host_dir), True)], userns=userns))
    script = "id -u > /data/uid-inside; echo written > /data/out; " + IDLE
    volume = {"source": str(data), "target": "/data"}
    await put(admin_nc, device_id, "rw_app",
              {"services": [service("web", fleet_image, script, volumes=[volume])]})
    await wait_state(admin_nc, device_id, "rw_app", Phase.RUNNING, timeout=SLOW)
    await wait_for("the workload's file", (data / "out").exists)
    assert (data / "out").read_text() == "written\n"
    # inside, the workload is root either way
    assert (data / "uid-inside").read_text().strip() == "0"
    owner = (data / "out").stat().st_uid
    mapping = uid_map(f"{device_id}.rw_app.web")
    if userns == "auto":
        assert owner != 0  # container root is not host root
        assert owner == int(mapping[0].split(":")[1])
    else:
        assert owner == 0  # the opt-out: container root is host root
        assert mapping == []


async def test_a_changed_symlink_under_a_running_deployment_is_reported(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    host_dir: Path,
) -> None:
    # another workload with write access swaps the mounted directory for a symlink to /etc:
    # every pass re-checks, so the device says so (the running container keeps what it has)
    data = host_dir / "data"
    data.mkdir()
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=policy_toml([(str(host_dir), True)]))
    volume = {"source": str(data), "target": "/data", "read_only": True}
    await put(admin_nc, device_id, "swap_app",
              {"services": [service("web", fleet_image, volumes=[volume])]})
    await wait_state(admin_nc, device_id, "swap_app", Phase.RUNNING, timeout=SLOW)
    before = by_name(device_id)[f"{device_id}.swap_app.web"]["Id"]
    data.rmdir()
    data.symlink_to("/etc")
    state = await wait_state(admin_nc, device_id, "swap_app", Phase.FAILED, timeout=SLOW)
    assert state.message == (
        f"{REFUSED}service web: host path {data} resolves to /etc, outside the allowed host "
        f"paths ({host_dir}) (the 1 container(s) of the previous workload keep running)"
    )
    assert by_name(device_id)[f"{device_id}.swap_app.web"]["Id"] == before


# ---- ports and addresses --------------------------------------------------------------------


def free_privileged_port() -> int:
    """A privileged port nothing listens on at 127.0.0.1 (not 80: other software may)."""
    candidates = list(range(700, 1000))
    random.shuffle(candidates)
    for candidate in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise AssertionError("no free privileged port on 127.0.0.1")


async def test_privileged_port_is_refused_by_default_and_allowed_when_listed(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    await put(admin_nc, device_id, "web80", {"services": [service(
        "web", fleet_image, ports=[{"container_port": 8080, "host_port": 80}])]})
    state = await wait_state(admin_nc, device_id, "web80", Phase.FAILED, timeout=SLOW)
    assert state.message == (
        f"{REFUSED}service web: host port 80 is privileged (below 1024) and not in the allowed "
        "privileged ports (none)"
    )
    assert containers(device_id) == []

    listed = f"{device_id}-b"
    low = free_privileged_port()
    await fleet_stack.add_device(listed, runtime_enabled=True,
                                 extra_toml=policy_toml(privileged_ports=[low]))
    await put(admin_nc, listed, "web_low", {"services": [service(
        "web", fleet_image,
        ports=[{"container_port": 8080, "host_port": low, "host_ip": "127.0.0.1"}])]})
    await wait_state(admin_nc, listed, "web_low", Phase.RUNNING, timeout=SLOW)
    bindings = inspect(f"{listed}.web_low.web")["HostConfig"]["PortBindings"]
    assert bindings == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(low)}]}


async def test_host_ip_restricted_to_loopback(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=policy_toml(host_ips=["127.0.0.1"]))
    await put(admin_nc, device_id, "everywhere", {"services": [service(
        "web", fleet_image, ports=[{"container_port": 8080, "host_port": 18080}])]})
    state = await wait_state(admin_nc, device_id, "everywhere", Phase.FAILED, timeout=SLOW)
    assert state.message == (
        f"{REFUSED}service web: port 8080/tcp is published on every host address; this "
        "device allows only these host addresses (127.0.0.1)"
    )
    assert containers(device_id) == []

    await put(admin_nc, device_id, "loopback", {"services": [service(
        "web", fleet_image, ports=[{"container_port": 8080, "host_ip": "127.0.0.1"}])]})
    await wait_state(admin_nc, device_id, "loopback", Phase.RUNNING, timeout=SLOW)
    bindings = inspect(f"{device_id}.loopback.web")["HostConfig"]["PortBindings"]
    assert [b["HostIp"] for b in bindings["8080/tcp"]] == ["127.0.0.1"]


# ---- named volumes, neighbours, policy changes, missing subordinate ids ---------------------


async def test_named_volume_is_allowed_and_writable_by_each_container(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
) -> None:
    # two deployments write one named volume in turn; the first one's container keeps running,
    # so under userns=auto the second gets other ids, and can still write (podman's U)
    volume_name = f"{device_id}-data"
    await fleet_stack.add_device(device_id, runtime_enabled=True)  # the default policy
    volume = {"source": volume_name, "target": "/data"}
    script = "echo {word} >> /data/log; cat /data/log; " + IDLE
    try:
        await put(admin_nc, device_id, "vol_a", {
            "init_containers": [init("seed", fleet_image, "echo seeded >> /data/log",
                                     volumes=[volume])],
            "services": [service("web", fleet_image, script.format(word="first"),
                                 volumes=[volume])],
        })
        await wait_state(admin_nc, device_id, "vol_a", Phase.RUNNING, timeout=SLOW)
        first = f"{device_id}.vol_a.web"
        await wait_for("the first workload's output", lambda: "first" in logs(first))
        await put(admin_nc, device_id, "vol_b", {"services": [
            service("web", fleet_image, script.format(word="second"), volumes=[volume])]})
        await wait_state(admin_nc, device_id, "vol_b", Phase.RUNNING, timeout=SLOW)
        second = f"{device_id}.vol_b.web"
        await wait_for("the second workload's output", lambda: "started" in logs(second))
        assert logs(second).splitlines()[:3] == ["seeded", "first", "second"]
        maps = [uid_map(n) for n in (first, second)]
        assert all(maps)  # both in a user namespace
        assert maps[0] != maps[1]  # two ranges: the case U is there for
    finally:
        await asyncio.to_thread(remove_device_containers, [device_id])
        subprocess.run(["podman", "volume", "rm", "--force", volume_name],
                       capture_output=True, check=False)


async def test_refused_deployment_does_not_disturb_another(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    await put(admin_nc, device_id, "good_app", {"services": [service("web", fleet_image)]})
    good = await wait_state(admin_nc, device_id, "good_app", Phase.RUNNING, timeout=SLOW)
    good_id = by_name(device_id)[f"{device_id}.good_app.web"]["Id"]

    evil = {"services": [service("web", fleet_image,
                                 volumes=[{"source": "/", "target": "/host"}])]}
    await put(admin_nc, device_id, "evil_app", evil)
    await wait_state(admin_nc, device_id, "evil_app", Phase.FAILED, timeout=SLOW)
    still = await wait_state(admin_nc, device_id, "good_app", Phase.RUNNING)
    assert still.since == good.since  # never left Running
    assert list(by_name(device_id)) == [f"{device_id}.good_app.web"]
    assert by_name(device_id)[f"{device_id}.good_app.web"]["Id"] == good_id

    # the running deployment itself gets a refused score: its containers are left alone
    await put(admin_nc, device_id, "good_app", evil)
    state = await wait_state(admin_nc, device_id, "good_app", Phase.FAILED, timeout=SLOW)
    assert state.message == (
        f"{REFUSED}service web: host path / is outside the allowed host paths (none) "
        "(the 1 container(s) of the previous workload keep running)"
    )
    kept = by_name(device_id)[f"{device_id}.good_app.web"]
    assert (kept["Id"], kept["State"]) == (good_id, "running")


async def test_changing_the_device_userns_recreates_the_containers(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
) -> None:
    name = f"{device_id}.ns_app.web"
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=policy_toml(userns="host"))
    await put(admin_nc, device_id, "ns_app", {"services": [service("web", fleet_image)]})
    await wait_state(admin_nc, device_id, "ns_app", Phase.RUNNING, timeout=SLOW)
    first = inspect(name)
    assert uid_map(name) == []

    await fleet_stack.stop_device(device_id)
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=policy_toml(userns="auto"))

    def recreated() -> bool:
        found = by_name(device_id).get(name)
        return found is not None and found["Id"] != first["Id"] and found["State"] == "running"

    await wait_for("the recreated container", recreated)
    assert uid_map(name) != []
    await wait_state(admin_nc, device_id, "ns_app", Phase.RUNNING, timeout=SLOW)


async def test_missing_subordinate_ids_fail_deployments_with_the_reason(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # a device without /etc/subuid ranges, as a fresh machine has (this one's are left alone)
    if os.geteuid() != 0:
        pytest.skip("rootful podman allocates from user containers; this agent is not root")
    empty = tmp_path / "subid"
    empty.write_text("")
    monkeypatch.setattr(policy_module, "SUBUID_FILE", empty)
    monkeypatch.setattr(policy_module, "SUBGID_FILE", empty)
    with caplog.at_level(logging.ERROR):
        await fleet_stack.add_device(device_id, runtime_enabled=True)  # in-process agent
        for deployment in ("first_app", "second_app"):
            await put(admin_nc, device_id, deployment,
                      {"services": [service("web", fleet_image)]})
        for deployment in ("first_app", "second_app"):
            state = await wait_state(admin_nc, device_id, deployment, Phase.FAILED,
                                     timeout=SLOW)
            assert state.message.startswith(
                'cannot create containers: userns "auto" needs subordinate ids for user '
                f"containers in {empty} and {empty}"
            )
            assert 'or set userns = "host" in [policy]' in state.message
    assert containers(device_id) == []
    said = [r for r in caplog.records if "needs subordinate ids" in r.getMessage()]
    assert len(said) == 1  # once, at start


async def test_local_stack_writes_a_policy_and_extra_toml_replaces_it(
    fleet_stack: LocalStack, device_id: str,
) -> None:
    default = await fleet_stack.add_device(device_id)
    assert "\n[policy]\n" in default.config_file.read_text()
    assert AgentConfig.load(default.config_file).policy == PolicySection()

    own = await fleet_stack.add_device(f"{device_id}-own",
                                       extra_toml=policy_toml([("/srv/x", True)], userns="host"))
    text = own.config_file.read_text()
    assert text.count("[policy]") == 1
    policy = AgentConfig.load(own.config_file).policy
    assert (policy.userns, policy.host_paths[0].prefix) == (Userns.HOST, "/srv/x")

    with pytest.raises(StackError, match="extra_toml is not valid TOML"):
        await fleet_stack.add_device(f"{device_id}-bad", extra_toml="[policy\n")
