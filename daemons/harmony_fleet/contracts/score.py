"""The workload a device runs: the podman score, version 0.

JSON shape (snake_case on the wire and inside the ``Deployment`` CR's ``spec.score``)::

    {
      "version": 0,
      "services": [
        {"name": "web", "image": "localhost/demo:1", "command": ["httpd"], "args": ["-f"],
         "env": {"MODE": "prod"}, "ports": [{"container_port": 80, "host_port": 8080}],
         "volumes": [{"source": "/srv/web", "target": "/www", "read_only": true}],
         "restart_policy": "always"}
      ],
      "init_containers": [
        {"name": "migrate", "image": "localhost/demo:1", "args": ["migrate"], "timeout": 300}
      ]
    }

Init containers (Kubernetes semantics) run sequentially before any service, each to
completion; a non-zero exit or a timeout fails the deployment. They re-run on every reconcile
that needs a fresh service set, so they must be idempotent: that is the workload author's
contract. ``timeout`` is whole seconds (default 300). Payloads written before init containers
existed have no ``init_containers`` field and parse as an empty list.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import Field, field_validator, model_validator

from .base import StrictWireModel, spec_hash
from .ids import DNS1123_LABEL_MAX, DNS1123_LABEL_PATTERN

DEFAULT_INIT_CONTAINER_TIMEOUT_S: Final = 300
MAX_INIT_CONTAINER_TIMEOUT_S: Final = 24 * 3600
SCORE_VERSION: Final = 0

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMAGE = r"^[^\s]+$"

ContainerName = Annotated[
    str, Field(pattern=DNS1123_LABEL_PATTERN, max_length=DNS1123_LABEL_MAX, min_length=1)
]
Image = Annotated[str, Field(pattern=_IMAGE, min_length=1, max_length=512)]
AbsolutePath = Annotated[str, Field(pattern=r"^/", min_length=1, max_length=4096)]


class RestartPolicy(StrEnum):
    """podman's ``--restart`` values."""

    NO = "no"
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    UNLESS_STOPPED = "unless-stopped"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class PortMapping(StrictWireModel):
    container_port: int = Field(ge=1, le=65535)
    host_port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Protocol = Protocol.TCP
    host_ip: str | None = Field(default=None, max_length=64)


class VolumeMount(StrictWireModel):
    """``source`` is an absolute host path or a named podman volume."""

    source: str = Field(min_length=1, max_length=4096, pattern=r"^(/|[A-Za-z0-9][A-Za-z0-9_.-]*$)")
    target: AbsolutePath
    read_only: bool = False


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"environment variable name {name!r} is not valid")
    return env


class Service(StrictWireModel):
    """A long-running container."""

    name: ContainerName
    image: Image
    command: list[str] | None = Field(
        default=None, description="Overrides the image's entrypoint when set"
    )
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[PortMapping] = Field(default_factory=list)
    volumes: list[VolumeMount] = Field(default_factory=list)
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS

    _env = field_validator("env")(_check_env)

    def spec_hash(self) -> str:
        """Hash of everything that requires recreating the container when it changes."""
        return spec_hash(self)


class InitContainer(StrictWireModel):
    """A run-to-completion container executed before the services."""

    name: ContainerName
    image: Image
    command: list[str] | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    volumes: list[VolumeMount] = Field(default_factory=list)
    timeout: int = Field(
        default=DEFAULT_INIT_CONTAINER_TIMEOUT_S,
        ge=1,
        le=MAX_INIT_CONTAINER_TIMEOUT_S,
        description="Seconds to wait for the container to exit before killing it",
    )

    _env = field_validator("env")(_check_env)


class PodmanScore(StrictWireModel):
    """The desired-state value: what one deployment runs on one device."""

    version: Literal[0] = SCORE_VERSION
    services: list[Service] = Field(min_length=1, max_length=64)
    init_containers: list[InitContainer] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _unique_names(self) -> PodmanScore:
        seen: set[str] = set()
        for name in [s.name for s in self.services] + [c.name for c in self.init_containers]:
            if name in seen:
                raise ValueError(f"container name {name!r} is used more than once")
            seen.add(name)
        return self

    def spec_hash(self) -> str:
        return spec_hash(self)
