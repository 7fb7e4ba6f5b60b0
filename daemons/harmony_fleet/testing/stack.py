"""The local stack: a real nats-server, the fleet buckets and N agents on this machine.

It is both the developer's playground (``fleet stack up``) and the integration-test fixture
(:mod:`harmony_fleet.testing.pytest_plugin`), so the demo and the tests cannot drift apart.

When ready it writes a *state file* (JSON, mode 0600) describing how to reach it::

    {"version": 1, "nats_url": "nats://127.0.0.1:41234",
     "connection": {"urls": [...], "auth": {"mode": "userpass", "user": "admin", ...}},
     "devices": [{"device_id": "local-0", "config_file": ..., "log_file": ..., "pid": ...}],
     ...}

``connection`` is a :class:`~harmony_fleet.bus.settings.NatsSettings` document: the Ansible
plugins and the ``fleet`` CLI read it directly (``connection_file`` / ``--connection-file``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.app import Agent
from harmony_fleet.agent.config import AgentConfig
from harmony_fleet.bus import (
    CommandError,
    FleetCommandsClient,
    NatsSettings,
    UserPasswordAuth,
    connect,
    drain,
    ensure_buckets,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.natsconf import StaticUser

from .nats_server import NatsServer
from .services import AuthMode, FleetServices, start_services

log = logging.getLogger(__name__)

AgentMode = Literal["subprocess", "inprocess"]
STATE_VERSION = 1


class StackError(RuntimeError):
    pass


@dataclass
class DeviceHandle:
    device_id: str
    config_file: Path
    log_file: Path | None
    labels: dict[str, str]
    runtime_enabled: bool
    mode: AgentMode
    process: subprocess.Popen[bytes] | None = None
    task: asyncio.Task[None] | None = None
    stop_event: asyncio.Event | None = None
    agent: Agent | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def describe(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "config_file": str(self.config_file),
            "log_file": str(self.log_file) if self.log_file else None,
            "pid": self.pid,
            "labels": self.labels,
            "runtime_enabled": self.runtime_enabled,
            "mode": self.mode,
            # callout mode: the device's own Zitadel machine key (authenticate as this device)
            "key_file": str(self.config_file.parent / "zitadel-key.json")
            if (self.config_file.parent / "zitadel-key.json").exists() else None,
        }


@dataclass
class LocalStack:
    """A running local fleet. Build it with :meth:`up` (own server) or :meth:`on_server`."""

    workdir: Path
    services: FleetServices
    owns_server: bool
    state_file: Path | None = None
    detach: bool = False
    devices: dict[str, DeviceHandle] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: utcnow().isoformat())

    # ---- construction ------------------------------------------------------------------
    @property
    def server(self) -> NatsServer:
        return self.services.server

    @property
    def admin(self) -> StaticUser:
        return self.services.admin

    @property
    def auth(self) -> AuthMode:
        return self.services.auth

    @classmethod
    async def up(
        cls,
        *,
        devices: int | list[str] = 1,
        device_prefix: str = "local",
        labels: dict[str, str] | None = None,
        runtime_enabled: bool = False,
        agent_mode: AgentMode = "subprocess",
        workdir: Path | None = None,
        state_file: Path | None = None,
        detach: bool = False,
        auth: AuthMode = "dev",
        token_lifetime_s: int = 3600,
    ) -> LocalStack:
        """Start everything; return when every agent answers a ping."""
        workdir = workdir or Path(tempfile.mkdtemp(prefix="fleet-stack-"))
        services = await asyncio.to_thread(start_services, workdir, auth=auth, detach=detach,
                                           token_lifetime_s=token_lifetime_s)
        stack = cls(workdir, services, owns_server=True, state_file=state_file, detach=detach)
        try:
            await stack.ensure_buckets()
            ids = (
                devices if isinstance(devices, list)
                else [f"{device_prefix}-{i}" for i in range(devices)]
            )
            await asyncio.gather(*(
                stack.add_device(d, labels=labels, runtime_enabled=runtime_enabled,
                                 mode=agent_mode)
                for d in ids
            ))
            # agents start concurrently; list them in the order asked for
            stack.devices = {d: stack.devices[d] for d in ids}
            stack.write_state()
        except BaseException:
            await stack.down()
            raise
        return stack

    # ---- connections -------------------------------------------------------------------
    @property
    def nats_url(self) -> str:
        return self.server.url

    def admin_settings(self, **overrides: Any) -> NatsSettings:
        return NatsSettings(
            urls=[self.nats_url],
            auth=UserPasswordAuth(user=self.admin.user, password=self.admin.password),
            connect_attempts=3,
            **overrides,
        )

    async def admin_connect(self, name: str = "fleet-admin") -> NatsClient:
        return await connect(self.admin_settings(), name=name)

    async def ensure_buckets(self) -> None:
        nc = await self.admin_connect("fleet-stack-setup")
        try:
            await ensure_buckets(nc.jetstream())
        finally:
            await drain(nc)

    # ---- agents ------------------------------------------------------------------------
    def _write_agent_config(
        self, device_id: str, labels: dict[str, str], runtime_enabled: bool, extra_toml: str,
        runtime: dict[str, Any] | None = None,
    ) -> Path:
        agent_dir = self.workdir / "agents" / device_id
        agent_dir.mkdir(parents=True, exist_ok=True)
        auth_toml = self._agent_auth(device_id, agent_dir)
        # a quick local loop: containers that die are noticed within ~2 s
        runtime_options = {"reconcile_interval_s": 2, "watch_heartbeat_s": 1,
                           "stop_timeout_s": 2, **(runtime or {})}
        label_items = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in labels.items())
        config_file = agent_dir / "config.toml"
        config_file.write_text(
            "# Generated by the Harmony Fleet local stack (dev mode: shared user/password).\n"
            "[agent]\n"
            f"device_id = {json.dumps(device_id)}\n"
            f"runtime_enabled = {str(runtime_enabled).lower()}\n"
            "heartbeat_interval_s = 5\n"
            f"labels = {{ {label_items} }}\n"
            "\n[nats]\n"
            f"urls = [{json.dumps(self.nats_url)}]\n"
            "\n[nats.auth]\n"
            + auth_toml
            + "\n[runtime]\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in runtime_options.items())
            + (f"\n{extra_toml}\n" if extra_toml else ""),
            encoding="utf-8",
        )
        config_file.chmod(0o600)
        return config_file

    def _agent_auth(self, device_id: str, agent_dir: Path) -> str:
        """The agent's ``[nats.auth]`` body: the shared dev user, or its own machine key."""
        if self.services.device_user is not None:
            password_file = agent_dir / "nats-password"
            password_file.touch(mode=0o600, exist_ok=True)
            password_file.write_text(self.services.device_user.password, encoding="utf-8")
            return ('mode = "userpass"\n'
                    f"user = {json.dumps(self.services.device_user.user)}\n"
                    f"password_file = {json.dumps(str(password_file))}\n")
        issuer = self.services.issuer
        assert issuer is not None
        key_file = agent_dir / "zitadel-key.json"
        self.services.enroll_device(device_id, key_file)
        return ('mode = "zitadel"\n'
                f"issuer = {json.dumps(issuer.url)}\n"
                f"key_file = {json.dumps(str(key_file))}\n"
                f"project_id = {json.dumps(issuer.project_id)}\n")

    async def add_device(
        self,
        device_id: str,
        *,
        labels: dict[str, str] | None = None,
        runtime_enabled: bool = False,
        mode: AgentMode = "inprocess",
        wait: bool = True,
        runtime: dict[str, Any] | None = None,
        extra_toml: str = "",
    ) -> DeviceHandle:
        """Start an agent for ``device_id``; with ``wait`` return once it answers a ping."""
        if device_id in self.devices:
            raise StackError(f"device {device_id} already exists in this stack")
        labels = dict(labels or {})
        config_file = await asyncio.to_thread(
            self._write_agent_config, device_id, labels, runtime_enabled, extra_toml, runtime
        )
        handle = DeviceHandle(device_id, config_file, None, labels, runtime_enabled, mode)
        if mode == "subprocess":
            handle.log_file = config_file.parent / "agent.log"
            with handle.log_file.open("ab") as out:
                # Popen, not asyncio's: with --keep the agents outlive this event loop
                handle.process = subprocess.Popen(  # noqa: ASYNC220
                    [sys.executable, "-m", "harmony_fleet.agent.main", "--config",
                     str(config_file)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=self.detach,
                )
        else:
            config = AgentConfig.load(config_file)
            handle.agent = Agent(config)
            handle.stop_event = asyncio.Event()
            handle.task = asyncio.create_task(
                handle.agent.run(handle.stop_event), name=f"agent-{device_id}"
            )
        self.devices[device_id] = handle
        if wait:
            await self.wait_for_device(device_id)
        return handle

    async def wait_for_device(self, device_id: str, timeout: float = 20.0) -> None:
        """Ping until the agent answers (proves connect + subscription end to end)."""
        handle = self.devices[device_id]
        nc = await self.admin_connect("fleet-stack-wait")
        try:
            client = FleetCommandsClient(nc, timeout=1.0)
            deadline = time.monotonic() + timeout
            while True:
                if handle.process and handle.process.poll() is not None:
                    raise StackError(
                        f"agent {device_id} exited with {handle.process.returncode}; "
                        f"see {handle.log_file}"
                    )
                if handle.task and handle.task.done():
                    handle.task.result()
                    raise StackError(f"agent {device_id} stopped before answering")
                try:
                    await client.ping(device_id)
                    return
                except CommandError:
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"agent {device_id} did not answer a ping within {timeout}s"
                        ) from None
                    await asyncio.sleep(0.05)
        finally:
            await drain(nc)

    async def stop_device(self, device_id: str, timeout: float = 15.0) -> int | None:
        """Stop one agent (SIGTERM for subprocesses); return its exit code if it had one."""
        handle = self.devices.pop(device_id)
        if handle.process is not None:
            return await asyncio.to_thread(_terminate, handle.process, timeout)
        if handle.task is not None and handle.stop_event is not None:
            handle.stop_event.set()
            try:
                await asyncio.wait_for(handle.task, timeout)
            except TimeoutError:
                log.error("in-process agent %s did not stop within %ss", device_id, timeout)
        return None

    # ---- state & teardown --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "started_at": self.started_at,
            "auth_mode": self.auth,
            "insecure": self.auth == "dev",
            "nats_url": self.nats_url,
            "monitor_url": self.server.monitor_url,
            # what the CLI and the Ansible plugins use: in callout mode an admin machine key,
            # authenticated by the callout like any client; in dev mode the static admin
            "connection": {"urls": [self.nats_url], "auth": self._admin_auth()},
            "bootstrap_admin": {"user": self.admin.user, "password": self.admin.password},
            **self.services.describe(),
            "workdir": str(self.workdir),
            "nats_server": {
                "pid": self.server.pid,
                "config_file": str(self.server.config_file),
                "log_file": str(self.server.log_file),
            },
            "devices": [h.describe() for h in self.devices.values()],
        }

    def _admin_auth(self) -> dict[str, Any]:
        issuer = self.services.issuer
        if issuer is None:
            return {"mode": "userpass", "user": self.admin.user, "password": self.admin.password}
        return {"mode": "zitadel", "issuer": issuer.url, "key_file": str(issuer.admin_key_file),
                "project_id": issuer.project_id}

    def write_state(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self.state(), out, indent=2)
        tmp.replace(self.state_file)

    async def down(self, *, remove_workdir: bool = True, remove_containers: bool = True) -> None:
        """Stop agents, then the server (if owned); remove the state file and workdir.

        Stopping an agent leaves its containers running (as in production); ``down`` removes
        them too unless ``remove_containers`` is false.
        """
        runtime_devices = [d for d, h in self.devices.items() if h.runtime_enabled]
        await asyncio.gather(
            *(self.stop_device(d) for d in list(self.devices)), return_exceptions=True
        )
        if remove_containers and runtime_devices:
            await asyncio.to_thread(remove_device_containers, runtime_devices)
        if self.owns_server:
            await asyncio.to_thread(self.services.stop)
        if self.state_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
        if remove_workdir and self.owns_server:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def _pid_matches(pid: int, needle: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return needle in cmdline


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def read_state(state_file: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StackError(f"no local stack is running (no {state_file})") from None
    except ValueError as exc:
        raise StackError(f"{state_file} is not valid JSON: {exc}") from exc
    if data.get("version") != STATE_VERSION:
        raise StackError(f"{state_file}: unsupported state version {data.get('version')!r}")
    return data


def remove_device_containers(device_ids: list[str], podman: str = "podman") -> int:
    """Force-remove every container the agents of ``device_ids`` created; return how many."""
    from harmony_fleet.agent.runtime import LABEL_DEVICE

    removed = 0
    for device_id in device_ids:
        listed = subprocess.run(
            [podman, "ps", "--all", "--quiet", "--filter", f"label={LABEL_DEVICE}={device_id}"],
            capture_output=True, text=True, check=False,
        )
        ids = listed.stdout.split()
        if ids:
            subprocess.run([podman, "rm", "--force", "--time", "0", *ids],
                           capture_output=True, check=False)
            removed += len(ids)
    return removed


def down_from_state(state_file: Path, timeout: float = 15.0) -> list[str]:
    """Tear down a detached stack described by ``state_file``; return what was stopped."""
    state = read_state(state_file)
    stopped: list[str] = []
    targets = [
        (d.get("pid"), d["config_file"], f"agent {d['device_id']}") for d in state["devices"]
    ]
    targets += [(p.get("pid"), p["match"], p["name"]) for p in state.get("processes", [])]
    server = state["nats_server"]
    targets.append((server.get("pid"), server["config_file"], "nats-server"))
    for pid, needle, what in targets:
        if pid and _pid_matches(pid, needle):
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, timeout):
                os.kill(pid, signal.SIGKILL)
            stopped.append(what)
    runtime_devices = [d["device_id"] for d in state["devices"] if d.get("runtime_enabled")]
    if runtime_devices and shutil.which("podman"):
        count = remove_device_containers(runtime_devices)
        if count:
            stopped.append(f"{count} container(s)")
    state_file.unlink(missing_ok=True)
    shutil.rmtree(state["workdir"], ignore_errors=True)
    return stopped
