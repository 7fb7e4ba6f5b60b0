"""Benchmark: one device floods the report writer; does the rest of the fleet notice?

    python benchmarks/bench_flood.py [--pings 500] [--flood-s 10] [--spam-rate 2000]

Runs the real thing in callout mode: nats-server with the auth callout, ``fleet-callout``
(callout, report writer, watch grants), the local OIDC issuer, and a real agent for device B
(a subprocess, runtime off). Device A connects with its own valid token, as an attacker would,
and floods: state reports for deployments that do not exist (requests, 20 in flight, as fast
as answers come back), a burst of 20,000 malformed fire-and-forget reports, then more at
``--spam-rate`` per second (0: as fast as it can — more than one Python writer process can
read, so NATS drops messages at the writer, other devices' reports included, until the flood
stops; run more writers in the queue group). The attacker runs in a process of its own (a
device is another machine). Meanwhile the admin pings B and B's reports (its heartbeats) are
counted. Printed side by side, idle and under the flood: B's ping p50/p99, B's report
outcomes, what A achieved (accepted, refused by reason), the writer's log growth. Figures, no
thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nats.errors

from harmony_fleet.bus import FleetCommandsClient
from harmony_fleet.contracts import (
    DeploymentState,
    Phase,
    ReportAck,
    report_heartbeat_subject,
    report_state_subject,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.localstack.stack import LocalStack


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def ping_series(client: FleetCommandsClient, device: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await client.ping(device)
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.005)
    return latencies


async def flood(url: str, token_settings: dict[str, str], attacker: str, flood_s: float,
                spam_rate: float) -> dict[str, object]:
    """The attacker (run in a process of its own: a device is another machine)."""
    from harmony_fleet.bus import NatsSettings, connect
    from harmony_fleet.bus.settings import ZitadelAuth

    nc = await connect(NatsSettings(urls=[url], auth=ZitadelAuth(**token_settings)),
                       name="attacker", inbox_prefix=f"_INBOX.{attacker}")
    stop = asyncio.Event()
    outcomes: Counter[str] = Counter()
    sent = 0

    async def requester(worker: int) -> None:
        nonlocal sent
        i = 0
        while not stop.is_set():
            now = utcnow()
            dep = f"ghost-{worker}-{i}"
            body = DeploymentState(device_id=attacker, deployment=dep, phase=Phase.RUNNING,
                                   since=now, updated_at=now).to_json_bytes()
            try:
                msg = await nc.request(report_state_subject(attacker, dep), body, timeout=5)
                ack = ReportAck.model_validate_json(msg.data)
                error = ack.error or ""
                outcomes["accepted" if ack.ok else "rate-limited" if "rate limit" in error
                         else "not-desired" if "not desired" in error else error] += 1
            except nats.errors.TimeoutError:
                outcomes["timeout"] += 1
            sent += 1
            i += 1

    async def spammer() -> None:
        nonlocal sent
        junk = b'{"device_id": 1}'
        for _ in range(20_000):
            await nc.publish(report_heartbeat_subject(attacker), junk)
        sent += 20_000
        await nc.flush()
        while not stop.is_set():
            for _ in range(100):
                await nc.publish(report_heartbeat_subject(attacker), junk)
            sent += 100
            await nc.flush()
            await asyncio.sleep(100 / spam_rate if spam_rate else 0)

    tasks = [asyncio.create_task(requester(w)) for w in range(20)]
    tasks.append(asyncio.create_task(spammer()))
    started = time.monotonic()
    await asyncio.sleep(flood_s)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await nc.close()
    return {"sent": sent, "seconds": time.monotonic() - started, "outcomes": dict(outcomes)}


def run_attacker(spec: str) -> None:
    args = json.loads(spec)
    print(json.dumps(asyncio.run(flood(**args))), flush=True)


async def main(pings: int, flood_s: float, spam_rate: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    stack = await LocalStack.up(devices=["bench-b"], auth="callout", workdir=tmp / "stack")
    try:
        log_file = next(p.log_file for p in stack.services.processes
                        if p.name == "fleet-callout")
        admin = await stack.admin_connect("bench-admin")
        client = FleetCommandsClient(admin, timeout=5)
        idle = await ping_series(client, "bench-b", pings)
        lines_before = log_file.read_text().count("\n")
        issuer = stack.services.issuer
        assert issuer is not None
        key = tmp / "attacker.json"
        stack.services.enroll_device("bench-a", key)
        spec = json.dumps({"url": stack.nats_url, "attacker": "bench-a", "flood_s": flood_s,
                           "spam_rate": spam_rate, "token_settings": {
                               "issuer": issuer.url, "key_file": str(key),
                               "project_id": issuer.project_id}})
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--attacker", spec, stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(1.5)  # connected, the flood is running at full speed
        under = await ping_series(client, "bench-b", pings)
        out, _ = await attacker.communicate()
        report = json.loads(out)
        sent, elapsed, outcomes = report["sent"], report["seconds"], Counter(report["outcomes"])
        agent_log = stack.devices["bench-b"].log_file
        assert agent_log is not None
        b_failures = agent_log.read_text().count("report failed") + \
            agent_log.read_text().count("refused")
        log_growth = log_file.read_text().count("\n") - lines_before
        await admin.drain()
    finally:
        await stack.down()
    print(f"B ping, idle:        p50 {statistics.median(idle):.2f} ms  p99 {pct(idle, .99):.2f} ms"
          f"  (n={len(idle)})")
    print(f"B ping, under flood: p50 {statistics.median(under):.2f} ms  "
          f"p99 {pct(under, .99):.2f} ms  (n={len(under)})")
    print(f"A sent {sent} messages in {elapsed:.1f}s ({sent / elapsed:.0f}/s): "
          + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    print(f"B's agent: {b_failures} failed or refused reports during the flood")
    print(f"fleet-callout log: +{log_growth} lines during the flood")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--flood-s", type=float, default=10.0)
    parser.add_argument("--spam-rate", type=float, default=2000.0,
                        help="fire-and-forget reports per second after the burst (0: unbounded)")
    parser.add_argument("--attacker", help=argparse.SUPPRESS)  # internal: the attacking device
    args = parser.parse_args()
    if args.attacker:
        run_attacker(args.attacker)
    else:
        asyncio.run(main(args.pings, args.flood_s, args.spam_rate))
