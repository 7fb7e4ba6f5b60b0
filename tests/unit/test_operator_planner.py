"""The operator's pure planner (operator.planner): Deployments x Devices -> desired-state keys,
and the diff against what the bucket holds.

The properties model the bucket as a plain dict and "apply" a diff to it the way the operator
writes it (puts, then deletes), then check the contract (docs/wire-contract.md):

* the managed part of the bucket equals the plan (by JSON meaning);
* keys of tokens the operator does not manage, and keys that are not desired-state keys at
  all, are never touched;
* a second diff is empty (an operator restart rewrites nothing);
* relabelling a device moves exactly that device's keys, as the selector says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony_fleet.contracts import (
    KeyFormatError,
    PodmanScore,
    Service,
    desired_state_key,
    parse_desired_state_key,
)
from harmony_fleet.contracts.crd import LabelSelector, Rollout, RolloutStrategy
from harmony_fleet.operator.planner import (
    DeploymentView,
    DesiredDiff,
    diff_desired_state,
    plan_desired_state,
    rollout_targets,
)
from harmony_fleet.planning import same_value, score_bytes

from .strategies import PROPERTY, deployment_tokens, device_ids

# ---- helpers ---------------------------------------------------------------------------------


def score(image: str) -> PodmanScore:
    return PodmanScore(services=[Service(name="app", image=image)])


S1, S2 = score("localhost/app:1"), score("localhost/app:2")
B1, B2 = score_bytes(S1), score_bytes(S2)


def sel(raw: Mapping[str, Any] | None = None) -> LabelSelector:
    return LabelSelector.model_validate(raw or {})


def valid(token: str, raw: Mapping[str, Any] | None = None, s: PodmanScore = S1) -> DeploymentView:
    return DeploymentView(token, sel(raw), s)


def invalid(token: str, raw: Mapping[str, Any] | None = None) -> DeploymentView:
    return DeploymentView(token, sel(raw), None, error="invalid spec: services: field required")


def deleting(token: str, s: PodmanScore | None = S1, raw: Mapping[str, Any] | None = None) -> DeploymentView:
    return DeploymentView(token, sel(raw), s, deleting=True)


def reformatted(value: bytes) -> bytes:
    doc = json.loads(value)

    def rev(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: rev(d[k]) for k in reversed(list(d))}
        if isinstance(d, list):
            return [rev(v) for v in d]
        return d

    return json.dumps(rev(doc), indent=1).encode()


def apply(diff: DesiredDiff, bucket: Mapping[str, bytes]) -> dict[str, bytes]:
    after = dict(bucket)
    after.update(diff.put)
    for key in diff.delete:
        after.pop(key, None)
    return after


def token_of(key: str) -> str | None:
    try:
        return parse_desired_state_key(key).deployment
    except (KeyFormatError, ValueError):
        return None


def device_of(key: str) -> str | None:
    try:
        return parse_desired_state_key(key).device_id
    except (KeyFormatError, ValueError):
        return None


def k8s_matches(raw: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Reference LabelSelector semantics (Kubernetes docs), over the raw selector document."""
    reqs = [(k, "In", [v]) for k, v in (raw.get("matchLabels") or {}).items()]
    reqs += [(e["key"], e["operator"], e.get("values") or []) for e in raw.get("matchExpressions") or []]
    checks = {
        "In": lambda k, vs: k in labels and labels[k] in vs,
        "NotIn": lambda k, vs: k not in labels or labels[k] not in vs,
        "Exists": lambda k, _: k in labels,
        "DoesNotExist": lambda k, _: k not in labels,
    }
    return all(checks[op](k, vs) for k, op, vs in reqs)


FLEET = {
    "pi-1": {"app": "web", "zone": "eu"},
    "pi-2": {"app": "web", "zone": "us"},
    "pi-3": {"app": "db"},
    "gw-1": {},
}

# ---- rollout and views -----------------------------------------------------------------------


def test_rollout_all_at_once_targets_every_matching_device() -> None:
    view = valid("default_web")
    assert view.rollout.strategy is RolloutStrategy.ALL_AT_ONCE
    assert rollout_targets(view, ["a", "b"]) == ["a", "b"]
    assert rollout_targets(view, []) == []
    assert rollout_targets(DeploymentView("t", sel(), S1, Rollout()), ["x"]) == ["x"]


def test_view_value_is_the_canonical_score_bytes() -> None:
    assert valid("t").value == B1
    assert valid("t", s=S2).value == B2
    assert invalid("t").value is None


# ---- plan_desired_state ----------------------------------------------------------------------


def test_plan_has_one_key_per_matching_device() -> None:
    web = valid("default_web", {"matchLabels": {"app": "web"}})
    plan, matched, managed = plan_desired_state([web], FLEET)
    assert plan == {"pi-1.default_web": B1, "pi-2.default_web": B1}
    assert matched == {"default_web": ["pi-1", "pi-2"]}
    assert managed == {"default_web"}


def test_empty_selector_targets_every_device() -> None:
    plan, matched, _ = plan_desired_state([valid("all")], FLEET)
    assert set(plan) == {f"{d}.all" for d in FLEET}
    assert matched == {"all": sorted(FLEET)}


def test_a_selector_matching_nothing_is_managed_with_no_keys() -> None:
    plan, matched, managed = plan_desired_state([valid("none", {"matchLabels": {"app": "nope"}})], FLEET)
    assert plan == {}
    assert matched == {"none": []}
    assert managed == {"none"}


def test_an_invalid_deployment_is_neither_planned_nor_managed() -> None:
    plan, matched, managed = plan_desired_state([invalid("default_bad"), valid("default_ok")], FLEET)
    assert all(token_of(k) == "default_ok" for k in plan)
    assert "default_bad" not in matched
    assert managed == {"default_ok"}


@pytest.mark.parametrize("s", [S1, None])
def test_a_deleting_deployment_is_managed_with_no_targets(s: PodmanScore | None) -> None:
    plan, matched, managed = plan_desired_state([deleting("default_gone", s)], FLEET)
    assert plan == {}
    assert matched == {"default_gone": []}
    assert managed == {"default_gone"}


def test_several_deployments_are_planned_independently() -> None:
    views = [
        valid("default_web", {"matchLabels": {"app": "web"}}, S1),
        valid("ops_db", {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}, S2),
        valid("edge", {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, S2),
    ]
    plan, matched, managed = plan_desired_state(views, FLEET)
    assert plan == {
        "pi-1.default_web": B1,
        "pi-2.default_web": B1,
        "pi-3.ops_db": B2,
        "gw-1.edge": B2,
    }
    assert matched == {"default_web": ["pi-1", "pi-2"], "ops_db": ["pi-3"], "edge": ["gw-1"]}
    assert managed == {"default_web", "ops_db", "edge"}


def test_no_devices_no_keys() -> None:
    plan, matched, managed = plan_desired_state([valid("t")], {})
    assert (plan, matched, managed) == ({}, {"t": []}, {"t"})
    assert plan_desired_state([], FLEET) == ({}, {}, set())


# ---- diff_desired_state: examples -----------------------------------------------------------


def test_diff_puts_new_and_changed_keys_only() -> None:
    plan = {"pi-1.web": B1, "pi-2.web": B1, "pi-3.web": B1}
    current = {"pi-1.web": B1, "pi-2.web": B2}
    diff = diff_desired_state(plan, current, {"web"})
    assert diff.put == {"pi-2.web": B1, "pi-3.web": B1}
    assert diff.delete == []
    assert not diff.empty


def test_diff_treats_reformatted_json_as_unchanged() -> None:
    diff = diff_desired_state({"pi-1.web": B1}, {"pi-1.web": reformatted(B1)}, {"web"})
    assert diff.empty
    assert diff.put == {}
    assert diff.delete == []


def test_diff_overwrites_garbage() -> None:
    diff = diff_desired_state({"pi-1.web": B1}, {"pi-1.web": b"\x00garbage"}, {"web"})
    assert diff.put == {"pi-1.web": B1}


def test_diff_deletes_stale_keys_of_managed_tokens_sorted() -> None:
    current = {"pi-9.web": B1, "pi-1.web": B1, "gone.web": B2, "pi-1.db": B1}
    diff = diff_desired_state({"pi-1.web": B1}, current, {"web", "db"})
    assert diff.put == {}
    assert diff.delete == ["gone.web", "pi-1.db", "pi-9.web"]


def test_diff_never_touches_unmanaged_tokens() -> None:
    current = {"pi-1.adhoc": B1, "pi-1.default_bad": B2, "pi-1.web": B1}
    diff = diff_desired_state({}, current, {"web"})
    assert diff.delete == ["pi-1.web"]
    assert diff.put == {}


@pytest.mark.parametrize(
    "key",
    [
        "nodot",
        "a.b.c",
        "Pi-1.web",
        "pi-1.Web",
        ".web",
        "pi-1.",
        "pi-1.ns_name_extra",
        "pi_1.web",
        "-pi.web",
        "pi-1.web-",
        "",
        "state.pi-1.web",
        "pi-1.*",
        "pi-1.>",
    ],
)
def test_diff_never_touches_malformed_keys(key: str) -> None:
    current = {key: b"whatever", "pi-1.web": B1}
    diff = diff_desired_state({}, current, {"web", "ns_name", "b", "web-"})
    assert diff.delete == ["pi-1.web"]
    assert diff.put == {}


def test_an_invalid_deployment_keeps_its_last_keys_until_deleted() -> None:
    """The last valid score keeps running while the spec is broken; deletion removes it."""
    fleet = {"pi-1": {"app": "web"}}
    plan, _, managed = plan_desired_state([valid("default_web", {"matchLabels": {"app": "web"}})], fleet)
    bucket = apply(diff_desired_state(plan, {}, managed), {})
    assert bucket == {"pi-1.default_web": B1}

    plan, _, managed = plan_desired_state([invalid("default_web")], fleet)
    assert diff_desired_state(plan, bucket, managed).empty

    plan, _, managed = plan_desired_state([deleting("default_web", None)], fleet)
    diff = diff_desired_state(plan, bucket, managed)
    assert diff.delete == ["pi-1.default_web"]
    assert apply(diff, bucket) == {}


def test_changing_the_score_rewrites_every_key() -> None:
    fleet = {"pi-1": {}, "pi-2": {}}
    plan, _, managed = plan_desired_state([valid("web", s=S1)], fleet)
    bucket = apply(diff_desired_state(plan, {}, managed), {})
    plan, _, managed = plan_desired_state([valid("web", s=S2)], fleet)
    diff = diff_desired_state(plan, bucket, managed)
    assert diff.put == {"pi-1.web": B2, "pi-2.web": B2}
    assert diff.delete == []


def test_empty_diff() -> None:
    assert DesiredDiff().empty
    assert not DesiredDiff(put={"a.b": b"{}"}).empty
    assert not DesiredDiff(delete=["a.b"]).empty
    assert diff_desired_state({}, {}, set()).empty


# ---- properties ------------------------------------------------------------------------------

LABEL_KEYS = ["app", "zone", "tier"]
LABEL_VALUES = ["a", "b"]
label_sets = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES))
requirement_docs = st.one_of(
    st.builds(
        lambda k, op, vs: {"key": k, "operator": op, "values": vs},
        st.sampled_from(LABEL_KEYS),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2),
    ),
    st.builds(
        lambda k, op: {"key": k, "operator": op},
        st.sampled_from(LABEL_KEYS),
        st.sampled_from(["Exists", "DoesNotExist"]),
    ),
)
selector_docs = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": st.dictionaries(
            st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=1
        ),
        "matchExpressions": st.lists(requirement_docs, max_size=2),
    },
)

DEVICES = ["pi-1", "pi-2", "pi-10", "gw", "vm-a"]
GONE_DEVICES = ["old-1", "old-2"]  # keys exist for them, the fleet forgot them
TOKENS = ["default_web", "ops_db", "edge", "prod_api"]
UNMANAGED_TOKENS = ["adhoc", "ansible_job"]  # never given to the planner: fleet_deployment module
MALFORMED_KEYS = ["nodot", "a.b.c", "PI.web", "pi-1.", ".edge", "pi-1.x_y_z", "state.pi-1.edge"]
VALUES = [B1, B2, reformatted(B1), reformatted(B2), b"\xffgarbage", b"{}"]


#: World-sized examples are costly to generate; 100 of them still cover every view kind and
#: key category many times over.
WORLD = settings(PROPERTY, max_examples=100)


@dataclass
class World:
    views: list[DeploymentView]
    raw_selectors: dict[str, dict[str, Any]]
    fleet: dict[str, dict[str, str]]
    bucket: dict[str, bytes]


@st.composite
def worlds(draw: st.DrawFn, tokens: st.SearchStrategy[str] | None = None) -> World:
    names = draw(
        st.lists(tokens, unique=True, max_size=4) if tokens is not None
        else st.lists(st.sampled_from(TOKENS), unique=True, max_size=len(TOKENS))
    )
    views, raws = [], {}
    for token in names:
        raw = draw(selector_docs)
        raws[token] = raw
        kind = draw(st.sampled_from(["valid", "valid", "valid", "invalid", "deleting", "deleting-invalid"]))
        if kind == "valid":
            views.append(valid(token, raw, draw(st.sampled_from([S1, S2]))))
        elif kind == "invalid":
            views.append(invalid(token, raw))
        else:
            views.append(deleting(token, None if kind == "deleting-invalid" else S1, raw))
    fleet = draw(st.dictionaries(st.sampled_from(DEVICES), label_sets, max_size=len(DEVICES)))
    candidate_keys = [f"{d}.{t}" for d in DEVICES + GONE_DEVICES for t in names + UNMANAGED_TOKENS]
    candidate_keys += MALFORMED_KEYS
    bucket = draw(st.dictionaries(st.sampled_from(candidate_keys), st.sampled_from(VALUES)))
    return World(views, raws, fleet, bucket)


def managed_part(bucket: Mapping[str, bytes], managed: set[str]) -> dict[str, bytes]:
    return {k: v for k, v in bucket.items() if token_of(k) in managed}


def unmanaged_part(bucket: Mapping[str, bytes], managed: set[str]) -> dict[str, bytes]:
    return {k: v for k, v in bucket.items() if token_of(k) not in managed}


@WORLD
@given(worlds())
def test_plan_is_exactly_the_matching_devices_of_valid_deployments(world: World) -> None:
    plan, matched, managed = plan_desired_state(world.views, world.fleet)
    expected_plan: dict[str, bytes] = {}
    for view in world.views:
        if view.deleting:
            assert view.token in managed
            assert matched[view.token] == []
        elif view.score is None:
            assert view.token not in managed
            assert view.token not in matched
        else:
            assert view.token in managed
            devices = sorted(d for d, labels in world.fleet.items()
                             if k8s_matches(world.raw_selectors[view.token], labels))
            assert matched[view.token] == devices
            expected_plan.update({desired_state_key(d, view.token): score_bytes(view.score) for d in devices})
    assert plan == expected_plan
    assert set(matched) == managed


@WORLD
@given(worlds())
def test_applying_the_diff_makes_the_managed_part_equal_the_plan(world: World) -> None:
    plan, _, managed = plan_desired_state(world.views, world.fleet)
    diff = diff_desired_state(plan, world.bucket, managed)
    after = apply(diff, world.bucket)

    managed_after = managed_part(after, managed)
    assert set(managed_after) == set(plan)
    assert all(same_value(managed_after[k], plan[k]) for k in plan)
    # unmanaged tokens and malformed keys: byte for byte what they were
    assert unmanaged_part(after, managed) == unmanaged_part(world.bucket, managed)

    # and only what had to change was written
    assert set(diff.delete) <= set(world.bucket)
    assert not set(diff.put) & set(diff.delete)
    assert diff.delete == sorted(diff.delete)
    for key, value in diff.put.items():
        assert value == plan[key]
        assert not same_value(world.bucket.get(key), value)


@WORLD
@given(worlds())
def test_a_second_diff_is_empty(world: World) -> None:
    """An operator restart (same inputs, the bucket as the first run left it) writes nothing."""
    plan, _, managed = plan_desired_state(world.views, world.fleet)
    after = apply(diff_desired_state(plan, world.bucket, managed), world.bucket)
    replan, _, remanaged = plan_desired_state(world.views, world.fleet)
    assert (replan, remanaged) == (plan, managed)
    second = diff_desired_state(replan, after, remanaged)
    assert second.empty, second


@WORLD
@given(worlds(), st.sampled_from(DEVICES), label_sets)
def test_relabelling_a_device_moves_its_keys_as_the_selector_says(
    world: World, device: str, new_labels: dict[str, str]
) -> None:
    plan, _, managed = plan_desired_state(world.views, world.fleet)
    converged = apply(diff_desired_state(plan, world.bucket, managed), world.bucket)

    fleet = {**world.fleet, device: new_labels}
    plan2, _, managed2 = plan_desired_state(world.views, fleet)
    diff = diff_desired_state(plan2, converged, managed2)
    after = apply(diff, converged)

    # only the relabelled device's keys change
    assert all(device_of(k) == device for k in [*diff.put, *diff.delete])
    assert {k: v for k, v in after.items() if device_of(k) != device} == {
        k: v for k, v in converged.items() if device_of(k) != device
    }
    for view in world.views:
        key = desired_state_key(device, view.token)
        if view.deleting:
            assert key not in after
        elif view.score is None:  # not managed: whatever was there stays
            assert after.get(key) == converged.get(key)
        elif k8s_matches(world.raw_selectors[view.token], new_labels):
            assert same_value(after.get(key), score_bytes(view.score))
        else:
            assert key not in after
    for token in UNMANAGED_TOKENS:
        key = f"{device}.{token}"
        assert after.get(key) == converged.get(key)


@settings(PROPERTY, max_examples=50)
@given(worlds(tokens=deployment_tokens), st.lists(device_ids, max_size=3, unique=True))
def test_properties_hold_for_arbitrary_tokens_and_device_ids(world: World, extra: list[str]) -> None:
    fleet = {**world.fleet, **{d: {"app": "a"} for d in extra}}
    plan, _, managed = plan_desired_state(world.views, fleet)
    for key in plan:
        assert device_of(key) in fleet
        assert token_of(key) in managed
    after = apply(diff_desired_state(plan, world.bucket, managed), world.bucket)
    assert set(managed_part(after, managed)) == set(plan)
    assert unmanaged_part(after, managed) == unmanaged_part(world.bucket, managed)
    assert diff_desired_state(plan, after, managed).empty
