"""Request/reply commands on core NATS: ``device-commands.<device>.<verb>``.

A request carries a JSON object (an empty body is the same as ``{}``) and these headers:

* ``X-Harmony-Request-Id`` — a client-chosen id, echoed in the agent's logs;
* ``X-Harmony-Deadline`` — Unix time in milliseconds after which the client has given up;
  an agent drops requests it receives after their deadline;
* ``X-Harmony-Operator-Sub`` — who asked (the OIDC ``sub`` of the human or service), for audit.

A reply is either the verb's reply model (e.g. :class:`PingReply`) or an :class:`ErrorReply`
``{"kind", "message"}``; :func:`parse_reply` tells them apart.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Final, TypeVar

from pydantic import BaseModel, Field, ValidationError

from harmony_fleet.errors import FleetError

from .base import WireModel, validation_summary
from .ids import DNS1123_LABEL_PATTERN, DeploymentToken, DeviceId, InvalidIdError, validate_device_id

COMMAND_SUBJECT_PREFIX: Final = "device-commands"
_VERB = re.compile(r"[a-z][a-z0-9-]{0,31}")
HDR_REQUEST_ID: Final = "X-Harmony-Request-Id"
HDR_DEADLINE: Final = "X-Harmony-Deadline"
HDR_OPERATOR_SUB: Final = "X-Harmony-Operator-Sub"

#: Largest request body an agent accepts.
MAX_REQUEST_BYTES: Final = 64 * 1024
#: Largest ``data`` of one :class:`LogChunk` (bytes of UTF-8); a stream has no total cap.
MAX_LOG_CHUNK_BYTES: Final = 16 * 1024
#: Longest log follow; the callout lets a device answer one request for this long.
MAX_FOLLOW_S: Final = 3600
#: Largest output an ``exec`` reply carries (NATS' default max payload is 1 MiB).
MAX_EXEC_OUTPUT_BYTES: Final = 512 * 1024


class Verb(StrEnum):
    """Command verbs an agent answers."""

    PING = "ping"
    LOGS = "logs"
    EXEC = "exec"
    CANCEL = "cancel"


class ErrorKind(StrEnum):
    BAD_REQUEST = "BadRequest"
    NOT_FOUND = "NotFound"
    FORBIDDEN = "Forbidden"
    UNSUPPORTED = "Unsupported"
    INTERNAL = "Internal"


class CommandSubjectError(FleetError, ValueError):
    """A subject is not ``device-commands.<device>.<verb>``."""


def device_command_subject(device_id: str, verb: Verb | str) -> str:
    """``device-commands.<device>.<verb>``."""
    return f"{COMMAND_SUBJECT_PREFIX}.{validate_device_id(device_id)}.{Verb(verb).value}"


def device_command_subscription(device_id: str) -> str:
    """What an agent subscribes to: ``device-commands.<device>.>``."""
    return f"{COMMAND_SUBJECT_PREFIX}.{validate_device_id(device_id)}.>"


def parse_command_subject(subject: str) -> tuple[str, str]:
    """Return ``(device_id, verb)``; the verb is returned as-is, even if unknown."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != COMMAND_SUBJECT_PREFIX:
        raise CommandSubjectError(
            f"subject {subject!r} is not '{COMMAND_SUBJECT_PREFIX}.<device>.<verb>'"
        )
    try:
        device = validate_device_id(parts[1])
    except InvalidIdError as exc:
        raise CommandSubjectError(f"subject {subject!r}: {exc}") from exc
    if not _VERB.fullmatch(parts[2]):
        raise CommandSubjectError(f"subject {subject!r}: the verb must be a lowercase word")
    return device, parts[2]


class PingRequest(WireModel):
    """``ping`` takes no arguments; unknown fields are ignored for forward compatibility."""


class PingReply(WireModel):
    device_id: DeviceId
    agent_version: str
    uptime_s: int = Field(ge=0, description="Whole seconds since the agent started")


class ErrorReply(WireModel):
    kind: ErrorKind
    message: str


ServiceName = Annotated[str, Field(pattern=DNS1123_LABEL_PATTERN, min_length=1, max_length=63)]


class LogsRequest(WireModel):
    """``logs``: one service's container output, streamed as :class:`LogChunk` messages.

    Every message of the stream goes to the request's reply inbox, in order: chunks with
    ``seq`` 0, 1, 2… and last a chunk with ``eof: true`` (carrying ``error`` if the stream
    broke). A refused request gets a single :class:`ErrorReply` instead. The client cancels a
    stream early with ``cancel`` (its ``request_id``); a follow ends by itself after
    ``follow_timeout_s`` or when the container stops.
    """

    deployment: DeploymentToken
    service: ServiceName
    tail: int | None = Field(default=None, ge=0, le=1_000_000, description="Last N lines only")
    since: str | None = Field(
        default=None, pattern=r"^[0-9A-Za-z:.+-]{1,40}$",
        description="RFC 3339 time or a duration such as 10m (podman logs --since)",
    )
    follow: bool = False
    follow_timeout_s: int = Field(default=MAX_FOLLOW_S, ge=1, le=MAX_FOLLOW_S)


class LogChunk(WireModel):
    seq: int = Field(ge=0)
    data: str = ""
    eof: bool = False
    error: ErrorReply | None = None


class ExecRequest(WireModel):
    """``exec``: run ``argv`` in a service's container (refused unless the device allows it)."""

    deployment: DeploymentToken
    service: ServiceName
    argv: list[str] = Field(min_length=1, max_length=256)
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    output_cap: int = Field(default=64 * 1024, ge=0, le=MAX_EXEC_OUTPUT_BYTES)


class ExecReply(WireModel):
    exit_code: int
    output: str = Field(description="stdout and stderr, interleaved, decoded as UTF-8")
    truncated: bool = False
    timed_out: bool = False


class CancelRequest(WireModel):
    """``cancel``: stop a running streamed command (e.g. a log follow) by its request id."""

    request_id: str = Field(min_length=1, max_length=128)


class CancelReply(WireModel):
    cancelled: bool


class ReplyDecodeError(FleetError, ValueError):
    """A reply is neither the expected model nor an :class:`ErrorReply`."""


ReplyT = TypeVar("ReplyT", bound=BaseModel)


def parse_reply(payload: bytes, model: type[ReplyT]) -> ReplyT | ErrorReply:
    """Decode a reply body into ``model`` or an :class:`ErrorReply`."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReplyDecodeError(f"reply is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReplyDecodeError(f"reply is not a JSON object: {payload[:80]!r}")
    if "kind" in data and "message" in data:
        try:
            return ErrorReply.model_validate(data)
        except ValidationError as exc:
            raise ReplyDecodeError(f"malformed error reply: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ReplyDecodeError(f"reply does not match {model.__name__}: {exc}") from exc


def parse_request(payload: bytes, model: type[ReplyT]) -> ReplyT:
    """Decode a request body (empty means ``{}``); raise ``ValueError`` with a clear reason."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise ValueError(f"request body is {len(payload)} bytes; the limit is {MAX_REQUEST_BYTES}")
    if not payload.strip():
        data: object = {}
    else:
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValueError(validation_summary(exc)) from exc
