"""Pure aggregation (operator.aggregate): device-state -> Deployment status, reports -> Device CR.

* ``aggregate``: succeeded = Running for the current spec hash, failed = Failed for it,
  pending = everything else among the matched devices (other phases, stale hashes, no report);
  ``lastError`` is the newest failure as ``<device>: <message>``; the counts sum to matched.
* ``deployment_status``: conditions ``Valid`` and ``Ready`` with their reasons,
  ``observedGeneration``; a condition's ``lastTransitionTime`` moves only when its status does.
* ``status_patch`` / ``same_status``: camelCase wire form; equality ignores only transition times.
* ``device_body`` / ``device_status``: the Device CR and its status (online, lastSeen, agentVersion).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from harmony_fleet.contracts import DeploymentState, DeviceInfo, Heartbeat, Inventory, Phase
from harmony_fleet.contracts.crd import Aggregate, Condition, DeploymentStatus, Device
from harmony_fleet.operator.aggregate import (
    READY,
    VALID,
    aggregate,
    deployment_status,
    device_body,
    device_online,
    device_status,
    same_status,
    status_patch,
)

from .strategies import PROPERTY

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
TOKEN = "default_web"
HASH = "0123456789abcdef"
OLD_HASH = "fedcba9876543210"


def state(device: str, phase: Phase, spec_hash: str | None = HASH, *, message: str = "",
          at: datetime = T0, token: str = TOKEN) -> DeploymentState:
    return DeploymentState(device_id=device, deployment=token, phase=phase, message=message,
                           spec_hash=spec_hash, since=at, updated_at=at)


def agg(matched: int, succeeded: int = 0, failed: int = 0, last_error: str | None = None) -> Aggregate:
    return Aggregate(matched_device_count=matched, succeeded=succeeded, failed=failed,
                     pending=matched - succeeded - failed, last_error=last_error)


def cond(status: DeploymentStatus, kind: str) -> Condition:
    (found,) = [c for c in status.conditions if c.type == kind]
    return found


# ---- aggregate: examples ---------------------------------------------------------------------


def test_all_running_with_the_current_hash_succeed() -> None:
    states = {d: state(d, Phase.RUNNING) for d in ("a", "b")}
    result = aggregate(["a", "b"], states, HASH)
    assert result == Aggregate(matched_device_count=2, succeeded=2, failed=0, pending=0, last_error=None)


def test_running_an_older_score_is_pending() -> None:
    result = aggregate(["a", "b"], {"a": state("a", Phase.RUNNING, OLD_HASH),
                                    "b": state("b", Phase.RUNNING, None)}, HASH)
    assert (result.succeeded, result.failed, result.pending) == (0, 0, 2)


def test_a_failure_for_an_older_score_is_pending_and_not_the_last_error() -> None:
    result = aggregate(["a"], {"a": state("a", Phase.FAILED, OLD_HASH, message="old boom")}, HASH)
    assert (result.succeeded, result.failed, result.pending) == (0, 0, 1)
    assert result.last_error is None


def test_a_failure_for_the_current_score_counts_with_its_message() -> None:
    result = aggregate(["a", "b"], {"a": state("a", Phase.FAILED, message="image pull: 404"),
                                    "b": state("b", Phase.RUNNING)}, HASH)
    assert (result.succeeded, result.failed, result.pending) == (1, 1, 0)
    assert result.last_error == "a: image pull: 404"


@pytest.mark.parametrize("phase", [Phase.PENDING, Phase.PULLING, Phase.STARTING, Phase.REMOVED])
def test_phases_on_the_way_are_pending(phase: Phase) -> None:
    result = aggregate(["a"], {"a": state("a", phase)}, HASH)
    assert (result.succeeded, result.failed, result.pending) == (0, 0, 1)
    assert result.last_error is None


def test_devices_without_a_report_are_pending() -> None:
    result = aggregate(["a", "b", "c"], {"a": state("a", Phase.RUNNING)}, HASH)
    assert (result.matched_device_count, result.succeeded, result.pending) == (3, 1, 2)


def test_reports_of_unmatched_devices_are_ignored() -> None:
    states = {"a": state("a", Phase.RUNNING), "x": state("x", Phase.FAILED, message="not mine"),
              "y": state("y", Phase.RUNNING)}
    result = aggregate(["a"], states, HASH)
    assert result == Aggregate(matched_device_count=1, succeeded=1, failed=0, pending=0)


def test_no_matched_devices_is_all_zero() -> None:
    assert aggregate([], {"a": state("a", Phase.RUNNING)}, HASH) == Aggregate()


def test_last_error_is_the_newest_failure_whatever_the_order() -> None:
    states = {
        "a": state("a", Phase.FAILED, message="first", at=T0),
        "b": state("b", Phase.FAILED, message="newest", at=T0 + timedelta(seconds=5)),
        "c": state("c", Phase.FAILED, message="middle", at=T0 + timedelta(seconds=2)),
    }
    for order in (["a", "b", "c"], ["c", "b", "a"], ["b", "a", "c"]):
        result = aggregate(order, states, HASH)
        assert result.failed == 3
        assert result.last_error == "b: newest"


def test_last_error_compares_instants_not_wall_clock_text() -> None:
    plus2 = timezone(timedelta(hours=2))
    states = {
        # 13:00+02:00 is 11:00 UTC: older than 12:00 UTC even though "13" > "12"
        "a": state("a", Phase.FAILED, message="older", at=datetime(2024, 5, 1, 13, tzinfo=plus2)),
        "b": state("b", Phase.FAILED, message="newer", at=T0),
    }
    assert aggregate(["a", "b"], states, HASH).last_error == "b: newer"


def test_an_empty_failure_message_still_names_the_device() -> None:
    assert aggregate(["a"], {"a": state("a", Phase.FAILED)}, HASH).last_error == "a: "


# ---- aggregate: property ---------------------------------------------------------------------

DEVICES = ["pi-1", "pi-2", "pi-3", "gw", "vm-0", "z"]
hashes = st.sampled_from([HASH, OLD_HASH, None])
report_maps = st.dictionaries(
    st.sampled_from(DEVICES),
    st.tuples(st.sampled_from(list(Phase)), hashes, st.integers(0, 30), st.sampled_from(["", "boom", "oom"])),
    max_size=len(DEVICES),
)


@PROPERTY
@given(st.lists(st.sampled_from(DEVICES), unique=True), report_maps, st.sampled_from([HASH, OLD_HASH]))
def test_aggregate_matches_a_reference_count(
    matched: list[str], reports: dict[str, tuple[Phase, str | None, int, str]], current: str
) -> None:
    states = {d: state(d, phase, h, message=msg, at=T0 + timedelta(seconds=s))
              for d, (phase, h, s, msg) in reports.items()}
    result = aggregate(matched, states, current)

    ours = [states[d] for d in matched if d in states and states[d].spec_hash == current]
    succeeded = sum(s.phase is Phase.RUNNING for s in ours)
    failures = [s for s in ours if s.phase is Phase.FAILED]
    assert result.matched_device_count == len(matched)
    assert result.succeeded == succeeded
    assert result.failed == len(failures)
    assert result.pending == len(matched) - succeeded - len(failures)
    assert result.succeeded + result.failed + result.pending == result.matched_device_count
    if failures:
        newest = max(s.updated_at for s in failures)
        newest_errors = {f"{s.device_id}: {s.message}" for s in failures if s.updated_at == newest}
        assert result.last_error in newest_errors
    else:
        assert result.last_error is None


def test_a_timezone_less_report_does_not_break_aggregation() -> None:
    naive = b'{"device_id": "b", "deployment": "default_web", "phase": "Failed", "message": "x", ' \
        b'"spec_hash": "0123456789abcdef", "since": "2024-05-01T12:00:05", ' \
        b'"updated_at": "2024-05-01T12:00:05"}'
    try:
        bad = DeploymentState.model_validate_json(naive)
    except ValidationError:
        return  # refusing such reports at the contract is a fix too
    states = {"a": state("a", Phase.FAILED, message="aware"), "b": bad}
    result = aggregate(["a", "b"], states, HASH)
    assert result.failed == 2


# ---- deployment_status -----------------------------------------------------------------------


def test_invalid_score_status() -> None:
    status = deployment_status(generation=3, error="invalid spec: services: field required",
                               agg=None, previous=[], now=T0)
    assert status.observed_generation == 3
    assert status.aggregate == Aggregate()
    assert [c.type for c in status.conditions] == [VALID, READY]
    valid, ready = cond(status, VALID), cond(status, READY)
    assert (valid.status, valid.reason, valid.message) == (
        "False", "InvalidScore", "invalid spec: services: field required")
    assert (ready.status, ready.reason) == ("False", "InvalidScore")
    assert ready.message
    assert valid.last_transition_time == ready.last_transition_time == T0


def test_invalid_score_keeps_a_given_aggregate() -> None:
    status = deployment_status(generation=1, error="bad", agg=agg(2, 1), previous=[], now=T0)
    assert status.aggregate == agg(2, 1)


@pytest.mark.parametrize(
    ("aggregate_", "ready", "reason", "fragments"),
    [
        (agg(0), "False", "NoMatchingDevices", ["no device"]),
        (agg(3, 3), "True", "AllRunning", ["3/3 running"]),
        (agg(1, 1), "True", "AllRunning", ["1/1 running"]),
        (agg(4, 1, 2, "pi-2: boom"), "False", "DevicesFailed", ["2 of 4 failed", "pi-2: boom"]),
        (agg(2, 0, 2, "pi-1: oom"), "False", "DevicesFailed", ["2 of 2", "pi-1: oom"]),
        (agg(4, 1), "False", "RollingOut", ["1/4 running", "3 pending"]),
        (agg(2), "False", "RollingOut", ["0/2 running", "2 pending"]),
    ],
)
def test_ready_condition(aggregate_: Aggregate, ready: str, reason: str, fragments: list[str]) -> None:
    status = deployment_status(generation=7, error=None, agg=aggregate_, previous=[], now=T0)
    assert status.observed_generation == 7
    assert status.aggregate == aggregate_
    assert [c.type for c in status.conditions] == [VALID, READY]
    valid = cond(status, VALID)
    assert (valid.status, valid.reason) == ("True", "ScoreValid")
    r = cond(status, READY)
    assert (r.status, r.reason) == (ready, reason)
    for fragment in fragments:
        assert fragment in r.message


def test_observed_generation_may_be_unknown() -> None:
    assert deployment_status(generation=None, error=None, agg=agg(1, 1), previous=[],
                             now=T0).observed_generation is None


def test_transition_time_is_kept_while_the_status_stays() -> None:
    first = deployment_status(generation=1, error=None, agg=agg(2), previous=[], now=T0)
    later = T0 + timedelta(minutes=5)
    # RollingOut -> DevicesFailed: reason and message change, status stays False
    second = deployment_status(generation=1, error=None, agg=agg(2, 0, 1, "a: x"),
                               previous=first.conditions, now=later)
    assert cond(second, READY).reason == "DevicesFailed"
    assert cond(second, READY).last_transition_time == T0
    assert cond(second, VALID).last_transition_time == T0


def test_transition_time_moves_when_the_status_changes() -> None:
    first = deployment_status(generation=1, error=None, agg=agg(2), previous=[], now=T0)
    t1 = T0 + timedelta(minutes=1)
    second = deployment_status(generation=1, error=None, agg=agg(2, 2), previous=first.conditions, now=t1)
    assert cond(second, READY).status == "True"
    assert cond(second, READY).last_transition_time == t1
    assert cond(second, VALID).last_transition_time == T0  # Valid did not change
    t2 = T0 + timedelta(minutes=2)
    third = deployment_status(generation=2, error="bad", agg=None, previous=second.conditions, now=t2)
    assert cond(third, VALID).last_transition_time == t2
    assert cond(third, READY).last_transition_time == t2


def test_a_condition_from_an_unknown_status_transitions() -> None:
    previous = [Condition(type=READY, status="Unknown", last_transition_time=T0),
                Condition(type=VALID, status="True", last_transition_time=T0)]
    now = T0 + timedelta(hours=1)
    status = deployment_status(generation=1, error=None, agg=agg(1, 1), previous=previous, now=now)
    assert cond(status, READY).last_transition_time == now
    assert cond(status, VALID).last_transition_time == T0


def test_unrelated_previous_conditions_are_ignored() -> None:
    previous = [Condition(type="Progressing", status="True", last_transition_time=T0)]
    now = T0 + timedelta(hours=1)
    status = deployment_status(generation=1, error=None, agg=agg(1, 1), previous=previous, now=now)
    assert [c.type for c in status.conditions] == [VALID, READY]
    assert all(c.last_transition_time == now for c in status.conditions)


@st.composite
def aggregates(draw: st.DrawFn) -> Aggregate:
    matched = draw(st.integers(0, 3))
    succeeded = draw(st.integers(0, matched))
    failed = draw(st.integers(0, matched - succeeded))
    return agg(matched, succeeded, failed, "d: x" if failed else None)


#: Rounds of status computation; ``None`` is a round where the spec is invalid.
steps = st.lists(st.none() | aggregates(), min_size=1, max_size=8)


@PROPERTY
@given(steps)
def test_transition_times_follow_status_flips_through_the_wire_form(sequence: list[Aggregate | None]) -> None:
    """Each round reads the previous conditions back from the patched JSON, as the operator does."""
    previous: list[Condition] = []
    flipped: dict[str, tuple[str, datetime]] = {}
    for i, step in enumerate(sequence):
        now = T0 + timedelta(seconds=i)
        status = deployment_status(generation=i, error=None if step else "bad", agg=step,
                                   previous=previous, now=now)
        expected = {
            VALID: "True" if step else "False",
            READY: "True" if step and step.matched_device_count and
            step.succeeded == step.matched_device_count else "False",
        }
        for kind, value in expected.items():
            if kind not in flipped or flipped[kind][0] != value:
                flipped[kind] = (value, now)
            c = cond(status, kind)
            assert c.status == value
            assert c.last_transition_time == flipped[kind][1]
        wire = json.loads(json.dumps(status_patch(status)))
        previous = [Condition.model_validate(c) for c in wire["status"]["conditions"]]


# ---- status_patch / same_status --------------------------------------------------------------


def test_status_patch_uses_camel_case_wire_names() -> None:
    status = deployment_status(generation=4, error=None, agg=agg(3, 1, 1, "pi-1: boom"), previous=[], now=T0)
    patch = status_patch(status)
    assert list(patch) == ["status"]
    body = patch["status"]
    assert body["observedGeneration"] == 4
    assert body["aggregate"] == {"matchedDeviceCount": 3, "succeeded": 1, "failed": 1, "pending": 1,
                                 "lastError": "pi-1: boom"}
    ready = next(c for c in body["conditions"] if c["type"] == READY)
    assert {k for k, v in ready.items() if v is not None} == {
        "type", "status", "reason", "message", "lastTransitionTime"}
    assert datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00")) == T0
    text = json.dumps(patch)  # plain JSON, nothing Python-specific left
    for snake in ("matched_device_count", "last_error", "observed_generation", "last_transition_time"):
        assert snake not in text


def test_status_patch_carries_no_made_up_values() -> None:
    """Unknown values are absent or null (null is how a merge patch clears a field)."""
    status = deployment_status(generation=None, error=None, agg=agg(1, 1), previous=[], now=T0)
    body = status_patch(status)["status"]
    assert body.get("observedGeneration") is None
    assert body["aggregate"].get("lastError") is None
    assert all(c.get("observedGeneration") is None for c in body["conditions"])


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what ``application/merge-patch+json`` does on the server)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def test_merge_patch_reference() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == {
        "a": 1, "b": {"d": 3, "e": 4}, "f": [1]}


def without_nulls(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: without_nulls(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [without_nulls(v) for v in doc]
    return doc


def test_status_patch_applied_as_a_merge_patch_gives_the_new_status() -> None:
    running = deployment_status(generation=1, error=None, agg=agg(2, 2), previous=[], now=T0)
    stored = merge_patch({}, status_patch(running))
    assert stored == without_nulls(status_patch(running))
    assert stored["status"]["aggregate"]["succeeded"] == 2


def test_a_cleared_last_error_is_cleared_on_the_server() -> None:
    failing = deployment_status(generation=1, error=None, agg=agg(2, 1, 1, "pi-1: boom"), previous=[], now=T0)
    stored = merge_patch({}, status_patch(failing))
    assert stored["status"]["aggregate"]["lastError"] == "pi-1: boom"

    healed = deployment_status(generation=1, error=None, agg=agg(2, 2), previous=failing.conditions,
                               now=T0 + timedelta(minutes=1))
    stored = merge_patch(stored, status_patch(healed))
    assert stored["status"]["aggregate"].get("lastError") is None
    assert stored["status"]["aggregate"]["succeeded"] == 2


def wire_status(aggregate_: Aggregate, generation: int = 1, now: datetime = T0) -> dict[str, Any]:
    """The status document the operator writes for a fresh Deployment."""
    return status_patch(deployment_status(generation=generation, error=None, agg=aggregate_,
                                          previous=[], now=now))["status"]


def test_same_status_ignores_only_transition_times() -> None:
    a = wire_status(agg(2, 1), generation=2)
    b = wire_status(agg(2, 1), generation=2, now=T0 + timedelta(days=1))
    assert a != b
    assert same_status(a, b)
    assert same_status(b, a)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s["aggregate"].__setitem__("succeeded", 2),
        lambda s: s["aggregate"].__setitem__("lastError", "x: y"),
        lambda s: s.__setitem__("observedGeneration", 3),
        lambda s: s["conditions"][1].__setitem__("status", "True"),
        lambda s: s["conditions"][1].__setitem__("reason", "AllRunning"),
        lambda s: s["conditions"][1].__setitem__("message", "other"),
        lambda s: s["conditions"].pop(),
        lambda s: s.pop("aggregate"),
    ],
)
def test_same_status_sees_every_other_difference(mutate: Any) -> None:
    a = wire_status(agg(2, 1), generation=2)
    b = copy.deepcopy(a)
    mutate(b)
    assert not same_status(a, b)
    assert not same_status(b, a)


def test_same_status_with_nothing_stored() -> None:
    new = wire_status(agg(0))
    assert not same_status(None, new)
    assert not same_status({}, new)
    assert same_status(new, copy.deepcopy(new))


def test_same_status_tolerates_conditions_without_transition_times() -> None:
    new = wire_status(agg(1, 1))
    stored = copy.deepcopy(new)
    for c in stored["conditions"]:
        del c["lastTransitionTime"]
    assert same_status(stored, new)


@PROPERTY
@given(steps, st.integers(1, 10**6))
def test_recomputing_an_unchanged_status_is_the_same_status(
    sequence: list[Aggregate | None], later_s: int
) -> None:
    """The operator's "skip the patch" test: same inputs, any later time -> same_status."""
    previous: list[Condition] = []
    for i, step in enumerate(sequence):
        status = deployment_status(generation=i, error=None if step else "bad", agg=step,
                                   previous=previous, now=T0 + timedelta(seconds=i))
        previous = status.conditions
    last = sequence[-1]
    again = deployment_status(generation=len(sequence) - 1, error=None if last else "bad", agg=last,
                              previous=previous, now=T0 + timedelta(seconds=later_s + len(sequence)))
    assert status_patch(again) == status_patch(status)  # transition times did not move either
    assert same_status(status_patch(status)["status"], status_patch(again)["status"])


# ---- devices ---------------------------------------------------------------------------------

INVENTORY = Inventory(hostname="pi-kitchen", arch="aarch64", os="Debian GNU/Linux 12 (bookworm)",
                      kernel="6.1.0-rpi7", cpus=4, memory_bytes=8 * 2**30, podman_version="4.3.1")


def info(device: str = "pi-kitchen-01", labels: dict[str, str] | None = None,
         agent_version: str = "0.3.0", inventory: Inventory = INVENTORY) -> DeviceInfo:
    return DeviceInfo(device_id=device, agent_version=agent_version,
                      labels=labels if labels is not None else {"app": "web", "zone": "eu"},
                      inventory=inventory, started_at=T0, updated_at=T0)


def heartbeat(at: datetime, device: str = "pi-kitchen-01", agent_version: str = "0.3.0") -> Heartbeat:
    return Heartbeat(device_id=device, timestamp=at, uptime_s=42, agent_version=agent_version)


def test_device_body_is_a_device_cr() -> None:
    i = info()
    body = device_body(i)
    assert body == {
        "apiVersion": "fleet.nationtech.io/v1alpha1",
        "kind": "Device",
        "metadata": {"name": "pi-kitchen-01", "labels": {"app": "web", "zone": "eu"}},
        "spec": {"inventory": {"hostname": "pi-kitchen", "arch": "aarch64",
                               "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0-rpi7",
                               "cpus": 4, "memory_bytes": 8 * 2**30, "podman_version": "4.3.1"}},
    }
    json.dumps(body)
    parsed = Device.model_validate(body)
    assert parsed.spec.inventory == INVENTORY
    assert parsed.metadata["labels"] == i.labels


def test_device_body_labels_are_a_copy() -> None:
    i = info()
    body = device_body(i)
    body["metadata"]["labels"]["zone"] = "us"
    assert i.labels["zone"] == "eu"


def test_device_body_without_labels_or_runtime() -> None:
    inv = INVENTORY.model_copy(update={"podman_version": None})
    body = device_body(info(labels={}, inventory=inv))
    assert body["metadata"]["labels"] == {}
    assert body["spec"]["inventory"]["podman_version"] is None


OFFLINE_AFTER = timedelta(seconds=30)


@pytest.mark.parametrize(
    ("age", "online"),
    [
        (timedelta(0), True),
        (timedelta(seconds=29, microseconds=999_999), True),
        (OFFLINE_AFTER, True),  # the threshold itself still counts as online
        (OFFLINE_AFTER + timedelta(microseconds=1), False),
        (timedelta(hours=1), False),
        (-timedelta(seconds=5), True),  # a device clock slightly ahead
    ],
)
def test_online_threshold(age: timedelta, online: bool) -> None:
    now = T0 + timedelta(minutes=10)
    hb = heartbeat(now - age)
    assert device_online(hb, now, OFFLINE_AFTER) is online
    assert device_status(info(), hb, now, OFFLINE_AFTER)["online"] is online


def test_no_heartbeat_is_offline_with_no_last_seen() -> None:
    assert device_online(None, T0, OFFLINE_AFTER) is False
    assert device_status(info(), None, T0, OFFLINE_AFTER) == {"online": False, "agentVersion": "0.3.0"}


def test_device_status_fields() -> None:
    now = T0 + timedelta(seconds=3)
    hb = heartbeat(T0, agent_version="1.2.2")  # the Device CR shows the info's version
    status = device_status(info(agent_version="1.2.3"), hb, now, OFFLINE_AFTER)
    assert status == {"online": True, "lastSeen": "2024-05-01T12:00:00Z", "agentVersion": "1.2.3"}


def test_device_status_without_info_has_no_agent_version() -> None:
    assert device_status(None, heartbeat(T0), T0, OFFLINE_AFTER) == {
        "online": True, "lastSeen": "2024-05-01T12:00:00Z"}
    assert device_status(None, None, T0, OFFLINE_AFTER) == {"online": False}


def test_last_seen_keeps_microseconds() -> None:
    at = T0.replace(microsecond=123456)
    status = device_status(None, heartbeat(at), at, OFFLINE_AFTER)
    assert status["lastSeen"] == "2024-05-01T12:00:00.123456Z"


@PROPERTY
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
       st.integers(-120, 120), st.integers(1, 90))
def test_device_status_property(at: datetime, age_s: int, threshold_s: int) -> None:
    now = at + timedelta(seconds=age_s)
    status = device_status(info(), heartbeat(at), now, timedelta(seconds=threshold_s))
    assert status["online"] is (age_s <= threshold_s)
    assert status["lastSeen"].endswith("Z")
    assert "+" not in status["lastSeen"]
    assert datetime.fromisoformat(status["lastSeen"].replace("Z", "+00:00")) == at
    assert status["agentVersion"] == "0.3.0"


def test_last_seen_is_utc_with_z_for_any_offset() -> None:
    at = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    status = device_status(None, heartbeat(at), at, OFFLINE_AFTER)
    assert status["lastSeen"] == "2024-05-01T12:00:00Z"


def test_a_timezone_less_heartbeat_does_not_break_device_status() -> None:
    raw = b'{"device_id": "pi-kitchen-01", "timestamp": "2024-05-01T12:00:00", "uptime_s": 1, ' \
        b'"agent_version": "0.3.0"}'
    try:
        hb = Heartbeat.model_validate_json(raw)
    except ValidationError:
        return  # refusing such heartbeats at the contract is a fix too
    status = device_status(info(), hb, T0, OFFLINE_AFTER)
    assert isinstance(status["online"], bool)


@settings(PROPERTY, max_examples=25)
@given(st.dictionaries(st.sampled_from(["app", "zone", "fleet.example.com/role"]),
                       st.sampled_from(["a", "b", ""]), max_size=3))
def test_device_body_labels_round_trip(labels: dict[str, str]) -> None:
    body = device_body(info(labels=labels))
    assert body["metadata"]["labels"] == labels
    assert Device.model_validate(body).metadata["labels"] == labels
