"""Benchmark: desired-state put -> ``Running`` reported, on one agent driving real podman.

    python benchmarks/bench_rollout.py [--runs 10] [--batch 20] [--batch-runs 3]

The image is present (the local busybox image), so this measures the agent: watch delivery,
planning, ``podman create``/``start`` and the state report. Single deployments are put one at
a time; batches put N deployments at once and time until the last one is Running. Also
prints the agent's resident memory idle and with the batch running. Figures, no thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from harmony_fleet.bus import drain
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    Phase,
    desired_state_key,
    device_state_filter,
    parse_device_state_key,
)
from harmony_fleet.localstack.images import build_busybox_image
from harmony_fleet.localstack.stack import LocalStack

DEVICE = "bench-0"
IDLE = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"


def score(image: str, n: int) -> bytes:
    return json.dumps({"services": [{"name": "web", "image": image, "command": ["sh", "-c"],
                                     "args": [IDLE], "env": {"N": str(n)}}]}).encode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def main(runs: int, batch: int, batch_runs: int) -> None:
    image = build_busybox_image()
    stack = await LocalStack.up(devices=[DEVICE], runtime_enabled=True)
    nc = await stack.admin_connect("bench")
    js = nc.jetstream()
    desired = await js.key_value(BUCKET_DESIRED_STATE)
    states = await js.key_value(BUCKET_DEVICE_STATE)
    running: dict[str, float] = {}
    removed: dict[str, float] = {}
    watcher = await states.watch(device_state_filter(DEVICE))

    async def follow() -> None:
        async for entry in watcher:
            if entry is None or entry.value is None:
                continue
            state = DeploymentState.model_validate_json(entry.value)
            token = parse_device_state_key(entry.key).deployment
            if state.phase is Phase.RUNNING:
                running.setdefault(token, time.perf_counter())
            elif state.phase is Phase.REMOVED:
                removed.setdefault(token, time.perf_counter())

    follower = asyncio.create_task(follow())

    async def roll(tokens: list[str], timeout: float = 120) -> float:
        started = time.perf_counter()
        for i, token in enumerate(tokens):
            await desired.put(desired_state_key(DEVICE, token), score(image, i))
        while not all(t in running for t in tokens):
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"not all Running after {timeout}s")
            await asyncio.sleep(0.005)
        return max(running[t] for t in tokens) - started

    async def remove(tokens: list[str]) -> None:
        for token in tokens:
            await desired.delete(desired_state_key(DEVICE, token))
        while not all(t in removed for t in tokens):
            await asyncio.sleep(0.01)

    pid = stack.devices[DEVICE].pid
    try:
        await asyncio.sleep(3)
        idle_rss = rss_mib(pid) if pid else float("nan")
        singles = []
        for run in range(runs):
            token = f"b1_r{run}"
            singles.append(await roll([token]))
            await remove([token])
        batches = []
        loaded_rss = float("nan")
        for run in range(batch_runs):
            tokens = [f"b{batch}_r{run}-{i}" for i in range(batch)]
            batches.append(await roll(tokens))
            await asyncio.sleep(3)
            loaded_rss = rss_mib(pid) if pid else float("nan")
            await remove(tokens)
        ms = [x * 1000 for x in singles]
        print(f"1 deployment: put -> Running p50 {statistics.median(ms):.0f} ms "
              f"p99 {pct(ms, 0.99):.0f} ms (n={len(ms)})")
        bs = [x * 1000 for x in batches]
        print(f"{batch} deployments at once: put -> all Running p50 {statistics.median(bs):.0f} ms "
              f"p99 {pct(bs, 0.99):.0f} ms (n={len(bs)})")
        print(f"agent RSS idle {idle_rss:.1f} MiB; with {batch} deployments {loaded_rss:.1f} MiB")
    finally:
        follower.cancel()
        await watcher.stop()  # type: ignore[no-untyped-call]
        await drain(nc)
        await stack.down()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--batch-runs", type=int, default=3)
    ns = parser.parse_args()
    asyncio.run(main(ns.runs, ns.batch, ns.batch_runs))
