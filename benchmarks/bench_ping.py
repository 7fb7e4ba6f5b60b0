"""Benchmark: local stack start-up time and ping round trips (p50/p99).

    python benchmarks/bench_ping.py [--pings 1000] [--runs 3]

Starts the same local stack as ``fleet stack up`` (real nats-server, agents as subprocesses),
times it until every agent answers, then sends sequential pings through
``FleetCommandsClient`` and prints the percentiles. Nothing here asserts a threshold: the
figures go into the issue notes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from harmony_fleet.bus import FleetCommandsClient, drain
from harmony_fleet.localstack.stack import LocalStack


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


async def run(pings: int, devices: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    stack = await LocalStack.up(devices=devices, runtime_enabled=False)
    startup = time.perf_counter() - started
    try:
        nc = await stack.admin_connect("bench")
        client = FleetCommandsClient(nc)
        ids = list(stack.devices)
        for device in ids:  # warm-up: subscriptions, route caches
            await client.ping(device)
        samples = []
        for i in range(pings):
            t0 = time.perf_counter()
            await client.ping(ids[i % len(ids)])
            samples.append((time.perf_counter() - t0) * 1000)
        await drain(nc)
    finally:
        await stack.down()
    return startup, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    startups: list[float] = []
    for run_no in range(1, args.runs + 1):
        startup, samples = asyncio.run(run(args.pings, args.devices))
        startups.append(startup)
        ms = sorted(samples)
        print(f"run {run_no}: stack up ({args.devices} agents) {startup:.2f}s; "
              f"{len(ms)} pings p50 {statistics.median(ms):.3f} ms "
              f"p99 {percentile(ms, 0.99):.3f} ms max {ms[-1]:.3f} ms")
    print(f"stack start-up median {statistics.median(startups):.2f}s over {args.runs} runs")


if __name__ == "__main__":
    main()
