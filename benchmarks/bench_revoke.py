"""Benchmark: how long after a revocation a device's live connection is closed, and what the
revocation check costs a device authentication.

    python benchmarks/bench_revoke.py [--devices 20]

Runs the real thing over TLS: nats-server with auth_callout, ``fleet-callout``, the local OIDC
issuer, one raw NATS connection per device with its own machine key. Each device is revoked
in turn (``revoke_device`` without the second sweep); the closure time is taken from the
server's own ``$SYS.ACCOUNT.FLEET.DISCONNECT`` event. Then the connect time of allowed
devices (the callout looks each one up in ``device-revocations``) and of refused ones.
Figures, no thresholds (the goal is a closure within 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from harmony_fleet.bus import ConnectError, NatsSettings, connect, drain
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import ZitadelTokenProvider
from harmony_fleet.control.revocation import revoke_device
from harmony_fleet.localstack.services import FleetServices, start_services
from harmony_fleet.localstack.stack import LocalStack


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def settings(services: FleetServices, key_file: Path) -> NatsSettings:
    assert services.issuer is not None
    return NatsSettings(urls=[services.nats_url], connect_attempts=1, connect_timeout_s=5,
                        tls_ca_file=services.tls_ca_file,
                        auth=ZitadelAuth(issuer=services.issuer.url, key_file=key_file,
                                         project_id=services.issuer.project_id))


async def connect_device(services: FleetServices, key_file: Path) -> NatsClient:
    device_settings = settings(services, key_file)
    assert isinstance(device_settings.auth, ZitadelAuth)
    return await connect(device_settings, name="bench",
                         credentials=ZitadelTokenProvider(device_settings.auth))


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{name:<44} n={len(ms):<4} p50 {statistics.median(ms):8.1f} ms   "
            f"p90 {pct(ms, 0.9):8.1f} ms   max {max(ms):8.1f} ms")


async def main(count: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-revoke-"))
    services = await asyncio.to_thread(start_services, workdir, auth="callout", tls=True,
                                       token_lifetime_s=600)
    stack = LocalStack(workdir, services, owns_server=False)
    try:
        await stack.ensure_buckets()
        keys = {}
        for i in range(count):
            device = f"bench-revoke-{i}"
            keys[device] = workdir / f"{device}.json"
            await asyncio.to_thread(services.enroll_device, device, keys[device])
        connect_allowed: list[float] = []
        devices: dict[str, NatsClient] = {}
        for device, key in keys.items():
            started = time.perf_counter()
            devices[device] = await connect_device(services, key)
            connect_allowed.append(time.perf_counter() - started)

        admin = await stack.admin_connect("bench-admin")
        system = await connect(stack.system_settings(), name="bench-system")
        events: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()

        async def on_event(msg: Any) -> None:
            events.put_nowait((time.perf_counter(), json.loads(msg.data)))

        await system.subscribe("$SYS.ACCOUNT.FLEET.DISCONNECT", cb=on_event)
        closed: list[float] = []
        calls: list[float] = []
        for device in devices:
            started = time.perf_counter()
            result = await revoke_device(admin, system, device, settle_s=0)
            calls.append(time.perf_counter() - started)
            assert result.kicked == 1, result
            while True:
                at, event = await asyncio.wait_for(events.get(), 10)
                if (event.get("client") or {}).get("user") == device:
                    closed.append(at - started)
                    break
        refused: list[float] = []
        for key in list(keys.values())[: min(count, 10)]:
            started = time.perf_counter()
            try:
                nc = await connect_device(services, key)
            except ConnectError:
                refused.append(time.perf_counter() - started)
            else:
                await nc.close()
                raise AssertionError("a revoked device got in")
        version = admin.connected_server_version
        print(f"{count} devices over TLS, one fleet-callout, nats-server "
              f"{version.major}.{version.minor}.{version.patch}")
        print(summary("connect, allowed (token + callout + lookup)", connect_allowed))
        print(summary("revoke -> live connection closed", closed))
        print(summary("revoke_device() call (1 s CONNZ sweep)", calls))
        print(summary("connect of a revoked device -> refused", refused))
        for nc in devices.values():
            await nc.close()
        await drain(system)
        await drain(admin)
    finally:
        await asyncio.to_thread(services.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    asyncio.run(main(parser.parse_args().devices))
