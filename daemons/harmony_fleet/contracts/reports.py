"""Report subjects: how agents hand their reports to the server-side writer.

Devices never write the shared KV buckets (one ``Nats-Rollup: all`` on a key they may write
would purge the whole bucket). They *request* on per-device subjects; the report writer
checks each report (the device in the subject is the device in the payload, the schema, the
size), writes the KV entry under the contract's key (docs/wire-contract.md), and answers :class:`ReportAck`.

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

from pydantic import Field

from harmony_fleet.errors import FleetError

from .base import WireModel
from .ids import InvalidIdError, validate_deployment_token, validate_device_id
from .kv import MAX_HEARTBEAT_REPORT_BYTES, MAX_INFO_REPORT_BYTES, MAX_STATE_REPORT_BYTES

REPORT_SUBJECT_PREFIX: Final = "fleet.report"
#: Header on every report and watch request: which agent process sent it,
#: ``<boot id of the host>:<random hex chosen at start>``. One device id, one live agent: the
#: writer keeps a lease per device (renewed by heartbeats) and refuses another instance's
#: reports while the lease is held (two agents with one id, e.g. a cloned SD card).
HDR_AGENT_INSTANCE: Final = "X-Harmony-Agent-Instance"
#: A device's lease lapses this long after its last accepted report; agents heartbeat more
#: often (at most every third of it).
DEFAULT_DEVICE_LEASE_S: Final = 30.0


class ReportKind(StrEnum):
    STATE = "state"
    INFO = "info"
    HEARTBEAT = "heartbeat"


#: Largest report the writer accepts, by kind.
MAX_REPORT_BYTES: Final = {
    ReportKind.STATE: MAX_STATE_REPORT_BYTES,
    ReportKind.INFO: MAX_INFO_REPORT_BYTES,
    ReportKind.HEARTBEAT: MAX_HEARTBEAT_REPORT_BYTES,
}


class ReportSubjectError(FleetError, ValueError):
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


def agent_instance_id(boot_id: str, nonce: str) -> str:
    """``<boot id>:<nonce>``: the host boot it runs in, and the process."""
    return f"{boot_id.strip()}:{nonce}"


def same_boot(instance_a: str, instance_b: str) -> bool:
    """True when two instance ids name the same boot of the same host."""
    boot_a, sep_a, _nonce_a = instance_a.rpartition(":")
    boot_b, sep_b, _nonce_b = instance_b.rpartition(":")
    return bool(sep_a and sep_b and boot_a and boot_a == boot_b)


class ReportAck(WireModel):
    """The writer's answer: ``ok`` or why the report was refused."""

    ok: bool
    error: str | None = None
    #: set when refused because another agent instance holds the device
    in_use_by: str | None = None
    retry_after_s: float | None = Field(default=None, ge=0,
                                        description="refused for now: send again after this")
