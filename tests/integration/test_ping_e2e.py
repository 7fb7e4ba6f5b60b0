"""Ping end to end: a real nats-server, real agents (in-process and as subprocesses)."""

from __future__ import annotations

import asyncio
import json
import time

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet import __version__
from harmony_fleet.bus import CommandTimeout, DeviceOffline, FleetCommandsClient
from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.contracts import (
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    HDR_DEADLINE,
    DeviceInfo,
    ErrorKind,
    ErrorReply,
    Heartbeat,
    Verb,
    device_command_subject,
    device_heartbeat_key,
    device_info_key,
)
from harmony_fleet.localstack.stack import LocalStack


async def test_ping_live_agent_reply_fields_and_uptime_grows(
    fleet_stack: LocalStack, fleet_client: FleetCommandsClient, device_id: str
) -> None:
    await fleet_stack.add_device(device_id)
    first = await fleet_client.ping(device_id)
    assert first.device_id == device_id
    assert first.agent_version == __version__
    assert first.uptime_s >= 0
    await asyncio.sleep(1.2)
    second = await fleet_client.ping(device_id)
    assert second.uptime_s > first.uptime_s


async def test_ping_reply_uses_wire_field_names(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str
) -> None:
    await fleet_stack.add_device(device_id)
    msg = await admin_nc.request(device_command_subject(device_id, Verb.PING), b"{}", timeout=5)
    body = json.loads(msg.data)
    assert set(body) == {"device_id", "agent_version", "uptime_s"}
    assert body["device_id"] == device_id


async def test_ping_unknown_device_is_offline_immediately(
    fleet_client: FleetCommandsClient, device_id: str
) -> None:
    started = time.perf_counter()
    with pytest.raises(DeviceOffline) as err:
        await fleet_client.ping(device_id, timeout=10)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"DeviceOffline took {elapsed:.3f}s"
    assert err.value.device_id == device_id
    assert "offline" in str(err.value)


async def test_agent_without_runtime_answers_and_reports(
    fleet_stack: LocalStack, fleet_client: FleetCommandsClient, admin_nc: NatsClient,
    device_id: str,
) -> None:
    await fleet_stack.add_device(device_id, runtime_enabled=False, labels={"site": "lab"})
    assert (await fleet_client.ping(device_id)).device_id == device_id

    js = admin_nc.jetstream()

    async def read(bucket: str, key: str) -> bytes:
        for _ in range(100):  # written by the report writer just after the agent connects
            values = await read_bucket(js, bucket, key)
            if key in values:
                return values[key]
            await asyncio.sleep(0.05)
        raise AssertionError(f"{bucket} {key} never written")

    info = DeviceInfo.model_validate_json(
        await read(BUCKET_DEVICE_INFO, device_info_key(device_id)))
    assert info.device_id == device_id
    assert info.runtime_enabled is False
    assert info.labels == {"site": "lab"}
    assert info.inventory.podman_version is None
    assert info.inventory.cpus >= 1

    heartbeat = Heartbeat.model_validate_json(
        await read(BUCKET_DEVICE_HEARTBEAT, device_heartbeat_key(device_id)))
    assert heartbeat.device_id == device_id


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"[1, 2]", b'"pong"', b'{"unexpected": ' + b"1" * 70_000 + b"}", b"\xff\xfe"],
    ids=["broken-json", "array", "string", "oversized", "not-utf8"],
)
async def test_malformed_ping_payload_gets_bad_request_and_agent_lives(
    fleet_stack: LocalStack, fleet_client: FleetCommandsClient, device_id: str, payload: bytes
) -> None:
    await fleet_stack.add_device(device_id)
    raw = await fleet_client.request_raw(device_id, Verb.PING, payload)
    reply = ErrorReply.model_validate_json(raw)
    assert reply.kind is ErrorKind.BAD_REQUEST
    assert reply.message.startswith("ping: ")
    # still alive and well
    assert (await fleet_client.ping(device_id)).device_id == device_id


async def test_unknown_verb_gets_bad_request(
    fleet_stack: LocalStack, admin_nc: NatsClient, fleet_client: FleetCommandsClient,
    device_id: str,
) -> None:
    await fleet_stack.add_device(device_id)
    msg = await admin_nc.request(f"device-commands.{device_id}.reboot", b"{}", timeout=5)
    reply = ErrorReply.model_validate_json(msg.data)
    assert reply.kind is ErrorKind.BAD_REQUEST
    assert "unknown verb 'reboot'" in reply.message
    assert (await fleet_client.ping(device_id)).device_id == device_id


async def test_expired_request_is_dropped_not_answered(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str
) -> None:
    await fleet_stack.add_device(device_id)
    past = str(int(time.time() * 1000) - 60_000)
    with pytest.raises(nats.errors.TimeoutError):
        await admin_nc.request(
            device_command_subject(device_id, Verb.PING), b"{}", timeout=0.5,
            headers={HDR_DEADLINE: past},
        )


async def test_ping_timeout_is_typed(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str
) -> None:
    # a responder that never answers: the request is taken, the reply never comes
    sub = await admin_nc.subscribe(device_command_subject(device_id, Verb.PING))
    try:
        client = FleetCommandsClient(admin_nc, timeout=0.3)
        with pytest.raises(CommandTimeout, match=r"did not answer ping within 0\.3s"):
            await client.ping(device_id)
    finally:
        await sub.unsubscribe()


async def test_sigterm_stops_subprocess_agent_cleanly(
    fleet_stack: LocalStack, fleet_client: FleetCommandsClient, device_id: str
) -> None:
    handle = await fleet_stack.add_device(device_id, mode="subprocess")
    assert handle.pid is not None
    assert (await fleet_client.ping(device_id)).device_id == device_id
    code = await fleet_stack.stop_device(device_id)
    assert code == 0
    assert handle.log_file is not None
    log_text = handle.log_file.read_text()
    assert "stopped" in log_text
    with pytest.raises(DeviceOffline):
        await fleet_client.ping(device_id)


async def test_agents_are_isolated_by_device_id(
    fleet_stack: LocalStack, fleet_client: FleetCommandsClient, device_id: str
) -> None:
    other = f"{device_id}-b"
    await asyncio.gather(fleet_stack.add_device(device_id), fleet_stack.add_device(other))
    replies = await asyncio.gather(fleet_client.ping(device_id), fleet_client.ping(other))
    assert [r.device_id for r in replies] == [device_id, other]
    await fleet_stack.stop_device(other)
    with pytest.raises(DeviceOffline):
        await fleet_client.ping(other)
    assert (await fleet_client.ping(device_id)).device_id == device_id
