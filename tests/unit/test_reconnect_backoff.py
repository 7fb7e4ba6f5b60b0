"""A client whose credentials the server refuses (a revoked device) asks again after a wait that
doubles up to a bound, not every second forever; a successful reconnect resets the wait; other
errors (a server that is down) leave nats-py's wait alone."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors

from harmony_fleet.bus.connection import _ConnectionEvents, refused_credentials
from harmony_fleet.bus.settings import NatsSettings


def connected_events(**settings: Any) -> tuple[_ConnectionEvents, dict[str, Any]]:
    events = _ConnectionEvents("t", None, None, None, NatsSettings(**settings))
    options = {"reconnect_time_wait": events.wait_s}
    events.connected = True
    events.client = SimpleNamespace(options=options)  # type: ignore[assignment]
    return events, options


REFUSED = nats.errors.Error("nats: 'Authorization Violation'")


def test_refused_credentials_is_recognised() -> None:
    assert refused_credentials(REFUSED)
    assert refused_credentials(nats.errors.AuthorizationError())
    assert not refused_credentials(ConnectionRefusedError(111, "Connect call failed"))
    assert not refused_credentials(nats.errors.Error("nats: 'Permissions Violation for Publish'"))


async def test_refusals_double_the_wait_up_to_the_bound_and_a_reconnect_resets_it() -> None:
    events, options = connected_events(reconnect_wait_s=1.0, refused_reconnect_wait_max_s=10.0)
    waits = []
    for _ in range(6):
        await events.on_error(REFUSED)
        waits.append(options["reconnect_time_wait"])
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    await events.options()["reconnected_cb"]()
    assert options["reconnect_time_wait"] == 1.0


async def test_other_errors_keep_the_wait() -> None:
    events, options = connected_events(reconnect_wait_s=0.5)
    await events.on_error(ConnectionRefusedError(111, "Connect call failed"))
    assert options["reconnect_time_wait"] == 0.5


async def test_before_the_first_connect_errors_are_only_collected() -> None:
    events, options = connected_events()
    events.connected = False
    await events.on_error(REFUSED)
    assert events.first_connect_errors == [REFUSED]
    assert options["reconnect_time_wait"] == 1.0
