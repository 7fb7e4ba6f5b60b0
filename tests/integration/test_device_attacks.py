"""A hostile device with its own valid credentials: what can it exhaust, redirect, overwrite?

Real nats-server with the auth callout, real fleet-callout (callout, report writer, watch
grants), raw nats-py with the device's own token, as an attacker would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from harmony_fleet.agent.reporter import Reporter, ReportFailed
from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_STATE,
    DeploymentState,
    Heartbeat,
    Phase,
    ReportAck,
    WatchReply,
    WatchRequest,
    desired_state_key,
    device_consumer_name,
    device_state_key,
    kv_stream_name,
    report_heartbeat_subject,
    report_state_subject,
    watch_request_subject,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet_harness.pytest_plugin import SharedServer, unique_device_id

from .identity import connect_device

STREAM = kv_stream_name(BUCKET_DESIRED_STATE)


@pytest.fixture
async def admin(fleet_callout_server: SharedServer) -> AsyncIterator[NatsClient]:
    nc = await fleet_callout_server.stack().admin_connect("attack-admin")
    yield nc
    await nc.drain()


async def spy_on(admin: NatsClient, victim: str) -> list[tuple[str, bytes]]:
    """Everything that arrives on the victim's subjects, from now on."""
    seen: list[tuple[str, bytes]] = []

    async def spy(msg: Msg) -> None:
        seen.append((msg.subject, bytes(msg.data)))

    for subject in (f"device-commands.{victim}.>", f"_INBOX.{victim}.>",
                    f"fleet.report.*.{victim}", f"fleet.report.state.{victim}.*",
                    f"fleet.watch.{victim}"):
        await admin.subscribe(subject, cb=spy)
    await admin.flush()
    return seen


async def consumers_of(admin: NatsClient, device: str) -> list[str]:
    """Consumers on desired-state that serve ``device`` (by filter or delivery subject)."""
    return [c.name for c in await admin.jetstream().consumers_info(STREAM)
            if device in (c.config.filter_subject or "") + (c.config.deliver_subject or "")]


async def ask_watch(nc: NatsClient, device: str, deliver: str, *, reply: str | None = None,
                    timeout: float = 2.0) -> WatchReply | None:
    """A raw watch request (None: nobody answered)."""
    reply = reply or f"_INBOX.{device}.attack.{time.monotonic_ns()}"
    answers = await nc.subscribe(reply, max_msgs=1) if reply.startswith(
        f"_INBOX.{device}.") else None
    await nc.publish(watch_request_subject(device),
                     WatchRequest(deliver_subject=deliver).to_json_bytes(), reply=reply)
    await nc.flush()
    if answers is None:
        await asyncio.sleep(timeout)
        return None
    try:
        msg = await answers.next_msg(timeout=timeout)
    except nats.errors.TimeoutError:
        return None
    return WatchReply.model_validate_json(msg.data)


async def test_a_device_cannot_exhaust_the_desired_state_consumers(
    fleet_callout_server: SharedServer, admin: NatsClient, tmp_path: Path
) -> None:
    a, b = unique_device_id("exhaust-a"), unique_device_id("exhaust-b")
    services = fleet_callout_server.services
    nc, _ = await connect_device(services, a, tmp_path)
    try:
        assert await consumers_of(admin, a) == []
        # the attack that filled the stream before: consumers on its own keys, any name
        for i in range(10):
            for subject in (
                f"$JS.API.CONSUMER.CREATE.{STREAM}.evil-{i}.$KV.desired-state.{a}.>",
                f"$JS.API.CONSUMER.CREATE.{STREAM}.{device_consumer_name(a)}"
                f".$KV.desired-state.{a}.>",
                f"$JS.API.CONSUMER.CREATE.{STREAM}",
                f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.evil-{i}",
            ):
                with pytest.raises(nats.errors.TimeoutError):  # no permission: dropped
                    await nc.request(subject, json.dumps({"stream_name": STREAM, "config": {
                        "name": f"evil-{i}", "filter_subject": f"$KV.desired-state.{a}.>",
                        "deliver_subject": f"_INBOX.{a}.x"}}).encode(), timeout=0.05)
        # asking the server side as often as it likes: one consumer, whose name is fixed
        answers = await asyncio.gather(*(ask_watch(nc, a, f"_INBOX.{a}.w{i}")
                                         for i in range(40)))
        granted = [r for r in answers if r is not None and r.ok]
        refused = [r for r in answers if r is not None and not r.ok]
        assert granted, "the device's own watch must still be granted"
        assert refused, "a burst of watch requests must be rate limited"
        assert all(r.retry_after_s for r in refused if "rate" in (r.error or ""))
        assert await consumers_of(admin, a) == [device_consumer_name(a)]
        # and another device's watch is granted as usual
        other, _ = await connect_device(services, b, tmp_path)
        try:
            sub = await other.subscribe(f"_INBOX.{b}.watch.1")
            reply = await ask_watch(other, b, f"_INBOX.{b}.watch.1")
            assert reply is not None
            assert reply.ok, reply.error
            await sub.unsubscribe()
        finally:
            await other.close()
    finally:
        await nc.close()


async def test_a_device_cannot_make_the_server_deliver_onto_another_devices_subjects(
    fleet_callout_server: SharedServer, admin: NatsClient, tmp_path: Path
) -> None:
    a, b = unique_device_id("hijack-a"), unique_device_id("hijack-b")
    kv = await admin.jetstream().key_value(BUCKET_DESIRED_STATE)
    await kv.put(desired_state_key(a, "ns_app"), b'{"secret-looking": "payload of A"}')
    spy = await spy_on(admin, b)
    nc, _ = await connect_device(fleet_callout_server.services, a, tmp_path)
    try:
        targets = (f"device-commands.{b}.exec", f"device-commands.{b}.ping",
                   f"fleet.report.state.{b}.ns_app", f"_INBOX.{b}.r.1")
        for target in targets:
            # a push consumer delivering onto B (JetStream would publish on A's behalf)
            await nc.publish(f"$JS.API.CONSUMER.CREATE.{STREAM}.x.$KV.desired-state.{a}.>",
                             json.dumps({"stream_name": STREAM, "config": {
                                 "name": "x", "deliver_subject": target,
                                 "filter_subject": f"$KV.desired-state.{a}.>"}}).encode())
            # a direct get of its own key, the reply steered onto B
            await nc.publish(f"$JS.API.DIRECT.GET.{STREAM}.$KV.desired-state.{a}.ns_app", b"",
                             reply=target)
            # a pull from its own consumer, the messages steered onto B
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{device_consumer_name(a)}",
                             b'{"batch": 5}', reply=target)
            # the watch grant, asked to deliver onto B
            refused = await ask_watch(nc, a, target)
            assert refused is not None
            assert not refused.ok
            assert "_INBOX" in (refused.error or "")
            # the watch grant and the report writer, asked to answer onto B
            assert await ask_watch(nc, a, f"_INBOX.{a}.w", reply=target, timeout=0.3) is None
            await nc.publish(report_heartbeat_subject(a), Heartbeat(
                device_id=a, timestamp=utcnow(), uptime_s=1, agent_version="x",
            ).to_json_bytes(), reply=target)
        await nc.flush()
        await asyncio.sleep(1.0)
    finally:
        await nc.close()
    assert spy == []


async def test_a_report_flood_is_bounded_and_other_devices_are_still_served(
    fleet_callout_server: SharedServer, admin: NatsClient, tmp_path: Path
) -> None:
    a, b = unique_device_id("flood-a"), unique_device_id("flood-b")
    services = fleet_callout_server.services
    callout_log = next(p.log_file for p in services.processes if p.name == "fleet-callout")
    log_before = callout_log.read_text().count("\n")
    attacker, _ = await connect_device(services, a, tmp_path)
    victim, _ = await connect_device(services, b, tmp_path)
    reporter = Reporter(victim, b, timeout_s=5)
    stop = asyncio.Event()
    b_sent, b_failed = 0, []

    async def honest_device() -> None:
        nonlocal b_sent
        while not stop.is_set():
            try:
                await reporter.heartbeat(Heartbeat(device_id=b, timestamp=utcnow(),
                                                   uptime_s=1, agent_version="x"))
            except ReportFailed as exc:
                b_failed.append(str(exc))
            b_sent += 1
            await asyncio.sleep(0.05)

    async def flood(first: int, count: int) -> list[ReportAck]:
        acks = []
        for i in range(first, first + count):
            now = utcnow()
            state = DeploymentState(device_id=a, deployment=f"ghost-{i}", phase=Phase.RUNNING,
                                    since=now, updated_at=now)
            try:
                msg = await attacker.request(report_state_subject(a, f"ghost-{i}"),
                                             state.to_json_bytes(), timeout=5)
                acks.append(ReportAck.model_validate_json(msg.data))
            except nats.errors.TimeoutError:
                acks.append(ReportAck(ok=False, error="timeout"))
        return acks

    honest = asyncio.create_task(honest_device())
    try:
        started = time.monotonic()
        batches = await asyncio.gather(*(flood(i * 250, 250) for i in range(20)))
        acks = [ack for batch in batches for ack in batch]
        fire_and_forget = 20_000
        for i in range(fire_and_forget):
            await attacker.publish(report_heartbeat_subject(a), b'{"device_id": "' +
                                   a.encode() + b'"}')
            if i % 1000 == 0:
                await attacker.flush()
        await attacker.flush()
        flood_s = time.monotonic() - started
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await honest
        await attacker.close()
        await victim.close()
    # the honest device was served all along
    assert b_sent > 10
    assert b_failed == []
    # none of the ghost deployments got a key; every refusal said why
    assert len(acks) == 5000
    assert not any(ack.ok for ack in acks)
    reasons = {("rate" if "rate limit" in (a.error or "") else
                "not-desired" if "not desired" in (a.error or "") else a.error) for a in acks}
    assert reasons <= {"rate", "not-desired"}, reasons
    assert "rate" in reasons
    states = await read_bucket(admin.jetstream(), BUCKET_DEVICE_STATE, f"state.{a}.>")
    assert states == {}
    # and the log did not grow with the flood
    new_lines = callout_log.read_text().splitlines()[log_before:]
    about_a = [line for line in new_lines if a in line]
    assert len(about_a) <= 10, f"{len(about_a)} log lines for one flood"
    print(f"\nflood: 5000 requests + {fire_and_forget} fire-and-forget in {flood_s:.1f}s; "
          f"{b_sent} heartbeats of the honest device all acknowledged; "
          f"{len(about_a)} log lines about the attacker")


async def test_state_is_kept_only_for_desired_deployments_and_removed_ones_expire(
    fleet_callout_server: SharedServer, admin: NatsClient, tmp_path: Path
) -> None:
    a = unique_device_id("desired-only")
    kv = await admin.jetstream().key_value(BUCKET_DESIRED_STATE)
    await kv.put(desired_state_key(a, "ns_real"), b"{}")
    nc, _ = await connect_device(fleet_callout_server.services, a, tmp_path)
    reporter = Reporter(nc, a)

    async def report(deployment: str, phase: Phase) -> None:
        now = utcnow()
        await reporter.state(DeploymentState(device_id=a, deployment=deployment, phase=phase,
                                             since=now, updated_at=now))

    try:
        # a key written a moment ago is known (the writer asks the bucket if its view trails)
        await report("ns_real", Phase.RUNNING)
        with pytest.raises(ReportFailed, match="not desired"):
            await report("ns_ghost", Phase.RUNNING)
        with pytest.raises(ReportFailed, match="not desired"):
            await report("ns_ghost", Phase.REMOVED)  # never existed: no grace either
        await kv.delete(desired_state_key(a, "ns_real"))
        await asyncio.sleep(0.5)  # the writer follows the deletion
        with pytest.raises(ReportFailed, match="not desired"):
            await report("ns_real", Phase.RUNNING)  # gone: only Removed is accepted now
        await report("ns_real", Phase.REMOVED)
    finally:
        await nc.close()
    js = admin.jetstream()
    msg = await js.get_last_msg(kv_stream_name(BUCKET_DEVICE_STATE),
                                f"$KV.{BUCKET_DEVICE_STATE}.{device_state_key(a, 'ns_real')}")
    assert DeploymentState.model_validate_json(msg.data).phase is Phase.REMOVED
    # the Removed state expires by itself (readers then see a purge marker)
    assert (msg.headers or {}).get("Nats-TTL", "").endswith("s")
    assert set(await read_bucket(js, BUCKET_DEVICE_STATE, f"state.{a}.>")) == {
        device_state_key(a, "ns_real")}
