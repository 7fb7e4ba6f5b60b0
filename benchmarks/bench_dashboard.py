"""Benchmark: dashboard pages at fleet scale, rendered on the server.

    python benchmarks/bench_dashboard.py [--devices 10000] [--rounds 30]

A seeded, simulated fleet of N devices (the --mock generator: labels, heartbeats, 1-3
deployments each, some offline and failed) held in memory as the bucket watches hold it, served
by the real dashboard application on loopback (aiohttp, Jinja2, the security middleware).
First the device list's server-side work alone (view model and template render, no HTTP):
cold (the sorted ids and the label pairs recomputed, as on the first request) and as served
(those two cached, as the app does for a few seconds); then complete HTTP requests for each
page (request to last byte). Prints p50/p95/max in milliseconds and each page's size. The goal
for the device list at 10,000 devices is under 200 ms server-side.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import timedelta

from aiohttp.test_utils import TestClient, TestServer

from harmony_fleet.contracts.base import utcnow
from harmony_fleet.dashboard import views
from harmony_fleet.dashboard.app import Dashboard
from harmony_fleet.dashboard.config import DashboardSection
from harmony_fleet.dashboard.mock import MockCommands, MockSource, seeded_snapshot
from harmony_fleet.dashboard.source import FleetSnapshot

PAGES = {
    "devices (first page)": "/devices",
    "devices online=offline": "/devices?online=offline",
    "devices label=site=lab": "/devices?label=site%3Dlab",
    "devices q=lab-cam page 3": "/devices?q=lab-cam&page=3",
    "devices last page": "/devices?page=200",
    "overview": "/",
    "deployments": "/deployments",
    "deployment shop_web devices": "/deployments/shop_web",
}


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"p50 {statistics.median(ms):7.1f}  p95 {p95:7.1f}  max {ms[-1]:7.1f} ms"


class StaticSource:
    """The fleet as :class:`BucketSource` holds it: live maps, nothing copied per request.
    Heartbeats are stamped two minutes ahead so no device changes state during the run."""

    label = "benchmark"

    def __init__(self, devices: int) -> None:
        self.fleet = seeded_snapshot(devices, seed=1, now=utcnow() + timedelta(minutes=2))

    def snapshot(self) -> FleetSnapshot:
        return self.fleet


def server_side(dashboard: Dashboard, rounds: int, *, cached: bool) -> list[float]:
    """The device list's own work: filter, sort, page, render (what a request spends in us)."""
    samples = []
    offline_after = timedelta(seconds=30)
    template = dashboard.env.get_template("devices.html")
    snapshot = dashboard.source.snapshot()
    order, labels = sorted(snapshot.infos), views.label_choices(snapshot.infos.values())
    for _n in range(rounds):
        started = time.perf_counter()
        snapshot = dashboard.source.snapshot()
        query = views.DeviceQuery.parse({"online": "any"}, dashboard.settings.page_size)
        model = views.device_list(snapshot, query, now=utcnow(), offline_after=offline_after,
                                  order=order if cached else None,
                                  labels=labels if cached else None)
        template.render(mock=False, auth_off=True, session=None, csrf="", source="bench",
                        nav="devices", model=model)
        samples.append(time.perf_counter() - started)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[10_000])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    for size in args.devices:
        started = time.perf_counter()
        source = StaticSource(size)
        placements = sum(len(d) for d in source.fleet.desired.values())
        print(f"\n{size} simulated devices ({placements} deployment placements), generated in "
              f"{time.perf_counter() - started:.1f}s; page size 50")
        dashboard = Dashboard(DashboardSection(listen="127.0.0.1:0", auth="off"), source,
                              MockCommands(MockSource(1)))
        for cached in (False, True):
            what = "as served (ids, labels cached)" if cached else "cold"
            print(f"  server-side device list, {what:<31} "
                  f"{percentiles(server_side(dashboard, args.rounds, cached=cached))}")
        client = TestClient(TestServer(dashboard.app(), host="127.0.0.1"))
        await client.start_server()
        try:
            for name, path in PAGES.items():
                samples, size_bytes = [], 0
                for _n in range(args.rounds):
                    t0 = time.perf_counter()
                    response = await client.get(path)
                    body = await response.read()
                    samples.append(time.perf_counter() - t0)
                    assert response.status == 200, (path, response.status)
                    size_bytes = len(body)
                print(f"  HTTP {name:<30} {percentiles(samples)}  {size_bytes / 1024:6.1f} KiB")
        finally:
            await client.close()


if __name__ == "__main__":
    asyncio.run(main())
