"""Client side of the request/reply command protocol (``device-commands.<device>.<verb>``)."""

from __future__ import annotations

import time
import uuid
from typing import TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel

from harmony_fleet.contracts import (
    HDR_DEADLINE,
    HDR_OPERATOR_SUB,
    HDR_REQUEST_ID,
    ErrorKind,
    ErrorReply,
    PingReply,
    ReplyDecodeError,
    Verb,
    device_command_subject,
    parse_reply,
)

DEFAULT_TIMEOUT_S = 5.0

ReplyT = TypeVar("ReplyT", bound=BaseModel)


class CommandError(Exception):
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
            msg = await self._nc.request(
                subject, payload, timeout=wait, headers=self._headers(wait)
            )
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
        try:
            reply = parse_reply(data, model)
        except ReplyDecodeError as exc:
            raise BadReply(device_id, f"bad {verb.value} reply from {device_id}: {exc}") from exc
        if isinstance(reply, ErrorReply):
            raise RemoteError(device_id, reply)
        return reply

    async def ping(self, device_id: str, *, timeout: float | None = None) -> PingReply:
        reply = await self._call(device_id, Verb.PING, PingReply, b"{}", timeout)
        if reply.device_id != device_id:
            raise BadReply(
                device_id, f"ping to {device_id} was answered by {reply.device_id}"
            )
        return reply
