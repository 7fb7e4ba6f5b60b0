"""Chaos scenarios: a component killed at a bad moment, then what the fleet does about it.

Each scenario brings up its own local stack (callout mode, the default users run: nats-server,
fleet-callout, the OIDC issuer, agents as subprocesses driving the local podman), breaks one
thing, checks the invariants that must hold (nothing lost, nothing doubled, the workloads
kept) and returns how long the recovery took. ``tests/chaos`` asserts them;
``benchmarks/bench_chaos.py`` prints the times side by side.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.identity import EXIT_DEVICE_ID_IN_USE
from harmony_fleet.agent.runtime import LABEL_DEVICE, LABEL_INIT, LABEL_SERVICE
from harmony_fleet.bus import CommandError, ConnectError, FleetCommandsClient, NatsSettings
from harmony_fleet.bus.connection import connect
from harmony_fleet.bus.kv import read_entries
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    Phase,
    desired_state_key,
    device_heartbeat_key,
    device_state_key,
)
from harmony_fleet.localstack.nats_server import NatsServer
from harmony_fleet.localstack.services import start_services
from harmony_fleet.localstack.stack import LocalStack

#: A service that starts at once and stops at once on SIGTERM.
IDLE = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"
#: A service whose PID 1 ignores SIGTERM: only the stop timeout's SIGKILL ends it.
STUBBORN = "trap '' TERM; while :; do sleep 1; done"


@dataclass
class ChaosResult:
    """What a scenario measured (seconds) and noticed."""

    scenario: str
    recovery_s: float
    details: dict[str, Any] = field(default_factory=dict)


def service(name: str, image: str, script: str = IDLE, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "command": ["sh", "-c"], "args": [script], **extra}


def containers(device: str) -> list[dict[str, Any]]:
    """Every container of ``device`` (podman ps --all)."""
    out = subprocess.run(["podman", "ps", "--all", "--format", "json", "--filter",
                          f"label={LABEL_DEVICE}={device}"],
                         capture_output=True, text=True, check=True, timeout=60)
    return list(json.loads(out.stdout or "[]"))


def service_containers(device: str) -> dict[str, list[str]]:
    """service -> ids of its containers (more than one is a duplicate)."""
    found: dict[str, list[str]] = {}
    for c in containers(device):
        labels = c.get("Labels") or {}
        if labels.get(LABEL_SERVICE) and not labels.get(LABEL_INIT):
            found.setdefault(labels[LABEL_SERVICE], []).append(str(c["Id"]))
    return found


async def state_of(nc: NatsClient, device: str, deployment: str) -> DeploymentState | None:
    key = device_state_key(device, deployment)
    entries = await read_entries(nc.jetstream(), BUCKET_DEVICE_STATE, key)
    entry = entries.get(key)
    return DeploymentState.model_validate_json(entry.value) if entry and entry.value else None


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                every: float = 0.1) -> float:
    """Poll ``check`` until true; the seconds it took (AssertionError after ``timeout``)."""
    started = time.monotonic()
    while True:
        try:
            if await check():
                return time.monotonic() - started
        except (CommandError, ConnectError, OSError, TimeoutError):
            pass  # the thing being waited for is down: that is the point
        except Exception as exc:  # a KV read while the server is down
            if "timeout" not in str(exc).lower() and "connect" not in str(exc).lower():
                raise
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(every)


async def running(nc: NatsClient, device: str, deployment: str,
                  spec_hash: str | None = None) -> bool:
    state = await state_of(nc, device, deployment)
    return state is not None and state.phase is Phase.RUNNING and (
        spec_hash is None or state.spec_hash == spec_hash)


@asynccontextmanager
async def chaos_stack(workdir: Path, **services: Any) -> AsyncIterator[LocalStack]:
    """A callout-mode stack of the scenario's own (it breaks things), torn down after."""
    fleet = await asyncio.to_thread(start_services, workdir / "services", auth="callout",
                                    **services)
    stack = LocalStack(workdir / "services", fleet, owns_server=True)
    try:
        await stack.ensure_buckets()
        yield stack
    finally:
        await stack.down()


async def put_score(nc: NatsClient, device: str, deployment: str, score: dict[str, Any]) -> int:
    kv = await nc.jetstream().key_value(BUCKET_DESIRED_STATE)
    return int(await kv.put(desired_state_key(device, deployment), json.dumps(score).encode()))


def start_agent_process(stack: LocalStack, device: str) -> subprocess.Popen[bytes]:
    """The device's agent again, from its own config (as systemd would restart it)."""
    handle = stack.devices[device]
    log = (handle.log_file or handle.config_file.with_suffix(".log")).open("ab")
    with log:
        proc = subprocess.Popen([sys.executable, "-m", "harmony_fleet.agent.main", "--config",
                                 str(handle.config_file)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    handle.process = proc
    return proc


def kill_9(proc: subprocess.Popen[bytes] | None) -> None:
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


async def kill_and_restart(server: NatsServer, pause_s: float = 0.5) -> None:
    """kill -9 a nats-server of a local stack, then start it again (same store, same port)."""
    kill_9(server._proc)
    await asyncio.sleep(pause_s)
    await asyncio.to_thread(server.start)


# ---------------------------------------------------------------------------- scenarios


async def nats_server_killed_mid_rollout(workdir: Path, image: str) -> ChaosResult:
    """kill -9 nats-server while a deployment rolls out (one device runs it, the other is
    starting it), start it again: the rollout completes, no desired-state key is lost or
    rewritten, the containers that were running are kept."""
    async with chaos_stack(workdir) as stack:
        done, rolling = "chaos-nats-0", "chaos-nats-1"
        for device in (done, rolling):
            await stack.add_device(device, runtime_enabled=True, mode="subprocess")
        admin = await stack.admin_connect("chaos-nats")
        score = {"init_containers": [{"name": "prep", "image": image, "command": ["sh", "-c"],
                                      "args": ["sleep 3"], "timeout": 60}],
                 "services": [service("web", image), service("worker", image)]}
        revisions = {done: await put_score(admin, done, "chaos_app", score)}
        await until(lambda: running(admin, done, "chaos_app"), 60, f"{done} running")
        revisions[rolling] = await put_score(admin, rolling, "chaos_app", score)

        async def starting() -> bool:
            state = await state_of(admin, rolling, "chaos_app")
            return state is not None and state.phase is Phase.STARTING

        await until(starting, 60, f"{rolling} starting the rollout")
        kept = service_containers(done)
        server = stack.services.server
        kill_9(server._proc)
        await asyncio.sleep(1.0)
        restarted = time.monotonic()
        await asyncio.to_thread(server.start)

        async def all_running() -> bool:
            return all([await running(admin, d, "chaos_app") for d in (done, rolling)])

        await until(all_running, 120, "the rollout completing after the restart", every=0.2)
        recovery = time.monotonic() - restarted
        entries = await read_entries(admin.jetstream(), BUCKET_DESIRED_STATE, "*.chaos_app")
        assert {k: e.revision for k, e in entries.items()} == {
            desired_state_key(d, "chaos_app"): r for d, r in revisions.items()}, \
            "a desired-state key was lost or rewritten"
        assert service_containers(done) == kept, "running containers were recreated"
        assert len(kept) == 2
        for device in (done, rolling):
            found = service_containers(device)
            assert set(found) == {"web", "worker"}, found
            assert all(len(ids) == 1 for ids in found.values()), found
        await admin.drain()
        return ChaosResult("nats-server kill -9 mid-rollout", recovery)


async def agent_killed_mid_init_container(workdir: Path, image: str) -> ChaosResult:
    """kill -9 the agent while an init container runs, start it again: it adopts what is
    there, the deployment completes, no container is doubled and no init container is left."""
    async with chaos_stack(workdir) as stack:
        device = "chaos-agent"
        await stack.add_device(device, runtime_enabled=True, mode="subprocess")
        admin = await stack.admin_connect("chaos-agent")
        score = {"init_containers": [{"name": "prep", "image": image, "command": ["sh", "-c"],
                                      "args": ["sleep 4"], "timeout": 60}],
                 "services": [service("web", image)]}
        await put_score(admin, device, "chaos_init", score)

        async def init_running() -> bool:
            return any((c.get("Labels") or {}).get(LABEL_INIT) and c.get("State") == "running"
                       for c in containers(device))

        await until(init_running, 60, "the init container running")
        kill_9(stack.devices[device].process)
        restarted = time.monotonic()
        await asyncio.to_thread(start_agent_process, stack, device)
        await until(lambda: running(admin, device, "chaos_init"), 120,
                    "the deployment Running after the agent's restart")
        recovery = time.monotonic() - restarted
        found = service_containers(device)
        assert found == {"web": found["web"]}
        assert len(found["web"]) == 1, f"duplicate service containers: {found}"
        leftovers = [c for c in containers(device) if (c.get("Labels") or {}).get(LABEL_INIT)]
        assert leftovers == [], "an init container was left behind"
        await admin.drain()
        return ChaosResult("agent kill -9 mid-init-container", recovery)


async def callout_killed(workdir: Path, image: str) -> ChaosResult:
    """kill -9 fleet-callout: connections made before keep working, new ones fail closed;
    after a restart new connections work and reports flow again."""
    del image
    async with chaos_stack(workdir) as stack:
        device = "chaos-callout"
        await stack.add_device(device, mode="subprocess")
        admin = await stack.admin_connect("chaos-callout")
        client = FleetCommandsClient(admin, timeout=2)
        callout = next(p for p in stack.services.processes if p.name == "fleet-callout")
        kill_9(callout.proc)
        await client.ping(device)  # the agent's connection and the admin's live on
        issuer = stack.services.issuer
        assert issuer is not None
        newcomer = NatsSettings(urls=[stack.nats_url], connect_attempts=1, connect_timeout_s=4,
                                auth=ZitadelAuth(issuer=issuer.url, key_file=issuer.admin_key_file,
                                                 project_id=issuer.project_id))
        try:
            await connect(newcomer, name="chaos-newcomer")
        except ConnectError as exc:
            refused = str(exc)
        else:
            raise AssertionError("a new connection was allowed with the callout down")
        assert "Authorization Violation" in refused, refused
        kv = await admin.jetstream().key_value(BUCKET_DEVICE_HEARTBEAT)
        before = (await kv.get(device_heartbeat_key(device))).revision
        restarted = time.monotonic()
        await asyncio.to_thread(callout.start)

        async def newcomer_allowed() -> bool:
            nc = await connect(newcomer, name="chaos-newcomer")
            await nc.close()
            return True

        await until(newcomer_allowed, 60, "a new connection after the callout's restart")

        async def reports_flow() -> bool:
            return bool((await kv.get(device_heartbeat_key(device))).revision != before)

        await until(reports_flow, 60, "the agent's reports written again")
        recovery = time.monotonic() - restarted
        await admin.drain()
        return ChaosResult("fleet-callout kill -9", recovery)


def remove_container(container_id: str, attempts: int = 3) -> None:
    """``podman rm -f`` as an operator would type it. Under load podman itself sometimes fails
    the removal (exit 125, the container untouched); an operator would run it again, so this
    does, up to ``attempts`` times, and fails with podman's own words if it never succeeds."""
    errors: list[str] = []
    for _ in range(attempts):
        done = subprocess.run(["podman", "rm", "--force", "--time", "0", container_id],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0:
            return
        errors.append(f"exit {done.returncode}: {done.stderr.strip()}")
        print(f"podman rm {container_id[:12]} failed, again: {errors[-1]}")
        time.sleep(0.5)
    raise AssertionError(f"podman rm {container_id[:12]} kept failing: {errors}")


async def container_removed_behind_the_agents_back(workdir: Path, image: str) -> ChaosResult:
    """``podman rm -f`` a workload's container: the agent notices and recreates it."""
    async with chaos_stack(workdir) as stack:
        device = "chaos-rm"
        await stack.add_device(device, runtime_enabled=True, mode="subprocess",
                               runtime={"reconcile_interval_s": 300})
        admin = await stack.admin_connect("chaos-rm")
        await put_score(admin, device, "chaos_rm", {"services": [service("web", image)]})
        await until(lambda: running(admin, device, "chaos_rm"), 60, "the service running")
        (old,) = service_containers(device)["web"]
        remove_container(old)
        removed = time.monotonic()

        async def recreated() -> bool:
            ids = service_containers(device).get("web", [])
            return bool(ids) and old not in ids and await running(admin, device, "chaos_rm")

        await until(recreated, 60, "the removed container recreated", every=0.05)
        recovery = time.monotonic() - removed
        assert len(service_containers(device)["web"]) == 1
        await admin.drain()
        return ChaosResult("workload container removed behind the agent's back", recovery)


async def stubborn_workload_updated(workdir: Path, image: str, updates: int = 5) -> ChaosResult:
    """A service whose PID 1 ignores SIGTERM, updated ``updates`` times in a row with a 2 s
    stop timeout: never Failed, never two containers at once, each update Running."""
    async with chaos_stack(workdir) as stack:
        device = "chaos-stubborn"
        await stack.add_device(device, runtime_enabled=True, mode="subprocess",
                               runtime={"stop_timeout_s": 2})
        admin = await stack.admin_connect("chaos-stubborn")
        failed: list[str] = []
        doubled: list[dict[str, list[str]]] = []
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                found = service_containers(device)
                if any(len(ids) > 1 for ids in found.values()):
                    doubled.append(found)
                state = await state_of(admin, device, "chaos_stubborn")
                if state is not None and state.phase is Phase.FAILED:
                    failed.append(state.message)
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        took = []
        try:
            for n in range(updates):
                score = {"services": [service("web", image, STUBBORN, env={"ROUND": str(n)})]}
                started = time.monotonic()
                await put_score(admin, device, "chaos_stubborn", score)
                state: DeploymentState | None = None

                async def updated(round_: int = n) -> bool:
                    nonlocal state
                    state = await state_of(admin, device, "chaos_stubborn")
                    if state is None or state.phase is not Phase.RUNNING:
                        return False
                    ids = service_containers(device).get("web", [])
                    if len(ids) != 1:
                        return False
                    inspect = subprocess.run(["podman", "inspect", ids[0], "--format",
                                              "{{json .Config.Env}}"], capture_output=True,
                                             text=True, check=False, timeout=60)
                    return f"ROUND={round_}" in inspect.stdout

                await until(updated, 60, f"update #{n + 1} Running")
                took.append(time.monotonic() - started)
        finally:
            stop.set()
            await watcher
        assert failed == [], f"Failed during the updates: {failed}"
        assert doubled == [], f"two containers of one service at once: {doubled[0]}"
        await admin.drain()
        return ChaosResult(f"SIGTERM-ignoring workload updated {updates}x (stop timeout 2 s)",
                           max(took), {"per update s": [round(t, 2) for t in took]})


async def second_agent_with_an_id_in_use(workdir: Path, image: str) -> ChaosResult:
    """A second agent with a device id in use elsewhere (a cloned SD card): refused, and the
    first one's workloads are untouched."""
    async with chaos_stack(workdir) as stack:
        device = "chaos-clone"
        await stack.add_device(device, runtime_enabled=True, mode="subprocess")
        admin = await stack.admin_connect("chaos-clone")
        await put_score(admin, device, "chaos_clone", {"services": [service("web", image)]})
        await until(lambda: running(admin, device, "chaos_clone"), 60, "the service running")
        before = service_containers(device)
        handle = stack.devices[device]
        clone_dir = workdir / "clone"
        clone_dir.mkdir()
        (clone_dir / "boot_id").write_text("a-cloned-card\n")
        config = handle.config_file.read_text().replace("[agent]\n", (
            "[agent]\n"
            f'lock_dir = "{clone_dir / "locks"}"\n'
            f'boot_id_file = "{clone_dir / "boot_id"}"\n'
            "claim_timeout_s = 3\n"), 1)
        clone = clone_dir / "config.toml"
        clone.write_text(config)
        os.chmod(clone, 0o600)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "harmony_fleet.agent.main", "--config", str(clone),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        refused_after = time.monotonic() - started
        assert proc.returncode == EXIT_DEVICE_ID_IN_USE, out.decode()[-2000:]
        assert b"is in use by another agent" in out
        await asyncio.sleep(1.0)
        assert service_containers(device) == before, "the clone touched the workloads"
        assert await running(admin, device, "chaos_clone")
        await admin.drain()
        return ChaosResult("second agent with a device id in use (refused)", refused_after)


async def cluster_member_killed_mid_rollout(workdir: Path, image: str) -> ChaosResult:
    """A 3-server cluster (buckets R3), the operator rolling a Deployment out in batches to
    120 simulated devices, 3 real agents connected: kill -9 the server that leads the
    desired-state stream in the middle of the rollout and leave it dead. The rollout
    completes on the survivors, every desired-state key holds what the plan says, the real
    agents answer through the survivors. Recovery: from the kill until a desired-state write
    succeeds again (the stream's new leader elected, the writer reconnected), and, measured
    alongside, until every agent answers a ping."""
    del image  # runtime off: nothing runs in podman here
    from harmony_fleet.contracts import PodmanScore
    from harmony_fleet.operator.app import FleetOperator
    from harmony_fleet.operator.config import OperatorConfig, OperatorSection
    from harmony_fleet.operator.kube import KubeTarget
    from harmony_fleet.operator.main import run_operator

    from .kube_emulator import start_kube_emulator
    from .simulate import SimulatedFleet

    async with chaos_stack(workdir, cluster=3) as stack, start_kube_emulator() as kube:
        agents = [f"chaos-cl-{i}" for i in range(3)]
        for device in agents:
            await stack.add_device(device, mode="subprocess")
        admin = await stack.admin_connect("chaos-cluster")
        sims = {f"chaos-sim-{i:03d}": {"fleet": "chaos"} for i in range(120)}
        fleet = SimulatedFleet(admin, sims)
        await fleet.publish_info()
        stop = asyncio.Event()
        runtime = asyncio.create_task(fleet.run_runtime(stop))
        holder: list[FleetOperator] = []
        config = OperatorConfig(nats=stack.admin_settings(),
                                operator=OperatorSection(probe_listen=None))
        operator_task = asyncio.create_task(run_operator(
            config, stop, target=KubeTarget(kube.url, insecure=True),
            settings=OperatorSection(identity="chaos", device_resources=False,
                                     replan_interval_s=1, status_interval_s=0.5),
            kopf_tune={"watching.server_timeout": 30, "posting.enabled": False},
            holder=holder))
        try:
            async def leader_ready() -> bool:
                return bool(holder and holder[0].elector.is_leader and holder[0]._views_ready())

            await until(leader_ready, 60, "the operator leading")
            score = {"services": [{"name": "web", "image": "localhost/fleet-busybox:latest"}]}
            kube.emulator.create_object("fleet.nationtech.io/v1alpha1/deployments", {
                "apiVersion": "fleet.nationtech.io/v1alpha1", "kind": "Deployment",
                "metadata": {"name": "app", "namespace": "chaos"},
                "spec": {"targetSelector": {"matchLabels": {"fleet": "chaos"}}, "score": score,
                         "rollout": {"strategy": "Batched", "batchSize": 30}}},
                namespace="chaos")

            def rollout() -> dict[str, Any]:
                obj = kube.emulator.get_object("fleet.nationtech.io/v1alpha1/deployments",
                                               "app", namespace="chaos") or {}
                return dict((obj.get("status") or {}).get("rollout") or {})

            async def in_batch_two() -> bool:
                return int(rollout().get("currentBatch", 0)) >= 2

            await until(in_batch_two, 60, "the rollout reaching batch 2")
            kv = await admin.jetstream().key_value(BUCKET_DESIRED_STATE)
            victim = _stream_leader(stack, f"KV_{BUCKET_DESIRED_STATE}")
            killed = time.monotonic()
            kill_9(victim._proc)

            async def writable() -> bool:
                import nats.errors

                try:
                    await asyncio.wait_for(kv.put(PROBE_KEY, b"{}"), 1.0)
                except (nats.errors.Error, TimeoutError):  # no stream leader yet
                    return False
                return True

            killed_at_probe = time.monotonic()
            client = FleetCommandsClient(admin, timeout=1.0)

            async def agents_answer() -> bool:
                for device in agents:
                    await client.ping(device)
                return True

            failover, agents_back = await asyncio.gather(
                until(writable, 60, "a desired-state write after the kill", every=0.05),
                until(agents_answer, 60, "every agent answering after the kill"))
            failover += killed_at_probe - killed
            agents_back += killed_at_probe - killed
            await kv.delete(PROBE_KEY)

            async def complete() -> bool:
                return rollout().get("phase") == "Complete"

            await until(complete, 120, "the rollout completing on the survivors", every=0.2)
            done = rollout()
            assert done["updated"] == len(sims), done
            expected = PodmanScore.model_validate(score).spec_hash()
            entries = await read_entries(admin.jetstream(), BUCKET_DESIRED_STATE, "*.chaos_app")
            wanted = {desired_state_key(d, "chaos_app") for d in sims}
            assert set(entries) == wanted, \
                f"desired-state keys missing {sorted(wanted - set(entries))}, " \
                f"extra {sorted(set(entries) - wanted)}"
            assert {PodmanScore.model_validate_json(e.value or b"").spec_hash()
                    for e in entries.values()} == {expected}
            survivors = [s for s in stack.services.servers if s is not victim]
            assert all(s._proc is not None and s._proc.poll() is None for s in survivors)
            return ChaosResult("cluster member (stream leader) kill -9 mid-rollout", failover,
                               {"agents_answer_s": round(agents_back, 2),
                                "killed": victim.config.server_name})
        finally:
            stop.set()
            await runtime
            await operator_task
            await admin.drain()


#: a key no device reads (the ids are DNS labels): the failover probe writes it
PROBE_KEY = "chaos-probe.chaos_probe"


def _stream_leader(stack: LocalStack, stream: str) -> Any:
    """The cluster member that leads ``stream`` (asked of the first server)."""
    import urllib.request

    monitor = stack.server.monitor_url
    with urllib.request.urlopen(f"{monitor}/jsz?streams=true", timeout=2) as response:
        doc = json.loads(response.read())
    leader = next(s["cluster"]["leader"] for a in doc["account_details"]
                  for s in a.get("stream_detail") or [] if s["name"] == stream)
    return next(s for s in stack.services.servers if s.config.server_name == leader)


SCENARIOS: tuple[Callable[[Path, str], Awaitable[ChaosResult]], ...] = (
    nats_server_killed_mid_rollout,
    agent_killed_mid_init_container,
    callout_killed,
    container_removed_behind_the_agents_back,
    stubborn_workload_updated,
    second_agent_with_an_id_in_use,
    cluster_member_killed_mid_rollout,
)
