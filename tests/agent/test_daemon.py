"""Daemon plumbing: sd_notify against a real datagram socket, metrics endpoint, JSON logs."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from pathlib import Path

import pytest

from harmony_fleet.daemon import JsonFormatter, sd_notify, start_metrics_server
from harmony_fleet.localstack.nats_server import free_port


def test_sd_notify_without_systemd_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        if abstract:
            name = f"fleet-test-{tmp_path.name}"
            server.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            path = tmp_path / "notify"
            server.bind(str(path))
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        server.settimeout(2)
        assert sd_notify("READY=1") is True
        assert server.recv(100) == b"READY=1"


def test_sd_notify_broken_socket_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    assert sd_notify("READY=1") is False


def test_metrics_endpoint_serves_agent_metrics() -> None:
    import harmony_fleet.agent.reconciler  # noqa: F401 - registers the agent's metrics

    port = free_port()
    start_metrics_server(f"127.0.0.1:{port}")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "fleet_agent_reconciles_total" in body
    assert "fleet_agent_commands_total" in body or "fleet_agent_reconcile_seconds" in body


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("harmony_fleet.agent", logging.INFO, __file__, 1,
                               "deployment %s: %s", ("ns_web", "Running"), None)
    record.device = "pi-1"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "deployment ns_web: Running"
    assert line["logger"] == "harmony_fleet.agent"
    assert line["device"] == "pi-1"
    assert line["level"] == "info"
