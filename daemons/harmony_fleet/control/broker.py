"""A per-user connection broker: one NATS connection shared by many short-lived clients.

Ansible runs every (host, task) in a forked worker process, so a module-level connection
cache dies with each host. Instead, the first worker that needs NATS spawns this broker,
a small asyncio process listening on a Unix socket (directory 0700, socket 0600) and keyed
by a hash of the connection settings; later workers reuse it. It exits after ``idle``
seconds without a request, or when its NATS connection closes for good.

Protocol: one JSON object per line. Request ``{"op": "ping", "args": {...}}``; answer
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"type": ..., "message": ...}}``
where ``type`` is the name of an exception class (see :mod:`.operations`).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harmony_fleet.bus.connection import ConnectError, RotatingConnection, connect, drain
from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.contracts import canonical_json
from harmony_fleet.daemon import first_of
from harmony_fleet.errors import FleetError, InvalidInput

from .operations import execute

log = logging.getLogger(__name__)

DEFAULT_IDLE_S = 30.0
MAX_LINE = 16 * 1024 * 1024


class BrokerError(FleetError, RuntimeError):
    """The shared broker failed a call: it closed the connection before answering, or did not
    answer in time. (A broker that cannot connect to NATS raises :class:`ConnectError`.)"""


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

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            connection: RotatingConnection) -> None:
        self._active += 1
        try:
            while line := await reader.readline():
                self._last = time.monotonic()
                try:
                    request = json.loads(line)
                    async with connection.borrow() as nc:
                        answer = await execute(nc, str(request["op"]),
                                               dict(request.get("args", {})))
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": {"type": InvalidInput.__name__,
                                                     "message": f"bad broker request: {exc}"}}
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
        connection = RotatingConnection(self.settings, name="fleet-broker")
        try:
            await connection.open()
        except Exception as exc:
            ready(f"error: {exc}")
            return
        # a long Ansible run outlives a token: move to a connection with the refreshed one
        # (make before break: an operation in flight finishes on the connection it started on)
        refresher = asyncio.create_task(connection.run(self._stop))
        server = await asyncio.start_unix_server(
            lambda r, w: self._serve_client(r, w, connection), path=str(self.path),
            limit=MAX_LINE,
        )
        self.path.chmod(0o600)
        ready("ready")
        try:
            while not self._stop.is_set() and not connection.closed.is_set():
                await first_of(self._stop, connection.closed, timeout=1.0)
                if self._active == 0 and time.monotonic() - self._last > self.idle:
                    break
        finally:
            self._stop.set()
            await refresher
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            await connection.close()


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


def _package_environment() -> dict[str, str]:
    """The environment of a child that must import this very harmony_fleet (the Ansible
    plugins load the copy their collection ships, which is not necessarily installed)."""
    import harmony_fleet

    env = dict(os.environ)
    root = str(Path(harmony_fleet.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _spawn(settings: NatsSettings, path: Path, idle: float) -> None:
    log_file = path.with_suffix(".log")
    with log_file.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harmony_fleet.control.broker", "--socket", str(path),
             "--idle", str(idle)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True, env=_package_environment(),
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
        raise ConnectError(message)


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
                raise BrokerError(f"the broker closed the connection before answering {op} "
                                  f"(its log: {socket_path(settings).with_suffix('.log')})")
            buf += chunk
    except TimeoutError as exc:
        raise BrokerError(f"no answer from the broker to {op} within {timeout:g}s") from exc
    finally:
        sock.close()
    answer: dict[str, Any] = json.loads(buf)
    return answer


def call_direct(settings: NatsSettings, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``op`` on a connection of its own (no broker); blocking."""

    async def _run() -> dict[str, Any]:
        nc = await connect(settings, name="fleet-ansible")
        try:
            return await execute(nc, op, args)
        finally:
            await drain(nc)

    return asyncio.run(_run())


if __name__ == "__main__":
    sys.exit(_broker_main())
