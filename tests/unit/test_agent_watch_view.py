"""The desired-state watch's pure bookkeeping (agent.watch.DesiredView)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from harmony_fleet.agent.watch import DesiredEntry, DesiredView, WatchReset

from .strategies import PROPERTY


def put(deployment: str, value: bytes = b"v", revision: int = 1) -> DesiredEntry:
    return DesiredEntry(deployment, value, revision)


def delete(deployment: str, revision: int = 1) -> DesiredEntry:
    return DesiredEntry(deployment, None, revision)


def values_of(view: DesiredView) -> dict[str, bytes | None]:
    return {k: e.value for k, e in view.values.items()}


def live_view(**initial: bytes) -> DesiredView:
    """A view whose snapshot (``initial``) is complete; the next consumer sequence is len+1."""
    view = DesiredView()
    view.begin(len(initial))
    for i, (key, value) in enumerate(initial.items(), start=1):
        view.entry(i, put(key, value, i), len(initial) - i)
    assert view.complete
    return view


class TestSnapshot:
    def test_fresh_view(self) -> None:
        view = DesiredView()
        assert view.values == {}
        assert view.complete is False
        assert view.generation == 0

    def test_begin_zero_completes_immediately_with_empty_values(self) -> None:
        view = DesiredView()
        assert view.begin(0) is True
        assert view.complete is True
        assert view.values == {}
        assert view.generation == 1

    def test_begin_zero_clears_previous_values(self) -> None:
        view = live_view(a=b"1", b=b"2")
        generation = view.generation
        assert view.begin(0) is True
        assert view.values == {}
        assert view.complete
        assert view.generation == generation + 1

    def test_snapshot_completes_only_at_pending_zero(self) -> None:
        view = DesiredView()
        assert view.begin(3) is False
        assert view.complete is False
        assert view.generation == 0
        assert view.entry(1, put("a", b"A", 10), 2) is False
        assert view.entry(2, put("b", b"B", 11), 1) is False
        assert view.complete is False
        assert view.values == {}
        assert view.generation == 0
        assert view.entry(3, put("c", b"C", 12), 0) is True
        assert view.complete is True
        assert view.generation == 1
        assert view.values == {"a": put("a", b"A", 10), "b": put("b", b"B", 11),
                               "c": put("c", b"C", 12)}

    def test_old_values_stay_visible_until_the_new_snapshot_completes(self) -> None:
        view = live_view(old=b"1", kept=b"2")
        before = dict(view.values)
        generation = view.generation
        assert view.begin(2) is False
        assert view.complete is False
        assert view.values == before  # a partial view is never published
        assert view.entry(1, put("kept", b"3", 20), 1) is False
        assert view.values == before
        assert view.generation == generation
        assert view.entry(2, put("new", b"4", 21), 0) is True
        # replaced wholesale: "old" is gone (not in the new snapshot)
        assert values_of(view) == {"kept": b"3", "new": b"4"}
        assert view.generation == generation + 1

    def test_deletes_during_the_snapshot_are_dropped(self) -> None:
        view = DesiredView()
        view.begin(4)
        view.entry(1, put("a", b"A"), 3)
        view.entry(2, delete("gone"), 2)
        view.entry(3, put("b", b"B"), 1)
        assert view.entry(4, delete("a"), 0) is True  # same key staged, then deleted
        assert values_of(view) == {"b": b"B"}
        assert None not in values_of(view).values()

    def test_snapshot_of_only_deletes_is_empty_and_complete(self) -> None:
        view = live_view(x=b"1")
        view.begin(2)
        view.entry(1, delete("x"), 1)
        assert view.entry(2, delete("y"), 0) is True
        assert view.complete
        assert view.values == {}

    def test_pending_may_grow_during_the_snapshot(self) -> None:
        view = DesiredView()
        view.begin(1)
        assert view.entry(1, put("a", b"1"), 1) is False  # a new write arrived meanwhile
        assert view.entry(2, put("a", b"2"), 0) is True
        assert values_of(view) == {"a": b"2"}

    def test_later_entry_for_the_same_key_wins_in_the_snapshot(self) -> None:
        view = DesiredView()
        view.begin(3)
        view.entry(1, put("a", b"1", 1), 2)
        view.entry(2, delete("a", 2), 1)
        view.entry(3, put("a", b"3", 3), 0)
        assert view.values == {"a": put("a", b"3", 3)}


class TestLiveUpdates:
    def test_put_adds_and_bumps_generation(self) -> None:
        view = live_view()
        generation = view.generation
        assert view.entry(1, put("a", b"1", 5), 0) is True
        assert view.values == {"a": put("a", b"1", 5)}
        assert view.generation == generation + 1

    def test_put_replaces(self) -> None:
        view = live_view(a=b"1")
        generation = view.generation
        assert view.entry(2, put("a", b"2", 9), 0) is True
        assert view.values == {"a": put("a", b"2", 9)}
        assert view.generation == generation + 1

    def test_identical_put_still_counts_as_a_change(self) -> None:
        view = live_view(a=b"1")
        generation = view.generation
        assert view.entry(2, put("a", b"1", 1), 0) is True
        assert view.generation == generation + 1

    def test_delete_known_key(self) -> None:
        view = live_view(a=b"1", b=b"2")
        generation = view.generation
        assert view.entry(3, delete("a"), 0) is True
        assert values_of(view) == {"b": b"2"}
        assert view.generation == generation + 1

    def test_delete_unknown_key_returns_false(self) -> None:
        view = live_view(a=b"1")
        generation = view.generation
        assert view.entry(2, delete("nope"), 0) is False
        assert values_of(view) == {"a": b"1"}
        assert view.generation == generation
        # the sequence still advanced: the next message is 3
        assert view.entry(3, put("b", b"2"), 0) is True

    def test_delete_twice(self) -> None:
        view = live_view(a=b"1")
        assert view.entry(2, delete("a"), 0) is True
        assert view.entry(3, delete("a"), 0) is False
        assert view.values == {}

    def test_live_pending_does_not_matter(self) -> None:
        view = live_view()
        assert view.entry(1, put("a", b"1"), 5) is True
        assert view.complete
        assert values_of(view) == {"a": b"1"}


class TestSequence:
    def test_first_message_must_be_one(self) -> None:
        view = DesiredView()
        view.begin(2)
        with pytest.raises(WatchReset) as info:
            view.entry(2, put("a"), 1)
        assert info.value.reason == "gap"
        assert "2" in str(info.value)
        assert str(info.value).startswith("gap: ")

    @pytest.mark.parametrize("cseq", [1, 2, 4, 100])
    def test_gap_or_repeat_in_live_updates(self, cseq: int) -> None:
        view = live_view(a=b"1", b=b"2")  # delivered 1, 2
        before = dict(view.values)
        generation = view.generation
        with pytest.raises(WatchReset) as info:
            view.entry(cseq, put("c"), 0)
        assert info.value.reason == "gap"
        assert str(info.value) == f"gap: consumer sequence {cseq} after 2"
        assert view.values == before
        assert view.generation == generation

    def test_gap_during_snapshot_publishes_nothing(self) -> None:
        view = live_view(a=b"1")
        view.begin(2)
        view.entry(1, put("b"), 1)
        with pytest.raises(WatchReset):
            view.entry(3, put("c"), 0)
        assert values_of(view) == {"a": b"1"}
        assert not view.complete

    def test_check_sequence(self) -> None:
        view = DesiredView()
        view.begin(0)
        view.check_sequence(1)
        view.check_sequence(2)
        with pytest.raises(WatchReset, match=r"^gap: consumer sequence 2 after 2$"):
            view.check_sequence(2)

    def test_begin_resets_the_sequence(self) -> None:
        view = live_view(a=b"1", b=b"2")
        with pytest.raises(WatchReset):
            view.entry(5, put("c"), 0)
        view.begin(1)
        assert view.entry(1, put("c", b"3"), 0) is True
        assert values_of(view) == {"c": b"3"}

    def test_heartbeat(self) -> None:
        view = live_view(a=b"1", b=b"2")
        view.check_heartbeat(None)
        view.check_heartbeat(2)
        with pytest.raises(WatchReset) as info:
            view.check_heartbeat(3)
        assert info.value.reason == "gap"
        assert "3" in str(info.value)
        with pytest.raises(WatchReset) as info:
            view.check_heartbeat(1)
        assert info.value.reason == "gap"

    def test_heartbeat_right_after_begin(self) -> None:
        view = DesiredView()
        view.begin(3)
        view.check_heartbeat(0)
        view.check_heartbeat(None)
        with pytest.raises(WatchReset, match="gap"):
            view.check_heartbeat(1)

    def test_watch_reset_message(self) -> None:
        assert str(WatchReset("reconnect")) == "reconnect"
        assert WatchReset("reconnect").reason == "reconnect"
        assert str(WatchReset("status", "409 gone")) == "status: 409 gone"
        assert WatchReset("status", "409 gone").reason == "status"


# ---- properties ------------------------------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c", "ns_d"])
_ops = st.lists(st.tuples(_keys, st.one_of(st.none(), st.binary(min_size=1, max_size=3))),
                max_size=40)


class TestProperties:
    @PROPERTY
    @given(ops=_ops)
    def test_live_updates_match_a_dict_model(self, ops: list[tuple[str, bytes | None]]) -> None:
        view = DesiredView()
        assert view.begin(0)
        model: dict[str, bytes] = {}
        for cseq, (key, value) in enumerate(ops, start=1):
            generation = view.generation
            changed = view.entry(cseq, DesiredEntry(key, value, cseq), 0)
            if value is None:
                assert changed == (key in model)
                model.pop(key, None)
            else:
                assert changed
                model[key] = value
            assert view.generation == generation + (1 if changed else 0)
            assert values_of(view) == model
        assert all(e.revision == max(i for i, (k, v) in enumerate(ops, start=1) if k == key)
                   for key, e in view.values.items())

    @PROPERTY
    @given(snapshot=_ops, live=_ops)
    def test_snapshot_then_live_matches_a_dict_model(
        self, snapshot: list[tuple[str, bytes | None]], live: list[tuple[str, bytes | None]]
    ) -> None:
        view = live_view(stale=b"x")
        model: dict[str, bytes] = {}
        assert view.begin(len(snapshot)) == (not snapshot)
        for i, (key, value) in enumerate(snapshot, start=1):
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
            done = view.entry(i, DesiredEntry(key, value, i), len(snapshot) - i)
            assert done == (i == len(snapshot))
            assert view.complete == done
            if not done:
                assert values_of(view) == {"stale": b"x"}
        assert values_of(view) == model
        for i, (key, value) in enumerate(live, start=len(snapshot) + 1):
            view.entry(i, DesiredEntry(key, value, i), 0)
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
            assert values_of(view) == model


class WatchMachine(RuleBasedStateMachine):
    """A KV bucket, a consumer delivering its messages in order, and the view fed by it.

    Writes append to the consumer's queue; ``resubscribe`` creates a new consumer whose
    initial messages are the last message per key (deleted keys keep their delete marker),
    as ``DeliverPolicy.LAST_PER_SUBJECT`` does. ``lose`` drops a message (a sequence gap).
    """

    def __init__(self) -> None:
        super().__init__()
        self.view = DesiredView()
        self.kv_last: dict[str, tuple[bytes | None, int]] = {}  # key -> last op (value, rev)
        self.revision = 0
        self.queue: list[DesiredEntry] = []
        self.cseq = 0  # the consumer's sequence of the last message it sent (or lost)
        self.applied: dict[str, bytes] = {}  # what the view must show once complete
        self.published: dict[str, bytes] = {}  # what the view showed at its last completion
        self.broken = False
        self.last_generation = 0
        self.resubscribe()

    @property
    def kv(self) -> dict[str, bytes]:
        return {k: v for k, (v, _) in self.kv_last.items() if v is not None}

    @rule(key=_keys, value=st.one_of(st.none(), st.binary(min_size=1, max_size=2)))
    def write(self, key: str, value: bytes | None) -> None:
        self.revision += 1
        self.kv_last[key] = (value, self.revision)
        self.queue.append(DesiredEntry(key, value, self.revision))

    @precondition(lambda self: self.queue and not self.broken)
    @rule()
    def deliver(self) -> None:
        entry = self.queue.pop(0)
        self.cseq += 1
        was_complete = self.view.complete
        before = dict(self.applied)
        if entry.value is None:
            self.applied.pop(entry.deployment, None)
        else:
            self.applied[entry.deployment] = entry.value
        changed = self.view.entry(self.cseq, entry, len(self.queue))
        if was_complete:
            assert changed == (entry.value is not None or entry.deployment in before)
        else:
            assert changed == (not self.queue)
        if self.view.complete:
            self.published = dict(self.applied)

    @precondition(lambda self: self.queue and not self.broken)
    @rule()
    def lose(self) -> None:
        self.queue.pop(0)
        self.cseq += 1
        self.broken = True

    @precondition(lambda self: self.broken and self.queue)
    @rule()
    def deliver_after_loss(self) -> None:
        entry = self.queue.pop(0)
        self.cseq += 1
        with pytest.raises(WatchReset) as info:
            self.view.entry(self.cseq, entry, len(self.queue))
        assert info.value.reason == "gap"
        self.resubscribe()

    @rule()
    def heartbeat(self) -> None:
        if self.broken:
            with pytest.raises(WatchReset) as info:
                self.view.check_heartbeat(self.cseq)
            assert info.value.reason == "gap"
            self.resubscribe()
        else:
            self.view.check_heartbeat(self.cseq)

    @rule()
    def resubscribe(self) -> None:
        self.queue = [DesiredEntry(k, v, rev) for k, (v, rev) in
                      sorted(self.kv_last.items(), key=lambda item: item[1][1])]
        self.cseq = 0
        self.applied = {}
        self.broken = False
        if self.view.begin(len(self.queue)):
            self.published = {}

    @invariant()
    def view_matches_model(self) -> None:
        assert values_of(self.view) == self.published
        if self.view.complete:
            assert self.published == self.applied
            if not self.queue and not self.broken:
                assert values_of(self.view) == self.kv
        assert all(v.value is not None for v in self.view.values.values())
        assert self.view.generation >= self.last_generation
        self.last_generation = self.view.generation


TestWatchMachine = WatchMachine.TestCase
TestWatchMachine.settings = settings(PROPERTY, max_examples=100, stateful_step_count=30)
