"""The agent's retry rule (agent.plan.FailedApplies): when a failed deployment is tried again.

The rule: a deployment whose apply failed is applied again only for another revision of its
key; converging on its own or losing its key forgets the failure. Everything else (periodic
passes, container events, watch resets) asks with the same revision and is refused.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.agent.plan import FailedApplies, FailedApply

from .strategies import PROPERTY


def test_a_failed_revision_blocks_until_another_revision() -> None:
    rule = FailedApplies()
    assert rule.blocking("ns_web", 7) is None
    rule.record("ns_web", 7, "init container migrate exited with code 3")
    assert rule.blocking("ns_web", 7) == FailedApply(7, "init container migrate exited with code 3")
    assert rule.blocking("ns_web", 7) is not None  # asking again changes nothing
    assert rule.blocking("ns_web", 8) is None  # a new revision: changed, or written again
    assert rule.blocking("ns_other", 7) is None  # per deployment


def test_the_failure_of_the_new_revision_replaces_the_old_one() -> None:
    rule = FailedApplies()
    rule.record("ns_web", 7, "first")
    rule.record("ns_web", 8, "second")
    assert rule.blocking("ns_web", 7) is None
    assert rule.blocking("ns_web", 8) == FailedApply(8, "second")


def test_converging_forgets_the_failure() -> None:
    rule = FailedApplies()
    rule.record("ns_web", 7, "cannot start container: port in use")
    rule.converged("ns_web")
    assert rule.blocking("ns_web", 7) is None  # a container that goes later is recreated
    assert "ns_web" not in rule
    rule.converged("ns_never_failed")  # harmless


def test_deleted_keys_are_forgotten() -> None:
    rule = FailedApplies()
    rule.record("a", 1, "x")
    rule.record("b", 2, "y")
    rule.keep_only(["b", "c"])
    assert "a" not in rule
    assert rule.blocking("b", 2) == FailedApply(2, "y")
    rule.keep_only([])
    assert "b" not in rule


def test_a_restarted_agent_starts_with_no_failures() -> None:
    rule = FailedApplies()
    rule.record("ns_web", 7, "x")
    assert FailedApplies().blocking("ns_web", 7) is None


_deployments = st.sampled_from(["a", "b", "ns_c"])
_revisions = st.integers(min_value=1, max_value=4)
_ops = st.lists(st.one_of(
    st.tuples(st.just("record"), _deployments, _revisions),
    st.tuples(st.just("converged"), _deployments, st.just(0)),
    st.tuples(st.just("keep_only"), st.frozensets(_deployments), st.just(0)),
), max_size=30)


@PROPERTY
@given(ops=_ops, probe=st.tuples(_deployments, _revisions))
def test_only_the_last_recorded_revision_still_wanted_blocks(
    ops: list[tuple[str, object, int]], probe: tuple[str, int]
) -> None:
    """Against a model: a revision is blocked iff it is the last one recorded as failed for
    that deployment, with no convergence or key deletion of that deployment since."""
    rule = FailedApplies()
    model: dict[str, int] = {}
    for op, target, revision in ops:
        if op == "record":
            assert isinstance(target, str)
            rule.record(target, revision, f"failed {revision}")
            model[target] = revision
        elif op == "converged":
            assert isinstance(target, str)
            rule.converged(target)
            model.pop(target, None)
        else:
            assert isinstance(target, frozenset)
            rule.keep_only(target)
            model = {d: r for d, r in model.items() if d in target}
    deployment, revision = probe
    blocked = rule.blocking(deployment, revision)
    if model.get(deployment) == revision:
        assert blocked == FailedApply(revision, f"failed {revision}")
    else:
        assert blocked is None
    assert all((d in rule) == (d in model) for d in ("a", "b", "ns_c"))
