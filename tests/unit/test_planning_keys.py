"""Desired-state key planning for one deployment (planning.plan_desired_keys, same_value,
score_bytes).

``plan_desired_keys(targets, value, current)`` must make exactly ``targets`` hold ``value``
(``None``: remove everything) and touch nothing that is already right, where "right" means
the same JSON document (key order and whitespace do not matter). Applying a plan and planning
again must find nothing to do.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harmony_fleet.contracts import (
    InitContainer,
    PodmanScore,
    PortMapping,
    Service,
    VolumeMount,
    canonical_json,
)
from harmony_fleet.planning import KeyPlan, plan_desired_keys, same_value, score_bytes

from .strategies import PROPERTY, json_objects, reorder

# ---- fixtures and helpers --------------------------------------------------------------------


def score(image: str = "localhost/web:1", **service: Any) -> PodmanScore:
    return PodmanScore(services=[Service(name="web", image=image, **service)])


V1 = score_bytes(score("localhost/web:1"))
V2 = score_bytes(score("localhost/web:2"))


def reversed_keys(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: reversed_keys(doc[k]) for k in reversed(list(doc))}
    if isinstance(doc, list):
        return [reversed_keys(v) for v in doc]
    return doc


def reformatted(value: bytes) -> bytes:
    """The same JSON document, with every key order reversed and generous whitespace."""
    return json.dumps(reversed_keys(json.loads(value)), indent=2, separators=(" , ", " : ")).encode()


V1_REFORMATTED = reformatted(V1)
GARBAGE = b"\xff\xfe not json"
TRUNCATED = V1[:-1]

DEVICE_POOL = ["pi-1", "pi-10", "pi-2", "gw-a", "gw-b", "vm-0", "z"]


def apply(plan: KeyPlan, current: dict[str, bytes]) -> dict[str, bytes]:
    """What the bucket holds after ``plan`` is written."""
    after = {d: v for d, v in current.items() if d not in plan.delete}
    after.update(plan.put)
    return after


def assert_no_changes(plan: KeyPlan) -> None:
    assert plan.put == {}
    assert plan.created == []
    assert plan.updated == []
    assert plan.delete == []
    assert plan.changed is False


# ---- examples --------------------------------------------------------------------------------


def test_everything_new_is_created() -> None:
    plan = plan_desired_keys(["pi-2", "pi-1"], V1, {})
    assert plan.put == {"pi-1": V1, "pi-2": V1}
    assert plan.created == ["pi-1", "pi-2"]
    assert plan.updated == []
    assert plan.unchanged == []
    assert plan.delete == []
    assert plan.changed is True


def test_equal_values_are_left_alone() -> None:
    plan = plan_desired_keys(["pi-1", "pi-2"], V1, {"pi-1": V1, "pi-2": V1_REFORMATTED})
    assert_no_changes(plan)
    assert plan.unchanged == ["pi-1", "pi-2"]


def test_a_different_value_is_updated() -> None:
    plan = plan_desired_keys(["pi-1", "pi-2"], V2, {"pi-1": V1, "pi-2": V2})
    assert plan.put == {"pi-1": V2}
    assert plan.updated == ["pi-1"]
    assert plan.created == []
    assert plan.unchanged == ["pi-2"]
    assert plan.delete == []


@pytest.mark.parametrize("broken", [GARBAGE, TRUNCATED, b"", b"null", b"{}", b"[]"])
def test_a_broken_or_foreign_value_is_overwritten(broken: bytes) -> None:
    plan = plan_desired_keys(["pi-1"], V1, {"pi-1": broken})
    assert plan.put == {"pi-1": V1}
    assert plan.updated == ["pi-1"]


def test_devices_no_longer_targeted_are_deleted() -> None:
    plan = plan_desired_keys(["pi-1"], V1, {"pi-1": V1, "pi-2": V1, "gw-a": GARBAGE})
    assert plan.delete == ["gw-a", "pi-2"]
    assert plan.put == {}
    assert plan.unchanged == ["pi-1"]
    assert plan.changed is True


def test_value_none_removes_every_key_and_writes_nothing() -> None:
    plan = plan_desired_keys(["pi-1", "pi-2"], None, {"pi-2": V1, "pi-1": V2, "z": GARBAGE})
    assert plan.put == {}
    assert plan.created == plan.updated == plan.unchanged == []
    assert plan.delete == ["pi-1", "pi-2", "z"]
    assert plan.changed is True


def test_value_none_on_an_empty_bucket_is_a_no_op() -> None:
    assert_no_changes(plan_desired_keys(["pi-1"], None, {}))


def test_no_targets_and_nothing_current_is_a_no_op() -> None:
    plan = plan_desired_keys([], V1, {})
    assert_no_changes(plan)
    assert plan.unchanged == []


def test_duplicate_targets_are_planned_once_and_any_iterable_works() -> None:
    plan = plan_desired_keys(iter(["pi-2", "pi-1", "pi-2", "pi-1"]), V1, {"pi-1": V1})
    assert plan.created == ["pi-2"]
    assert plan.unchanged == ["pi-1"]
    assert plan.put == {"pi-2": V1}


def test_lists_are_sorted() -> None:
    current = {"pi-2": V2, "pi-10": V2, "z": V1, "gw-b": V1, "gw-a": V1}
    plan = plan_desired_keys(["z", "pi-2", "vm-0", "pi-10", "a", "gw-b"], V1, current)
    assert plan.created == ["a", "vm-0"]
    assert plan.updated == ["pi-10", "pi-2"]
    assert plan.unchanged == ["gw-b", "z"]
    assert plan.delete == ["gw-a"]
    assert list(plan.put) == ["a", "pi-10", "pi-2", "vm-0"]


def test_empty_keyplan_is_unchanged() -> None:
    assert KeyPlan().changed is False
    assert KeyPlan(delete=["x"]).changed is True
    assert KeyPlan(put={"x": b"{}"}).changed is True
    assert KeyPlan(unchanged=["x"]).changed is False


# ---- properties over random buckets ---------------------------------------------------------

VALUE_POOL = [V1, V2, V1_REFORMATTED, GARBAGE, TRUNCATED]
devices = st.sampled_from(DEVICE_POOL)
targets_ = st.lists(devices, max_size=len(DEVICE_POOL))
currents = st.dictionaries(devices, st.sampled_from(VALUE_POOL), max_size=len(DEVICE_POOL))
wanted_values = st.sampled_from([V1, V2, None])


@PROPERTY
@given(targets_, wanted_values, currents)
def test_plan_partitions_the_targets(
    targets: list[str], value: bytes | None, current: dict[str, bytes]
) -> None:
    plan = plan_desired_keys(targets, value, current)
    wanted = set(targets) if value is not None else set()
    created, updated, unchanged = set(plan.created), set(plan.updated), set(plan.unchanged)
    assert created | updated | unchanged == wanted
    assert len(plan.created) + len(plan.updated) + len(plan.unchanged) == len(wanted)
    assert created == {d for d in wanted if d not in current}
    assert updated == {d for d in wanted if d in current and json_of(current[d]) != json_of(value)}
    assert set(plan.put) == created | updated
    assert all(v == value for v in plan.put.values())
    assert plan.delete == sorted(set(current) - wanted)
    for name in ("created", "updated", "unchanged", "delete"):
        got = getattr(plan, name)
        assert got == sorted(got)
    assert plan.changed is bool(plan.put or plan.delete)


def json_of(value: bytes | None) -> Any:
    """The JSON meaning of a value, or a sentinel that equals nothing else."""
    if value is None:
        return object()
    try:
        return json.loads(value)
    except ValueError:
        return object()


@PROPERTY
@given(targets_, wanted_values, currents)
def test_applying_a_plan_then_replanning_changes_nothing(
    targets: list[str], value: bytes | None, current: dict[str, bytes]
) -> None:
    first = plan_desired_keys(targets, value, current)
    after = apply(first, current)
    wanted = set(targets) if value is not None else set()
    assert set(after) == wanted
    assert all(same_value(after[d], value) for d in after if value is not None)
    second = plan_desired_keys(targets, value, after)
    assert_no_changes(second)
    assert second.unchanged == sorted(wanted)


@PROPERTY
@given(targets_, wanted_values, currents)
def test_a_plan_never_rewrites_a_key_that_already_means_the_value(
    targets: list[str], value: bytes | None, current: dict[str, bytes]
) -> None:
    plan = plan_desired_keys(targets, value, current)
    for device in plan.put:
        assert not same_value(current.get(device), value)  # type: ignore[arg-type]
    for device in plan.unchanged:
        assert same_value(current[device], value)  # type: ignore[arg-type]


# ---- same_value ------------------------------------------------------------------------------


def test_same_value_cases() -> None:
    assert same_value(None, V1) is False
    assert same_value(V1, V1) is True
    assert same_value(V1_REFORMATTED, V1) is True
    assert same_value(V1, V2) is False
    assert same_value(GARBAGE, V1) is False
    assert same_value(TRUNCATED, V1) is False
    assert same_value(b"", V1) is False
    assert same_value(b"  {\"a\" : [1, 2]}\n", b'{"a":[1,2]}') is True
    assert same_value(b'{"a":[2,1]}', b'{"a":[1,2]}') is False  # list order is meaning
    assert same_value(b'{"a":null}', b"{}") is False  # an explicit null is not an absent key
    assert same_value(b'{"a":"1"}', b'{"a":1}') is False


def test_identical_bytes_are_the_same_even_when_not_json() -> None:
    assert same_value(GARBAGE, GARBAGE) is True
    assert same_value(b"not json", b"also not json") is False


@settings(PROPERTY, max_examples=60)
@given(json_objects, st.randoms(use_true_random=False), st.sampled_from([None, 0, 2]), st.booleans())
def test_same_value_ignores_key_order_and_whitespace(
    doc: dict[str, Any], rnd: random.Random, indent: int | None, ascii_only: bool
) -> None:
    wanted = canonical_json(doc)
    other = json.dumps(reorder(doc, rnd), indent=indent, ensure_ascii=ascii_only).encode()
    assert same_value(other, wanted) is True
    assert same_value(wanted, wanted) is True


@settings(PROPERTY, max_examples=60)
@given(json_objects, st.text(max_size=5))
def test_same_value_sees_an_added_key(doc: dict[str, Any], key: str) -> None:
    extra_key = "\x00extra" + key
    assume(extra_key not in doc)
    changed = {**doc, extra_key: "x"}
    assert same_value(canonical_json(changed), canonical_json(doc)) is False
    assert same_value(canonical_json(doc), canonical_json(changed)) is False


def test_a_deeply_nested_current_value_is_just_different() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # 200 kB: under MAX_DESIRED_STATE_BYTES
    assert same_value(deep, V1) is False
    plan = plan_desired_keys(["pi-1"], V1, {"pi-1": deep})
    assert plan.put == {"pi-1": V1}


# ---- score_bytes -----------------------------------------------------------------------------


def test_score_bytes_is_canonical_json_of_the_wire_form() -> None:
    s = score(env={"B": "2", "A": "1"}, ports=[PortMapping(container_port=80, host_port=8080)])
    raw = score_bytes(s)
    assert raw == canonical_json(s.model_dump(mode="json"))
    assert b" " not in raw.replace(b"localhost/web:1", b"")
    doc = json.loads(raw)
    assert list(doc) == sorted(doc)
    assert list(doc["services"][0]["env"]) == ["A", "B"]
    assert doc["services"][0]["restart_policy"] == "always"  # enums as their wire values
    assert doc["init_containers"] == []
    assert PodmanScore.model_validate_json(raw) == s


def test_score_bytes_does_not_depend_on_how_the_score_was_written() -> None:
    explicit = PodmanScore.model_validate_json(
        b'{"init_containers": [], "version": 0, "services": [{"restart_policy": "always",'
        b' "env": {"Z": "1", "A": "2"}, "image": "localhost/web:1", "name": "web",'
        b' "args": [], "command": null, "ports": [], "volumes": []}]}'
    )
    minimal = PodmanScore.model_validate(
        {"services": [{"name": "web", "image": "localhost/web:1", "env": {"A": "2", "Z": "1"}}]}
    )
    assert explicit == minimal
    assert score_bytes(explicit) == score_bytes(minimal)


env_names = st.sampled_from(["A", "B", "PATH", "_X", "MODE_2"])
NAME_POOL = ["web", "db", "migrate", "a", "x-1", "0"]


@st.composite
def scores(draw: st.DrawFn) -> PodmanScore:
    names = draw(st.lists(st.sampled_from(NAME_POOL), min_size=1, max_size=4, unique=True))
    n_services = draw(st.integers(min_value=1, max_value=len(names)))
    services = [
        Service(
            name=name,
            image=draw(st.sampled_from(["localhost/a:1", "localhost/b:2", "quay.io/x/y@sha256:ab"])),
            command=draw(st.none() | st.lists(st.text(max_size=5), max_size=2)),
            args=draw(st.lists(st.text(max_size=5), max_size=2)),
            env=draw(st.dictionaries(env_names, st.text(max_size=5), max_size=3)),
            ports=[PortMapping(container_port=p) for p in draw(st.lists(st.integers(1, 65535), max_size=2))],
            volumes=draw(st.lists(st.builds(VolumeMount, source=st.just("/srv"), target=st.just("/data"),
                                            read_only=st.booleans()), max_size=1)),
        )
        for name in names[:n_services]
    ]
    inits = [
        InitContainer(name=name, image="localhost/init:1", timeout=draw(st.integers(1, 600)))
        for name in names[n_services:]
    ]
    return PodmanScore(services=services, init_containers=inits)


@settings(PROPERTY, max_examples=60)
@given(scores(), st.randoms(use_true_random=False))
def test_equal_scores_give_equal_bytes(s: PodmanScore, rnd: random.Random) -> None:
    shuffled = PodmanScore.model_validate(reorder(s.model_dump(mode="json"), rnd))
    assert shuffled == s
    assert score_bytes(shuffled) == score_bytes(s)
    assert PodmanScore.model_validate_json(score_bytes(s)) == s


@settings(PROPERTY, max_examples=60)
@given(scores(), scores())
def test_score_bytes_is_injective(a: PodmanScore, b: PodmanScore) -> None:
    assert (score_bytes(a) == score_bytes(b)) is (a == b)
