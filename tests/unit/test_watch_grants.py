"""Desired-state watch grants (harmony_fleet.contracts.watch, callout.watches: the pure parts)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from nats.js.api import AckPolicy, DeliverPolicy

from harmony_fleet.agent.watch import next_backoff
from harmony_fleet.callout.watches import WatchRefused, check_watch_request, consumer_config
from harmony_fleet.contracts import (
    WatchReply,
    WatchRequest,
    WatchSubjectError,
    device_consumer_name,
    device_inbox_prefix,
    is_device_inbox,
    parse_watch_subject,
    watch_request_subject,
    watch_subscription,
)

from .strategies import PROPERTY, device_ids

A, B = "dev-a", "dev-b"
GOOD = WatchRequest(deliver_subject=f"_INBOX.{A}.watch.abc").to_json_bytes()


def test_subjects_and_names() -> None:
    assert watch_request_subject(A) == "fleet.watch.dev-a"
    assert watch_subscription() == "fleet.watch.*"
    assert parse_watch_subject("fleet.watch.dev-a") == A
    assert device_consumer_name(A) == "fleet-agent-dev-a"
    assert device_inbox_prefix(A) == "_INBOX.dev-a"


@pytest.mark.parametrize("subject", ["fleet.watch", "fleet.watch.", "fleet.watch.Dev",
                                     "fleet.watch.a.b", "fleet.watch.*", "fleet.watch.>",
                                     "fleet.report.info.dev-a", "xfleet.watch.dev-a"])
def test_bad_watch_subjects(subject: str) -> None:
    with pytest.raises(WatchSubjectError):
        parse_watch_subject(subject)


@pytest.mark.parametrize(("subject", "expected"), [
    (f"_INBOX.{A}.x", True),
    (f"_INBOX.{A}.watch.0123abcd", True),
    (f"_INBOX.{A}.AbC_d-e.f", True),
    (f"_INBOX.{A}", False),              # the prefix itself is no subject to deliver to
    (f"_INBOX.{A}.", False),
    (f"_INBOX.{A}.*", False),            # wildcards are not a delivery subject
    (f"_INBOX.{A}.>", False),
    (f"_INBOX.{A}.x.>", False),
    (f"_INBOX.{A}..x", False),
    (f"_INBOX.{B}.x", False),            # another device's inbox
    (f"_INBOX.{A}-x.y", False),
    (f"_INBOX.x.{A}.y", False),
    (f"device-commands.{B}.exec", False),
    (f"fleet.report.state.{B}.ns_app", False),
    ("$KV.desired-state.dev-b.x", False),
    (f"_INBOX.{A}.x y", False),
    (f"_INBOX.{A}." + "x" * 300, False),
    ("", False),
])
def test_is_device_inbox(subject: str, expected: bool) -> None:
    assert is_device_inbox(A, subject) is expected


@PROPERTY
@given(d=device_ids, e=device_ids, suffix=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True))
def test_only_the_own_inbox_is_an_inbox(d: str, e: str, suffix: str) -> None:
    assume(d != e)
    assert is_device_inbox(d, f"_INBOX.{d}.{suffix}")
    assert not is_device_inbox(d, f"_INBOX.{e}.{suffix}")
    assert not is_device_inbox(d, f"device-commands.{e}.{suffix}")


def test_a_good_request() -> None:
    device, request = check_watch_request(watch_request_subject(A), f"_INBOX.{A}.r.1", GOOD)
    assert device == A
    assert request.deliver_subject == f"_INBOX.{A}.watch.abc"


@pytest.mark.parametrize(("reply", "deliver", "reason"), [
    # the answer would go to another device's command subject
    (f"device-commands.{B}.ping", f"_INBOX.{A}.w", "reply-subject"),
    (f"_INBOX.{B}.r", f"_INBOX.{A}.w", "reply-subject"),
    (None, f"_INBOX.{A}.w", "reply-subject"),
    # the delivery hijack: JetStream would publish A's desired state onto B's subjects
    (f"_INBOX.{A}.r", f"device-commands.{B}.exec", "deliver-subject"),
    (f"_INBOX.{A}.r", f"fleet.report.state.{B}.ns_app", "deliver-subject"),
    (f"_INBOX.{A}.r", f"_INBOX.{B}.w", "deliver-subject"),
    (f"_INBOX.{A}.r", f"_INBOX.{A}.>", "deliver-subject"),
    (f"_INBOX.{A}.r", "$JS.API.STREAM.PURGE.KV_desired-state", "deliver-subject"),
])
def test_refused_requests(reply: str | None, deliver: str, reason: str) -> None:
    data = WatchRequest(deliver_subject=deliver).to_json_bytes()
    with pytest.raises(WatchRefused) as exc:
        check_watch_request(watch_request_subject(A), reply, data)
    assert exc.value.reason == reason


@pytest.mark.parametrize("data", [b"", b"{}", b"[]", b"garbage", b'{"deliver_subject": 5}',
                                  b'{"deliver_subject": "_INBOX.dev-a.x", "idle_heartbeat_s": 0}',
                                  b'{"deliver_subject": "_INBOX.dev-a.x", "idle_heartbeat_s": 99}'])
def test_malformed_requests(data: bytes) -> None:
    with pytest.raises(WatchRefused) as exc:
        check_watch_request(watch_request_subject(A), f"_INBOX.{A}.r", data)
    assert exc.value.reason == "schema"


def test_the_consumer_is_chosen_by_the_server() -> None:
    request = WatchRequest(deliver_subject=f"_INBOX.{A}.watch.1", idle_heartbeat_s=2)
    config = consumer_config(A, request)
    assert config.name == device_consumer_name(A)  # fixed: asking again replaces it
    assert config.filter_subject == f"$KV.desired-state.{A}.>"
    assert config.deliver_subject == request.deliver_subject
    assert config.deliver_policy is DeliverPolicy.LAST_PER_SUBJECT
    assert config.ack_policy is AckPolicy.NONE
    assert config.idle_heartbeat == 2
    assert (config.inactive_threshold or 0) > 0
    assert config.mem_storage is True


def test_reply_shapes() -> None:
    assert WatchReply.model_validate_json(b'{"ok": true, "consumer": "c", "num_pending": 3}') \
        == WatchReply(ok=True, consumer="c", num_pending=3)
    refused = WatchReply(ok=False, error="rate limit", retry_after_s=2.5)
    assert WatchReply.model_validate_json(refused.to_json_bytes()) == refused


def test_agent_backoff_doubles_to_the_ceiling() -> None:
    waits, wait = [], 0.0
    for _ in range(8):
        wait = next_backoff(wait, initial=1.0, ceiling=30.0)
        waits.append(wait)
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
