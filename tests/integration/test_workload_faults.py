"""Faults a device's workloads meet, performed for real: the real agent, podman, nats-server.

Each test does the damage (a failing init container, a killed container, a workload that
ignores SIGTERM, a score podman cannot be given) and checks what the agent does about it and
what it reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.runtime import LABEL_DEVICE, LABEL_SPEC_HASH
from harmony_fleet.contracts import MAX_DESIRED_STATE_BYTES, DeploymentState, Phase
from harmony_fleet.localstack.stack import LocalStack

from .workloads import (
    IDLE,
    StateRecorder,
    containers,
    init,
    policy_toml,
    put,
    read_state,
    service,
    wait_state,
)

pytestmark = pytest.mark.podman

#: Generous: other helpers run podman on the same two cores.
SLOW = 90.0


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A host directory the workloads may write (world-traversable, unlike pytest's tmp_path:
    with ``userns = "auto"`` the container's root is not host root)."""
    path = Path(tempfile.mkdtemp(prefix="fleet-faults-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def attempts(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


async def test_a_failed_deployment_is_retried_only_for_a_new_revision_or_a_new_agent(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    host_dir: Path,
) -> None:
    counter = host_dir / "attempts"

    async def start_agent() -> None:
        await fleet_stack.add_device(
            device_id, runtime_enabled=True, extra_toml=policy_toml([(str(host_dir), True)]),
            runtime={"reconcile_interval_s": 0.5})  # a periodic pass every half second

    await start_agent()
    volume = {"source": str(host_dir), "target": "/data"}
    failing = {
        "init_containers": [init("migrate", fleet_image, "echo run >> /data/attempts; exit 3",
                                 volumes=[volume])],
        "services": [service("web", fleet_image)],
    }

    def failed_at(revision: int) -> Callable[[DeploymentState], bool]:
        return lambda s: s.phase is Phase.FAILED and s.revision == revision

    first = await put(admin_nc, device_id, "ns_retry", failing)
    state = await wait_state(admin_nc, device_id, "ns_retry", failed_at(first), timeout=SLOW)
    assert "init container migrate" in state.message
    assert "exited with code 3" in state.message

    # periodic passes, and a pass for a change of another deployment, attempt nothing
    await put(admin_nc, device_id, "ns_other", {"services": [service("web", fleet_image)]})
    await wait_state(admin_nc, device_id, "ns_other", Phase.RUNNING, timeout=SLOW)
    await asyncio.sleep(3)
    assert attempts(counter) == 1
    still = await read_state(admin_nc, device_id, "ns_retry")
    assert still is not None
    assert (still.phase, still.message, still.since) == (Phase.FAILED, state.message, state.since)

    # the same score written again is a request for another attempt: exactly one
    second = await put(admin_nc, device_id, "ns_retry", failing)
    await wait_state(admin_nc, device_id, "ns_retry", failed_at(second), timeout=SLOW)
    await asyncio.sleep(2)
    assert attempts(counter) == 2

    # a restarted agent tries once
    await fleet_stack.stop_device(device_id)
    await start_agent()

    def newer(s: DeploymentState) -> bool:
        return s.phase is Phase.FAILED and s.updated_at > still.updated_at and attempts(counter) == 3

    await wait_state(admin_nc, device_id, "ns_retry", newer, timeout=SLOW)
    await asyncio.sleep(2)
    assert attempts(counter) == 3

    # a changed score is applied
    fixed = {**failing, "init_containers": [init("migrate", fleet_image,
                                                 "echo run >> /data/attempts", volumes=[volume])]}
    await put(admin_nc, device_id, "ns_retry", fixed)
    await wait_state(admin_nc, device_id, "ns_retry", Phase.RUNNING, timeout=SLOW)
    assert attempts(counter) == 4


# ---- podman's events: a crash is reported at once, not at the next periodic pass --------------

#: The periodic pass is out of the picture: only podman's events can bring the news in time.
NO_PERIODIC_PASS = {"reconcile_interval_s": 300}


def container_of(device_id: str, deployment: str, svc: str = "web") -> dict[str, Any]:
    [found] = [c for c in containers(device_id) if c["Names"][0] == f"{device_id}.{deployment}.{svc}"]
    return found


def latency_summary(what: str, latencies: list[float]) -> str:
    return (f"{what}: n={len(latencies)} p50={statistics.median(latencies) * 1000:.0f}ms "
            f"max={max(latencies) * 1000:.0f}ms "
            f"({', '.join(f'{x * 1000:.0f}' for x in latencies)} ms)")


async def test_a_killed_container_is_reported_failed_within_two_seconds(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    """restart_policy ``no``: the service is down for good, so the report says Failed."""
    await fleet_stack.add_device(device_id, runtime_enabled=True, runtime=NO_PERIODIC_PASS)
    latencies = []
    async with StateRecorder(admin_nc, device_id, "ns_crash") as states:
        for round_ in range(4):
            score = {"services": [service("web", fleet_image, restart_policy="no",
                                          env={"ROUND": str(round_)})]}
            revision = await put(admin_nc, device_id, "ns_crash", score)
            _, running = await states.wait(
                lambda s, r=revision: s.phase is Phase.RUNNING and s.revision == r, timeout=SLOW)
            cid = container_of(device_id, "ns_crash")["Id"]
            killed = time.monotonic()
            await asyncio.to_thread(subprocess.run, ["podman", "kill", cid], check=True,
                                    capture_output=True, timeout=60)
            arrived, failed = await states.wait(lambda s: s.phase is Phase.FAILED, after=killed,
                                                timeout=10)
            latencies.append(arrived - killed)
            assert failed.message == "service web exited with code 137"
            assert failed.spec_hash == running.spec_hash
    print("\n" + latency_summary("podman kill -> Failed reported", latencies))
    assert max(latencies) < 2.0


async def test_a_crashed_service_runs_again_and_a_killed_one_is_left_down(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    """restart_policy ``always``: a crash (the main process dies) is podman's to restart, and the
    reports say so: the crash (Failed, or Starting when the agent completes a restart podman
    could not finish) or a higher restart count, then Running again. A ``podman kill`` is a
    decision made on the device, which podman respects and so does the agent: Failed, and it
    stays down."""
    await fleet_stack.add_device(device_id, runtime_enabled=True, runtime=NO_PERIODIC_PASS)
    score = {"services": [service("web", fleet_image, restart_policy="always")]}
    await put(admin_nc, device_id, "ns_crash", score)
    noticed_after, running_after = [], []
    async with StateRecorder(admin_nc, device_id, "ns_crash") as states:
        _, state = await states.wait(lambda s: s.phase is Phase.RUNNING, timeout=SLOW)
        for _ in range(3):
            before = state.services[0].restart_count
            pid = container_of(device_id, "ns_crash")["Pid"]
            crashed = time.monotonic()
            os.kill(pid, signal.SIGKILL)  # from the host: the workload dies, nobody stopped it
            noticed, _ = await states.wait(
                lambda s, n=before: s.phase is not Phase.RUNNING
                or s.services[0].restart_count > n, after=crashed, timeout=10)
            arrived, state = await states.wait(lambda s: s.phase is Phase.RUNNING,
                                               after=noticed - 1e-9, timeout=SLOW)
            noticed_after.append(noticed - crashed)
            running_after.append(arrived - crashed)
            assert container_of(device_id, "ns_crash")["State"] == "running"
        print("\n" + latency_summary("crash -> crash reported", noticed_after))
        print(latency_summary("crash -> Running again reported", running_after))
        print("phases reported:", " ".join(p.value for p in states.phases()))
        assert max(noticed_after) < 2.0
        # podman's restart (~0.6 s to give up under --userns=auto, see the README) and a start
        # in a fresh user namespace come on top: measured, not bounded tightly
        assert max(running_after) < 15.0

        cid = container_of(device_id, "ns_crash")["Id"]
        killed = time.monotonic()
        await asyncio.to_thread(subprocess.run, ["podman", "kill", cid], check=True,
                                capture_output=True, timeout=60)
        arrived, failed = await states.wait(lambda s: s.phase is Phase.FAILED, after=killed,
                                            timeout=10)
        print(f"podman kill (restart_policy always) -> Failed reported: "
              f"{(arrived - killed) * 1000:.0f}ms")
        assert arrived - killed < 2.0
        assert failed.message == "service web exited with code 137"
        await asyncio.sleep(3)
        assert container_of(device_id, "ns_crash")["State"] == "exited"
        assert states.seen[-1][1].phase is Phase.FAILED


def event_streams(device_id: str) -> list[int]:
    """The pids of the ``podman events`` processes following ``device_id``'s containers."""
    wanted = f"label={LABEL_DEVICE}={device_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"events" in argv and wanted in argv:
            pids.append(int(entry.name))
    return pids


async def test_the_event_stream_is_followed_again_when_podman_events_dies(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True, runtime=NO_PERIODIC_PASS)
    score = {"services": [service("web", fleet_image, restart_policy="no")]}
    await put(admin_nc, device_id, "ns_events", score)
    async with StateRecorder(admin_nc, device_id, "ns_events") as states:
        await states.wait(lambda s: s.phase is Phase.RUNNING, timeout=SLOW)
        [first] = event_streams(device_id)
        os.kill(first, signal.SIGKILL)  # the agent's own podman events process
        deadline = time.monotonic() + 10
        while not (again := event_streams(device_id)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert again
        assert again != [first]

        killed = time.monotonic()
        await asyncio.to_thread(subprocess.run,
                                ["podman", "kill", container_of(device_id, "ns_events")["Id"]],
                                check=True, capture_output=True, timeout=60)
        arrived, failed = await states.wait(lambda s: s.phase is Phase.FAILED, after=killed,
                                            timeout=10)
        assert arrived - killed < 2.0
        assert failed.message == "service web exited with code 137"


# ---- what podman can be given: a 250 KB score, and fields no exec can carry ---------------------

async def test_a_250_kb_score_runs_with_every_variable(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    env = {f"VAR_{i:04d}": f"{i:04d}-" + "v" * 95 for i in range(1300)}
    env["BIG"] = "b" * 100_000 + "\nlast line"  # past an env file's line: an --env argument
    score = {"services": [service("web", fleet_image, env=env,
                                  args=['printf "%s" "$BIG" | wc -c; ' + IDLE])]}
    raw = json.dumps(score).encode()
    assert 250_000 <= len(raw) <= MAX_DESIRED_STATE_BYTES
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    await put(admin_nc, device_id, "ns_big", raw)
    await wait_state(admin_nc, device_id, "ns_big", Phase.RUNNING, timeout=SLOW)
    cid = container_of(device_id, "ns_big")["Id"]
    inspected = await asyncio.to_thread(subprocess.run, [
        "podman", "container", "inspect", "--format", "{{json .Config.Env}}", cid],
        capture_output=True, check=True, timeout=60)
    stored = json.loads(inspected.stdout)
    given = dict(entry.split("=", 1) for entry in stored)
    assert {k: given.get(k) for k in env} == env
    logs = await asyncio.to_thread(subprocess.run, ["podman", "logs", cid], capture_output=True,
                                   text=True, check=True, timeout=60)
    assert logs.stdout.startswith(f"{100_000 + len(chr(10) + 'last line')}\n")


async def test_a_long_unicode_command_runs(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    """60 KB of UTF-8 in one command element: as ``--entrypoint`` JSON with every character
    escaped (\\u00e9, six bytes each) it would be 180 KB, past one argument's 128 KiB."""
    note = "é" * 30_000
    score = {"services": [{"name": "web", "image": fleet_image,
                           "command": ["sh", "-c", IDLE, note]}]}
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    await put(admin_nc, device_id, "ns_utf8", score)
    await wait_state(admin_nc, device_id, "ns_utf8", Phase.RUNNING, timeout=SLOW)


@pytest.mark.parametrize(("field", "where"), [
    ({"args": ["a" * 140_000]}, "services[0].args[0] is 140000 bytes"),
    ({"env": {"HUGE": "h" * 140_000}}, "services[0].env.HUGE (as HUGE=...) is 140005 bytes"),
    ({"args": ["nul\u0000byte"]}, "services[0].args[0] holds a NUL byte"),
], ids=["arg", "env", "nul"])
async def test_a_field_no_exec_can_carry_is_refused_before_anything_is_created(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    field: dict[str, Any], where: str,
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    await put(admin_nc, device_id, "ns_args", {"services": [service("web", fleet_image)]})
    running = await wait_state(admin_nc, device_id, "ns_args", Phase.RUNNING, timeout=SLOW)
    before = container_of(device_id, "ns_args", "web")["Id"]
    score = {"services": [service("web", fleet_image), service("api", fleet_image, **field)],
             "init_containers": [init("seed", fleet_image, "echo never")]}
    # the api service is services[1]: the message must say so
    revision = await put(admin_nc, device_id, "ns_args", score)
    state = await wait_state(admin_nc, device_id, "ns_args",
                             lambda s: s.revision == revision and s.phase is Phase.FAILED,
                             timeout=SLOW)
    assert state.message.startswith("cannot be given to podman: " +
                                    where.replace("services[0]", "services[1]")), state.message
    assert state.message.endswith("(the 1 container(s) of the previous workload keep running)")
    # nothing was created, pulled or run; the previous workload is untouched
    assert [c["Id"] for c in containers(device_id)] == [before]
    assert running.spec_hash != state.spec_hash


# ---- updates of a workload that ignores SIGTERM -----------------------------------------------


def podman_events(since: float, device_id: str) -> list[dict[str, Any]]:
    """podman's past events about ``device_id``'s containers."""
    out = subprocess.run(["podman", "events", "--stream=false", "--since", f"{since:.6f}",
                          "--format", "json", "--filter", "type=container",
                          "--filter", f"label={LABEL_DEVICE}={device_id}"],
                         capture_output=True, text=True, check=True, timeout=60)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _unix(timestamp: str) -> float:
    """podman's event time (RFC 3339, nanoseconds, "Z") as unix seconds."""
    whole, _, fraction = timestamp.removesuffix("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + float(
        f"0.{fraction or 0}")

#: A PID 1 that ignores SIGTERM: only SIGKILL, after the stop timeout, ends it.
DEAF = "trap '' TERM; while :; do sleep 1; done"


async def test_updates_of_a_service_that_ignores_sigterm(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    """Five updates in a row, stop timeout 2 s: each takes the stop timeout (SIGTERM ignored,
    SIGKILL after 2 s), never more, never Failed, never two containers of the service at once,
    and each ends Running with the new spec hash."""
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 runtime={"stop_timeout_s": 2, **NO_PERIODIC_PASS})
    counts: list[int] = []
    polling = asyncio.Event()

    def poll() -> None:  # what podman shows, as often as it answers
        while not polling.is_set():
            counts.append(len(containers(device_id)))
            time.sleep(0.05)

    took, applied, starts = [], [], []
    since = time.time()
    async with StateRecorder(admin_nc, device_id, "ns_deaf") as states:
        await put(admin_nc, device_id, "ns_deaf", {"services": [service("web", fleet_image, DEAF)]})
        _, state = await states.wait(lambda s: s.phase is Phase.RUNNING, timeout=SLOW)
        poller = asyncio.create_task(asyncio.to_thread(poll))
        try:
            for version in range(1, 6):
                previous = state.spec_hash
                score = {"services": [service("web", fleet_image, DEAF,
                                              env={"VERSION": str(version)})]}
                began = time.monotonic()
                revision = await put(admin_nc, device_id, "ns_deaf", score)
                starting, begun = await states.wait(
                    lambda s, r=revision: s.phase is Phase.STARTING and s.revision == r,
                    after=began, timeout=SLOW)
                starts.append(begun.updated_at.timestamp())  # just before the old one goes
                arrived, state = await states.wait(
                    lambda s, r=revision: s.phase is Phase.RUNNING and s.revision == r,
                    after=began, timeout=SLOW)
                took.append(arrived - began)
                applied.append(arrived - starting)
                assert state.spec_hash != previous
                [web] = containers(device_id)
                assert web["State"] == "running"
                assert web["Labels"][LABEL_SPEC_HASH] == state.services[0].spec_hash
        finally:
            polling.set()
            await poller
    print("\n" + latency_summary("update of a SIGTERM-ignoring service (stop timeout 2 s), "
                                 "put -> Running", took))
    print(latency_summary("  of which Starting -> Running (remove, create, start)", applied))
    print(f"podman ps polled {len(counts)} times during the updates; containers seen: "
          f"{sorted(set(counts))}")
    assert Phase.FAILED not in states.phases()
    assert max(counts) == 1
    # each old container died by SIGKILL 2 s (the device's stop timeout) after the agent began
    # removing it: podman's default (10 s) or the old fixed 5 s would show here
    died = sorted(e["Time"] for e in podman_events(since, device_id) if e["Status"] == "died")
    assert len(died) == 5
    gaps = [_unix(t) - start for t, start in zip(died, starts, strict=True)]
    print("SIGTERM ignored, died after: " + ", ".join(f"{g:.2f}s" for g in gaps))
    assert all(1.9 < g < 4.0 for g in gaps)


async def test_a_service_being_stopped_is_waited_for_not_started_or_failed(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str
) -> None:
    """Someone on the device stops a service that ignores SIGTERM: for the stop timeout podman
    reports it ``stopping``. The agent, passing every half second, neither starts it nor
    reports it Failed meanwhile; once it has exited it reports what it sees."""
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 runtime={"reconcile_interval_s": 0.5})
    await put(admin_nc, device_id, "ns_stop", {"services": [service("web", fleet_image, DEAF)]})
    async with StateRecorder(admin_nc, device_id, "ns_stop") as states:
        await states.wait(lambda s: s.phase is Phase.RUNNING, timeout=SLOW)
        cid = container_of(device_id, "ns_stop")["Id"]
        stopping = time.monotonic()
        stopper = asyncio.create_task(asyncio.to_thread(
            subprocess.run, ["podman", "stop", "--time", "4", cid], capture_output=True,
            check=True, timeout=60))
        await asyncio.sleep(1)
        assert container_of(device_id, "ns_stop")["State"] == "stopping"
        await stopper
        stopped = time.monotonic()
        assert stopped - stopping >= 3.5  # it really was stopping all that time
        during = [s for arrived, s in states.seen if stopping < arrived < stopped]
        assert during == []  # not Failed, not Starting: nothing said until podman settled
        _, state = await states.wait(lambda s: s.phase is Phase.FAILED, after=stopping,
                                     timeout=10)
        assert state.message == "service web exited with code 137"
        await asyncio.sleep(2)  # a podman stop is the device's decision: nobody restarts it
        assert container_of(device_id, "ns_stop")["Id"] == cid
        assert container_of(device_id, "ns_stop")["State"] == "exited"
