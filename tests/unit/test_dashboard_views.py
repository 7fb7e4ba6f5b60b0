"""The dashboard's view models (pure): filters, pages, liveness, attention lists, rollouts."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.contracts import DeploymentState, Heartbeat, Phase
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.dashboard import views
from harmony_fleet.dashboard.mock import seeded_snapshot
from harmony_fleet.dashboard.source import DeploymentResource, FleetSnapshot
from harmony_fleet.errors import InvalidInput

NOW = utcnow()
THRESHOLD = timedelta(seconds=30)


@pytest.fixture(scope="module")
def snapshot() -> FleetSnapshot:
    return seeded_snapshot(120, seed=3, now=NOW)


def query(**params: str) -> views.DeviceQuery:
    return views.DeviceQuery.parse(params, 25)


def test_a_page_holds_at_most_its_size_and_the_pages_cover_every_match(snapshot: FleetSnapshot) -> None:
    seen: list[str] = []
    first = views.device_list(snapshot, query(), now=NOW, offline_after=THRESHOLD)
    assert first.page.pages == 5
    for number in range(1, first.page.pages + 1):
        model = views.device_list(snapshot, query(page=str(number)), now=NOW,
                                  offline_after=THRESHOLD)
        assert len(model.rows) <= 25
        seen += [r.device_id for r in model.rows]
    assert seen == sorted(snapshot.infos)


def test_online_filter_follows_the_heartbeat_threshold(snapshot: FleetSnapshot) -> None:
    online = views.device_list(snapshot, query(online="online", per_page="200"), now=NOW,
                               offline_after=THRESHOLD)
    offline = views.device_list(snapshot, query(online="offline", per_page="200"), now=NOW,
                                offline_after=THRESHOLD)
    assert online.counts["matched"] + offline.counts["matched"] == 120
    assert all(r.online for r in online.rows)
    assert not any(r.online for r in offline.rows)
    for row in offline.rows:
        assert NOW - snapshot.heartbeats[row.device_id].timestamp > THRESHOLD
    # a longer threshold makes the same devices online again
    lenient = views.device_list(snapshot, query(online="offline", per_page="200"), now=NOW,
                                offline_after=timedelta(days=30))
    assert lenient.counts["matched"] == 0


def test_label_filter_with_and_without_a_value(snapshot: FleetSnapshot) -> None:
    lab = views.device_list(snapshot, query(label="site=lab", per_page="200"), now=NOW,
                            offline_after=THRESHOLD)
    assert lab.rows
    assert all(r.labels["site"] == "lab" for r in lab.rows)
    anything = views.device_list(snapshot, query(label="site", per_page="200"), now=NOW,
                                 offline_after=THRESHOLD)
    assert anything.counts["matched"] == 120
    nothing = views.device_list(snapshot, query(label="zone=a"), now=NOW,
                                offline_after=THRESHOLD)
    assert nothing.rows == []
    assert nothing.page.pages == 1


@pytest.mark.parametrize("params", [
    {"page": "0"}, {"page": "x"}, {"page": "-1"}, {"per_page": "201"}, {"online": "maybe"},
    {"label": "bad key!"}, {"label": "k=v v"}, {"q": "x" * 64},
])
def test_bad_queries_are_refused_with_a_reason(params: dict[str, str]) -> None:
    with pytest.raises(InvalidInput, match=next(iter(params))):
        views.DeviceQuery.parse(params, 50)


def test_query_links_keep_filters_and_drop_defaults() -> None:
    q = query(label="site=lab", online="offline", page="3")
    assert q.url("/devices", page=4) == "/devices?label=site%3Dlab&online=offline&page=4"
    assert query().url("/devices") == "/devices"
    assert query(per_page="10").url("/devices", page=2) == "/devices?page=2&per_page=10"


@given(total=st.integers(0, 5000), per_page=st.integers(1, 200), number=st.integers(1, 10**6))
def test_page_arithmetic(total: int, per_page: int, number: int) -> None:
    page = views.Page.of(total, number, per_page)
    rows = list(range(total))
    shown = page.slice(rows)
    assert len(shown) <= per_page
    assert 1 <= page.number <= page.pages
    if total:
        assert shown == rows[page.first - 1:page.last]
        assert shown
    else:
        assert shown == []
        assert page.first == page.last == 0


def test_overview_lists_offline_devices_and_failed_deployments(snapshot: FleetSnapshot) -> None:
    model = views.overview(snapshot, now=NOW, offline_after=THRESHOLD)
    assert model.devices == 120
    assert model.online + model.offline == 120
    assert len(model.offline_rows) == min(model.offline, views.ATTENTION_ROWS)
    failed = [(d, t) for d, states in snapshot.states.items() for t, s in states.items()
              if s.phase is Phase.FAILED]
    assert model.failed_total == len(failed)
    assert [(d, t) for d, t, _m in model.failed_rows] == sorted(failed)[:views.ATTENTION_ROWS]
    assert sum(model.phases.values()) == sum(len(s) for s in snapshot.states.values())


def test_device_detail_names_deployments_services_and_whether_applied(snapshot: FleetSnapshot) -> None:
    device = sorted(snapshot.infos)[0]
    model = views.device_detail(snapshot, device, now=NOW, offline_after=THRESHOLD)
    assert [d.token for d in model.deployments] == sorted(snapshot.desired[device])
    for row in model.deployments:
        assert row.service_names
        assert all((row.token, s) in model.log_targets for s in row.service_names)
    with pytest.raises(views.NotFound, match="has not published device-info"):
        views.device_detail(snapshot, "no-such-device", now=NOW, offline_after=THRESHOLD)
    with pytest.raises(views.NotFound):
        views.device_detail(snapshot, "Not_A_Label", now=NOW, offline_after=THRESHOLD)


def test_up_to_date_compares_the_reported_hash_with_the_desired_score(snapshot: FleetSnapshot) -> None:
    device = sorted(snapshot.infos)[0]
    token = sorted(snapshot.desired[device])[0]
    state: DeploymentState = snapshot.states[device][token]
    from harmony_fleet.contracts import PodmanScore

    wanted = PodmanScore.model_validate_json(snapshot.desired[device][token]).spec_hash()
    states = {device: {token: state.model_copy(update={"spec_hash": wanted})}}
    snap = FleetSnapshot(snapshot.infos, snapshot.heartbeats, states, snapshot.desired,
                               None)
    row = views.device_detail(snap, device, now=NOW, offline_after=THRESHOLD).deployments
    assert next(r for r in row if r.token == token).up_to_date is True
    states[device][token] = state.model_copy(update={"spec_hash": "0" * 16})
    row = views.device_detail(snap, device, now=NOW, offline_after=THRESHOLD).deployments
    assert next(r for r in row if r.token == token).up_to_date is False


def test_deployment_rows_count_phases_and_unreported_devices(snapshot: FleetSnapshot) -> None:
    rows, page = views.deployment_list(snapshot, views.DeploymentQuery())
    assert page.total == len(rows) == 5
    for row in rows:
        told = {d for d, tokens in snapshot.desired.items() if row.token in tokens}
        assert row.devices == len(told)
        assert sum(row.phases.values()) == row.devices
    failed_only, _page = views.deployment_list(snapshot, views.DeploymentQuery(phase="Failed"))
    assert all(r.failed for r in failed_only)


def test_deployment_detail_tabs_and_filter(snapshot: FleetSnapshot) -> None:
    q = views.DeploymentQuery(phase="Running", per_page=5)
    model = views.deployment_detail(snapshot, "shop_web", "devices", q, now=NOW,
                                    offline_after=THRESHOLD)
    assert len(model.rows) <= 5
    assert all(r.phase == "Running" for r in model.rows)
    assert model.page.total == model.phases["Running"]
    spec = views.deployment_detail(snapshot, "shop_web", "spec", views.DeploymentQuery(),
                                   now=NOW, offline_after=THRESHOLD)
    assert spec.score_shown is not None
    assert json.loads(spec.score_shown)["services"][0]["name"] == "web"
    with pytest.raises(InvalidInput, match="tab"):
        views.deployment_detail(snapshot, "shop_web", "manifest", q, now=NOW,
                                offline_after=THRESHOLD)
    with pytest.raises(views.NotFound):
        views.deployment_detail(snapshot, "shop_nothing", "devices", q, now=NOW,
                                offline_after=THRESHOLD)


def test_sealed_secrets_are_never_shown_in_the_spec_tab(snapshot: FleetSnapshot) -> None:
    device = sorted(snapshot.infos)[0]
    value = json.dumps({"services": [{"name": "api", "image": "x/api:1", "secrets": ["db"]}],
                        "secrets": {"db": "v1:c2VhbGVkLXNlY3JldC1jaXBoZXJ0ZXh0"}}).encode()
    desired = {device: {"shop_api": value}}
    snap = FleetSnapshot(snapshot.infos, snapshot.heartbeats, {}, desired, None)
    model = views.deployment_detail(snap, "shop_api", "spec", views.DeploymentQuery(), now=NOW,
                                    offline_after=THRESHOLD)
    assert model.score_shown is not None
    assert "c2VhbGVkLXNlY3JldC1jaXBoZXJ0ZXh0" not in model.score_shown
    assert "redacted" in model.score_shown


def _resource(rollout: dict[str, object], status: dict[str, object]) -> DeploymentResource:
    return DeploymentResource("shop", "web", "shop_web", 1, {}, rollout, status)


def test_rollout_progress_only_where_a_strategy_is_set() -> None:
    assert views.rollout_progress(None) is None
    assert views.rollout_progress(_resource({"strategy": "AllAtOnce"}, {})) is None
    waiting = views.rollout_progress(_resource({"strategy": "Batched", "batchSize": 5}, {}))
    assert waiting is not None
    assert waiting.message == "no progress reported yet"
    progress = views.rollout_progress(_resource(
        {"strategy": "Batched", "batchSize": 10},
        {"aggregate": {"matchedDeviceCount": 48},
         "rollout": {"strategy": "Batched", "phase": "Paused", "currentBatch": 2,
                     "totalBatches": 5, "batchSize": 10, "batchUpdated": 10,
                     "batchSucceeded": 6, "batchFailed": 3, "batchPending": 1, "updated": 20,
                     "pauseReason": "FailureThresholdExceeded", "message": "3 failed",
                     "failingDevices": ["a", "b", "c"], "resumeToken": "t",
                     "acknowledgedFailures": 0, "batchStartUpdated": 10}}))
    assert progress is not None
    assert (progress.batch, progress.batches, progress.done, progress.total) == (2, 5, 20, 48)
    assert progress.current == [("given the score", 10), ("succeeded", 6), ("failed", 3),
                                ("pending", 1)]
    assert progress.pause_reason == "FailureThresholdExceeded"
    assert progress.failing == ["a", "b", "c"]
    assert all(k not in ("resumeToken", "batchStartUpdated") for k, _v in progress.fields)


def test_a_malformed_rollout_status_is_shown_as_far_as_it_goes() -> None:
    progress = views.rollout_progress(_resource(
        {"strategy": "Batched"}, {"aggregate": "x", "rollout": {"currentBatch": "two",
                                                                "failingDevices": "a"}}))
    assert progress is not None
    assert progress.batch is None
    assert progress.total is None
    assert progress.failing == []


def test_age_text() -> None:
    assert views.age_text(None, NOW) == "never"
    assert views.age_text(NOW - timedelta(seconds=5), NOW) == "5 s ago"
    assert views.age_text(NOW - timedelta(minutes=3, seconds=5), NOW) == "3 min ago"
    assert views.age_text(NOW - timedelta(days=2), NOW) == "2 d ago"
    assert views.age_text(NOW + timedelta(seconds=5), NOW) == "just now"


def test_a_fresh_heartbeat_is_online_and_an_old_one_is_not(snapshot: FleetSnapshot) -> None:
    device = sorted(snapshot.infos)[0]
    beats = dict(snapshot.heartbeats)
    beats[device] = Heartbeat(device_id=device, timestamp=NOW - timedelta(seconds=29),
                              uptime_s=1, agent_version="1")
    snap = FleetSnapshot(snapshot.infos, beats, {}, {}, None)
    assert views.device_detail(snap, device, now=NOW, offline_after=THRESHOLD).online
    beats[device] = beats[device].model_copy(update={"timestamp": NOW - timedelta(seconds=31)})
    assert not views.device_detail(snap, device, now=NOW, offline_after=THRESHOLD).online
    del beats[device]
    model = views.device_detail(snap, device, now=NOW, offline_after=THRESHOLD)
    assert not model.online
    assert model.last_seen == "never"
