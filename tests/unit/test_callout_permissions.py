"""NATS permission templates (harmony_fleet.callout.permissions).

A small NATS subject matcher lives here so the allow lists are checked the way nats-server
reads them, not only as strings: ``*`` matches one token, ``>`` one or more trailing tokens.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import assume, given

from harmony_fleet.callout.permissions import (
    DEVICE_MAX_SUBSCRIPTIONS,
    DEVICE_RESPONSE_MAX,
    DEVICE_RESPONSE_TTL_S,
    admin_permissions,
    device_permissions,
    user_claims_nats,
    writer_permissions,
)
from harmony_fleet.contracts import (
    BUCKETS,
    InvalidIdError,
    device_command_subject,
    device_inbox_prefix,
    report_heartbeat_subject,
    report_info_subject,
    report_state_subject,
    watch_request_subject,
)

from .strategies import PROPERTY, deployment_tokens, device_ids

A = "dev-a"
B = "dev-b"

#: Every non-wildcard token a device's permissions may contain besides its own id.
STRUCTURAL = frozenset({
    "fleet", "report", "state", "info", "heartbeat", "watch", "_INBOX", "device-commands",
})
WILDCARDS = frozenset({"*", ">"})


# ----------------------------------------------------------------------------- the matcher


def subject_matches(pattern: str, subject: str) -> bool:
    """nats-server's rule: ``*`` is one token, ``>`` (last only) is one or more tokens."""
    pat = pattern.split(".")
    sub = subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return i == len(pat) - 1 and len(sub) > i
        if i >= len(sub):
            return False
        if token not in ("*", sub[i]):
            return False
    return len(sub) == len(pat)


def allows(allow: list[str], subject: str) -> bool:
    return any(subject_matches(p, subject) for p in allow)


def pub(device: str) -> list[str]:
    return list(device_permissions(device)["pub"]["allow"])


def sub(device: str) -> list[str]:
    return list(device_permissions(device)["sub"]["allow"])


@pytest.mark.parametrize(("pattern", "subject", "expected"), [
    ("a.b", "a.b", True),
    ("a.b", "a.c", False),
    ("a.b", "a.b.c", False),
    ("a.b.c", "a.b", False),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("a.*", "a", False),
    ("*.b", "x.b", True),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c.d", True),
    ("a.>", "a", False),
    (">", "anything.at.all", True),
    ("a.*.c.>", "a.x.c.d.e", True),
    ("a.*.c.>", "a.x.c", False),
    ("a.b.>", "a.bb.c", False),
    ("a.b", "a.b.>", False),
])
def test_the_matcher(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


# ----------------------------------------------------------------------------- device: exact lists


def test_device_permissions_exact() -> None:
    assert device_permissions("pi-1") == {
        "pub": {
            "allow": [
                "fleet.report.state.pi-1.*",
                "fleet.report.info.pi-1",
                "fleet.report.heartbeat.pi-1",
                "fleet.watch.pi-1",
            ],
        },
        "sub": {"allow": ["_INBOX.pi-1.>", "device-commands.pi-1.>"]},
        "resp": {"max": 100_000, "ttl": 3600 * 1_000_000_000},
        "subs": 64,
    }


def test_device_permissions_have_no_deny_and_no_other_sections() -> None:
    perms = device_permissions("pi-1")
    assert set(perms) == {"pub", "sub", "resp", "subs"}
    assert perms["subs"] == DEVICE_MAX_SUBSCRIPTIONS
    assert set(perms["pub"]) == {"allow"}
    assert set(perms["sub"]) == {"allow"}


def test_response_budget() -> None:
    resp = device_permissions("pi-1")["resp"]
    assert DEVICE_RESPONSE_MAX == 100_000
    assert DEVICE_RESPONSE_TTL_S == 3600
    assert resp["max"] == DEVICE_RESPONSE_MAX
    # the JWT carries nanoseconds, as an integer
    assert resp["ttl"] == DEVICE_RESPONSE_TTL_S * 10**9
    assert isinstance(resp["ttl"], int)


def test_device_inbox_prefix() -> None:
    assert device_inbox_prefix("pi-1") == "_INBOX.pi-1"
    assert allows(sub("pi-1"), device_inbox_prefix("pi-1") + ".abc.1")


def test_each_call_returns_fresh_lists() -> None:
    one = device_permissions("pi-1")
    one["pub"]["allow"].append(">")
    assert ">" not in device_permissions("pi-1")["pub"]["allow"]


@pytest.mark.parametrize("bad", [
    "", "Pi-1", "pi.1", "pi_1", "pi*", "*", ">", "pi.>", "-pi", "pi-", "a" * 64, "pi 1",
    "pi\n", "$KV", None, 5,
])
def test_invalid_device_ids_raise(bad: Any) -> None:
    with pytest.raises(InvalidIdError):
        device_permissions(bad)
    with pytest.raises(InvalidIdError):
        device_inbox_prefix(bad)


# ----------------------------------------------------------------------------- device: what it can do


@pytest.mark.parametrize("subject", [
    f"fleet.watch.{A}",
    f"fleet.report.state.{A}.ns_app",
    f"fleet.report.info.{A}",
    f"fleet.report.heartbeat.{A}",
])
def test_device_may_publish_its_own(subject: str) -> None:
    assert allows(pub(A), subject)


@pytest.mark.parametrize("subject", [
    # no JetStream API at all, its own keys included: consumers (exhaustion, and delivery
    # onto subjects of its choosing), direct gets (replies go wherever it says), flow control
    f"$JS.API.CONSUMER.CREATE.KV_desired-state.x.$KV.desired-state.{A}.>",
    f"$JS.API.CONSUMER.CREATE.KV_desired-state.fleet-agent-{A}.$KV.desired-state.{A}.>",
    f"$JS.API.DIRECT.GET.KV_desired-state.$KV.desired-state.{A}.ns_app",
    f"$JS.API.DIRECT.GET.KV_desired-state.$KV.desired-state.{A}.>",
    f"$JS.API.CONSUMER.MSG.NEXT.KV_desired-state.fleet-agent-{A}",
    f"$JS.API.CONSUMER.INFO.KV_desired-state.fleet-agent-{A}",
    "$JS.FC.KV_desired-state.abc.def",
    "$JS.API.INFO",
    # another device's reads, reports and watch
    f"fleet.watch.{B}",
    "fleet.watch.*",
    f"$JS.API.CONSUMER.CREATE.KV_desired-state.x.$KV.desired-state.{B}.>",
    f"$JS.API.DIRECT.GET.KV_desired-state.$KV.desired-state.{B}.ns_app",
    f"fleet.report.state.{B}.ns_app",
    f"fleet.report.info.{B}",
    f"fleet.report.heartbeat.{B}",
    # the unfiltered consumer kv.watch() creates: it would see every device
    "$JS.API.CONSUMER.CREATE.KV_desired-state",
    "$JS.API.CONSUMER.CREATE.KV_desired-state.x",
    "$JS.API.CONSUMER.CREATE.KV_desired-state.x.$KV.desired-state.>",
    f"$JS.API.CONSUMER.CREATE.KV_desired-state.x.$KV.desired-state.*.{A}",
    "$JS.API.CONSUMER.DURABLE.CREATE.KV_desired-state.x",
    # a direct get without a key filter
    "$JS.API.DIRECT.GET.KV_desired-state",
    # the roll-up hole: no raw KV writes, own keys included
    f"$KV.device-state.state.{A}.x",
    f"$KV.device-info.info.{A}",
    f"$KV.device-heartbeat.heartbeat.{A}",
    f"$KV.desired-state.{A}.ns_app",
    # stream administration
    "$JS.API.STREAM.PURGE.KV_device-state",
    "$JS.API.STREAM.PURGE.KV_desired-state",
    "$JS.API.STREAM.DELETE.KV_device-state",
    "$JS.API.STREAM.MSG.DELETE.KV_desired-state",
    "$JS.API.STREAM.CREATE.KV_evil",
    "$JS.API.CONSUMER.CREATE.KV_device-state.x.$KV.device-state.>",
    "$JS.API.CONSUMER.DELETE.KV_desired-state.x",
    # other devices' commands and the report writer's wildcard
    f"device-commands.{B}.ping",
    f"device-commands.{A}.ping",
    "fleet.report.>",
    f"fleet.report.state.{A}.a.b",
])
def test_device_may_not_publish(subject: str) -> None:
    assert not allows(pub(A), subject)


@pytest.mark.parametrize("subject", [
    f"_INBOX.{A}.x",
    f"_INBOX.{A}.abc.def",
    f"device-commands.{A}.ping",
    f"device-commands.{A}.exec",
])
def test_device_may_subscribe_its_own(subject: str) -> None:
    assert allows(sub(A), subject)


@pytest.mark.parametrize("subject", [
    f"device-commands.{B}.ping",
    "device-commands.*.ping",
    "device-commands.>",
    f"_INBOX.{B}.x",
    "_INBOX.>",
    f"_INBOX.{A}",
    "fleet.report.>",
    f"fleet.report.info.{B}",
    "$KV.desired-state.>",
    f"$KV.desired-state.{B}.ns_app",
    ">",
])
def test_device_may_not_subscribe(subject: str) -> None:
    assert not allows(sub(A), subject)


def test_sub_allow_is_exactly_inbox_and_commands() -> None:
    assert sub(A) == [f"{device_inbox_prefix(A)}.>", f"device-commands.{A}.>"]


# ----------------------------------------------------------------------------- device: properties


def _tokens(entries: list[str]) -> set[str]:
    return {t for e in entries for t in e.split(".")}


@PROPERTY
@given(d=device_ids)
def test_only_structural_tokens_and_the_own_id(d: str) -> None:
    perms = device_permissions(d)
    entries = perms["pub"]["allow"] + perms["sub"]["allow"]
    assert _tokens(entries) - WILDCARDS - STRUCTURAL <= {d}
    for entry in entries:
        assert not entry.startswith("$KV."), entry
        assert entry not in (">", "*")


@PROPERTY
@given(d=device_ids, e=device_ids)
def test_no_entry_names_another_device(d: str, e: str) -> None:
    assume(d != e)
    perms = device_permissions(d)
    entries = perms["pub"]["allow"] + perms["sub"]["allow"]
    # a valid id may spell a fixed token ("state", "fleet", "info"...): those sit at fixed
    # positions, which the position-wise comparison below covers
    if e not in STRUCTURAL:
        assert e not in _tokens(entries)
    # position-wise: the lists for d and for e differ exactly where one has d and the other e
    other = device_permissions(e)
    for mine, theirs in zip(entries, other["pub"]["allow"] + other["sub"]["allow"], strict=True):
        a, b = mine.split("."), theirs.split(".")
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x == y or (x == d and y == e), (mine, theirs)


@PROPERTY
@given(d=device_ids, e=device_ids, dep=deployment_tokens)
def test_device_reaches_its_own_subjects_and_not_another_devices(d: str, e: str,
                                                                 dep: str) -> None:
    assume(d != e)

    def own(x: str) -> list[str]:
        return [
            watch_request_subject(x),
            report_state_subject(x, dep),
            report_info_subject(x),
            report_heartbeat_subject(x),
        ]

    for subject in own(d):
        assert allows(pub(d), subject), subject
    for subject in own(e):
        assert not allows(pub(d), subject), subject
    assert allows(sub(d), device_command_subject(d, "ping"))
    assert not allows(sub(d), device_command_subject(e, "ping"))
    assert allows(sub(d), f"_INBOX.{d}.r1")
    assert not allows(sub(d), f"_INBOX.{e}.r1")


@PROPERTY
@given(d=device_ids, dep=deployment_tokens)
def test_no_raw_kv_write_at_all(d: str, dep: str) -> None:
    allow = pub(d)
    for spec in BUCKETS:
        for key in (f"{d}.{dep}", f"state.{d}.{dep}", f"info.{d}", f"heartbeat.{d}", "x"):
            assert not allows(allow, f"$KV.{spec.name}.{key}")
        for op in ("PURGE", "DELETE", "UPDATE", "INFO", "CREATE"):
            assert not allows(allow, f"$JS.API.STREAM.{op}.KV_{spec.name}")
    assert not any(entry.startswith("$JS") for entry in allow)


# ----------------------------------------------------------------------------- admin, writer


def test_admin_permissions() -> None:
    assert admin_permissions() == {"pub": {"allow": [">"]}, "sub": {"allow": [">"]}}
    assert allows(admin_permissions()["pub"]["allow"], "$JS.API.STREAM.PURGE.KV_desired-state")


def test_writer_permissions_exact() -> None:
    assert writer_permissions() == {
        "publish": ["$KV.device-state.>", "$KV.device-info.>", "$KV.device-heartbeat.>",
                    "$JS.API.STREAM.INFO.KV_device-state", "$JS.API.STREAM.INFO.KV_device-info",
                    "$JS.API.STREAM.INFO.KV_device-heartbeat",
                    "$JS.API.STREAM.INFO.KV_desired-state",
                    "$JS.API.CONSUMER.CREATE.KV_desired-state",
                    "$JS.API.CONSUMER.CREATE.KV_desired-state.>",
                    "$JS.API.CONSUMER.DELETE.KV_desired-state.>",
                    "$JS.API.CONSUMER.INFO.KV_desired-state.>",
                    "$JS.API.DIRECT.GET.KV_desired-state.>",
                    "$JS.API.STREAM.MSG.GET.KV_desired-state",
                    "$JS.FC.KV_desired-state.>",
                    "$JS.API.CONSUMER.CREATE.KV_device-heartbeat",
                    "$JS.API.CONSUMER.CREATE.KV_device-heartbeat.>",
                    "$JS.API.CONSUMER.DELETE.KV_device-heartbeat.>",
                    "$JS.API.CONSUMER.INFO.KV_device-heartbeat.>",
                    "$JS.API.DIRECT.GET.KV_device-heartbeat.>",
                    "$JS.API.STREAM.MSG.GET.KV_device-heartbeat",
                    "$JS.FC.KV_device-heartbeat.>",
                    # the callout's revocation check: one key, read only
                    "$JS.API.STREAM.INFO.KV_device-revocations",
                    "$JS.API.DIRECT.GET.KV_device-revocations.>",
                    "_INBOX.>"],
        "subscribe": ["fleet.report.>", "fleet.watch.*", "_INBOX.>"],
    }
    # the writer cannot change what devices run, purge or delete anything, nor make
    # consumers on the report buckets
    for subject in ("$KV.desired-state.pi-1.ns_app", "$JS.API.STREAM.PURGE.KV_device-state",
                    "$JS.API.STREAM.DELETE.KV_device-info", "$JS.API.CONSUMER.CREATE.KV_x",
                    "$JS.API.STREAM.PURGE.KV_desired-state",
                    "$JS.API.STREAM.MSG.DELETE.KV_desired-state",
                    "$KV.device-revocations.revoked.pi-1",
                    "$JS.API.STREAM.PURGE.KV_device-revocations"):
        assert not allows(writer_permissions()["publish"], subject)


@PROPERTY
@given(d=device_ids, dep=deployment_tokens)
def test_writer_reads_every_report_and_writes_the_report_buckets(d: str, dep: str) -> None:
    perms = writer_permissions()
    for subject in (report_state_subject(d, dep), report_info_subject(d),
                    report_heartbeat_subject(d)):
        assert allows(perms["subscribe"], subject)
    for subject in (f"$KV.device-state.state.{d}.{dep}", f"$KV.device-info.info.{d}",
                    f"$KV.device-heartbeat.heartbeat.{d}"):
        assert allows(perms["publish"], subject)
    # the writer never writes what devices are told to run
    assert not allows(perms["publish"], f"$KV.desired-state.{d}.{dep}")
    assert not allows(perms["subscribe"], device_command_subject(d, "ping"))
    assert allows(perms["subscribe"], watch_request_subject(d))


# ----------------------------------------------------------------------------- user claims


def test_user_claims_nats_adds_type_version_limits() -> None:
    perms = device_permissions("pi-1")
    before = copy.deepcopy(perms)
    claims = user_claims_nats(perms)
    # the device template's own subscription limit wins over the default (no limit)
    assert claims == {**before, "subs": DEVICE_MAX_SUBSCRIPTIONS, "data": -1, "payload": -1,
                      "type": "user", "version": 2}
    assert perms == before  # not mutated


def test_user_claims_nats_for_admin() -> None:
    assert user_claims_nats(admin_permissions()) == {
        "pub": {"allow": [">"]}, "sub": {"allow": [">"]},
        "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2,
    }


def test_user_claims_nats_fixed_fields_win() -> None:
    claims = user_claims_nats({"type": "operator", "version": 1, "subs": 5})
    assert claims["type"] == "user"
    assert claims["version"] == 2
    assert claims["subs"] == 5  # a template's limit is kept
