"""The podman score, canonical JSON and spec hashes (contracts.score, contracts.base)."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from harmony_fleet.contracts import (
    DEFAULT_INIT_CONTAINER_TIMEOUT_S,
    InitContainer,
    PodmanScore,
    PortMapping,
    RestartPolicy,
    Service,
    StrictWireModel,
    VolumeMount,
    WireModel,
    canonical_json,
    spec_hash,
    validation_summary,
)
from harmony_fleet.contracts.score import MAX_INIT_CONTAINER_TIMEOUT_S, SCORE_VERSION

from .strategies import PROPERTY, dns1123_labels, json_objects, json_values, reorder

#: The example in score.py's module docstring: the documented wire shape.
DOC_EXAMPLE: dict[str, Any] = {
    "version": 0,
    "services": [
        {
            "name": "web",
            "image": "localhost/demo:1",
            "command": ["httpd"],
            "args": ["-f"],
            "env": {"MODE": "prod"},
            "ports": [{"container_port": 80, "host_port": 8080}],
            "volumes": [{"source": "/srv/web", "target": "/www", "read_only": True}],
            "restart_policy": "always",
        }
    ],
    "init_containers": [
        {"name": "migrate", "image": "localhost/demo:1", "args": ["migrate"], "timeout": 300}
    ],
}

#: The same score with every default written out: what to_json_bytes() must produce.
DOC_EXAMPLE_FULL: dict[str, Any] = {
    "version": 0,
    "services": [
        {
            "name": "web",
            "image": "localhost/demo:1",
            "command": ["httpd"],
            "args": ["-f"],
            "env": {"MODE": "prod"},
            "ports": [{"container_port": 80, "host_port": 8080, "protocol": "tcp", "host_ip": None}],
            "volumes": [{"source": "/srv/web", "target": "/www", "read_only": True}],
            "restart_policy": "always",
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
            "timeout": 300,
        }
    ],
}


def _minimal(**service: Any) -> dict[str, Any]:
    return {"services": [{"name": "web", "image": "localhost/demo:1", **service}]}


def _error_locs(exc: ValidationError) -> list[tuple[Any, ...]]:
    return [tuple(e["loc"]) for e in exc.errors()]


# ----------------------------------------------------------------------------- shape and defaults


def test_constants() -> None:
    assert DEFAULT_INIT_CONTAINER_TIMEOUT_S == 300
    assert MAX_INIT_CONTAINER_TIMEOUT_S == 86400
    assert SCORE_VERSION == 0


def test_documented_example_parses_and_serialises_with_defaults_filled_in() -> None:
    score = PodmanScore.model_validate(DOC_EXAMPLE)
    web = score.services[0]
    assert web.ports == [PortMapping(container_port=80, host_port=8080)]
    assert web.volumes == [VolumeMount(source="/srv/web", target="/www", read_only=True)]
    assert web.restart_policy is RestartPolicy.ALWAYS
    assert score.init_containers[0].timeout == 300
    assert json.loads(score.to_json_bytes()) == DOC_EXAMPLE_FULL


def test_minimal_score_defaults() -> None:
    score = PodmanScore.model_validate(_minimal())
    assert score.version == 0
    assert score.init_containers == []
    web = score.services[0]
    assert web.command is None
    assert web.args == []
    assert web.env == {}
    assert web.ports == []
    assert web.volumes == []
    assert web.restart_policy is RestartPolicy.ALWAYS


def test_json_round_trip() -> None:
    score = PodmanScore.model_validate(DOC_EXAMPLE)
    data = score.to_json_bytes()
    again = PodmanScore.model_validate_json(data)
    assert again == score
    assert again.to_json_bytes() == data


def test_payload_without_init_containers_parses_as_empty_list() -> None:
    old = {"version": 0, "services": copy.deepcopy(DOC_EXAMPLE["services"])}
    score = PodmanScore.model_validate_json(json.dumps(old))
    assert score.init_containers == []
    # ...and is the same workload as one that says so explicitly
    explicit = PodmanScore.model_validate({**old, "init_containers": []})
    assert score == explicit
    assert score.spec_hash() == explicit.spec_hash()


def test_version_defaults_to_zero_and_only_zero_is_accepted() -> None:
    assert PodmanScore.model_validate(_minimal()).version == 0
    for bad in (1, -1, "0", None):
        with pytest.raises(ValidationError) as info:
            PodmanScore.model_validate({**_minimal(), "version": bad})
        assert _error_locs(info.value) == [("version",)]


def test_models_are_strict_and_frozen() -> None:
    for model in (PodmanScore, Service, InitContainer, PortMapping, VolumeMount):
        assert issubclass(model, StrictWireModel)
    score = PodmanScore.model_validate(_minimal())
    with pytest.raises(ValidationError):
        score.services = []  # type: ignore[misc]
    with pytest.raises(ValidationError):
        score.services[0].image = "other"  # type: ignore[misc]


# ----------------------------------------------------------------------------- init containers


def test_init_container_timeout_default_is_300_whole_seconds_in_json() -> None:
    score = PodmanScore.model_validate(
        {**_minimal(), "init_containers": [{"name": "migrate", "image": "localhost/demo:1"}]}
    )
    assert score.init_containers[0].timeout == DEFAULT_INIT_CONTAINER_TIMEOUT_S == 300
    raw = json.loads(score.to_json_bytes())["init_containers"][0]["timeout"]
    assert raw == 300
    assert type(raw) is int
    assert b'"timeout":300,' in score.to_json_bytes() or b'"timeout":300}' in score.to_json_bytes()


@pytest.mark.parametrize("timeout", [1, 30, 300, 3600, 86400])
def test_init_container_timeout_bounds_accept(timeout: int) -> None:
    init = InitContainer(name="migrate", image="img", timeout=timeout)
    assert json.loads(init.to_json_bytes())["timeout"] == timeout


@pytest.mark.parametrize("timeout", [0, -1, 86401, 300.5, "5m", None])
def test_init_container_timeout_bounds_reject(timeout: object) -> None:
    with pytest.raises(ValidationError) as info:
        InitContainer.model_validate({"name": "migrate", "image": "img", "timeout": timeout})
    assert _error_locs(info.value) == [("timeout",)]


def test_init_container_fields() -> None:
    init = InitContainer.model_validate(
        {
            "name": "seed",
            "image": "localhost/tools:2",
            "command": ["/bin/sh", "-c"],
            "args": ["seed-db"],
            "env": {"DB_URL": "postgres://db"},
            "volumes": [{"source": "data", "target": "/data"}],
            "timeout": 60,
        }
    )
    assert json.loads(init.to_json_bytes()) == {
        "name": "seed",
        "image": "localhost/tools:2",
        "command": ["/bin/sh", "-c"],
        "args": ["seed-db"],
        "env": {"DB_URL": "postgres://db"},
        "volumes": [{"source": "data", "target": "/data", "read_only": False}],
        "timeout": 60,
    }
    # init containers have no ports and no restart policy: those would be typos
    for extra in ({"ports": []}, {"restart_policy": "no"}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            InitContainer.model_validate({"name": "seed", "image": "img", **extra})


def test_init_container_order_is_preserved() -> None:
    names = ["a", "b", "c", "d"]
    score = PodmanScore.model_validate(
        {**_minimal(), "init_containers": [{"name": n, "image": "img"} for n in names]}
    )
    assert [c.name for c in score.init_containers] == names
    assert [c["name"] for c in json.loads(score.to_json_bytes())["init_containers"]] == names


# ----------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({**_minimal(), "replicas": 2}, ("replicas",)),
        ({**_minimal(), "initContainers": []}, ("initContainers",)),
        (_minimal(restartPolicy="always"), ("services", 0, "restartPolicy")),
        (_minimal(environment={}), ("services", 0, "environment")),
        (_minimal(ports=[{"container_port": 80, "hostPort": 8080}]), ("services", 0, "ports", 0, "hostPort")),
        (
            _minimal(volumes=[{"source": "/a", "target": "/b", "readonly": True}]),
            ("services", 0, "volumes", 0, "readonly"),
        ),
        (
            {**_minimal(), "init_containers": [{"name": "i", "image": "img", "timeout_s": 5}]},
            ("init_containers", 0, "timeout_s"),
        ),
    ],
)
def test_unknown_fields_are_rejected_at_every_level(payload: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        PodmanScore.model_validate(payload)
    errors = info.value.errors()
    assert [tuple(e["loc"]) for e in errors] == [loc]
    assert errors[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    "payload",
    [{}, {"services": []}, {"services": None}, {"init_containers": []}],
)
def test_a_score_needs_at_least_one_service(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        PodmanScore.model_validate(payload)
    assert ("services",) in _error_locs(info.value)


def test_list_size_limits() -> None:
    services = [{"name": f"s{i}", "image": "img"} for i in range(64)]
    assert len(PodmanScore.model_validate({"services": services}).services) == 64
    with pytest.raises(ValidationError, match="at most 64"):
        PodmanScore.model_validate({"services": [*services, {"name": "s64", "image": "img"}]})
    inits = [{"name": f"i{i}", "image": "img"} for i in range(32)]
    assert len(PodmanScore.model_validate({**_minimal(), "init_containers": inits}).init_containers) == 32
    with pytest.raises(ValidationError, match="at most 32"):
        PodmanScore.model_validate(
            {**_minimal(), "init_containers": [*inits, {"name": "i32", "image": "img"}]}
        )


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        ({"services": [{"name": "web", "image": "a"}, {"name": "web", "image": "b"}]}, "web"),
        ({**_minimal(), "init_containers": [{"name": "web", "image": "b"}]}, "web"),
        (
            {**_minimal(), "init_containers": [{"name": "m", "image": "b"}, {"name": "m", "image": "c"}]},
            "m",
        ),
    ],
    ids=["two-services", "service-and-init", "two-inits"],
)
def test_duplicate_container_names_are_rejected(payload: dict[str, Any], name: str) -> None:
    with pytest.raises(ValidationError) as info:
        PodmanScore.model_validate(payload)
    assert f"container name {name!r} is used more than once" in str(info.value)


def test_distinct_names_across_services_and_inits_are_fine() -> None:
    score = PodmanScore.model_validate(
        {**_minimal(), "init_containers": [{"name": "web-init", "image": "b"}]}
    )
    assert [score.services[0].name, score.init_containers[0].name] == ["web", "web-init"]


@pytest.mark.parametrize("name", ["web", "w", "web-1", "1web", "a" * 63])
def test_valid_container_names(name: str) -> None:
    assert Service(name=name, image="img").name == name
    assert InitContainer(name=name, image="img").name == name


@pytest.mark.parametrize("name", ["", "Web", "web_1", "web.1", "-web", "web-", "web 1", "a" * 64])
def test_invalid_container_names(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        Service(name=name, image="img")
    assert _error_locs(info.value) == [("name",)]
    with pytest.raises(ValidationError):
        InitContainer(name=name, image="img")


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "localhost/demo:1",
        "docker.io/library/nginx:1.25",
        "quay.io/org/app@sha256:" + "a" * 64,
        "x" * 512,
    ],
)
def test_valid_images(image: str) -> None:
    assert Service(name="web", image=image).image == image


@pytest.mark.parametrize("image", ["", "nginx latest", " nginx", "nginx\n", "nginx\t:1", "x" * 513])
def test_invalid_images(image: str) -> None:
    with pytest.raises(ValidationError) as info:
        Service(name="web", image=image)
    assert _error_locs(info.value) == [("image",)]


# ----------------------------------------------------------------------------- env


@pytest.mark.parametrize("name", ["MODE", "_PRIVATE", "a", "path", "X1", "DB_URL_2", "_"])
def test_valid_env_names(name: str) -> None:
    assert Service(name="web", image="img", env={name: "v"}).env == {name: "v"}
    assert InitContainer(name="init", image="img", env={name: "v"}).env == {name: "v"}


@pytest.mark.parametrize(
    "name", ["", "1MODE", "MODE-X", "MODE X", "MODE=1", "MODE.X", "MÖDE", "$HOME", " MODE"]
)
def test_invalid_env_names(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        Service(name="web", image="img", env={"OK": "1", name: "v"})
    assert _error_locs(info.value) == [("env",)]
    assert f"environment variable name {name!r} is not valid" in str(info.value)
    with pytest.raises(ValidationError, match="environment variable name"):
        InitContainer(name="init", image="img", env={name: "v"})


def test_env_name_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Service(name="web", image="img", env={"MODE\n": "v"})


@pytest.mark.parametrize("value", [1, None, True, ["a"]])
def test_env_values_must_be_strings(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Service.model_validate({"name": "web", "image": "img", "env": {"MODE": value}})
    assert _error_locs(info.value) == [("env", "MODE")]


def test_env_values_may_be_anything_textual() -> None:
    env = {"EMPTY": "", "SPACES": "a b c", "EQ": "a=b", "NL": "line1\nline2", "UNI": "é"}
    assert Service(name="web", image="img", env=env).env == env


# ----------------------------------------------------------------------------- ports and volumes


def test_port_defaults_and_values() -> None:
    port = PortMapping(container_port=80)
    assert json.loads(port.to_json_bytes()) == {
        "container_port": 80,
        "host_port": None,
        "protocol": "tcp",
        "host_ip": None,
    }
    udp = PortMapping.model_validate(
        {"container_port": 53, "host_port": 5353, "protocol": "udp", "host_ip": "127.0.0.1"}
    )
    assert (udp.container_port, udp.host_port, udp.protocol.value, udp.host_ip) == (
        53,
        5353,
        "udp",
        "127.0.0.1",
    )
    assert PortMapping(container_port=1, host_port=65535).host_port == 65535
    assert PortMapping(container_port=65535).container_port == 65535


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"container_port": 0}, ("container_port",)),
        ({"container_port": 65536}, ("container_port",)),
        ({"container_port": -80}, ("container_port",)),
        ({}, ("container_port",)),
        ({"container_port": 80, "host_port": 0}, ("host_port",)),
        ({"container_port": 80, "host_port": 70000}, ("host_port",)),
        ({"container_port": 80, "protocol": "sctp"}, ("protocol",)),
        ({"container_port": 80, "protocol": "TCP"}, ("protocol",)),
        ({"container_port": 80, "host_ip": "1" * 65}, ("host_ip",)),
    ],
)
def test_invalid_ports(data: dict[str, Any], loc: tuple[str]) -> None:
    with pytest.raises(ValidationError) as info:
        PortMapping.model_validate(data)
    assert _error_locs(info.value) == [loc]


@pytest.mark.parametrize("source", ["/srv/web", "/", "data", "my-vol_1.v2", "V", "0"])
def test_valid_volume_sources(source: str) -> None:
    volume = VolumeMount(source=source, target="/data")
    assert volume.source == source
    assert volume.read_only is False


@pytest.mark.parametrize(
    "source", ["", "relative/path", "./data", "-vol", ".hidden", "_vol", "my vol", "vol:ro", "~/x"]
)
def test_invalid_volume_sources(source: str) -> None:
    with pytest.raises(ValidationError) as info:
        VolumeMount(source=source, target="/data")
    assert _error_locs(info.value) == [("source",)]


@pytest.mark.parametrize("target", ["", "data", "./data", "~/data", "/" + "x" * 4096])
def test_invalid_volume_targets(target: str) -> None:
    with pytest.raises(ValidationError) as info:
        VolumeMount(source="/srv", target=target)
    assert _error_locs(info.value) == [("target",)]


# ----------------------------------------------------------------------------- restart policy


def test_restart_policy_values() -> None:
    assert [p.value for p in RestartPolicy] == ["no", "always", "on-failure", "unless-stopped"]


@pytest.mark.parametrize("policy", ["no", "always", "on-failure", "unless-stopped"])
def test_every_restart_policy_round_trips(policy: str) -> None:
    score = PodmanScore.model_validate(_minimal(restart_policy=policy))
    assert score.services[0].restart_policy == RestartPolicy(policy)
    assert json.loads(score.to_json_bytes())["services"][0]["restart_policy"] == policy


@pytest.mark.parametrize("policy", ["never", "Always", "on_failure", "onfailure", "", None, False])
def test_unknown_restart_policies_are_rejected(policy: object) -> None:
    with pytest.raises(ValidationError) as info:
        PodmanScore.model_validate(_minimal(restart_policy=policy))
    assert _error_locs(info.value) == [("services", 0, "restart_policy")]


# ----------------------------------------------------------------------------- validation summary


def test_validation_summary_names_fields_without_values() -> None:
    payload = {
        "services": [
            {"name": "Bad_Name", "image": "img", "env": {"TOKEN": 12345}},
            {"name": "ok", "image": "has space-s3cr3t"},
        ]
    }
    with pytest.raises(ValidationError) as info:
        PodmanScore.model_validate(payload)
    summary = validation_summary(info.value)
    parts = summary.split("; ")
    assert [p.split(":")[0] for p in parts] == [
        "services.0.name",
        "services.0.env.TOKEN",
        "services.1.image",
    ]
    assert "s3cr3t" not in summary
    assert "12345" not in summary
    assert "Bad_Name" not in summary


def test_validation_summary_of_a_model_level_error_uses_root() -> None:
    with pytest.raises(ValidationError) as info:
        PodmanScore.model_validate(
            {"services": [{"name": "web", "image": "a"}, {"name": "web", "image": "b"}]}
        )
    assert validation_summary(info.value) == (
        "<root>: Value error, container name 'web' is used more than once"
    )


# ----------------------------------------------------------------------------- canonical JSON, hashes


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": [1, {"d": None, "c": True}], "a": "é"}) == (
        '{"a":"é","b":[1,{"c":true,"d":null}]}'.encode()
    )
    assert canonical_json([]) == b"[]"
    assert canonical_json("x") == b'"x"'


def test_spec_hash_is_the_first_16_hex_of_sha256_of_canonical_json() -> None:
    value = {"b": 1, "a": [1, 2]}
    assert spec_hash(value) == hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()[:16]
    score = PodmanScore.model_validate(DOC_EXAMPLE)
    expected = hashlib.sha256(canonical_json(DOC_EXAMPLE_FULL)).hexdigest()[:16]
    assert score.spec_hash() == spec_hash(score) == expected


def test_spec_hash_golden_values() -> None:
    """Hashes are compared across releases (an operator restart must not rewrite unchanged keys):
    changing the serialisation of a score is a wire change and must be deliberate."""
    score = PodmanScore.model_validate(
        {
            "services": [{"name": "web", "image": "localhost/demo:1", "env": {"B": "2", "A": "1"}}],
            "init_containers": [{"name": "migrate", "image": "localhost/demo:1", "args": ["migrate"]}],
        }
    )
    assert score.spec_hash() == "b4dda3ae2b1fdbfb"
    assert score.services[0].spec_hash() == "43ba53c50bd712a0"


def test_spec_hash_is_independent_of_env_order_and_explicit_defaults() -> None:
    a = PodmanScore.model_validate(_minimal(env={"A": "1", "B": "2", "C": "3"}))
    b = PodmanScore.model_validate(
        {
            "init_containers": [],
            "version": 0,
            "services": [
                {
                    "restart_policy": "always",
                    "env": {"C": "3", "A": "1", "B": "2"},
                    "image": "localhost/demo:1",
                    "name": "web",
                    "args": [],
                }
            ],
        }
    )
    assert a.spec_hash() == b.spec_hash()
    assert a.services[0].spec_hash() == b.services[0].spec_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"image": "localhost/demo:2"},
        {"env": {"A": "1", "B": "3"}},
        {"env": {"A": "1"}},
        {"args": ["-v"]},
        {"command": []},
        {"restart_policy": "no"},
        {"ports": [{"container_port": 80}]},
        {"volumes": [{"source": "data", "target": "/data"}]},
    ],
)
def test_spec_hash_changes_when_content_changes(change: dict[str, Any]) -> None:
    base = PodmanScore.model_validate(_minimal(env={"A": "1", "B": "2"}))
    changed = PodmanScore.model_validate(_minimal(**{"env": {"A": "1", "B": "2"}, **change}))
    assert changed != base
    assert changed.spec_hash() != base.spec_hash()
    assert changed.services[0].spec_hash() != base.services[0].spec_hash()


def test_spec_hash_changes_with_init_containers_and_their_timeout() -> None:
    base = PodmanScore.model_validate(_minimal())
    with_init = PodmanScore.model_validate({**_minimal(), "init_containers": [{"name": "m", "image": "img"}]})
    longer = PodmanScore.model_validate(
        {**_minimal(), "init_containers": [{"name": "m", "image": "img", "timeout": 301}]}
    )
    assert len({base.spec_hash(), with_init.spec_hash(), longer.spec_hash()}) == 3
    # the service hash covers the service only
    assert base.services[0].spec_hash() == with_init.services[0].spec_hash()


def test_service_order_is_significant() -> None:
    one = PodmanScore.model_validate(
        {"services": [{"name": "a", "image": "img"}, {"name": "b", "image": "img"}]}
    )
    two = PodmanScore.model_validate(
        {"services": [{"name": "b", "image": "img"}, {"name": "a", "image": "img"}]}
    )
    assert one.spec_hash() != two.spec_hash()


@settings(PROPERTY, max_examples=100)
@given(json_objects, st.randoms(use_true_random=False))
def test_hash_is_stable_under_key_order(value: dict[str, Any], rnd: random.Random) -> None:
    shuffled = reorder(value, rnd)
    assert shuffled == value
    assert canonical_json(shuffled) == canonical_json(value)
    assert spec_hash(shuffled) == spec_hash(value)
    assert json.loads(canonical_json(value)) == value


@settings(PROPERTY, max_examples=100)
@given(json_objects, json_values)
def test_hash_changes_when_a_key_is_added(value: dict[str, Any], extra: Any) -> None:
    key = "\x00new" + "".join(sorted(value))  # cannot already be a key
    assert spec_hash({**value, key: extra}) != spec_hash(value)


@PROPERTY
@given(
    st.dictionaries(
        st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,8}\Z", fullmatch=True), st.text(max_size=8), max_size=8
    ),
    st.randoms(use_true_random=False),
    dns1123_labels,
)
def test_score_hash_is_stable_under_env_insertion_order(
    env: dict[str, str], rnd: random.Random, name: str
) -> None:
    a = PodmanScore.model_validate({"services": [{"name": name, "image": "img", "env": env}]})
    b = PodmanScore.model_validate({"services": [{"name": name, "image": "img", "env": reorder(env, rnd)}]})
    assert a == b
    assert a.spec_hash() == b.spec_hash()
    assert len(a.spec_hash()) == 16
    assert all(c in "0123456789abcdef" for c in a.spec_hash())
    assert PodmanScore.model_validate_json(a.to_json_bytes()).spec_hash() == a.spec_hash()


def test_wire_model_and_strict_wire_model_differ_only_in_extras() -> None:
    class Loose(WireModel):
        a: int

    class Strict(StrictWireModel):
        a: int

    assert Loose.model_validate({"a": 1, "b": 2}).model_dump() == {"a": 1}
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Strict.model_validate({"a": 1, "b": 2})
    assert Loose(a=1).to_json_bytes() == Strict(a=1).to_json_bytes() == b'{"a":1}'
