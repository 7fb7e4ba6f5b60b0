"""``fleet``: the developer / ops command line.

    fleet stack up [--devices N] [--keep] [--json] [--tls [--tls-san NAME]...]
                                                      bring up the local stack
    fleet stack down | status                         stop / inspect a --keep stack
    fleet ping DEVICE... [--count N]                  ping devices, print replies and latency
    fleet logs | exec DEVICE DEPLOYMENT SERVICE       a service's output / run a command in it
    fleet desired [DEVICE] [--deployment TOKEN]       what devices are told (secrets redacted)
    fleet device revoke | restore DEVICE              refuse a device and close its connections
    fleet crds [--write DIR | --check DIR]            render the CRD manifests
    fleet dashboard [--mock] [--listen HOST:PORT]     the web dashboard (local stack by default)
    fleet demo-image                                  build the local busybox image

Every failure is one line on stderr, ``fleet: <what went wrong>``, and a non-zero exit: 2 for
what was asked wrongly (options, ids, a connection that cannot be assembled), 1 for what went
wrong doing it (a device offline, a stack that cannot start), 130 after Ctrl-C. ``-v`` adds
the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import shutil
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import nats.errors
from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from harmony_fleet.bus import CommandError, FleetCommandsClient, NatsSettings, connect, drain
from harmony_fleet.bus.profile import ConnectionConfigError, default_state_file, resolve_settings
from harmony_fleet.config import ConfigError
from harmony_fleet.contracts import InvalidIdError, validation_summary
from harmony_fleet.contracts.ids import validate_deployment_token, validate_device_id
from harmony_fleet.contracts.info import validate_label_key, validate_label_value
from harmony_fleet.daemon import DaemonExit, setup_logging
from harmony_fleet.errors import FleetError, InternalError, InvalidInput

log = logging.getLogger("harmony_fleet.cli")
DEFAULT_CRD_DIR = Path("manifests/crds")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fleet: <command>: <problem> (see '... --help')``
    instead of the usage block and a second line."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("fleet").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_USAGE, f"fleet: {where}{message} (see '{self.prog} --help')\n")


if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[_Parser]  # what add_subparsers returns


def _whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {value!r}")
    try:
        return validate_label_key(key), validate_label_value(val)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("NATS connection (else env FLEET_NATS_*, else the local stack)")
    group.add_argument("--url", help="NATS URL(s), comma-separated")
    group.add_argument("--user")
    group.add_argument("--password", help="prefer FLEET_NATS_PASSWORD: argv is world-readable")
    group.add_argument("--connection-file", type=Path, help="JSON/YAML connection file")
    group.add_argument("--tls-ca-file", type=Path,
                       help="CA bundle that signs the server's certificate (PEM)")
    group.add_argument("--tls-cert-file", type=Path, help="client certificate (PEM)")
    group.add_argument("--tls-key-file", type=Path, help="the client certificate's key (PEM)")


def _add_stack_commands(sub: Subcommands) -> None:
    stack = sub.add_parser("stack", help="the local stack (nats-server + agents on this machine)")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    up = stack_sub.add_parser("up", help="start the local stack")
    up.add_argument("--devices", type=_whole_number(0), default=2,
                    help="number of agents (default 2)")
    up.add_argument("--device-prefix", default="local", help="device ids are PREFIX-0..N-1")
    up.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                    help="routing label for every agent (repeatable)")
    up.add_argument("--runtime", action=argparse.BooleanOptionalAction, default=None,
                    help="let agents drive local podman (default: on if podman is installed)")
    up.add_argument("--keep", action="store_true",
                    help="leave the stack running and return (stop it with 'fleet stack down')")
    up.add_argument("--json", action="store_true",
                    help="print the stack's description as JSON (secrets stay in the state file)")
    up.add_argument("--state-file", type=Path, default=None,
                    help=f"where to write the connection info (default {default_state_file()})")
    up.add_argument("--workdir", type=Path, default=None, help="keep files here (default: temp)")
    up.add_argument("--auth", choices=["callout", "dev"], default="callout",
                    help="callout (default): OIDC issuer + auth callout, a machine key per "
                         "device; dev: one shared device password (INSECURE)")
    up.add_argument("--token-lifetime", type=_whole_number(1), default=3600, metavar="SECONDS",
                    help="access token lifetime in callout mode (short values force rollovers)")
    up.add_argument("--port", type=_whole_number(1, 65535), default=None,
                    help="NATS client port on 127.0.0.1 (default: a free one)")
    up.add_argument("--tls", action="store_true",
                    help="serve NATS over TLS with a lab CA made for this stack (its "
                         "certificate is in the state file: tls.ca_file)")
    up.add_argument("--tls-san", action="append", default=[], metavar="NAME",
                    help="another IP address or DNS name for the server certificate, besides "
                         "127.0.0.1, ::1, localhost and 10.0.2.2 (repeatable; needs --tls)")
    up.add_argument("--cluster", type=_whole_number(1, 5), default=1, metavar="N",
                    help="run N clustered nats-servers, the buckets replicated on each "
                         "(3: survives the loss of one); clients get every URL; with --tls "
                         "the routes are TLS too")
    up.add_argument("--websocket", action="store_true",
                    help="serve NATS over WebSocket too (wss:// with --tls, else ws://) and "
                         "connect the agents there, as devices behind an HTTP proxy do")
    for name, help_text in (("down", "stop a stack started with --keep"),
                            ("status", "show the stack and ping its devices")):
        p = stack_sub.add_parser(name, help=help_text)
        p.add_argument("--state-file", type=Path, default=None)
    user = stack_sub.add_parser(
        "add-user", help="create a human user at the stack's OIDC issuer (web logins)",
        description="Create a human user who can log in to web clients (the dashboard) at "
                    "the local stack's issuer, holding fleet project roles. An existing user "
                    "of that name is left as it is.")
    user.add_argument("user_name")
    user.add_argument("--role", action="append", default=[], metavar="ROLE",
                      help="fleet project role to grant (repeatable), e.g. fleet-admin")
    user.add_argument("--password-file", type=Path, default=None,
                      help="read the password from this file (default: prompt)")
    user.add_argument("--email", default="")
    user.add_argument("--state-file", type=Path, default=None)
    client = stack_sub.add_parser(
        "add-web-client", help="register an OIDC web client at the stack's issuer",
        description="Register an OIDC web application (authorization code + PKCE S256) at "
                    "the local stack's issuer and print its client id. An existing client of "
                    "that name is left as it is.")
    client.add_argument("name")
    client.add_argument("--redirect-uri", action="append", required=True, metavar="URI",
                        help="an allowed redirect URI, matched exactly (repeatable)")
    client.add_argument("--post-logout-uri", action="append", default=[], metavar="URI")
    client.add_argument("--secret-file", type=Path, default=None,
                        help="confidential client: write its secret to this file (mode 0600); "
                             "default: a public client (PKCE only)")
    client.add_argument("--json", action="store_true")
    client.add_argument("--state-file", type=Path, default=None)


def _add_device_commands(sub: Subcommands) -> None:
    ping = sub.add_parser(
        "ping", help="ping devices",
        description="Ping devices. Exit 0 if every one answered, 1 if one did not, 2 if an id "
                    "is not a device id (the valid ones are still pinged).")
    ping.add_argument("devices", nargs="+")
    ping.add_argument("--count", type=_whole_number(1), default=1, help="pings per device")
    ping.add_argument("--timeout", type=_seconds, default=5.0)
    ping.add_argument("--json", action="store_true")
    _add_connection_args(ping)

    logs = sub.add_parser("logs", help="a service's output (the logs command)")
    logs.add_argument("device")
    logs.add_argument("deployment", help="deployment token, e.g. shop_web")
    logs.add_argument("service")
    logs.add_argument("--tail", type=_whole_number(0), default=None)
    logs.add_argument("--since", default=None, help="RFC 3339 time or a duration such as 10m")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--timeout", type=_seconds, default=5.0)
    _add_connection_args(logs)

    exe = sub.add_parser("exec", help="run a command in a service's container (if allowed)")
    exe.add_argument("device")
    exe.add_argument("deployment")
    exe.add_argument("service")
    exe.add_argument("argv", nargs="+", help="the command (put it after --)")
    exe.add_argument("--timeout", type=_seconds, default=30.0,
                     help="seconds the command may run")
    _add_connection_args(exe)


def _add_dashboard_command(sub: Subcommands) -> None:
    dash = sub.add_parser(
        "dashboard", help="serve the web dashboard (the local stack by default)",
        description="Serve the fleet dashboard. Without --config there is no login, so it "
                    "listens on a loopback address only; --config FILE reads a TOML file with "
                    "a [dashboard] section (auth, [dashboard.oidc], external_url) as "
                    "fleet-operator's.")
    dash.add_argument("--listen", default=None, metavar="HOST:PORT",
                      help="address to listen on (default 127.0.0.1:18080)")
    dash.add_argument("--mock", action="store_true",
                      help="a seeded, made-up fleet (every page says so); no NATS needed")
    dash.add_argument("--config", type=Path, default=None,
                      help="TOML file with a [dashboard] section (e.g. the OIDC login)")
    dash.add_argument("--offline-after", type=_seconds, default=None, metavar="SECONDS",
                      help="a device without a heartbeat for this long is offline (default 30)")
    dash.add_argument("--page-size", type=_whole_number(1, 200), default=None)
    _add_connection_args(dash)


def _add_revocation_commands(sub: Subcommands) -> None:
    device = sub.add_parser("device", help="revoke or restore a device")
    device_sub = device.add_subparsers(dest="device_command", required=True)
    revoke = device_sub.add_parser(
        "revoke", help="refuse a device from now on and close its live connections",
        description="Record the device in device-revocations (the auth callout refuses it, "
                    "even with a valid token) and close its live NATS connections through the "
                    "system account. An id not enrolled yet can be revoked too.")
    revoke.add_argument("device")
    revoke.add_argument("--reason", default="", help="why (kept with the revocation)")
    restore = device_sub.add_parser(
        "restore", help="lift a device's revocation (it may connect again)")
    restore.add_argument("device")
    for parser in (revoke, restore):
        parser.add_argument("--check", action="store_true",
                            help="say what would change, change nothing")
        parser.add_argument("--json", action="store_true")
        _add_connection_args(parser)
    revoke.add_argument(
        "--system-user", help="system account user (else FLEET_NATS_SYSTEM_USER, else the "
                              "connection file's system_connection)")
    revoke.add_argument("--system-password",
                        help="prefer FLEET_NATS_SYSTEM_PASSWORD: argv is world-readable")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleet", description="Harmony Fleet developer/ops CLI")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_stack_commands(sub)
    _add_device_commands(sub)
    _add_revocation_commands(sub)

    desired = sub.add_parser(
        "desired", help="print desired-state values as JSON, sealed secret values redacted")
    desired.add_argument("device", nargs="?", help="only this device's keys")
    desired.add_argument("--deployment", help="only this deployment token, e.g. shop_web")
    _add_connection_args(desired)

    _add_dashboard_command(sub)

    image = sub.add_parser("demo-image", help="build the local busybox image the demo uses")
    image.add_argument("--force", action="store_true", help="rebuild even if it exists")

    smoke = sub.add_parser(
        "smoke", help="smoke-test a deployed control plane (what the roles' smoke Jobs run)")
    smoke.add_argument("check", choices=["jetstream", "callout", "token"])
    smoke.add_argument("--config", type=Path, required=True,
                       help="TOML with a [nats] section: where and as whom to connect")
    smoke.add_argument("--buckets", action="store_true",
                       help="jetstream: every fleet bucket must exist")
    smoke.add_argument("--ensure-buckets", action="store_true",
                       help="jetstream: create or correct the fleet buckets first (admin only)")
    smoke.add_argument("--replicas", type=int, default=1, choices=[1, 3, 5],
                       help="jetstream --ensure-buckets: replicas of the buckets it creates "
                            "(the NATS cluster's size)")

    crds = sub.add_parser("crds", help="render the CRD manifests from the contract models")
    mode = crds.add_mutually_exclusive_group()
    mode.add_argument("--write", type=Path, nargs="?", const=DEFAULT_CRD_DIR, metavar="DIR")
    mode.add_argument("--check", type=Path, nargs="?", const=DEFAULT_CRD_DIR, metavar="DIR")
    return parser


# ------------------------------------------------------------------------------ stack


def _say(message: str) -> None:
    """One line on stderr, ``fleet: <message>`` (nothing if stderr is gone: a closed
    terminal)."""
    with contextlib.suppress(OSError):
        print(f"fleet: {_one_line(message)}", file=sys.stderr, flush=True)


def _one_line(message: str) -> str:
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _print_stack(state: dict[str, Any], state_file: Path, elapsed: float | None, keep: bool) -> None:
    workdir = state["workdir"]
    mode = ("auth callout + OIDC issuer, a machine key per device"
            if state["auth_mode"] == "callout" else "dev shared user/password - INSECURE")
    if elapsed is not None:
        print(f"Harmony Fleet local stack is up in {elapsed:.2f}s  (auth: {mode})")
    else:
        print(f"Harmony Fleet local stack, started {state.get('started_at', '?')}  "
              f"(auth: {mode})")
    print(f"  NATS          {state['nats_url']}")
    if state.get("tls"):
        print(f"  TLS CA        {state['tls']['ca_file']}  (server names: "
              f"{', '.join(state['tls']['sans'])})")
    for member in (state.get("nats_servers") or [])[1:]:
        print(f"                {member['url']}  (cluster member, pid {member['pid']})")
    if state.get("monitor_url"):
        print(f"  monitoring    {state['monitor_url']}/varz  /jsz  /connz")
    if "issuer" in state:
        issuer = state["issuer"]
        print(f"  OIDC issuer   {issuer['url']}  (project {issuer['project_id']})")
        print(f"  credentials   admin machine key {issuer['admin_key_file']}")
    else:
        print(f"  credentials   admin user '{state['connection']['auth']['user']}' "
              f"(INSECURE static user), password in {state_file} (connection.auth)")
    print(f"  state file    {state_file}")
    print("  devices:")
    for dev in state["devices"]:
        key = f"  key {dev['key_file']}" if dev.get("key_file") else ""
        print(f"    {dev['device_id']:<20} pid {dev['pid']}  config {dev['config_file']}{key}")
    print("  logs          tail -f " + " ".join(
        [d["log_file"] for d in state["devices"] if d["log_file"]]
        + [p["log_file"] for p in state.get("processes", [])]
        + [s["log_file"] for s in state.get("nats_servers") or [state["nats_server"]]]))
    first = state["devices"][0]["device_id"] if state["devices"] else "<device>"
    print(f"  ping          fleet ping {first}")
    print("                ansible -i inventories/local all -m harmony.fleet.fleet_ping")
    print(f"  workdir       {workdir}")
    if keep:
        print("  stop          fleet stack down")
    else:
        print("  stop          Ctrl-C")
    sys.stdout.flush()


def _check_stack_options(args: argparse.Namespace) -> bool:
    """What ``stack up`` can refuse before it starts anything; returns whether the agents
    drive podman."""
    if args.devices:
        for device_id in (f"{args.device_prefix}-0", f"{args.device_prefix}-{args.devices - 1}"):
            try:
                validate_device_id(device_id)
            except InvalidIdError as exc:
                raise InvalidInput(f"--device-prefix {args.device_prefix!r} does not make "
                                   f"device ids: {exc}") from None
    podman = shutil.which("podman") is not None
    if args.runtime and not podman:
        raise InvalidInput("--runtime needs podman, which is not installed (apt-get install "
                           "podman), or pass --no-runtime")
    workdir: Path | None = args.workdir
    if workdir is not None and workdir.exists() and (
            not workdir.is_dir() or any(workdir.iterdir())):
        raise InvalidInput(f"--workdir {workdir} exists and is not an empty directory (the "
                           "stack removes its workdir when it stops)")
    if args.tls_san and not args.tls:
        raise InvalidInput("--tls-san needs --tls")
    if args.tls:
        from harmony_fleet.localstack.tls import server_sans

        server_sans(args.tls_san)  # a name that cannot go in a certificate: said before start
    return bool(args.runtime) if args.runtime is not None else podman


async def _stack_up(args: argparse.Namespace) -> int:
    from harmony_fleet.localstack.stack import LocalStack, clear_stale_state, public_state

    state_file: Path = args.state_file or default_state_file()
    runtime = _check_stack_options(args)
    note = await asyncio.to_thread(clear_stale_state, state_file)
    if note:
        _say(note)
    stop = asyncio.Event()
    if not args.keep:
        # a foreground stack stops on Ctrl-C, a kill or SIGHUP (the terminal was closed; its
        # processes would go anyway, being bound to this one, but this way they stop in order
        # and the state file goes too). Taken from before the start: a signal while it starts
        # (the state file is already there) tears it down once it is up, instead of killing
        # this process halfway
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
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
        port=args.port,
        tls=args.tls,
        tls_sans=args.tls_san,
        cluster=args.cluster,
        websocket=args.websocket,
    )
    elapsed = time.monotonic() - started
    # secrets stay in the 0600 state file; stdout (often a terminal log or a CI transcript)
    # gets the document without them, and where the file is
    state = public_state(stack.state())
    if args.json:
        print(json.dumps(state | {"state_file": str(state_file),
                                  "startup_s": round(elapsed, 3)}, indent=2), flush=True)
    else:
        _print_stack(state, state_file, elapsed, args.keep)
    if args.keep:
        return 0
    await stop.wait()
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone: stop anyway
        print("\ntearing the stack down ...", file=sys.stderr, flush=True)
    await stack.down()
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from harmony_fleet.localstack.stack import down_from_state

    state_file = args.state_file or default_state_file()
    report = down_from_state(state_file)
    print(f"stopped: {', '.join(report.stopped) if report.stopped else 'nothing was running'}")
    for failure in report.failed:
        _say(f"could not stop {failure}")
    if report.failed:
        _say(f"kept {state_file} and the stack's workdir: run 'fleet stack down' again once "
             "those are stopped")
        return EXIT_FAILED
    return 0


async def _stack_status(args: argparse.Namespace) -> int:
    from harmony_fleet.localstack.stack import public_state, read_state, stack_health

    state_file = args.state_file or default_state_file()
    state = read_state(state_file)
    _print_stack(public_state(state), state_file, None, keep=True)
    health = await asyncio.to_thread(stack_health, state)
    problems = health.problems(state_file, state)
    for problem in problems:
        _say(problem)
    # without these nobody can connect: the problems above say so, pinging would only wait
    needed = ["nats-server"] + (["fleet-callout"] if state.get("auth_mode") == "callout" else [])
    devices = [d["device_id"] for d in state["devices"]]
    if not devices or not all(health.runs(name) for name in needed):
        return EXIT_FAILED if problems else 0
    ping_args = argparse.Namespace(
        devices=devices, count=1, timeout=2.0, json=False,
        url=None, user=None, password=None, connection_file=state_file,
    )
    code = await _ping(ping_args)
    return code or (EXIT_FAILED if problems else 0)


# ------------------------------------------------------------------------------ ping


async def _ping_device(client: FleetCommandsClient, device: str, count: int) -> dict[str, Any]:
    """Ping one device ``count`` times; a row with the last reply and latency percentiles."""
    latencies: list[float] = []
    row: dict[str, Any] = {"device_id": device, "ok": True}
    for _attempt in range(count):
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


def _cli_settings(args: argparse.Namespace) -> NatsSettings:
    return resolve_settings(
        url=args.url, user=args.user, password=args.password,
        connection_file=args.connection_file,
        tls_ca_file=getattr(args, "tls_ca_file", None),
        tls_cert_file=getattr(args, "tls_cert_file", None),
        tls_key_file=getattr(args, "tls_key_file", None),
    )


async def _cli_connect(args: argparse.Namespace) -> NatsClient:
    return await connect(_cli_settings(args), name="fleet-cli")


async def _ping(args: argparse.Namespace) -> int:
    """Ping every valid id; an invalid one is said (one line each) and not sent."""
    rows: dict[int, dict[str, Any]] = {}
    valid: dict[int, str] = {}
    for index, device in enumerate(args.devices):
        try:
            valid[index] = validate_device_id(device)
        except InvalidIdError as exc:
            rows[index] = {"device_id": device, "ok": False,
                           "error": f"{type(exc).__name__}: {exc}"}
            _say(rows[index]["error"])
    if valid:
        nc = await _cli_connect(args)
        try:
            client = FleetCommandsClient(nc, timeout=args.timeout)
            for index, device in valid.items():
                rows[index] = await _ping_device(client, device, args.count)
        finally:
            await drain(nc)
    results = [rows[index] for index in sorted(rows)]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for index, row in sorted(rows.items()):
            if index not in valid:
                continue  # said on stderr already
            if row["ok"]:
                r, lat = row["reply"], row["latency_ms"]
                print(f"{row['device_id']}: pong (agent {r['agent_version']}, up {r['uptime_s']}s) "
                      f"p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms over {lat['count']}")
            else:
                print(f"{row['device_id']}: {row['error']}")
    if len(valid) < len(rows):
        return EXIT_USAGE
    return EXIT_FAILED if any(not row["ok"] for row in results) else 0


# ------------------------------------------------------------------------------ desired state


async def _desired(args: argparse.Namespace) -> int:
    from harmony_fleet.bus.kv import read_bucket
    from harmony_fleet.contracts import BUCKET_DESIRED_STATE
    from harmony_fleet.planning import shown_value

    device = validate_device_id(args.device) if args.device is not None else "*"
    token = validate_deployment_token(args.deployment) if args.deployment is not None else "*"
    nc = await _cli_connect(args)
    try:
        values = await read_bucket(nc.jetstream(), BUCKET_DESIRED_STATE, f"{device}.{token}")
    finally:
        await drain(nc)
    # sealed values are shown as "<redacted>": this output ends up in terminals and tickets
    print(json.dumps({key: shown_value(value) for key, value in sorted(values.items())},
                     indent=2))
    return 0


# ------------------------------------------------------------------------------ revocation


async def _device(args: argparse.Namespace) -> int:
    """``fleet device revoke|restore DEVICE``: what changed, as a line or JSON."""
    from harmony_fleet.bus.profile import resolve_system_settings
    from harmony_fleet.control.revocation import apply_device_revocation

    device = validate_device_id(args.device)
    settings = _cli_settings(args)
    revoke = args.device_command == "revoke"
    system_settings = resolve_system_settings(
        settings, user=args.system_user, password=args.system_password,
        connection_file=args.connection_file) if revoke else None
    result = await apply_device_revocation(
        settings, system_settings, device, "revoked" if revoke else "allowed",
        reason=args.reason if revoke else "", revoked_by="fleet-cli", check_mode=args.check)
    if args.json:
        print(json.dumps(result | {"check_mode": args.check}, indent=2))
    else:
        would = "would be " if args.check else ""
        if not result["changed"]:
            print(f"{device}: already {'revoked' if result['state'] == 'revoked' else 'allowed'}"
                  " (nothing changed)")
        elif result["state"] == "revoked":
            print(f"{device}: {would}revoked, {result['kicked']} connection(s) {would}closed")
        else:
            print(f"{device}: {would}allowed again")
    return 0


# ------------------------------------------------------------------------------ logs / exec


def _target(args: argparse.Namespace) -> None:
    """The device and deployment a logs/exec command names must be ids, before connecting."""
    validate_device_id(args.device)
    validate_deployment_token(args.deployment)


async def _logs(args: argparse.Namespace) -> int:
    _target(args)
    nc = await _cli_connect(args)
    try:
        client = FleetCommandsClient(nc, timeout=args.timeout)
        async for text in client.logs(args.device, args.deployment, args.service,
                                      tail=args.tail, since=args.since, follow=args.follow):
            sys.stdout.write(text)
            sys.stdout.flush()
    except ValidationError as exc:  # the request itself (service name, --since)
        raise InvalidInput(f"invalid logs request: {validation_summary(exc)}") from None
    finally:
        await drain(nc)
    return 0


async def _exec(args: argparse.Namespace) -> int:
    _target(args)
    nc = await _cli_connect(args)
    try:
        client = FleetCommandsClient(nc)
        reply = await client.exec(args.device, args.deployment, args.service, args.argv,
                                  timeout_s=args.timeout)
    except ValidationError as exc:  # the request itself (service name, argv, --timeout)
        raise InvalidInput(f"invalid exec request: {validation_summary(exc)}") from None
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
        try:
            args.write.mkdir(parents=True, exist_ok=True)
            for name, text in rendered.items():
                (args.write / name).write_text(text, encoding="utf-8")
                print(f"wrote {args.write / name}")
        except OSError as exc:
            raise InvalidInput(f"cannot write the CRDs to {args.write}: "
                               f"{exc.strerror or exc}") from None
        return 0
    if args.check:
        if not args.check.is_dir():
            raise InvalidInput(f"--check {args.check}: no such directory")
        stale = [n for n, t in rendered.items()
                 if not (args.check / n).exists() or (args.check / n).read_text() != t]
        for name in stale:
            print(f"{args.check / name} is stale: run 'fleet crds --write'", file=sys.stderr)
        return 1 if stale else 0
    print("\n".join(rendered.values()), end="")
    return 0


def _dashboard_settings(args: argparse.Namespace) -> Any:
    from harmony_fleet.dashboard.config import DEFAULT_LISTEN, DashboardSection

    document: dict[str, Any] = {}
    if args.config is not None:
        import tomllib

        try:
            document = dict(tomllib.loads(args.config.read_text(encoding="utf-8"))
                            .get("dashboard") or {})
        except OSError as exc:
            raise InvalidInput(f"--config {args.config}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"--config {args.config}: {exc}") from None
    else:
        document["auth"] = "off"
    for key, value in (("listen", args.listen), ("offline_after_s", args.offline_after),
                       ("page_size", args.page_size)):
        if value is not None:
            document[key] = value
    document.setdefault("listen", DEFAULT_LISTEN)
    try:
        return DashboardSection.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput(f"dashboard settings: {validation_summary(exc)}") from None


def _dashboard(args: argparse.Namespace) -> int:
    try:
        from harmony_fleet.dashboard.server import run_standalone
    except ImportError as exc:
        raise InvalidInput(f"fleet dashboard needs the dashboard extra ({exc.name} is "
                           "missing): pip install 'harmony-fleet[dashboard]'") from None
    from harmony_fleet.daemon import install_stop_signals

    settings = _dashboard_settings(args)
    nats = None if args.mock else resolve_settings(
        url=args.url, user=args.user, password=args.password,
        connection_file=args.connection_file)

    def announce(url: str) -> None:
        what = "MOCK DATA (seeded, not a real fleet)" if args.mock else \
            f"the fleet at {', '.join(nats.urls) if nats else '?'}"
        print(f"Harmony Fleet dashboard: {url}  ({what})", flush=True)
        if settings.auth == "off":
            _say("login is off: listening on a loopback address only; anyone with a shell on "
                 "this machine can use the dashboard")

    async def run() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_standalone(settings, stop, nats=nats, mock=args.mock, announce=announce)

    asyncio.run(run())
    return 0


def _demo_image(args: argparse.Namespace) -> int:
    from harmony_fleet.localstack.images import build_busybox_image

    print(build_busybox_image(force=args.force))
    return 0


def _stack_add_user(args: argparse.Namespace) -> int:
    import getpass

    from harmony_fleet.localstack.issuer_admin import IssuerAdmin
    from harmony_fleet.localstack.stack import read_state

    admin = IssuerAdmin.from_state(read_state(args.state_file or default_state_file()))
    if args.password_file is not None:
        password = args.password_file.read_text(encoding="utf-8").rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.user_name}: ")
    user_id = admin.create_human_user(args.user_name, password, args.role, email=args.email)
    print(f"user {args.user_name}: {user_id}")
    return 0


def _stack_add_web_client(args: argparse.Namespace) -> int:
    from harmony_fleet.localstack.files import write_private_file
    from harmony_fleet.localstack.issuer_admin import IssuerAdmin
    from harmony_fleet.localstack.stack import read_state

    state = read_state(args.state_file or default_state_file())
    admin = IssuerAdmin.from_state(state)
    info = admin.create_web_client(args.name, args.redirect_uri,
                                   confidential=args.secret_file is not None,
                                   post_logout_redirect_uris=args.post_logout_uri)
    if args.secret_file is not None and info.client_secret is not None:
        write_private_file(args.secret_file, info.client_secret)
    elif args.secret_file is not None:
        _say(f"{args.name} exists already: its secret is not shown again "
             f"({args.secret_file} not written)")
    if args.json:
        print(json.dumps({"client_id": info.client_id, "issuer": admin.issuer,
                          "secret_file": str(args.secret_file) if args.secret_file else None}))
    else:
        print(f"client {args.name}: {info.client_id} (issuer {admin.issuer})")
    return 0


def _stack(args: argparse.Namespace) -> int:
    if args.stack_command == "add-user":
        return _stack_add_user(args)
    if args.stack_command == "add-web-client":
        return _stack_add_web_client(args)
    if args.stack_command == "up":
        return asyncio.run(_stack_up(args))
    if args.stack_command == "down":
        return _stack_down(args)
    return asyncio.run(_stack_status(args))


def _smoke(args: argparse.Namespace) -> int:
    from harmony_fleet.control.smoke import SmokeConfig, describe, run_check

    config = SmokeConfig.load(args.config)
    result = asyncio.run(run_check(args.check, config, buckets=args.buckets or args.ensure_buckets,
                                   ensure=args.ensure_buckets, replicas=args.replicas))
    print(describe(result))
    return 0


def _remote(args: argparse.Namespace) -> int:
    """The commands that talk to devices."""
    commands = {"ping": _ping, "logs": _logs, "exec": _exec, "desired": _desired,
                "device": _device}
    return asyncio.run(commands[args.command](args))


def failure(exc: Exception) -> tuple[str, int]:
    """What to say about ``exc`` (one line) and the exit code (pure).

    The line names the error's class, then its message, as every client of the package does
    (:mod:`harmony_fleet.errors`); what is not one of ours is named as the class it is, and a
    bug as an :class:`~harmony_fleet.errors.InternalError`."""
    code = EXIT_FAILED
    name, message = type(exc).__name__, str(exc)
    if isinstance(exc, DaemonExit):  # a credential file that cannot be read, an id in use
        code = exc.exit_code
    elif isinstance(exc, InvalidInput | ConnectionConfigError | ConfigError):
        code = EXIT_USAGE
    elif isinstance(exc, ValidationError):
        name, message, code = InvalidInput.__name__, validation_summary(exc), EXIT_USAGE
    elif isinstance(exc, FleetError | nats.errors.Error):
        pass
    elif isinstance(exc, OSError):
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    else:
        name = InternalError.__name__
        message = (f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)")
    return _one_line(f"{name}: {message}"), code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("debug" if args.verbose else "warning")
    handlers = {"crds": _crds, "demo-image": _demo_image, "stack": _stack, "smoke": _smoke,
                "dashboard": _dashboard,
                "ping": _remote, "logs": _remote, "exec": _remote, "desired": _remote,
                "device": _remote}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        message, code = failure(exc)
        _say(message)
        return code


if __name__ == "__main__":
    sys.exit(main())
