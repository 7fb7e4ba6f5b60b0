"""Kubernetes LabelSelector semantics (planning.selector_matches, planning.matching_devices).

The oracle is :func:`k8s_matches`, written from the Kubernetes documentation ("Labels and
Selectors", set-based requirements) against the *raw* camelCase selector document, not the
pydantic model, so it shares no code with the implementation under test:

* ``matchLabels`` ``{k: v}`` is the requirement ``k In [v]``;
* every requirement must hold (AND); no requirement at all matches everything;
* ``In``: the key is present and its value is one of ``values``;
* ``NotIn``: the key is absent, or its value is none of ``values``;
* ``Exists``: the key is present (any value, even ``""``);
* ``DoesNotExist``: the key is absent.

Keys and values come from small alphabets so that matches and non-matches are both frequent.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from harmony_fleet.contracts.crd import LabelSelector, LabelSelectorRequirement, SelectorOperator
from harmony_fleet.planning import matching_devices, selector_matches

from .strategies import PROPERTY, device_ids

# ---- the oracle ------------------------------------------------------------------------------


def k8s_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Reference LabelSelector evaluation, straight from the Kubernetes docs."""
    requirements = [(k, "In", [v]) for k, v in (selector.get("matchLabels") or {}).items()]
    requirements += [
        (e["key"], e["operator"], list(e.get("values") or []))
        for e in selector.get("matchExpressions") or []
    ]

    def holds(key: str, operator: str, values: list[str]) -> bool:
        if operator == "In":
            return key in labels and labels[key] in values
        if operator == "NotIn":
            return key not in labels or labels[key] not in values
        if operator == "Exists":
            return key in labels
        if operator == "DoesNotExist":
            return key not in labels
        raise AssertionError(f"unknown operator {operator}")

    return all(holds(*r) for r in requirements)


# ---- strategies ------------------------------------------------------------------------------

KEYS = ["app", "tier", "zone", "fleet.example.com/role"]
VALUES = ["a", "b", "c", ""]  # "" is a valid label value, distinct from an absent key

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)
label_sets = st.dictionaries(keys, values, max_size=len(KEYS))

set_requirements = st.builds(
    lambda key, op, vals: {"key": key, "operator": op, "values": vals},
    keys,
    st.sampled_from(["In", "NotIn"]),
    st.lists(values, min_size=1, max_size=3),
)
existence_requirements = st.builds(
    lambda key, op, explicit_empty: (
        {"key": key, "operator": op, "values": []} if explicit_empty else {"key": key, "operator": op}
    ),
    keys,
    st.sampled_from(["Exists", "DoesNotExist"]),
    st.booleans(),
)
requirements = st.one_of(set_requirements, existence_requirements)
raw_selectors = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": st.dictionaries(keys, values, max_size=2),
        "matchExpressions": st.lists(requirements, max_size=3),
    },
)


def model(raw: Mapping[str, Any]) -> LabelSelector:
    return LabelSelector.model_validate(raw)


def single(raw_requirement: dict[str, Any]) -> LabelSelector:
    return model({"matchExpressions": [raw_requirement]})


# ---- the property: implementation == oracle --------------------------------------------------


@PROPERTY
@given(raw_selectors, label_sets)
def test_selector_matches_equals_the_kubernetes_reference(
    raw: dict[str, Any], labels: dict[str, str]
) -> None:
    assert selector_matches(model(raw), labels) is k8s_matches(raw, labels)


@PROPERTY
@given(raw_selectors, label_sets, label_sets)
def test_labels_outside_the_selector_keys_do_not_matter(
    raw: dict[str, Any], labels: dict[str, str], extra: dict[str, str]
) -> None:
    """Keys no requirement mentions cannot change the answer."""
    mentioned = set(raw.get("matchLabels") or {}) | {e["key"] for e in raw.get("matchExpressions") or []}
    noise = {f"other.example.com/{k.replace('/', '-')}": v for k, v in extra.items()}
    widened = {**labels, **{k: v for k, v in noise.items() if k not in mentioned}}
    assert selector_matches(model(raw), widened) is selector_matches(model(raw), labels)


@PROPERTY
@given(raw_selectors, label_sets)
def test_selector_is_the_conjunction_of_its_requirements(raw: dict[str, Any], labels: dict[str, str]) -> None:
    parts = [model({"matchLabels": {k: v}}) for k, v in (raw.get("matchLabels") or {}).items()]
    parts += [single(e) for e in raw.get("matchExpressions") or []]
    assert selector_matches(model(raw), labels) is all(selector_matches(p, labels) for p in parts)


@PROPERTY
@given(raw_selectors, requirements, label_sets)
def test_adding_a_requirement_only_narrows(
    raw: dict[str, Any], extra: dict[str, Any], labels: dict[str, str]
) -> None:
    narrower = {**raw, "matchExpressions": [*(raw.get("matchExpressions") or []), extra]}
    if selector_matches(model(narrower), labels):
        assert selector_matches(model(raw), labels)


@PROPERTY
@given(keys, values, label_sets)
def test_match_labels_is_in_with_one_value(key: str, value: str, labels: dict[str, str]) -> None:
    by_label = selector_matches(model({"matchLabels": {key: value}}), labels)
    by_expr = selector_matches(single({"key": key, "operator": "In", "values": [value]}), labels)
    assert by_label is by_expr
    assert by_label is (key in labels and labels[key] == value)


@PROPERTY
@given(keys, st.lists(values, min_size=1, max_size=3), label_sets)
def test_not_in_is_the_complement_of_in(key: str, vals: list[str], labels: dict[str, str]) -> None:
    is_in = selector_matches(single({"key": key, "operator": "In", "values": vals}), labels)
    not_in = selector_matches(single({"key": key, "operator": "NotIn", "values": vals}), labels)
    assert is_in is not not_in


@PROPERTY
@given(keys, label_sets)
def test_does_not_exist_is_the_complement_of_exists(key: str, labels: dict[str, str]) -> None:
    exists = selector_matches(single({"key": key, "operator": "Exists"}), labels)
    absent = selector_matches(single({"key": key, "operator": "DoesNotExist"}), labels)
    assert exists is (key in labels)
    assert absent is (key not in labels)


@PROPERTY
@given(label_sets)
def test_the_empty_selector_matches_everything(labels: dict[str, str]) -> None:
    assert selector_matches(LabelSelector(), labels) is True
    assert selector_matches(model({}), labels) is True
    assert selector_matches(model({"matchLabels": {}, "matchExpressions": []}), labels) is True


# ---- exhaustive check over a tiny universe (both outcomes guaranteed) -----------------------

_TINY_KEYS = ["app", "zone"]
_TINY_VALUES = ["a", "b", ""]


def _tiny_label_sets() -> list[dict[str, str]]:
    options: list[list[tuple[str, str] | None]] = [
        [None, *((k, v) for v in _TINY_VALUES)] for k in _TINY_KEYS
    ]
    return [dict(p for p in combo if p is not None) for combo in itertools.product(*options)]


def _tiny_requirements() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    subsets = [
        list(c) for n in range(1, len(_TINY_VALUES) + 1) for c in itertools.combinations(_TINY_VALUES, n)
    ]
    for key in _TINY_KEYS:
        for op in ("In", "NotIn"):
            out += [{"key": key, "operator": op, "values": vals} for vals in subsets]
        out += [{"key": key, "operator": op} for op in ("Exists", "DoesNotExist")]
    return out


def test_every_pair_of_requirements_over_every_label_set() -> None:
    label_sets_ = _tiny_label_sets()
    reqs = _tiny_requirements()
    assert len(label_sets_) == 16
    outcomes = set()
    for first, second in itertools.product(reqs, repeat=2):
        raw = {"matchExpressions": [first, second]}
        selector = model(raw)
        for labels in label_sets_:
            expected = k8s_matches(raw, labels)
            outcomes.add(expected)
            assert selector_matches(selector, labels) is expected, (raw, labels)
    assert outcomes == {True, False}


# ---- named cases from the documentation -----------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "labels", "expected"),
    [
        ({"key": "zone", "operator": "In", "values": ["a", "b"]}, {"zone": "a"}, True),
        ({"key": "zone", "operator": "In", "values": ["a", "b"]}, {"zone": "c"}, False),
        ({"key": "zone", "operator": "In", "values": ["a", "b"]}, {}, False),
        ({"key": "zone", "operator": "In", "values": [""]}, {"zone": ""}, True),
        ({"key": "zone", "operator": "In", "values": [""]}, {}, False),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {}, True),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {"zone": "b"}, True),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {"zone": "a"}, False),
        ({"key": "zone", "operator": "NotIn", "values": [""]}, {"zone": ""}, False),
        ({"key": "zone", "operator": "Exists"}, {"zone": ""}, True),
        ({"key": "zone", "operator": "Exists"}, {"zonex": "a"}, False),
        ({"key": "zone", "operator": "DoesNotExist"}, {"zone": ""}, False),
        ({"key": "zone", "operator": "DoesNotExist"}, {"other": "a"}, True),
        ({"key": "zone", "operator": "In", "values": ["A"]}, {"zone": "a"}, False),  # case-sensitive
        ({"key": "Zone", "operator": "Exists"}, {"zone": "a"}, False),
        (
            {"key": "fleet.example.com/role", "operator": "In", "values": ["edge"]},
            {"fleet.example.com/role": "edge"},
            True,
        ),
        ({"key": "fleet.example.com/role", "operator": "Exists"}, {"role": "edge"}, False),
    ],
)
def test_documented_requirement_cases(
    requirement: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert selector_matches(single(requirement), labels) is expected
    assert k8s_matches({"matchExpressions": [requirement]}, labels) is expected


@pytest.mark.parametrize(
    ("match_labels", "labels", "expected"),
    [
        ({"app": "web"}, {"app": "web"}, True),
        ({"app": "web"}, {"app": "web", "tier": "front"}, True),
        ({"app": "web"}, {"app": "db"}, False),
        ({"app": "web"}, {}, False),
        ({"app": ""}, {}, False),  # an empty value still requires the key
        ({"app": ""}, {"app": ""}, True),
        ({"app": "web", "tier": "front"}, {"app": "web"}, False),
        ({"app": "web", "tier": "front"}, {"app": "web", "tier": "front"}, True),
    ],
)
def test_match_labels_cases(match_labels: dict[str, str], labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(model({"matchLabels": match_labels}), labels) is expected


def test_match_labels_and_expressions_are_anded() -> None:
    selector = model(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["eu"]}],
        }
    )
    assert selector_matches(selector, {"app": "web"})
    assert selector_matches(selector, {"app": "web", "zone": "us"})
    assert not selector_matches(selector, {"app": "web", "zone": "eu"})
    assert not selector_matches(selector, {"app": "db", "zone": "us"})


def test_contradictory_selector_matches_nothing() -> None:
    selector = model(
        {
            "matchExpressions": [
                {"key": "app", "operator": "Exists"},
                {"key": "app", "operator": "DoesNotExist"},
            ]
        }
    )
    assert not any(selector_matches(selector, labels) for labels in [*_tiny_label_sets(), {"app": "x"}])


def test_any_mapping_of_labels_is_accepted() -> None:
    selector = model({"matchLabels": {"app": "web"}})
    assert selector_matches(selector, MappingProxyType({"app": "web"}))
    assert not selector_matches(selector, MappingProxyType({}))


# ---- the model: aliases and validation ------------------------------------------------------


def test_camel_case_aliases_and_python_names_both_parse() -> None:
    by_alias = LabelSelector.model_validate(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
        }
    )
    by_name = LabelSelector(
        match_labels={"app": "web"},
        match_expressions=[LabelSelectorRequirement(key="zone", operator=SelectorOperator.IN, values=["a"])],
    )
    assert by_alias == by_name
    assert by_alias.match_expressions[0].operator is SelectorOperator.IN
    dumped = by_alias.model_dump(by_alias=True)
    assert set(dumped) == {"matchLabels", "matchExpressions"}


@pytest.mark.parametrize("op", ["In", "NotIn"])
def test_set_operators_need_values(op: str) -> None:
    with pytest.raises(ValidationError, match="needs at least one value"):
        LabelSelectorRequirement.model_validate({"key": "app", "operator": op})
    with pytest.raises(ValidationError, match="needs at least one value"):
        LabelSelectorRequirement.model_validate({"key": "app", "operator": op, "values": []})


@pytest.mark.parametrize("op", ["Exists", "DoesNotExist"])
def test_existence_operators_take_no_values(op: str) -> None:
    with pytest.raises(ValidationError, match="takes no values"):
        LabelSelectorRequirement.model_validate({"key": "app", "operator": op, "values": ["a"]})
    assert LabelSelectorRequirement.model_validate({"key": "app", "operator": op}).values == []


@pytest.mark.parametrize("op", ["in", "Equals", "Gt", ""])
def test_unknown_operators_are_rejected(op: str) -> None:
    with pytest.raises(ValidationError):
        LabelSelectorRequirement.model_validate({"key": "app", "operator": op, "values": ["a"]})


@pytest.mark.parametrize("key", ["", "-app", "app-", "a b", "/app", "UPPER_/app", "x" * 64])
def test_invalid_requirement_keys_are_rejected(key: str) -> None:
    with pytest.raises(ValidationError):
        LabelSelectorRequirement.model_validate({"key": key, "operator": "Exists"})


@pytest.mark.parametrize(
    "match_labels", [{"": "a"}, {"-bad": "a"}, {"app": "-bad"}, {"app": "a b"}, {"app": "x" * 64}]
)
def test_invalid_match_labels_are_rejected(match_labels: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        LabelSelector.model_validate({"matchLabels": match_labels})


# ---- matching_devices ------------------------------------------------------------------------

#: A cheap pool of device ids whose string order differs from their "natural" order.
DEVICE_POOL = ["pi-1", "pi-10", "pi-2", "a", "z9", "0-edge", "gw-b", "gw-a", "m" * 63]
fleets = st.dictionaries(st.sampled_from(DEVICE_POOL), label_sets, max_size=len(DEVICE_POOL))


@settings(PROPERTY, max_examples=100)
@given(raw_selectors, fleets)
def test_matching_devices_is_the_sorted_reference_filter(
    raw: dict[str, Any], fleet: dict[str, dict[str, str]]
) -> None:
    got = matching_devices(model(raw), fleet)
    assert got == sorted(d for d, labels in fleet.items() if k8s_matches(raw, labels))
    assert got == sorted(set(got))


@settings(PROPERTY, max_examples=50)
@given(st.dictionaries(device_ids, label_sets, max_size=6))
def test_empty_selector_selects_the_whole_fleet_sorted(fleet: dict[str, dict[str, str]]) -> None:
    assert matching_devices(LabelSelector(), fleet) == sorted(fleet)


def test_matching_devices_sorts_regardless_of_insertion_order() -> None:
    fleet = {
        "pi-3": {"app": "web"},
        "pi-1": {"app": "web"},
        "pi-2": {"app": "db"},
        "pi-10": {"app": "web"},
    }
    assert matching_devices(model({"matchLabels": {"app": "web"}}), fleet) == ["pi-1", "pi-10", "pi-3"]
    assert matching_devices(model({"matchLabels": {"app": "none"}}), fleet) == []
    assert matching_devices(LabelSelector(), {}) == []
