"""``fleet stack up --cluster 3 --tls``: the routes between the local stack's servers are TLS
too, rendered by ``natsconf.cluster_configs``' ``route_tls`` (what the Kubernetes ``nats`` role's
``nats_cluster_tls`` renders), and the cluster forms over them; with ``--websocket`` every
member has its own ``wss://`` listener."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from harmony_fleet.localstack.services import start_services

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def test_a_tls_cluster_routes_over_verified_tls(tmp_path: Path) -> None:
    services = start_services(tmp_path / "kube-cluster-tls", cluster=3, tls=True, websocket=True)
    try:
        names = set()
        for server in services.servers:
            assert server.monitor_url is not None
            varz = _get(f"{server.monitor_url}/varz")
            cluster = varz["cluster"]
            assert isinstance(cluster, dict)
            assert cluster.get("tls_required") is True, cluster
            assert cluster.get("tls_verify") is True, cluster
            names.add(varz["server_name"])
            deadline = time.monotonic() + 15
            while True:  # every route up (JetStream already answers: a majority is)
                routez = _get(f"{server.monitor_url}/routez")
                peers = {r["remote_name"] for r in routez["routes"] or []}  # type: ignore[union-attr]
                if len(peers) == 2:
                    break
                assert time.monotonic() < deadline, routez
                time.sleep(0.2)
            assert "ca_file" in server.config_file.read_text().split("cluster {", 1)[1]
        assert len(names) == 3
        assert len(set(services.websocket_urls)) == 3
        assert all(u.startswith("wss://127.0.0.1:") for u in services.websocket_urls)
    finally:
        services.stop()
