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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from harmony_fleet.contracts import (
    InitContainer,
    PodmanScore,
    Service,
    VolumeMount,
    spec_hash,
    validation_summary,
)

from .runtime import (
    LABEL_DEPLOYMENT,
    LABEL_DEVICE,
    LABEL_INIT,
    LABEL_MANAGED,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    ContainerInfo,
    ContainerSpec,
    Mount,
    Port,
)

#: Restart policies under which a stopped service is a fault (podman should have restarted it).
_KEEP_RUNNING = frozenset({"always", "unless-stopped"})


def service_container_name(device_id: str, deployment: str, service: str) -> str:
    return f"{device_id}.{deployment}.{service}"


def init_container_name(device_id: str, deployment: str, name: str) -> str:
    return f"{device_id}.{deployment}.init.{name}"


def device_labels(device_id: str) -> dict[str, str]:
    """The label filter that finds every container this agent manages."""
    return {LABEL_MANAGED: "true", LABEL_DEVICE: device_id}


@dataclass(frozen=True)
class Desired:
    """A decoded desired-state value: a score, or why it could not be used."""

    deployment: str
    revision: int
    score: PodmanScore | None = None
    error: str | None = None
    score_hash: str | None = None


def decode_desired(deployment: str, value: bytes, revision: int, max_bytes: int) -> Desired:
    """Validate a desired-state value; never raises (a bad value becomes ``error``)."""
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
    return Desired(deployment, revision, score=score, score_hash=score.spec_hash())


def service_hash(service: Service, init_containers: Sequence[InitContainer]) -> str:
    return spec_hash({
        "service": service.model_dump(mode="json"),
        "init_containers": [c.model_dump(mode="json") for c in init_containers],
    })


def _mounts(volumes: Iterable[VolumeMount]) -> tuple[Mount, ...]:
    return tuple(Mount(v.source, v.target, v.read_only) for v in volumes)


def service_spec(
    device_id: str, deployment: str, service: Service, init_containers: Sequence[InitContainer],
    *, stop_timeout_s: int = 10,
) -> ContainerSpec:
    return ContainerSpec(
        name=service_container_name(device_id, deployment, service.name),
        image=service.image,
        labels={
            **device_labels(device_id),
            LABEL_DEPLOYMENT: deployment,
            LABEL_SERVICE: service.name,
            LABEL_SPEC_HASH: service_hash(service, init_containers),
        },
        command=service.command,
        args=tuple(service.args),
        env=dict(service.env),
        ports=tuple(Port(p.container_port, p.host_port, p.protocol.value, p.host_ip)
                    for p in service.ports),
        mounts=_mounts(service.volumes),
        restart_policy=service.restart_policy.value,
        stop_timeout_s=stop_timeout_s,
    )


def init_spec(device_id: str, deployment: str, init: InitContainer) -> ContainerSpec:
    return ContainerSpec(
        name=init_container_name(device_id, deployment, init.name),
        image=init.image,
        labels={
            **device_labels(device_id),
            LABEL_DEPLOYMENT: deployment,
            LABEL_INIT: init.name,
            LABEL_SPEC_HASH: spec_hash(init),
        },
        command=init.command,
        args=tuple(init.args),
        env=dict(init.env),
        mounts=_mounts(init.volumes),
        restart_policy="no",  # run to completion: never restarted, whatever the score says
        stop_timeout_s=2,
        timeout_s=float(init.timeout),
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
    #: stopped services whose restart policy says they should run
    start: list[ContainerInfo] = field(default_factory=list)
    init: list[ContainerSpec] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return not (self.create or self.remove or self.start)


def plan_deployment(
    device_id: str, score: PodmanScore, deployment: str, actual: Sequence[ContainerInfo],
    *, stop_timeout_s: int = 10,
) -> DeploymentPlan:
    plan = DeploymentPlan(deployment)
    wanted = {
        s.name: service_spec(device_id, deployment, s, score.init_containers,
                             stop_timeout_s=stop_timeout_s)
        for s in score.services
    }
    seen: set[str] = set()
    for info in sorted(actual, key=lambda c: c.name):
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
        never_started = info.state in ("created", "configured", "initialized")
        if never_started or (not info.running and info.state != "paused"
                             and spec.restart_policy in _KEEP_RUNNING):
            plan.start.append(info)
    plan.create = [spec for name, spec in wanted.items() if name not in seen]
    if plan.create:
        plan.init = [init_spec(device_id, deployment, c) for c in score.init_containers]
    images = [s.image for s in plan.create] + [s.image for s in plan.init]
    plan.images = list(dict.fromkeys(images))
    return plan


def service_problems(
    score: PodmanScore, deployment: str, actual: Sequence[ContainerInfo]
) -> list[str]:
    """Why a converged deployment is not healthy (empty: Running)."""
    by_service = {c.labels.get(LABEL_SERVICE): c for c in actual if not c.labels.get(LABEL_INIT)}
    problems = []
    for service in score.services:
        info = by_service.get(service.name)
        if info is None:
            problems.append(f"service {service.name} has no container")
        elif info.running:
            continue
        elif info.state in ("exited", "stopped") and info.exit_code == 0 and \
                service.restart_policy.value not in _KEEP_RUNNING:
            continue  # a one-shot service that completed
        elif info.state in ("exited", "stopped"):
            problems.append(f"service {service.name} exited with code {info.exit_code}")
        else:
            problems.append(f"service {service.name} is {info.state}")
    return problems


def orphans(
    desired: Mapping[str, object], actual_by_deployment: Mapping[str, Sequence[ContainerInfo]]
) -> dict[str, list[ContainerInfo]]:
    """Containers of deployments that are no longer desired (their key was deleted)."""
    return {d: list(cs) for d, cs in actual_by_deployment.items() if d not in desired}
