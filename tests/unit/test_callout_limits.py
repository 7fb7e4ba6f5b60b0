"""What bounds one device's effect on the server side (harmony_fleet.callout.limits, pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.callout.limits import DesiredIndex, RateLimiter, TokenBucket
from harmony_fleet.callout.writer import state_allowed
from harmony_fleet.contracts import MAX_DEPLOYMENTS_PER_DEVICE, Phase
from harmony_fleet.daemon import LogThrottle

from .strategies import PROPERTY

# ----------------------------------------------------------------------------- token bucket


def test_bucket_starts_full_then_refuses_with_the_wait() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, tokens=3, updated=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token comes back in 1/rate s
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_bucket_refills_only_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, tokens=0, updated=0.0)
    bucket.take(1000.0, cost=0)  # a long pause refills to the burst, not beyond
    assert bucket.tokens == 5


def test_a_refused_take_costs_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, tokens=1, updated=0.0)
    assert bucket.take(0.0) == 0.0
    for _ in range(100):
        assert bucket.take(0.0) > 0
    assert bucket.take(1.0) == 0.0  # the refusals did not push the next token further out


def test_the_clock_going_backwards_does_not_mint_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, tokens=0, updated=10.0)
    assert bucket.take(5.0) > 0
    assert bucket.tokens == 0


@PROPERTY
@given(rate=st.floats(0.1, 100), burst=st.integers(1, 50),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=300))
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int,
                                                        gaps: list[float]) -> None:
    limiter = RateLimiter(rate, burst)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        if limiter.check("a", now) == 0.0:
            allowed += 1
    assert allowed <= burst + rate * now + 1e-6


@PROPERTY
@given(rate=st.floats(0.5, 50), burst=st.integers(1, 20), n=st.integers(1, 200))
def test_a_device_that_waits_as_told_is_never_refused_twice(rate: float, burst: int,
                                                             n: int) -> None:
    limiter = RateLimiter(rate, burst)
    now = 0.0
    for _ in range(n):
        wait = limiter.check("a", now)
        if wait:
            now += wait
            assert limiter.check("a", now) == 0.0


def test_devices_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    assert limiter.check("a", 0.0) == limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) > 0
    # a flooding device never uses up another's allowance
    for _ in range(10_000):
        limiter.check("a", 0.0)
    assert limiter.check("b", 0.0) == 0.0


def test_idle_devices_are_forgotten_when_the_table_is_full() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=3)
    for i, device in enumerate(("a", "b", "c")):
        limiter.check(device, float(i))
    assert len(limiter) == 3
    limiter.check("d", 10.0)  # a, b and c are full again by now: forgotten
    assert len(limiter) == 1


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bad_limits(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate, burst)


# ----------------------------------------------------------------------------- desired index


def test_index_follows_puts_and_deletes() -> None:
    index = DesiredIndex(removed_grace_s=60)
    index.put("pi-1", "ns_web")
    index.put("pi-1", "ns_db")
    assert index.is_desired("pi-1", "ns_web")
    assert index.deployments("pi-1") == {"ns_web", "ns_db"}
    assert not index.is_desired("pi-2", "ns_web")
    index.delete("pi-1", "ns_web", at=100.0)
    assert not index.is_desired("pi-1", "ns_web")
    assert index.recently_removed("pi-1", "ns_web", now=160.0)
    assert not index.recently_removed("pi-1", "ns_web", now=160.1)
    assert index.key_count() == 1


def test_a_redeployed_deployment_is_desired_again_not_removed() -> None:
    index = DesiredIndex(removed_grace_s=60)
    index.delete("pi-1", "ns_web", at=0.0)
    index.put("pi-1", "ns_web")
    assert index.is_desired("pi-1", "ns_web")
    assert not index.recently_removed("pi-1", "ns_web", now=1.0)


def test_prune_forgets_old_removals_only() -> None:
    index = DesiredIndex(removed_grace_s=10)
    index.delete("pi-1", "old", at=0.0)
    index.delete("pi-1", "new", at=15.0)
    index.prune(now=20.0)
    assert not index.recently_removed("pi-1", "old", now=5.0)  # gone, whatever the clock
    assert index.recently_removed("pi-1", "new", now=20.0)


def test_state_allowed_only_for_desired_and_recently_removed() -> None:
    index = DesiredIndex(removed_grace_s=60)
    index.put("pi-1", "ns_web")
    index.delete("pi-1", "ns_old", at=0.0)
    assert state_allowed(index, "pi-1", "ns_web", Phase.RUNNING, now=0.0)
    # a deployment that does not exist: no key, whatever the phase
    for phase in Phase:
        assert not state_allowed(index, "pi-1", "ns_nope", phase, now=0.0)
    # another device's deployment is not this device's
    assert not state_allowed(index, "pi-2", "ns_web", Phase.RUNNING, now=0.0)
    # a deleted one: Removed, within the grace period, and nothing else
    assert state_allowed(index, "pi-1", "ns_old", Phase.REMOVED, now=60.0)
    assert not state_allowed(index, "pi-1", "ns_old", Phase.RUNNING, now=1.0)
    assert not state_allowed(index, "pi-1", "ns_old", Phase.REMOVED, now=61.0)


def test_state_keys_per_device_are_capped() -> None:
    index = DesiredIndex(removed_grace_s=60)
    names = [f"ns_d{i:03d}" for i in range(MAX_DEPLOYMENTS_PER_DEVICE + 5)]
    for name in names:
        index.put("pi-1", name)
    allowed = [n for n in names if state_allowed(index, "pi-1", n, Phase.RUNNING, 0.0)]
    assert allowed == sorted(names)[:MAX_DEPLOYMENTS_PER_DEVICE]


# ----------------------------------------------------------------------------- log throttle


def test_throttle_says_once_per_interval_and_counts_the_rest() -> None:
    throttle = LogThrottle(interval_s=60)
    assert throttle.allow("pi-1/rate", 0.0) == 0
    assert all(throttle.allow("pi-1/rate", t) is None for t in range(1, 60))
    assert throttle.allow("pi-1/rate", 60.0) == 59
    assert throttle.allow("pi-2/rate", 60.0) == 0  # per key


@PROPERTY
@given(times=st.lists(st.floats(0, 10_000), max_size=500))
def test_throttle_lines_are_bounded_by_elapsed_time(times: list[float]) -> None:
    throttle = LogThrottle(interval_s=60)
    said = [t for t in sorted(times) if throttle.allow("k", t) is not None]
    if said:
        assert len(said) <= (said[-1] - said[0]) / 60 + 1
