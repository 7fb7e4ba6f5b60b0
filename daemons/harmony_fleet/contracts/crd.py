"""Kubernetes custom resources, group ``fleet.nationtech.io``, version ``v1alpha1``.

The pydantic models here are the single source of the CRD schemas: :func:`crd_manifests`
renders them as ``apiextensions.k8s.io/v1`` manifests (structural OpenAPI v3 schemas with
validation), kept in ``manifests/crds/`` and checked for staleness by the test suite
(regenerate with ``fleet crds --write``).

* ``Deployment`` (namespaced, short name ``fleetdep``): ``spec.targetSelector`` (a Kubernetes
  LabelSelector), ``spec.score`` (:class:`~.score.PodmanScore`, snake_case like on the wire),
  ``spec.rollout``; ``status.aggregate`` plus conditions and ``observedGeneration``.
* ``Device`` (cluster-scoped, short name ``fleetdev``): created by the operator from
  ``device-info``; labels are the agent's routing labels; ``spec.inventory``;
  ``status.online`` / ``lastSeen`` / ``agentVersion``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .ids import DNS1123_LABEL_MAX, DNS1123_LABEL_PATTERN
from .info import Inventory, validate_label_key, validate_label_value
from .score import PodmanScore

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


class Rollout(K8sModel):
    """How desired state reaches the matched devices. Only ``AllAtOnce`` exists today."""

    strategy: RolloutStrategy = RolloutStrategy.ALL_AT_ONCE


class DeploymentSpec(K8sModel):
    target_selector: LabelSelector
    score: PodmanScore
    rollout: Rollout = Field(default_factory=Rollout)


class Aggregate(K8sModel):
    matched_device_count: int = Field(default=0, ge=0)
    succeeded: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    pending: int = Field(default=0, ge=0)
    last_error: str | None = None


class Condition(K8sModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class DeploymentStatus(K8sModel):
    aggregate: Aggregate = Field(default_factory=Aggregate)
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


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


class SchemaConversionError(ValueError):
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
