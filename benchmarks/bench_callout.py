"""Benchmark: auth callout throughput and latency, and connect-to-first-watch-event time.

    python benchmarks/bench_callout.py [--auths 400] [--concurrency 20]

Runs the real thing: nats-server with auth_callout, ``fleet-callout`` processes (1, then 2 in
the same queue group), the local OIDC issuer. Each auth is a full NATS connect with a device
token (token validation, user JWT signing, xkey sealing both ways). Figures, no thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats

from harmony_fleet.agent.watch import DesiredStateWatcher
from harmony_fleet.bus import NatsSettings, connect
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.contracts import BUCKET_DESIRED_STATE, desired_state_key
from harmony_fleet.localstack.issuer import load_registry
from harmony_fleet.localstack.services import ServiceProcess, start_services
from harmony_fleet.localstack.stack import LocalStack


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def auth_round(url: str, tokens: list[str], concurrency: int) -> tuple[float, list[float]]:
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(token: str) -> None:
        async with slots:
            t0 = time.perf_counter()
            nc = await nats.connect(url, token=token, allow_reconnect=False, connect_timeout=10)
            latencies.append((time.perf_counter() - t0) * 1000)
            await nc.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(t) for t in tokens))
    return len(tokens) / (time.perf_counter() - started), latencies


async def main(auths: int, concurrency: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-callout-"))
    services = await asyncio.to_thread(start_services, workdir, auth="callout")
    try:
        stack = LocalStack(workdir, services, owns_server=False)
        await stack.ensure_buckets()
        assert services.issuer is not None
        twin = load_registry(services.issuer.registry)
        user = twin.create_machine_user("bench-dev")
        user.metadata["device_id"] = "bench-dev"
        twin.grant_roles(user.user_id, ["fleet-device"])
        tokens = [twin.issue_token(user) for _ in range(auths)]

        for instances in (1, 2):
            if instances == 2:
                first = services.processes[-1]
                extra = ServiceProcess("fleet-callout-2", first.argv, workdir / "callout-2.log",
                                       first.ready_markers)
                extra.start()
                services.processes.append(extra)
            rate, lat = await auth_round(services.nats_url, tokens, concurrency)
            print(f"callout x{instances}: {rate:.0f} auths/s at concurrency {concurrency}; "
                  f"connect p50 {statistics.median(lat):.1f} ms p99 {pct(lat, 0.99):.1f} ms "
                  f"(n={len(lat)})")
            _, seq = await auth_round(services.nats_url, tokens[:100], 1)
            print(f"callout x{instances}: sequential connect p50 {statistics.median(seq):.1f} ms "
                  f"p99 {pct(seq, 0.99):.1f} ms")

        # a device: token exchange + callout + watch until its first desired-state event
        admin = await stack.admin_connect()
        key_file = workdir / "dev-key.json"
        samples = []
        for i in range(10):
            device = f"watch-{i}"
            services.enroll_device(device, key_file)
            kv = await admin.jetstream().key_value(BUCKET_DESIRED_STATE)
            await kv.put(desired_state_key(device, "ns_app"), b"{}")
            t0 = time.perf_counter()
            settings = NatsSettings(urls=[services.nats_url], auth=ZitadelAuth(
                issuer=services.issuer.url, key_file=key_file,
                project_id=services.issuer.project_id))
            nc = await connect(settings, name="bench", inbox_prefix=f"_INBOX.{device}")
            watcher = DesiredStateWatcher(nc, device)
            stop = asyncio.Event()
            task = asyncio.create_task(watcher.run(stop))
            await watcher.changed.wait()
            samples.append((time.perf_counter() - t0) * 1000)
            stop.set()
            await task
            await nc.close()
        await admin.drain()
        print(f"device connect (token exchange + callout) to first watch event: p50 "
              f"{statistics.median(samples):.0f} ms max {max(samples):.0f} ms (n={len(samples)})")
    finally:
        services.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auths", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=20)
    ns = parser.parse_args()
    asyncio.run(main(ns.auths, ns.concurrency))
    sys.exit(0)
