"""What the report writer accepts (harmony_fleet.callout.writer.check_report, pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given

from harmony_fleet.callout.writer import QUEUE_GROUP, CheckedReport, ReportRefused, check_report
from harmony_fleet.contracts import (
    MAX_REPORT_BYTES,
    Phase,
    ReportKind,
    ReportSubject,
    report_heartbeat_subject,
    report_info_subject,
    report_state_subject,
)

from .strategies import PROPERTY, deployment_tokens, device_ids

DEVICE = "pi-1"
DEPLOYMENT = "default_web"
STATE_SUBJECT = f"fleet.report.state.{DEVICE}.{DEPLOYMENT}"
INFO_SUBJECT = f"fleet.report.info.{DEVICE}"
HEARTBEAT_SUBJECT = f"fleet.report.heartbeat.{DEVICE}"


def state(**over: Any) -> dict[str, Any]:
    return {
        "device_id": DEVICE,
        "deployment": DEPLOYMENT,
        "phase": "Running",
        "message": "1/1 services running",
        "spec_hash": "0123456789abcdef",
        "revision": 3,
        "since": "2026-05-01T12:00:00Z",
        "updated_at": "2026-05-01T12:00:42Z",
        "services": [{"name": "web", "container": "fleet-default_web-web", "state": "running"}],
        **over,
    }


def info(**over: Any) -> dict[str, Any]:
    return {
        "device_id": DEVICE,
        "agent_version": "0.1.0",
        "labels": {"site": "kitchen"},
        "inventory": {"hostname": "pi-1", "arch": "aarch64", "os": "Debian 12",
                      "kernel": "6.6", "cpus": 4, "memory_bytes": 8 << 30},
        "started_at": "2026-05-01T12:00:00Z",
        "updated_at": "2026-05-01T12:00:42Z",
        **over,
    }


def heartbeat(**over: Any) -> dict[str, Any]:
    return {"device_id": DEVICE, "timestamp": "2026-05-01T12:00:42Z", "uptime_s": 42,
            "agent_version": "0.1.0", **over}


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# ----------------------------------------------------------------------------- accepted


def placed(checked: CheckedReport) -> tuple[ReportSubject, str, str]:
    return checked.where, checked.bucket, checked.key


def test_queue_group() -> None:
    assert QUEUE_GROUP == "fleet-report-writer"


def test_state_report() -> None:
    where, bucket, key = placed(check_report(STATE_SUBJECT, raw(state())))
    assert where == ReportSubject(ReportKind.STATE, DEVICE, DEPLOYMENT)
    assert (bucket, key) == ("device-state", f"state.{DEVICE}.{DEPLOYMENT}")


def test_info_report() -> None:
    where, bucket, key = placed(check_report(INFO_SUBJECT, raw(info())))
    assert where == ReportSubject(ReportKind.INFO, DEVICE, None)
    assert (bucket, key) == ("device-info", f"info.{DEVICE}")


def test_heartbeat_report() -> None:
    where, bucket, key = placed(check_report(HEARTBEAT_SUBJECT, raw(heartbeat())))
    assert where == ReportSubject(ReportKind.HEARTBEAT, DEVICE, None)
    assert (bucket, key) == ("device-heartbeat", f"heartbeat.{DEVICE}")


@pytest.mark.parametrize("phase", ["Pending", "Pulling", "Starting", "Running", "Failed",
                                   "Removed"])
def test_every_phase(phase: str) -> None:
    checked = check_report(STATE_SUBJECT, raw(state(phase=phase)))
    assert checked.bucket == "device-state"
    assert checked.phase == Phase(phase)


def test_unknown_fields_from_newer_agents_are_accepted() -> None:
    assert check_report(HEARTBEAT_SUBJECT, raw(heartbeat(future_field={"x": 1}))).key == \
        f"heartbeat.{DEVICE}"


def test_bare_deployment_token() -> None:
    key = check_report(f"fleet.report.state.{DEVICE}.web", raw(state(deployment="web"))).key
    assert key == f"state.{DEVICE}.web"


@PROPERTY
@given(device=device_ids, dep=deployment_tokens)
def test_valid_reports_for_any_device(device: str, dep: str) -> None:
    assert placed(check_report(report_state_subject(device, dep),
                               raw(state(device_id=device, deployment=dep))))[1:] == (
        "device-state", f"state.{device}.{dep}")
    assert placed(check_report(report_info_subject(device), raw(info(device_id=device))))[1:] \
        == ("device-info", f"info.{device}")
    assert placed(check_report(report_heartbeat_subject(device),
                               raw(heartbeat(device_id=device))))[1:] == (
        "device-heartbeat", f"heartbeat.{device}")


# ----------------------------------------------------------------------------- forged


@pytest.mark.parametrize(("subject", "doc"), [
    (STATE_SUBJECT, state(device_id="pi-2")),
    (INFO_SUBJECT, info(device_id="pi-2")),
    (HEARTBEAT_SUBJECT, heartbeat(device_id="pi-2")),
])
def test_forged_device_id(subject: str, doc: dict[str, Any]) -> None:
    with pytest.raises(ReportRefused, match="claims to be from") as exc:
        check_report(subject, raw(doc))
    assert "pi-1" in str(exc.value)
    assert "pi-2" in str(exc.value)


@PROPERTY
@given(device=device_ids, other=device_ids, dep=deployment_tokens)
def test_no_device_can_report_for_another(device: str, other: str, dep: str) -> None:
    assume(device != other)
    for subject, doc in (
        (report_state_subject(device, dep), state(device_id=other, deployment=dep)),
        (report_info_subject(device), info(device_id=other)),
        (report_heartbeat_subject(device), heartbeat(device_id=other)),
    ):
        with pytest.raises(ReportRefused, match="claims to be from"):
            check_report(subject, raw(doc))


@pytest.mark.parametrize("dep", ["default_api", "web", "other_web", "default"])
def test_state_deployment_mismatch(dep: str) -> None:
    with pytest.raises(ReportRefused, match="deployment"):
        check_report(STATE_SUBJECT, raw(state(deployment=dep)))


# ----------------------------------------------------------------------------- invalid


@pytest.mark.parametrize(("subject", "data"), [
    (STATE_SUBJECT, b""),
    (STATE_SUBJECT, b"not json"),
    (STATE_SUBJECT, b"{"),
    (STATE_SUBJECT, b"[]"),
    (STATE_SUBJECT, b"null"),
    (STATE_SUBJECT, b"\xff\xfe"),
    (STATE_SUBJECT, b"{}"),
    (STATE_SUBJECT, raw(state(phase="Exploded"))),
    (STATE_SUBJECT, raw(state(device_id="Pi_1"))),
    (STATE_SUBJECT, raw(state(deployment="a.b"))),
    (STATE_SUBJECT, raw(state(since="yesterday"))),
    (STATE_SUBJECT, raw({k: v for k, v in state().items() if k != "phase"})),
    (STATE_SUBJECT, raw(info())),
    (STATE_SUBJECT, raw(heartbeat())),
    (INFO_SUBJECT, b"{}"),
    (INFO_SUBJECT, raw(info(labels={"bad key!": "x"}))),
    (INFO_SUBJECT, raw(info(inventory={"hostname": "x"}))),
    (INFO_SUBJECT, raw(heartbeat())),
    (INFO_SUBJECT, raw(state())),
    (HEARTBEAT_SUBJECT, raw(heartbeat(uptime_s=-1))),
    (HEARTBEAT_SUBJECT, raw(heartbeat(timestamp=None))),
    (HEARTBEAT_SUBJECT, raw({"device_id": DEVICE})),
    (HEARTBEAT_SUBJECT, raw(state())),
    (HEARTBEAT_SUBJECT, raw(info())),
])
def test_invalid_payload(subject: str, data: bytes) -> None:
    kind = subject.split(".")[2]
    with pytest.raises(ReportRefused, match=f"invalid {kind} report"):
        check_report(subject, data)


def test_refusal_does_not_echo_payload_values() -> None:
    with pytest.raises(ReportRefused) as exc:
        check_report(HEARTBEAT_SUBJECT, raw(heartbeat(uptime_s="hunter2-secret")))
    assert "hunter2-secret" not in str(exc.value)
    assert "uptime_s" in str(exc.value)


# ----------------------------------------------------------------------------- size


def _state_of_size(size: int) -> bytes:
    base = len(raw(state(message="")))
    data = raw(state(message="x" * (size - base)))
    assert len(data) == size
    return data


LIMIT = MAX_REPORT_BYTES[ReportKind.STATE]


def test_report_at_the_size_limit_is_accepted() -> None:
    assert LIMIT == 16 * 1024
    assert check_report(STATE_SUBJECT, _state_of_size(LIMIT)).bucket == "device-state"


def test_oversize_report() -> None:
    with pytest.raises(ReportRefused, match=f"{LIMIT + 1} bytes") as exc:
        check_report(STATE_SUBJECT, _state_of_size(LIMIT + 1))
    assert str(LIMIT) in str(exc.value)
    assert exc.value.reason == "size"


@pytest.mark.parametrize(("subject", "kind"), [(STATE_SUBJECT, ReportKind.STATE),
                                               (INFO_SUBJECT, ReportKind.INFO),
                                               (HEARTBEAT_SUBJECT, ReportKind.HEARTBEAT)])
def test_oversize_garbage_is_refused_for_its_size(subject: str, kind: ReportKind) -> None:
    with pytest.raises(ReportRefused, match="limit"):
        check_report(subject, b"x" * (MAX_REPORT_BYTES[kind] + 1))
    # a heartbeat has a much smaller limit than a state report
    assert MAX_REPORT_BYTES[ReportKind.HEARTBEAT] < MAX_REPORT_BYTES[kind] or \
        kind is ReportKind.HEARTBEAT


# ----------------------------------------------------------------------------- subjects


@pytest.mark.parametrize("subject", [
    "",
    "fleet",
    "fleet.report",
    "fleet.report.state",
    f"fleet.report.state.{DEVICE}",
    f"fleet.report.state.{DEVICE}.{DEPLOYMENT}.extra",
    f"fleet.report.state.{DEVICE}.",
    f"fleet.report.state.{DEVICE}.*",
    f"fleet.report.state.{DEVICE}.>",
    f"fleet.report.state.{DEVICE}.Web",
    f"fleet.report.info.{DEVICE}.extra",
    f"fleet.report.heartbeat.{DEVICE}.{DEPLOYMENT}",
    "fleet.report.info.Pi-1",
    "fleet.report.info.*",
    "fleet.report.info.>",
    "fleet.report.info.",
    f"fleet.report.bogus.{DEVICE}",
    f"fleet.report.State.{DEVICE}.{DEPLOYMENT}",
    f"fleet.reports.info.{DEVICE}",
    f"fleet.other.info.{DEVICE}",
    f"report.info.{DEVICE}",
    f"device-commands.{DEVICE}.ping",
    f"$KV.device-info.info.{DEVICE}",
])
def test_bad_subjects(subject: str) -> None:
    for data in (raw(state()), raw(info()), raw(heartbeat())):
        with pytest.raises(ReportRefused):
            check_report(subject, data)
