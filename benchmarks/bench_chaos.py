"""Benchmark: recovery times of the chaos scenarios, side by side.

    python benchmarks/bench_chaos.py [--runs 1]

Runs every scenario of ``harmony_fleet_harness.chaos`` (the same ones tests/chaos asserts) on
a local stack of its own: real nats-server, fleet-callout, the OIDC issuer, agents driving the
local podman. Prints, per scenario, how long the fleet took to recover. Figures, no
thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from harmony_fleet.localstack.images import build_busybox_image
from harmony_fleet_harness.chaos import SCENARIOS


async def main(runs: int) -> None:
    image = build_busybox_image()
    rows: dict[str, list[float]] = {}
    for _run in range(runs):
        for scenario in SCENARIOS:
            workdir = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
            result = await scenario(workdir, image)
            rows.setdefault(result.scenario, []).append(result.recovery_s)
            extra = f"  {result.details}" if result.details else ""
            print(f"  {result.scenario}: {result.recovery_s:.2f}s{extra}", flush=True)
    print("\nrecovery (seconds)" + (f", median of {runs}" if runs > 1 else ""))
    width = max(len(name) for name in rows)
    for name, times in rows.items():
        print(f"  {name:<{width}}  {statistics.median(times):6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    asyncio.run(main(parser.parse_args().runs))
