"""Request/reply commands on core NATS (harmony_fleet.contracts.commands)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field, ValidationError

from harmony_fleet.contracts import (
    COMMAND_SUBJECT_PREFIX,
    HDR_DEADLINE,
    HDR_OPERATOR_SUB,
    HDR_REQUEST_ID,
    MAX_REQUEST_BYTES,
    CommandSubjectError,
    ErrorKind,
    ErrorReply,
    InvalidIdError,
    PingReply,
    PingRequest,
    ReplyDecodeError,
    Verb,
    WireModel,
    device_command_subject,
    device_command_subscription,
    parse_command_subject,
    parse_reply,
    parse_request,
)

from .strategies import PROPERTY, device_ids

# ----------------------------------------------------------------------------- constants


def test_subject_prefix_and_headers() -> None:
    assert COMMAND_SUBJECT_PREFIX == "device-commands"
    assert HDR_REQUEST_ID == "X-Harmony-Request-Id"
    assert HDR_DEADLINE == "X-Harmony-Deadline"
    assert HDR_OPERATOR_SUB == "X-Harmony-Operator-Sub"
    assert MAX_REQUEST_BYTES == 64 * 1024


def test_verbs() -> None:
    assert Verb.PING.value == "ping"
    assert Verb("ping") is Verb.PING
    values = [v.value for v in Verb]
    assert len(values) == len(set(values))
    # each verb is the last token of a subject: one lowercase word, no '.', '*' or '>'
    assert all(re.fullmatch(r"[a-z]+", v) for v in values), values


@pytest.mark.parametrize("verb", ["ping", "logs", "exec"])
def test_design_verbs_build_subjects(verb: str) -> None:
    """The wire contract (docs/wire-contract.md): verbs ``ping``, ``logs``, ``exec``."""
    if verb not in {v.value for v in Verb}:
        pytest.fail(f"verb {verb!r} of the wire contract is missing from Verb")
    assert device_command_subject("pi-1", verb) == f"device-commands.pi-1.{verb}"


def test_error_kinds_are_exactly_the_design_ones() -> None:
    assert {k.name: k.value for k in ErrorKind} == {
        "BAD_REQUEST": "BadRequest",
        "NOT_FOUND": "NotFound",
        "FORBIDDEN": "Forbidden",
        "UNSUPPORTED": "Unsupported",
        "INTERNAL": "Internal",
    }


# ----------------------------------------------------------------------------- subjects


def test_subject_builders() -> None:
    assert device_command_subject("pi-1", Verb.PING) == "device-commands.pi-1.ping"
    assert device_command_subject("pi-1", "ping") == "device-commands.pi-1.ping"
    assert device_command_subscription("pi-1") == "device-commands.pi-1.>"


@pytest.mark.parametrize("verb", ["PING", "Ping", "reboot", "", "*", ">", "ping.x"])
def test_subject_builder_rejects_unknown_verbs(verb: str) -> None:
    with pytest.raises(ValueError, match="is not a valid Verb"):
        device_command_subject("pi-1", verb)


@pytest.mark.parametrize("device", ["", "Pi-1", "pi_1", "pi.1", "*", ">", "x" * 64])
def test_subject_builders_reject_bad_device_ids(device: str) -> None:
    with pytest.raises(InvalidIdError, match="device id"):
        device_command_subject(device, Verb.PING)
    with pytest.raises(InvalidIdError, match="device id"):
        device_command_subscription(device)


@PROPERTY
@given(device_ids, st.sampled_from(list(Verb)))
def test_subject_round_trip(device: str, verb: Verb) -> None:
    subject = device_command_subject(device, verb)
    assert subject == f"device-commands.{device}.{verb.value}"
    assert parse_command_subject(subject) == (device, verb.value)
    assert subject.startswith(device_command_subscription(device)[:-1])


def test_parse_returns_unknown_verbs_as_is() -> None:
    assert parse_command_subject("device-commands.pi-1.logs") == ("pi-1", "logs")
    assert parse_command_subject("device-commands.pi-1.reboot") == ("pi-1", "reboot")


@pytest.mark.parametrize("verb", ["Reboot", ">", "*", "", "1st", "x" * 40])
def test_parse_rejects_verbs_that_are_not_lowercase_words(verb: str) -> None:
    with pytest.raises(CommandSubjectError, match="the verb must be a lowercase word"):
        parse_command_subject(f"device-commands.pi-1.{verb}")


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "device-commands",
        "device-commands.pi-1",
        "device-commands.pi-1.ping.extra",
        "device-command.pi-1.ping",
        "Device-Commands.pi-1.ping",
        "$KV.desired-state.pi-1",
        "pi-1.ping",
        "x.device-commands.pi-1.ping",
    ],
)
def test_parse_rejects_subjects_of_the_wrong_shape(subject: str) -> None:
    with pytest.raises(CommandSubjectError) as info:
        parse_command_subject(subject)
    assert repr(subject) in str(info.value)
    assert "device-commands.<device>.<verb>" in str(info.value)


@pytest.mark.parametrize(
    ("subject", "fragment"),
    [
        ("device-commands..ping", "device id must not be empty"),
        ("device-commands.*.ping", "not a DNS-1123 label"),
        ("device-commands.>.ping", "not a DNS-1123 label"),
        ("device-commands.Pi-1.ping", "not a DNS-1123 label"),
        ("device-commands.pi_1.ping", "not a DNS-1123 label"),
        ("device-commands." + "a" * 64 + ".ping", "64 characters long"),
    ],
)
def test_parse_rejects_bad_device_ids(subject: str, fragment: str) -> None:
    with pytest.raises(CommandSubjectError) as info:
        parse_command_subject(subject)
    assert fragment in str(info.value)
    assert isinstance(info.value.__cause__, InvalidIdError)


def test_command_subject_error_is_a_value_error() -> None:
    assert issubclass(CommandSubjectError, ValueError)
    assert not issubclass(CommandSubjectError, InvalidIdError)


# ----------------------------------------------------------------------------- reply models


def test_ping_reply_json_field_names() -> None:
    reply = PingReply(device_id="pi-1", agent_version="0.1.0", uptime_s=42)
    assert json.loads(reply.to_json_bytes()) == {
        "device_id": "pi-1",
        "agent_version": "0.1.0",
        "uptime_s": 42,
    }
    assert set(PingReply.model_fields) == {"device_id", "agent_version", "uptime_s"}


def test_error_reply_json_field_names() -> None:
    reply = ErrorReply(kind=ErrorKind.NOT_FOUND, message="no such container: web")
    assert json.loads(reply.to_json_bytes()) == {
        "kind": "NotFound",
        "message": "no such container: web",
    }
    assert set(ErrorReply.model_fields) == {"kind", "message"}


def test_ping_request_has_no_fields_and_ignores_extras() -> None:
    assert PingRequest.model_fields == {}
    assert PingRequest.model_validate({"future": 1}).model_dump() == {}
    assert PingRequest().to_json_bytes() == b"{}"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"device_id": "pi-1", "agent_version": "1", "uptime_s": -1}, "uptime_s"),
        ({"device_id": "Pi_1", "agent_version": "1", "uptime_s": 1}, "device_id"),
        ({"device_id": "pi-1", "uptime_s": 1}, "agent_version"),
        ({"device_id": "pi-1", "agent_version": "1", "uptime_s": 1.5}, "uptime_s"),
        ({"device_id": "pi-1", "agent_version": "1", "uptime_s": "soon"}, "uptime_s"),
    ],
)
def test_ping_reply_validation(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        PingReply.model_validate(data)
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_reply_models_are_frozen() -> None:
    reply = PingReply(device_id="pi-1", agent_version="1", uptime_s=0)
    with pytest.raises(ValidationError):
        reply.uptime_s = 5  # type: ignore[misc]


# ----------------------------------------------------------------------------- parse_reply


def test_parse_reply_decodes_the_verb_model() -> None:
    payload = b'{"device_id": "pi-1", "agent_version": "0.3.1", "uptime_s": 3600, "new": true}'
    reply = parse_reply(payload, PingReply)
    assert isinstance(reply, PingReply)
    assert reply == PingReply(device_id="pi-1", agent_version="0.3.1", uptime_s=3600)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_parse_reply_returns_error_reply_for_every_kind(kind: ErrorKind) -> None:
    payload = json.dumps({"kind": kind.value, "message": "went wrong"}).encode()
    reply = parse_reply(payload, PingReply)
    assert isinstance(reply, ErrorReply)
    assert reply.kind is kind
    assert reply.message == "went wrong"


def test_parse_reply_error_reply_round_trip_ignores_extra_fields() -> None:
    original = ErrorReply(kind=ErrorKind.FORBIDDEN, message="not yours")
    assert parse_reply(original.to_json_bytes(), PingReply) == original
    reply = parse_reply(b'{"kind": "Internal", "message": "boom", "trace_id": "t1"}', PingReply)
    assert reply == ErrorReply(kind=ErrorKind.INTERNAL, message="boom")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "reply is not JSON"),
        (b"not json", "reply is not JSON"),
        (b"{", "reply is not JSON"),
        (b"\xff\xfe\x00", "reply is not JSON"),
        (b"[]", "reply is not a JSON object"),
        (b"[1, 2]", "reply is not a JSON object"),
        (b"42", "reply is not a JSON object"),
        (b'"pong"', "reply is not a JSON object"),
        (b"null", "reply is not a JSON object"),
        (b"true", "reply is not a JSON object"),
        (b"{}", "reply does not match PingReply"),
        (b'{"device_id": "pi-1"}', "reply does not match PingReply"),
        (b'{"device_id": "pi-1", "agent_version": "1", "uptime_s": "x"}', "does not match PingReply"),
        (b'{"device_id": "PI", "agent_version": "1", "uptime_s": 1}', "does not match PingReply"),
        (b'{"kind": "NotFound"}', "reply does not match PingReply"),
        (b'{"message": "oops"}', "reply does not match PingReply"),
        (b'{"kind": "Timeout", "message": "x"}', "malformed error reply"),
        (b'{"kind": "notfound", "message": "x"}', "malformed error reply"),
        (b'{"kind": "NotFound", "message": 5}', "malformed error reply"),
        (b'{"kind": null, "message": "x"}', "malformed error reply"),
    ],
)
def test_parse_reply_rejects_garbage_and_wrong_shapes(payload: bytes, fragment: str) -> None:
    with pytest.raises(ReplyDecodeError) as info:
        parse_reply(payload, PingReply)
    assert fragment in str(info.value)


def test_reply_decode_error_is_a_value_error() -> None:
    assert issubclass(ReplyDecodeError, ValueError)


@PROPERTY
@given(device_ids, st.text(max_size=30), st.integers(min_value=0, max_value=2**40))
def test_ping_reply_round_trip(device: str, version: str, uptime: int) -> None:
    reply = PingReply(device_id=device, agent_version=version, uptime_s=uptime)
    assert parse_reply(reply.to_json_bytes(), PingReply) == reply


@PROPERTY
@given(st.sampled_from(list(ErrorKind)), st.text(max_size=200))
def test_error_reply_round_trip(kind: ErrorKind, message: str) -> None:
    reply = ErrorReply(kind=kind, message=message)
    assert parse_reply(reply.to_json_bytes(), PingReply) == reply


@PROPERTY
@given(st.binary(max_size=64))
def test_parse_reply_only_ever_raises_reply_decode_error(payload: bytes) -> None:
    try:
        reply = parse_reply(payload, PingReply)
    except ReplyDecodeError:
        return
    assert isinstance(reply, PingReply | ErrorReply)


# ----------------------------------------------------------------------------- parse_request


class _LogsRequest(WireModel):
    """A request model with constraints, standing in for future verbs."""

    container: str
    lines: int = Field(default=100, ge=1)


@pytest.mark.parametrize("payload", [b"", b" ", b"\n", b" \t\r\n "])
def test_empty_request_body_is_an_empty_object(payload: bytes) -> None:
    assert parse_request(payload, PingRequest) == PingRequest()
    with pytest.raises(ValueError, match="container"):
        parse_request(payload, _LogsRequest)


def test_empty_request_body_for_a_model_with_required_fields_gets_a_summary() -> None:
    with pytest.raises(ValueError, match="container") as info:
        parse_request(b"", _LogsRequest)
    assert not isinstance(info.value, ValidationError)
    assert str(info.value) == "container: Field required"


def test_parse_request_decodes_objects_and_ignores_unknown_fields() -> None:
    assert parse_request(b"{}", PingRequest) == PingRequest()
    assert parse_request(b'{"verbose": true}', PingRequest) == PingRequest()
    request = parse_request(b'{"container": "web", "lines": 5, "extra": 1}', _LogsRequest)
    assert request == _LogsRequest(container="web", lines=5)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{", "request body is not JSON"),
        (b"ping", "request body is not JSON"),
        (b"\xff\xfe", "request body is not JSON"),
        (b"[]", "request body must be a JSON object"),
        (b"42", "request body must be a JSON object"),
        (b'"x"', "request body must be a JSON object"),
        (b"null", "request body must be a JSON object"),
    ],
)
def test_parse_request_rejects_bad_bodies(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_request(payload, PingRequest)


def _object_of_size(size: int) -> bytes:
    head, tail = b'{"pad": "', b'"}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    return body


def test_parse_request_accepts_exactly_the_limit() -> None:
    assert parse_request(_object_of_size(MAX_REQUEST_BYTES), PingRequest) == PingRequest()


@pytest.mark.parametrize(
    "payload",
    [_object_of_size(MAX_REQUEST_BYTES + 1), b" " * (MAX_REQUEST_BYTES + 1), b"x" * (1024 * 1024)],
    ids=["json-over-by-one", "whitespace-over-by-one", "one-megabyte"],
)
def test_parse_request_rejects_oversize_bodies_before_parsing(payload: bytes) -> None:
    with pytest.raises(ValueError, match=rf"request body is {len(payload)} bytes; the limit is 65536"):
        parse_request(payload, PingRequest)


def test_parse_request_validation_error_is_a_summary_without_input_values() -> None:
    with pytest.raises(ValueError, match="request body") as not_json:
        parse_request(b"{", _LogsRequest)
    assert not isinstance(not_json.value, ValidationError)

    with pytest.raises(ValueError, match=r"^lines: ") as info:
        parse_request(b'{"container": "web", "lines": "hunter2-secret"}', _LogsRequest)
    message = str(info.value)
    assert not isinstance(info.value, ValidationError)
    assert message.startswith("lines: Input should be a valid integer")
    assert "hunter2-secret" not in message

    with pytest.raises(ValueError, match="container") as two:
        parse_request(b'{"lines": 0}', _LogsRequest)
    assert str(two.value) == ("container: Field required; lines: Input should be greater than or equal to 1")
