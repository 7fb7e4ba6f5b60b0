"""Report subjects: how agents hand their reports to the server-side writer.

Devices never write the shared KV buckets (one ``Nats-Rollup: all`` on a key they may write
would purge the whole bucket). They *request* on per-device subjects; the report writer
checks each report (the device in the subject is the device in the payload, the schema, the
size), writes the KV entry under the key of DESIGN.md, and answers :class:`ReportAck`.

========================================  ================================  ==================
subject                                   payload                           KV entry written
========================================  ================================  ==================
``fleet.report.state.<device>.<dep>``     :class:`DeploymentState`          ``device-state``
``fleet.report.info.<device>``            :class:`DeviceInfo`               ``device-info``
``fleet.report.heartbeat.<device>``       :class:`Heartbeat`                ``device-heartbeat``
========================================  ================================  ==================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from .base import WireModel
from .ids import InvalidIdError, validate_deployment_token, validate_device_id

REPORT_SUBJECT_PREFIX: Final = "fleet.report"


class ReportKind(StrEnum):
    STATE = "state"
    INFO = "info"
    HEARTBEAT = "heartbeat"


class ReportSubjectError(ValueError):
    pass


@dataclass(frozen=True)
class ReportSubject:
    kind: ReportKind
    device_id: str
    deployment: str | None = None


def report_state_subject(device_id: str, deployment: str) -> str:
    return (f"{REPORT_SUBJECT_PREFIX}.state.{validate_device_id(device_id)}."
            f"{validate_deployment_token(deployment)}")


def report_info_subject(device_id: str) -> str:
    return f"{REPORT_SUBJECT_PREFIX}.info.{validate_device_id(device_id)}"


def report_heartbeat_subject(device_id: str) -> str:
    return f"{REPORT_SUBJECT_PREFIX}.heartbeat.{validate_device_id(device_id)}"


def report_subscription() -> str:
    """What the writer subscribes to."""
    return f"{REPORT_SUBJECT_PREFIX}.>"


def parse_report_subject(subject: str) -> ReportSubject:
    tokens = subject.split(".")
    prefix = REPORT_SUBJECT_PREFIX.split(".")
    if tokens[: len(prefix)] != prefix or len(tokens) < len(prefix) + 2:
        raise ReportSubjectError(f"{subject!r} is not a report subject")
    rest = tokens[len(prefix):]
    try:
        kind = ReportKind(rest[0])
    except ValueError as exc:
        raise ReportSubjectError(f"{subject!r}: unknown report kind {rest[0]!r}") from exc
    expected = 3 if kind is ReportKind.STATE else 2
    if len(rest) != expected:
        raise ReportSubjectError(f"{subject!r}: a {kind.value} report has {expected - 1} "
                                 "token(s) after the kind")
    try:
        device = validate_device_id(rest[1])
        deployment = validate_deployment_token(rest[2]) if kind is ReportKind.STATE else None
    except InvalidIdError as exc:
        raise ReportSubjectError(f"{subject!r}: {exc}") from exc
    return ReportSubject(kind, device, deployment)


class ReportAck(WireModel):
    """The writer's answer: ``ok`` or why the report was refused."""

    ok: bool
    error: str | None = None
