"""NATS over WebSocket, for devices behind HTTP proxies: a real agent (a subprocess, as a
device runs it) reaches a real nats-server's WebSocket listener (``wss://``, the lab CA) and is
let in by the auth callout with its own machine key; it answers pings and its reports land in
the buckets. Without the ``websocket`` extra (aiohttp) a WebSocket URL is a clear
configuration error (exit code 2), not a crash or an endless retry."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from harmony_fleet.bus import FleetCommandsClient
from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.contracts import BUCKET_DEVICE_INFO, device_info_key
from harmony_fleet.localstack.stack import LocalStack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

BIN = Path(sys.executable).parent


async def test_a_real_agent_over_wss_through_the_callout_answers_and_reports(
        tmp_path: Path) -> None:
    device_id = f"kube-ws-{secrets.token_hex(3)}"
    stack = await LocalStack.up(devices=[device_id], auth="callout", tls=True, websocket=True,
                                workdir=tmp_path / "stack", state_file=tmp_path / "state.json")
    try:
        ws_urls = stack.services.websocket_urls
        assert len(ws_urls) == 1
        assert ws_urls[0].startswith("wss://127.0.0.1:")
        assert stack.state()["websocket_urls"] == ws_urls
        config = stack.devices[device_id].describe()["config_file"]
        assert f'urls = ["{ws_urls[0]}"]' in Path(config).read_text()
        # the server sees the agent on its WebSocket listener, authenticated by the callout
        # (the callout's users are static; a device's account comes from its JWT)
        assert stack.server.monitor_url is not None
        with urllib.request.urlopen(f"{stack.server.monitor_url}/varz", timeout=5) as answer:
            varz = json.loads(answer.read())
        assert varz["websocket"]["port"] == int(ws_urls[0].rsplit(":", 1)[1])
        with urllib.request.urlopen(f"{stack.server.monitor_url}/connz?auth=true&limit=1000",
                                    timeout=5) as answer:
            connz = json.loads(answer.read())
        agent = [c for c in connz["connections"] if device_id in (c.get("name") or "")]
        assert agent, [c.get("name") for c in connz["connections"]]
        assert agent[0].get("tls_version"), agent[0]  # wss: TLS inside the WebSocket
        nc = await stack.admin_connect()
        try:
            reply = await FleetCommandsClient(nc).ping(device_id)
            assert reply.device_id == device_id
            info = {}
            for _ in range(100):  # written by the report writer once the agent reported
                info = await read_bucket(nc.jetstream(), BUCKET_DEVICE_INFO,
                                         device_info_key(device_id))
                if info:
                    break
                await asyncio.sleep(0.1)
            assert device_info_key(device_id) in info
        finally:
            await nc.close()
    finally:
        await stack.down()


def _no_aiohttp(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import aiohttp`` fails, as on a device with the base install."""
    shadow = tmp_path / "shadow"
    (shadow / "aiohttp").mkdir(parents=True)
    (shadow / "aiohttp" / "__init__.py").write_text(
        "raise ImportError('aiohttp is not installed (blocked by the test)')\n")
    return {**os.environ, "PYTHONPATH": str(shadow)}


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "run"])
def test_a_websocket_url_without_the_websocket_extra_is_a_clear_error(
        tmp_path: Path, check: bool) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\ndevice_id = "kube-ws-no-extra"\n'
        f'sealing_key_file = "{tmp_path / "sealing-key"}"\n'
        '[nats]\nurls = ["wss://127.0.0.1:1"]\nconnect_attempts = 1\n'
        'auth = { mode = "userpass", user = "device", password = "not-used" }\n')
    config.chmod(0o600)
    env = _no_aiohttp(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import nats.aio.transport as t; "
                            "print(t.aiohttp)"], env=env, capture_output=True, text=True,
                           timeout=60, check=True)
    assert probe.stdout.strip() == "None", "aiohttp was not blocked"
    argv = [str(BIN / "fleet-agent"), "--config", str(config)]
    ran = subprocess.run(argv + (["--check-config"] if check else []), env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    output = ran.stdout + ran.stderr
    assert "harmony-fleet[websocket]" in output, output
    assert "wss://127.0.0.1:1" in output
    assert "Traceback" not in output, output
