"""NATS permission templates (pure): what a device, an admin and the report writer may do.

A device gets exactly what its agent needs and nothing that names another device:

* subscribe: its inbox ``_INBOX.<device>.>`` (request replies and its desired-state deliveries)
  and its commands ``device-commands.<device>.>``;
* publish: its reports ``fleet.report.*.<device>…`` and its watch request
  ``fleet.watch.<device>``; **no JetStream API at all**: a device that may create consumers
  can exhaust the stream's consumers, and JetStream delivers (consumer messages and direct-get
  replies) wherever the requester says, without checking the requester's permissions — so
  the server side creates the device's one consumer for it (:mod:`.watches`); nothing under
  ``$KV.>`` either (the roll-up hole: :mod:`.writer`);
* reply to requests it received: ``resp`` with a budget large enough for a log stream
  (:data:`DEVICE_RESPONSE_MAX` messages within :data:`DEVICE_RESPONSE_TTL_S`);
* at most :data:`DEVICE_MAX_SUBSCRIPTIONS` subscriptions per connection (its agent needs three
  or four), so a device cannot make the server hold unbounded interest.
"""

from __future__ import annotations

from typing import Any, Final

from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_REVOCATIONS,
    BUCKET_DEVICE_STATE,
    COMMAND_SUBJECT_PREFIX,
    INBOX_PREFIX,
    MAX_FOLLOW_S,
    REPORT_SUBJECT_PREFIX,
    WATCH_SUBJECT_PREFIX,
    device_inbox_prefix,
    kv_stream_name,
    kv_subject,
    validate_device_id,
    watch_request_subject,
)

#: A device may send this many messages to one request's reply subject…
DEVICE_RESPONSE_MAX: Final = 100_000
#: …within this long after the request (the longest log follow).
DEVICE_RESPONSE_TTL_S: Final = MAX_FOLLOW_S
DEVICE_MAX_SUBSCRIPTIONS: Final = 64

_DESIRED = kv_stream_name(BUCKET_DESIRED_STATE)


def device_permissions(device_id: str) -> dict[str, Any]:
    d = validate_device_id(device_id)
    return {
        "pub": {
            "allow": [
                f"{REPORT_SUBJECT_PREFIX}.state.{d}.*",
                f"{REPORT_SUBJECT_PREFIX}.info.{d}",
                f"{REPORT_SUBJECT_PREFIX}.heartbeat.{d}",
                watch_request_subject(d),
            ],
        },
        "sub": {
            "allow": [f"{device_inbox_prefix(d)}.>", f"{COMMAND_SUBJECT_PREFIX}.{d}.>"],
        },
        "resp": {"max": DEVICE_RESPONSE_MAX, "ttl": DEVICE_RESPONSE_TTL_S * 1_000_000_000},
        "subs": DEVICE_MAX_SUBSCRIPTIONS,
    }


def admin_permissions() -> dict[str, Any]:
    """Fleet admins and the operator: everything in the FLEET account."""
    return {"pub": {"allow": [">"]}, "sub": {"allow": [">"]}}


def writer_permissions() -> dict[str, Any]:
    """The report writer's static user: take reports and watch requests, write the three
    report buckets, follow desired-state's keys and the heartbeats (device leases), manage
    devices' desired-state consumers, and read device-revocations (the callout's check)."""
    buckets = (BUCKET_DEVICE_STATE, BUCKET_DEVICE_INFO, BUCKET_DEVICE_HEARTBEAT)
    revocations = kv_stream_name(BUCKET_DEVICE_REVOCATIONS)
    followed = (kv_stream_name(BUCKET_DESIRED_STATE), kv_stream_name(BUCKET_DEVICE_HEARTBEAT))
    return {
        "publish": [*(kv_subject(b, ">") for b in buckets),
                    *(f"$JS.API.STREAM.INFO.{kv_stream_name(b)}"
                      for b in (*buckets, BUCKET_DESIRED_STATE)),
                    *(api for stream in followed for api in (
                        f"$JS.API.CONSUMER.CREATE.{stream}",
                        f"$JS.API.CONSUMER.CREATE.{stream}.>",
                        f"$JS.API.CONSUMER.DELETE.{stream}.>",
                        f"$JS.API.CONSUMER.INFO.{stream}.>",
                        f"$JS.API.DIRECT.GET.{stream}.>",
                        # the newest revision: where a snapshot of the keys ends (KeyWatch)
                        f"$JS.API.STREAM.MSG.GET.{stream}",
                        f"$JS.FC.{stream}.>")),
                    f"$JS.API.STREAM.INFO.{revocations}",
                    f"$JS.API.DIRECT.GET.{revocations}.>",
                    f"{INBOX_PREFIX}.>"],
        "subscribe": [f"{REPORT_SUBJECT_PREFIX}.>", f"{WATCH_SUBJECT_PREFIX}.*",
                      f"{INBOX_PREFIX}.>"],
    }


def user_claims_nats(permissions: dict[str, Any]) -> dict[str, Any]:
    """The ``nats`` section of a user JWT carrying ``permissions`` (a template may set the
    limits ``subs``/``data``/``payload`` too; ``-1``, no limit, otherwise)."""
    return {"subs": -1, "data": -1, "payload": -1, **permissions, "type": "user", "version": 2}
