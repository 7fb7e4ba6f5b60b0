"""Benchmark: the operator at fleet scale, every feature on.

    python benchmarks/bench_operator.py [--devices 1000 2000 5000 10000] [--no-mirroring]
        [--batch-percent 10] [--json results.jsonl] [--profile DIR]

Three processes per size, so that the operator's is measured alone:

* this one: the operator (``run_operator``, kopf included) and the few calls that drive and
  time the run;
* a child running the Kubernetes API emulator (``harmony_fleet_harness.kube_emulator``); the
  driver creates, patches and reads objects through a pipe to it, the operator over HTTP;
* a child running N SIMULATED devices (``harmony_fleet_harness.simulate``): their info, a
  heartbeat from each every 15 s for the whole run, and the simulated runtime that answers
  desired-state keys;

plus the real nats-server. Device resource mirroring is ON unless ``--no-mirroring``.
Measured:

* fan-out: one ``AllAtOnce`` Deployment selecting all N -> all N desired-state keys written
  (seconds, keys/s);
* aggregate: the last device-state write (the simulated runtime reports Running for every
  device) -> the Deployment's status showing ``succeeded == N``;
* mirroring: operator start -> N Device resources, each with its status;
* batched: a second Deployment, ``Batched`` by ``--batch-percent`` (10), with 1 % of the
  devices failing in its second batch: start -> paused (FailureThresholdExceeded, the devices
  named), then resume (the annotation) -> complete;
* the operator process's CPU seconds in each phase (``cpu_*``), its RSS at the end, and the
  load average.

Prints one line per figure and, with ``--json``, one JSON object per size (for
``benchmarks/plot_scale.py``). ``--profile DIR`` runs py-spy on this process (the operator)
and writes ``DIR/operator-<N>.txt`` (collapsed stacks). Figures, no thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harmony_fleet.contracts import BUCKET_DESIRED_STATE, Phase, PodmanScore
from harmony_fleet.localstack.services import start_services
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet.operator.app import FleetOperator
from harmony_fleet.operator.config import OperatorConfig, OperatorSection
from harmony_fleet.operator.kube import KubeTarget
from harmony_fleet.operator.main import run_operator

SCORE = {"services": [{"name": "web", "image": "localhost/fleet-busybox:latest"}]}
DEPLOYMENTS = "fleet.nationtech.io/v1alpha1/deployments"
DEVICES = "fleet.nationtech.io/v1alpha1/devices"
HEARTBEAT_S = 15.0


def deployment(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "fleet.nationtech.io/v1alpha1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"targetSelector": {"matchLabels": {"fleet": "bench"}}, **spec}}


# ---- the children ---------------------------------------------------------------------------


def _emulator_child(conn: multiprocessing.connection.Connection) -> None:
    asyncio.run(_emulator(conn))


async def _emulator(conn: multiprocessing.connection.Connection) -> None:
    from harmony_fleet_harness.kube_emulator import FleetKubeEmulator, start_kube_emulator

    # the emulator keeps only its latest requests: kmock scans them on every request
    async with start_kube_emulator(FleetKubeEmulator(request_history_limit=8)) as kube:
        emulator = kube.emulator
        conn.send(kube.url)
        while True:
            command, *args = await asyncio.to_thread(conn.recv)
            result: Any = None
            if command == "stop":
                conn.send(None)
                return
            if command == "create":
                emulator.create_object(DEPLOYMENTS, args[0], namespace="bench")
            elif command == "patch":
                emulator.patch_object(DEPLOYMENTS, args[0], args[1], namespace="bench")
            elif command == "status":
                obj = emulator.get_object(DEPLOYMENTS, args[0], namespace="bench") or {}
                result = obj.get("status") or {}
            elif command == "mirrored":  # Device resources that have a status
                result = sum(1 for o in emulator.list_objects(DEVICES) if o.get("status"))
            conn.send(result)


def _fleet_child(conn: multiprocessing.connection.Connection, settings: Any, n: int) -> None:
    asyncio.run(_fleet(conn, settings, n))


async def _fleet(conn: multiprocessing.connection.Connection, settings: Any, n: int) -> None:
    from harmony_fleet.bus import connect, provider_from_settings
    from harmony_fleet_harness.simulate import SimulatedFleet

    nc = await connect(settings, name="bench-fleet",
                       credentials=provider_from_settings(settings.auth))
    devices = {f"sim-{i:05d}": {"fleet": "bench"} for i in range(n)}
    fleet = SimulatedFleet(nc, devices)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def heartbeats() -> None:  # every device, every 15 s, for the whole run
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), HEARTBEAT_S)
            except TimeoutError:
                await fleet.heartbeat()

    while True:
        command, *args = await asyncio.to_thread(conn.recv)
        result: Any = None
        if command == "stop":
            stop.set()
            await asyncio.gather(*tasks)
            await nc.drain()
            conn.send(None)
            return
        if command == "publish":
            started = time.perf_counter()
            await fleet.publish_info()
            await fleet.heartbeat()
            tasks.append(asyncio.create_task(heartbeats()))
            result = time.perf_counter() - started
        elif command == "report_all":  # -> the monotonic time of the last write
            deployment_token, spec_hash = args
            await asyncio.gather(*(fleet.report(d, deployment_token, Phase.RUNNING, spec_hash)
                                   for d in devices))
            result = time.monotonic()
        elif command == "runtime":
            tokens, failing = args
            fleet.failing = set(failing)
            tasks.append(asyncio.create_task(fleet.run_runtime(stop, deployments=set(tokens))))
        conn.send(result)


class Child:
    """A child process driven through a pipe, one command at a time."""

    def __init__(self, target: Any, *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(theirs, *args), daemon=True)
        self.process.start()
        self._lock = threading.Lock()

    async def call(self, *command: Any) -> Any:
        def exchange() -> Any:
            with self._lock:
                self.conn.send(command)
                return self.conn.recv()
        return await asyncio.to_thread(exchange)

    async def recv(self) -> Any:
        return await asyncio.to_thread(self.conn.recv)

    async def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(TimeoutError, EOFError, OSError):
                await asyncio.wait_for(self.call("stop"), 60)
        await asyncio.to_thread(self.process.join, 10)
        if self.process.is_alive():
            self.process.kill()


# ---- the run --------------------------------------------------------------------------------


async def until(check: Any, timeout: float, what: str, every: float = 0.05) -> float:
    started = time.perf_counter()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(every)


class Cpu:
    """The operator process's CPU seconds per phase (user + system, every thread)."""

    def __init__(self, out: dict[str, Any]) -> None:
        self.out = out
        self.mark = time.process_time()

    def phase(self, name: str) -> None:
        now = time.process_time()
        self.out[f"cpu_{name}_s"] = round(now - self.mark, 2)
        self.mark = now


async def one_size(n: int, mirroring: bool, batched: int, profile: Path | None
                   ) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": n, "mirroring": mirroring,
                           "load_1m": round(os.getloadavg()[0], 2)}
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    # buckets sized for n devices reserve n x 512 KiB of device-state alone
    services = await asyncio.to_thread(start_services, workdir, max_file_store="16GB")
    stack = LocalStack(workdir, services, owns_server=False)
    kube = fleet = None
    spy = None
    try:
        await stack.ensure_buckets(capacity=max(n, 1000))  # byte limits for n devices
        nc = await stack.admin_connect("bench")
        kube = Child(_emulator_child)
        url = await kube.recv()
        fleet = Child(_fleet_child, stack.admin_settings(), n)
        took = await fleet.call("publish")
        print(f"[{n}] device-info and heartbeats written in {took:.1f}s (fleet process)",
              flush=True)
        if profile is not None and shutil.which("py-spy"):
            profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                ["py-spy", "record", "--nonblocking", "-r", "50", "-f", "raw",
                 "-p", str(os.getpid()), "-o", str(profile / f"operator-{n}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = asyncio.Event()
        holder: list[FleetOperator] = []
        config = OperatorConfig(nats=stack.admin_settings(),
                                operator=OperatorSection(probe_listen=None))
        cpu = Cpu(out)
        started = time.perf_counter()
        task = asyncio.create_task(run_operator(
            config, stop, target=KubeTarget(url, insecure=True),
            settings=OperatorSection(identity="bench", device_resources=mirroring,
                                     write_concurrency=256), holder=holder))
        await until(lambda: holder and holder[0].elector.is_leader
                    and holder[0]._views_ready(), 120, "operator ready")
        operator = holder[0]
        cpu.phase("start")
        kv = await nc.jetstream().key_value(BUCKET_DESIRED_STATE)
        fanout_start = time.perf_counter()
        await kube.call("create", deployment("fanout", {"score": SCORE}))
        await until(lambda: operator.key_writes >= n, 600, "fan-out")
        out["fanout_s"] = round(time.perf_counter() - fanout_start, 3)
        cpu.phase("fanout")
        status = await kv.status()
        print(f"[{n}] Deployment applied -> {n} keys written in {out['fanout_s']:.2f}s "
              f"({n / out['fanout_s']:.0f} keys/s; bucket holds {status.values} values)",
              flush=True)

        spec_hash = PodmanScore.model_validate(SCORE).spec_hash()
        last_write = await fleet.call("report_all", "bench_fanout", spec_hash)

        async def aggregate(name: str) -> dict[str, Any]:
            return dict((await kube.call("status", name)).get("aggregate") or {})

        async def all_succeeded() -> bool:
            return bool((await aggregate("fanout")).get("succeeded", 0) >= n)

        await until(all_succeeded, 600, "aggregate")
        out["aggregate_s"] = round(time.monotonic() - last_write, 3)
        cpu.phase("aggregate")
        print(f"[{n}] last device-state write -> aggregate succeeded={n}: "
              f"{out['aggregate_s']:.2f}s", flush=True)

        if mirroring:
            async def mirrored() -> bool:
                return bool(await kube.call("mirrored") >= n)

            await until(mirrored, 900, "Device resources", every=2.0)
            out["mirroring_s"] = round(time.perf_counter() - started, 1)
            cpu.phase("mirroring")
            print(f"[{n}] operator start -> {n} Device resources with status: "
                  f"{out['mirroring_s']:.1f}s", flush=True)

        if batched:
            out.update(await batched_rollout(n, kube, fleet, batched, cpu))
        out["operator_rss_mib"] = round(_rss_mib(os.getpid()), 1)
        out["load_1m_end"] = round(os.getloadavg()[0], 2)
        stop.set()
        await task
        await nc.drain()
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            await asyncio.to_thread(spy.wait, 30)
        for child in (fleet, kube):
            if child is not None:
                await child.close()
        services.stop()
    return out


async def batched_rollout(n: int, kube: Child, fleet: Child, percent: int,
                          cpu: Cpu) -> dict[str, Any]:
    ordered = [f"sim-{i:05d}" for i in range(n)]
    size = max(1, -(-n * percent // 100))
    failing = ordered[size: size + max(1, n // 100)]  # in the second batch
    await fleet.call("runtime", ["bench_batched"], failing)
    out: dict[str, Any] = {}
    score = {"services": [{"name": "web", "image": "localhost/fleet-busybox:latest",
                           "env": {"V": "2"}}]}
    started = time.perf_counter()
    await kube.call("create", deployment("batched", {
        "score": score, "rollout": {"strategy": "Batched", "batchPercent": percent,
                                    "maxFailures": len(failing) // 2}}))

    async def rollout() -> dict[str, Any]:
        return dict((await kube.call("status", "batched")).get("rollout") or {})

    async def phase_is(phase: str) -> bool:
        return (await rollout()).get("phase") == phase

    await until(lambda: phase_is("Paused"), 1800, "pause", every=0.2)
    paused = await rollout()
    out["batched_pause_s"] = round(time.perf_counter() - started, 2)
    cpu.phase("batched_to_pause")
    print(f"[{n}] batched rollout ({percent} %, {len(failing)} failing in batch 2): paused in "
          f"batch {paused['currentBatch']} after {out['batched_pause_s']:.1f}s "
          f"({paused['pauseReason']}, {paused['updated']} updated)", flush=True)
    resumed = time.perf_counter()
    await kube.call("patch", "batched", {"metadata": {"annotations": {
        "fleet.nationtech.io/resume-rollout": "1"}}})
    await until(lambda: phase_is("Complete"), 1800, "complete", every=0.2)
    out["batched_resume_to_complete_s"] = round(time.perf_counter() - resumed, 2)
    cpu.phase("batched_resume_to_complete")
    done = await rollout()
    out["batches"] = done["currentBatch"]
    print(f"[{n}] resumed -> complete ({done['updated']} updated, "
          f"{done['currentBatch']} batches): {out['batched_resume_to_complete_s']:.1f}s",
          flush=True)
    return out


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(sizes: list[int], mirroring: bool, batched: int, out: Path | None,
               profile: Path | None) -> None:
    for n in sizes:
        print(f"[{n}] load average at start: {os.getloadavg()[0]:.2f}", flush=True)
        result = await one_size(n, mirroring, batched, profile)
        print(json.dumps(result), flush=True)
        if out is not None:
            with out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--no-mirroring", action="store_true",
                        help="Device resource mirroring off (the Deployment path alone)")
    parser.add_argument("--batch-percent", type=int, default=10,
                        help="batch size of the batched rollout (0: skip it)")
    parser.add_argument("--json", type=Path, default=None, help="append results (JSON lines)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy the operator's process into this directory")
    ns = parser.parse_args()
    asyncio.run(main(ns.devices, not ns.no_mirroring, ns.batch_percent, ns.json, ns.profile))
