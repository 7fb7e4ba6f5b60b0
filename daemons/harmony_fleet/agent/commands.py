"""The agent's command server: answers ``device-commands.<device>.<verb>``.

Each request is handled in its own task (bounded by ``max_concurrent``) so a slow command
never blocks a ping. Whatever arrives, the server answers with the verb's reply or an
``ErrorReply`` and never lets an exception escape: a malformed request cannot stop the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from harmony_fleet.bus.connection import QUEUE_HANDOVER_S, drain_subscription
from harmony_fleet.contracts import (
    HDR_DEADLINE,
    HDR_OPERATOR_SUB,
    HDR_REQUEST_ID,
    CancelReply,
    CancelRequest,
    CommandSubjectError,
    ErrorKind,
    ErrorReply,
    Verb,
    device_command_subscription,
    parse_command_subject,
    parse_request,
)
from harmony_fleet.errors import FleetError
from harmony_fleet.metrics import Counter, Histogram

log = logging.getLogger(__name__)

COMMANDS = Counter(
    "fleet_agent_commands_total", "Commands handled, by verb and outcome", ["verb", "outcome"]
)
COMMAND_SECONDS = Histogram(
    "fleet_agent_command_seconds", "Time to handle a command", ["verb"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)


class CommandFailed(FleetError):
    """Raised by a handler to answer with an ErrorReply."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class CommandRequest:
    verb: Verb
    payload: bytes
    reply_to: str
    request_id: str | None
    operator_sub: str | None
    _nc: NatsClient = field(repr=False)

    async def send(self, data: bytes) -> None:
        """Publish one message on the reply inbox (streaming handlers call this repeatedly)."""
        await self._nc.publish(self.reply_to, data)


Handler = Callable[[CommandRequest], Awaitable[BaseModel | None]]


def _deadline_passed(headers: Mapping[str, str]) -> bool:
    raw = headers.get(HDR_DEADLINE)
    if not raw:
        return False
    try:
        return time.time() * 1000 > int(raw)
    except ValueError:
        return False


class CommandServer:
    def __init__(
        self,
        nc: NatsClient,
        device_id: str,
        handlers: Mapping[Verb, Handler],
        *,
        max_concurrent: int = 16,
    ) -> None:
        self._nc = nc
        self._device_id = device_id
        self._handlers = dict(handlers)
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_request_id: dict[str, asyncio.Task[None]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        # a queue group: while the agent moves to a new connection (token rollover) both
        # are subscribed for a moment, and each command must still be served exactly once
        self._sub = await self._nc.subscribe(
            device_command_subscription(self._device_id), queue=f"fleet-agent.{self._device_id}",
            cb=self._on_message,
        )
        await self._nc.flush()
        log.info("answering commands", extra={"device": self._device_id})

    async def stop(self, timeout: float = 5.0, *, handover: bool = False) -> None:
        """Stop taking requests; give running ones ``timeout`` seconds to finish.

        The subscription is drained, not dropped: requests the server already delivered to
        this connection are still taken and answered. ``handover``: the agent is moving to a
        new connection, whose subscription is in the same queue group; requests the server
        matched to this one just before it left are still answered here (a move must not
        lose a command)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            # bounded, and given up at once when the connection is lost (nothing delivered
            # could be answered then): a stop as nats-server goes must not wait out a timeout
            await drain_subscription(self._nc, sub, timeout,
                                     handover_s=QUEUE_HANDOVER_S if handover else 0.0)
        if self._tasks:
            _finished, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()

    async def _on_message(self, msg: Msg) -> None:
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        request_id = (msg.headers or {}).get(HDR_REQUEST_ID)
        if request_id and not msg.subject.endswith(f".{Verb.CANCEL.value}"):
            self._by_request_id[request_id] = task
            task.add_done_callback(lambda _t: self._by_request_id.pop(request_id, None))

    async def _cancel(self, msg: Msg, request_id: str | None) -> None:
        """``cancel`` is answered outside the concurrency slots: it must work when all are busy."""
        try:
            request = parse_request(msg.data, CancelRequest)
        except ValueError as exc:
            await self._reply_error(msg, ErrorKind.BAD_REQUEST, f"cancel: {exc}", "cancel",
                                    request_id)
            return
        task = self._by_request_id.get(request.request_id)
        cancelled = task is not None and not task.done()
        if task is not None:
            task.cancel()
        COMMANDS.labels(verb="cancel", outcome="ok").inc()
        if msg.reply:  # a fire-and-forget cancel has no reply subject
            await self._nc.publish(msg.reply, CancelReply(cancelled=cancelled).to_json_bytes())

    async def _reply_error(
        self, msg: Msg, kind: ErrorKind, message: str, verb: str, request_id: str | None
    ) -> None:
        COMMANDS.labels(verb=verb, outcome=kind.value).inc()
        log.info(
            "command refused: %s: %s", kind.value, message,
            extra={"device": self._device_id, "verb": verb, "request_id": request_id},
        )
        if msg.reply:
            await self._nc.publish(
                msg.reply, ErrorReply(kind=kind, message=message).to_json_bytes()
            )

    async def _handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        request_id = headers.get(HDR_REQUEST_ID)
        verb_name = msg.subject.rsplit(".", 1)[-1]
        if not msg.reply and verb_name != Verb.CANCEL.value:
            log.warning(
                "dropping command without a reply subject: %s", msg.subject,
                extra={"device": self._device_id, "request_id": request_id},
            )
            return
        if _deadline_passed(headers):
            COMMANDS.labels(verb=verb_name, outcome="expired").inc()
            log.info("dropping expired command", extra={"request_id": request_id})
            return
        try:
            if verb_name == Verb.CANCEL.value:
                await self._cancel(msg, request_id)
                return
            async with self._slots:
                await self._dispatch(msg, headers, request_id)
        except Exception as exc:  # the last line of defence: answer, log, keep running
            log.exception("command handler crashed", extra={"request_id": request_id})
            try:
                await self._reply_error(
                    msg, ErrorKind.INTERNAL, f"internal error: {type(exc).__name__}",
                    verb_name, request_id,
                )
            except Exception:
                log.exception("could not send the error reply")

    async def _dispatch(self, msg: Msg, headers: Mapping[str, str], request_id: str | None) -> None:
        try:
            verb_name = parse_command_subject(msg.subject)[1]
        except CommandSubjectError as exc:
            await self._reply_error(msg, ErrorKind.BAD_REQUEST, str(exc), "?", request_id)
            return
        try:
            verb = Verb(verb_name)
            handler = self._handlers[verb]
        except (ValueError, KeyError):
            known = ", ".join(sorted(v.value for v in self._handlers))
            await self._reply_error(
                msg, ErrorKind.BAD_REQUEST, f"unknown verb {verb_name!r} (known: {known})",
                verb_name, request_id,
            )
            return
        request = CommandRequest(
            verb=verb,
            payload=bytes(msg.data),
            reply_to=msg.reply,
            request_id=request_id,
            operator_sub=headers.get(HDR_OPERATOR_SUB),
            _nc=self._nc,
        )
        started = time.perf_counter()
        try:
            reply = await handler(request)
        except CommandFailed as exc:
            await self._reply_error(msg, exc.kind, exc.message, verb.value, request_id)
            return
        finally:
            COMMAND_SECONDS.labels(verb=verb.value).observe(time.perf_counter() - started)
        if reply is not None:
            await self._nc.publish(msg.reply, reply.model_dump_json(by_alias=True).encode())
        COMMANDS.labels(verb=verb.value, outcome="ok").inc()
        log.debug(
            "command answered",
            extra={"device": self._device_id, "verb": verb.value, "request_id": request_id},
        )
