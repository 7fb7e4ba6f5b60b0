"""A per-user connection broker: one NATS connection shared by many short-lived clients.

Ansible runs every (host, task) in a forked worker process, so a module-level connection
cache dies with each host. Instead, the first worker that needs NATS spawns this broker,
a small asyncio process listening on a Unix socket (directory 0700, socket 0600) and keyed
by a hash of the connection settings; later workers reuse it. It exits after ``idle``
seconds without a request, or when its NATS connection closes for good.

Protocol: one JSON object per line. Request ``{"op": "ping", "args": {...}}``; answer
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"type": ..., "message": ...}}``.
The settings (secrets included) reach the broker on stdin, never in argv or the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from harmony_fleet.contracts import canonical_json, validation_summary

from .commands import CommandError, FleetCommandsClient, RemoteError
from .connection import ConnectError, connect, drain, keep_authenticated
from .credentials import provider_from_settings
from .settings import NatsSettings

log = logging.getLogger(__name__)

DEFAULT_IDLE_S = 30.0
MAX_LINE = 16 * 1024 * 1024

Operation = Callable[[NatsClient, dict[str, Any]], Awaitable[dict[str, Any]]]


class BrokerError(RuntimeError):
    """The broker could not be reached or started; or it answered with an error."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_


# ----------------------------------------------------------------------------- operations


async def op_ping(nc: NatsClient, args: dict[str, Any]) -> dict[str, Any]:
    client = FleetCommandsClient(nc, timeout=float(args.get("timeout", 5.0)))
    started = time.perf_counter()
    reply = await client.ping(str(args["device_id"]))
    return {
        "reply": reply.model_dump(mode="json"),
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
    }


async def op_deploy(nc: NatsClient, args: dict[str, Any]) -> dict[str, Any]:
    """Converge one deployment's desired-state keys (the ``fleet_deployment`` module)."""
    from harmony_fleet.contracts import PodmanScore, deployment_token
    from harmony_fleet.contracts.crd import LabelSelector

    from .deploy import apply_desired_state, resolve_targets, state_summary, wait_for_rollout

    token = deployment_token(str(args["namespace"]), str(args["name"]))
    present = args.get("state", "present") == "present"
    score = PodmanScore.model_validate(args["score"]) if present else None
    if present:
        selector = (LabelSelector.model_validate(args["selector"])
                    if args.get("selector") is not None else None)
        targets = await resolve_targets(nc, args.get("devices"), selector)
    else:
        targets = []
    check_mode = bool(args.get("check_mode"))
    plan, before = await apply_desired_state(nc, token, score, targets, check_mode=check_mode)
    score_hash = score.spec_hash() if score else None
    result: dict[str, Any] = {
        "deployment": token,
        "changed": plan.changed,
        "targets": targets,
        "created": plan.created,
        "updated": plan.updated,
        "unchanged": plan.unchanged,
        "removed": plan.delete,
        "spec_hash": score_hash,
        "diff": {
            "before": {d: _hash_of(v) for d, v in sorted(before.items())},
            "after": dict.fromkeys(targets, score_hash),
        },
    }
    if args.get("wait") and not check_mode:
        watched = targets if present else plan.delete
        ok, states = await wait_for_rollout(nc, token, watched, score_hash,
                                            float(args.get("wait_timeout", 120)),
                                            removed=not present)
        result.update(rolled_out=ok, states=state_summary(states))
    return result


def _hash_of(value: bytes) -> str:
    from harmony_fleet.contracts import PodmanScore

    try:
        return PodmanScore.model_validate_json(value).spec_hash()
    except ValueError:
        return "(not a valid score)"


OPERATIONS: dict[str, Operation] = {"ping": op_ping, "deploy": op_deploy}


async def execute(nc: NatsClient, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one operation and shape the answer (also used without a broker)."""
    handler = OPERATIONS.get(op)
    if handler is None:
        return {"ok": False, "error": {"type": "BadRequest", "message": f"unknown op {op!r}"}}
    try:
        return {"ok": True, "result": await handler(nc, args)}
    except RemoteError as exc:
        return {"ok": False, "error": {"type": "RemoteError", "kind": exc.kind.value,
                                       "message": str(exc)}}
    except CommandError as exc:
        return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
    except ValidationError as exc:
        return {"ok": False, "error": {"type": "BadRequest",
                                       "message": f"{op}: {validation_summary(exc)}"}}
    except (KeyError, ValueError, TypeError) as exc:
        return {"ok": False, "error": {"type": "BadRequest", "message": f"{op}: {exc}"}}


# ----------------------------------------------------------------------------- paths


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "harmony-fleet" if base else Path.home() / ".ansible" / "tmp" / "harmony-fleet"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _settings_doc(settings: NatsSettings) -> dict[str, Any]:
    """The settings with secrets revealed: only for the broker's stdin and its key hash."""
    doc = settings.model_dump(mode="json")
    for field in ("password", "token"):
        value = getattr(settings.auth, field, None)
        if value is not None:
            doc["auth"][field] = value.get_secret_value()
    return doc


def socket_path(settings: NatsSettings) -> Path:
    """One broker per distinct connection (credentials included)."""
    key = hashlib.sha256(canonical_json(_settings_doc(settings))).hexdigest()[:20]
    return runtime_dir() / f"broker-{key}.sock"


# ----------------------------------------------------------------------------- server


class BrokerServer:
    def __init__(self, settings: NatsSettings, path: Path, idle: float) -> None:
        self.settings = settings
        self.path = path
        self.idle = idle
        self._last = time.monotonic()
        self._active = 0
        self._stop = asyncio.Event()

    async def _on_closed(self) -> None:
        self._stop.set()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            nc: NatsClient) -> None:
        self._active += 1
        try:
            while line := await reader.readline():
                self._last = time.monotonic()
                try:
                    request = json.loads(line)
                    answer = await execute(nc, str(request["op"]), dict(request.get("args", {})))
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": {"type": "BadRequest", "message": str(exc)}}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
                self._last = time.monotonic()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def run(self, ready: Callable[[str], None]) -> None:
        credentials = provider_from_settings(self.settings.auth)
        try:
            nc = await connect(self.settings, name="fleet-broker", credentials=credentials,
                               closed_cb=self._on_closed)
        except Exception as exc:
            ready(f"error: {exc}")
            return
        # a long Ansible run outlives a token: refresh and re-authenticate in time
        refresher = asyncio.create_task(keep_authenticated(nc, credentials, self._stop))
        server = await asyncio.start_unix_server(
            lambda r, w: self._serve_client(r, w, nc), path=str(self.path), limit=MAX_LINE
        )
        self.path.chmod(0o600)
        ready("ready")
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=1.0)
                if self._active == 0 and time.monotonic() - self._last > self.idle:
                    break
        finally:
            self._stop.set()
            await refresher
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            await drain(nc)


def _broker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Harmony Fleet NATS connection broker")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = NatsSettings.model_validate_json(sys.stdin.read())

    def ready(status: str) -> None:
        sys.stdout.write(status + "\n")
        sys.stdout.flush()
        sys.stdout.close()

    asyncio.run(BrokerServer(settings, args.socket, args.idle).run(ready))
    return 0


# ----------------------------------------------------------------------------- client


def _spawn(settings: NatsSettings, path: Path, idle: float) -> None:
    log_file = path.with_suffix(".log")
    with log_file.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harmony_fleet.bus.broker", "--socket", str(path),
             "--idle", str(idle)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True,
        )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(json.dumps(_settings_doc(settings)).encode())
    proc.stdin.close()
    status = proc.stdout.readline().decode().strip()
    proc.stdout.close()
    if status != "ready":
        proc.wait(5)
        message = status.removeprefix("error: ") or f"broker exited; see {log_file}"
        raise BrokerError("ConnectError", message)


def _open(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def _connect_or_spawn(settings: NatsSettings, idle: float) -> socket.socket:
    path = socket_path(settings)
    with contextlib.suppress(OSError):
        return _open(path)
    with path.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one spawner at a time; the rest then connect
        with contextlib.suppress(OSError):
            return _open(path)
        path.unlink(missing_ok=True)  # a stale socket from a broker that died
        _spawn(settings, path, idle)
        return _open(path)


def call(
    settings: NatsSettings, op: str, args: dict[str, Any], *, idle: float = DEFAULT_IDLE_S,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Run ``op`` through the broker for ``settings`` (spawning it if needed); blocking."""
    sock = _connect_or_spawn(settings, idle)
    try:
        sock.settimeout(timeout)
        sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise BrokerError("Transport", "the broker closed the connection")
            buf += chunk
    except TimeoutError as exc:
        raise BrokerError("Timeout", f"no answer from the broker within {timeout}s") from exc
    finally:
        sock.close()
    answer: dict[str, Any] = json.loads(buf)
    return answer


def call_direct(settings: NatsSettings, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``op`` on a connection of its own (no broker); blocking."""

    async def _run() -> dict[str, Any]:
        try:
            nc = await connect(settings, name="fleet-ansible")
        except ConnectError as exc:
            raise BrokerError("ConnectError", str(exc)) from exc
        try:
            return await execute(nc, op, args)
        finally:
            await drain(nc)

    return asyncio.run(_run())


if __name__ == "__main__":
    sys.exit(_broker_main())
