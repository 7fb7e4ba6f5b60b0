"""The chaos suite: each component killed at a bad moment, on a real local stack (callout
mode, real podman). Each scenario asserts what must hold afterwards and prints its recovery
time; benchmarks/bench_chaos.py runs the same scenarios and reports them together."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from harmony_fleet_harness.chaos import SCENARIOS, ChaosResult

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_chaos(scenario: Callable[[Path, str], Awaitable[ChaosResult]], tmp_path: Path,
                     fleet_image: str) -> None:
    result = await scenario(tmp_path, fleet_image)
    assert result.recovery_s > 0
    extra = f" {result.details}" if result.details else ""
    print(f"\n{result.scenario}: recovered in {result.recovery_s:.2f}s{extra}")
