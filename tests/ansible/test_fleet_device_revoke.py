"""A stack from ``fleet stack up --tls``: the state file names the lab CA, the fleet modules and
the inventory reach NATS over TLS with nothing but that file, and ``fleet_device_revoke`` /
``fleet device revoke|restore`` cut a live agent off and let it back in."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import BIN, REPO, CliStack, start_cli_stack, stop_cli_stack, task_results, write_play
from .conftest import unique_prefix as prefix_for


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    stack = start_cli_stack(tmp_path_factory, "--no-runtime", "--tls",
                            "--tls-san", "fleet.lab.example", prefix=prefix_for("tlsrv"))
    try:
        yield stack
    finally:
        stop_cli_stack(stack)


def mode(path: str | Path) -> str:
    return oct(Path(path).stat().st_mode & 0o777)


def test_the_state_names_the_lab_ca_and_the_system_connection(tls_stack: CliStack) -> None:
    state = tls_stack.state
    assert state["nats_url"].startswith("tls://127.0.0.1:")
    tls = state["tls"]
    assert tls["sans"] == ["127.0.0.1", "::1", "localhost", "10.0.2.2", "fleet.lab.example"]
    assert state["connection"]["tls_ca_file"] == tls["ca_file"]
    for path in (tls["ca_file"], tls["cert_file"]):
        assert mode(path) == "0o600"
    assert mode(Path(tls["ca_file"]).parent) == "0o700"
    system = state["system_connection"]
    assert system["urls"] == [state["nats_url"]]
    assert system["tls_ca_file"] == tls["ca_file"]
    # a file, never the password itself; and no device's config names the system user
    assert set(system["auth"]) == {"mode", "user", "password_file"}
    assert mode(system["auth"]["password_file"]) == "0o600"
    password = Path(system["auth"]["password_file"]).read_text()
    assert password not in json.dumps(state)
    for device in state["devices"]:
        config = Path(device["config_file"]).read_text()
        assert f'tls_ca_file = "{tls["ca_file"]}"' in config
        assert password not in config
        assert system["auth"]["user"] not in config.split("[nats.auth]")[1]


def test_fleet_ping_and_the_inventory_over_tls(tls_stack: CliStack) -> None:
    results = tls_stack.adhoc_results("-i", "inventories/local", "all", "-m",
                                      "harmony.fleet.fleet_ping")
    assert sorted(results) == tls_stack.devices
    for host, res in results.items():
        assert res.get("failed") is not True, res
        assert res["reply"]["device_id"] == host


def test_fleet_ping_without_the_ca_fails_with_what_tls_refused(tls_stack: CliStack,
                                                               tmp_path: Path) -> None:
    connection = dict(tls_stack.state["connection"])
    del connection["tls_ca_file"]
    no_ca = tmp_path / "no-ca.json"
    no_ca.write_text(json.dumps(connection))
    device = tls_stack.devices[0]
    results = tls_stack.adhoc_results("-i", f"{device},", "all", "-c", "local", "-m",
                                      "harmony.fleet.fleet_ping",
                                      "-a", f"connection_file={no_ca} persistent=false")
    res = results[device]
    assert res["failed"] is True
    assert res["error"] == "ConnectError"
    assert "certificate was refused" in res["msg"]
    assert "tls_ca_file" in res["msg"]


def fleet(stack: CliStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fleet"), *args], cwd=REPO, env=stack.env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_fleet_device_revoke_cuts_a_live_agent_off_and_lets_it_back(
        tls_stack: CliStack, tmp_path: Path) -> None:
    victim, bystander = tls_stack.devices
    revoke = {"harmony.fleet.fleet_device_revoke": {"device_id": victim,
                                                    "reason": "test"}}
    ping = "harmony.fleet.fleet_ping"
    play = write_play(tmp_path, [
        {"name": "check", **revoke, "check_mode": True, "diff": True},
        {"name": "still up", ping: {"device_id": victim}},
        {"name": "revoke", **revoke, "diff": True},
        {"name": "again", **revoke},
        {"name": "revoked ping", ping: {"device_id": victim}, "ignore_errors": True},
        {"name": "bystander", ping: {"device_id": bystander}},
        {"name": "allow", "harmony.fleet.fleet_device_revoke": {
            "device_id": victim, "state": "allowed"}, "diff": True},
        {"name": "back", ping: {"device_id": victim}, "register": "pong",
         "until": "pong is succeeded", "retries": 30, "delay": 1},
        {"name": "allow again", "harmony.fleet.fleet_device_revoke": {
            "device_id": victim, "state": "allowed"}},
    ])
    doc = tls_stack.playbook(play)

    check = task_results(doc, "check")
    assert (check["changed"], check["kicked"], check["was_revoked"]) == (True, 1, False)
    assert check["diff"] == {"before": {"device_id": victim, "state": "allowed"},
                             "after": {"device_id": victim, "state": "revoked"}}
    assert task_results(doc, "still up")["ping"] == "pong"  # check mode changed nothing

    revoked = task_results(doc, "revoke")
    assert (revoked["changed"], revoked["kicked"]) == (True, 1), revoked
    again = task_results(doc, "again")
    assert (again["changed"], again["kicked"], again["was_revoked"]) == (False, 0, True)
    refused = task_results(doc, "revoked ping")
    assert refused["failed"] is True
    assert refused["error"] == "DeviceOffline"
    assert task_results(doc, "bystander")["ping"] == "pong"

    allowed = task_results(doc, "allow")
    assert allowed["changed"] is True
    assert allowed["diff"]["after"]["state"] == "allowed"
    assert task_results(doc, "back")["ping"] == "pong"
    assert task_results(doc, "allow again")["changed"] is False


def test_fleet_device_revoke_needs_system_credentials(tls_stack: CliStack) -> None:
    # (no system credentials at all: tests/unit/test_nats_tls_settings.py)
    device = tls_stack.devices[0]
    # wrong system credentials: the server refuses them before anything is revoked
    results = tls_stack.adhoc_results(
        "-i", "localhost,", "all", "-c", "local", "-m", "harmony.fleet.fleet_device_revoke",
        "-a", f"device_id={device} nats_system_user=sys nats_system_password=wrong-secret")
    res = results["localhost"]
    assert res["failed"] is True
    assert res["error"] == "ConnectError"
    assert "wrong-secret" not in json.dumps(res)
    ping = tls_stack.adhoc_results("-i", f"{device},", "all", "-c", "local", "-m",
                                   "harmony.fleet.fleet_ping")
    assert ping[device]["ping"] == "pong"


def test_fleet_device_cli(tls_stack: CliStack) -> None:
    device = tls_stack.devices[1]
    check = fleet(tls_stack, "device", "revoke", device, "--check", "--json")
    assert check.returncode == 0, check.stderr
    out = json.loads(check.stdout)
    assert (out["changed"], out["kicked"], out["check_mode"]) == (True, 1, True)
    text = fleet(tls_stack, "device", "restore", device)
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == f"{device}: already allowed (nothing changed)"
    bad = fleet(tls_stack, "device", "revoke", "Not_An_Id")
    assert bad.returncode == 2
    assert bad.stderr.startswith("fleet: InvalidIdError: ")
