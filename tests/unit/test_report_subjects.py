"""Report subjects (harmony_fleet.contracts.reports)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.contracts import (
    REPORT_SUBJECT_PREFIX,
    InvalidIdError,
    ReportAck,
    ReportKind,
    ReportSubject,
    ReportSubjectError,
    parse_report_subject,
    report_heartbeat_subject,
    report_info_subject,
    report_state_subject,
    report_subscription,
)

from .strategies import PROPERTY, deployment_tokens, device_ids

BAD_DEVICE_IDS: list[Any] = ["", "Pi-1", "pi.1", "pi_1", "*", ">", "-pi", "pi-", "a" * 64,
                             "pi 1", "pi\n", None, 7]
BAD_DEPLOYMENTS: list[Any] = ["", "Web", "a.b", "a_b_c", "_web", "web_", "*", ">", "web\n",
                              "a" * 64, None, 7]


def test_prefix_and_kinds() -> None:
    assert REPORT_SUBJECT_PREFIX == "fleet.report"
    assert [k.value for k in ReportKind] == ["state", "info", "heartbeat"]
    assert report_subscription() == "fleet.report.>"


def test_builders() -> None:
    assert report_state_subject("pi-1", "default_web") == "fleet.report.state.pi-1.default_web"
    assert report_state_subject("pi-1", "web") == "fleet.report.state.pi-1.web"
    assert report_info_subject("pi-1") == "fleet.report.info.pi-1"
    assert report_heartbeat_subject("pi-1") == "fleet.report.heartbeat.pi-1"


def test_parse() -> None:
    assert parse_report_subject("fleet.report.state.pi-1.default_web") == ReportSubject(
        ReportKind.STATE, "pi-1", "default_web")
    assert parse_report_subject("fleet.report.info.pi-1") == ReportSubject(
        ReportKind.INFO, "pi-1")
    assert parse_report_subject("fleet.report.heartbeat.pi-1") == ReportSubject(
        ReportKind.HEARTBEAT, "pi-1", None)


def test_parsed_kind_is_the_enum() -> None:
    assert parse_report_subject("fleet.report.info.pi-1").kind is ReportKind.INFO


@PROPERTY
@given(device=device_ids, dep=deployment_tokens)
def test_round_trip(device: str, dep: str) -> None:
    subject = report_state_subject(device, dep)
    assert subject.startswith(REPORT_SUBJECT_PREFIX + ".")
    assert len(subject.split(".")) == 5
    assert parse_report_subject(subject) == ReportSubject(ReportKind.STATE, device, dep)
    assert parse_report_subject(report_info_subject(device)) == ReportSubject(
        ReportKind.INFO, device, None)
    assert parse_report_subject(report_heartbeat_subject(device)) == ReportSubject(
        ReportKind.HEARTBEAT, device, None)


@PROPERTY
@given(a=device_ids, b=device_ids)
def test_distinct_devices_distinct_subjects(a: str, b: str) -> None:
    assert (report_info_subject(a) == report_info_subject(b)) == (a == b)
    assert (report_heartbeat_subject(a) == report_heartbeat_subject(b)) == (a == b)


@pytest.mark.parametrize("bad", BAD_DEVICE_IDS)
def test_builders_reject_bad_device_ids(bad: Any) -> None:
    for build in (report_info_subject, report_heartbeat_subject,
                  lambda d: report_state_subject(d, "web")):
        with pytest.raises(InvalidIdError):
            build(bad)


@pytest.mark.parametrize("bad", BAD_DEPLOYMENTS)
def test_state_builder_rejects_bad_deployments(bad: Any) -> None:
    with pytest.raises(InvalidIdError):
        report_state_subject("pi-1", bad)


@pytest.mark.parametrize("subject", [
    "fleet.report.status.pi-1",
    "fleet.report.STATE.pi-1.web",
    "fleet.report.heartbeats.pi-1",
    "fleet.report.*.pi-1",
    "fleet.report..pi-1",
])
def test_unknown_kind(subject: str) -> None:
    with pytest.raises(ReportSubjectError, match="unknown report kind"):
        parse_report_subject(subject)


@pytest.mark.parametrize("subject", [
    "fleet.report.state.pi-1",
    "fleet.report.state.pi-1.web.extra",
    "fleet.report.info.pi-1.web",
    "fleet.report.heartbeat.pi-1.x",
    "fleet.report.heartbeat.pi-1.x.y",
])
def test_wrong_token_count(subject: str) -> None:
    with pytest.raises(ReportSubjectError, match="token"):
        parse_report_subject(subject)


@pytest.mark.parametrize("subject", [
    "", "fleet", "fleet.report", "fleet.report.info", "fleet.reports.info.pi-1",
    "fleet.x.info.pi-1", "x.report.info.pi-1", "FLEET.report.info.pi-1",
    "report.info.pi-1", "device-commands.pi-1.ping", ".fleet.report.info.pi-1",
])
def test_not_a_report_subject(subject: str) -> None:
    with pytest.raises(ReportSubjectError):
        parse_report_subject(subject)


@pytest.mark.parametrize("device", [d for d in BAD_DEVICE_IDS
                                    if isinstance(d, str) and d and "." not in d])
def test_bad_device_in_subject(device: str) -> None:
    for subject in (f"fleet.report.info.{device}", f"fleet.report.heartbeat.{device}",
                    f"fleet.report.state.{device}.web"):
        with pytest.raises(ReportSubjectError):
            parse_report_subject(subject)


@pytest.mark.parametrize("dep", [d for d in BAD_DEPLOYMENTS
                                 if isinstance(d, str) and d and "." not in d])
def test_bad_deployment_in_subject(dep: str) -> None:
    with pytest.raises(ReportSubjectError):
        parse_report_subject(f"fleet.report.state.pi-1.{dep}")


@pytest.mark.parametrize("subject", ["fleet.report.info.", "fleet.report.state.pi-1.",
                                     "fleet.report.state..web"])
def test_empty_tokens(subject: str) -> None:
    with pytest.raises(ReportSubjectError):
        parse_report_subject(subject)


def test_report_subject_error_is_a_value_error() -> None:
    assert issubclass(ReportSubjectError, ValueError)


#: Subjects made of tokens that are often right, so some of them parse.
near_subjects = st.lists(
    st.sampled_from(["fleet", "report", "state", "info", "heartbeat", "pi-1", "web",
                     "ns_web", "Pi", "", "*", ">", "a.b"]),
    max_size=6,
).map(".".join)


@PROPERTY
@given(text=st.one_of(st.text(max_size=60), near_subjects))
def test_parse_never_raises_anything_else(text: str) -> None:
    try:
        parsed = parse_report_subject(text)
    except ReportSubjectError:
        return
    # whatever parses, builds back to itself
    rebuilt = (report_state_subject(parsed.device_id, parsed.deployment or "")
               if parsed.kind is ReportKind.STATE else
               report_info_subject(parsed.device_id) if parsed.kind is ReportKind.INFO else
               report_heartbeat_subject(parsed.device_id))
    assert rebuilt == text


# ----------------------------------------------------------------------------- the ack


def test_ack_ok() -> None:
    ack = ReportAck(ok=True)
    assert json.loads(ack.to_json_bytes()) == {"ok": True, "error": None, "retry_after_s": None,
                                               "in_use_by": None}
    assert ReportAck.model_validate_json(ack.to_json_bytes()) == ack


def test_ack_refused() -> None:
    ack = ReportAck(ok=False, error="report from pi-1 claims to be from pi-2")
    assert ReportAck.model_validate_json(ack.to_json_bytes()) == ack
    assert ReportAck.model_validate_json(b'{"ok": false, "error": "x", "new": 1}').error == "x"
