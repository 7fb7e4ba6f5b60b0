"""What every long-running process here shares: logging, the stop flag, task supervision and
the metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from harmony_fleet.errors import FleetError

log = logging.getLogger(__name__)


class DaemonExit(FleetError):
    """A daemon must stop and exit with ``exit_code``: a condition its operator must fix (the
    message says what), not a crash (no traceback)."""

    exit_code = 1


# LogRecord attributes that are not user context.
_STANDARD_ATTRS = set(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ContextFormatter(logging.Formatter):
    """Human format with the ``extra`` context appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        ctx = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
        )
        return f"{base} {ctx}" if ctx else base


@dataclass
class LogThrottle:
    """Say something at most once per ``interval_s`` for each key (a flood of the same event
    -- refused reports, dropped messages -- must not flood the log); ``now`` is monotonic."""

    interval_s: float
    _last: dict[str, float] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)
    max_keys: int = 10_000

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet. Otherwise log now; the value is how many were suppressed since."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if len(self._last) >= self.max_keys:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            self._suppressed = {k: n for k, n in self._suppressed.items() if k in self._last}
        self._last[key] = now
        return self._suppressed.pop(key, 0)


def setup_logging(level: str = "info", json_logs: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py logs every reconnect attempt at error level; our callbacks say it better.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)


async def first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return when any of ``events`` is set, or after ``timeout``: the one helper for
    "sleep until the interval or an event" (which one happened, the events say)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (the one stop flag); a second signal is ignored."""
    loop = asyncio.get_running_loop()

    def _on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("received %s, stopping", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig)


async def supervise(
    tasks: Mapping[str, Coroutine[Any, Any, Any]],
    stop: asyncio.Event,
    *,
    shutdown_timeout: float = 10.0,
    grace_s: float = 0.0,
) -> None:
    """Run named root tasks until ``stop`` is set or one of them ends.

    The first task to finish (or fail) sets ``stop``; the others get ``grace_s`` to end by
    themselves (tasks that watch ``stop`` and clean up on their way out — drain a
    subscription, answer what was delivered — must not be cancelled in the middle of it),
    then are cancelled; cancellation is bounded by ``shutdown_timeout``. A failure is logged
    and re-raised after cleanup.
    """
    running = {asyncio.create_task(coro, name=name): name for name, coro in tasks.items()}
    stopper = asyncio.create_task(stop.wait(), name="stop-flag")
    done, _pending = await asyncio.wait([*running, stopper],
                                        return_when=asyncio.FIRST_COMPLETED)
    failure = _outcomes(running, done, "")
    for task in done:
        if task in running and not task.cancelled() and task.exception() is None:
            log.info("task %s finished; stopping the others", running[task])
    stop.set()
    pending = {t for t in running if not t.done()}
    if pending and grace_s > 0:
        ended, pending = await asyncio.wait(pending, timeout=grace_s)
        failure = _outcomes(running, ended, " while stopping") or failure
    for task in pending:
        task.cancel()
    if pending:
        ended, still = await asyncio.wait(pending, timeout=shutdown_timeout)
        failure = _outcomes(running, ended, " after it was cancelled") or failure
        for task in still:
            log.error("task %s did not stop within %.0fs", task.get_name(), shutdown_timeout)
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopper
    if failure is not None:
        raise failure


def _outcomes(running: Mapping[asyncio.Task[Any], str], ended: set[asyncio.Task[Any]],
              when: str) -> BaseException | None:
    """Log every failure among ``ended`` (retrieving each, so asyncio has nothing left to
    report as "never retrieved"); return one of them."""
    failure: BaseException | None = None
    for task in ended:
        if task not in running or task.cancelled():
            continue
        exc = task.exception()
        if isinstance(exc, DaemonExit):  # a condition to fix, said once by the caller
            log.debug("task %s stopped the daemon%s: %s", running[task], when, exc)
        elif exc is not None:
            log.error("task %s failed%s: %r", running[task], when, exc, exc_info=exc)
        failure = failure or exc
    return failure


def start_metrics_server(listen: str) -> None:
    """Serve Prometheus metrics on ``host:port`` (in a daemon thread); the metrics declared
    with :mod:`harmony_fleet.metrics` become real first."""
    from prometheus_client import start_http_server

    from harmony_fleet import metrics

    metrics.enable()
    host, _colon, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1")
    log.info("metrics on http://%s:%s/metrics", host or "127.0.0.1", port)


def sd_notify(state: str) -> bool:
    """Tell systemd about our state (``READY=1``, ``STOPPING=1``…) for ``Type=notify`` units.

    A no-op returning False when not started by systemd (no ``NOTIFY_SOCKET``); never raises.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", state, exc)
        return False
    return True
