"""Prometheus metrics that cost nothing until a daemon serves them.

``prometheus_client`` adds ~2 MiB to a process (its import and registry;
``benchmarks/bench_agent_memory.py``), and a device agent serves metrics only when its config
sets ``[metrics] listen``. So the agent declares its metrics here: a declared metric is a
placeholder that does nothing until :func:`enable` (called by
:func:`harmony_fleet.daemon.start_metrics_server` before it serves, or by a test harness that
reads the counters) creates the real ``prometheus_client`` metric, with the same name, help,
labels and buckets, for every metric declared before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_declared: list[LazyMetric] = []
_enabled = False


class _Nothing:
    """What a metric's ``labels(...)`` is while metrics are off: it accepts and drops."""

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_NOTHING = _Nothing()


class LazyMetric:
    """A ``prometheus_client`` Counter or Histogram, real once :func:`enable` ran."""

    def __init__(self, kind: str, name: str, documentation: str,
                 labelnames: Sequence[str] = (), **options: Any) -> None:
        self.kind, self.name, self.documentation = kind, name, documentation
        self.labelnames, self.options = tuple(labelnames), options
        self.real: Any = None
        _declared.append(self)
        if _enabled:
            self._create()

    def _create(self) -> None:
        if self.real is None:
            import prometheus_client

            factory = getattr(prometheus_client, self.kind)
            self.real = factory(self.name, self.documentation, self.labelnames, **self.options)

    def labels(self, *values: str, **labels: str) -> Any:
        return self.real.labels(*values, **labels) if self.real is not None else _NOTHING

    def inc(self, amount: float = 1) -> None:
        if self.real is not None:
            self.real.inc(amount)

    def observe(self, amount: float) -> None:
        if self.real is not None:
            self.real.observe(amount)


def Counter(name: str, documentation: str, labelnames: Sequence[str] = ()) -> LazyMetric:
    return LazyMetric("Counter", name, documentation, labelnames)


def Histogram(name: str, documentation: str, labelnames: Sequence[str] = (),
              **options: Any) -> LazyMetric:
    return LazyMetric("Histogram", name, documentation, labelnames, **options)


def enable() -> None:
    """Make every declared metric (and every one declared later) a real one. Idempotent."""
    global _enabled  # noqa: PLW0603 - one switch for the process, like prometheus' registry
    _enabled = True
    for metric in _declared:
        metric._create()


def enabled() -> bool:
    return _enabled
