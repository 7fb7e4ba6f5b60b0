"""Connecting to NATS: first-connect retries with backoff, nats-py's reconnects, clean drain."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from itertools import chain, repeat
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from .credentials import CredentialProvider, provider_from_settings
from .settings import NatsSettings

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]


class ConnectError(ConnectionError):
    """The first connect did not succeed within the allowed attempts (or was stopped)."""


def backoff(delays: list[float]) -> Iterator[float]:
    """The delays in order, then the last one forever."""
    if not delays:
        return repeat(1.0)
    return chain(delays, repeat(delays[-1]))


async def connect(
    settings: NatsSettings,
    *,
    name: str,
    credentials: CredentialProvider | None = None,
    inbox_prefix: str | None = None,
    stop: asyncio.Event | None = None,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    closed_cb: Callback | None = None,
) -> NatsClient:
    """Connect, retrying the first connect with the settings' backoff.

    Raises :class:`ConnectError` when ``settings.connect_attempts`` is exhausted or ``stop``
    is set while waiting. After the first success nats-py reconnects on its own, forever.
    """
    creds = credentials or provider_from_settings(settings.auth)
    delays = backoff(settings.connect_backoff_s)
    attempt = 0
    limit = settings.connect_attempts

    # errors seen during the first connect; reported once per attempt, not per socket error
    first_connect_errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if not connected:
            first_connect_errors.append(exc)
            return
        log.warning("nats client error: %s", exc, extra={"client": name})

    async def on_disconnect() -> None:
        log.info("nats disconnected", extra={"client": name})
        if disconnected_cb:
            await disconnected_cb()

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"client": name})
        if reconnected_cb:
            await reconnected_cb()

    async def on_closed() -> None:
        log.info("nats connection closed", extra={"client": name})
        if closed_cb:
            await closed_cb()

    connected = False
    while True:
        attempt += 1
        first_connect_errors.clear()
        options: dict[str, Any] = dict(
            servers=settings.urls,
            name=name,
            connect_timeout=settings.connect_timeout_s,
            # nats-py's own server selection loops forever on a failing *first* connect
            # when reconnect attempts are unlimited. We want our own bounded, logged backoff
            # there, so the first connect tries each server at most twice, without waiting,
            # and unlimited reconnects are switched on once connected (below).
            reconnect_time_wait=0,
            max_reconnect_attempts=1,
            allow_reconnect=False,
            drain_timeout=settings.drain_timeout_s,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            closed_cb=on_closed,
            **creds.connect_options(),
        )
        if inbox_prefix:
            options["inbox_prefix"] = inbox_prefix
        try:
            nc = await nats.connect(**options)
        except Exception as raised:  # nats-py raises a variety of types here
            # "no servers available" hides the cause: report the last socket/auth error
            exc = first_connect_errors[-1] if first_connect_errors else raised
            total = f"/{limit}" if limit else ""
            if limit is not None and attempt >= limit:
                raise ConnectError(
                    f"could not connect to {', '.join(settings.urls)} as {creds.describe()} "
                    f"after {attempt} attempt(s): {exc}"
                ) from raised
            delay = next(delays)
            log.warning(
                "connect attempt #%d%s to %s failed: %s; will retry in %.1fs",
                attempt, total, ",".join(settings.urls), exc, delay,
                extra={"client": name},
            )
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    continue
                raise ConnectError("stopped while connecting") from raised
            continue
        connected = True
        nc.options.update(
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=settings.reconnect_wait_s,
        )
        log.info(
            "connected to %s as %s", nc.connected_url.netloc if nc.connected_url else "?",
            creds.describe(), extra={"client": name},
        )
        return nc


async def drain(nc: NatsClient, timeout: float = 5.0) -> None:
    """Drain (flush pending publishes, let subscriptions finish) then close; bounded."""
    if nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), timeout=timeout)
    except Exception as exc:  # drain on a broken connection: closing is what matters
        log.debug("drain failed (%s); closing", exc)
    if not nc.is_closed:
        await nc.close()
