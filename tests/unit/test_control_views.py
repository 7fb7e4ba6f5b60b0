"""Pure parts of the control plane's reads: rollout progress, a device's detail, how KV values
are shown and when a compare-and-set write may go ahead."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harmony_fleet.bus.kv import KVEntry, RevisionMismatch
from harmony_fleet.contracts import REDACTED, DeploymentState, DeviceInfo, Heartbeat, PodmanScore
from harmony_fleet.control.deploy import WAITING, rollout_progress
from harmony_fleet.control.fleetview import deployment_rows, device_detail
from harmony_fleet.control.keyvalue import _check_revision, score_value, shown
from harmony_fleet.errors import InvalidInput
from harmony_fleet.planning import score_bytes

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SCORE = {"services": [{"name": "web", "image": "localhost/x:1"}]}
HASH = PodmanScore.model_validate(SCORE).spec_hash()


def state(device: str, phase: str, spec_hash: str | None = HASH, **extra: Any) -> DeploymentState:
    return DeploymentState.model_validate({
        "device_id": device, "deployment": "shop_web", "phase": phase, "spec_hash": spec_hash,
        "since": T0, "updated_at": T0, **extra})


# ----------------------------------------------------------------------------- rollout


def test_progress_counts_devices_per_phase_in_order() -> None:
    devices = ["a", "b", "c", "d"]
    hashes = dict.fromkeys(devices, HASH)
    states = {"a": state("a", "Running"), "b": state("b", "Pulling"),
              "c": state("c", "Running", spec_hash="old")}
    progress = rollout_progress(devices, hashes, states)
    # c reports on an older score and d on nothing: both still Waiting
    assert progress.counts == {WAITING: 2, "Pulling": 1, "Running": 1}
    assert list(progress.counts) == [WAITING, "Pulling", "Running"]
    assert (progress.done, progress.ok) == (False, False)


def test_progress_done_when_all_run_or_one_fails() -> None:
    hashes = {"a": HASH, "b": HASH}
    ok = rollout_progress(["a", "b"], hashes, {"a": state("a", "Running"),
                                               "b": state("b", "Running")})
    assert (ok.done, ok.ok, ok.counts) == (True, True, {"Running": 2})
    failed = rollout_progress(["a", "b"], hashes, {"a": state("a", "Failed")})
    assert (failed.done, failed.ok) == (True, False)
    # a failure of an older score is not this rollout's
    old = rollout_progress(["a"], hashes, {"a": state("a", "Failed", spec_hash="old")})
    assert (old.done, old.counts) == (False, {WAITING: 1})


def test_progress_ignores_a_report_about_an_earlier_write_of_the_same_score() -> None:
    """The same score deleted and written again: the device's Failed from revision 7 says
    nothing about revision 12 (the agent tries every new revision again)."""
    hashes = {"a": HASH}
    stale = rollout_progress(["a"], hashes, {"a": state("a", "Failed", revision=7)},
                             revisions={"a": 12})
    assert (stale.done, stale.counts) == (False, {WAITING: 1})
    fresh = rollout_progress(["a"], hashes, {"a": state("a", "Running", revision=12)},
                             revisions={"a": 12})
    assert (fresh.done, fresh.ok) == (True, True)
    # a later write (the operator's, a retry) still answers for this one
    later = rollout_progress(["a"], hashes, {"a": state("a", "Failed", revision=15)},
                             revisions={"a": 12})
    assert (later.done, later.ok) == (True, False)
    # an agent of another implementation that reports no revision: judged by the hash
    bare = rollout_progress(["a"], hashes, {"a": state("a", "Running")}, revisions={"a": 12})
    assert bare.ok is True


def test_progress_of_a_removal() -> None:
    going = rollout_progress(["a", "b"], {}, {"a": state("a", "Running")}, removed=True)
    # b has no report left: nothing runs there
    assert (going.done, going.counts) == (False, {"Running": 1, "Removed": 1})
    gone = rollout_progress(["a", "b"], {}, {"a": state("a", "Removed")}, removed=True)
    assert (gone.done, gone.ok) == (True, True)
    assert rollout_progress([], {}, {}).done is True


# ----------------------------------------------------------------------------- device detail


def info(**extra: Any) -> DeviceInfo:
    return DeviceInfo.model_validate({
        "device_id": "pi-01", "agent_version": "0.1.0", "labels": {"site": "lab"},
        "inventory": {"hostname": "pi-01", "arch": "aarch64", "os": "Debian", "kernel": "6.1",
                      "cpus": 4, "memory_bytes": 1024},
        "started_at": T0, "updated_at": T0, **extra})


def test_device_detail_liveness_and_deployments() -> None:
    beat = Heartbeat(device_id="pi-01", timestamp=T0, uptime_s=60, agent_version="0.1.0")
    desired = {"shop_web": KVEntry("pi-01.shop_web", score_bytes(PodmanScore.model_validate(SCORE)), 7),
               "broken": KVEntry("pi-01.broken", b"{not json", 8)}
    states = {"shop_web": state("pi-01", "Running"),
              "gone_app": state("pi-01", "Removed", deployment="gone_app")}
    detail = device_detail(info(), beat, desired, states, now=T0 + timedelta(seconds=30),
                           offline_after=timedelta(seconds=30))
    assert detail["online"] is True  # the threshold itself still counts as online
    assert detail["last_seen"] == T0.isoformat()
    assert detail["uptime_s"] == 60
    assert detail["labels"] == {"site": "lab"}
    rows = {r["deployment"]: r for r in detail["deployments"]}
    assert list(rows) == ["broken", "gone_app", "shop_web"]
    assert rows["shop_web"] | {"services": []} == {
        "deployment": "shop_web", "namespace": "shop", "name": "web", "desired": True,
        "desired_revision": 7, "spec_hash": HASH, "phase": "Running", "message": "",
        "reported_spec_hash": HASH, "up_to_date": True, "since": T0.isoformat(),
        "updated_at": T0.isoformat(), "services": []}
    assert rows["broken"]["spec_hash"] is None
    assert rows["broken"]["phase"] is None
    assert rows["broken"]["up_to_date"] is False
    assert rows["gone_app"]["desired"] is False
    assert rows["gone_app"]["phase"] == "Removed"
    assert rows["gone_app"]["namespace"] == "gone"

    later = device_detail(info(), beat, {}, {}, now=T0 + timedelta(seconds=31),
                          offline_after=timedelta(seconds=30))
    assert later["online"] is False
    never = device_detail(info(), None, {}, {}, now=T0, offline_after=timedelta(seconds=30))
    assert (never["online"], never["last_seen"], never["uptime_s"]) == (False, None, None)


def test_rows_of_a_token_without_namespace() -> None:
    (row,) = deployment_rows({"web": KVEntry("pi-01.web", b"{}", 1)}, {})
    assert (row["namespace"], row["name"]) == (None, "web")


# ----------------------------------------------------------------------------- KV values


def test_shown_values() -> None:
    sealed = json.dumps({**SCORE, "secrets": {"db": "v1:AAAA"}}).encode()
    assert shown("desired-state", sealed)["secrets"] == {"db": REDACTED}
    assert shown("device-info", b'{"a": 1}') == {"a": 1}
    assert shown("device-info", b"plain text") == "plain text"
    assert shown("desired-state", b"[1, 2]") == [1, 2]
    assert shown("desired-state", b"\xff\xfe") == "\ufffd\ufffd"
    assert shown("desired-state", None) is None


def test_score_values_are_canonical_and_validated() -> None:
    assert score_value(SCORE) == score_value(json.dumps(SCORE)) == score_value(
        {"services": [{"image": "localhost/x:1", "name": "web"}], "version": 0})
    with pytest.raises(InvalidInput, match="not JSON"):
        score_value("{")
    with pytest.raises(InvalidInput, match=r"secrets\.db"):
        score_value({**SCORE, "secrets": {"db": "plaintext"}})


@pytest.mark.parametrize(
    ("entry", "revision", "last"),
    [
        (KVEntry("k", b"x", 5), None, None),
        (KVEntry("k", b"x", 5), 5, 5),
        (KVEntry("k", None, None), 0, 0),
        (KVEntry("k", None, 9), 0, 9),  # deleted: written over the delete marker
    ],
)
def test_revision_checks_that_pass(entry: KVEntry, revision: int | None,
                                   last: int | None) -> None:
    assert _check_revision(entry, "desired-state", revision) == last


@pytest.mark.parametrize(
    ("entry", "revision", "message"),
    [
        (KVEntry("k", b"x", 5), 4, "expected revision 4, found revision 5"),
        (KVEntry("k", b"x", 5), 0, "expected revision 0, found revision 5"),
        (KVEntry("k", None, 9), 9, "expected revision 9, found no value"),
    ],
)
def test_revision_checks_that_fail(entry: KVEntry, revision: int, message: str) -> None:
    with pytest.raises(RevisionMismatch, match=message):
        _check_revision(entry, "desired-state", revision)
