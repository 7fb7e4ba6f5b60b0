"""Benchmark: operator fan-out and aggregation.

    python benchmarks/bench_operator.py [--devices 1000 10000]

For each size: N SIMULATED devices (harmony_fleet.testing.simulate) publish their info; one
Deployment selects all of them; we time until all N desired-state keys are written (seconds,
keys/s), then the simulated runtime reports Running for every device and we time from the
last device-state write to the Deployment's status showing ``succeeded == N``. The operator
runs in-process against the Kubernetes API emulator and a real nats-server (Device CR
mirroring off, to measure the Deployment path alone). Figures, no thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from harmony_fleet.contracts import BUCKET_DESIRED_STATE, Phase, PodmanScore
from harmony_fleet.operator.app import FleetOperator, OperatorSettings
from harmony_fleet.operator.kube import KubeTarget
from harmony_fleet.operator.main import OperatorConfig, OperatorSection, run_operator
from harmony_fleet.testing.kube_emulator import start_kube_emulator
from harmony_fleet.testing.services import start_services
from harmony_fleet.testing.simulate import SimulatedFleet
from harmony_fleet.testing.stack import LocalStack

SCORE = {"services": [{"name": "web", "image": "localhost/fleet-busybox:latest"}]}


async def one_size(n: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    services = await asyncio.to_thread(start_services, workdir)
    stack = LocalStack(workdir, services, owns_server=False)
    try:
        await stack.ensure_buckets()
        nc = await stack.admin_connect("bench")
        devices = {f"sim-{i:05d}": {"fleet": "bench"} for i in range(n)}
        fleet = SimulatedFleet(nc, devices)
        t0 = time.perf_counter()
        await fleet.publish_info()
        print(f"[{n}] device-info written in {time.perf_counter() - t0:.1f}s")
        async with start_kube_emulator() as kube:
            stop = asyncio.Event()
            holder: list[FleetOperator] = []
            config = OperatorConfig(nats=stack.admin_settings(),
                                    operator=OperatorSection(probe_listen=None))
            task = asyncio.create_task(run_operator(
                config, stop, target=KubeTarget(kube.url, insecure=True),
                settings=OperatorSettings(identity="bench", device_resources=False,
                                          write_concurrency=256), holder=holder))
            while not (holder and holder[0].elector.is_leader and holder[0]._views_ready()):
                await asyncio.sleep(0.05)
            operator = holder[0]
            kv = await nc.jetstream().key_value(BUCKET_DESIRED_STATE)
            started = time.perf_counter()
            kube.emulator.create_object("fleet.nationtech.io/v1alpha1/deployments", {
                "apiVersion": "fleet.nationtech.io/v1alpha1", "kind": "Deployment",
                "metadata": {"name": "fanout", "namespace": "bench"},
                "spec": {"targetSelector": {"matchLabels": {"fleet": "bench"}}, "score": SCORE},
            }, namespace="bench")
            while operator.key_writes < n:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            status = await kv.status()
            print(f"[{n}] Deployment applied -> {n} keys written in {elapsed:.2f}s "
                  f"({n / elapsed:.0f} keys/s; bucket holds {status.values} values)")

            spec_hash = PodmanScore.model_validate(SCORE).spec_hash()
            await asyncio.gather(*(fleet.report(d, "bench_fanout", Phase.RUNNING, spec_hash)
                                   for d in devices))
            last_write = time.perf_counter()

            def succeeded() -> int:
                obj = kube.emulator.get_object("fleet.nationtech.io/v1alpha1/deployments",
                                               "fanout", namespace="bench") or {}
                return int(((obj.get("status") or {}).get("aggregate") or {}).get("succeeded", 0))

            while succeeded() < n:
                await asyncio.sleep(0.01)
            print(f"[{n}] last device-state write -> aggregate succeeded={n}: "
                  f"{time.perf_counter() - last_write:.2f}s")
            stop.set()
            await task
        await nc.drain()
    finally:
        services.stop()


async def main(sizes: list[int]) -> None:
    for n in sizes:
        await one_size(n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    ns = parser.parse_args()
    asyncio.run(main(ns.devices))
