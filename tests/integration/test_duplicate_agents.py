"""Two agents with one device id (two local stacks, a cloned SD card, a copied config) must
not fight over the device's containers: the second one is refused, loudly, and the first
one's workloads are untouched. Real agents, real podman, real nats-server and writer."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.identity import EXIT_DEVICE_ID_IN_USE
from harmony_fleet.bus import CommandError, FleetCommandsClient
from harmony_fleet.contracts import Phase
from harmony_fleet.localstack.services import start_services
from harmony_fleet.localstack.stack import LocalStack, StackError

from .workloads import by_name, put, service, wait_state

pytestmark = pytest.mark.podman


def run_second_agent(config_file: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``fleet-agent`` on a copy of an agent's config, as a clone would run it."""
    return subprocess.run([sys.executable, "-m", "harmony_fleet.agent.main", "--config",
                           str(config_file)], capture_output=True, text=True, timeout=timeout,
                          check=False)


def clone_config(original: Path, tmp: Path, **agent: object) -> Path:
    """The same config (same device id, same credentials) with ``[agent]`` settings added."""
    text = original.read_text()
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in agent.items())
    clone = tmp / "clone.toml"
    clone.write_text(text.replace("[agent]\n", "[agent]\n" + extra, 1))
    clone.chmod(0o600)
    return clone


async def running_workload(stack: LocalStack, admin: NatsClient, device: str,
                           image: str) -> dict[str, str]:
    await stack.add_device(device, runtime_enabled=True, mode="subprocess")
    await put(admin, device, "dup_web", {"services": [service("web", image)]})
    await wait_state(admin, device, "dup_web", Phase.RUNNING)
    return {name: c["Id"] for name, c in by_name(device).items()}


async def test_a_second_agent_on_the_same_host_is_refused(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    tmp_path: Path,
) -> None:
    before = await running_workload(fleet_stack, admin_nc, device_id, fleet_image)
    handle = fleet_stack.devices[device_id]
    started = time.monotonic()
    second = await asyncio.to_thread(run_second_agent, handle.config_file)
    assert second.returncode == EXIT_DEVICE_ID_IN_USE
    assert "already run by another agent on this host" in second.stderr
    assert time.monotonic() - started < 15  # refused at once, before connecting
    await asyncio.sleep(3)  # what the second agent would have done, it would have done by now
    assert {n: c["Id"] for n, c in by_name(device_id).items()} == before
    state = await wait_state(admin_nc, device_id, "dup_web", Phase.RUNNING)
    assert state.phase is Phase.RUNNING
    assert handle.process is not None
    assert handle.process.poll() is None  # the first agent runs on


async def test_a_clone_on_another_host_is_refused_while_the_original_lives(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    tmp_path: Path,
) -> None:
    before = await running_workload(fleet_stack, admin_nc, device_id, fleet_image)
    handle = fleet_stack.devices[device_id]
    (tmp_path / "boot_id").write_text("another-host-boot\n")
    clone = clone_config(handle.config_file, tmp_path, lock_dir=str(tmp_path / "locks"),
                         boot_id_file=str(tmp_path / "boot_id"), claim_timeout_s=4)
    second = await asyncio.to_thread(run_second_agent, clone)
    assert second.returncode == EXIT_DEVICE_ID_IN_USE, second.stderr[-2000:]
    assert f"device id {device_id} is in use by another agent" in second.stderr
    assert "cloned device or a copied configuration" in second.stderr
    await asyncio.sleep(2)
    assert {n: c["Id"] for n, c in by_name(device_id).items()} == before
    assert (await wait_state(admin_nc, device_id, "dup_web", Phase.RUNNING)).phase \
        is Phase.RUNNING
    assert handle.process is not None
    assert handle.process.poll() is None


async def test_a_restarted_agent_takes_its_device_back_at_once(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
) -> None:
    before = await running_workload(fleet_stack, admin_nc, device_id, fleet_image)
    handle = fleet_stack.devices.pop(device_id)
    assert handle.process is not None
    handle.process.send_signal(signal.SIGKILL)  # a crash: the lease is still fresh
    handle.process.wait(10)
    started = time.monotonic()
    await fleet_stack.add_device(device_id, runtime_enabled=True, mode="subprocess")
    took = time.monotonic() - started
    assert took < 15, f"took {took:.1f}s: waited for its own lease to lapse"
    await asyncio.sleep(2)
    assert {n: c["Id"] for n, c in by_name(device_id).items()} == before  # adopted


async def test_a_clone_takes_over_only_once_the_original_is_gone(
    tmp_path: Path, device_id: str,
) -> None:
    """With a short lease: the clone waits while the original lives, then takes over."""
    services = await asyncio.to_thread(start_services, tmp_path / "services",
                                       writer={"device_lease_s": 6})
    stack = LocalStack(tmp_path / "services", services, owns_server=True)
    try:
        await stack.ensure_buckets()
        await stack.add_device(device_id, mode="subprocess", agent={"heartbeat_interval_s": 1})
        handle = stack.devices[device_id]
        (tmp_path / "boot_id").write_text("clone-boot\n")
        clone = clone_config(handle.config_file, tmp_path, lock_dir=str(tmp_path / "locks"),
                             boot_id_file=str(tmp_path / "boot_id"), claim_timeout_s=60)
        proc = subprocess.Popen([sys.executable, "-m", "harmony_fleet.agent.main", "--config",
                                 str(clone)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            await asyncio.sleep(8)  # longer than the lease: the original keeps renewing it
            assert proc.poll() is None  # the clone still waits, serving nothing
            assert handle.process is not None
            handle.process.send_signal(signal.SIGKILL)
            handle.process.wait(10)
            admin = await stack.admin_connect("takeover")
            try:
                client = FleetCommandsClient(admin, timeout=1)
                deadline = time.monotonic() + 30
                while True:  # the clone answers once the lease has lapsed
                    try:
                        await client.ping(device_id)
                        break
                    except CommandError:
                        assert time.monotonic() < deadline, "the clone never took over"
                        await asyncio.sleep(0.2)
            finally:
                await admin.drain()
        finally:
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=30)[0]
        assert "waiting up to" in out
    finally:
        await stack.down()


async def test_a_second_local_stack_does_not_take_the_same_device_ids(
    fleet_stack: LocalStack, device_id: str, tmp_path: Path,
) -> None:
    await fleet_stack.add_device(device_id, mode="subprocess")
    with pytest.raises(StackError, match="Is another local stack running") as exc:
        await LocalStack.up(devices=[device_id], workdir=tmp_path / "second")
    assert "--device-prefix" in str(exc.value)
    assert not (tmp_path / "second").exists()  # refused before anything started
