"""The pure leader-election rule (operator.leader.decide) over a ``coordination.k8s.io/v1`` Lease.

* no Lease: ``CREATE``;
* our Lease (``holderIdentity == me``): ``RENEW``, whatever its times say;
* another holder's Lease: ``FOLLOW`` while ``renewTime + leaseDurationSeconds`` has not passed
  (the instant itself still belongs to the holder), ``ACQUIRE`` after it, and ``ACQUIRE`` when
  the holder, the time or the duration is missing or malformed (nobody can be proven live).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.operator.leader import Action, _micro, decide

from .strategies import PROPERTY, dns1123_labels

ME = "operator-7d9f-abcde"
OTHER = "operator-7d9f-xyz12"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def micro(at: datetime) -> str:
    """How Kubernetes writes a MicroTime: UTC, six fractional digits, 'Z'."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(holder: Any = OTHER, renew: Any = None, duration: Any = 15, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renew is not None:
        spec["renewTime"] = micro(renew) if isinstance(renew, datetime) else renew
    if duration is not None:
        spec["leaseDurationSeconds"] = duration
    spec.update(extra)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "fleet-operator", "namespace": "fleet", "resourceVersion": "42"},
        "spec": spec,
    }


def test_actions_are_their_wire_names() -> None:
    assert [a.value for a in Action] == ["create", "renew", "acquire", "follow"]


def test_no_lease_is_create() -> None:
    assert decide(None, ME, NOW) is Action.CREATE


@pytest.mark.parametrize(
    "renew", [NOW, NOW - timedelta(seconds=10), NOW - timedelta(days=3), None, "garbage"]
)
def test_our_lease_is_renewed_whatever_its_times(renew: Any) -> None:
    assert decide(lease(ME, renew), ME, NOW) is Action.RENEW
    assert decide(lease(ME, renew, duration=None), ME, NOW) is Action.RENEW


@pytest.mark.parametrize(
    ("age", "duration", "expected"),
    [
        (timedelta(0), 15, Action.FOLLOW),
        (timedelta(seconds=5), 15, Action.FOLLOW),
        (timedelta(seconds=15), 15, Action.FOLLOW),  # the expiry instant still belongs to the holder
        (timedelta(seconds=15, microseconds=1), 15, Action.ACQUIRE),
        (timedelta(seconds=16), 15, Action.ACQUIRE),
        (timedelta(hours=1), 15, Action.ACQUIRE),
        (timedelta(hours=1), 7200, Action.FOLLOW),
        (-timedelta(seconds=3), 15, Action.FOLLOW),  # holder's clock slightly ahead
        (timedelta(seconds=1), 0, Action.ACQUIRE),
        (timedelta(0), 0, Action.FOLLOW),
    ],
)
def test_another_holders_lease(age: timedelta, duration: int, expected: Action) -> None:
    assert decide(lease(OTHER, NOW - age, duration), ME, NOW) is expected


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"spec": None},
        {"spec": {}},
        lease(holder=None, renew=NOW),
        lease(holder="", renew=NOW),
        lease(renew=None),
        lease(renew="garbage"),
        lease(renew="2024-13-45T99:99:99Z"),
        lease(renew=""),
        lease(renew=1714564800),
        lease(renew=NOW, duration=None),
        lease(renew=NOW, duration="15"),
        lease(renew=NOW, duration=15.0),
        lease(renew=NOW, duration=[15]),
    ],
)
def test_missing_or_malformed_fields_mean_acquire(doc: dict[str, Any]) -> None:
    assert decide(doc, ME, NOW) is Action.ACQUIRE


def test_renew_time_offsets_are_honoured() -> None:
    plus2 = timezone(timedelta(hours=2))
    local = (NOW - timedelta(seconds=5)).astimezone(plus2).isoformat()  # "...T13:59:55+02:00"
    assert decide(lease(OTHER, local, 15), ME, NOW) is Action.FOLLOW
    stale = (NOW - timedelta(seconds=20)).astimezone(plus2).isoformat()
    assert decide(lease(OTHER, stale, 15), ME, NOW) is Action.ACQUIRE


def test_second_precision_renew_time_parses() -> None:
    assert decide(lease(OTHER, "2024-05-01T11:59:50Z", 15), ME, NOW) is Action.FOLLOW
    assert decide(lease(OTHER, "2024-05-01T11:59:40Z", 15), ME, NOW) is Action.ACQUIRE


def test_acquire_time_stands_in_for_a_missing_renew_time() -> None:
    """Documents the implementation: with no usable renewTime, acquireTime dates the lease."""
    live = lease(OTHER, None, 15, acquireTime=micro(NOW - timedelta(seconds=5)))
    assert decide(live, ME, NOW) is Action.FOLLOW
    expired = lease(OTHER, None, 15, acquireTime=micro(NOW - timedelta(seconds=30)))
    assert decide(expired, ME, NOW) is Action.ACQUIRE
    garbage_renew = lease(OTHER, "garbage", 15, acquireTime=micro(NOW - timedelta(seconds=5)))
    assert decide(garbage_renew, ME, NOW) is Action.FOLLOW


def test_renew_time_wins_over_acquire_time() -> None:
    doc = lease(OTHER, NOW - timedelta(seconds=5), 15, acquireTime=micro(NOW - timedelta(days=1)))
    assert decide(doc, ME, NOW) is Action.FOLLOW
    doc = lease(OTHER, NOW - timedelta(seconds=60), 15, acquireTime=micro(NOW))
    assert decide(doc, ME, NOW) is Action.ACQUIRE


def test_decide_does_not_modify_the_lease() -> None:
    doc = lease(OTHER, NOW, 15)
    before = repr(doc)
    decide(doc, ME, NOW)
    assert repr(doc) == before


def test_micro_is_the_kubernetes_micro_time_format() -> None:
    assert _micro(NOW.replace(microsecond=5)) == "2024-05-01T12:00:00.000005Z"
    plus2 = timezone(timedelta(hours=2))
    assert _micro(datetime(2024, 5, 1, 14, 0, tzinfo=plus2)) == "2024-05-01T12:00:00.000000Z"


# ---- properties ------------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-3600 * 10**6, max_value=3600 * 10**6)  # microseconds
durations = st.integers(min_value=0, max_value=3600)
identities = st.one_of(st.sampled_from([ME, OTHER, "b", "operator-0"]), dns1123_labels)


@PROPERTY
@given(instants, offsets, durations, identities)
def test_decide_matches_the_expiry_rule(
    renewed: datetime, offset_us: int, duration: int, holder: str
) -> None:
    now = renewed + timedelta(microseconds=offset_us)
    got = decide(lease(holder, renewed, duration), ME, now)
    if holder == ME:
        assert got is Action.RENEW
    elif now <= renewed + timedelta(seconds=duration):
        assert got is Action.FOLLOW
    else:
        assert got is Action.ACQUIRE


@PROPERTY
@given(instants, offsets, durations)
def test_a_lease_written_by_micro_is_read_back_exactly(
    renewed: datetime, offset_us: int, duration: int
) -> None:
    """Round trip with the elector's own writer: live exactly up to renewTime + duration."""
    doc = lease(OTHER, _micro(renewed), duration)
    now = renewed + timedelta(microseconds=offset_us)
    expected = Action.FOLLOW if offset_us <= duration * 10**6 else Action.ACQUIRE
    assert decide(doc, ME, now) is expected


@PROPERTY
@given(instants, durations)
def test_follow_turns_into_acquire_exactly_once(renewed: datetime, duration: int) -> None:
    """Monotone in time: once expired, a lease never looks live again."""
    doc = lease(OTHER, renewed, duration)
    expiry = renewed + timedelta(seconds=duration)
    assert decide(doc, ME, expiry) is Action.FOLLOW
    assert decide(doc, ME, expiry + timedelta(microseconds=1)) is Action.ACQUIRE
    assert decide(doc, ME, renewed) is Action.FOLLOW


@PROPERTY
@given(instants, offsets, durations, identities)
def test_two_replicas_never_both_lead_from_one_lease(
    renewed: datetime, offset_us: int, duration: int, holder: str
) -> None:
    """From the same Lease, at most one identity is told to write without a takeover."""
    now = renewed + timedelta(microseconds=offset_us)
    doc = lease(holder, renewed, duration)
    actions = {me: decide(doc, me, now) for me in (ME, OTHER, "operator-0")}
    renewing = [me for me, a in actions.items() if a is Action.RENEW]
    assert len(renewing) <= 1
    if renewing:  # the holder renews, everyone else follows (or takes over if expired)
        others = {a for me, a in actions.items() if me not in renewing}
        assert others <= {Action.FOLLOW, Action.ACQUIRE}
        assert len(others) <= 1


# ---- bugs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("renew", ["2024-05-01T11:00:00", "2024-05-01", "2024-05-01T11:00:00.000000"])
def test_a_renew_time_without_offset_is_malformed(renew: str) -> None:
    assert decide(lease(OTHER, renew, 15), ME, NOW) is Action.ACQUIRE


def test_a_boolean_duration_is_malformed() -> None:
    assert decide(lease(OTHER, NOW, True), ME, NOW) is Action.ACQUIRE
