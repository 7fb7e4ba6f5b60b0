"""How the ``fleet`` CLI words a failure (pure): one line, and the exit code by kind."""

from __future__ import annotations

import nats.errors
import pytest
from pydantic import BaseModel, Field, ValidationError

from harmony_fleet.bus import ConnectError, DeviceOffline
from harmony_fleet.bus.credentials import CredentialsError
from harmony_fleet.bus.profile import ConnectionConfigError
from harmony_fleet.cli import EXIT_FAILED, EXIT_USAGE, failure, main
from harmony_fleet.contracts import InvalidIdError
from harmony_fleet.errors import InvalidInput
from harmony_fleet.localstack.stack import StackError


class _Request(BaseModel):
    tail: int = Field(ge=0)


def _validation_error() -> ValidationError:
    try:
        _Request(tail=-1)
    except ValidationError as exc:
        return exc
    raise AssertionError("tail=-1 validated")


@pytest.mark.parametrize(("exc", "said", "code"), [
    (InvalidInput("--workdir x is not empty"), "InvalidInput: --workdir x is not empty",
     EXIT_USAGE),
    (ConnectionConfigError("no NATS server given"),
     "ConnectionConfigError: no NATS server given", EXIT_USAGE),
    (InvalidIdError("device id 'Foo' is not a DNS-1123 label"),
     "InvalidIdError: device id 'Foo' is not a DNS-1123 label", EXIT_USAGE),
    (_validation_error(), "InvalidInput: tail: Input should be greater than or equal to 0",
     EXIT_USAGE),
    (CredentialsError("cannot read the password file /x"),
     "CredentialsError: cannot read the password file /x", 2),
    (ConnectError("could not connect"), "ConnectError: could not connect", EXIT_FAILED),
    (DeviceOffline("d", "device d is offline (no responders)"),
     "DeviceOffline: device d is offline (no responders)", EXIT_FAILED),
    (StackError("a local stack is running"), "StackError: a local stack is running",
     EXIT_FAILED),
    (nats.errors.TimeoutError(), "TimeoutError: nats: timeout", EXIT_FAILED),
    (FileNotFoundError(2, "No such file or directory", "/x/y"),
     "FileNotFoundError: No such file or directory: /x/y", EXIT_FAILED),
    (RuntimeError("boom\nand more"),
     "InternalError: unexpected RuntimeError: boom; and more (run with -v for the traceback)",
     EXIT_FAILED),
])
def test_each_failure_is_one_line_with_its_exit_code(exc: Exception, said: str,
                                                     code: int) -> None:
    assert failure(exc) == (said, code)


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["stack", "up", "--devices", "many"])
    assert exited.value.code == EXIT_USAGE
    assert capsys.readouterr().err == (
        "fleet: stack up: argument --devices: expected a whole number, got 'many' "
        "(see 'fleet stack up --help')\n")
