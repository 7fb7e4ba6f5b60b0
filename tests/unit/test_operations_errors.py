"""control.operations.execute: every failure becomes the name of a declared exception class."""

from __future__ import annotations

from typing import Any

import pytest

from harmony_fleet.bus.commands import DeviceOffline, RemoteError
from harmony_fleet.bus.kv import KVError, RevisionMismatch
from harmony_fleet.contracts import ErrorKind, ErrorReply, parse_desired_state_key
from harmony_fleet.control import operations
from harmony_fleet.control.operations import OPERATIONS, Operation, execute, operation_errors
from harmony_fleet.errors import FleetError


async def run(op: str, args: dict[str, Any]) -> dict[str, Any]:
    return await execute(None, op, args)  # type: ignore[arg-type]  # never reaches NATS


async def test_an_unknown_operation_is_invalid_input() -> None:
    answer = await run("reboot", {})
    assert answer["ok"] is False
    assert answer["error"]["type"] == "InvalidInput"
    assert "unknown operation 'reboot'" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("op", "args", "fragment"),
    [
        ("ping", {"device_id": "Not_A_Label"}, "device_id"),
        ("ping", {"device_id": "pi-1", "surprise": 1}, "surprise: Extra inputs are not permitted"),
        ("logs", {"device_id": "pi-1", "deployment": "a.b", "service": "web"}, "deployment"),
        ("exec", {"device_id": "pi-1", "deployment": "ns_app", "service": "web", "argv": []},
         "argv"),
        ("kv_get", {"bucket": "desired-state", "key": "pi-1"}, "has 1 token(s), expected 2"),
        ("kv_get", {"bucket": "elsewhere", "key": "pi-1.x"}, "unknown bucket 'elsewhere'"),
        ("kv_select", {"bucket": "desired-state", "pattern": "*.Bad"}, "key filter '*.Bad'"),
        ("kv_put", {"bucket": "device-info", "key": "info.pi-1", "value": {}},
         "written by the report writer only"),
        ("kv_put", {"bucket": "desired-state", "key": "pi-1.ns_app", "value": "{not json"},
         "this is not JSON"),
        ("kv_put", {"bucket": "desired-state", "key": "pi-1.ns_app",
                    "value": {"services": [{"name": "web"}]}}, "services.0.image"),
        ("kv_delete", {"bucket": "desired-state", "key": "pi-1.ns_app", "revision": 0},
         "revision"),
        ("device_info", {"device_id": "pi-1", "offline_after": 0}, "offline_after"),
        ("deploy", {"name": "web", "score": {"services": [{"name": "web", "image": "localhost/x:1"}]}},
         "needs devices or a selector"),
    ],
)
async def test_bad_arguments_are_invalid_input_naming_the_argument(
    op: str, args: dict[str, Any], fragment: str
) -> None:
    answer = await run(op, args)
    assert answer["ok"] is False, answer
    assert answer["error"]["type"] == "InvalidInput"
    assert fragment in answer["error"]["message"]


def fake(monkeypatch: pytest.MonkeyPatch, exc: BaseException,
         errors: tuple[type[FleetError], ...]) -> None:
    async def handler(_nc: Any, _args: dict[str, Any]) -> dict[str, Any]:
        raise exc

    monkeypatch.setitem(OPERATIONS, "fake", Operation(handler, errors))


@pytest.mark.parametrize(
    ("exc", "errors", "name"),
    [
        # the most specific declared class wins
        (RevisionMismatch("desired-state", "a.b", 3, 4), (RevisionMismatch, KVError),
         "RevisionMismatch"),
        (RevisionMismatch("desired-state", "a.b", 3, 4), (KVError,), "KVError"),
        (KVError("bucket gone"), (RevisionMismatch, KVError), "KVError"),
        (DeviceOffline("pi-1", "offline"), operations.COMMAND_ERRORS, "DeviceOffline"),
        # a contract's validation error is invalid input
        (None, (), "InvalidInput"),
        # undeclared or unexpected: a bug, said so
        (DeviceOffline("pi-1", "offline"), (KVError,), "InternalError"),
        (ZeroDivisionError("division by zero"), (), "InternalError"),
    ],
)
async def test_failures_are_reported_as_declared_classes(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException | None,
    errors: tuple[type[FleetError], ...], name: str,
) -> None:
    if exc is None:
        try:
            parse_desired_state_key("no-deployment")
        except ValueError as raised:
            exc = raised
    assert exc is not None
    fake(monkeypatch, exc, errors)
    answer = await run("fake", {})
    assert answer["error"]["type"] == name
    assert "kind" not in answer["error"]
    if name == "InternalError":
        assert type(exc).__name__ in answer["error"]["message"]


async def test_a_remote_error_carries_the_devices_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    fake(monkeypatch, RemoteError("pi-1", ErrorReply(kind=ErrorKind.FORBIDDEN, message="no")),
         operations.COMMAND_ERRORS)
    answer = await run("fake", {})
    assert answer["error"] == {"type": "RemoteError", "kind": "Forbidden",
                               "message": "Forbidden: no"}


def test_every_operation_reports_invalid_input_and_internal_error() -> None:
    for op in OPERATIONS:
        assert {"InvalidInput", "InternalError"} <= set(operation_errors(op))
    assert operation_errors("kv_put") == ["InternalError", "InvalidInput", "KVError",
                                          "RevisionMismatch"]
