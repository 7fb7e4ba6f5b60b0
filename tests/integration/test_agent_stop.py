"""An agent stopped by systemd (SIGTERM) while its nats-server is gone: a clean exit, promptly.

nats-py flushes what is still buffered when it closes; with the server gone that write fails
after the client is marked closed, and the agent used to exit 1 on it (systemd then records a
failed stop, and ``Restart=on-failure`` units count it)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from harmony_fleet_harness.chaos import chaos_stack, kill_9

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("down_for_s", [0.05, 2.5], ids=["just-lost", "reconnecting"])
async def test_sigterm_while_the_server_is_down_exits_0(tmp_path: Path, down_for_s: float) -> None:
    async with chaos_stack(tmp_path) as stack:
        device = f"stop-offline-{int(down_for_s * 1000)}"
        # heartbeats every second: one is attempted (and buffered by nats-py) during the outage
        await stack.add_device(device, runtime_enabled=False, mode="subprocess",
                               agent={"heartbeat_interval_s": 1.0})
        handle = stack.devices[device]
        proc = handle.process
        assert proc is not None
        kill_9(stack.services.server._proc)
        await asyncio.sleep(down_for_s)
        proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - stopping
        log = handle.log_file.read_text() if handle.log_file else ""
        print(f"\nSIGTERM {down_for_s:g} s after nats-server died: exit {code} in {took:.2f} s")
        assert code == 0, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert took < 10.0
        await asyncio.to_thread(stack.services.server.start)  # for the stack's own teardown
