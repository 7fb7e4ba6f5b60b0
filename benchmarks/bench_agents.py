"""Benchmark: as many REAL agent processes as fit, through the auth callout.

    python benchmarks/bench_agents.py [--agents 250] [--heartbeat-s 2] [--window-s 20]

Runs the real thing in callout mode: nats-server with the auth callout, ``fleet-callout``
(callout and report writer), the local OIDC issuer, and N agents as subprocesses (runtime
off: no podman), each enrolled with its own machine key and authenticated by the callout.
Measured:

* start: spawning the N agents -> every one answers a ping (process start, token exchange,
  callout auth, first reports);
* callout auths/s: nats-server restarted under the N connected agents -> all N connected
  again (a reconnect storm: every agent re-authenticates through the callout at once);
* nats-server memory: its RSS idle and with the N agents connected, per device;
* the report writer: heartbeats written per second (each agent every ``--heartbeat-s``) over
  ``--window-s``, against what the agents offer;
* agent memory: RSS per agent process, and how many would fit in this machine's memory.

Figures, no thresholds. Prints the load average at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from nats.aio.client import Client as NatsClient

from harmony_fleet.bus import FleetCommandsClient, drain
from harmony_fleet.contracts import BUCKET_DEVICE_HEARTBEAT
from harmony_fleet.localstack.services import start_services
from harmony_fleet.localstack.stack import LocalStack


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def connections(stack: LocalStack) -> int:
    with urllib.request.urlopen(f"{stack.server.monitor_url}/varz", timeout=2) as resp:  # noqa: S310
        return int(json.loads(resp.read())["connections"])


async def main(n: int, heartbeat_s: float, window_s: float) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.2f}; memory available "
          f"{_meminfo('MemAvailable') / 1024:.0f} MiB", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    services = await asyncio.to_thread(start_services, workdir, auth="callout")
    stack = LocalStack(workdir, services, owns_server=True)
    try:
        await stack.ensure_buckets()
        admin = await stack.admin_connect("bench-agents")
        await asyncio.sleep(1)
        base_conns = connections(stack)
        idle_rss = rss_mib(stack.server.pid)
        devices = [f"bench-agent-{i:04d}" for i in range(n)]
        started = time.perf_counter()
        for i in range(0, n, 8):  # enrolment (issuer API) and spawn, 8 at a time
            await asyncio.gather(*(stack.add_device(d, mode="subprocess", wait=False,
                                                    agent={"heartbeat_interval_s": heartbeat_s})
                                   for d in devices[i:i + 8]))
        spawned = time.perf_counter() - started
        client = FleetCommandsClient(admin, timeout=5.0)
        pending = set(devices)
        while pending:
            answers = await asyncio.gather(*(client.ping(d) for d in sorted(pending)[:50]),
                                           return_exceptions=True)
            for device, answer in zip(sorted(pending)[:50], answers, strict=True):
                if not isinstance(answer, BaseException):
                    pending.discard(device)
            if time.perf_counter() - started > 900:
                raise TimeoutError(f"{len(pending)} agents never answered")
        up = time.perf_counter() - started
        print(f"{n} agents: enrolled and spawned in {spawned:.1f}s, all answering pings "
              f"{up:.1f}s after the first spawn", flush=True)
        await asyncio.sleep(5)
        loaded_rss = rss_mib(stack.server.pid)
        agent_rss = [rss_mib(h.pid) for h in stack.devices.values()]
        print(f"nats-server RSS: {idle_rss:.1f} MiB idle, {loaded_rss:.1f} MiB with {n} agents "
              f"-> {(loaded_rss - idle_rss) * 1024 / n:.0f} KiB per device", flush=True)
        per_agent = statistics.mean(agent_rss)
        fit = int(_meminfo("MemTotal") / 1024 * 0.8 / per_agent)
        print(f"agent RSS: mean {per_agent:.1f} MiB, max {max(agent_rss):.1f} MiB -> about "
              f"{fit} agents in 80 % of this machine's memory", flush=True)

        # the report writer: heartbeats written per second over the window
        written = await count_writes(admin, window_s)
        print(f"report writer: {written / window_s:.0f} heartbeats written/s "
              f"(offered {n / heartbeat_s:.0f}/s by {n} agents every {heartbeat_s:g}s)",
              flush=True)

        # a reconnect storm: every agent authenticates through the callout again at once
        await drain(admin)
        await asyncio.to_thread(stack.server.stop)
        restarted = time.perf_counter()
        await asyncio.to_thread(stack.server.start)
        while connections(stack) < n + base_conns - 1:
            if time.perf_counter() - restarted > 600:
                raise TimeoutError(f"only {connections(stack)} connections came back")
            await asyncio.sleep(0.1)
        storm = time.perf_counter() - restarted
        print(f"reconnect storm: {n} agents authenticated again through the callout in "
              f"{storm:.1f}s -> {n / storm:.0f} callout auths/s (server restart included)",
              flush=True)
    finally:
        await stack.down()


async def count_writes(admin: NatsClient, window_s: float) -> int:
    """Heartbeat entries written during ``window_s`` (after the current ones were read)."""
    kv = await admin.jetstream().key_value(BUCKET_DEVICE_HEARTBEAT)
    watcher = await kv.watch(">", include_history=False)
    written, initial = 0, True
    deadline = time.perf_counter() + window_s + 60
    try:
        while time.perf_counter() < deadline:
            try:
                entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
            except Exception as exc:  # nats-py's timeout
                if type(exc).__name__ == "TimeoutError":
                    continue
                raise
            if entry is None:  # the current values are read: count from now on
                initial, written, deadline = False, 0, time.perf_counter() + window_s
            elif not initial:
                written += 1
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return written


def _meminfo(field: str) -> int:
    """KiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=250)
    parser.add_argument("--heartbeat-s", type=float, default=2.0)
    parser.add_argument("--window-s", type=float, default=20.0)
    ns = parser.parse_args()
    asyncio.run(main(ns.agents, ns.heartbeat_s, ns.window_s))
