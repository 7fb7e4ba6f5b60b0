"""bus.commands.request: a request the server delivered to nobody ("no responders") is sent
again for a moment, then the failure stands; answers and timeouts pass through untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import pytest

from harmony_fleet.bus import commands
from harmony_fleet.bus.commands import request


class FakeNc:
    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, float]] = []

    async def request(self, subject: str, payload: bytes, *, timeout: float,
                      headers: dict[str, str] | None) -> Any:
        self.calls.append((subject, timeout))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def test_no_responders_twice_then_an_answer() -> None:
    nc = FakeNc([nats.errors.NoRespondersError(), nats.errors.NoRespondersError(), "reply"])
    assert await request(nc, "s", b"", timeout=5) == "reply"  # type: ignore[arg-type]
    assert len(nc.calls) == 3


async def test_no_responders_for_good_gives_up_within_the_retry_window() -> None:
    nc = FakeNc([nats.errors.NoRespondersError()])
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(nats.errors.NoRespondersError):
        await request(nc, "s", b"", timeout=5)  # type: ignore[arg-type]
    took = loop.time() - started
    assert took <= commands.NO_RESPONDERS_RETRY_S + 0.2
    assert 2 <= len(nc.calls) <= 6


async def test_the_retries_stay_within_the_callers_timeout() -> None:
    nc = FakeNc([nats.errors.NoRespondersError()])
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(nats.errors.NoRespondersError):
        await request(nc, "s", b"", timeout=0.1)  # type: ignore[arg-type]
    assert loop.time() - started < 0.3
    assert all(timeout <= 0.1 for _subject, timeout in nc.calls)


async def test_a_timeout_is_not_retried() -> None:
    """The request may have been delivered: sending it again could run a command twice."""
    nc = FakeNc([nats.errors.TimeoutError()])
    with pytest.raises(nats.errors.TimeoutError):
        await request(nc, "s", b"", timeout=1)  # type: ignore[arg-type]
    assert len(nc.calls) == 1
