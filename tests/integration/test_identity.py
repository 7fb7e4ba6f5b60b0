"""Identity: the auth callout, per-device isolation, the roll-up hole, the report writer.

Real nats-server with auth_callout, real fleet-callout, the local OIDC issuer.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.watch import DesiredStateWatcher
from harmony_fleet.bus import (
    ConnectError,
    DeviceOffline,
    FleetCommandsClient,
    NatsSettings,
    UserPasswordAuth,
    connect,
    drain,
)
from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    ReportAck,
    desired_state_key,
    device_heartbeat_key,
    device_info_key,
    device_state_key,
    kv_stream_name,
    report_heartbeat_subject,
    report_state_subject,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.localstack.issuer import OidcIssuer
from harmony_fleet_harness.pytest_plugin import SharedServer, unique_device_id

from .identity import connect_device, connect_with_token, denied, issuer_twin

ALL_BUCKETS = (BUCKET_DESIRED_STATE, BUCKET_DEVICE_STATE, BUCKET_DEVICE_INFO,
               BUCKET_DEVICE_HEARTBEAT)


@pytest.fixture
async def admin(fleet_callout_server: SharedServer) -> NatsClient:
    nc = await fleet_callout_server.stack().admin_connect("identity-admin")
    yield nc
    await nc.drain()


async def seed_other_device(admin: NatsClient, other: str) -> dict[str, dict[str, bytes]]:
    """Give ``other`` an entry in every bucket; return what each bucket holds for it."""
    js = admin.jetstream()
    now = utcnow().isoformat()
    entries = {
        BUCKET_DESIRED_STATE: (desired_state_key(other, "ns_app"), b'{"services": []}'),
        BUCKET_DEVICE_STATE: (device_state_key(other, "ns_app"), json.dumps(
            {"device_id": other, "deployment": "ns_app", "phase": "Running", "since": now,
             "updated_at": now}).encode()),
        BUCKET_DEVICE_INFO: (device_info_key(other), b'{"device_id": "x"}'),
        BUCKET_DEVICE_HEARTBEAT: (device_heartbeat_key(other), b'{"device_id": "x"}'),
    }
    for bucket, (key, value) in entries.items():
        await (await js.key_value(bucket)).put(key, value)
    return {b: await read_bucket(js, b) for b in ALL_BUCKETS}


async def test_device_sees_only_its_own_desired_state(
    fleet_callout_server: SharedServer, admin: NatsClient, tmp_path: Path
) -> None:
    a, b = unique_device_id("iso-a"), unique_device_id("iso-b")
    kv = await admin.jetstream().key_value(BUCKET_DESIRED_STATE)
    await kv.put(desired_state_key(a, "ns_app"), b"for a")
    await kv.put(desired_state_key(b, "ns_app"), b"for b")
    nc, _ = await connect_device(fleet_callout_server.services, a, tmp_path)
    try:
        watcher = DesiredStateWatcher(nc, a, idle_heartbeat_s=0.5)
        stop = asyncio.Event()
        task = asyncio.create_task(watcher.run(stop))
        await asyncio.wait_for(watcher.changed.wait(), 10)
        assert {k: v.value for k, v in watcher.view.values.items()} == {"ns_app": b"for a"}
        await kv.put(desired_state_key(b, "ns_two"), b"b again")
        await kv.put(desired_state_key(a, "ns_two"), b"a again")
        for _ in range(50):
            if "ns_two" in watcher.view.values:
                break
            await asyncio.sleep(0.05)
        assert {k: v.value for k, v in watcher.view.values.items()} == {
            "ns_app": b"for a", "ns_two": b"a again"}
        stop.set()
        await asyncio.wait_for(task, 10)

        # what a compromised device might try; every one of them is refused by the server
        stream = kv_stream_name(BUCKET_DESIRED_STATE)
        attempts = {
            "watch B": f"$JS.API.CONSUMER.CREATE.{stream}.evil.$KV.desired-state.{b}.>",
            "watch everything (unnamed consumer)": f"$JS.API.CONSUMER.CREATE.{stream}",
            "watch everything (named, no filter)": f"$JS.API.CONSUMER.CREATE.{stream}.evil",
            "direct get B": f"$JS.API.DIRECT.GET.{stream}.$KV.desired-state.{b}.ns_app",
            "stream info": f"$JS.API.STREAM.INFO.{stream}",
            "purge": f"$JS.API.STREAM.PURGE.{stream}",
        }
        for what, subject in attempts.items():
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(subject, b"{}", timeout=0.5)
            assert what
    finally:
        await nc.close()
    values = await read_bucket(admin.jetstream(), BUCKET_DESIRED_STATE, f"{b}.>")
    assert values == {desired_state_key(b, "ns_app"): b"for b",
                      desired_state_key(b, "ns_two"): b"b again"}


async def test_device_cannot_take_another_devices_commands(
    fleet_callout_server: SharedServer, admin: NatsClient, tmp_path: Path
) -> None:
    a, b = unique_device_id("cmd-a"), unique_device_id("cmd-b")
    nc, _ = await connect_device(fleet_callout_server.services, a, tmp_path)
    try:
        stolen: list[str] = []

        async def grab(msg: object) -> None:
            stolen.append(getattr(msg, "subject", ""))

        await nc.subscribe(f"device-commands.{b}.>", cb=grab)
        await nc.subscribe(f"_INBOX.{b}.>", cb=grab)
        await nc.subscribe(">", cb=grab)
        await asyncio.sleep(0.3)
        client = FleetCommandsClient(admin, timeout=1)
        with pytest.raises(DeviceOffline):  # A's subscription was refused: nobody answers for B
            await client.ping(b)
        assert stolen == []
        assert not nc.is_closed  # a refused subscription does not cost A its connection
    finally:
        await nc.close()


async def test_rollup_attack_fails_on_every_bucket(
    fleet_callout_server: SharedServer, admin: NatsClient, tmp_path: Path
) -> None:
    a, other = unique_device_id("roll-a"), unique_device_id("roll-victim")
    before = await seed_other_device(admin, other)
    nc, _ = await connect_device(fleet_callout_server.services, a, tmp_path)
    try:
        targets = [
            f"$KV.{BUCKET_DESIRED_STATE}.{a}.ns_app",
            f"$KV.{BUCKET_DEVICE_STATE}.state.{a}.ns_app",
            f"$KV.{BUCKET_DEVICE_INFO}.info.{a}",
            f"$KV.{BUCKET_DEVICE_HEARTBEAT}.heartbeat.{a}",
            report_state_subject(a, "ns_app"),
            report_heartbeat_subject(a),
        ]
        for subject in targets:
            await nc.publish(subject, b"{}", headers={"Nats-Rollup": "all"})
            await nc.publish(subject, b"{}", headers={"Nats-Rollup": "sub"})
        await nc.flush()
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    after = {b: await read_bucket(admin.jetstream(), b) for b in ALL_BUCKETS}
    for bucket in ALL_BUCKETS:
        for key, value in before[bucket].items():
            if other in key:
                assert after[bucket].get(key) == value, f"{bucket} {key} was touched"


async def test_writer_refuses_forged_and_invalid_reports(
    fleet_callout_server: SharedServer, admin: NatsClient, tmp_path: Path
) -> None:
    a, victim = unique_device_id("forge-a"), unique_device_id("forge-v")
    nc, _ = await connect_device(fleet_callout_server.services, a, tmp_path)
    now = utcnow().isoformat()
    try:
        async def report(subject: str, body: dict[str, object] | bytes) -> ReportAck:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            msg = await nc.request(subject, data, timeout=5)
            return ReportAck.model_validate_json(msg.data)

        forged = await report(report_heartbeat_subject(a),
                              {"device_id": victim, "timestamp": now, "uptime_s": 1,
                               "agent_version": "x"})
        assert not forged.ok
        assert f"claims to be from {victim}" in (forged.error or "")
        invalid = await report(report_heartbeat_subject(a), {"device_id": a})
        assert not invalid.ok
        assert "invalid heartbeat report" in (invalid.error or "")
        garbage = await report(report_state_subject(a, "ns_app"), b"\x00not json")
        assert not garbage.ok
        big = await report(report_heartbeat_subject(a), b" " * (70 * 1024))
        assert not big.ok
        assert "limit" in (big.error or "")
        good = await report(report_heartbeat_subject(a), {
            "device_id": a, "timestamp": now, "uptime_s": 1, "agent_version": "x"})
        assert good.ok, good.error
        # publishing on the victim's subject is refused by the server itself
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(report_heartbeat_subject(victim), b"{}", timeout=0.5)
    finally:
        await nc.close()
    beats = await read_bucket(admin.jetstream(), BUCKET_DEVICE_HEARTBEAT)
    assert device_heartbeat_key(victim) not in beats
    assert device_heartbeat_key(a) in beats


async def test_bad_tokens_are_denied(fleet_callout_server: SharedServer) -> None:
    services = fleet_callout_server.services
    callout_log = next(p.log_file for p in services.processes if p.name == "fleet-callout")
    twin = issuer_twin(services)
    device = twin.create_machine_user("tok-dev")
    device.metadata["device_id"] = "tok-dev"
    twin.grant_roles(device.user_id, ["fleet-device"])
    no_role = twin.create_machine_user("tok-norole")
    no_role.metadata["device_id"] = "tok-norole"
    no_metadata = twin.create_machine_user("tok-nometa")
    twin.grant_roles(no_metadata.user_id, ["fleet-device"])
    bad_metadata = twin.create_machine_user("tok-badmeta")
    bad_metadata.metadata["device_id"] = "Not_A_Device!"
    twin.grant_roles(bad_metadata.user_id, ["fleet-device"])
    forger = OidcIssuer(project_id=twin.project_id)  # another signing key, the same kid
    forger.port, forger._kid = twin.port, twin._kid
    cases = {
        "no-token": None,
        "malformed": "not-a-token",
        "expired": twin.issue_token(device, lifetime_s=-60),
        "audience": twin.issue_token(device, audience="another-project"),
        "issuer": twin.issue_token(device, issuer="http://evil.example"),
        "signature": forger.issue_token(device),
        "unknown-key": OidcIssuer(project_id=twin.project_id, port=twin.port).issue_token(device),
        "no-fleet-role": twin.issue_token(no_role),
        "no-device-id": twin.issue_token(no_metadata),
        "bad-device-claim": twin.issue_token(bad_metadata),
    }
    for reason, token in cases.items():
        error = await denied(services, token)
        assert "Authorization Violation" in error, (reason, error)
        denials = [line for line in callout_log.read_text().splitlines() if "denied" in line]
        assert f": {reason}:" in denials[-1], (reason, denials[-1])
        if token:
            assert token not in callout_log.read_text()  # tokens never reach the log
    # the control: a good token from the same keys is allowed
    nc = await connect_with_token(services, twin.issue_token(device))
    await nc.close()


async def test_management_api_needs_an_admin_token(fleet_callout_server: SharedServer,
                                                   tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    services = fleet_callout_server.services
    assert services.issuer is not None
    twin = issuer_twin(services)
    device = twin.create_machine_user("not-an-admin")
    twin.grant_roles(device.user_id, ["fleet-device"])
    api = ["openid", "urn:zitadel:iam:org:project:id:zitadel:aud"]
    # a device the running issuer knows (the twin's own users are not saved in its registry)
    enrolled = unique_device_id("not-admin")
    user_id = await asyncio.to_thread(services.enroll_device, enrolled, tmp_path / "k.json")
    known = issuer_twin(services).users[user_id]
    for token, status in ((None, 401), ("garbage", 401),
                          (twin.issue_token(device), 401),  # valid, not for the API
                          (twin.issue_token(device, scopes=api), 401),  # an unknown user
                          (twin.issue_token(known, scopes=api), 403)):  # for it, no rights
        request = urllib.request.Request(
            f"{services.issuer.url}/management/v1/users/machine", method="POST",
            data=b'{"userName": "intruder"}',
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {token}"} if token else {})})
        with pytest.raises(urllib.error.HTTPError) as err:
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
        assert err.value.code == status
    # and the admin path works: enrollment through the API gives a key that authenticates
    nc, _ = await connect_device(services, unique_device_id("enrolled"), tmp_path)
    assert nc.is_connected
    await nc.close()


async def test_no_static_admin_in_callout_mode(fleet_callout_server: SharedServer) -> None:
    """The old bootstrap admin (user/password in nats.conf, bypassing the identity provider)
    is gone: only the services that must connect before the callout can answer are static."""
    services = fleet_callout_server.services
    assert services.admin is None
    conf = services.server.config_file.read_text()
    assert sorted(re.findall(r'user: "([^"]+)"', conf)) == ["callout", "sys", "writer"]
    assert 'auth_users: ["callout", "writer", "sys"]' in conf
    # the attack: log in the old way, as "admin", with every password this server knows
    passwords = re.findall(r'password: "([^"]+)"', conf)
    callout_log = next(p.log_file for p in services.processes if p.name == "fleet-callout")
    for i, password in enumerate(passwords):
        name = f"old-admin-{i}-{secrets.token_hex(3)}"
        settings = NatsSettings(urls=[services.nats_url], connect_attempts=1,
                                connect_timeout_s=5,
                                auth=UserPasswordAuth(user="admin", password=password))
        with pytest.raises(ConnectError, match="Authorization Violation"):
            await connect(settings, name=name)
        # decided by the callout (no static user "admin" matched), which found no token
        denial = [line for line in callout_log.read_text().splitlines() if f"({name})" in line]
        assert denial, f"{name} never reached the callout"
        assert ": no-token:" in denial[-1]
    # the admin credential now is the issuer's admin machine key, checked by the callout
    nc = await fleet_callout_server.stack().admin_connect("machine-key-admin")
    assert nc.is_connected
    await drain(nc)
