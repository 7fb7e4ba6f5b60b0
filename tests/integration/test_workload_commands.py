"""logs and exec against real containers."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.commands import COMMANDS
from harmony_fleet.bus import DeviceOffline, FleetCommandsClient, RemoteError
from harmony_fleet.contracts import ErrorKind, Phase
from harmony_fleet.localstack.stack import LocalStack

from .workloads import put, service, wait_state

pytestmark = pytest.mark.podman

EXEC_ALLOWED = """
[exec]
enabled = true
allow = [ { deployment = "ns_app", service = "web", commands = ["cat", "echo", "sh", "sleep"] } ]
"""

TICKER = ("trap 'exit 0' TERM; echo hello; echo héllo-ünicode; i=0; "
          "while :; do i=$((i+1)); echo tick $i; sleep 1 & wait $!; done")


@pytest.fixture
async def app(fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str,
              fleet_image: str) -> str:
    await fleet_stack.add_device(device_id, runtime_enabled=True, extra_toml=EXEC_ALLOWED)
    await put(admin_nc, device_id, "ns_app", {"services": [service("web", fleet_image, TICKER)]})
    await wait_state(admin_nc, device_id, "ns_app", Phase.RUNNING)
    return device_id


async def collect(client: FleetCommandsClient, device: str, **kwargs: object) -> str:
    return "".join([c async for c in client.logs(device, "ns_app", "web", **kwargs)])  # type: ignore[arg-type]


async def test_logs_returns_output_then_ends(app: str, fleet_client: FleetCommandsClient) -> None:
    await asyncio.sleep(1.5)
    text = await collect(fleet_client, app)
    assert text.startswith("hello\nhéllo-ünicode\ntick 1\n")
    tail = await collect(fleet_client, app, tail=1)
    assert tail.count("\n") == 1
    assert tail.startswith("tick ")


async def test_logs_follow_streams_new_lines_and_cancels(
    app: str, fleet_client: FleetCommandsClient
) -> None:
    cancels = COMMANDS.labels(verb="cancel", outcome="ok")
    cancels_before = cancels._value.get()
    seen = ""
    stream = fleet_client.logs(app, "ns_app", "web", follow=True, tail=0)
    async with asyncio.timeout(15):
        async for chunk in stream:
            seen += chunk
            if seen.count("tick") >= 2:
                break
    await stream.aclose()
    # leaving the loop cancelled the follow on the (in-process) agent
    for _ in range(50):
        if cancels._value.get() > cancels_before:
            break
        await asyncio.sleep(0.05)
    assert cancels._value.get() == cancels_before + 1
    numbers = [int(line.split()[1]) for line in seen.splitlines() if line.startswith("tick")]
    assert numbers == sorted(numbers)
    assert numbers[1] == numbers[0] + 1


async def test_logs_follow_ends_when_its_time_is_up(
    app: str, fleet_client: FleetCommandsClient
) -> None:
    async with asyncio.timeout(15):
        text = await collect(fleet_client, app, follow=True, follow_timeout_s=2)
    assert "hello" in text


async def test_logs_unknown_service_is_not_found(
    app: str, fleet_client: FleetCommandsClient
) -> None:
    with pytest.raises(RemoteError) as err:
        async for _ in fleet_client.logs(app, "ns_app", "nope"):
            pass
    assert err.value.kind is ErrorKind.NOT_FOUND


async def test_exec_allowed(app: str, fleet_client: FleetCommandsClient) -> None:
    reply = await fleet_client.exec(app, "ns_app", "web", ["echo", "hi", "there"])
    assert (reply.exit_code, reply.output, reply.truncated) == (0, "hi there\n", False)
    failed = await fleet_client.exec(app, "ns_app", "web", ["sh", "-c", "echo oops >&2; exit 4"])
    assert (failed.exit_code, failed.output) == (4, "oops\n")


async def test_exec_output_cap_and_timeout(app: str, fleet_client: FleetCommandsClient) -> None:
    big = await fleet_client.exec(app, "ns_app", "web",
                                  ["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo 0123456789; "
                                   "i=$((i+1)); done"], output_cap=100)
    assert big.truncated is True
    assert len(big.output) == 100
    slow = await fleet_client.exec(app, "ns_app", "web", ["sh", "-c", "sleep 20"], timeout_s=1)
    assert slow.timed_out is True


def processes(device: str) -> list[str]:
    """The command lines running in the service's container (podman top: no ps in the image)."""
    out = subprocess.run(["podman", "top", f"{device}.ns_app.web", "args"], capture_output=True,
                         text=True, check=True, timeout=60)
    return [line.strip() for line in out.stdout.splitlines()[1:]]


@pytest.mark.parametrize("argv", [
    ["sleep", "300"],
    ["sh", "-c", "sleep 300 & sleep 301"],  # and what it started
], ids=["sleep", "with-a-child"])
async def test_exec_that_times_out_leaves_nothing_running_in_the_container(
    app: str, fleet_client: FleetCommandsClient, argv: list[str]
) -> None:
    started = time.monotonic()
    slow = await fleet_client.exec(app, "ns_app", "web", argv, timeout_s=1)
    took = time.monotonic() - started
    assert slow.timed_out is True
    assert slow.exit_code == -1
    assert took < 5
    left = [p for p in await asyncio.to_thread(processes, app) if "sleep 30" in p]
    assert left == []  # killing only podman's client left these running
    assert any("trap" in p for p in await asyncio.to_thread(processes, app))  # the service runs
    # and exec still works
    assert (await fleet_client.exec(app, "ns_app", "web", ["echo", "ok"])).output == "ok\n"


async def test_exec_of_an_argument_no_exec_can_carry_is_a_bad_request(
    app: str, fleet_client: FleetCommandsClient
) -> None:
    # (an argument over 128 KiB cannot arrive: a request body is at most 64 KiB)
    with pytest.raises(RemoteError) as err:
        await fleet_client.exec(app, "ns_app", "web", ["echo", "a\0b"])
    assert err.value.kind is ErrorKind.BAD_REQUEST
    assert "exec: argv[1] holds a NUL byte" in str(err.value)


@pytest.mark.parametrize(
    ("argv", "service_name", "needle"),
    [
        (["rm", "-rf", "/"], "web", "exec of 'rm' in ns_app/web is not allowed"),
        (["cat", "/etc/passwd"], "other", "exec of 'cat' in ns_app/other is not allowed"),
    ],
)
async def test_exec_refused_outside_the_allowlist(
    app: str, fleet_client: FleetCommandsClient, argv: list[str], service_name: str, needle: str
) -> None:
    with pytest.raises(RemoteError) as err:
        await fleet_client.exec(app, "ns_app", service_name, argv)
    assert err.value.kind is ErrorKind.FORBIDDEN
    assert needle in str(err.value)


async def test_exec_is_off_by_default(
    fleet_stack: LocalStack, admin_nc: NatsClient, fleet_client: FleetCommandsClient,
    device_id: str, fleet_image: str,
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=True)
    await put(admin_nc, device_id, "ns_app", {"services": [service("web", fleet_image)]})
    await wait_state(admin_nc, device_id, "ns_app", Phase.RUNNING)
    with pytest.raises(RemoteError) as err:
        await fleet_client.exec(device_id, "ns_app", "web", ["cat", "/etc/hostname"])
    assert err.value.kind is ErrorKind.FORBIDDEN
    assert "exec is disabled" in str(err.value)


async def test_offline_device_for_logs_and_exec(
    fleet_client: FleetCommandsClient, device_id: str
) -> None:
    with pytest.raises(DeviceOffline):
        await fleet_client.exec(device_id, "ns_app", "web", ["true"])
    with pytest.raises(DeviceOffline):
        async for _ in fleet_client.logs(device_id, "ns_app", "web"):
            pass


async def test_runtime_disabled_agent_says_unsupported(
    fleet_stack: LocalStack, fleet_client: FleetCommandsClient, device_id: str
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=False)
    with pytest.raises(RemoteError) as err:
        await fleet_client.exec(device_id, "ns_app", "web", ["true"])
    assert err.value.kind is ErrorKind.UNSUPPORTED
