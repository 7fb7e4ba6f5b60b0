"""harmony.fleet.fleet_device_info, and fleet_logs / fleet_exec against agents without a
container runtime, from the real ``ansible``/``ansible-playbook`` and ``fleet stack up``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from .conftest import CliStack, task_results, write_play

pytestmark = pytest.mark.ansible


def test_device_info_of_a_live_device(cli_stack: CliStack, tmp_path: Path) -> None:
    d0 = cli_stack.devices[0]
    doc = cli_stack.playbook(write_play(tmp_path, [
        {"name": "desire", "harmony.fleet.fleet_kv": {
            "key": f"{d0}.ops_info", "value": {"services": [{"name": "web",
                                                            "image": "localhost/x:1"}]}}},
        {"name": "info", "harmony.fleet.fleet_device_info": {"device_id": d0}},
    ]), "--check")
    info = task_results(doc, "info")
    assert info.get("failed") is not True, info
    assert info["changed"] is False
    assert info["device_id"] == d0
    assert info["online"] is True
    assert info["offline_after"] == 30.0
    assert info["last_seen"]
    assert info["labels"] == {"site": "lab"}
    assert info["runtime_enabled"] is False
    assert info["inventory"]["podman_version"] is None
    assert info["agent_version"]
    # check mode: the fleet_kv write did not happen, so no deployment is desired yet
    assert info["deployments"] == []

    doc = cli_stack.playbook(write_play(tmp_path, [
        {"name": "desire", "harmony.fleet.fleet_kv": {
            "key": f"{d0}.ops_info", "value": {"services": [{"name": "web",
                                                            "image": "localhost/x:1"}]}}},
        {"name": "info", "harmony.fleet.fleet_device_info": {"device_id": d0}},
    ], "real.yml"))
    (row,) = task_results(doc, "info")["deployments"]
    assert row["deployment"] == "ops_info"
    assert row["namespace"] == "ops"
    assert row["name"] == "info"
    assert row["desired"] is True
    assert row["desired_revision"] == task_results(doc, "desire")["revision"]
    assert row["spec_hash"]
    # an agent without a container runtime reports nothing about workloads
    assert row["phase"] is None
    assert row["up_to_date"] is False


def test_device_info_per_inventory_host(cli_stack: CliStack) -> None:
    results = cli_stack.adhoc_results("-i", "inventories/local", "all", "-m",
                                      "harmony.fleet.fleet_device_info")
    assert sorted(results) == cli_stack.devices
    for host, res in results.items():
        assert res["device_id"] == host
        assert res["online"] is True


def test_unknown_and_invalid_devices(cli_stack: CliStack) -> None:
    results = cli_stack.adhoc_results("-i", "ghost-7,Not_A_Device,", "all", "-c", "local",
                                      "-m", "harmony.fleet.fleet_device_info")
    ghost = results["ghost-7"]
    assert ghost["failed"] is True
    assert ghost["error"] == "DeviceNotFound"
    assert "device ghost-7 not found" in ghost["msg"]
    bad = results["Not_A_Device"]
    assert bad["error"] == "InvalidInput"
    assert "DNS-1123" in bad["msg"]


def test_logs_and_exec_on_an_agent_without_runtime_are_unsupported(cli_stack: CliStack) -> None:
    d0 = cli_stack.devices[0]
    for module, extra in (("fleet_logs", ""), ("fleet_exec", " argv=echo")):
        results = cli_stack.adhoc_results(
            "-i", f"{d0},", "all", "-c", "local", "-m", f"harmony.fleet.{module}",
            "-a", f"deployment=ops_info service=web{extra}")
        res = results[d0]
        assert res["failed"] is True, res
        assert res["error"] == "RemoteError"
        assert res["kind"] == "Unsupported"
        assert "runs without a container runtime" in res["msg"]


def test_offline_device(cli_stack: CliStack) -> None:
    # last in this module: it stops the second device for good
    d1 = cli_stack.devices[1]
    pid = next(d["pid"] for d in cli_stack.state["devices"] if d["device_id"] == d1)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    time.sleep(1.5)  # older than the threshold below: no heartbeat comes any more
    results = cli_stack.adhoc_results(
        "-i", f"{d1},", "all", "-c", "local", "-m", "harmony.fleet.fleet_device_info",
        "-a", "offline_after=1")
    info = results[d1]
    assert info["online"] is False
    assert info["offline_after"] == 1.0
    assert info["last_seen"]
    for module, extra in (("fleet_ping", ""), ("fleet_logs", "deployment=ops_info service=web"),
                          ("fleet_exec", "deployment=ops_info service=web argv=echo")):
        res = cli_stack.adhoc_results("-i", f"{d1},", "all", "-c", "local", "-m",
                                      f"harmony.fleet.{module}", "-a", extra)[d1]
        assert res["error"] == "DeviceOffline", (module, res)
