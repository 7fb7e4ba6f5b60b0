"""The reconciler remembers every failed apply, whatever failed: podman, or a bug in the agent.

An apply that raised anything but the reconciler's own failure used to be reported ("agent
error: ...") and forgotten, so every periodic pass ran it again: pulls, init containers and
removals included. Here the runtime raises on ``create`` the way a hung podman (a timeout) or a
bug would, and the passes that follow must not create again until the key has a new revision.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence

import pytest

from harmony_fleet.agent.reconciler import Reconciler, ReconcilerSettings
from harmony_fleet.agent.runtime import (
    ContainerInfo,
    ContainerSpec,
    ExecResult,
    Exited,
    PodmanTimeout,
    RegistryAuth,
    TimedOut,
    Userns,
)
from harmony_fleet.agent.watch import DesiredEntry
from harmony_fleet.contracts import DeploymentState, Phase

SCORE = json.dumps({"services": [{"name": "web", "image": "localhost/web:1"}]}).encode()


class FailingCreates:
    """A container engine with no containers whose ``create`` raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.creates = 0

    async def image_exists(self, image: str) -> bool:
        return True

    async def pull(self, image: str, *, auth: RegistryAuth | None = None,
                   tls_verify: bool = True) -> None:
        raise AssertionError("nothing to pull")

    async def create(self, spec: ContainerSpec) -> str:
        self.creates += 1
        raise self.error

    async def start(self, container: str) -> None:
        raise AssertionError("nothing was created")

    async def stop(self, container: str, *, stop_timeout_s: int) -> None:
        raise AssertionError("nothing to stop")

    async def remove(self, container: str, *, stop_timeout_s: int) -> None:
        raise AssertionError("nothing to remove")

    async def inspect(self, container: str) -> ContainerInfo | None:
        return None

    async def list_managed(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        return []

    async def logs(self, container: str, *, tail: int | None = None, since: str | None = None,
                   follow: bool = False) -> AsyncGenerator[bytes, None]:
        raise AssertionError("no logs")
        yield b""  # pragma: no cover (makes this an async generator)

    async def exec(self, container: str, argv: Sequence[str], *, timeout_s: float,
                   output_cap: int) -> ExecResult:
        raise AssertionError("no exec")

    async def run_to_completion(self, spec: ContainerSpec, timeout_s: float, *,
                                stop_timeout_s: int) -> Exited | TimedOut:
        raise AssertionError("no init containers")

    async def version(self) -> str | None:
        return "4.3.1"

    async def create_secret(self, name: str, value: bytes, labels: Mapping[str, str]) -> None:
        raise AssertionError("no secrets")

    async def list_secrets(self) -> list[str]:
        return []

    async def remove_secret(self, name: str) -> None:
        raise AssertionError("no secrets")


async def settle(reconciler: Reconciler) -> None:
    """Wait for the deployment workers the last pass started."""
    for worker in list(reconciler._workers.values()):
        if worker.task is not None:
            await worker.task


@pytest.mark.parametrize(("error", "message"), [
    (RuntimeError("a bug"), "agent error: a bug"),
    (PodmanTimeout("podman create did not finish within 120s"),
     "podman create did not finish within 120s"),
], ids=["bug", "podman-timeout"])
async def test_a_failed_apply_is_not_attempted_again_by_later_passes(
    error: Exception, message: str
) -> None:
    runtime = FailingCreates(error)
    reports: list[DeploymentState] = []

    async def sink(state: DeploymentState) -> None:
        reports.append(state)

    policy = ReconcilerSettings().policy.model_copy(update={"userns": Userns.HOST})
    reconciler = Reconciler("pi-1", runtime, sink, ReconcilerSettings(policy=policy))
    view = {"ns_web": DesiredEntry("ns_web", SCORE, revision=5)}
    for _ in range(5):  # the first pass and four periodic ones
        await reconciler.reconcile_pass(view)
        await settle(reconciler)
    assert runtime.creates == 1
    assert reports[-1].phase is Phase.FAILED
    assert reports[-1].message == message
    assert reports[-1].revision == 5

    # the same score written again (revision 6) is how to ask for another attempt
    view = {"ns_web": DesiredEntry("ns_web", SCORE, revision=6)}
    for _ in range(3):
        await reconciler.reconcile_pass(view)
        await settle(reconciler)
    assert runtime.creates == 2
    assert (reports[-1].phase, reports[-1].revision) == (Phase.FAILED, 6)
