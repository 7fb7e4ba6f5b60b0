"""Kubernetes custom resources, group ``fleet.nationtech.io``, version ``v1alpha1``.

The pydantic models here are the single source of the CRD schemas: :func:`crd_manifests`
renders them as ``apiextensions.k8s.io/v1`` manifests (structural OpenAPI v3 schemas with
validation), kept in ``manifests/crds/`` and checked for staleness by the test suite
(regenerate with ``fleet crds --write``).

* ``Deployment`` (namespaced, short name ``fleetdep``): ``spec.targetSelector`` (a Kubernetes
  LabelSelector), ``spec.score`` (:class:`~.score.ScoreTemplate`, snake_case like on the wire),
  ``spec.secrets`` (values from Kubernetes Secrets of the same namespace, which the operator
  seals per device), ``spec.rollout`` (:class:`Rollout`); ``status.aggregate``,
  ``status.rollout`` (:class:`RolloutStatus`), conditions and ``observedGeneration``.
* ``Device`` (cluster-scoped, short name ``fleetdev``): created by the operator from
  ``device-info``; labels are the agent's routing labels; ``spec.inventory``;
  ``status.online`` / ``lastSeen`` / ``agentVersion``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from harmony_fleet.errors import FleetError

from .ids import DNS1123_LABEL_MAX, DNS1123_LABEL_PATTERN
from .info import Inventory, validate_label_key, validate_label_value
from .score import ScoreTemplate, SecretName

_DNS1123_SUBDOMAIN_PATTERN: Final = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
GROUP: Final = "fleet.nationtech.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
DEPLOYMENT_PLURAL: Final = "deployments"
DEVICE_PLURAL: Final = "devices"
#: Finalizer the operator puts on Deployments so their desired-state keys are removed first.
DEPLOYMENT_FINALIZER: Final = f"{GROUP}/desired-state-cleanup"


class K8sModel(BaseModel):
    """camelCase on the wire (Kubernetes convention), snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(K8sModel):
    key: str = Field(min_length=1, max_length=317)
    operator: SelectorOperator
    values: list[str] = Field(default_factory=list)

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        return validate_label_key(key)

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        if self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN) and not self.values:
            raise ValueError(f"operator {self.operator.value} needs at least one value")
        if self.operator in (SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST) and (
            self.values
        ):
            raise ValueError(f"operator {self.operator.value} takes no values")
        return self


class LabelSelector(K8sModel):
    """A Kubernetes LabelSelector: ``matchLabels`` AND every ``matchExpressions`` entry.

    An empty selector matches every device (as in Kubernetes).
    """

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    @field_validator("match_labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            validate_label_key(key)
            validate_label_value(value)
        return labels


class RolloutStrategy(StrEnum):
    ALL_AT_ONCE = "AllAtOnce"
    BATCHED = "Batched"


#: ``x-kubernetes-validations`` of ``spec.rollout`` (the API server's CEL; pydantic checks the
#: same rules in :meth:`Rollout._batched_needs_one_size`).
_ROLLOUT_RULES = [
    {"rule": "self.strategy != 'Batched' || (has(self.batchSize) != has(self.batchPercent))",
     "message": "a Batched rollout takes exactly one of batchSize and batchPercent"},
    {"rule": "self.strategy == 'Batched' || (!has(self.batchSize) && !has(self.batchPercent) "
             "&& !has(self.successThreshold) && !has(self.maxUnavailable) "
             "&& !has(self.maxFailures) && !has(self.batchTimeoutSeconds))",
     "message": "batchSize, batchPercent, successThreshold, maxUnavailable, maxFailures and "
                "batchTimeoutSeconds need strategy: Batched"},
]


def _rollout_schema(schema: dict[str, Any]) -> None:
    """Optional fields are absent, never null (the CEL rules test presence), and ``paused``
    gets no server-side default (resources read back as they were written)."""
    for prop in schema.get("properties", {}).values():
        options = prop.pop("anyOf", None)
        if options is not None:
            prop.update(next(o for o in options if o != {"type": "null"}))
            if prop.get("default", ...) is None:
                del prop["default"]
    schema["properties"]["paused"].pop("default", None)
    schema["x-kubernetes-validations"] = _ROLLOUT_RULES


class Rollout(K8sModel):
    """How desired state reaches the matched devices.

    ``AllAtOnce`` gives every matching device the score at once. ``Batched`` gives it to one
    batch at a time (``batchSize`` devices, or ``batchPercent`` % of the matching devices,
    rounded up); the next batch starts once every device of the current one has reported
    (``Running`` or ``Failed``) and at least ``successThreshold`` % of it runs. At most
    ``maxUnavailable`` devices are updating at once (default: the batch size). More than
    ``maxFailures`` failed devices (default 0: the first failure) pause the rollout at once.
    ``paused: true`` holds it where it is; a rollout the operator paused resumes when the
    annotation ``fleet.nationtech.io/resume-rollout`` takes a new value. With
    ``batchTimeoutSeconds`` a batch ends that long after it started: its devices that have not
    reported by then time out and count as failed (an offline device never holds a rollout
    forever).
    """

    model_config = ConfigDict(json_schema_extra=_rollout_schema)

    strategy: RolloutStrategy = RolloutStrategy.ALL_AT_ONCE
    batch_size: int | None = Field(default=None, ge=1, le=1_000_000,
                                   description="devices per batch (Batched)")
    batch_percent: int | None = Field(default=None, ge=1, le=100,
                                      description="percent of the matching devices per batch, "
                                      "rounded up (Batched)")
    success_threshold: int | None = Field(default=None, ge=0, le=100,
                                          description="percent of a batch that must run before "
                                          "the next batch starts (default 100)")
    max_unavailable: int | None = Field(default=None, ge=1, le=1_000_000,
                                        description="at most this many devices updating at once "
                                        "(default: the batch size)")
    max_failures: int | None = Field(default=None, ge=0, le=1_000_000,
                                     description="failed devices tolerated before the rollout "
                                     "pauses (default 0)")
    batch_timeout_seconds: int | None = Field(
        default=None, ge=1, le=2_592_000,
        description="a batch ends this long after it started (1 s to 30 days); its devices "
        "that have not reported by then time out and count as failed (default: no timeout)")
    paused: bool = Field(default=False, description="hold the rollout where it is")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # added after v1alpha1 shipped: an AllAtOnce rollout reads back as it was written
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items()
                if v is not None and not (k == "paused" and v is False)}

    @model_validator(mode="after")
    def _batched_needs_one_size(self) -> Rollout:
        if self.strategy is RolloutStrategy.BATCHED:
            if (self.batch_size is None) == (self.batch_percent is None):
                raise ValueError(_ROLLOUT_RULES[0]["message"])
        elif any(v is not None for v in (self.batch_size, self.batch_percent,
                                         self.success_threshold, self.max_unavailable,
                                         self.max_failures, self.batch_timeout_seconds)):
            raise ValueError(_ROLLOUT_RULES[1]["message"])
        return self


class SecretKeySelector(K8sModel):
    """A key of a Kubernetes Secret in the Deployment's namespace (as in a Pod's env)."""

    name: str = Field(min_length=1, max_length=253, pattern=_DNS1123_SUBDOMAIN_PATTERN,
                      description="name of the Secret")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
                     description="key in the Secret's data")


class DeploymentSecret(K8sModel):
    """A secret of the score, read from a Kubernetes Secret and sealed to each target device."""

    name: SecretName
    secret_key_ref: SecretKeySelector


class DeploymentSpec(K8sModel):
    target_selector: LabelSelector
    score: ScoreTemplate
    secrets: list[DeploymentSecret] = Field(default_factory=list, max_length=64)
    rollout: Rollout = Field(default_factory=Rollout)

    @model_serializer(mode="wrap")
    def _omit_empty_secrets(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # added after v1alpha1 shipped: resources without secrets read back as they were written
        data: dict[str, Any] = handler(self)
        if not data.get("secrets"):
            data.pop("secrets", None)
        return data

    @model_validator(mode="after")
    def _secrets_resolve(self) -> DeploymentSpec:
        names = [s.name for s in self.secrets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"secret {duplicates[0]!r} is defined more than once")
        self.score.check_references(names)
        return self


class Aggregate(K8sModel):
    matched_device_count: int = Field(default=0, ge=0)
    succeeded: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    pending: int = Field(default=0, ge=0)
    last_error: str | None = None


class RolloutStatus(K8sModel):
    """``status.rollout``: where the rollout of the current score stands.

    Counts are devices. ``updated`` hold the current score; of the current batch,
    ``batchUpdated`` were given it and ``batchSucceeded`` / ``batchFailed`` / ``batchPending``
    say what they reported. ``failingDevices`` names failed devices (at most 20);
    ``timedOutDevices`` every device that timed out (``batchTimeoutSeconds``) and is still
    silent, ``timedOut`` how many. The ``batchStart*``, ``acknowledgedFailures``,
    ``acceptedBatch``, ``timedOutBatch`` and ``resumeToken`` fields are the operator's
    bookkeeping (so a new leader goes on where the last one stopped).
    """

    strategy: RolloutStrategy = RolloutStrategy.ALL_AT_ONCE
    revision: str = Field(default="", description="hash of the score being rolled out")
    phase: Literal["Progressing", "Paused", "Complete"] = "Progressing"
    current_batch: int = Field(default=0, ge=0, description="1-based; 0: not started")
    total_batches: int = Field(default=0, ge=0,
                               description="with the devices matching now")
    batch_size: int = Field(default=0, ge=0)
    batch_updated: int = Field(default=0, ge=0)
    batch_succeeded: int = Field(default=0, ge=0)
    batch_failed: int = Field(default=0, ge=0)
    batch_pending: int = Field(default=0, ge=0)
    updated: int = Field(default=0, ge=0, description="devices holding the current score")
    pause_reason: str | None = Field(
        default=None, description="PausedBySpec, FailureThresholdExceeded or "
        "BatchBelowSuccessThreshold")
    message: str = ""
    failing_devices: list[str] = Field(default_factory=list, max_length=20)
    batch_start_updated: int = Field(default=0, ge=0)
    batch_start_failed: int = Field(default=0, ge=0)
    acknowledged_failures: int = Field(default=0, ge=0)
    accepted_batch: int = Field(default=0, ge=0)
    resume_token: str | None = None
    batch_started_at: datetime | None = Field(
        default=None, description="when the current batch started (its timeout runs from it)")
    timed_out: int = Field(default=0, ge=0, description="devices timed out and still silent")
    timed_out_devices: list[str] = Field(default_factory=list)
    timed_out_batch: int = Field(default=0, ge=0)


class Condition(K8sModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class DeploymentStatus(K8sModel):
    aggregate: Aggregate = Field(default_factory=Aggregate)
    rollout: RolloutStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None

    @model_serializer(mode="wrap")
    def _omit_no_rollout(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # added after v1alpha1 shipped: statuses without a rollout read back as written
        data: dict[str, Any] = handler(self)
        if data.get("rollout") is None:
            data.pop("rollout", None)
        return data


class DeviceSpec(K8sModel):
    inventory: Inventory | None = None


class DeviceStatus(K8sModel):
    online: bool = False
    last_seen: datetime | None = None
    agent_version: str | None = None


class Deployment(K8sModel):
    api_version: Literal["fleet.nationtech.io/v1alpha1"] = "fleet.nationtech.io/v1alpha1"
    kind: Literal["Deployment"] = "Deployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: DeploymentSpec
    status: DeploymentStatus | None = None


class Device(K8sModel):
    api_version: Literal["fleet.nationtech.io/v1alpha1"] = "fleet.nationtech.io/v1alpha1"
    kind: Literal["Device"] = "Device"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: DeviceSpec = Field(default_factory=DeviceSpec)
    status: DeviceStatus | None = None


# --------------------------------------------------------------------------- CRD rendering


class SchemaConversionError(FleetError, ValueError):
    """A pydantic schema construct has no structural OpenAPI v3 equivalent."""


_DROP_KEYS = {"title", "$defs", "discriminator"}


def to_structural_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Turn a pydantic JSON schema into a Kubernetes structural OpenAPI v3 schema.

    Inlines ``$ref``, folds ``anyOf [X, null]`` into ``nullable: true``, turns ``const``
    into a one-value ``enum``, drops ``additionalProperties: false`` (the API server prunes
    unknown fields instead) and titles.
    """
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            merged = {**copy.deepcopy(defs[name]), **node}
            return resolve(merged)
        if "anyOf" in node:
            options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
            if len(options) != 1:
                raise SchemaConversionError(f"cannot express a union of {len(options)} types")
            base = resolve(options[0])
            base.update({k: resolve(v) for k, v in node.items() if k not in _DROP_KEYS})
            base["nullable"] = True
            if base.get("default", ...) is None:
                del base["default"]
            return base
        if "const" in node:
            node["enum"] = [node.pop("const")]
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
        out = {k: resolve(v) for k, v in node.items() if k not in _DROP_KEYS}
        if "enum" in out and "type" not in out:
            values = out["enum"]
            out["type"] = "integer" if all(isinstance(v, int) for v in values) else "string"
        return out

    return resolve(schema)  # type: ignore[no-any-return]


_NAME_RULE = {
    "rule": f"self.metadata.name.matches('{DNS1123_LABEL_PATTERN}') && "
    f"size(self.metadata.name) <= {DNS1123_LABEL_MAX}",
    "message": "metadata.name must be a DNS-1123 label (it becomes a single NATS subject token)",
}


def _resource_schema(spec: type[BaseModel], status: type[BaseModel], required_spec: bool) -> Any:
    props = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": to_structural_schema(spec.model_json_schema(by_alias=True)),
        "status": to_structural_schema(status.model_json_schema(by_alias=True)),
    }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "x-kubernetes-validations": [_NAME_RULE],
    }
    if required_spec:
        schema["required"] = ["spec"]
    return schema


def _crd(
    *,
    kind: str,
    plural: str,
    short: str,
    scope: str,
    schema: Any,
    columns: list[dict[str, Any]],
    description: str,
) -> dict[str, Any]:
    schema = {"description": description, **schema}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "harmony-fleet"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["fleet"],
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crd_manifests() -> dict[str, dict[str, Any]]:
    """The two CRDs, keyed by file name (``<plural>.<group>.yaml``)."""
    deployment = _crd(
        kind="Deployment",
        plural=DEPLOYMENT_PLURAL,
        short="fleetdep",
        scope="Namespaced",
        schema=_resource_schema(DeploymentSpec, DeploymentStatus, required_spec=True),
        description="A workload rolled out to every fleet device whose labels match "
        "spec.targetSelector.",
        columns=[
            {"name": "Matched", "type": "integer",
             "jsonPath": ".status.aggregate.matchedDeviceCount"},
            {"name": "Succeeded", "type": "integer", "jsonPath": ".status.aggregate.succeeded"},
            {"name": "Failed", "type": "integer", "jsonPath": ".status.aggregate.failed"},
            {"name": "Pending", "type": "integer", "jsonPath": ".status.aggregate.pending"},
            # the Ready condition the operator sets (True: every matched device runs the spec)
            {"name": "Ready", "type": "string",
             "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Batch", "type": "integer", "jsonPath": ".status.rollout.currentBatch",
             "priority": 1},
            {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.phase",
             "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )
    device = _crd(
        kind="Device",
        plural=DEVICE_PLURAL,
        short="fleetdev",
        scope="Cluster",
        schema=_resource_schema(DeviceSpec, DeviceStatus, required_spec=False),
        description="A fleet device, created by the operator from the agent's device-info.",
        columns=[
            {"name": "Online", "type": "boolean", "jsonPath": ".status.online"},
            {"name": "Agent", "type": "string", "jsonPath": ".status.agentVersion"},
            {"name": "Arch", "type": "string", "jsonPath": ".spec.inventory.arch"},
            {"name": "Last Seen", "type": "date", "jsonPath": ".status.lastSeen"},
        ],
    )
    return {
        f"{DEPLOYMENT_PLURAL}.{GROUP}.yaml": deployment,
        f"{DEVICE_PLURAL}.{GROUP}.yaml": device,
    }


def render_crd_yaml(manifest: dict[str, Any]) -> str:
    import yaml

    class _IndentedDumper(yaml.SafeDumper):
        """Indent block sequences under their key (yamllint's and ansible-lint's style)."""

        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            super().increase_indent(flow, False)

    header = "# Generated from harmony_fleet.contracts.crd by `fleet crds --write`. Do not edit.\n"
    body = yaml.dump(manifest, Dumper=_IndentedDumper, sort_keys=False, width=100)
    return header + "---\n" + body
