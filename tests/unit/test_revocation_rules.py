"""Revocation's pure parts: the bucket's keys and payload (contracts), which CONNZ entries are a
device's (never a static service user, never by a name the client gives itself), and the
system-account subjects."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.bus.kv import wanted_settings
from harmony_fleet.callout.permissions import device_permissions, writer_permissions
from harmony_fleet.contracts import (
    BUCKET_DEVICE_REVOCATIONS,
    BUCKETS,
    EXTENSION_BUCKETS,
    REVOCATIONS_BUCKET,
    KeyFormatError,
    Revocation,
    device_revocation_key,
    kv_stream_name,
    parse_device_revocation_key,
    sys_kick_subject,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.control.revocation import device_connections, matches_device

from .strategies import PROPERTY, device_ids


@given(device_ids)
@PROPERTY
def test_revocation_key_round_trips(device_id: str) -> None:
    key = device_revocation_key(device_id)
    assert key == f"revoked.{device_id}"
    assert parse_device_revocation_key(key) == device_id


@pytest.mark.parametrize("key", ["revoked", "revoked.", "revoked.a.b", "info.pi-1", "revoked.Pi",
                                 "revoked.*", "revoked.>", "", "revoked.-x"])
def test_malformed_revocation_keys_are_refused(key: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_device_revocation_key(key)


def test_the_bucket_is_an_extension_and_every_original_name_stays() -> None:
    assert [b.name for b in BUCKETS] == ["desired-state", "device-state", "device-info",
                                         "device-heartbeat"]
    assert EXTENSION_BUCKETS == (REVOCATIONS_BUCKET,)
    assert REVOCATIONS_BUCKET.name == BUCKET_DEVICE_REVOCATIONS == "device-revocations"
    settings = wanted_settings(REVOCATIONS_BUCKET, 1000)
    assert settings["allow_direct"] is True  # the callout's one-key direct get
    assert settings["max_bytes"] == -1  # written by the control plane only


def test_revocation_payload() -> None:
    revocation = Revocation(device_id="pi-1", revoked_at=utcnow(), reason="stolen")
    back = Revocation.model_validate_json(revocation.to_json_bytes())
    assert back == revocation
    with pytest.raises(ValueError, match="device_id"):
        Revocation(device_id="Not An Id", revoked_at=utcnow())
    with pytest.raises(ValueError, match="reason"):
        Revocation(device_id="pi-1", revoked_at=utcnow(), reason="x" * 513)


def test_kick_subject() -> None:
    server = "NDQ2XWZ4JQSYUCE3OGXO2DDY4C6U4MZ4FXNAN5KEBPNS7HLDIMPX4JKA"
    assert sys_kick_subject(server) == f"$SYS.REQ.SERVER.{server}.KICK"
    for bad in ("", "a.b", "*", ">", "a b"):
        with pytest.raises(ValueError, match="is not a server id"):
            sys_kick_subject(bad)


def conn(cid: int, user: str, account: str = "FLEET", issuer: str | None = "FLEET",
         name: str = "") -> dict[str, Any]:
    entry: dict[str, Any] = {"cid": cid, "authorized_user": user, "account": account,
                             "name": name}
    if issuer:
        entry["issuer_key"] = issuer
    return entry


def test_only_callout_issued_users_named_after_the_device_match() -> None:
    assert matches_device(conn(1, "pi-1"), "pi-1")
    assert not matches_device(conn(1, "pi-10"), "pi-1")
    # a static user of the same name (a device called "writer" must not kick the writer)
    assert not matches_device(conn(1, "writer", issuer=None), "writer")
    # another account (the callout's own, the system account)
    assert not matches_device(conn(1, "pi-1", account="SYS"), "pi-1")
    # a client name is chosen by the client: never trusted
    assert not matches_device(conn(1, "pi-2", name="fleet-agent pi-1"), "pi-1")


def test_connections_are_collected_from_every_server_that_answered() -> None:
    answers = [
        {"server": {"id": "NA", "name": "n1"}, "data": {"connections": [
            conn(3, "pi-1"), conn(4, "pi-2"), conn(5, "writer", issuer=None)]}},
        {"server": {"id": "NB", "name": "n2"}, "data": {"connections": [conn(9, "pi-1")]}},
        {"server": {"id": "NC", "name": "n3"}, "data": {"connections": None}},
        {"server": {"id": "ND"}, "error": {"code": 500, "description": "boom"}},
        {"server": {"id": "NE"}, "data": {"connections": ["junk", {"authorized_user": "pi-1"}]}},
    ]
    found = device_connections(answers, "pi-1")
    assert [(c.server_id, c.server_name, c.cid) for c in found] == [("NA", "n1", 3),
                                                                     ("NB", "n2", 9)]


def test_devices_get_no_way_to_revocations_or_the_system_account() -> None:
    perms = device_permissions("pi-1")
    allowed = perms["pub"]["allow"] + perms["sub"]["allow"]
    assert not any(s.startswith(("$SYS", "$KV", "$JS")) or s in (">", "*") for s in allowed)
    # the writer reads revocations (the callout's check), and never writes them
    writer = writer_permissions()["publish"]
    stream = kv_stream_name(BUCKET_DEVICE_REVOCATIONS)
    assert f"$JS.API.DIRECT.GET.{stream}.>" in writer
    assert not any(s.startswith(f"$KV.{BUCKET_DEVICE_REVOCATIONS}") for s in writer)


def test_the_callout_reads_revocations_over_a_fleet_connection() -> None:
    from harmony_fleet.callout.config import CalloutConfig

    base: dict[str, Any] = {
        "callout": {"enabled": True, "issuer_seed_file": "/s.nk",
                    "nats": {"urls": ["tls://nats:4222"]}},
        "oidc": {"issuer": "https://id.example", "audience": "p"},
        "writer": {"nats": {"urls": ["tls://nats:4222"], "tls_ca_file": "/ca.pem"}},
    }
    config = CalloutConfig.model_validate(base)
    assert config.revocations_nats() == config.writer.nats  # by default: the writer's
    own = {**base, "callout": {**base["callout"], "revocations_nats": {"urls": ["nats://r:1"]}}}
    assert CalloutConfig.model_validate(own).revocations_nats().urls == ["nats://r:1"]  # type: ignore[union-attr]
    callout_only = {**base, "writer": {"enabled": False}}
    with pytest.raises(ValueError, match="revocations_nats is required"):
        CalloutConfig.model_validate(callout_only)
    unchecked = {**callout_only,
                 "callout": {**base["callout"], "check_revocations": False}}
    assert CalloutConfig.model_validate(unchecked).revocations_nats() is None


class _Failing:
    """A connection whose JetStream calls time out (JetStream down, a partition)."""

    def jetstream(self, timeout: float = 5.0) -> _Failing:
        return self

    async def key_value(self, bucket: str) -> None:
        import nats.errors

        raise nats.errors.TimeoutError


async def test_the_callout_fails_closed_when_revocations_cannot_be_read() -> None:
    from harmony_fleet.callout.revocations import RevocationCheck, RevocationUnknown
    from harmony_fleet.callout.service import CalloutService, Denied

    check = RevocationCheck(_Failing())  # type: ignore[arg-type]
    with pytest.raises(RevocationUnknown, match=r"cannot read device-revocations revoked\.pi-1"):
        await check.revocation("pi-1")
    service = CalloutService(None, None, None, revocations=check)  # type: ignore[arg-type]
    with pytest.raises(Denied) as denied:
        await service._refuse_revoked("pi-1")
    assert denied.value.reason == "revocation-check-failed"


@given(st.lists(st.dictionaries(
    st.sampled_from(["cid", "authorized_user", "account", "issuer_key", "name", "ip"]),
    st.one_of(st.integers(0, 10), st.sampled_from(["pi-1", "pi-2", "FLEET", "SYS", ""]),
              st.none()),
    max_size=6), max_size=8), st.sampled_from(["pi-1", "pi-2"]))
@PROPERTY
def test_any_connz_answer_yields_only_the_devices_own_connections(
        conns: list[dict[str, Any]], device_id: str) -> None:
    found = device_connections([{"server": {"id": "NA"}, "data": {"connections": conns}}],
                               device_id)
    expected = [c for c in conns if c.get("authorized_user") == device_id
                and c.get("account") == "FLEET" and c.get("issuer_key")
                and isinstance(c.get("cid"), int)]
    assert [f.cid for f in found] == [c["cid"] for c in expected]
