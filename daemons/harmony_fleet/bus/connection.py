"""Connecting to NATS: first-connect retries with backoff, nats-py's reconnects, clean drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from itertools import chain, repeat
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from harmony_fleet.daemon import DaemonExit, LogThrottle, first_of
from harmony_fleet.errors import FleetError

from .credentials import (
    CredentialProvider,
    RefreshingCredentials,
    provider_from_settings,
    refreshing,
)
from .settings import NatsSettings
from .tls import client_ssl_context

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]


class ConnectError(FleetError, ConnectionError):
    """The first connect did not succeed within the allowed attempts (or was stopped)."""


class TlsError(ConnectError):
    """The connection failed in TLS: the server's certificate is not signed by a trusted CA
    or does not name the host connected to, the server requires TLS from a client that has no
    TLS settings, or the server refused the client's certificate."""


class WebsocketUnavailable(DaemonExit):
    """A ``ws://``/``wss://`` URL is configured but this install has no WebSocket support:
    nats-py speaks WebSocket through aiohttp, which the base install leaves out (an agent
    stays small); the ``websocket`` extra brings it. A configuration to fix (exit code 2)."""

    exit_code = 2


def check_transport(settings: NatsSettings) -> None:
    """:class:`WebsocketUnavailable` when a URL needs WebSocket and nats-py cannot speak it.

    nats-py imports aiohttp, when it is installed, as it loads its transports; nothing here
    imports it (the agent never does)."""
    websocket = [u for u in settings.urls if u.split("://", 1)[0].lower() in ("ws", "wss")]
    if not websocket:
        return
    from nats.aio import transport

    if getattr(transport, "aiohttp", None) is None:
        raise WebsocketUnavailable(
            f"the NATS URL {websocket[0]} is a WebSocket URL, and this install has no "
            "WebSocket support (nats-py needs aiohttp for it): install the package with its "
            "websocket extra, pip install 'harmony-fleet[websocket]', or use a nats:// or "
            "tls:// URL")


def tls_failure(exc: BaseException, settings: NatsSettings) -> str | None:
    """What a first-connect error means for TLS, or None when it is not about TLS (pure)."""
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError) and not settings.uses_tls:
        return ("the server requires TLS and this client has no TLS settings (its certificate "
                f"is not signed by a CA of the system: {exc.verify_message or text}): set "
                "tls_ca_file to the CA bundle that signs it, and use a tls:// URL")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the server's certificate was refused ({exc.verify_message or text}): check "
                "tls_ca_file and that the URL names a host the certificate is for")
    if "no ssl context provided" in text or (
            isinstance(exc, nats.errors.Error) and "secure connection" in text.lower()):
        return ("the server requires TLS: set tls_ca_file (the CA bundle that signs its "
                "certificate) or use a tls:// URL")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or text}"
    if settings.uses_tls and isinstance(exc, (ConnectionResetError, BrokenPipeError,
                                              asyncio.IncompleteReadError)):
        return ("the server closed the connection during the TLS handshake (does it refuse "
                "this client's certificate, or not speak TLS on this port?)")
    return None


def refused_credentials(exc: Exception) -> bool:
    """Whether nats-py's error says the server refused this client's credentials."""
    return isinstance(exc, nats.errors.AuthorizationError) or \
        "authorization violation" in str(exc).lower()


def backoff(delays: list[float]) -> Iterator[float]:
    """The delays in order, then the last one forever."""
    if not delays:
        return repeat(1.0)
    return chain(delays, repeat(delays[-1]))


class _ConnectionEvents:
    """nats-py callbacks: logged, forwarded; socket errors of the first connect collected."""

    def __init__(self, name: str, disconnected: Callback | None, reconnected: Callback | None,
                 closed: Callback | None, settings: NatsSettings | None = None) -> None:
        self.name = name
        self.connected = False
        #: the connected client (for the reconnect wait), and that wait's bounds
        self.client: NatsClient | None = None
        self.wait_s = settings.reconnect_wait_s if settings else 1.0
        self.wait_max_s = max(self.wait_s,
                              settings.refused_reconnect_wait_max_s if settings else 30.0)
        # errors seen during the first connect; reported once per attempt, not per socket error
        self.first_connect_errors: list[Exception] = []
        self._forward = {"disconnected": disconnected, "reconnected": reconnected,
                         "closed": closed}
        self._throttle = LogThrottle(interval_s=10.0)

    def options(self) -> dict[str, Any]:
        return {"error_cb": self.on_error, "disconnected_cb": self._cb("disconnected"),
                "reconnected_cb": self._cb("reconnected"), "closed_cb": self._cb("closed")}

    async def on_error(self, exc: Exception) -> None:
        if not self.connected:
            self.first_connect_errors.append(exc)
            return
        if self.client is not None and refused_credentials(exc):
            # nats-py would ask again every reconnect_time_wait, forever: back off instead
            options = self.client.options
            options["reconnect_time_wait"] = min(
                self.wait_max_s, max(self.wait_s, options["reconnect_time_wait"] * 2))
        # nats-py reports every message it drops (slow consumer) or may not publish: say it
        # once per kind and interval, with how many more there were
        kind = type(exc).__name__
        suppressed = self._throttle.allow(kind, time.monotonic())
        if suppressed is not None:
            more = f" ({suppressed} more since the last one)" if suppressed else ""
            log.warning("nats client error: %s%s", exc, more, extra={"client": self.name})

    def _cb(self, what: str) -> Callback:
        async def callback() -> None:
            log.info("nats connection %s", what, extra={"client": self.name})
            if what == "reconnected" and self.client is not None:
                self.client.options["reconnect_time_wait"] = self.wait_s
            forward = self._forward[what]
            if forward is not None:
                await forward()
        return callback


def _first_connect_options(settings: NatsSettings, name: str) -> dict[str, Any]:
    check_transport(settings)
    context = client_ssl_context(settings)
    return {
        **({"tls": context} if context is not None else {}),
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

    events = _ConnectionEvents(name, disconnected_cb, reconnected_cb, closed_cb, settings)
    while True:
        attempt += 1
        events.first_connect_errors.clear()
        options = _first_connect_options(settings, name)
        options.update(events.options())
        if inbox_prefix:
            options["inbox_prefix"] = inbox_prefix
        try:
            renewing = refreshing(creds)
            if renewing is not None:  # token providers fetch their first token here
                await renewing.prepare()
            nc = await nats.connect(**options, **creds.connect_options())
        except Exception as raised:  # nats-py raises a variety of types here
            # "no servers available" hides the cause: report the last socket/auth error
            exc = events.first_connect_errors[-1] if events.first_connect_errors else raised
            reason = str(exc) or type(exc).__name__  # TimeoutError has no message
            tls_reason = tls_failure(exc, settings)
            reason = tls_reason or reason
            total = f"/{limit}" if limit else ""
            if limit is not None and attempt >= limit:
                raise (TlsError if tls_reason else ConnectError)(
                    f"could not connect to {', '.join(settings.urls)} as {creds.describe()} "
                    f"after {attempt} attempt(s): {reason}"
                ) from raised
            delay = next(delays)
            log.warning(
                "connect attempt #%d%s to %s failed: %s; will retry in %.1fs",
                attempt, total, ",".join(settings.urls), reason, delay,
                extra={"client": name},
            )
            await first_of(stop or asyncio.Event(), timeout=delay)
            if stop is not None and stop.is_set():
                raise ConnectError("stopped while connecting") from raised
            continue
        events.connected, events.client = True, nc
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


#: how often a bounded drain looks whether its connection is still up
_DRAIN_POLL_S = 0.05


def _lost(nc: NatsClient) -> bool:
    """The connection went down and nats-py is trying to get it back (a closing connection
    is not lost: its drain is finishing)."""
    return bool(nc.is_reconnecting or nc.is_connecting)


async def _while_connected(nc: NatsClient, work: Awaitable[Any], timeout: float,
                           what: str) -> bool:
    """Run ``work`` until it ends, ``timeout`` passes or ``nc`` loses its server; True if it
    ended by itself.

    Draining needs the server (an UNSUB and a PING/PONG round trip): once the connection is
    down nothing can be answered any more, and nats-py would wait out its own 10 s flush
    timeout. nats-py's ``Client.drain`` also swallows the first cancellation (and then
    flushes), so the work is cancelled until it has really ended; its outcome is always
    retrieved here, so nothing is left to report "exception was never retrieved"."""
    task = asyncio.ensure_future(work)
    deadline = time.monotonic() + timeout
    try:
        while not task.done() and not _lost(nc) and time.monotonic() < deadline:
            await asyncio.wait({task}, timeout=min(_DRAIN_POLL_S,
                                                   max(0.0, deadline - time.monotonic())))
    finally:  # also when our caller is cancelled: the work must not outlive us
        ended = task.done()
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=_DRAIN_POLL_S)
    if task.cancelled():
        log.debug("%s: stopped after %.1fs or a lost connection", what, timeout)
        return False
    exc = task.exception()
    if exc is not None:
        log.debug("%s failed: %s", what, exc)
        return False
    return ended


#: How long a queue-group member keeps handling messages after its UNSUB was acknowledged.
#: nats-server matches a message against the group before it delivers it: a match made just
#: before another connection's UNSUB can reach that connection after its PONG, when nats-py has
#: already forgotten the subscription and drops the message. The request is then lost (measured
#: on a loaded 2-core machine, four requesters, one member moving to a new connection every
#: 50 ms: 13 messages dropped that way in 361 moves; with 0.2 s here, none in 78 moves).
QUEUE_HANDOVER_S = 0.3


async def drain_subscription(nc: NatsClient, sub: Subscription, timeout: float, *,
                             handover_s: float = 0.0) -> bool:
    """Stop taking messages on ``sub`` but handle those already delivered (bounded by
    ``timeout``, and only while the connection is up: afterwards nobody could be answered);
    True if every delivered message was handled. The subscription is gone either way.

    ``handover_s``: for a queue-group member whose group lives on (another member takes over),
    keep handling late deliveries that long after the server acknowledged the UNSUB (see
    :data:`QUEUE_HANDOVER_S`)."""
    if nc.is_connected:
        if handover_s > 0:
            await _while_connected(nc, _withdraw_interest(nc, sub, handover_s),
                                   timeout, "handing a queue subscription over")
        drained = await _while_connected(
            nc, sub.drain(), timeout, "draining a subscription")  # type: ignore[no-untyped-call]
        if drained:
            return True
    with contextlib.suppress(nats.errors.Error):  # closed or already drained
        await sub.unsubscribe()
    return False


async def _withdraw_interest(nc: NatsClient, sub: Subscription, linger_s: float) -> None:
    """UNSUB ``sub`` at the server but keep it in nats-py for ``linger_s`` after the PONG, so a
    message the server matched before the UNSUB still reaches its callback. nats-py has no
    public call for this (its drain forgets the subscription at once); the sid and the UNSUB
    are its own, read defensively: with a nats-py that lacks them, this is a plain drain."""
    sid = getattr(sub, "_id", None)
    unsubscribe = getattr(nc, "_send_unsubscribe", None)
    if not isinstance(sid, int) or unsubscribe is None:
        return
    await unsubscribe(sid)
    await nc.flush()
    await asyncio.sleep(linger_s)


async def drain(nc: NatsClient, timeout: float = 5.0) -> None:
    """Drain (flush pending publishes, let subscriptions finish) then close; bounded by
    ``timeout``, and cut short when the server goes away meanwhile."""
    if nc.is_closed:
        return
    if nc.is_connected and not nc.is_draining:
        await _while_connected(nc, nc.drain(), timeout, "draining the connection")
    if not nc.is_closed:
        try:
            await nc.close()
        except OSError as exc:
            # nats-py writes what is still buffered as it closes; with the server gone that
            # write fails (ConnectionResetError) after the client is already marked closed.
            # Nothing could have been sent anyway, and a daemon stopping while its server is
            # down must not fail on it (the agent exited 1 on SIGTERM then)
            log.debug("closed a connection whose server is gone: %s", exc)


async def keep_authenticated(
    nc: NatsClient, credentials: CredentialProvider, stop: asyncio.Event
) -> None:
    """Refresh tokens and re-authenticate ``nc`` in place after each refresh (until ``stop``).

    The NATS user JWT the callout issues expires with the token it was made from, and nats-py
    does not recover once the server says so; reconnecting with the fresh token before then
    keeps the connection (subscriptions and KV watches survive a reconnect). A reply in flight
    at that moment can be lost: clients that must not lose one use
    :class:`RotatingConnection` instead. Returns at once for static credentials.
    """
    renewing = refreshing(credentials)
    if renewing is None:
        await stop.wait()
        return
    refresher = asyncio.create_task(renewing.run(stop), name="token-refresh")
    try:
        while await _next_refresh(renewing, stop):
            if nc.is_connected:
                log.info("re-authenticating with the refreshed token")
                await nc.force_reconnect()
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher


async def _next_refresh(credentials: RefreshingCredentials, stop: asyncio.Event) -> bool:
    """Wait for the next refresh (True) or ``stop`` (False)."""
    credentials.refreshed.clear()
    await first_of(credentials.refreshed, stop)
    return not stop.is_set()


class RotatingConnection:
    """A client connection that outlives its tokens without losing a reply.

    After each credentials refresh it connects again with the fresh token (make before
    break): new work :meth:`borrow`-s the new connection, and the old one is drained once the
    work it carries is done (at most ``retire_after_s``). A reconnect in place would drop a
    reply that arrives while the connection is down. ``closed`` is set when the current
    connection closes for good. Static credentials keep one connection.
    """

    def __init__(self, settings: NatsSettings, *, name: str,
                 credentials: CredentialProvider | None = None,
                 retire_after_s: float = 60.0) -> None:
        self._settings = settings
        self._name = name
        self._credentials = credentials or provider_from_settings(settings.auth)
        self._retire_after = retire_after_s
        self._current: NatsClient | None = None
        self._users: dict[NatsClient, int] = {}
        self._idle: dict[NatsClient, asyncio.Event] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self.rotations = 0

    async def _connect(self) -> NatsClient:
        box: list[NatsClient] = []

        async def on_closed() -> None:
            if box and box[0] is self._current:
                self.closed.set()

        nc = await connect(self._settings, name=self._name, credentials=self._credentials,
                           closed_cb=on_closed)
        box.append(nc)
        self._users[nc] = 0
        self._idle[nc] = asyncio.Event()
        self._idle[nc].set()
        return nc

    async def open(self) -> None:
        """The first connection (raises :class:`ConnectError`)."""
        self._current = await self._connect()

    @property
    def current(self) -> NatsClient:
        if self._current is None:
            raise ConnectError("not connected: call open() first")
        return self._current

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[NatsClient]:
        """The current connection, kept open until the caller is done with it."""
        nc = self.current
        self._users[nc] += 1
        self._idle[nc].clear()
        try:
            yield nc
        finally:
            self._users[nc] -= 1
            if self._users[nc] == 0:
                self._idle[nc].set()

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh the credentials and rotate the connection after each refresh, until stop."""
        renewing = refreshing(self._credentials)
        if renewing is None:
            await stop.wait()
            return
        refresher = asyncio.create_task(renewing.run(stop), name="token-refresh")
        try:
            while await _next_refresh(renewing, stop):
                try:
                    fresh = await self._connect()
                except ConnectError as exc:  # keep the old one while its token lasts
                    log.warning("could not open a connection with the refreshed token: %s",
                                exc, extra={"client": self._name})
                    continue
                old, self._current = self._current, fresh
                self.rotations += 1
                log.info("moved to a connection with the refreshed token",
                         extra={"client": self._name})
                if old is not None:
                    task = asyncio.create_task(self._retire(old))
                    self._retiring.add(task)
                    task.add_done_callback(self._retiring.discard)
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher

    async def _retire(self, nc: NatsClient) -> None:
        await first_of(self._idle[nc], timeout=self._retire_after)
        await drain(nc, timeout=self._settings.drain_timeout_s)
        self._users.pop(nc, None)
        self._idle.pop(nc, None)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for nc in list(self._users):
            await drain(nc, timeout=self._settings.drain_timeout_s)
        self._users.clear()
        self._current = None
