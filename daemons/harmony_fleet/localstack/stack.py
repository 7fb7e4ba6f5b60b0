"""The local stack: a real nats-server, the fleet buckets and N agents on this machine.

It is both the developer's playground (``fleet stack up``) and the integration-test fixture
(:mod:`harmony_fleet_harness.pytest_plugin`), so the demo and the tests cannot drift apart.

When ready it writes a *state file* (JSON, mode 0600) describing how to reach it::

    {"version": 1, "nats_url": "nats://127.0.0.1:41234",
     "connection": {"urls": [...], "auth": {"mode": "userpass", "user": "admin", ...}},
     "devices": [{"device_id": "local-0", "config_file": ..., "log_file": ..., "pid": ...}],
     ...}

``connection`` is a :class:`~harmony_fleet.bus.settings.NatsSettings` document: the Ansible
plugins and the ``fleet`` CLI read it directly (``connection_file`` / ``--connection-file``).
In callout mode it names the admin machine key file; in dev mode it holds the static admin
password itself, so the state file is the one place that secret is kept: what is shown on a
terminal is :func:`public_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nats.aio.client import Client as NatsClient
from pydantic import BaseModel, Field, ValidationError

from harmony_fleet.agent.app import Agent
from harmony_fleet.agent.config import AgentConfig
from harmony_fleet.agent.identity import DeviceIdInUse, HostLock, default_lock_dir
from harmony_fleet.bus import (
    CommandError,
    FleetCommandsClient,
    NatsSettings,
    connect,
    drain,
    ensure_buckets,
    provider_from_settings,
)
from harmony_fleet.bus.connection import keep_authenticated
from harmony_fleet.contracts import DEFAULT_FLEET_CAPACITY, validation_summary
from harmony_fleet.contracts.base import utcnow

from . import processes
from .errors import LocalStackError
from .files import write_private_file
from .nats_server import NatsServer
from .processes import Component, alive, spawn, start_time
from .services import AuthMode, FleetServices, start_services

log = logging.getLogger(__name__)

AgentMode = Literal["subprocess", "inprocess"]
STATE_VERSION = 1
#: the agent's module and console-script names: how its process is recognised
AGENT_PROGRAMS = ("harmony_fleet.agent.main", "fleet-agent")


class StackError(LocalStackError):
    """A stack cannot be started, found or stopped as asked."""


#: The local devices' workload policy: the agent's defaults, spelled out so the generated
#: config shows them (the demo needs no host path and no privileged port). A test or a
#: developer passes its own ``[policy]`` through ``add_device(extra_toml=...)``.
LOCAL_POLICY_TOML = (
    "\n[policy]\n"
    "# what workloads may touch on this device (README: the device's workload policy)\n"
    "host_paths = []            # no bind mounts; named volumes are always allowed\n"
    "privileged_ports = []      # host ports 1024-65535 only\n"
    'userns = "auto"            # container root is not host root (scripts/setup.sh adds the\n'
    "                           # subordinate ids podman needs)\n"
)


def _defines_policy(extra_toml: str) -> bool:
    try:
        return "policy" in tomllib.loads(extra_toml)
    except tomllib.TOMLDecodeError as exc:
        raise StackError(f"extra_toml is not valid TOML: {exc}") from exc


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
            "programs": list(AGENT_PROGRAMS),
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
    _admin_refreshers: set[asyncio.Task[None]] = field(
        default_factory=set, init=False, repr=False)

    # ---- construction ------------------------------------------------------------------
    @property
    def server(self) -> NatsServer:
        return self.services.server

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
        port: int | None = None,
        tls: bool = False,
        tls_sans: list[str] | tuple[str, ...] = (),
        cluster: int = 1,
        websocket: bool = False,
    ) -> LocalStack:
        """Start everything; return when every agent answers a ping.

        ``tls``: the stack serves TLS with a lab CA (see :mod:`.tls`; ``tls_sans`` are names
        the server certificate carries besides the defaults) and every client uses it.
        ``websocket``: the servers serve WebSocket too and the agents connect over it
        (``ws://``, ``wss://`` with ``tls``), as devices behind an HTTP proxy do.

        Without ``detach`` every process is bound to this one: they stop when it ends, however
        it ends (see :mod:`.processes`)."""
        ids = devices if isinstance(devices, list) else [f"{device_prefix}-{i}"
                                                         for i in range(devices)]
        for device_id in ids:  # before anything starts: one agent per device id
            ensure_device_id_free(device_id)
        # absolute: the processes are found again by the files their command lines name
        workdir = (workdir or Path(tempfile.mkdtemp(prefix="fleet-stack-"))).absolute()
        try:
            services = await asyncio.to_thread(
                functools.partial(start_services, workdir, auth=auth, detach=detach,
                                  token_lifetime_s=token_lifetime_s, port=port, tls=tls,
                                  tls_sans=tls_sans, cluster=cluster, websocket=websocket))
        except BaseException:  # start_services stopped what it started; its files go too
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        stack = cls(workdir, services, owns_server=True, state_file=state_file, detach=detach)
        try:
            await stack.ensure_buckets()
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

    @property
    def nats_urls(self) -> list[str]:
        """Every server's URL (one, or each member of a cluster): clients fail over."""
        return self.services.nats_urls

    def admin_settings(self, **overrides: Any) -> NatsSettings:
        """How an admin connects: the issuer's admin machine key (callout mode; the callout
        decides, as for any client), or the static admin user (dev mode)."""
        return NatsSettings.model_validate(
            {"urls": self.nats_urls, "auth": self._admin_auth(), "connect_attempts": 3,
             **self.services.tls_settings(), **overrides})

    def system_settings(self, **overrides: Any) -> NatsSettings:
        """The NATS system account (closing connections): the control side's alone."""
        doc = self.services.system_connection()
        if doc is None:
            raise StackError("this stack has no system account user")
        return NatsSettings.model_validate({**doc, "connect_attempts": 3, **overrides})

    async def admin_connect(self, name: str = "fleet-admin") -> NatsClient:
        """An admin connection that stays authenticated for as long as it is open (token
        credentials are refreshed and the connection re-authenticated, see
        :func:`~harmony_fleet.bus.connection.keep_authenticated`)."""
        settings = self.admin_settings()
        credentials = provider_from_settings(settings.auth)
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        nc = await connect(settings, name=name, credentials=credentials, closed_cb=on_closed)
        task = asyncio.create_task(keep_authenticated(nc, credentials, closed),
                                   name=f"{name}-credentials")
        # a reference until it ends: the event loop keeps only weak ones
        self._admin_refreshers.add(task)
        task.add_done_callback(self._admin_refreshers.discard)
        return nc

    async def ensure_buckets(self, capacity: int = DEFAULT_FLEET_CAPACITY) -> None:
        """The fleet buckets, sized for ``capacity`` devices (their byte limits follow)."""
        nc = await self.admin_connect("fleet-stack-setup")
        try:
            # replicated on every member of a cluster (R3 on three servers)
            await ensure_buckets(nc.jetstream(), replicas=len(self.nats_urls),
                                 capacity=capacity)
        finally:
            await drain(nc)

    # ---- agents ------------------------------------------------------------------------
    def _write_agent_config(
        self, device_id: str, labels: dict[str, str], runtime_enabled: bool, extra_toml: str,
        *, runtime: dict[str, Any] | None = None, agent: dict[str, Any] | None = None,
    ) -> Path:
        agent_dir = self.workdir / "agents" / device_id
        agent_dir.mkdir(parents=True, exist_ok=True)
        auth_toml = self._agent_auth(device_id, agent_dir)
        # a quick local loop: containers that die are noticed within ~2 s
        runtime_options = {"reconcile_interval_s": 2, "watch_heartbeat_s": 1,
                           "stop_timeout_s": 2, **(runtime or {})}
        label_items = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in labels.items())
        agent_options = {"heartbeat_interval_s": 5, **(agent or {})}
        config_file = agent_dir / "config.toml"
        config_file.write_text(
            "# Generated by the Harmony Fleet local stack (dev mode: shared user/password).\n"
            "[agent]\n"
            f"device_id = {json.dumps(device_id)}\n"
            f"runtime_enabled = {str(runtime_enabled).lower()}\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in agent_options.items())
            + f"labels = {{ {label_items} }}\n"
            # the sealing key lives with the rest of this agent's files (created on start)
            + f"sealing_key_file = {json.dumps(str(agent_dir / 'sealing-key'))}\n"
            "\n[nats]\n"
            f"urls = {json.dumps(self.services.agent_urls)}\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.services.tls_settings().items())
            +
            "\n[nats.auth]\n"
            + auth_toml
            + "\n[runtime]\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in runtime_options.items())
            + ("" if _defines_policy(extra_toml) else LOCAL_POLICY_TOML)
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
        agent: dict[str, Any] | None = None,
        extra_toml: str = "",
        agent_command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> DeviceHandle:
        """Start an agent for ``device_id``; with ``wait`` return once it answers a ping.

        ``extra_toml`` is appended to the generated config: more sections, e.g. ``[exec]``;
        a ``[policy]`` in it replaces the stack's :data:`LOCAL_POLICY_TOML`.

        ``agent_command`` (subprocess mode): the agent program to run instead of this
        interpreter's ``-m harmony_fleet.agent.main``, e.g. the ``fleet-agent`` of a venv
        installed as a device installs it (``--config FILE`` is appended); ``env``: variables
        added to its environment.
        """
        if device_id in self.devices:
            raise StackError(f"device {device_id} already exists in this stack")
        ensure_device_id_free(device_id)
        labels = dict(labels or {})
        config_file = await asyncio.to_thread(
            functools.partial(self._write_agent_config, runtime=runtime, agent=agent),
            device_id, labels, runtime_enabled, extra_toml,
        )
        handle = DeviceHandle(device_id, config_file, None, labels, runtime_enabled, mode)
        if mode == "subprocess":
            handle.log_file = config_file.parent / "agent.log"
            # Popen, not asyncio's: with --keep the agents outlive this event loop
            program = (list(agent_command) if agent_command
                       else [sys.executable, "-m", AGENT_PROGRAMS[0]])
            handle.process = spawn([*program, "--config", str(config_file)],
                                   handle.log_file, detach=self.detach, env=env)
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
            "connection": self.admin_connection(),
            **self.services.describe(),
            "workdir": str(self.workdir),
            # a foreground stack lives as long as the process that runs it (its owner)
            "owner": None if self.detach else {"pid": os.getpid(),
                                               "started": start_time(os.getpid())},
            # the first server (older readers know only this one) ...
            "nats_server": _server_doc(self.server),
            # ... and every server, the first included (one, or each member of a cluster)
            "nats_servers": [_server_doc(s) for s in self.services.servers],
            "devices": [h.describe() for h in self.devices.values()],
        }

    def admin_connection(self) -> dict[str, Any]:
        """The admin's connection document (a connection file's content; secrets included in
        dev mode: keep it in 0600 files only)."""
        return {"urls": self.nats_urls, **self.services.tls_settings(),
                "auth": self._admin_auth()}

    def _admin_auth(self) -> dict[str, Any]:
        """The admin's ``auth`` settings document (dev mode: with the password itself)."""
        issuer, admin = self.services.issuer, self.services.admin
        if issuer is not None:
            return {"mode": "zitadel", "issuer": issuer.url,
                    "key_file": str(issuer.admin_key_file), "project_id": issuer.project_id}
        if admin is None:
            raise StackError("this stack has neither an issuer nor a static admin")
        return {"mode": "userpass", "user": admin.user, "password": admin.password}

    def write_state(self) -> None:
        if self.state_file is not None:
            write_private_file(self.state_file, json.dumps(self.state(), indent=2))

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
            # and whatever runs from this workdir besides (a part restarted by hand)
            report = await asyncio.to_thread(processes.stop, stack_components(self.state()))
            for failure in report.failed:
                log.error("could not stop %s", failure)
        if self.state_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
        if remove_workdir and self.owns_server:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _server_doc(server: NatsServer) -> dict[str, Any]:
    return {"url": server.url, "pid": server.pid, "config_file": str(server.config_file),
            "log_file": str(server.log_file), "monitor_url": server.monitor_url,
            "programs": list(server.programs)}


def ensure_device_id_free(device_id: str, lock_dir: Path | None = None) -> None:
    """Refuse a device id that an agent on this machine runs already (another local stack, a
    real agent): two agents with one id would fight over the same containers."""
    lock = HostLock(lock_dir or default_lock_dir(), device_id)
    try:
        lock.acquire("fleet stack up (checking)")
    except DeviceIdInUse as exc:
        raise StackError(f"{exc}. Is another local stack running ('fleet stack status')? "
                         "Choose other ids with --device-prefix.") from None
    lock.release()


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


#: what an ``auth`` settings document may show: how to authenticate and where the secret
#: lives, never the secret (an allow list, so a field added later stays hidden by default)
PUBLIC_AUTH_FIELDS = frozenset({"mode", "user", "issuer", "key_file", "project_id",
                                "password_file", "token_file"})


def public_state(state: dict[str, Any]) -> dict[str, Any]:
    """The state document without its secrets (pure): what may be printed or logged.

    The one secret a state document holds is in ``connection.auth`` (the dev-mode admin
    password); everything else names files. The full document stays in the 0600 state file.
    """
    public = dict(state)
    connection = state.get("connection")
    if isinstance(connection, dict) and isinstance(connection.get("auth"), dict):
        auth = connection["auth"]
        hidden = sorted(set(auth) - PUBLIC_AUTH_FIELDS)
        shown = {k: v for k, v in auth.items() if k in PUBLIC_AUTH_FIELDS}
        if hidden:
            shown["secrets_in_state_file"] = hidden
        public["connection"] = {**connection, "auth": shown}
    return public


class _StateProcess(BaseModel):
    name: str
    pid: int | None = None
    match: str
    programs: list[str] = Field(default_factory=list)


class _StateServer(BaseModel):
    pid: int | None = None
    config_file: str
    programs: list[str] = Field(default_factory=list)
    url: str | None = None


class _StateDevice(BaseModel):
    device_id: str
    config_file: str
    pid: int | None = None
    mode: AgentMode = "subprocess"
    runtime_enabled: bool = False
    programs: list[str] = Field(default_factory=list)


class _StateOwner(BaseModel):
    pid: int
    started: int | None = None


class _StateShape(BaseModel):
    """What the commands that read a state file rely on (checked once, in :func:`read_state`;
    the document itself stays a dict: it is also the ``--json`` output)."""

    version: int
    workdir: str
    nats_server: _StateServer
    nats_servers: list[_StateServer] = Field(default_factory=list)  # absent before clusters
    devices: list[_StateDevice] = Field(default_factory=list)
    processes: list[_StateProcess] = Field(default_factory=list)
    owner: _StateOwner | None = None


def read_state(state_file: Path) -> dict[str, Any]:
    """The state document in ``state_file``, or :class:`StackError` saying why there is none
    that can be used (one line)."""
    try:
        data: Any = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StackError(f"no local stack is running (no {state_file})") from None
    except OSError as exc:
        raise StackError(f"cannot read {state_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StackError(f"{state_file} is not valid JSON ({exc}): remove it if no stack "
                         "runs") from None
    if not isinstance(data, dict):
        raise StackError(f"{state_file} is not a state file of the local stack: remove it if "
                         "no stack runs")
    if data.get("version") != STATE_VERSION:
        raise StackError(f"{state_file}: unsupported state version {data.get('version')!r}")
    try:
        _StateShape.model_validate(data)
    except ValidationError as exc:
        raise StackError(f"{state_file} is not a state file of the local stack "
                         f"({validation_summary(exc)}): remove it if no stack runs") from None
    return dict(data)


def stack_components(state: dict[str, Any]) -> list[list[Component]]:
    """The processes a state document names, in the order they are stopped (pure): the agents,
    then the services (last started first), then nats-server."""
    shape = _StateShape.model_validate(state)
    agents = [Component(f"agent {d.device_id}", d.pid, d.config_file, tuple(d.programs))
              for d in shape.devices if d.mode == "subprocess"]
    services = [Component(p.name, p.pid, p.match, tuple(p.programs))
                for p in reversed(shape.processes)]
    servers = shape.nats_servers or [shape.nats_server]
    return [agents, services,
            [Component("nats-server" if i == 0 else f"nats-server {i + 1}", s.pid,
                       s.config_file, tuple(s.programs)) for i, s in enumerate(servers)]]


#: what the stack cannot do without each of its services (status messages)
CONSEQUENCES = {
    "nats-server": "nothing can connect",
    "fleet-callout": "no device or admin can authenticate, and no report is written",
    "oidc-issuer": "no token can be obtained or renewed",
}


@dataclass(frozen=True)
class StackHealth:
    """What of a recorded stack runs: the processes of each component, and whether the
    process that runs a foreground stack (its owner) is still there (None: detached)."""

    running: dict[Component, list[int]]
    owner_alive: bool | None

    @property
    def anything_runs(self) -> bool:
        return bool(self.owner_alive) or any(self.running.values())

    def runs(self, name: str) -> bool:
        return any(pids for c, pids in self.running.items() if c.name == name)

    def problems(self, state_file: Path, state: dict[str, Any]) -> list[str]:
        """One line per problem (pure)."""
        if not self.anything_runs:
            return [f"the stack recorded in {state_file} is no longer running (its processes "
                    "are gone): 'fleet stack down' removes what is left of it"]
        found: list[str] = []
        owner = state.get("owner")
        if self.owner_alive is False and isinstance(owner, dict):
            found.append(f"the 'fleet stack up' process (pid {owner.get('pid')}) that ran this "
                         "stack is gone: stop what is left with 'fleet stack down'")
        for component, pids in self.running.items():
            if pids:
                continue
            why = CONSEQUENCES.get(component.name) or (
                "the cluster carries on while a majority of its servers runs"
                if component.name.startswith("nats-server ") else None)
            was = f" (pid {component.pid})" if component.pid else ""
            found.append(f"{component.name}{was} is not running" + (f": {why}" if why else ""))
        return found


def owner_alive(state: dict[str, Any]) -> bool | None:
    """Whether the process running a foreground stack still runs (None: a detached stack)."""
    owner = _StateShape.model_validate(state).owner
    if owner is None:
        return None
    return alive(owner.pid) and (owner.started is None or start_time(owner.pid) == owner.started)


def stack_health(state: dict[str, Any]) -> StackHealth:
    """Look at the process table for what a state document names."""
    components = [c for group in stack_components(state) for c in group]
    return StackHealth(processes.find(components), owner_alive(state))


def _remove_remains(state: dict[str, Any], state_file: Path) -> list[str]:
    """Remove what a stopped stack leaves: its containers, its state file and workdir."""
    removed: list[str] = []
    runtime_devices = [d["device_id"] for d in state["devices"] if d.get("runtime_enabled")]
    if runtime_devices and shutil.which("podman"):
        count = remove_device_containers(runtime_devices)
        if count:
            removed.append(f"{count} container(s)")
    state_file.unlink(missing_ok=True)
    shutil.rmtree(state["workdir"], ignore_errors=True)
    return removed


def clear_stale_state(state_file: Path) -> str | None:
    """Before a new stack records itself in ``state_file``: None if there is no state file;
    a note if it described a stack none of whose processes runs any more (then its remains
    are removed); :class:`StackError` if that stack still runs."""
    if not state_file.exists():
        return None
    state = read_state(state_file)
    health = stack_health(state)
    if health.anything_runs:
        running = [f"{c.name} (pid {', '.join(map(str, pids))})"
                   for c, pids in health.running.items() if pids]
        what = ", ".join(running) or "its 'fleet stack up' process"
        raise StackError(f"a local stack is running ({what}; state file {state_file}): stop "
                         "it with 'fleet stack down', or pass another --state-file")
    _remove_remains(state, state_file)
    return (f"the stack recorded in {state_file} (started {state.get('started_at', '?')}) is "
            "no longer running: removed what was left of it")


def remove_device_containers(device_ids: list[str], podman: str = "podman") -> int:
    """Force-remove every container the agents of ``device_ids`` created, then their podman
    secrets; return how many containers."""
    from harmony_fleet.agent.plan import leftover_secrets
    from harmony_fleet.agent.runtime import LABEL_DEVICE

    removed = 0
    secrets = subprocess.run([podman, "secret", "ls", "--noheading", "--format", "{{.Name}}"],
                             capture_output=True, text=True, check=False).stdout.split()
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
        owned = leftover_secrets(device_id, secrets, known=())
        if owned:
            subprocess.run([podman, "secret", "rm", *owned], capture_output=True, check=False)
    return removed


def down_from_state(state_file: Path, timeout: float = processes.STOP_TIMEOUT_S,
                    ) -> processes.StopReport:
    """Stop every process of the stack described by ``state_file`` (those it started and any
    started again from its files since) and remove its remains; what could not be stopped is
    in the report's ``failed``, and then the state file and workdir are kept (to try again)."""
    state = read_state(state_file)
    report = processes.stop(stack_components(state), timeout=timeout)
    if not report.failed:
        report.stopped += _remove_remains(state, state_file)
    return report
