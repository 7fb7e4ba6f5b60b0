"""Connecting to NATS: first-connect retries with backoff, nats-py's reconnects, clean drain."""

from __future__ import annotations

import asyncio
import contextlib
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


class _ConnectionEvents:
    """nats-py callbacks: logged, forwarded; socket errors of the first connect collected."""

    def __init__(self, name: str, disconnected: Callback | None, reconnected: Callback | None,
                 closed: Callback | None) -> None:
        self.name = name
        self.connected = False
        # errors seen during the first connect; reported once per attempt, not per socket error
        self.first_connect_errors: list[Exception] = []
        self._forward = {"disconnected": disconnected, "reconnected": reconnected,
                         "closed": closed}

    def options(self) -> dict[str, Any]:
        return {"error_cb": self.on_error, "disconnected_cb": self._cb("disconnected"),
                "reconnected_cb": self._cb("reconnected"), "closed_cb": self._cb("closed")}

    async def on_error(self, exc: Exception) -> None:
        if not self.connected:
            self.first_connect_errors.append(exc)
            return
        log.warning("nats client error: %s", exc, extra={"client": self.name})

    def _cb(self, what: str) -> Callback:
        async def callback() -> None:
            log.info("nats connection %s", what, extra={"client": self.name})
            forward = self._forward[what]
            if forward is not None:
                await forward()
        return callback


def _first_connect_options(settings: NatsSettings, name: str) -> dict[str, Any]:
    return {
        "servers": settings.urls,
        "name": name,
        "connect_timeout": settings.connect_timeout_s,
        # nats-py's own server selection loops forever on a failing *first* connect when
        # reconnect attempts are unlimited. We want our own bounded, logged backoff there, so
        # the first connect tries each server at most twice, without waiting, and unlimited
        # reconnects are switched on once connected (in connect()).
        "reconnect_time_wait": 0,
        "max_reconnect_attempts": 1,
        "allow_reconnect": False,
        "drain_timeout": settings.drain_timeout_s,
    }


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

    events = _ConnectionEvents(name, disconnected_cb, reconnected_cb, closed_cb)
    while True:
        attempt += 1
        events.first_connect_errors.clear()
        options = _first_connect_options(settings, name)
        options.update(events.options())
        if inbox_prefix:
            options["inbox_prefix"] = inbox_prefix
        try:
            prepare = getattr(creds, "prepare", None)
            if prepare is not None:  # token providers fetch their first token here
                await prepare()
            nc = await nats.connect(**options, **creds.connect_options())
        except Exception as raised:  # nats-py raises a variety of types here
            # "no servers available" hides the cause: report the last socket/auth error
            exc = events.first_connect_errors[-1] if events.first_connect_errors else raised
            reason = str(exc) or type(exc).__name__  # TimeoutError has no message
            total = f"/{limit}" if limit else ""
            if limit is not None and attempt >= limit:
                raise ConnectError(
                    f"could not connect to {', '.join(settings.urls)} as {creds.describe()} "
                    f"after {attempt} attempt(s): {reason}"
                ) from raised
            delay = next(delays)
            log.warning(
                "connect attempt #%d%s to %s failed: %s; will retry in %.1fs",
                attempt, total, ",".join(settings.urls), reason, delay,
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
        events.connected = True
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


async def keep_authenticated(
    nc: NatsClient, credentials: CredentialProvider, stop: asyncio.Event
) -> None:
    """For refreshing credentials: refresh tokens and re-authenticate after each refresh.

    The NATS user JWT the callout issues expires with the token it was made from, and nats-py
    does not recover once the server says so; reconnecting with the fresh token before then
    keeps the connection (subscriptions survive a reconnect). Returns at once for static
    credentials.
    """
    run = getattr(credentials, "run", None)
    refreshed: asyncio.Event | None = getattr(credentials, "refreshed", None)
    if run is None or refreshed is None:
        await stop.wait()
        return
    refresher = asyncio.create_task(run(stop), name="token-refresh")
    try:
        refreshed.clear()
        while not stop.is_set():
            waiter = asyncio.ensure_future(refreshed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                break
            refreshed.clear()
            if nc.is_connected:
                log.info("re-authenticating with the refreshed token")
                await nc.force_reconnect()
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
