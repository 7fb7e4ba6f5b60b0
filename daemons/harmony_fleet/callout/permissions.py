"""NATS permission templates (pure): what a device, an admin and the report writer may do.

A device gets exactly what its agent needs and nothing that names another device:

* subscribe: its inbox ``_INBOX.<device>.>`` (request replies, JetStream API replies and its
  desired-state deliveries) and its commands ``device-commands.<device>.>``;
* publish: create a consumer on ``KV_desired-state`` *whose filter is its own keys* (the filter
  is part of the API subject), direct-get its own keys, answer flow control, and its reports
  ``fleet.report.*.<device>…``; nothing under ``$KV.>`` (the roll-up hole) and no other API;
* reply to requests it received: ``resp`` with a budget large enough for a log stream
  (:data:`DEVICE_RESPONSE_MAX` messages within :data:`DEVICE_RESPONSE_TTL_S`).
"""

from __future__ import annotations

from typing import Any, Final

from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    COMMAND_SUBJECT_PREFIX,
    MAX_FOLLOW_S,
    REPORT_SUBJECT_PREFIX,
    kv_stream_name,
    kv_subject,
    validate_device_id,
)

#: A device may send this many messages to one request's reply subject…
DEVICE_RESPONSE_MAX: Final = 100_000
#: …within this long after the request (the longest log follow).
DEVICE_RESPONSE_TTL_S: Final = MAX_FOLLOW_S

_DESIRED = kv_stream_name(BUCKET_DESIRED_STATE)


def device_inbox_prefix(device_id: str) -> str:
    return f"_INBOX.{validate_device_id(device_id)}"


def device_permissions(device_id: str) -> dict[str, Any]:
    d = validate_device_id(device_id)
    own_keys = kv_subject(BUCKET_DESIRED_STATE, f"{d}.>")
    return {
        "pub": {
            "allow": [
                f"$JS.API.CONSUMER.CREATE.{_DESIRED}.*.{own_keys}",
                f"$JS.API.DIRECT.GET.{_DESIRED}.{own_keys}",
                f"$JS.FC.{_DESIRED}.>",
                f"{REPORT_SUBJECT_PREFIX}.state.{d}.*",
                f"{REPORT_SUBJECT_PREFIX}.info.{d}",
                f"{REPORT_SUBJECT_PREFIX}.heartbeat.{d}",
            ],
        },
        "sub": {
            "allow": [f"{device_inbox_prefix(d)}.>", f"{COMMAND_SUBJECT_PREFIX}.{d}.>"],
        },
        "resp": {"max": DEVICE_RESPONSE_MAX, "ttl": DEVICE_RESPONSE_TTL_S * 1_000_000_000},
    }


def admin_permissions() -> dict[str, Any]:
    """Fleet admins and the operator: everything in the FLEET account."""
    return {"pub": {"allow": [">"]}, "sub": {"allow": [">"]}}


def writer_permissions() -> dict[str, Any]:
    """The report writer's static user: read reports, write the three report buckets."""
    buckets = (BUCKET_DEVICE_STATE, BUCKET_DEVICE_INFO, BUCKET_DEVICE_HEARTBEAT)
    return {
        "publish": [*(kv_subject(b, ">") for b in buckets),
                    *(f"$JS.API.STREAM.INFO.{kv_stream_name(b)}" for b in buckets),
                    "_INBOX.>"],
        "subscribe": [f"{REPORT_SUBJECT_PREFIX}.>", "_INBOX.>"],
    }


def user_claims_nats(permissions: dict[str, Any]) -> dict[str, Any]:
    """The ``nats`` section of a user JWT carrying ``permissions``."""
    return {**permissions, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}
