"""Benchmark: the memory of a running ``fleet-agent``, installed the way a device installs it.

    python benchmarks/bench_agent_memory.py [--settle 30] [--no-runtime] [--env NAME=VALUE]

What it does, as the ``harmony.fleet.fleet_device`` role does on a device:

1. builds the agent's wheelhouse for this machine's architecture
   (:mod:`harmony_fleet.control.wheelhouse`: the base dependencies only, no extra);
2. makes a venv with ``--python`` (default ``/usr/bin/python3``: Debian's own, as on the
   device) and installs ``harmony-fleet`` from the wheelhouse with ``pip --no-index``;
3. starts a local stack (TLS, the OIDC issuer and the auth callout: a machine key per device,
   as enrolled devices have) and runs the venv's ``fleet-agent`` against it, with the
   ``Environment=`` of the systemd unit that agent prints, the device's default intervals
   (heartbeat and reconcile every 10 s) and podman when it is installed;
4. deploys one workload with a sealed secret (``fleet_deployment``'s operation: the agent
   opens the envelope), waits until it runs, lets the agent settle (``--settle`` seconds:
   heartbeats, reconcile passes, a token refresh when ``--token-lifetime`` is short) and reads
   ``VmRSS`` (``/proc/PID/status``), ``Pss`` and private memory (``smaps_rollup``) and the
   largest mappings (``smaps``);
5. in the same venv: the RSS each import adds on top of bare Python, cumulatively, in the
   order the agent needs them, and ``python -X importtime`` of the agent's entry point
   grouped by top-level package.

Figures only, no threshold (the goal, issue 12: RSS at most 40 MiB). ``--json`` adds one line
with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from harmony_fleet.control import wheelhouse
from harmony_fleet.control.operations import execute
from harmony_fleet.localstack.stack import LocalStack

REPO = Path(__file__).resolve().parent.parent
#: what the agent imports, in the order it needs them (each step on top of the previous
#: ones); a step whose module is not installed is skipped
IMPORT_STEPS: list[tuple[str, list[str]]] = [
    ("asyncio", ["asyncio"]),
    ("ssl", ["ssl"]),
    ("pydantic (models, validators)", ["pydantic", "pydantic.main", "pydantic.fields",
                                       "pydantic.functional_validators", "pydantic.types"]),
    ("pydantic-settings", ["pydantic_settings"]),
    ("nats-py", ["nats", "nats.aio.client", "nats.js"]),
    ("PyJWT", ["jwt"]),
    ("cryptography (x25519, aead, hkdf)",
     ["cryptography.hazmat.primitives.asymmetric.x25519",
      "cryptography.hazmat.primitives.ciphers.aead",
      "cryptography.hazmat.primitives.kdf.hkdf"]),
    ("harmony_fleet.agent.main", ["harmony_fleet.agent.main"]),
    ("what the agent loads once running", ["harmony_fleet.agent.app", "harmony_fleet.bus.tokens",
                                           "http.client", "urllib.request"]),
    ("prometheus-client (with [metrics] listen)", ["prometheus_client"]),
]

_IMPORT_PROBE = r"""
import importlib, importlib.util, json, sys
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
steps = json.loads(sys.argv[1])
out = [["bare python", rss(), len(sys.modules)]]
for label, modules in steps:
    try:
        present = [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is not None]
    except (ImportError, ValueError):
        present = []
    if not present:
        continue
    for name in present:
        importlib.import_module(name)
    out.append([label, rss(), len(sys.modules)])
print(json.dumps(out))
"""


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def install_agent(python: str, cache: Path) -> tuple[Path, wheelhouse.Wheelhouse]:
    """The wheelhouse for this machine, installed into a venv of ``python`` (cached by the
    wheelhouse's digest and the interpreter)."""
    house = wheelhouse.build(str(REPO), platform.machine(), cache / "wheelhouse")
    interpreter = run([python, "-c", "import sys; print(sys.version.split()[0])"]).stdout.strip()
    venv = cache / f"venv-{house.path.name}-py{interpreter}"
    if not (venv / "bin" / "fleet-agent").exists():
        shutil.rmtree(venv, ignore_errors=True)
        system = ["--system-site-packages"] if house.system_packages else []
        run([python, "-m", "venv", "--without-pip", *system, str(venv)])
        pip = house.path / house.manifest()["pip_wheel"] / "pip"  # type: ignore[operator]
        run([str(venv / "bin" / "python"), str(pip), "install", "--quiet", "--no-index",
             "--no-cache-dir", "--disable-pip-version-check", "--find-links", str(house.path),
             f"{wheelhouse.DISTRIBUTION}=={house.version}"])
    return venv, house


def unit_environment(agent: Path) -> dict[str, str]:
    """The ``Environment=`` assignments of the systemd unit the installed agent prints."""
    unit = run([str(agent), "--print-systemd-unit"]).stdout
    env: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            for assignment in line.removeprefix("Environment=").split():
                name, _, value = assignment.strip('"').partition("=")
                env[name] = value
    return env


def kib_fields(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    values: dict[str, int] = defaultdict(int)
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in names:
            values[key] += int(rest.split()[0])
    return dict(values)


def memory_of(pid: int) -> dict[str, int]:
    status = kib_fields(Path(f"/proc/{pid}/status"),
                        ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"))
    rollup = kib_fields(Path(f"/proc/{pid}/smaps_rollup"),
                        ("Pss", "Private_Clean", "Private_Dirty"))
    return {"rss_kib": status["VmRSS"], "rss_anon_kib": status["RssAnon"],
            "rss_file_kib": status["RssFile"], "hwm_kib": status["VmHWM"],
            "threads": status["Threads"], "pss_kib": rollup["Pss"],
            "private_kib": rollup["Private_Clean"] + rollup["Private_Dirty"]}


def mappings_of(pid: int, top: int = 12) -> list[tuple[str, int]]:
    """RSS (KiB) per mapped file (anonymous mappings as [anon], the heap as [heap])."""
    sizes: dict[str, int] = defaultdict(int)
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            name = fields[5] if len(fields) > 5 else "[anon]"
            if "site-packages/" in name:
                name = "site-packages/" + name.split("site-packages/", 1)[1]
        elif fields and fields[0] == "Rss:":
            sizes[name] += int(fields[1])
    return sorted(sizes.items(), key=lambda item: -item[1])[:top]


def import_costs(python: Path, env: dict[str, str]) -> list[tuple[str, float, float, int]]:
    """(step, cumulative RSS MiB, MiB added, modules loaded) for each import step."""
    proc = run([str(python), "-c", _IMPORT_PROBE, json.dumps(IMPORT_STEPS)],
               env={**os.environ, **env})
    rows = json.loads(proc.stdout)
    out = []
    previous = rows[0][1]
    for label, rss, modules in rows:
        out.append((label, rss / 1024, (rss - previous) / 1024, modules))
        previous = rss
    return out


def import_times(python: Path, env: dict[str, str], top: int = 15) -> list[tuple[str, int, float]]:
    """``-X importtime`` of the agent's entry point: (top-level package, modules, self ms)."""
    proc = run([str(python), "-X", "importtime", "-c", "import harmony_fleet.agent.main"],
               env={**os.environ, **env})
    per_package: dict[str, list[float]] = defaultdict(list)
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (part.strip() for part in
                                      line.removeprefix("import time:").split("|"))
        per_package[name.split(".")[0]].append(int(self_us) / 1000)
    rows = [(name, len(times), sum(times)) for name, times in per_package.items()]
    return sorted(rows, key=lambda row: -row[2])[:top]


async def measure_running_agent(venv: Path, args: argparse.Namespace,
                                env: dict[str, str]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-agent-memory-"))
    stack = await LocalStack.up(devices=0, auth="callout", tls=True, workdir=workdir,
                                token_lifetime_s=args.token_lifetime)
    device = args.device_id
    try:
        started = time.monotonic()
        handle = await stack.add_device(
            device, runtime_enabled=args.runtime, mode="subprocess",
            agent_command=[str(venv / "bin" / "fleet-agent")], env=env,
            # the device's defaults (the stack's own agents run a quicker loop)
            agent={"heartbeat_interval_s": 10},
            runtime={"reconcile_interval_s": 10, "watch_heartbeat_s": 5, "stop_timeout_s": 10})
        connected_s = time.monotonic() - started
        assert handle.pid is not None
        nc = await stack.admin_connect("bench-agent-memory")
        workload = "none"
        if args.runtime:
            from harmony_fleet.localstack.images import build_busybox_image

            image = await asyncio.to_thread(build_busybox_image)
            deploy = {
                "name": "web", "namespace": "bench", "devices": [device],
                "score": {"services": [{
                    "name": "web", "image": image, "command": ["sh", "-c"],
                    "args": ["trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"],
                    "secrets": ["token"]}]},
                "secrets": {"token": "s3cret-" + os.urandom(8).hex()}}
            deadline = time.monotonic() + 60
            while True:  # the sealing key is in device-info once the agent has reported
                answer = await execute(nc, "deploy", deploy)
                if answer["ok"] or answer["error"]["type"] != "MissingSealingKeys" \
                        or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            if not answer["ok"]:
                raise SystemExit(f"deploy failed: {answer['error']}")
            hashes = answer["result"]["spec_hashes"]
            deadline = time.monotonic() + 120
            while True:
                status = await execute(nc, "rollout_status", {
                    "deployment": "bench_web", "devices": [device], "spec_hashes": hashes})
                if status["ok"] and status["result"]["done"]:
                    if not status["result"]["ok"]:
                        raise SystemExit(f"the workload failed: {status['result']}")
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the workload did not run within 120 s: {status}")
                await asyncio.sleep(0.5)
            workload = "bench_web (1 service, 1 sealed secret): running"
        samples = []
        deadline = time.monotonic() + args.settle
        while True:
            samples.append(memory_of(handle.pid))
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        answer = await execute(nc, "ping", {"device_id": device, "timeout": 5})
        pong = (f"pong in {answer['result']['latency_ms']:.1f} ms" if answer["ok"]
                else f"FAILED: {answer['error']}")
        top = mappings_of(handle.pid)
        await nc.drain()
        return {"connected_s": connected_s, "workload": workload, "samples": samples,
                "final": samples[-1], "mappings": top, "ping": pong}
    finally:
        await stack.down()


def mib(kib: int) -> str:
    return f"{kib / 1024:6.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="/usr/bin/python3",
                        help="the interpreter of the agent's venv (default: Debian's)")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds to let the agent run after its workload is up")
    parser.add_argument("--runtime", action=argparse.BooleanOptionalAction,
                        default=shutil.which("podman") is not None,
                        help="drive podman and run one workload (default: if podman exists)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment for the agent (e.g. MALLOC_ARENA_MAX=1)")
    parser.add_argument("--no-unit-env", action="store_true",
                        help="ignore the Environment= of the unit the agent prints")
    parser.add_argument("--token-lifetime", type=int, default=3600,
                        help="access token lifetime at the issuer (short: refreshes happen)")
    parser.add_argument("--device-id", default=f"bench-mem-{os.getpid()}")
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "harmony-fleet" / "bench-agent-memory")
    parser.add_argument("--skip-imports", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    args = parser.parse_args()

    venv, house = install_agent(args.python, args.cache)
    agent = venv / "bin" / "fleet-agent"
    env = {} if args.no_unit_env else unit_environment(agent)
    env.update(dict(item.split("=", 1) for item in args.env))
    python_version = run([str(venv / "bin" / "python"), "-VV"]).stdout.strip()
    print(f"agent venv: {venv}  ({python_version})")
    print(f"wheelhouse: {', '.join(w for w in house.wheels if not w.startswith('pip-'))}"
          + (f" + Debian {', '.join(house.system_packages)}" if house.system_packages else ""))
    print(f"agent environment: {' '.join(f'{k}={v}' for k, v in sorted(env.items())) or '-'}")

    result = asyncio.run(measure_running_agent(venv, args, env))
    final = result["final"]
    print(f"\nrunning agent (connected in {result['connected_s']:.1f} s, runtime "
          f"{'on' if args.runtime else 'off'}; workload: {result['workload']}; "
          f"settled {args.settle:.0f} s; {result['ping']})")
    print(f"  RSS      {mib(final['rss_kib'])}   (anon {mib(final['rss_anon_kib'])}, "
          f"file {mib(final['rss_file_kib'])}; peak {mib(final['hwm_kib'])}; "
          f"{final['threads']} threads)")
    print(f"  PSS      {mib(final['pss_kib'])}")
    print(f"  private  {mib(final['private_kib'])}")
    print("  RSS while settling: " + " ".join(f"{s['rss_kib'] / 1024:.1f}"
                                             for s in result["samples"]))
    print("  largest mappings (RSS):")
    for name, kib in result["mappings"]:
        print(f"    {mib(kib)}  {name}")

    imports: list[tuple[str, float, float, int]] = []
    times: list[tuple[str, int, float]] = []
    if not args.skip_imports:
        python = venv / "bin" / "python"
        imports = import_costs(python, env)
        print("\nimports, cumulative, in the agent's venv (RSS after each step):")
        for label, total, added, modules in imports:
            print(f"  {label:<38} {total:6.1f} MiB  +{added:5.1f} MiB  ({modules} modules)")
        times = import_times(python, env)
        print("\npython -X importtime -c 'import harmony_fleet.agent.main', by package:")
        for name, count, ms in times:
            print(f"  {name:<24} {count:4d} modules  {ms:7.1f} ms")
    if args.json:
        print(json.dumps({"python": python_version, "wheels": house.wheels, "env": env,
                          "runtime": args.runtime, **result,
                          "imports": imports, "import_times": times}))


if __name__ == "__main__":
    sys.exit(main())
