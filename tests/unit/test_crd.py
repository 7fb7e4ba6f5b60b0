"""Kubernetes custom resources and their generated CRDs (contracts.crd)."""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from harmony_fleet.contracts import ScoreTemplate
from harmony_fleet.contracts.crd import (
    API_VERSION,
    DEPLOYMENT_FINALIZER,
    DEPLOYMENT_PLURAL,
    DEVICE_PLURAL,
    GROUP,
    VERSION,
    Aggregate,
    Deployment,
    Device,
    LabelSelector,
    LabelSelectorRequirement,
    SchemaConversionError,
    SelectorOperator,
    crd_manifests,
    render_crd_yaml,
    to_structural_schema,
)
from harmony_fleet.contracts.ids import DNS1123_LABEL_PATTERN

CRD_DIR = Path(__file__).resolve().parents[2] / "manifests" / "crds"
DEPLOYMENT_FILE = "deployments.fleet.nationtech.io.yaml"
DEVICE_FILE = "devices.fleet.nationtech.io.yaml"

#: Keys a structural OpenAPI v3 schema node may carry in a CRD (JSONSchemaProps minus what
#: apiextensions.k8s.io/v1 forbids: $ref, definitions, dependencies, patternProperties, ...).
ALLOWED_SCHEMA_KEYS = {
    "type",
    "description",
    "title",
    "format",
    "default",
    "enum",
    "nullable",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "example",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-embedded-resource",
}
PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _schema(file_name: str) -> dict[str, Any]:
    version = crd_manifests()[file_name]["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _type_matches(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, PY_TYPES[type_name])


# ----------------------------------------------------------------------------- constants, models


def test_group_version_constants() -> None:
    assert GROUP == "fleet.nationtech.io"
    assert VERSION == "v1alpha1"
    assert API_VERSION == "fleet.nationtech.io/v1alpha1"
    assert DEPLOYMENT_PLURAL == "deployments"
    assert DEVICE_PLURAL == "devices"
    assert DEPLOYMENT_FINALIZER == "fleet.nationtech.io/desired-state-cleanup"


def test_model_api_version_and_kind_defaults() -> None:
    assert Deployment.model_fields["api_version"].default == API_VERSION
    assert Device.model_fields["api_version"].default == API_VERSION
    assert Deployment.model_fields["kind"].default == "Deployment"
    device = Device()
    assert (device.api_version, device.kind) == (API_VERSION, "Device")
    dumped = device.model_dump(mode="json", by_alias=True)
    assert dumped["apiVersion"] == API_VERSION
    assert dumped["kind"] == "Device"


@pytest.mark.parametrize(
    ("model", "over"),
    [
        (Device, {"apiVersion": "fleet.nationtech.io/v1"}),
        (Device, {"apiVersion": "v1"}),
        (Device, {"kind": "Deployment"}),
    ],
)
def test_wrong_api_version_or_kind_is_rejected(model: type[Device], over: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate({"metadata": {"name": "pi-1"}, **over})


# ----------------------------------------------------------------------------- CR round trips

SAMPLE_DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "fleet.nationtech.io/v1alpha1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default", "generation": 3, "labels": {"team": "a"}},
    "spec": {
        "targetSelector": {
            "matchLabels": {"site": "kitchen"},
            "matchExpressions": [
                {"key": "fleet.nationtech.io/arch", "operator": "In", "values": ["arm64", "amd64"]},
                {"key": "quarantine", "operator": "DoesNotExist", "values": []},
            ],
        },
        "score": {
            "version": 0,
            "services": [
                {
                    "name": "web",
                    "image": "localhost/demo:1",
                    "command": None,
                    "args": ["-f"],
                    "env": {"MODE": "prod"},
                    "ports": [{"container_port": 80, "host_port": 8080, "protocol": "tcp", "host_ip": None}],
                    "volumes": [{"source": "web-data", "target": "/www", "read_only": True}],
                    "restart_policy": "on-failure",
                }
            ],
            "init_containers": [
                {
                    "name": "migrate",
                    "image": "localhost/demo:1",
                    "command": None,
                    "args": ["migrate"],
                    "env": {},
                    "volumes": [],
                    "timeout": 120,
                }
            ],
        },
        "rollout": {"strategy": "AllAtOnce"},
    },
    "status": {
        "aggregate": {
            "matchedDeviceCount": 3,
            "succeeded": 1,
            "failed": 1,
            "pending": 1,
            "lastError": "pi-2: init container migrate exited 1",
        },
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "DevicesFailed",
                "message": "1 of 3 devices failed",
                "lastTransitionTime": "2026-05-01T12:00:00Z",
                "observedGeneration": 3,
            }
        ],
        "observedGeneration": 3,
    },
}

SAMPLE_DEVICE: dict[str, Any] = {
    "apiVersion": "fleet.nationtech.io/v1alpha1",
    "kind": "Device",
    "metadata": {"name": "pi-1", "labels": {"site": "kitchen"}},
    "spec": {
        "inventory": {
            "hostname": "pi-1",
            "arch": "aarch64",
            "os": "Debian GNU/Linux 12 (bookworm)",
            "kernel": "6.6.31",
            "cpus": 4,
            "memory_bytes": 8589934592,
            "podman_version": "4.3.1",
        }
    },
    "status": {"online": True, "lastSeen": "2026-05-01T12:00:42Z", "agentVersion": "0.1.0"},
}


def test_deployment_cr_round_trip_in_camel_case() -> None:
    cr = Deployment.model_validate(copy.deepcopy(SAMPLE_DEPLOYMENT))
    assert cr.spec.target_selector.match_labels == {"site": "kitchen"}
    assert cr.spec.target_selector.match_expressions[0].operator is SelectorOperator.IN
    assert cr.spec.score == ScoreTemplate.model_validate(SAMPLE_DEPLOYMENT["spec"]["score"])
    assert cr.spec.score.init_containers[0].timeout == 120
    assert cr.status is not None
    assert cr.status.aggregate == Aggregate(
        matched_device_count=3,
        succeeded=1,
        failed=1,
        pending=1,
        last_error="pi-2: init container migrate exited 1",
    )
    assert cr.model_dump(mode="json", by_alias=True) == SAMPLE_DEPLOYMENT
    assert Deployment.model_validate_json(cr.model_dump_json(by_alias=True)) == cr


def test_minimal_deployment_cr_gets_defaults() -> None:
    cr = Deployment.model_validate(
        {
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"targetSelector": {}, "score": {"services": [{"name": "web", "image": "img"}]}},
        }
    )
    dumped = cr.model_dump(mode="json", by_alias=True)
    assert dumped["apiVersion"] == API_VERSION
    assert dumped["kind"] == "Deployment"
    assert dumped["spec"]["targetSelector"] == {"matchLabels": {}, "matchExpressions": []}
    assert dumped["spec"]["rollout"] == {"strategy": "AllAtOnce"}
    assert dumped["status"] is None
    assert set(dumped["spec"]) == {"targetSelector", "score", "rollout"}


def test_device_cr_round_trip_in_camel_case() -> None:
    cr = Device.model_validate(copy.deepcopy(SAMPLE_DEVICE))
    assert cr.spec.inventory is not None
    assert cr.spec.inventory.memory_bytes == 8589934592
    assert cr.status is not None
    assert cr.status.online is True
    assert cr.status.agent_version == "0.1.0"
    assert cr.model_dump(mode="json", by_alias=True) == SAMPLE_DEVICE
    assert Device.model_validate_json(cr.model_dump_json(by_alias=True)) == cr


def test_snake_case_input_is_accepted_for_python_callers() -> None:
    cr = Deployment.model_validate(
        {
            "api_version": API_VERSION,
            "spec": {
                "target_selector": {"match_labels": {"site": "x"}},
                "score": {"services": [{"name": "web", "image": "img"}]},
            },
        }
    )
    assert cr.spec.target_selector.match_labels == {"site": "x"}
    assert "targetSelector" in cr.model_dump(by_alias=True)["spec"]


def test_score_inside_the_cr_stays_snake_case_and_strict() -> None:
    bad = copy.deepcopy(SAMPLE_DEPLOYMENT)
    bad["spec"]["score"]["services"][0]["restartPolicy"] = "always"
    with pytest.raises(ValidationError) as info:
        Deployment.model_validate(bad)
    assert [tuple(e["loc"]) for e in info.value.errors()] == [
        ("spec", "score", "services", 0, "restartPolicy")
    ]


def test_deployment_cr_requires_spec_parts() -> None:
    with pytest.raises(ValidationError) as info:
        Deployment.model_validate({"metadata": {"name": "web"}})
    assert [tuple(e["loc"]) for e in info.value.errors()] == [("spec",)]
    with pytest.raises(ValidationError) as info:
        Deployment.model_validate({"spec": {"targetSelector": {}}})
    assert [tuple(e["loc"]) for e in info.value.errors()] == [("spec", "score")]


@pytest.mark.parametrize(
    ("requirement", "fragment"),
    [
        ({"key": "site", "operator": "In"}, "operator In needs at least one value"),
        ({"key": "site", "operator": "NotIn", "values": []}, "operator NotIn needs at least one value"),
        ({"key": "site", "operator": "Exists", "values": ["x"]}, "operator Exists takes no values"),
        (
            {"key": "site", "operator": "DoesNotExist", "values": ["x"]},
            "operator DoesNotExist takes no values",
        ),
        ({"key": "site", "operator": "Equals", "values": ["x"]}, "operator"),
        ({"key": "bad key", "operator": "Exists"}, "label key 'bad key'"),
        ({"key": "", "operator": "Exists"}, "key"),
    ],
)
def test_label_selector_requirement_validation(requirement: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        LabelSelectorRequirement.model_validate(requirement)


def test_label_selector_validates_match_labels() -> None:
    assert LabelSelector.model_validate({"matchLabels": {"a": "", "example.com/b": "c"}}).match_labels == {
        "a": "",
        "example.com/b": "c",
    }
    with pytest.raises(ValidationError, match="label value 'x y'"):
        LabelSelector.model_validate({"matchLabels": {"a": "x y"}})
    with pytest.raises(ValidationError, match="prefix must be a DNS-1123 subdomain"):
        LabelSelector.model_validate({"matchLabels": {"Bad.com/a": "x"}})


def test_aggregate_counts_are_non_negative() -> None:
    assert Aggregate().model_dump(by_alias=True) == {
        "matchedDeviceCount": 0,
        "succeeded": 0,
        "failed": 0,
        "pending": 0,
        "lastError": None,
    }
    with pytest.raises(ValidationError):
        Aggregate(failed=-1)


# ----------------------------------------------------------------------------- CRD manifests


def test_crd_manifests_are_keyed_by_file_name() -> None:
    assert sorted(crd_manifests()) == [DEPLOYMENT_FILE, DEVICE_FILE]


@pytest.mark.parametrize(
    ("file_name", "kind", "plural", "short", "scope"),
    [
        (DEPLOYMENT_FILE, "Deployment", "deployments", "fleetdep", "Namespaced"),
        (DEVICE_FILE, "Device", "devices", "fleetdev", "Cluster"),
    ],
)
def test_crd_identity(file_name: str, kind: str, plural: str, short: str, scope: str) -> None:
    crd = crd_manifests()[file_name]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.fleet.nationtech.io"
    assert file_name == f"{crd['metadata']['name']}.yaml"
    spec = crd["spec"]
    assert spec["group"] == "fleet.nationtech.io"
    assert spec["scope"] == scope
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": [short],
        "categories": ["fleet"],
    }
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    version = spec["versions"][0]
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def _object_problems(path: str, node: dict[str, Any]) -> list[str]:
    problems = []
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are exclusive")
    missing = set(node.get("required", [])) - set(node.get("properties", {}))
    if missing:
        problems.append(f"{path}: required names unknown properties {sorted(missing)}")
    if "additionalProperties" in node and not isinstance(node["additionalProperties"], dict):
        problems.append(f"{path}: additionalProperties must be a schema")
    return problems


def _value_problems(path: str, node: dict[str, Any], type_name: str) -> list[str]:
    problems = [
        f"{path}: enum value {value!r} is not a {type_name}"
        for value in node.get("enum", [])
        if not _type_matches(value, type_name)
    ]
    if "default" in node:
        if not _type_matches(node["default"], type_name):
            problems.append(f"{path}: default {node['default']!r} is not a {type_name}")
        if "enum" in node and node["default"] not in node["enum"]:
            problems.append(f"{path}: default {node['default']!r} not in enum")
    if "pattern" in node:
        re.compile(node["pattern"])
    for low, high in (("minLength", "maxLength"), ("minimum", "maximum"), ("minItems", "maxItems")):
        if low in node and high in node and node[low] > node[high]:
            problems.append(f"{path}: {low} > {high}")
    return problems


def _node_problems(path: str, node: dict[str, Any]) -> list[str]:
    problems = []
    unknown = set(node) - ALLOWED_SCHEMA_KEYS
    if unknown:
        problems.append(f"{path}: keys not allowed in a CRD schema: {sorted(unknown)}")
    type_name = node.get("type")
    if type_name not in PY_TYPES:
        return [*problems, f"{path}: missing or bad type {type_name!r}"]
    if "nullable" in node and node["nullable"] is not True:
        problems.append(f"{path}: nullable must be true when present")
    if type_name == "object":
        problems += _object_problems(path, node)
    elif {"properties", "required", "additionalProperties"} & set(node):
        problems.append(f"{path}: object keywords on a {type_name}")
    if type_name == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{path}: array without a single items schema")
    return problems + _value_problems(path, node, type_name)


@pytest.mark.parametrize("file_name", [DEPLOYMENT_FILE, DEVICE_FILE])
def test_schemas_are_structural(file_name: str) -> None:
    problems = [p for path, node in _walk(_schema(file_name)) for p in _node_problems(path, node)]
    assert problems == []


def test_structural_check_catches_what_it_should() -> None:
    assert _node_problems("x", {"anyOf": [{"type": "string"}]}) == [
        "x: keys not allowed in a CRD schema: ['anyOf']",
        "x: missing or bad type None",
    ]
    assert _node_problems("x", {"type": "object", "required": ["a"]}) == [
        "x: required names unknown properties ['a']"
    ]
    assert _node_problems("x", {"type": "integer", "default": "1", "enum": [1, True]}) == [
        "x: enum value True is not a integer",
        "x: default '1' is not a integer",
        "x: default '1' not in enum",
    ]
    assert _node_problems("x", {"type": "array", "items": [{"type": "string"}]}) == [
        "x: array without a single items schema"
    ]
    assert _node_problems("x", {"type": "string", "$ref": "#/x", "minLength": 2, "maxLength": 1}) == [
        "x: keys not allowed in a CRD schema: ['$ref']",
        "x: minLength > maxLength",
    ]


@pytest.mark.parametrize("file_name", [DEPLOYMENT_FILE, DEVICE_FILE])
def test_schemas_have_no_refs_or_combinators_anywhere(file_name: str) -> None:
    text = yaml.safe_dump(crd_manifests()[file_name])
    for forbidden in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "const:", "discriminator", "uniqueItems"):
        assert forbidden not in text, forbidden


@pytest.mark.parametrize("file_name", [DEPLOYMENT_FILE, DEVICE_FILE])
def test_root_schema_shape_and_name_rule(file_name: str) -> None:
    schema = _schema(file_name)
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert schema["properties"]["apiVersion"] == {"type": "string"}
    assert schema["properties"]["kind"] == {"type": "string"}
    assert schema["description"]
    (rule,) = schema["x-kubernetes-validations"]
    assert rule["rule"] == (
        f"self.metadata.name.matches('{DNS1123_LABEL_PATTERN}') && size(self.metadata.name) <= 63"
    )
    assert "DNS-1123 label" in rule["message"]


def test_required_fields_of_the_deployment_schema() -> None:
    schema = _schema(DEPLOYMENT_FILE)
    assert schema["required"] == ["spec"]
    spec = schema["properties"]["spec"]
    assert set(spec["properties"]) == {"targetSelector", "score", "secrets", "rollout"}
    assert spec["required"] == ["targetSelector", "score"]
    secret = spec["properties"]["secrets"]["items"]
    assert secret["required"] == ["name", "secretKeyRef"]
    assert secret["properties"]["secretKeyRef"]["required"] == ["name", "key"]
    # the score of a resource never carries sealed values: the operator seals per device
    assert "secrets" not in spec["properties"]["score"]["properties"]
    score = spec["properties"]["score"]
    assert score["required"] == ["services"]
    services = score["properties"]["services"]
    assert (services["minItems"], services["maxItems"]) == (1, 64)
    service = score["properties"]["services"]["items"]
    assert service["required"] == ["name", "image"]
    init = score["properties"]["init_containers"]["items"]
    assert init["required"] == ["name", "image"]
    assert service["properties"]["ports"]["items"]["required"] == ["container_port"]
    assert service["properties"]["volumes"]["items"]["required"] == ["source", "target"]
    requirement = spec["properties"]["targetSelector"]["properties"]["matchExpressions"]["items"]
    assert requirement["required"] == ["key", "operator"]
    assert requirement["properties"]["operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]


def test_score_schema_details() -> None:
    score = _schema(DEPLOYMENT_FILE)["properties"]["spec"]["properties"]["score"]
    props = score["properties"]
    assert set(props) == {"version", "services", "init_containers", "registry_credentials"}
    assert props["version"]["enum"] == [0]
    assert props["version"]["type"] == "integer"
    service = props["services"]["items"]["properties"]
    init = props["init_containers"]["items"]["properties"]
    for container in (service, init):
        assert container["name"]["pattern"] == DNS1123_LABEL_PATTERN
        assert container["name"]["maxLength"] == 63
        assert container["env"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert set(service) == {
        "name",
        "image",
        "command",
        "args",
        "env",
        "ports",
        "volumes",
        "restart_policy",
        "secrets",
    }
    assert set(init) == {"name", "image", "command", "args", "env", "volumes", "timeout", "secrets"}
    assert service["secrets"]["items"]["maxLength"] == 32
    credential = props["registry_credentials"]["items"]
    assert credential["required"] == ["registry", "username", "password_secret"]
    assert init["timeout"] == {
        "type": "integer",
        "default": 300,
        "minimum": 1,
        "maximum": 86400,
        "description": "Seconds to wait for the container to exit before killing it",
    }
    assert service["restart_policy"]["enum"] == ["no", "always", "on-failure", "unless-stopped"]
    assert service["restart_policy"]["default"] == "always"
    assert service["command"]["nullable"] is True
    assert service["ports"]["items"]["properties"]["container_port"]["minimum"] == 1
    assert service["ports"]["items"]["properties"]["container_port"]["maximum"] == 65535


def test_status_schemas_follow_design() -> None:
    deployment_status = _schema(DEPLOYMENT_FILE)["properties"]["status"]
    aggregate = deployment_status["properties"]["aggregate"]["properties"]
    assert set(aggregate) == {"matchedDeviceCount", "succeeded", "failed", "pending", "lastError"}
    assert all(
        aggregate[k]["type"] == "integer" and aggregate[k]["minimum"] == 0
        for k in ("matchedDeviceCount", "succeeded", "failed", "pending")
    )
    assert aggregate["lastError"]["nullable"] is True
    assert set(deployment_status["properties"]) == {"aggregate", "rollout", "conditions",
                                                    "observedGeneration"}
    condition = deployment_status["properties"]["conditions"]["items"]
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"

    device = _schema(DEVICE_FILE)
    assert "required" not in device  # the operator creates Devices with an empty spec at first
    assert set(device["properties"]["spec"]["properties"]) == {"inventory"}
    inventory = device["properties"]["spec"]["properties"]["inventory"]
    assert inventory["nullable"] is True
    assert {"hostname", "arch", "os", "kernel", "cpus", "memory_bytes"} <= set(inventory["required"])
    status = device["properties"]["status"]["properties"]
    assert set(status) == {"online", "lastSeen", "agentVersion"}
    assert status["online"] == {"type": "boolean", "default": False}
    assert status["lastSeen"]["format"] == "date-time"


@pytest.mark.parametrize("file_name", [DEPLOYMENT_FILE, DEVICE_FILE])
def test_printer_columns_point_at_schema_fields_of_the_right_type(file_name: str) -> None:
    version = crd_manifests()[file_name]["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    columns = version["additionalPrinterColumns"]
    assert columns
    for column in columns:
        path = column["jsonPath"]
        assert path.startswith(".")
        if path == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = schema
        # ".a.b" or ".status.conditions[?(@.type=="Ready")].status": a filter selects items
        for part, selector in re.findall(r'\.(\w+)(\[\?\(@\.\w+=="[^"]*"\)\])?', path):
            node = node["properties"][part]
            if selector:
                assert node["type"] == "array", path
                node = node["items"]
        if column["type"] == "date":
            assert (node["type"], node.get("format")) == ("string", "date-time"), path
        else:
            assert node["type"] == column["type"], path


@pytest.mark.parametrize("file_name", [DEPLOYMENT_FILE, DEVICE_FILE])
def test_titles_are_dropped(file_name: str) -> None:
    titled = [path for path, node in _walk(_schema(file_name)) if "title" in node]
    assert titled == []


# ----------------------------------------------------------------------------- to_structural_schema


def test_to_structural_schema_conversions() -> None:
    schema = {
        "title": "Root",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "child": {"$ref": "#/$defs/Child", "description": "the child"},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "fixed": {"const": "x"},
            "level": {"enum": [1, 2]},
        },
        "$defs": {"Child": {"title": "Child", "type": "object", "properties": {"a": {"type": "string"}}}},
    }
    assert to_structural_schema(schema) == {
        "type": "object",
        "properties": {
            "child": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "description": "the child",
            },
            "maybe": {"type": "integer", "nullable": True},
            "fixed": {"enum": ["x"], "type": "string"},
            "level": {"enum": [1, 2], "type": "integer"},
        },
    }


def test_to_structural_schema_rejects_real_unions() -> None:
    with pytest.raises(SchemaConversionError, match="union of 2 types"):
        to_structural_schema({"anyOf": [{"type": "integer"}, {"type": "string"}]})


# ----------------------------------------------------------------------------- freshness


def test_generated_crd_files_are_fresh() -> None:
    on_disk = sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    assert on_disk == sorted(crd_manifests()), "stale or extra files in manifests/crds"
    for name, manifest in crd_manifests().items():
        text = (CRD_DIR / name).read_text(encoding="utf-8")
        assert text == render_crd_yaml(manifest), f"{name} is stale: run 'fleet crds --write'"


@pytest.mark.parametrize("file_name", [DEPLOYMENT_FILE, DEVICE_FILE])
def test_rendered_yaml_is_a_faithful_single_document(file_name: str) -> None:
    manifest = crd_manifests()[file_name]
    text = render_crd_yaml(manifest)
    assert text.startswith("# Generated from harmony_fleet.contracts.crd by `fleet crds --write`.")
    documents = list(yaml.safe_load_all(text))
    assert documents == [manifest]


def test_fleet_crds_check_agrees_and_detects_staleness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harmony_fleet.cli import _crds, build_parser

    def check(directory: Path) -> int:
        return _crds(build_parser().parse_args(["crds", "--check", str(directory)]))

    assert check(CRD_DIR) == 0
    copy_dir = tmp_path / "crds"
    shutil.copytree(CRD_DIR, copy_dir)
    assert check(copy_dir) == 0
    stale = copy_dir / DEVICE_FILE
    stale.write_text(stale.read_text(encoding="utf-8").replace("fleetdev", "fleetdevice"), encoding="utf-8")
    capsys.readouterr()
    assert check(copy_dir) == 1
    assert f"{stale} is stale" in capsys.readouterr().err
    (copy_dir / DEPLOYMENT_FILE).unlink()
    assert check(copy_dir) == 1
