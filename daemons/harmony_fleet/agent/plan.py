"""Pure reconcile planning: what should run (a score) versus what runs (container list).

No I/O here: the reconciler feeds in the decoded desired state and podman's container list
and gets back what to do. Names and labels are deterministic, so the agent finds (adopts) its
containers after a restart instead of recreating them.

Container names are ``<device>.<deployment>.<service>`` for services and
``<device>.<deployment>.init.<name>`` for init containers. Dots cannot occur in device ids,
deployment tokens or container names (DNS-1123 labels), so the two forms never collide, and
the device id keeps several agents sharing one podman (the local stack) apart.

A service's hash covers the service *and* the deployment's init containers: changing one
service recreates that service only; changing an init container recreates every service
(the init containers are what prepares them, and they re-run before a fresh service set).
Secrets a container uses count as part of it: the hash covers a digest of each sealed value,
so a changed secret recreates the services that read it.

Secrets become podman secrets named after the device, the deployment and a digest of the
*sealed* value (never of the plaintext, which a short password would let anyone who lists the
secrets brute-force). A new value is a new podman secret; secrets no container of the
deployment uses any more are removed after each apply.

Every hash also covers the device policy's user namespace mode, so changing it recreates the
containers; ``host`` (no user namespace, what podman did before the policy existed) leaves the
hash as it was, so a device that opts out does not recreate anything.

Bind-mount sources are given as the policy check resolved them (``host_paths``): what was
checked is what is mounted.

What podman reports about a container is read through :func:`condition_of`: a container in the
middle of a transition (stopping, being removed, between init and start, its exit not yet
recorded) is waited for, never started, recreated or reported as failed; the deployment is left
alone until podman settles, and the event that ends the transition (or the periodic pass) brings
the next plan. Not forever: one that stays in transition longer than the runtime's
``transition_timeout_s`` is removed by force (``stuck``) and the score applied again.
The agent starts only containers nobody started: restarting a service that ran and exited is
podman's business (its restart policy), and the agent reports what it sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from pydantic import ValidationError

from harmony_fleet.contracts import (
    InitContainer,
    PodmanScore,
    SealingError,
    Service,
    VolumeMount,
    canonical_json,
    open_sealed,
    spec_hash,
    validation_summary,
)
from harmony_fleet.contracts.sealing import envelope_digest
from harmony_fleet.purecrypto import X25519PrivateKey

from .policy import DEFAULT_USERNS
from .runtime import (
    LABEL_DEPLOYMENT,
    LABEL_DEVICE,
    LABEL_INIT,
    LABEL_MANAGED,
    LABEL_SECRET,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    ContainerInfo,
    ContainerSpec,
    Mount,
    Port,
    SecretMount,
    Userns,
    argument_problem,
    entrypoint_argument,
)

#: Prefix of every podman secret the agent creates (see :func:`podman_secret_name`).
SECRET_PREFIX: Final = "fleet"  # noqa: S105 (a name prefix)

#: Restart policies under which a stopped service is a fault (podman should have restarted it).
_KEEP_RUNNING = frozenset({"always", "unless-stopped"})


class Condition(StrEnum):
    """What the agent may do about a container, read from the state podman reports."""

    #: running: nothing to do
    RUNNING = "running"
    #: created and never started (or put back there by a restart podman could not finish):
    #: nobody else will start it, so the agent does
    NOT_STARTED = "not-started"
    #: ran and exited, and podman has recorded how: its restart policy decides what happens next
    EXITED = "exited"
    #: paused by someone on the device: left alone, reported
    PAUSED = "paused"
    #: podman is acting on it right now: wait, do not start, recreate or report it as failed
    IN_TRANSITION = "in-transition"
    #: podman cannot tell (``unknown``), or a state this agent does not know: left alone, reported
    UNKNOWN = "unknown"


#: podman's container states (libpod ``define.ContainerStatus``, podman 4 and 5, as ``ps`` and
#: ``inspect`` spell them) and the Docker-compatible names some podman outputs use.
_CONDITIONS: Final[Mapping[str, Condition]] = {
    "running": Condition.RUNNING,
    # "created" is libpod's Configured: storage is set up, the OCI runtime has not seen it
    "created": Condition.NOT_STARTED,
    "configured": Condition.NOT_STARTED,
    "exited": Condition.EXITED,
    "paused": Condition.PAUSED,
    # created in the OCI runtime, not yet started: the inside of a podman start or restart
    "initialized": Condition.IN_TRANSITION,
    # the process is gone but podman has not read its exit code yet (conmon's exit file)
    "stopped": Condition.IN_TRANSITION,
    "stopping": Condition.IN_TRANSITION,
    "removing": Condition.IN_TRANSITION,
    "restarting": Condition.IN_TRANSITION,
    "unknown": Condition.UNKNOWN,
    "dead": Condition.UNKNOWN,
}


def condition_of(state: str) -> Condition:
    """What a podman container state means for the agent (any string; case-insensitive)."""
    return _CONDITIONS.get(state.strip().lower(), Condition.UNKNOWN)


def service_container_name(device_id: str, deployment: str, service: str) -> str:
    return f"{device_id}.{deployment}.{service}"


def init_container_name(device_id: str, deployment: str, name: str) -> str:
    return f"{device_id}.{deployment}.init.{name}"


def device_labels(device_id: str) -> dict[str, str]:
    """The label filter that finds every container this agent manages."""
    return {LABEL_MANAGED: "true", LABEL_DEVICE: device_id}


_SHORT_HASH_CHARS: Final = 12


def _short_hash(*parts: str) -> str:
    return hashlib.sha256(canonical_json(list(parts))).hexdigest()[:_SHORT_HASH_CHARS]


def device_secret_prefix(device_id: str) -> str:
    """What the names of every podman secret of this agent start with."""
    return f"{SECRET_PREFIX}-{_short_hash(device_id)}-"


def deployment_secret_prefix(device_id: str, deployment: str) -> str:
    """What the names of every podman secret of one deployment start with."""
    return f"{device_secret_prefix(device_id)}{_short_hash(device_id, deployment)}-"


def podman_secret_name(device_id: str, deployment: str, envelope: str) -> str:
    """The podman secret holding the value sealed as ``envelope`` for ``deployment``.

    podman 4.3 allows 64 characters, too few for the ids themselves (a deployment token alone
    may have 127), so the name is ``fleet-<device hash>-<deployment hash>-<envelope digest>``
    (48 characters) and the readable ids are labels (``podman secret inspect``). The secret's
    own name needs no place: the envelope is bound to it, so its digest differs per name.
    """
    return f"{deployment_secret_prefix(device_id, deployment)}{envelope_digest(envelope)}"


def deployment_secrets(device_id: str, deployment: str, names: Iterable[str]) -> list[str]:
    """The podman secrets of one deployment among ``names``."""
    prefix = deployment_secret_prefix(device_id, deployment)
    return sorted(n for n in names if n.startswith(prefix))


def leftover_secrets(device_id: str, names: Iterable[str], known: Iterable[str]) -> list[str]:
    """This agent's podman secrets that belong to none of the ``known`` deployments."""
    mine = device_secret_prefix(device_id)
    owned = {deployment_secret_prefix(device_id, token) for token in known}
    prefix_chars = len(mine) + _SHORT_HASH_CHARS + 1
    return sorted(n for n in names if n.startswith(mine) and n[:prefix_chars] not in owned)


def secret_labels(device_id: str, deployment: str, name: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_DEVICE: device_id, LABEL_DEPLOYMENT: deployment,
            LABEL_SECRET: name}


def unopenable_secret(score: PodmanScore, deployment: str, key: X25519PrivateKey | None) -> str | None:
    """Why one of the score's secrets cannot be used on this device (None: all open).

    Every sealed value is opened (and the plaintext dropped) before anything is created, so a
    wrong key or a tampered value fails the deployment with nothing half-done.
    """
    if not score.secrets:
        return None
    if key is None:
        return "the workload has secrets but this agent has no sealing key"
    for name, envelope in sorted(score.secrets.items()):
        try:
            open_sealed(key, deployment, name, envelope)
        except SealingError as exc:
            return f"secret {name!r}: {exc}"
    return None


#: How much of a failed init container's output its deployment's state message quotes: the
#: last lines, where the cause usually is, bounded so the message stays far below the state
#: report's limit (contracts.MAX_STATE_MESSAGE_BYTES) whatever the workload printed.
INIT_OUTPUT_LINES: Final = 10
INIT_OUTPUT_BYTES: Final = 1024
_CUT_MARK: Final = "[...]"


def output_tail(raw: bytes, *, lines: int = INIT_OUTPUT_LINES,
                max_bytes: int = INIT_OUTPUT_BYTES) -> str:
    """The end of a container's output, fit for a state message: its last ``lines`` lines, at
    most ``max_bytes`` bytes of UTF-8 (cut at the front, on a character boundary, and marked),
    control characters other than newline and tab replaced (a terminal escape in a workload's
    output must not reach a dashboard or a terminal as one)."""
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    text = "".join(c if c in "\n\t" or c.isprintable() else "\ufffd" for c in text)
    kept = text.strip("\n").split("\n")[-lines:] if text.strip() else []
    tail = "\n".join(kept)
    data = tail.encode()
    if len(data) <= max_bytes:
        return tail
    room = max_bytes - len(_CUT_MARK.encode())
    return _CUT_MARK + data[len(data) - room:].decode("utf-8", "ignore")


def init_failure(what: str, output: str) -> str:
    """The state message of a failed init container: what happened, then what it last said."""
    return f"{what}; its last output:\n{output}" if output else what


def pull_failure(error: str, registry: str | None, has_credentials: bool) -> str:
    """The state message of a failed pull, with a hint when a login was probably missing."""
    refused = any(word in error.lower()
                  for word in ("unauthorized", "authentication required", "denied"))
    if refused and not has_credentials:
        where = f"for {registry}" if registry else "(the image names no registry)"
        return f"{error} (the workload has no registry_credentials {where})"
    return error


#: How many fields :func:`unpassable_fields` names before it only counts the rest.
_MAX_FIELD_PROBLEMS: Final = 10


def unpassable_fields(score: PodmanScore) -> list[str]:
    """The fields of ``score`` podman cannot be given, each with where and why (empty: none).

    Every argument of ``podman create`` and of the container's own process is one exec string,
    which Linux caps at 128 KiB and which cannot hold a NUL byte: an arg, a command element,
    the command as podman's one ``--entrypoint`` argument, an environment variable (with its
    name), a mount path. The environment itself goes through an env file, so its total size
    is not an argument's (:func:`.runtime.env_delivery`).
    """
    problems: list[str] = []
    groups: tuple[tuple[str, Sequence[Service | InitContainer]], ...] = (
        ("services", score.services), ("init_containers", score.init_containers))
    for kind, containers in groups:
        for i, container in enumerate(containers):
            where = f"{kind}[{i}]"
            fields: list[tuple[str, str]] = []
            if container.command is not None:
                fields += [(f"{where}.command[{j}]", part)
                           for j, part in enumerate(container.command)]
            fields += [(f"{where}.args[{j}]", arg) for j, arg in enumerate(container.args)]
            fields += [(f"{where}.env.{name} (as {name}=...)", f"{name}={value}")
                       for name, value in sorted(container.env.items())]
            for j, volume in enumerate(container.volumes):
                fields += [(f"{where}.volumes[{j}].source", volume.source),
                           (f"{where}.volumes[{j}].target", volume.target)]
            found = [f"{field} {why}" for field, value in fields
                     if (why := argument_problem(value)) is not None]
            if container.command is not None and not any(".command[" in f for f in found):
                why = argument_problem(entrypoint_argument(container.command))
                if why is not None:
                    found.append(f"{where}.command (podman's --entrypoint, as JSON) {why}")
            problems += found
    if len(problems) > _MAX_FIELD_PROBLEMS:
        left = len(problems) - _MAX_FIELD_PROBLEMS
        problems = [*problems[:_MAX_FIELD_PROBLEMS], f"and {left} more"]
    return problems


@dataclass(frozen=True)
class Desired:
    """A decoded desired-state value: a score, or why it could not be used."""

    deployment: str
    revision: int
    score: PodmanScore | None = None
    error: str | None = None
    score_hash: str | None = None


def decode_desired(
    deployment: str, value: bytes, revision: int, max_bytes: int,
    *, sealing_key: X25519PrivateKey | None = None,
) -> Desired:
    """Validate a desired-state value; never raises (a bad value becomes ``error``).

    With secrets in the score, each must open with ``sealing_key`` for this deployment.
    """
    if len(value) > max_bytes:
        return Desired(deployment, revision,
                       error=f"desired state is {len(value)} bytes; this device accepts at most "
                             f"{max_bytes}")
    try:
        score = PodmanScore.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]["type"] if exc.errors() else ""
        if first in ("json_invalid", "json_type"):
            return Desired(deployment, revision, error=f"desired state is not valid JSON: "
                           f"{exc.errors()[0]['msg']}")
        return Desired(deployment, revision,
                       error=f"invalid workload: {validation_summary(exc)}")
    unpassable = unpassable_fields(score)
    if unpassable:  # refused before anything is pulled or created
        return Desired(deployment, revision,
                       error=f"cannot be given to podman: {'; '.join(unpassable)}",
                       score_hash=score.spec_hash())
    problem = unopenable_secret(score, deployment, sealing_key)
    if problem is not None:
        return Desired(deployment, revision, error=problem, score_hash=score.spec_hash())
    return Desired(deployment, revision, score=score, score_hash=score.spec_hash())


def _with_userns(content: dict[str, object], userns: Userns) -> dict[str, object]:
    # host is what podman did before the policy existed: leave those hashes unchanged
    return content if userns is Userns.HOST else {**content, "userns": userns.value}


def service_hash(
    service: Service, init_containers: Sequence[InitContainer],
    secrets: Mapping[str, str] | None = None, *, userns: Userns = DEFAULT_USERNS,
) -> str:
    """What decides whether a service's container is still right (its spec-hash label)."""
    doc: dict[str, object] = {
        "service": service.model_dump(mode="json"),
        "init_containers": [c.model_dump(mode="json") for c in init_containers],
    }
    used = sorted({*service.secrets, *(n for c in init_containers for n in c.secrets)})
    if used:  # absent without secrets: hashes from before secrets existed stay valid
        values = secrets or {}
        doc["secrets"] = {n: envelope_digest(values[n]) for n in used}
    return spec_hash(_with_userns(doc, userns))


def _secret_mounts(
    device_id: str, deployment: str, names: Iterable[str], secrets: Mapping[str, str] | None,
) -> tuple[SecretMount, ...]:
    values = secrets or {}
    return tuple(SecretMount(podman_secret_name(device_id, deployment, values[n]), n)
                 for n in names)


def init_hash(init: InitContainer, *, userns: Userns = DEFAULT_USERNS) -> str:
    if userns is Userns.HOST:
        return spec_hash(init)  # as before the policy existed
    return spec_hash({"init_container": init.model_dump(mode="json"), "userns": userns.value})


def _mounts(
    volumes: Iterable[VolumeMount], userns: Userns, host_paths: Mapping[str, str]
) -> tuple[Mount, ...]:
    # in a user namespace the container's root owns nothing on the host: writable mounts are
    # handed to its ids (podman's U) or it could not write them (policy.py explains)
    chown = userns is Userns.AUTO
    return tuple(
        Mount(host_paths.get(v.source, v.source), v.target, v.read_only,
              chown=chown and not v.read_only)
        for v in volumes
    )


def service_spec(
    device_id: str, deployment: str, service: Service, init_containers: Sequence[InitContainer],
    *, stop_timeout_s: int = 10, secrets: Mapping[str, str] | None = None,
    userns: Userns = DEFAULT_USERNS, host_paths: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """``secrets``: the score's sealed values (name -> envelope)."""
    return ContainerSpec(
        name=service_container_name(device_id, deployment, service.name),
        image=service.image,
        labels={
            **device_labels(device_id),
            LABEL_DEPLOYMENT: deployment,
            LABEL_SERVICE: service.name,
            LABEL_SPEC_HASH: service_hash(service, init_containers, secrets, userns=userns),
        },
        command=service.command,
        args=tuple(service.args),
        env=dict(service.env),
        ports=tuple(Port(p.container_port, p.host_port, p.protocol.value, p.host_ip)
                    for p in service.ports),
        mounts=_mounts(service.volumes, userns, host_paths or {}),
        restart_policy=service.restart_policy.value,
        stop_timeout_s=stop_timeout_s,
        secrets=_secret_mounts(device_id, deployment, service.secrets, secrets),
        userns=userns,
    )


def init_spec(
    device_id: str, deployment: str, init: InitContainer,
    *, stop_timeout_s: int = 10, secrets: Mapping[str, str] | None = None,
    userns: Userns = DEFAULT_USERNS, host_paths: Mapping[str, str] | None = None,
) -> ContainerSpec:
    return ContainerSpec(
        name=init_container_name(device_id, deployment, init.name),
        image=init.image,
        labels={
            **device_labels(device_id),
            LABEL_DEPLOYMENT: deployment,
            LABEL_INIT: init.name,
            LABEL_SPEC_HASH: init_hash(init, userns=userns),
        },
        command=init.command,
        args=tuple(init.args),
        env=dict(init.env),
        mounts=_mounts(init.volumes, userns, host_paths or {}),
        restart_policy="no",  # run to completion: never restarted, whatever the score says
        stop_timeout_s=stop_timeout_s,
        timeout_s=float(init.timeout),
        secrets=_secret_mounts(device_id, deployment, init.secrets, secrets),
        userns=userns,
    )


def group_by_deployment(containers: Iterable[ContainerInfo]) -> dict[str, list[ContainerInfo]]:
    groups: dict[str, list[ContainerInfo]] = {}
    for info in containers:
        deployment = info.labels.get(LABEL_DEPLOYMENT)
        if deployment:
            groups.setdefault(deployment, []).append(info)
    return groups


@dataclass
class DeploymentPlan:
    """What to do for one deployment; empty lists everywhere means "already converged"."""

    deployment: str
    create: list[ContainerSpec] = field(default_factory=list)
    #: existing containers to remove first: outdated (recreated), unknown, duplicates, init leftovers
    remove: list[ContainerInfo] = field(default_factory=list)
    #: services created but never started (see :class:`Condition`)
    start: list[ContainerInfo] = field(default_factory=list)
    init: list[ContainerSpec] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    #: podman secrets the containers to create need: podman name -> secret name in the score
    secrets: dict[str, str] = field(default_factory=dict)
    #: podman secrets of every container the deployment keeps (the rest may be removed)
    keep_secrets: frozenset[str] = frozenset()
    #: containers in transition: while there are any, nothing else is planned (wait for podman)
    waiting: list[ContainerInfo] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """Nothing to do and nothing to wait for: the containers are the score's."""
        return not (self.create or self.remove or self.start or self.waiting)


def plan_deployment(
    device_id: str, score: PodmanScore, deployment: str, actual: Sequence[ContainerInfo],
    *, stop_timeout_s: int = 10, userns: Userns = DEFAULT_USERNS,
    host_paths: Mapping[str, str] | None = None, stuck: Collection[str] = (),
) -> DeploymentPlan:
    """What to do so ``actual`` runs ``score``. ``userns`` and ``host_paths`` (bind-mount
    source -> resolved path) come from the device's policy check. ``stuck``: ids of containers
    podman has kept in a transition too long; they are removed (by force, the runtime's
    removal ends in SIGKILL) instead of waited for, and the score is applied again."""
    plan = DeploymentPlan(deployment)
    wanted = {
        s.name: service_spec(device_id, deployment, s, score.init_containers,
                             stop_timeout_s=stop_timeout_s, secrets=score.secrets,
                             userns=userns, host_paths=host_paths)
        for s in score.services
    }
    plan.keep_secrets = frozenset(m.secret for spec in wanted.values() for m in spec.secrets)
    moving = [c for c in sorted(actual, key=lambda c: c.name)
              if condition_of(c.state) is Condition.IN_TRANSITION]
    plan.waiting = [c for c in moving if c.id not in stuck]
    if plan.waiting:
        # podman is acting on a container of this deployment: whatever it ends in (running,
        # exited, gone) decides the plan; acting now could start a container that is stopping
        # or reuse the name of one that is being removed
        return plan
    plan.remove = [c for c in moving if c.id in stuck]
    seen: set[str] = set()
    for info in sorted(actual, key=lambda c: c.name):
        if info.id in stuck and info in moving:
            continue
        if info.labels.get(LABEL_INIT):
            plan.remove.append(info)  # an init container left by an interrupted run
            continue
        name = info.labels.get(LABEL_SERVICE, "")
        spec = wanted.get(name)
        if (spec is None or name in seen or info.name != spec.name
                or info.labels.get(LABEL_SPEC_HASH) != spec.labels[LABEL_SPEC_HASH]):
            plan.remove.append(info)
            continue
        seen.add(name)
        # only what nobody started: a service that ran and exited is its restart policy's
        # (podman's) to restart, and starting it here would race podman doing so
        if condition_of(info.state) is Condition.NOT_STARTED:
            plan.start.append(info)
    plan.create = [spec for name, spec in wanted.items() if name not in seen]
    if plan.create:
        plan.init = [init_spec(device_id, deployment, c, stop_timeout_s=stop_timeout_s,
                               secrets=score.secrets, userns=userns, host_paths=host_paths)
                     for c in score.init_containers]
    images = [s.image for s in plan.create] + [s.image for s in plan.init]
    plan.images = list(dict.fromkeys(images))
    plan.secrets = {m.secret: m.target for spec in plan.init + plan.create for m in spec.secrets}
    return plan


def stale_secrets(existing: Iterable[str], keep: Iterable[str]) -> list[str]:
    """The podman secrets of a deployment that no container of it will use."""
    kept = set(keep)
    return sorted(name for name in existing if name not in kept)


@dataclass(frozen=True)
class Health:
    """How a converged deployment's services are doing."""

    #: why it is not healthy, in score order (empty and nothing waited for: Running)
    problems: tuple[str, ...] = ()
    #: services whose container is in transition: neither healthy nor failed yet
    waiting: tuple[str, ...] = ()


def service_health(score: PodmanScore, actual: Sequence[ContainerInfo]) -> Health:
    """What the services of ``score`` look like in ``actual`` (podman's view)."""
    by_service = {c.labels.get(LABEL_SERVICE): c for c in actual if not c.labels.get(LABEL_INIT)}
    problems: list[str] = []
    waiting: list[str] = []
    for service in score.services:
        info = by_service.get(service.name)
        if info is None:
            problems.append(f"service {service.name} has no container")
            continue
        condition = condition_of(info.state)
        if condition is Condition.RUNNING:
            continue
        if condition is Condition.IN_TRANSITION:
            waiting.append(service.name)
        elif condition is Condition.EXITED:
            if info.exit_code == 0 and service.restart_policy.value not in _KEEP_RUNNING:
                continue  # a one-shot service that completed
            problems.append(f"service {service.name} exited with code {info.exit_code}")
        else:
            problems.append(f"service {service.name} is {info.state}")
    return Health(tuple(problems), tuple(waiting))


def orphans(
    desired: Mapping[str, object], actual_by_deployment: Mapping[str, Sequence[ContainerInfo]]
) -> dict[str, list[ContainerInfo]]:
    """Containers of deployments that are no longer desired (their key was deleted)."""
    return {d: list(cs) for d, cs in actual_by_deployment.items() if d not in desired}


@dataclass(frozen=True)
class FailedApply:
    """An apply (pull, init containers, create, start) that failed, and why."""

    revision: int
    message: str


class FailedApplies:
    """The retry rule, in one place: when a deployment whose apply failed is attempted again.

    An apply that failed is remembered with the revision of the desired-state value it was
    for. While remembered, the agent changes none of that deployment's containers: no periodic
    pass, container event, watch reset or disappearing container brings another attempt (each
    would pull, run the init containers, or recreate the services again: a loop). It is
    attempted again when

    * its key gets a new revision: a changed score, or the same score written again, which is
      how to ask for a retry (nothing in the fleet rewrites an unchanged value on its own: the
      operator and the ``fleet_deployment`` module compare before they write);
    * the agent restarts (this memory is the process's);
    * never otherwise.

    It is forgotten when the deployment turns out converged after all (its containers are the
    score's: podman or someone on the device completed what failed) and when its key is
    deleted. Pure bookkeeping: the reconciler asks, records and reports.
    """

    def __init__(self) -> None:
        self._failed: dict[str, FailedApply] = {}

    def record(self, deployment: str, revision: int, message: str) -> None:
        self._failed[deployment] = FailedApply(revision, message)

    def blocking(self, deployment: str, revision: int) -> FailedApply | None:
        """The failure that forbids applying ``revision`` now (None: go ahead)."""
        failed = self._failed.get(deployment)
        return failed if failed is not None and failed.revision == revision else None

    def converged(self, deployment: str) -> None:
        self._failed.pop(deployment, None)

    def keep_only(self, deployments: Iterable[str]) -> None:
        """Forget the failures of deployments whose keys are gone."""
        kept = set(deployments)
        for deployment in [d for d in self._failed if d not in kept]:
            del self._failed[deployment]

    def __contains__(self, deployment: object) -> bool:
        return deployment in self._failed
