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

Secrets (see :mod:`.sealing`)::

    {
      "services": [{"name": "web", "image": "registry.example.net/shop/web:1",
                    "secrets": ["db-password"]}],
      "registry_credentials": [{"registry": "registry.example.net", "username": "fleet",
                                "password_secret": "registry-password"}],
      "secrets": {"db-password": "v1:...", "registry-password": "v1:..."}
    }

``secrets`` maps a name to a value sealed to the receiving device; containers list the names
they get, as read-only files ``/run/secrets/<name>`` (podman secrets, never environment
variables: podman 4 shows those in ``podman inspect``). ``registry_credentials`` tell the
agent how to log in to a registry when it pulls; the password is one of the secrets. Every
referenced name must be defined.

Control planes write a :class:`ScoreTemplate` (the same shape without ``secrets``: the names
are referenced, the values come from elsewhere) and seal per device into a
:class:`PodmanScore`. The new fields are omitted from the JSON when empty, so scores without
secrets keep their bytes and spec hashes, and agents that predate secrets still read them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from .base import StrictWireModel, spec_hash
from .ids import DNS1123_LABEL_MAX, DNS1123_LABEL_PATTERN
from .sealing import MAX_ENVELOPE_CHARS, check_envelope

DEFAULT_INIT_CONTAINER_TIMEOUT_S: Final = 300
MAX_INIT_CONTAINER_TIMEOUT_S: Final = 24 * 3600
SCORE_VERSION: Final = 0

MAX_SECRETS: Final = 64
MAX_REGISTRY_CREDENTIALS: Final = 16
#: What replaces a sealed value wherever a score is shown (diffs, CLI output, logs).
REDACTED: Final = "<redacted>"
#: ... and a sealed value that differs from the one shown before it (a diff's "after").
REDACTED_CHANGED: Final = "<redacted, changed>"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMAGE = r"^[^\s]+$"
#: A secret's name is also its file name under /run/secrets and a part of the podman secret's
#: name (``fleet.<device>.<deployment>.<name>.<digest>``, which podman caps at 253 characters):
#: no dots, no slashes, at most 32 characters.
SECRET_NAME_MAX: Final = 32
SECRET_NAME_PATTERN: Final = r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,30}[A-Za-z0-9])?$"  # noqa: S105 (a pattern)
#: ``host`` or ``host:port``, as in an image reference (``registry.example.net:5000/app:1``).
REGISTRY_PATTERN: Final = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$"

ContainerName = Annotated[
    str, Field(pattern=DNS1123_LABEL_PATTERN, max_length=DNS1123_LABEL_MAX, min_length=1)
]
Image = Annotated[str, Field(pattern=_IMAGE, min_length=1, max_length=512)]
AbsolutePath = Annotated[str, Field(pattern=r"^/", min_length=1, max_length=4096)]
SecretName = Annotated[
    str, Field(pattern=SECRET_NAME_PATTERN, min_length=1, max_length=SECRET_NAME_MAX)
]
SealedValue = Annotated[
    str, Field(min_length=1, max_length=MAX_ENVELOPE_CHARS), AfterValidator(check_envelope)
]
Registry = Annotated[str, Field(pattern=REGISTRY_PATTERN, min_length=1, max_length=255)]


def image_registry(image: str) -> str | None:
    """The registry host of an image reference, or None for a short name.

    The rule podman and docker apply: the first path component names a registry when it
    contains a ``.`` or a ``:`` or is ``localhost`` (``127.0.0.1:5000/app:1`` ->
    ``127.0.0.1:5000``, ``docker.io/library/x`` -> ``docker.io``, ``app:1`` -> None).
    """
    first, sep, _rest = image.partition("/")
    if not sep:
        return None
    if "." in first or ":" in first or first == "localhost":
        return first
    return None


class _OmitEmpty(StrictWireModel):
    """Fields listed in ``_omit_when_empty`` are left out of the JSON while empty.

    Fields added after the first release are listed here: a score that does not use them
    serialises (and hashes) exactly as before, and agents that predate them (strict models,
    unknown fields are errors) still accept it.
    """

    _omit_when_empty: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self._omit_when_empty:
            if name in data and not data[name]:
                del data[name]
        return data


def _unique_names(names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"secret {name!r} is listed more than once")
        seen.add(name)
    return names


SecretNames = Annotated[
    list[SecretName],
    Field(max_length=MAX_SECRETS,
          description="Secrets of the score mounted read-only as /run/secrets/<name>"),
    AfterValidator(_unique_names),
]


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


class Service(_OmitEmpty):
    """A long-running container."""

    _omit_when_empty: ClassVar[tuple[str, ...]] = ("secrets",)

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
    secrets: SecretNames = Field(default_factory=list)

    _env = field_validator("env")(_check_env)

    def spec_hash(self) -> str:
        """Hash of everything that requires recreating the container when it changes."""
        return spec_hash(self)


class InitContainer(_OmitEmpty):
    """A run-to-completion container executed before the services."""

    _omit_when_empty: ClassVar[tuple[str, ...]] = ("secrets",)

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
    secrets: SecretNames = Field(default_factory=list)

    _env = field_validator("env")(_check_env)


class RegistryCredential(StrictWireModel):
    """How the agent logs in to ``registry`` to pull images from it."""

    registry: Registry = Field(description="host or host:port, as in the image references")
    username: str = Field(min_length=1, max_length=256)
    password_secret: SecretName = Field(description="name of the secret holding the password")


class ScoreTemplate(_OmitEmpty):
    """A workload as declared; secrets are referenced by name and sealed per device on write."""

    # A control plane turns it into one PodmanScore per device (the values sealed to that
    # device's key); the docstring above becomes the CRD's description of spec.score.

    _omit_when_empty: ClassVar[tuple[str, ...]] = ("registry_credentials",)

    version: Literal[0] = SCORE_VERSION
    services: list[Service] = Field(min_length=1, max_length=64)
    init_containers: list[InitContainer] = Field(default_factory=list, max_length=32)
    registry_credentials: list[RegistryCredential] = Field(
        default_factory=list, max_length=MAX_REGISTRY_CREDENTIALS,
        description="Logins for pulling images; each password is one of the secrets",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ScoreTemplate:
        seen: set[str] = set()
        for name in [s.name for s in self.services] + [c.name for c in self.init_containers]:
            if name in seen:
                raise ValueError(f"container name {name!r} is used more than once")
            seen.add(name)
        registries: set[str] = set()
        for cred in self.registry_credentials:
            if cred.registry in registries:
                raise ValueError(f"registry {cred.registry!r} has more than one credential")
            registries.add(cred.registry)
        return self

    def secret_references(self) -> Iterator[tuple[str, str]]:
        """``(where, secret name)`` for every use of a secret, in document order."""
        for service in self.services:
            for name in service.secrets:
                yield f"service {service.name}", name
        for init in self.init_containers:
            for name in init.secrets:
                yield f"init container {init.name}", name
        for cred in self.registry_credentials:
            yield f"registry credential {cred.registry}", cred.password_secret

    def check_references(self, defined: Iterable[str]) -> None:
        """Raise ValueError naming the first reference to a secret not in ``defined``."""
        known = set(defined)
        for where, name in self.secret_references():
            if name not in known:
                raise ValueError(f"{where} references secret {name!r}, which is not defined")

    def credential_for(self, image: str) -> RegistryCredential | None:
        registry = image_registry(image)
        return next((c for c in self.registry_credentials if c.registry == registry), None)

    def spec_hash(self) -> str:
        return spec_hash(self)


class PodmanScore(ScoreTemplate):
    """The desired-state value: what one deployment runs on one device (secrets sealed to it)."""

    _omit_when_empty: ClassVar[tuple[str, ...]] = ("registry_credentials", "secrets")

    secrets: dict[SecretName, SealedValue] = Field(
        default_factory=dict, max_length=MAX_SECRETS,
        description="name -> value sealed to the receiving device (harmony_fleet.contracts.sealing)",
    )

    @model_validator(mode="after")
    def _references_resolve(self) -> PodmanScore:
        self.check_references(self.secrets)
        return self

    def template(self) -> ScoreTemplate:
        """The same score without the sealed values."""
        return ScoreTemplate.model_validate(
            self.model_dump(mode="json", exclude={"secrets"}))


def redact_score(
    score: ScoreTemplate | Mapping[str, Any], *, changed: Iterable[str] = ()
) -> dict[str, Any]:
    """A copy of ``score`` fit to show (diffs, CLI output, logs): every value under
    ``secrets`` replaced by :data:`REDACTED` (:data:`REDACTED_CHANGED` for the names in
    ``changed``). Takes a model or a raw JSON object (what the bucket holds, valid or not);
    anything else under ``secrets`` is replaced whole."""
    doc = score.model_dump(mode="json") if isinstance(score, ScoreTemplate) else dict(score)
    if "secrets" in doc:
        secrets, marked = doc["secrets"], set(changed)
        doc["secrets"] = ({str(name): REDACTED_CHANGED if name in marked else REDACTED
                           for name in secrets}
                          if isinstance(secrets, Mapping) else REDACTED)
    return doc
