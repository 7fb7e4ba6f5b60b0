"""Retry delays (pure)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def full_jitter_backoff(
    initial_s: float, factor: float, max_s: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> Iterator[float]:
    """The waits before retry #1, #2, …: exponential backoff with "full jitter".

    Retry *n* waits a random time in ``[0, min(max_s, initial_s * factor**(n-1))]``. The
    jitter spreads the retries of many clients that failed together (every agent of a fleet
    when the identity provider goes down) instead of bringing them back in lock-step. The
    sequence is endless; start a new one after a success. ``uniform(a, b)`` draws the wait
    (``random.uniform``; tests pass their own).
    """
    if initial_s <= 0 or max_s <= 0 or factor < 1:
        raise ValueError("backoff needs initial_s > 0, max_s > 0 and factor >= 1")
    ceiling = min(initial_s, max_s)
    while True:
        yield uniform(0.0, ceiling)
        # grows until it meets max_s, then stays there (no float overflow on long outages)
        ceiling = min(max_s, ceiling * factor)
