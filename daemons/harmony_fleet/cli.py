"""``fleet``: the developer / ops command line.

    fleet stack up [--devices N] [--keep] [--json]   bring up the local stack
    fleet stack down | status                         stop / inspect a --keep stack
    fleet ping DEVICE... [--count N]                  ping devices, print replies and latency
    fleet crds [--write DIR | --check DIR]            render the CRD manifests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from harmony_fleet.bus import CommandError, ConnectError, FleetCommandsClient, connect, drain
from harmony_fleet.bus.profile import ConnectionConfigError, default_state_file, resolve_settings
from harmony_fleet.daemon import setup_logging

log = logging.getLogger("harmony_fleet.cli")
DEFAULT_CRD_DIR = Path("manifests/crds")


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {value!r}")
    return key, val


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("NATS connection (else env FLEET_NATS_*, else the local stack)")
    group.add_argument("--url", help="NATS URL(s), comma-separated")
    group.add_argument("--user")
    group.add_argument("--password", help="prefer FLEET_NATS_PASSWORD: argv is world-readable")
    group.add_argument("--connection-file", type=Path, help="JSON/YAML connection file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description="Harmony Fleet developer/ops CLI")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the local stack (nats-server + agents on this machine)")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    up = stack_sub.add_parser("up", help="start the local stack")
    up.add_argument("--devices", type=int, default=2, help="number of agents (default 2)")
    up.add_argument("--device-prefix", default="local", help="device ids are PREFIX-0..N-1")
    up.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                    help="routing label for every agent (repeatable)")
    up.add_argument("--runtime", action=argparse.BooleanOptionalAction, default=None,
                    help="let agents drive local podman (default: on if podman is installed)")
    up.add_argument("--keep", action="store_true",
                    help="leave the stack running and return (stop it with 'fleet stack down')")
    up.add_argument("--json", action="store_true", help="print the connection info as JSON")
    up.add_argument("--state-file", type=Path, default=None,
                    help=f"where to write the connection info (default {default_state_file()})")
    up.add_argument("--workdir", type=Path, default=None, help="keep files here (default: temp)")
    up.add_argument("--auth", choices=["callout", "dev"], default="callout",
                    help="callout (default): OIDC issuer + auth callout, a machine key per "
                         "device; dev: one shared device password (INSECURE)")
    up.add_argument("--token-lifetime", type=int, default=3600, metavar="SECONDS",
                    help="access token lifetime in callout mode (short values force rollovers)")
    for name, help_text in (("down", "stop a stack started with --keep"),
                            ("status", "show the stack and ping its devices")):
        p = stack_sub.add_parser(name, help=help_text)
        p.add_argument("--state-file", type=Path, default=None)

    ping = sub.add_parser("ping", help="ping devices")
    ping.add_argument("devices", nargs="+")
    ping.add_argument("--count", type=int, default=1, help="pings per device")
    ping.add_argument("--timeout", type=float, default=5.0)
    ping.add_argument("--json", action="store_true")
    _add_connection_args(ping)

    logs = sub.add_parser("logs", help="a service's output (the logs command)")
    logs.add_argument("device")
    logs.add_argument("deployment", help="deployment token, e.g. shop_web")
    logs.add_argument("service")
    logs.add_argument("--tail", type=int, default=None)
    logs.add_argument("--since", default=None, help="RFC 3339 time or a duration such as 10m")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--timeout", type=float, default=5.0)
    _add_connection_args(logs)

    exe = sub.add_parser("exec", help="run a command in a service's container (if allowed)")
    exe.add_argument("device")
    exe.add_argument("deployment")
    exe.add_argument("service")
    exe.add_argument("argv", nargs="+", help="the command (put it after --)")
    exe.add_argument("--timeout", type=float, default=30.0, help="seconds the command may run")
    _add_connection_args(exe)

    image = sub.add_parser("demo-image", help="build the local busybox image the demo uses")
    image.add_argument("--force", action="store_true", help="rebuild even if it exists")

    crds = sub.add_parser("crds", help="render the CRD manifests from the contract models")
    mode = crds.add_mutually_exclusive_group()
    mode.add_argument("--write", type=Path, nargs="?", const=DEFAULT_CRD_DIR, metavar="DIR")
    mode.add_argument("--check", type=Path, nargs="?", const=DEFAULT_CRD_DIR, metavar="DIR")
    return parser


# ------------------------------------------------------------------------------ stack


def _print_stack(state: dict[str, Any], state_file: Path, elapsed: float | None, keep: bool) -> None:
    workdir = state["workdir"]
    took = f" in {elapsed:.2f}s" if elapsed is not None else ""
    mode = ("auth callout + OIDC issuer, a machine key per device"
            if state["auth_mode"] == "callout" else "dev shared user/password - INSECURE")
    print(f"Harmony Fleet local stack is up{took}  (auth: {mode})")
    print(f"  NATS          {state['nats_url']}")
    if state.get("monitor_url"):
        print(f"  monitoring    {state['monitor_url']}/varz  /jsz  /connz")
    if "issuer" in state:
        issuer = state["issuer"]
        print(f"  OIDC issuer   {issuer['url']}  (project {issuer['project_id']})")
        print(f"  credentials   admin machine key {issuer['admin_key_file']}")
    else:
        print(f"  credentials   admin user '{state['connection']['auth']['user']}', "
              f"password in {state_file} (connection.auth)")
    print(f"  state file    {state_file}")
    print("  devices:")
    for dev in state["devices"]:
        key = f"  key {dev['key_file']}" if dev.get("key_file") else ""
        print(f"    {dev['device_id']:<20} pid {dev['pid']}  config {dev['config_file']}{key}")
    print("  logs          tail -f " + " ".join(
        [d["log_file"] for d in state["devices"] if d["log_file"]]
        + [p["log_file"] for p in state.get("processes", [])]
        + [state["nats_server"]["log_file"]]))
    first = state["devices"][0]["device_id"] if state["devices"] else "<device>"
    print(f"  ping          fleet ping {first}")
    print("                ansible -i inventories/local all -m harmony.fleet.fleet_ping")
    print(f"  workdir       {workdir}")
    if keep:
        print("  stop          fleet stack down")
    else:
        print("  stop          Ctrl-C")
    sys.stdout.flush()


async def _stack_up(args: argparse.Namespace) -> int:
    from harmony_fleet.testing.stack import LocalStack

    state_file: Path = args.state_file or default_state_file()
    if state_file.exists():  # noqa: ASYNC240 - one stat before start-up
        print(f"fleet: a stack is already recorded in {state_file}; run 'fleet stack down' "
              "first (or pass --state-file)", file=sys.stderr)
        return 1
    runtime = args.runtime if args.runtime is not None else bool(shutil.which("podman"))
    started = time.monotonic()
    stack = await LocalStack.up(
        devices=args.devices,
        device_prefix=args.device_prefix,
        labels=dict(args.label),
        runtime_enabled=runtime,
        agent_mode="subprocess",
        workdir=args.workdir,
        state_file=state_file,
        detach=args.keep,
        auth=args.auth,
        token_lifetime_s=args.token_lifetime,
    )
    elapsed = time.monotonic() - started
    state = stack.state()
    if args.json:
        print(json.dumps(state | {"startup_s": round(elapsed, 3)}, indent=2), flush=True)
    else:
        _print_stack(state, state_file, elapsed, args.keep)
    if args.keep:
        return 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("\ntearing the stack down ...", file=sys.stderr)
    await stack.down()
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from harmony_fleet.testing.stack import StackError, down_from_state

    state_file = args.state_file or default_state_file()
    try:
        stopped = down_from_state(state_file)
    except StackError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 1
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


async def _stack_status(args: argparse.Namespace) -> int:
    from harmony_fleet.testing.stack import StackError, read_state

    state_file = args.state_file or default_state_file()
    try:
        state = read_state(state_file)
    except StackError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 1
    _print_stack(state, state_file, None, keep=True)
    ping_args = argparse.Namespace(
        devices=[d["device_id"] for d in state["devices"]], count=1, timeout=2.0, json=False,
        url=None, user=None, password=None, connection_file=state_file,
    )
    return await _ping(ping_args) if ping_args.devices else 0


# ------------------------------------------------------------------------------ ping


async def _ping_device(client: FleetCommandsClient, device: str, count: int) -> dict[str, Any]:
    """Ping one device ``count`` times; a row with the last reply and latency percentiles."""
    latencies: list[float] = []
    row: dict[str, Any] = {"device_id": device, "ok": True}
    for _ in range(count):
        started = time.perf_counter()
        try:
            reply = await client.ping(device)
        except CommandError as exc:
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            break
        latencies.append(time.perf_counter() - started)
        row["reply"] = reply.model_dump(mode="json")
    if latencies:
        ms = sorted(x * 1000 for x in latencies)
        row["latency_ms"] = {
            "count": len(ms), "p50": round(statistics.median(ms), 3),
            "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
            "max": round(ms[-1], 3),
        }
    return row


async def _cli_connect(args: argparse.Namespace) -> NatsClient:
    settings = resolve_settings(
        url=args.url, user=args.user, password=args.password,
        connection_file=args.connection_file,
    )
    return await connect(settings, name="fleet-cli")


async def _ping(args: argparse.Namespace) -> int:
    nc = await _cli_connect(args)
    try:
        client = FleetCommandsClient(nc, timeout=args.timeout)
        results = [await _ping_device(client, device, args.count) for device in args.devices]
    finally:
        await drain(nc)
    failures = sum(1 for row in results if not row["ok"])
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for row in results:
            if row["ok"]:
                r, lat = row["reply"], row["latency_ms"]
                print(f"{row['device_id']}: pong (agent {r['agent_version']}, up {r['uptime_s']}s) "
                      f"p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms over {lat['count']}")
            else:
                print(f"{row['device_id']}: {row['error']}")
    return 1 if failures else 0


# ------------------------------------------------------------------------------ logs / exec


async def _logs(args: argparse.Namespace) -> int:
    nc = await _cli_connect(args)
    try:
        client = FleetCommandsClient(nc, timeout=args.timeout)
        async for text in client.logs(args.device, args.deployment, args.service,
                                      tail=args.tail, since=args.since, follow=args.follow):
            sys.stdout.write(text)
            sys.stdout.flush()
    finally:
        await drain(nc)
    return 0


async def _exec(args: argparse.Namespace) -> int:
    nc = await _cli_connect(args)
    try:
        client = FleetCommandsClient(nc)
        reply = await client.exec(args.device, args.deployment, args.service, args.argv,
                                  timeout_s=args.timeout)
    finally:
        await drain(nc)
    sys.stdout.write(reply.output)
    if reply.truncated:
        print("fleet: output truncated", file=sys.stderr)
    if reply.timed_out:
        print(f"fleet: timed out after {args.timeout:g}s", file=sys.stderr)
        return 124
    return reply.exit_code


# ------------------------------------------------------------------------------ crds


def _crds(args: argparse.Namespace) -> int:
    from harmony_fleet.contracts.crd import crd_manifests, render_crd_yaml

    rendered = {name: render_crd_yaml(m) for name, m in crd_manifests().items()}
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (args.write / name).write_text(text, encoding="utf-8")
            print(f"wrote {args.write / name}")
        return 0
    if args.check:
        stale = [n for n, t in rendered.items()
                 if not (args.check / n).exists() or (args.check / n).read_text() != t]
        for name in stale:
            print(f"{args.check / name} is stale: run 'fleet crds --write'", file=sys.stderr)
        return 1 if stale else 0
    print("\n".join(rendered.values()), end="")
    return 0


def _demo_image(args: argparse.Namespace) -> int:
    from harmony_fleet.testing.images import build_busybox_image

    print(build_busybox_image(force=args.force))
    return 0


def _stack(args: argparse.Namespace) -> int:
    if args.stack_command == "up":
        return asyncio.run(_stack_up(args))
    if args.stack_command == "down":
        return _stack_down(args)
    return asyncio.run(_stack_status(args))


def _remote(args: argparse.Namespace) -> int:
    """The commands that talk to devices: typed failures become one line and an exit code."""
    commands = {"ping": _ping, "logs": _logs, "exec": _exec}
    try:
        return asyncio.run(commands[args.command](args))
    except ConnectionConfigError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 2
    except (ConnectError, CommandError) as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("debug" if args.verbose else "warning")
    handlers = {"crds": _crds, "demo-image": _demo_image, "stack": _stack,
                "ping": _remote, "logs": _remote, "exec": _remote}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
