"""The container runtime behind the reconciler: a small interface and its podman implementation.

Why the podman CLI (with ``--format json``) and not its REST socket: the CLI is present
wherever podman is, needs no ``podman.socket`` unit (which is not running on every device, and
fails at boot on some), and its JSON output is stable across podman 4 and 5. The cost, one
process per call, is a few milliseconds: negligible next to pulling or starting a container,
and the reconciler only calls it when something has to change or on its periodic check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Labels on every container the agent creates (the agent's memory across restarts).
LABEL_PREFIX = "io.nationtech.fleet"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"
LABEL_DEVICE = f"{LABEL_PREFIX}.device"
LABEL_DEPLOYMENT = f"{LABEL_PREFIX}.deployment"
LABEL_SERVICE = f"{LABEL_PREFIX}.service"
LABEL_INIT = f"{LABEL_PREFIX}.init"
LABEL_SPEC_HASH = f"{LABEL_PREFIX}.spec-hash"


class ContainerRuntimeError(Exception):
    """A runtime operation failed; ``message`` is fit for a deployment's state message."""


class ImagePullError(ContainerRuntimeError):
    pass


class ContainerNotFound(ContainerRuntimeError):
    pass


@dataclass(frozen=True)
class Port:
    container_port: int
    host_port: int | None = None
    protocol: str = "tcp"
    host_ip: str | None = None

    def flag(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        if self.host_port is not None:
            return f"{host}{self.host_port}:{self.container_port}/{self.protocol}"
        if self.host_ip:
            return f"{host}:{self.container_port}/{self.protocol}"
        return f"{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False

    def flag(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything ``podman create`` is told; built by the reconciler from a score."""

    name: str
    image: str
    labels: Mapping[str, str]
    command: Sequence[str] | None = None
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ports: Sequence[Port] = ()
    mounts: Sequence[Mount] = ()
    restart_policy: str = "no"
    stop_timeout_s: int = 10
    #: run-to-completion containers only: how long to wait for the exit
    timeout_s: float | None = None


@dataclass(frozen=True)
class ContainerInfo:
    """What the reconciler needs to know about an existing container."""

    id: str
    name: str
    state: str  # created, running, exited, stopped, paused, ...
    labels: Mapping[str, str]
    exit_code: int | None = None
    restart_count: int = 0

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class Exited:
    exit_code: int


@dataclass(frozen=True)
class TimedOut:
    waited_s: float


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes
    truncated: bool
    timed_out: bool = False


class ContainerRuntime(Protocol):
    async def image_exists(self, image: str) -> bool: ...
    async def pull(self, image: str) -> None: ...
    async def create(self, spec: ContainerSpec) -> str: ...
    async def start(self, name: str) -> None: ...
    async def stop(self, name: str, timeout_s: int = 10) -> None: ...
    async def remove(self, name: str) -> None: ...
    async def inspect(self, name: str) -> ContainerInfo | None: ...
    async def list_managed(self, labels: Mapping[str, str]) -> list[ContainerInfo]: ...
    def logs(
        self, name: str, *, tail: int | None = None, since: str | None = None,
        follow: bool = False,
    ) -> AsyncGenerator[bytes, None]: ...
    async def exec(
        self, name: str, argv: Sequence[str], *, timeout_s: float, output_cap: int
    ) -> ExecResult: ...
    async def run_to_completion(self, spec: ContainerSpec, timeout_s: float) -> Exited | TimedOut: ...
    async def version(self) -> str | None: ...


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    def error_text(self) -> str:
        text = (self.stderr or self.stdout).decode("utf-8", "replace").strip()
        # podman prefixes "Error: "; keep the last line, which is the cause
        last = text.splitlines()[-1] if text else f"exit status {self.returncode}"
        return last.removeprefix("Error: ")


class PodmanRuntime:
    """:class:`ContainerRuntime` over the podman CLI."""

    def __init__(self, podman: str = "podman", *, env: Mapping[str, str] | None = None) -> None:
        self.podman = shutil.which(podman) or podman
        self._env = dict(os.environ if env is None else env)

    async def _run(
        self, *args: str, timeout: float | None = 120.0, check: bool = True
    ) -> CommandResult:
        proc = await asyncio.create_subprocess_exec(
            self.podman, *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        result = CommandResult(proc.returncode or 0, out, err)
        if check and result.returncode != 0:
            raise ContainerRuntimeError(f"podman {args[0]} failed: {result.error_text()}")
        return result

    async def version(self) -> str | None:
        """podman's client version, or None if podman is missing or broken."""
        try:
            result = await self._run("version", "--format", "{{.Client.Version}}", timeout=15)
        except (OSError, ContainerRuntimeError, TimeoutError) as exc:
            log.warning("podman version failed: %s", exc)
            return None
        return result.stdout.decode().strip() or None

    async def image_exists(self, image: str) -> bool:
        result = await self._run("image", "exists", image, check=False)
        return result.returncode == 0

    async def pull(self, image: str) -> None:
        result = await self._run("pull", "--quiet", image, timeout=900, check=False)
        if result.returncode != 0:
            raise ImagePullError(f"cannot pull image {image}: {result.error_text()}")

    async def create(self, spec: ContainerSpec) -> str:
        args = ["create", "--name", spec.name, "--restart", spec.restart_policy,
                "--stop-timeout", str(spec.stop_timeout_s)]
        for key, value in sorted(spec.labels.items()):
            args += ["--label", f"{key}={value}"]
        for key, value in sorted(spec.env.items()):
            args += ["--env", f"{key}={value}"]
        for port in spec.ports:
            args += ["--publish", port.flag()]
        for mount in spec.mounts:
            args += ["--volume", mount.flag()]
        if spec.command is not None:
            args += ["--entrypoint", json.dumps(list(spec.command))]
        args += [spec.image, *spec.args]
        result = await self._run(*args, check=False)
        if result.returncode != 0:
            raise ContainerRuntimeError(f"cannot create container {spec.name}: {result.error_text()}")
        return result.stdout.decode().strip()

    async def start(self, name: str) -> None:
        result = await self._run("start", name, check=False)
        if result.returncode != 0:
            raise ContainerRuntimeError(f"cannot start container {name}: {result.error_text()}")

    async def stop(self, name: str, timeout_s: int = 10) -> None:
        await self._run("stop", "--time", str(timeout_s), name, timeout=timeout_s + 30,
                        check=False)

    async def remove(self, name: str) -> None:
        result = await self._run("rm", "--force", "--ignore", "--time", "5", name, timeout=60,
                                 check=False)
        if result.returncode != 0:
            raise ContainerRuntimeError(f"cannot remove container {name}: {result.error_text()}")

    async def inspect(self, name: str) -> ContainerInfo | None:
        result = await self._run("container", "inspect", name, check=False)
        if result.returncode != 0:
            return None
        docs = json.loads(result.stdout or b"[]")
        return _info_from_inspect(docs[0]) if docs else None

    async def list_managed(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        args = ["ps", "--all", "--format", "json"]
        for key, value in sorted(labels.items()):
            args += ["--filter", f"label={key}={value}"]
        result = await self._run(*args)
        return [_info_from_ps(doc) for doc in json.loads(result.stdout or b"[]")]

    async def logs(
        self, name: str, *, tail: int | None = None, since: str | None = None,
        follow: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        args = ["logs"]
        if tail is not None:
            args += ["--tail", str(tail)]
        if since:
            args += ["--since", since]
        if follow:
            args.append("--follow")
        proc = await asyncio.create_subprocess_exec(
            self.podman, *args, name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
        )
        assert proc.stdout is not None
        try:
            while True:
                chunk = await proc.stdout.read(16 * 1024)
                if not chunk:
                    break
                yield chunk
            code = await proc.wait()
            if code != 0:
                raise ContainerRuntimeError(f"podman logs {name} exited with {code}")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def exec(
        self, name: str, argv: Sequence[str], *, timeout_s: float, output_cap: int
    ) -> ExecResult:
        proc = await asyncio.create_subprocess_exec(
            self.podman, "exec", name, *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
        )
        assert proc.stdout is not None
        stream = proc.stdout
        kept = bytearray()
        truncated = False

        async def collect() -> None:
            nonlocal truncated
            while chunk := await stream.read(16 * 1024):
                room = output_cap - len(kept)
                if len(chunk) > room:
                    truncated = True
                kept.extend(chunk[: max(room, 0)])

        try:
            await asyncio.wait_for(collect(), timeout_s)
            code = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return ExecResult(-1, bytes(kept), truncated, timed_out=True)
        return ExecResult(code, bytes(kept), truncated)

    async def run_to_completion(self, spec: ContainerSpec, timeout_s: float) -> Exited | TimedOut:
        """Create and start ``spec`` and wait for it to exit; on timeout kill and remove it.

        The caller removes the container after an exit (it may want its logs first).
        """
        await self.remove(spec.name)  # a leftover of an interrupted earlier run
        await self.create(spec)
        await self.start(spec.name)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await self._run("wait", spec.name, timeout=timeout_s, check=False)
        except TimeoutError:
            await self.remove(spec.name)
            return TimedOut(round(loop.time() - started, 3))
        info = await self.inspect(spec.name)
        if info is not None and info.running:
            # podman wait can return while inspect still reads "running": look once more
            await asyncio.sleep(0.2)
            info = await self.inspect(spec.name)
        if info is not None and info.exit_code is not None and not info.running:
            return Exited(info.exit_code)
        text = result.stdout.decode().strip()
        if result.returncode == 0 and text.lstrip("-").isdigit():
            return Exited(int(text))
        raise ContainerRuntimeError(f"cannot tell how {spec.name} ended: {result.error_text()}")


def _info_from_inspect(doc: Mapping[str, Any]) -> ContainerInfo:
    state = doc.get("State") or {}
    config = doc.get("Config") or {}
    return ContainerInfo(
        id=str(doc.get("Id", "")),
        name=str(doc.get("Name", "")).lstrip("/"),
        state=str(state.get("Status", "unknown")).lower(),
        labels=dict(config.get("Labels") or {}),
        exit_code=state.get("ExitCode"),
        restart_count=int(doc.get("RestartCount") or 0),
    )


def _info_from_ps(doc: Mapping[str, Any]) -> ContainerInfo:
    names = doc.get("Names") or [""]
    return ContainerInfo(
        id=str(doc.get("Id", "")),
        name=str(names[0]),
        state=str(doc.get("State", "unknown")).lower(),
        labels=dict(doc.get("Labels") or {}),
        exit_code=doc.get("ExitCode"),
        restart_count=int(doc.get("Restarts") or 0),
    )
