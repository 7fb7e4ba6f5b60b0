"""``logs`` and ``exec``: commands that reach into a deployment's containers."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
from collections.abc import Iterator

from pydantic import BaseModel

from harmony_fleet.contracts import (
    MAX_LOG_CHUNK_BYTES,
    ErrorKind,
    ErrorReply,
    ExecReply,
    ExecRequest,
    LogChunk,
    LogsRequest,
    parse_request,
)

from .commands import CommandFailed, CommandRequest
from .config import ExecSection
from .plan import service_container_name
from .runtime import (
    LABEL_DEVICE,
    ContainerRuntime,
    ContainerRuntimeError,
    argument_problem,
)

log = logging.getLogger(__name__)

#: While a follow has no output, an empty chunk goes out this often (the client's liveness).
KEEPALIVE_S = 5.0


def split_utf8(text: str, limit: int) -> Iterator[str]:
    """Pieces of ``text`` whose UTF-8 encoding is at most ``limit`` bytes, never mid-character."""
    piece: list[str] = []
    size = 0
    for char in text:
        n = len(char.encode("utf-8"))
        if size + n > limit and piece:
            yield "".join(piece)
            piece, size = [], 0
        piece.append(char)
        size += n
    if piece:
        yield "".join(piece)


class _ChunkSender:
    """Numbers the chunks of one log stream and keeps UTF-8 characters whole across reads."""

    def __init__(self, request: CommandRequest) -> None:
        self._request = request
        self._seq = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    async def _send(self, chunk: LogChunk) -> None:
        await self._request.send(chunk.to_json_bytes())
        self._seq += 1

    async def data(self, raw: bytes) -> None:
        text = self._decoder.decode(raw)
        if not text:
            if not raw:  # an explicit keepalive
                await self._send(LogChunk(seq=self._seq))
            return
        for piece in split_utf8(text, MAX_LOG_CHUNK_BYTES):
            await self._send(LogChunk(seq=self._seq, data=piece))

    async def finish(self, error: ErrorReply | None) -> None:
        tail = self._decoder.decode(b"", final=True)
        if tail:
            await self._send(LogChunk(seq=self._seq, data=tail))
        await self._send(LogChunk(seq=self._seq, eof=True, error=error))


class WorkloadCommands:
    def __init__(self, device_id: str, runtime: ContainerRuntime, exec_config: ExecSection) -> None:
        self.device_id = device_id
        self.runtime = runtime
        self.exec_config = exec_config

    async def _container(self, deployment: str, service: str, verb: str) -> str:
        """The id of the service's container: the request names the service, so the name is
        resolved once, here, and the command acts on that container even if the service is
        recreated meanwhile (its new container would be another one, by the same name)."""
        name = service_container_name(self.device_id, deployment, service)
        info = await self.runtime.inspect(name)
        if info is None or info.labels.get(LABEL_DEVICE) != self.device_id or not info.id:
            raise CommandFailed(
                ErrorKind.NOT_FOUND,
                f"{verb}: deployment {deployment} has no service {service} on {self.device_id}",
            )
        return info.id

    async def logs(self, request: CommandRequest) -> BaseModel | None:
        try:
            req = parse_request(request.payload, LogsRequest)
        except ValueError as exc:
            raise CommandFailed(ErrorKind.BAD_REQUEST, f"logs: {exc}") from exc
        container = await self._container(req.deployment, req.service, "logs")
        out = _ChunkSender(request)
        error = await self._stream_logs(container, req, out)
        await out.finish(error)
        return None

    async def _stream_logs(
        self, container: str, req: LogsRequest, out: _ChunkSender
    ) -> ErrorReply | None:
        stream = self.runtime.logs(container, tail=req.tail, since=req.since, follow=req.follow)
        # a reader task feeds a queue so that waiting for output never cancels the podman
        # process; while a follow is idle the client gets an empty chunk every KEEPALIVE_S
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=64)

        async def pump() -> None:
            try:
                async for raw in stream:
                    await queue.put(raw)
                await queue.put(None)
            except ContainerRuntimeError as exc:
                await queue.put(exc)

        reader = asyncio.create_task(pump(), name=f"logs-{container[:12]}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.follow_timeout_s if req.follow else None
        try:
            while deadline is None or loop.time() < deadline:
                wait = KEEPALIVE_S if deadline is None else min(KEEPALIVE_S,
                                                                deadline - loop.time())
                try:
                    item = await asyncio.wait_for(queue.get(), max(wait, 0.0))
                except TimeoutError:
                    if deadline is not None:
                        await out.data(b"")  # keepalive
                    continue
                if item is None:
                    return None
                if isinstance(item, BaseException):
                    return ErrorReply(kind=ErrorKind.INTERNAL, message=str(item))
                await out.data(item)
            return None  # followed for follow_timeout_s: end the stream normally
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def exec(self, request: CommandRequest) -> BaseModel | None:
        try:
            req = parse_request(request.payload, ExecRequest)
        except ValueError as exc:
            raise CommandFailed(ErrorKind.BAD_REQUEST, f"exec: {exc}") from exc
        if not self.exec_config.enabled:
            raise CommandFailed(ErrorKind.FORBIDDEN, f"exec is disabled on {self.device_id}")
        if not self.exec_config.allows(req.deployment, req.service, req.argv[0]):
            raise CommandFailed(
                ErrorKind.FORBIDDEN,
                f"exec of {req.argv[0]!r} in {req.deployment}/{req.service} is not allowed "
                f"on {self.device_id}",
            )
        for i, arg in enumerate(req.argv):  # podman's argv, then the command's own
            if (why := argument_problem(arg)) is not None:
                raise CommandFailed(ErrorKind.BAD_REQUEST, f"exec: argv[{i}] {why}")
        container = await self._container(req.deployment, req.service, "exec")
        log.info("exec in %s/%s (%s): %s", req.deployment, req.service, container[:12],
                 req.argv[0], extra={"device": self.device_id, "request_id": request.request_id,
                                     "operator_sub": request.operator_sub})
        result = await self.runtime.exec(container, req.argv, timeout_s=req.timeout_s,
                                         output_cap=req.output_cap)
        return ExecReply(exit_code=result.exit_code,
                         output=result.output.decode("utf-8", "replace"),
                         truncated=result.truncated, timed_out=result.timed_out)


async def runtime_disabled(request: CommandRequest) -> BaseModel | None:
    raise CommandFailed(ErrorKind.UNSUPPORTED,
                        f"{request.verb.value}: this agent runs without a container runtime")
