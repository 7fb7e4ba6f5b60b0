"""The container runtime behind the reconciler: a small interface and its podman implementation.

Why the podman CLI (with ``--format json``) and not its REST socket: the CLI is present
wherever podman is, needs no ``podman.socket`` unit (which is not running on every device, and
fails at boot on some), and its JSON output is stable across podman 4 and 5. The cost, one
process per call, is a few milliseconds: negligible next to pulling or starting a container,
and the reconciler only calls it when something has to change or on its periodic check.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from harmony_fleet.errors import FleetError

from .procs import kill_marked, pid_namespace, session_marker

log = logging.getLogger(__name__)

# Labels on every container the agent creates (the agent's memory across restarts).
LABEL_PREFIX = "io.nationtech.fleet"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"
LABEL_DEVICE = f"{LABEL_PREFIX}.device"
LABEL_DEPLOYMENT = f"{LABEL_PREFIX}.deployment"
LABEL_SERVICE = f"{LABEL_PREFIX}.service"
LABEL_INIT = f"{LABEL_PREFIX}.init"
LABEL_SPEC_HASH = f"{LABEL_PREFIX}.spec-hash"
LABEL_SECRET = f"{LABEL_PREFIX}.secret"


class ContainerRuntimeError(FleetError):
    """A runtime operation failed; ``message`` is fit for a deployment's state message."""


class ImagePullError(ContainerRuntimeError):
    pass


class PodmanTimeout(ContainerRuntimeError):
    """A podman command did not finish in time (it was killed)."""


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


class Userns(StrEnum):
    """The ``podman create --userns`` modes the agent uses (chosen by the device's policy)."""

    #: a private user namespace per container, carved by podman from the subordinate ids of
    #: user ``containers`` (/etc/subuid, /etc/subgid): the container's root is not host root
    AUTO = "auto"
    #: no user namespace: the container's root is the host's root
    HOST = "host"


#: The size of every ``--userns=auto`` namespace: all 16-bit ids (what images use, ``nobody``
#: included; containers-storage's default maximum). Naming it is not cosmetic: without a size,
#: podman sizes the namespace by scanning the image, and in podman 4.3 (Debian 12) that scan
#: takes storage.lock while holding layers.lock, the reverse of every other podman command, so
#: concurrent podman calls deadlock every podman on the device (containers/storage#1387,
#: podman#16062). Measured here: 4 concurrent create/start/wait/rm loops hung within 60 runs
#: without a size, and 5 loops ran 125 runs clean with it.
AUTO_USERNS_SIZE = 65536

_USERNS_FLAG = {Userns.AUTO: f"auto:size={AUTO_USERNS_SIZE}", Userns.HOST: "host"}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False
    #: podman's ``U`` option: on every start, hand the mounted tree to the container's (mapped)
    #: root, so a container in a user namespace can write what it is allowed to write
    chown: bool = False

    def flag(self) -> str:
        options = ("ro" if self.read_only else "rw") + (",U" if self.chown else "")
        return f"{self.source}:{self.target}:{options}"


@dataclass(frozen=True)
class SecretMount:
    """A podman secret mounted read-only into a container as ``/run/secrets/<target>``.

    A file, never an environment variable: podman 4 lists ``type=env`` secrets in plaintext in
    ``podman inspect`` (``Config.Env``); ``type=mount`` shows only the secret's name.
    """

    secret: str  # the podman secret's name
    target: str  # the file name under /run/secrets

    def flag(self) -> str:
        return f"{self.secret},type=mount,target={self.target}"


@dataclass(frozen=True)
class RegistryAuth:
    """A login for one pull; the password never appears in a repr, a log or an argv."""

    registry: str
    username: str
    password: bytes = field(repr=False)

    def authfile(self) -> bytes:
        """The ``--authfile`` document (containers-auth.json(5)) for this one registry."""
        token = base64.b64encode(self.username.encode() + b":" + self.password).decode()
        return json.dumps({"auths": {self.registry: {"auth": token}}}).encode()


#: Linux's limit on one argument or environment string of an exec, terminating NUL included
#: (MAX_ARG_STRLEN, 32 pages): podman's own argv, and the container's process, cannot have
#: a longer one ("Argument list too long").
MAX_ARG_STRLEN = 128 * 1024
#: The longest line of an env file podman 4.3 reads (a Go bufio.Scanner's 64 KiB buffer,
#: newline included): a longer one fails the create ("bufio.Scanner: token too long").
ENV_FILE_LINE_MAX = 64 * 1024 - 1


def env_file_can_hold(name: str, value: str) -> bool:
    """Whether podman reads ``name=value`` back from an env file exactly as given.

    podman's env files (pkg/env ParseFile, podman 4.3) have no quoting: a line is
    ``name=value`` taken literally up to its newline, so a value may hold anything but a
    newline, a carriage return at its very end (the line reader drops it) and NUL; and the line
    must fit the reader's buffer. Measured here: leading and trailing spaces, quotes, ``#``,
    ``=`` and an inner carriage return all come back as they were, and ``A=`` sets ``A`` to "".
    """
    line = f"{name}={value}"
    return ("\n" not in value and "\0" not in value and not value.endswith("\r")
            and len(line.encode()) <= ENV_FILE_LINE_MAX)


def argument_problem(value: str) -> str | None:
    """Why ``value`` cannot be one argument (or environment string) of an exec; None if it can."""
    if "\0" in value:
        return "holds a NUL byte, which no argument or environment variable can carry"
    size = len(value.encode())
    if size >= MAX_ARG_STRLEN:
        return (f"is {size} bytes; one argument or environment variable may have at most "
                f"{MAX_ARG_STRLEN - 1} (Linux's MAX_ARG_STRLEN)")
    return None


def env_delivery(env: Mapping[str, str]) -> tuple[bytes, list[str]]:
    """How ``env`` reaches podman: the env file's content, and ``--env`` arguments for the
    values an env file cannot hold (a newline in a certificate, say), which podman takes
    exactly from its argv. Whatever :func:`argument_problem` refuses was refused before."""
    lines, args = [], []
    for name, value in sorted(env.items()):
        if env_file_can_hold(name, value):
            lines.append(f"{name}={value}\n")
        else:
            args.append(f"{name}={value}")
    return "".join(lines).encode(), args


def entrypoint_argument(command: Sequence[str]) -> str:
    """``--entrypoint`` as one JSON argument (UTF-8, unescaped: as short as it can be)."""
    return json.dumps(list(command), ensure_ascii=False)


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
    secrets: Sequence[SecretMount] = ()
    #: ``--userns``; None leaves podman's default (containers.conf)
    userns: Userns | None = None


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
class ContainerEvent:
    """One line of ``podman events --format json`` about a container."""

    container: str  # its id
    name: str
    #: podman's event status: create, init, start, restart, died, cleanup, remove, ...
    status: str
    #: the container's labels (podman puts them in the event's ``Attributes``)
    labels: Mapping[str, str]


def parse_event(line: bytes) -> ContainerEvent | None:
    """A container event from one line of podman's JSON event stream (podman 4 and 5 use the
    same keys); None for anything else (another type, a line that is not an event)."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or str(doc.get("Type", "container")) != "container":
        return None
    container, status = doc.get("ID"), doc.get("Status")
    if not isinstance(container, str) or not container or not isinstance(status, str):
        return None
    attributes = doc.get("Attributes")
    labels = {str(k): str(v) for k, v in attributes.items()} \
        if isinstance(attributes, dict) else {}
    return ContainerEvent(container, str(doc.get("Name") or ""), status.lower(), labels)


@dataclass(frozen=True)
class Exited:
    exit_code: int
    container: str  # its id: the caller reads its output, then removes it


@dataclass(frozen=True)
class TimedOut:
    waited_s: float
    container: str  # its id: stopped, not removed yet (the caller reads its output first)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes
    truncated: bool
    timed_out: bool = False


class ContainerRuntime(Protocol):
    """What the reconciler and the commands need from a container engine.

    ``container`` arguments are container ids wherever the container came from a listing or a
    create: a name can be taken over between the listing and the action (a service recreated,
    an init container run again), an id never is. Names are given only where the name is the
    input (a user's request names a service; the agent resolves it once, then uses the id).
    """

    async def image_exists(self, image: str) -> bool: ...

    async def pull(
        self, image: str, *, auth: RegistryAuth | None = None, tls_verify: bool = True
    ) -> None: ...

    async def create(self, spec: ContainerSpec) -> str: ...
    async def start(self, container: str) -> None: ...
    async def stop(self, container: str, *, stop_timeout_s: int) -> None: ...
    async def remove(self, container: str, *, stop_timeout_s: int) -> None: ...
    async def inspect(self, container: str) -> ContainerInfo | None: ...
    async def list_managed(self, labels: Mapping[str, str]) -> list[ContainerInfo]: ...

    def logs(
        self, container: str, *, tail: int | None = None, since: str | None = None,
        follow: bool = False,
    ) -> AsyncGenerator[bytes, None]: ...

    async def exec(
        self, container: str, argv: Sequence[str], *, timeout_s: float, output_cap: int
    ) -> ExecResult: ...

    async def run_to_completion(
        self, spec: ContainerSpec, timeout_s: float, *, stop_timeout_s: int
    ) -> Exited | TimedOut: ...

    def events(self, label: str, value: str, *, since: float) -> AsyncIterator[ContainerEvent]: ...
    async def version(self) -> str | None: ...
    async def create_secret(self, name: str, value: bytes, labels: Mapping[str, str]) -> None: ...
    async def list_secrets(self) -> list[str]: ...
    async def remove_secret(self, name: str) -> None: ...


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
        self, *args: str, timeout: float | None = 120.0, check: bool = True,
        stdin: bytes | None = None,
    ) -> CommandResult:
        # every way podman can fail is a ContainerRuntimeError, so the reconciler handles (and
        # remembers) a hung or missing podman like any failed podman command
        try:
            proc = await asyncio.create_subprocess_exec(
                self.podman, *args,
                stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument
            raise ContainerRuntimeError(f"cannot run podman {args[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise PodmanTimeout(
                    f"podman {args[0]} did not finish within {timeout:g}s") from exc
            raise
        result = CommandResult(proc.returncode or 0, out, err)
        if check and result.returncode != 0:
            raise ContainerRuntimeError(f"podman {args[0]} failed: {result.error_text()}")
        return result

    async def version(self) -> str | None:
        """podman's client version, or None if podman is missing or broken."""
        try:
            result = await self._run("version", "--format", "{{.Client.Version}}", timeout=15)
        except ContainerRuntimeError as exc:
            log.warning("podman version failed: %s", exc)
            return None
        return result.stdout.decode().strip() or None

    async def image_exists(self, image: str) -> bool:
        result = await self._run("image", "exists", image, check=False)
        return result.returncode == 0

    async def pull(
        self, image: str, *, auth: RegistryAuth | None = None, tls_verify: bool = True
    ) -> None:
        """Pull ``image``; with ``auth``, through a temporary authfile that only this pull
        reads (mode 0600 in a private directory, deleted as soon as podman returns), so the
        password is in no argv, no environment and no lasting file."""
        args = ["pull", "--quiet"]
        if not tls_verify:
            args.append("--tls-verify=false")
        with tempfile.TemporaryDirectory(prefix="fleet-pull-") as private:  # mode 0700
            if auth is not None:
                path = os.path.join(private, "auth.json")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(auth.authfile())
                args += ["--authfile", path]
            result = await self._run(*args, image, timeout=900, check=False)
        if result.returncode != 0:
            raise ImagePullError(f"cannot pull image {image}: {result.error_text()}")

    async def create_secret(self, name: str, value: bytes, labels: Mapping[str, str]) -> None:
        """``podman secret create --driver file <name> -``: the value goes through stdin.

        An existing secret of that name is left as it is: names carry a digest of the sealed
        value, so the same name means the same value.
        """
        args = ["secret", "create", "--driver", "file"]
        for key, label in sorted(labels.items()):
            args += ["--label", f"{key}={label}"]
        result = await self._run(*args, name, "-", stdin=value, check=False)
        if result.returncode != 0 and "in use" not in result.error_text():
            raise ContainerRuntimeError(f"cannot create secret {name}: {result.error_text()}")

    async def list_secrets(self) -> list[str]:
        """The names of every podman secret (podman 4.3 has no label filter for secrets)."""
        result = await self._run("secret", "ls", "--noheading", "--format", "{{.Name}}")
        return result.stdout.decode().split()

    async def remove_secret(self, name: str) -> None:
        result = await self._run("secret", "rm", name, check=False)
        if result.returncode != 0 and "no such secret" not in result.error_text():
            raise ContainerRuntimeError(f"cannot remove secret {name}: {result.error_text()}")

    async def create(self, spec: ContainerSpec) -> str:
        """``podman create`` ``spec``; its id. The environment goes in an env file (mode 0600,
        in a private directory, deleted once podman has read it), so values are neither in
        podman's argv, which every user of the device can read in /proc, nor limited by it;
        what an env file cannot hold goes as ``--env`` (see :func:`env_delivery`)."""
        env_file, env_args = env_delivery(spec.env)
        args = ["create", "--name", spec.name, "--restart", spec.restart_policy,
                "--stop-timeout", str(spec.stop_timeout_s)]
        for key, value in sorted(spec.labels.items()):
            args += ["--label", f"{key}={value}"]
        for entry in env_args:
            args += ["--env", entry]
        for port in spec.ports:
            args += ["--publish", port.flag()]
        for mount in spec.mounts:
            args += ["--volume", mount.flag()]
        for secret in spec.secrets:
            args += ["--secret", secret.flag()]
        if spec.userns is not None:
            args += ["--userns", _USERNS_FLAG[spec.userns]]
        if spec.command is not None:
            args += ["--entrypoint", entrypoint_argument(spec.command)]
        with tempfile.TemporaryDirectory(prefix="fleet-env-") as private:  # mode 0700
            if env_file:
                path = os.path.join(private, "env")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(env_file)
                args += ["--env-file", path]
            result = await self._run(*args, spec.image, *spec.args, check=False)
        if result.returncode != 0:
            raise ContainerRuntimeError(f"cannot create container {spec.name}: {result.error_text()}")
        return result.stdout.decode().strip()

    async def start(self, container: str) -> None:
        """Start ``container``; done, too, if it runs when podman refuses (podman's restart
        policy or someone on the device started it meanwhile)."""
        result = await self._run("start", container, check=False)
        if result.returncode == 0:
            return
        info = await self.inspect(container)
        if info is None or not info.running:
            raise ContainerRuntimeError(
                f"cannot start container {info.name if info else container}: "
                f"{result.error_text()}")

    async def stop(self, container: str, *, stop_timeout_s: int) -> None:
        """Stop ``container``: SIGTERM (or its stop signal), SIGKILL after ``stop_timeout_s``."""
        result = await self._run("stop", "--ignore", "--time", str(stop_timeout_s), container,
                                 timeout=stop_timeout_s + 60, check=False)
        if result.returncode != 0:
            raise ContainerRuntimeError(
                f"cannot stop container {container}: {result.error_text()}")

    async def remove(self, container: str, *, stop_timeout_s: int) -> None:
        """Remove ``container``, stopping it first: SIGTERM (or its stop signal), then SIGKILL
        after ``stop_timeout_s``; gone already is fine."""
        result = await self._run("rm", "--force", "--ignore", "--time", str(stop_timeout_s),
                                 container, timeout=stop_timeout_s + 60, check=False)
        if result.returncode != 0 and await self._exists(container):
            raise ContainerRuntimeError(
                f"cannot remove container {container}: {result.error_text()}")
        # else removed. podman 4.3 with --userns=auto: an rm right after the container exits
        # can race podman's own cleanup of the container's /dev/shm and fail ("unlinkat
        # .../userdata/shm: device or resource busy") although the container and its storage
        # are gone (measured here: 1 run in 4; never without a user namespace)

    async def _exists(self, container: str) -> bool:
        result = await self._run("container", "exists", container, check=False)
        return result.returncode != 1  # 0: exists; 1: does not; anything else: cannot tell

    async def inspect(self, container: str) -> ContainerInfo | None:
        result = await self._run("container", "inspect", container, check=False)
        if result.returncode != 0:
            return None
        docs = json.loads(result.stdout or b"[]")
        return _info_from_inspect(docs[0]) if docs else None

    async def list_managed(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        args = ["ps", "--all", "--format", "json"]
        for key, value in sorted(labels.items()):
            args += ["--filter", f"label={key}={value}"]
        result = await self._run(*args)
        docs = json.loads(result.stdout or b"[]")
        infos = [_info_from_ps(doc) for doc in docs]
        # podman 4.3's ps has no restart count ("Restarts" is null): a service podman restarted
        # would look as if nothing had happened, so ask inspect (one call for all of them). The
        # state and exit code are taken from that same inspect: ps and inspect are two reads, and
        # a restart by podman between them (the count already up, the state still "running"
        # from before the crash) would be reported as a finished restart
        unknown = [info.id for info, doc in zip(infos, docs, strict=True)
                   if doc.get("Restarts") is None]
        if unknown:
            fresh = await self._states(unknown)
            infos = [dataclasses.replace(info, **fresh[info.id]) if info.id in fresh else info
                     for info in infos]
        return infos

    async def _states(self, containers: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Container id -> its state, exit code and podman's restart count, read at once
        (containers gone meanwhile are left out)."""
        result = await self._run("container", "inspect", "--format",
                                 "{{.Id}} {{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}",
                                 *containers, check=False)
        states: dict[str, dict[str, Any]] = {}
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            fields = line.split()
            if len(fields) != 4 or not fields[3].isdigit():
                continue
            container, state, exit_code, count = fields
            states[container] = {
                "state": state.lower(), "restart_count": int(count),
                "exit_code": int(exit_code) if exit_code.lstrip("-").isdigit() else None}
        return states

    async def logs(
        self, container: str, *, tail: int | None = None, since: str | None = None,
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
            self.podman, *args, container,
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
                raise ContainerRuntimeError(f"podman logs {container} exited with {code}")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def exec(
        self, container: str, argv: Sequence[str], *, timeout_s: float, output_cap: int
    ) -> ExecResult:
        """Run ``argv`` in ``container``; after ``timeout_s`` the command is killed inside the
        container, every process of it (see :mod:`.procs`), not only podman's client."""
        session = secrets.token_hex(8)
        proc = await asyncio.create_subprocess_exec(
            self.podman, "exec", "--env", session_marker(session).decode(), container, *argv,
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
            killed = await self._end_exec_session(container, session)
            log.info("exec in %s timed out after %gs: %d process(es) killed in the container",
                     container[:12], timeout_s, killed)
            if killed:  # its session is over: the client ends by itself, output flushed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), _EXEC_CLIENT_GRACE_S)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return ExecResult(-1, bytes(kept), truncated, timed_out=True)
        return ExecResult(code, bytes(kept), truncated)

    async def _end_exec_session(self, container: str, session: str) -> int:
        """Kill every process of exec ``session`` in ``container``; how many."""
        result = await self._run("container", "inspect", "--format", "{{.State.Pid}}",
                                 container, check=False)
        text = result.stdout.decode().strip()
        namespace = pid_namespace(int(text)) if text.isdigit() and int(text) > 0 else None
        if namespace is None:
            return 0  # the container is not running: neither is anything in it
        killed = 0
        marker = session_marker(session)
        for _round in range(_EXEC_KILL_ROUNDS):  # a process may fork while its siblings die
            found = await asyncio.to_thread(kill_marked, namespace, marker)
            if not found:
                break
            killed += found
            await asyncio.sleep(0.05)
        else:
            log.warning("exec session in %s: processes still appearing after %d rounds of "
                        "kills", container[:12], _EXEC_KILL_ROUNDS)
        return killed

    async def events(
        self, label: str, value: str, *, since: float
    ) -> AsyncGenerator[ContainerEvent, None]:
        """Follow podman's events about the containers labelled ``label=value``, from the unix
        time ``since`` on (events between ``since`` and the moment podman starts reading its
        event log are replayed, so a caller that lists the containers after taking ``since``
        misses nothing). Ends with :class:`ContainerRuntimeError` when podman stops.

        One label only: podman ORs several ``label`` filters.
        """
        args = ["events", "--format", "json", "--since", f"{since:.6f}",
                "--filter", "type=container", "--filter", f"label={label}={value}"]
        try:
            proc = await asyncio.create_subprocess_exec(
                self.podman, *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                limit=_EVENT_LINE_LIMIT,
            )
        except OSError as exc:
            raise ContainerRuntimeError(f"cannot run podman events: {exc}") from exc
        assert proc.stdout is not None
        assert proc.stderr is not None
        errors = asyncio.create_task(_tail(proc.stderr))
        try:
            while line := await proc.stdout.readline():
                event = parse_event(line)
                if event is not None:
                    yield event
            code = await proc.wait()
            said = (await errors).decode("utf-8", "replace").strip().splitlines()
            raise ContainerRuntimeError(f"podman events exited with status {code}"
                                        + (f": {said[-1]}" if said else ""))
        except ValueError as exc:  # a line longer than the limit: podman is not well
            raise ContainerRuntimeError(f"podman events: {exc}") from exc
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            errors.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await errors

    async def run_to_completion(
        self, spec: ContainerSpec, timeout_s: float, *, stop_timeout_s: int
    ) -> Exited | TimedOut:
        """Create and start ``spec`` and wait for it to exit; on timeout stop it.

        Either way the container is left for the caller to read its output and remove it.
        """
        # a leftover of an interrupted earlier run: here the name is the input (the planner
        # removes the leftovers it listed, by id; this covers one created since)
        await self.remove(spec.name, stop_timeout_s=stop_timeout_s)
        container = await self.create(spec)
        await self.start(container)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await self._run("wait", container, timeout=timeout_s, check=False)
        except PodmanTimeout:
            waited = round(loop.time() - started, 3)
            await self.stop(container, stop_timeout_s=stop_timeout_s)
            return TimedOut(waited, container)
        info = await self.inspect(container)
        if info is not None and info.running:
            # podman wait can return while inspect still reads "running": look once more
            await asyncio.sleep(0.2)
            info = await self.inspect(container)
        if info is not None and info.exit_code is not None and not info.running:
            return Exited(info.exit_code, container)
        text = result.stdout.decode().strip()
        if result.returncode == 0 and text.lstrip("-").isdigit():
            return Exited(int(text), container)
        raise ContainerRuntimeError(f"cannot tell how {spec.name} ended: {result.error_text()}")


#: Rounds of "find the exec session's processes, kill them" before giving up (a fork bomb).
_EXEC_KILL_ROUNDS = 20
#: After its session's processes are killed, podman's exec client ends by itself this soon.
_EXEC_CLIENT_GRACE_S = 2.0

#: Longest event line read (one container's labels; podman's lines are far shorter).
_EVENT_LINE_LIMIT = 1024 * 1024


async def _tail(stream: asyncio.StreamReader, keep: int = 4096) -> bytes:
    """Read ``stream`` to its end, keeping its last ``keep`` bytes (podman's last words)."""
    kept = b""
    while chunk := await stream.read(16 * 1024):
        kept = (kept + chunk)[-keep:]
    return kept


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
