"""``ansible -m harmony.fleet.fleet_ping`` and the fleet inventory against ``fleet stack up``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .conftest import BIN, REPO, CliStack


def test_stack_up_json_names_everything_a_developer_needs(cli_stack: CliStack) -> None:
    state = cli_stack.state
    assert state["nats_url"].startswith("nats://127.0.0.1:")
    # callout mode (the default): per-device machine keys, an admin machine key, the issuer
    assert state["auth_mode"] == "callout"
    assert state["connection"]["auth"]["mode"] == "zitadel"
    assert state["issuer"]["url"].startswith("http://127.0.0.1:")
    for device in state["devices"]:
        key = json.loads(Path(device["key_file"]).read_text())
        assert set(key) >= {"type", "keyId", "key", "userId"}
        assert oct(Path(device["key_file"]).stat().st_mode & 0o777) == "0o600"
    prefix = cli_stack.prefix
    assert [d["device_id"] for d in state["devices"]] == [f"{prefix}-0", f"{prefix}-1"]
    assert state["startup_s"] > 0
    assert state["state_file"] == str(cli_stack.state_file)
    # callout mode: the state holds no secret (key files are named), so stdout shows all of it
    on_disk = json.loads(cli_stack.state_file.read_text())
    assert on_disk == {k: v for k, v in state.items() if k not in ("startup_s", "state_file")}
    assert oct(cli_stack.state_file.stat().st_mode & 0o777) == "0o600"


def plain(value: Any) -> Any:
    """Drop ansible-inventory's ``{"__ansible_unsafe": ...}`` wrappers."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def test_inventory_lists_stack_devices_with_groups(cli_stack: CliStack) -> None:
    out = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", "inventories/local", "--list"],
        cwd=REPO, env=cli_stack.env, capture_output=True, text=True, timeout=60, check=True,
    )
    inv = json.loads(out.stdout)
    assert sorted(inv["fleet"]["hosts"]) == cli_stack.devices
    assert sorted(inv["fleet_online"]["hosts"]) == cli_stack.devices
    assert sorted(inv["label_site_lab"]["hosts"]) == cli_stack.devices
    hostvars = plain(inv["_meta"]["hostvars"][cli_stack.devices[0]])
    assert hostvars["fleet_device_id"] == cli_stack.devices[0]
    assert hostvars["fleet_labels"] == {"site": "lab"}
    assert hostvars["fleet_runtime_enabled"] is False


def test_adhoc_ping_live_devices(cli_stack: CliStack) -> None:
    results = cli_stack.adhoc_results("-i", "inventories/local", "all", "-m",
                                      "harmony.fleet.fleet_ping")
    assert sorted(results) == cli_stack.devices
    for host, res in results.items():
        assert res.get("failed") is not True, res
        assert res["ping"] == "pong"
        assert res["changed"] is False
        assert res["reply"]["device_id"] == host
        assert set(res["reply"]) == {"device_id", "agent_version", "uptime_s"}


def test_adhoc_ping_unknown_host_is_offline(cli_stack: CliStack) -> None:
    # a static inventory: the connection comes from the stack's state file all the same
    started = time.monotonic()
    d0 = cli_stack.devices[0]
    results = cli_stack.adhoc_results("-i", f"ghost-1,{d0},", "all", "-c", "local", "-m",
                                      "harmony.fleet.fleet_ping")
    assert results[cli_stack.devices[0]]["ping"] == "pong"
    ghost = results["ghost-1"]
    assert ghost["failed"] is True
    assert ghost["error"] == "DeviceOffline"
    assert "device ghost-1 is offline" in ghost["msg"]
    assert time.monotonic() - started < 30


def test_adhoc_ping_device_id_argument_and_check_mode(cli_stack: CliStack) -> None:
    results = cli_stack.adhoc_results(
        "-i", "alias,", "all", "-c", "local", "--check", "-m", "harmony.fleet.fleet_ping",
        "-a", f"device_id={cli_stack.devices[1]}",
    )
    assert results["alias"]["device_id"] == cli_stack.devices[1]
    assert results["alias"]["ping"] == "pong"


def test_adhoc_ping_bad_credentials_fail_cleanly_without_leaking(cli_stack: CliStack) -> None:
    results = cli_stack.adhoc_results(
        "-i", f"{cli_stack.devices[0]},", "all", "-c", "local", "-m", "harmony.fleet.fleet_ping",
        "-a", f"nats_url={cli_stack.state['nats_url']} nats_user=admin "
              "nats_password=wrong-secret-value",
    )
    res = results[cli_stack.devices[0]]
    assert res["failed"] is True
    assert "wrong-secret-value" not in json.dumps(res)


def test_adhoc_ping_after_agent_stops_reports_offline(cli_stack: CliStack) -> None:
    # last in this module: it stops the second device for good
    pid = next(d["pid"] for d in cli_stack.state["devices"]
               if d["device_id"] == cli_stack.devices[1])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    results = cli_stack.adhoc_results("-i", "inventories/local", "all", "-m",
                                      "harmony.fleet.fleet_ping")
    assert results[cli_stack.devices[0]]["ping"] == "pong"
    assert results[cli_stack.devices[1]]["failed"] is True
    assert "offline" in results[cli_stack.devices[1]]["msg"]
