"""What ``fleet-agent`` loads: none of the packages that cost a device's memory for nothing
(benchmarks/bench_agent_memory.py measures them), and metrics only when served."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harmony_fleet import metrics

#: jwt/cryptography: ~11 MiB (the agent's RS256 and sealing are harmony_fleet.purecrypto);
#: pydantic_settings (and python-dotenv): harmony_fleet.config reads TOML and the environment;
#: prometheus_client: ~2 MiB, loaded only when [metrics] listen is set. (aiohttp is kept off
#: devices by the wheelhouse, tests/integration/test_wheelhouse_resolve.py: nats-py imports it
#: whenever it is installed, as it is here.)
NOT_ON_A_DEVICE = ["jwt", "cryptography", "cffi", "prometheus_client", "yaml",
                   "pydantic_settings", "dotenv"]

_PROBE = """
import json, sys
import harmony_fleet.agent.main, harmony_fleet.agent.app, harmony_fleet.bus.tokens
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _loaded(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    return set(json.loads(out))


def test_the_agent_loads_no_heavy_package() -> None:
    loaded = _loaded(_PROBE)
    assert "harmony_fleet" in loaded
    assert not loaded & set(NOT_ON_A_DEVICE), sorted(loaded & set(NOT_ON_A_DEVICE))


def test_serving_metrics_loads_prometheus_and_makes_the_agents_metrics_real() -> None:
    code = ("import json, sys\nimport harmony_fleet.agent.main\n"
            "from harmony_fleet import metrics\nfrom harmony_fleet.agent.reconciler import "
            "RECONCILES\nassert RECONCILES.real is None\nmetrics.enable()\n"
            "RECONCILES.labels(outcome='applied').inc()\n"
            "from prometheus_client import REGISTRY\n"
            "print(json.dumps([REGISTRY.get_sample_value('fleet_agent_reconciles_total', "
            "{'outcome': 'applied'})]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    assert json.loads(out) == [1.0]


def test_a_metric_is_a_no_op_until_enabled() -> None:
    # the harness enabled metrics for this process (in-process agents are counted)
    assert metrics.enabled()
    late = metrics.LazyMetric("Counter", "fleet_test_lazy_total", "a test counter", ["x"])
    late.labels(x="1").inc()
    assert late.real is not None
    assert late.real.labels(x="1")._value.get() == 1


@pytest.mark.parametrize("kind", ["Counter", "Histogram"])
def test_disabled_metrics_accept_every_call(kind: str) -> None:
    metric = metrics.LazyMetric.__new__(metrics.LazyMetric)
    metric.real = None  # as declared before enable()
    metric.labels(a="b").inc()
    metric.labels(a="b").observe(1.0)
    metric.inc()
    metric.observe(0.5)
