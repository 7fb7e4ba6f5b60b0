"""Token refresh retries: the full-jitter backoff sequence (pure) and how the provider uses it.

The token endpoint is a scripted fake; nothing here touches the network.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from harmony_fleet.bus import tokens
from harmony_fleet.bus.retry import full_jitter_backoff
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import AccessToken, MachineKey, TokenError, ZitadelTokenProvider


def upper(a: float, b: float) -> float:
    """A ``uniform`` that always draws the upper bound: shows the ceilings."""
    return b


def take(n: int, it: Any) -> list[float]:
    return list(itertools.islice(it, n))


# ----------------------------------------------------------------------------- the sequence


def test_ceilings_double_up_to_the_maximum() -> None:
    assert take(9, full_jitter_backoff(1, 2, 60, upper)) == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_other_factors_and_an_initial_above_the_maximum() -> None:
    assert take(4, full_jitter_backoff(0.5, 3, 10, upper)) == [0.5, 1.5, 4.5, 10]
    assert take(3, full_jitter_backoff(2, 1, 60, upper)) == [2, 2, 2]  # factor 1: constant
    assert take(2, full_jitter_backoff(90, 2, 60, upper)) == [60, 60]


def test_every_draw_is_between_zero_and_its_ceiling() -> None:
    calls: list[tuple[float, float]] = []

    def record(a: float, b: float) -> float:
        calls.append((a, b))
        return random.Random(len(calls)).uniform(a, b)  # noqa: S311 - jitter, not crypto

    delays = take(50, full_jitter_backoff(1, 2, 60, record))
    ceilings = [min(60.0, 2.0**n) for n in range(50)]
    assert calls == [(0.0, c) for c in ceilings]  # full jitter: from zero, not from half
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_jitter_covers_the_whole_range() -> None:
    rng = random.Random(7)  # noqa: S311 - seeded on purpose: a repeatable test
    draws = [next(itertools.islice(full_jitter_backoff(1, 2, 60, rng.uniform), 6, None))
             for _ in range(2000)]  # the 7th retry: ceiling 60
    assert all(0 <= d <= 60 for d in draws)
    assert min(draws) < 3  # spread over [0, 60], not clustered
    assert max(draws) > 57
    assert 25 < sum(draws) / len(draws) < 35  # uniform: mean near 30


def test_a_long_outage_stays_at_the_ceiling() -> None:
    # 10,000 failures: factor**n would overflow a float; the ceiling simply stays at max
    tail = take(10_000, full_jitter_backoff(1, 2, 60, upper))[-3:]
    assert tail == [60, 60, 60]


def test_a_new_sequence_starts_from_the_beginning() -> None:
    first = full_jitter_backoff(1, 2, 60, upper)
    assert take(5, first)[-1] == 16
    assert take(2, full_jitter_backoff(1, 2, 60, upper)) == [1, 2]  # "reset": a new one


@pytest.mark.parametrize(("initial", "factor", "maximum"),
                         [(0, 2, 60), (-1, 2, 60), (1, 0.5, 60), (1, 2, 0)])
def test_nonsense_parameters(initial: float, factor: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        next(full_jitter_backoff(initial, factor, maximum))


# ----------------------------------------------------------------------------- settings


def settings(key_file: Path, **over: Any) -> ZitadelAuth:
    return ZitadelAuth(issuer="https://zitadel.example.net", key_file=key_file,
                       project_id="p", **over)


def test_retry_settings_defaults(tmp_path: Path) -> None:
    s = settings(tmp_path / "k.json")
    assert (s.refresh_retry_initial_s, s.refresh_retry_factor, s.refresh_retry_max_s) == (1, 2, 60)
    assert s.allow_insecure_key_permissions is False


@pytest.mark.parametrize("over", [
    {"refresh_retry_initial_s": 0}, {"refresh_retry_factor": 0.9}, {"refresh_retry_max_s": 0},
    {"refresh_retry_initial_s": 10, "refresh_retry_max_s": 5},
])
def test_retry_settings_validation(tmp_path: Path, over: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        settings(tmp_path / "k.json", **over)


# ----------------------------------------------------------------------------- the provider


class ScriptedExchange:
    """Answers token requests from a script: a lifetime in seconds (a token) or an exception.
    When the script runs out it sets ``stop`` and fails."""

    def __init__(self, script: list[float | BaseException], stop: asyncio.Event) -> None:
        self.script = list(script)
        self.stop = stop
        self.loop = asyncio.get_running_loop()
        self.calls: list[float] = []

    def __call__(self, settings: ZitadelAuth, key: MachineKey) -> AccessToken:
        self.calls.append(time.monotonic())
        if not self.script:
            self.loop.call_soon_threadsafe(self.stop.set)
            raise TokenError("script done")
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        now = time.time()
        return AccessToken(f"token-{len(self.calls)}", now + step, now)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.json"
    path.write_text(json.dumps({"keyId": "k", "key": "unused by the fake", "userId": "u"}))
    path.chmod(0o600)
    return path


def attempts(caplog: pytest.LogCaptureFixture) -> list[tuple[int, float]]:
    """(attempt number, announced wait) of every "token refresh attempt" warning."""
    return [(int(r.args[0]), float(r.args[2]))  # type: ignore[index]
            for r in caplog.records
            if r.name == tokens.__name__ and r.getMessage().startswith("token refresh attempt")]


async def test_failures_back_off_and_a_success_resets_the_sequence(
        key_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    down = TokenError("token endpoint https://zitadel.example.net unreachable: refused")
    # 4 failures, a token that needs refreshing at once, 2 failures, then the script ends
    fake = ScriptedExchange([down, down, down, down, 0.02, down, down], stop)
    monkeypatch.setattr(tokens, "exchange", fake)
    provider = ZitadelTokenProvider(settings(key_file, refresh_retry_initial_s=0.02,
                                             refresh_retry_max_s=0.08))
    caplog.set_level(logging.WARNING, logger=tokens.__name__)
    await asyncio.wait_for(provider.run(stop), 30)
    seen = attempts(caplog)
    # numbered per outage: the token in between started the count (and the waits) over
    assert [n for n, _ in seen] == [1, 2, 3, 4, 1, 2, 3]
    ceilings = [0.02, 0.04, 0.08, 0.08, 0.02, 0.04, 0.08]
    assert all(0 <= wait <= c for (_, wait), c in zip(seen, ceilings, strict=True)), seen
    # the announced wait is really waited before the next call (the 5th call got the token)
    failed_calls = [0, 1, 2, 3, 5, 6, 7]
    for (_, wait), call in zip(seen[:-1], failed_calls[:-1], strict=True):
        assert fake.calls[call + 1] - fake.calls[call] >= wait - 0.005, (call, wait)
    assert provider.refreshes == 1
    assert provider.failed_refreshes == 7
    assert provider.consecutive_failures == 3
    message = caplog.records[0].getMessage()
    assert message.startswith("token refresh attempt #1 failed: token endpoint")
    assert "; will retry in " in message


async def test_an_unexpected_error_does_not_end_the_refresher(
        key_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    fake = ScriptedExchange([RuntimeError("boom"), 3600], stop)
    monkeypatch.setattr(tokens, "exchange", fake)
    provider = ZitadelTokenProvider(settings(key_file, refresh_retry_initial_s=0.01))
    caplog.set_level(logging.WARNING, logger=tokens.__name__)
    task = asyncio.create_task(provider.run(stop))
    await asyncio.wait_for(provider.refreshed.wait(), 10)
    assert provider.current() == "token-2"
    assert not task.done()  # now waiting for the refresh time of a one-hour token
    stop.set()
    await asyncio.wait_for(task, 5)
    assert "RuntimeError('boom')" in caplog.records[0].getMessage()


async def test_a_token_obtained_elsewhere_resets_the_count(
        key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # connect() fetches tokens through prepare(): a success there ends the outage too
    stop = asyncio.Event()
    fake = ScriptedExchange([TokenError("down"), 3600], stop)
    monkeypatch.setattr(tokens, "exchange", fake)
    provider = ZitadelTokenProvider(settings(key_file, refresh_retry_initial_s=30))
    task = asyncio.create_task(provider.run(stop))
    for _ in range(200):
        if provider.consecutive_failures:
            break
        await asyncio.sleep(0.01)
    assert provider.consecutive_failures == 1
    await provider.prepare()
    assert provider.consecutive_failures == 0
    assert provider.failed_refreshes == 1
    stop.set()
    await asyncio.wait_for(task, 5)
