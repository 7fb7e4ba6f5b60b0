"""A queue-group member that leaves while another takes over (an agent moving to a connection
with a fresh token, a callout replica stopping) loses no message, on a real nats-server.

nats-server matches a message against the group before it delivers it; a match made just before
the leaving member's UNSUB reaches that member after the server's PONG, when nats-py's drain has
already forgotten the subscription and drops it. ``drain_subscription(handover_s=...)`` keeps
handling those late deliveries."""

from __future__ import annotations

import asyncio
import secrets

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from harmony_fleet.bus.commands import request
from harmony_fleet.bus.connection import QUEUE_HANDOVER_S, drain_subscription
from harmony_fleet.localstack.stack import LocalStack


async def late_delivery(nc: NatsClient, handover_s: float) -> list[bytes]:
    """Leave a queue group; while leaving, a message arrives as nats-server delivers one whose
    match raced the UNSUB: after the PONG, for the subscription's sid."""
    subject = f"fleet-test.handover.{secrets.token_hex(4)}"
    handled: list[bytes] = []

    async def handle(msg: Msg) -> None:
        handled.append(msg.data)

    sub = await nc.subscribe(subject, queue="members", cb=handle)
    await nc.flush()
    leaving = asyncio.create_task(drain_subscription(nc, sub, 5.0, handover_s=handover_s))
    await asyncio.sleep(0.1)  # the UNSUB is out and acknowledged (a loopback round trip)
    await nc._process_msg(sub._id, subject.encode(), b"", b"late", b"")
    assert await leaving
    return handled


async def test_a_message_matched_before_the_unsub_is_still_handled(admin_nc: NatsClient) -> None:
    assert await late_delivery(admin_nc, handover_s=QUEUE_HANDOVER_S) == [b"late"]


async def test_without_a_handover_nats_py_drops_that_message(admin_nc: NatsClient) -> None:
    """Why the handover exists: nats-py's own drain forgets the sid at the PONG."""
    assert await late_delivery(admin_nc, handover_s=0.0) == []


async def test_members_moving_under_load_lose_no_request(fleet_stack: LocalStack) -> None:
    """The agent's move, 30 times, with eight requesters busy all along: every request answered.
    Without the handover, three runs in four lost requests here (the deterministic test above
    is the one that always would)."""
    subject = f"fleet-test.handover.{secrets.token_hex(4)}"
    requester = await fleet_stack.admin_connect("handover-requester")
    members: list[NatsClient] = []

    async def respond(msg: Msg) -> None:
        await msg.respond(b"ok")

    async def join() -> tuple[NatsClient, object]:
        nc = await fleet_stack.admin_connect("handover-member")
        members.append(nc)
        sub = await nc.subscribe(subject, queue="members", cb=respond)
        await nc.flush()
        return nc, sub

    answered, lost = 0, 0
    moving = True

    async def ask() -> None:
        nonlocal answered, lost
        while moving:
            try:
                # as FleetCommandsClient asks: a request the server delivered to nobody (its
                # match can miss both members for an instant) is sent again
                await request(requester, subject, b"", timeout=2)
                answered += 1
            except nats.errors.TimeoutError:
                lost += 1

    current = await join()
    askers = [asyncio.create_task(ask()) for _ in range(8)]
    try:
        for _ in range(30):
            await asyncio.sleep(0.03)
            old_nc, old_sub = current
            current = await join()
            assert await drain_subscription(old_nc, old_sub, 5.0,  # type: ignore[arg-type]
                                            handover_s=QUEUE_HANDOVER_S)
            await old_nc.drain()
    finally:
        moving = False
        await asyncio.gather(*askers)
        for nc in [*members, requester]:
            if not nc.is_closed:
                await nc.drain()
    print(f"\n30 moves: {answered} requests answered, {lost} lost")
    assert lost == 0
    assert answered > 100
