"""PodmanRuntime against the real podman: each test performs the fault it guards against.

Containers carry the test's own device label (the ``device_id`` fixture) and are removed by
that label afterwards, so tests running at the same time on the shared podman never touch each
other's containers.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator

import pytest

from harmony_fleet.agent.plan import device_labels
from harmony_fleet.agent.runtime import (
    LABEL_SERVICE,
    ContainerRuntimeError,
    ContainerSpec,
    PodmanRuntime,
    Userns,
)
from harmony_fleet.localstack.stack import remove_device_containers
from harmony_fleet_harness.chaos import remove_container

pytestmark = pytest.mark.podman

#: A shell that stops at once on SIGTERM.
IDLE = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"
#: A PID 1 that ignores SIGTERM: only SIGKILL (after the stop timeout) ends it.
DEAF = "trap '' TERM; while :; do sleep 1; done"


@pytest.fixture
async def rt(device_id: str) -> AsyncIterator[PodmanRuntime]:
    try:
        yield PodmanRuntime()
    finally:
        await asyncio.to_thread(remove_device_containers, [device_id])


def spec(device_id: str, name: str, image: str, script: str = IDLE, **extra: object) -> ContainerSpec:
    return ContainerSpec(name=f"{device_id}.{name}", image=image,
                         labels={**device_labels(device_id), LABEL_SERVICE: name},
                         command=["sh", "-c"], args=[script], userns=Userns.AUTO,
                         **extra)  # type: ignore[arg-type]


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def exists(container: str) -> bool:
    return subprocess.run(["podman", "container", "exists", container], check=False,
                          timeout=60).returncode == 0


async def test_actions_by_id_never_reach_a_newer_container_of_the_same_name(
    rt: PodmanRuntime, device_id: str, fleet_image: str
) -> None:
    web = spec(device_id, "web", fleet_image)
    first = await rt.create(web)
    await rt.start(first)
    [listed] = await rt.list_managed(device_labels(device_id))
    assert listed.id == first
    # meanwhile the name is taken by another container (a recreate the listing does not know)
    await asyncio.to_thread(remove_container, first)  # podman's own rm, again if podman fails
    second = await rt.create(web)
    assert second != first

    await rt.remove(listed.id, stop_timeout_s=1)  # the listed one is gone already: fine
    assert exists(second)  # by name, this would have removed the newer container
    with pytest.raises(ContainerRuntimeError):
        await rt.start(listed.id)  # by name, this would have started the newer one
    assert (await rt.inspect(second)) is not None
    assert (await rt.inspect(second)).state == "created"  # type: ignore[union-attr]
    assert await rt.inspect(listed.id) is None


async def test_remove_uses_the_stop_timeout_it_is_given(
    rt: PodmanRuntime, device_id: str, fleet_image: str
) -> None:
    # the container's own --stop-timeout says 30 s: the device's setting (2 s) must win
    deaf = await rt.create(spec(device_id, "deaf", fleet_image, DEAF, stop_timeout_s=30))
    await rt.start(deaf)
    await asyncio.sleep(0.5)  # let the shell install its trap
    started = time.monotonic()
    await rt.remove(deaf, stop_timeout_s=2)
    took = time.monotonic() - started
    print(f"\nremove of a SIGTERM-ignoring container with stop timeout 2 s: {took:.2f}s")
    assert not exists(deaf)
    assert 1.8 < took < 4.5  # SIGTERM ignored, SIGKILL after 2 s (not 5, 10 or 30)


async def test_the_environment_reaches_the_container_exactly(
    rt: PodmanRuntime, device_id: str, fleet_image: str
) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    env = {
        "EMPTY": "", "SPACES": "  both ends  ", "QUOTES": "\"double\" 'single'", "HASH": "#x",
        "EQUALS": "a=b=c", "INNER_CR": "a\rb", "TRAILING_CR": "ab\r", "UNICODE": "ünï ✓",
        "DOLLAR": "$HOME ${PATH}", "PEM": pem,
        "LONG": "y" * 100_000,  # past an env file's 64 KiB line, within one argument's 128 KiB
        **{f"V{i:04d}": "v" * 100 for i in range(1000)},
    }
    script = 'printf "%s" "$LONG" | wc -c; printf "%s" "$PEM" | wc -l; printf "[%s]" "$SPACES"'
    container = await rt.create(spec(device_id, "env", fleet_image, script, env=env,
                                     restart_policy="no"))
    stored = json.loads(await asyncio.to_thread(
        podman, "container", "inspect", "--format", "{{json .Config.Env}}", container))
    given = dict(entry.split("=", 1) for entry in stored)
    assert {k: given.get(k) for k in env} == env
    await rt.start(container)
    await asyncio.to_thread(podman, "wait", container)
    out = await asyncio.to_thread(podman, "logs", container)
    assert out.split("\n") == ["100000", "3", "[  both ends  ]"]
