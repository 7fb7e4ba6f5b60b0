"""Client side of the request/reply command protocol (``device-commands.<device>.<verb>``).

Every call raises a :class:`CommandError` subclass on failure: :class:`DeviceOffline` (nobody
listens: immediate), :class:`CommandTimeout`, :class:`BadReply`, :class:`TransportError`, or
:class:`RemoteError` (the agent answered with an ``ErrorReply``; ``.kind`` says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import BaseModel

from harmony_fleet.contracts import (
    HDR_DEADLINE,
    HDR_OPERATOR_SUB,
    HDR_REQUEST_ID,
    CancelRequest,
    ErrorKind,
    ErrorReply,
    ExecReply,
    ExecRequest,
    LogChunk,
    LogsRequest,
    PingReply,
    ReplyDecodeError,
    Verb,
    device_command_subject,
    parse_reply,
)
from harmony_fleet.errors import FleetError

DEFAULT_TIMEOUT_S = 5.0
#: How long a request that found no responder is tried again before the device counts as
#: offline. "No responders" means the server delivered the request to nobody, so sending it
#: again is safe for every verb; and for a moment it is also what a live device looks like
#: while it moves to a connection with a fresh token (nats-server can match a request against
#: the queue group as it was just before the move: the old member gone, the new one not yet
#: seen by that match).
NO_RESPONDERS_RETRY_S = 0.5


async def request(nc: NatsClient, subject: str, payload: bytes, *, timeout: float,
                  headers: dict[str, str] | None = None) -> Msg:
    """``nc.request`` that sends again, for up to :data:`NO_RESPONDERS_RETRY_S` (and within
    ``timeout``), while the server answers "no responders"; then raises
    ``nats.errors.NoRespondersError`` as nats-py does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    give_up = loop.time() + min(NO_RESPONDERS_RETRY_S, timeout)
    pause = 0.05
    while True:
        try:
            return await nc.request(subject, payload, timeout=max(0.0, deadline - loop.time()),
                                    headers=headers)
        except nats.errors.NoRespondersError:
            if loop.time() + pause > give_up:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.4)

ReplyT = TypeVar("ReplyT", bound=BaseModel)


class CommandError(FleetError):
    """Base of every typed command failure; ``device_id`` says which device."""

    def __init__(self, device_id: str, message: str) -> None:
        super().__init__(message)
        self.device_id = device_id


class DeviceOffline(CommandError):
    """Nobody listens on the device's command subject (NATS "no responders"): immediate."""


class CommandTimeout(CommandError):
    """The device (or something) took the request but no reply came in time.

    A request the client is not permitted to publish also ends here (NATS drops it).
    """


class BadReply(CommandError):
    """A reply arrived but is neither the expected payload nor an ErrorReply."""


class TransportError(CommandError):
    """The NATS connection failed underneath the request."""


class RemoteError(CommandError):
    """The device answered with an ErrorReply."""

    def __init__(self, device_id: str, reply: ErrorReply) -> None:
        super().__init__(device_id, f"{reply.kind.value}: {reply.message}")
        self.kind: ErrorKind = reply.kind
        self.reply = reply


class FleetCommandsClient:
    """Ping (and later logs/exec) devices over an existing NATS connection."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        operator_sub: str | None = None,
    ) -> None:
        self._nc = nc
        self._timeout = timeout
        self._operator_sub = operator_sub

    def _headers(self, timeout: float) -> dict[str, str]:
        headers = {
            HDR_REQUEST_ID: uuid.uuid4().hex,
            HDR_DEADLINE: str(int((time.time() + timeout) * 1000)),
        }
        if self._operator_sub:
            headers[HDR_OPERATOR_SUB] = self._operator_sub
        return headers

    async def request_raw(
        self, device_id: str, verb: Verb, payload: bytes, *, timeout: float | None = None
    ) -> bytes:
        """Send one request, return the raw reply body, map transport failures to types."""
        subject = device_command_subject(device_id, verb)
        wait = self._timeout if timeout is None else timeout
        try:
            msg = await request(self._nc, subject, payload, timeout=wait,
                                headers=self._headers(wait))
        except nats.errors.NoRespondersError as exc:
            raise DeviceOffline(device_id, f"device {device_id} is offline (no responders)") from exc
        except nats.errors.TimeoutError as exc:
            raise CommandTimeout(
                device_id, f"device {device_id} did not answer {verb.value} within {wait:g}s"
            ) from exc
        except nats.errors.Error as exc:
            raise TransportError(device_id, f"{verb.value} to {device_id} failed: {exc}") from exc
        return bytes(msg.data)

    async def _call(
        self, device_id: str, verb: Verb, model: type[ReplyT], payload: bytes, timeout: float | None
    ) -> ReplyT:
        data = await self.request_raw(device_id, verb, payload, timeout=timeout)
        return _decode(device_id, verb, data, model)

    async def ping(self, device_id: str, *, timeout: float | None = None) -> PingReply:
        reply = await self._call(device_id, Verb.PING, PingReply, b"{}", timeout)
        if reply.device_id != device_id:
            raise BadReply(
                device_id, f"ping to {device_id} was answered by {reply.device_id}"
            )
        return reply

    async def exec(
        self, device_id: str, deployment: str, service: str, argv: Sequence[str], *,
        timeout_s: float = 30.0, output_cap: int = 64 * 1024,
    ) -> ExecReply:
        """Run ``argv`` in a service's container; the reply carries exit code and output."""
        request = ExecRequest(deployment=deployment, service=service, argv=list(argv),
                              timeout_s=timeout_s, output_cap=output_cap)
        # the device may take timeout_s to run it; allow for the round trip on top
        return await self._call(device_id, Verb.EXEC, ExecReply, request.to_json_bytes(),
                                timeout_s + self._timeout)

    async def logs(
        self, device_id: str, deployment: str, service: str, *, tail: int | None = None,
        since: str | None = None, follow: bool = False, follow_timeout_s: int = 3600,
    ) -> AsyncGenerator[str, None]:
        """Yield a service's output in order, as text chunks, until the stream's end marker.

        Leaving the loop early (``break``, an exception, ``aclose()``) cancels the stream on the
        device. While following, the agent sends keepalives; silence for longer than the
        client timeout plus 10 s is a :class:`CommandTimeout`.
        """
        request = LogsRequest(deployment=deployment, service=service, tail=tail, since=since,
                              follow=follow, follow_timeout_s=follow_timeout_s)
        subject = device_command_subject(device_id, Verb.LOGS)
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, pending_msgs_limit=-1, pending_bytes_limit=-1)
        headers = self._headers(follow_timeout_s if follow else self._timeout)
        finished = False
        try:
            try:
                await self._nc.publish(subject, request.to_json_bytes(), reply=inbox,
                                       headers=headers)
            except nats.errors.Error as exc:
                raise TransportError(device_id, f"logs to {device_id} failed: {exc}") from exc
            expected = 0
            idle = self._timeout + (10.0 if follow else 0.0)
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle)
                except nats.errors.TimeoutError as exc:
                    raise CommandTimeout(
                        device_id, f"log stream from {device_id} went silent for {idle:g}s"
                    ) from exc
                if msg.headers and msg.headers.get("Status") == "503":
                    raise DeviceOffline(device_id, f"device {device_id} is offline (no responders)")
                chunk = _decode(device_id, Verb.LOGS, bytes(msg.data), LogChunk)
                if chunk.seq != expected:
                    raise BadReply(device_id, f"log stream from {device_id} lost chunks: got "
                                              f"#{chunk.seq}, expected #{expected}")
                expected += 1
                if chunk.eof:
                    finished = True
                    if chunk.error is not None:
                        raise RemoteError(device_id, chunk.error)
                    return
                if chunk.data:
                    yield chunk.data
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if not finished and not self._nc.is_closed:
                with contextlib.suppress(Exception):
                    cancel = CancelRequest(request_id=headers[HDR_REQUEST_ID])
                    await self._nc.publish(device_command_subject(device_id, Verb.CANCEL),
                                           cancel.to_json_bytes())


def _decode(device_id: str, verb: Verb, data: bytes, model: type[ReplyT]) -> ReplyT:
    """A reply (or stream message) as ``model``; an ErrorReply or garbage becomes a typed error."""
    try:
        reply = parse_reply(data, model)
    except ReplyDecodeError as exc:
        raise BadReply(device_id, f"bad {verb.value} reply from {device_id}: {exc}") from exc
    if isinstance(reply, ErrorReply):
        raise RemoteError(device_id, reply)
    return reply
