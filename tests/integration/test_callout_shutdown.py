"""fleet-callout stops promptly and cleanly, and answers what was delivered before it stopped.

Real nats-server, real fleet-callout (callout and writer), a real agent. Measured before the
fix: SIGTERM at the moment nats-server went away took 10.1 s (a connection drain waited out
nats-py's flush timeout, then the supervisor gave up on the task); now well under a second.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from harmony_fleet.bus import NatsSettings, connect, drain
from harmony_fleet.callout.config import CalloutConfig
from harmony_fleet.callout.writer import CheckedReport, ReportWriter
from harmony_fleet.contracts import (
    HDR_AGENT_INSTANCE,
    Heartbeat,
    ReportAck,
    report_heartbeat_subject,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.localstack.services import ServiceProcess, start_services
from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet_harness.pytest_plugin import unique_device_id

#: what a prompt shutdown means here (the lead's bar: under 3 s from SIGTERM to exit)
PROMPT_S = 3.0
NOT_IN_LOG = ("Traceback", "never retrieved", "did not stop within")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    stack = await LocalStack.up(devices=1, device_prefix=unique_device_id("shutdown"),
                                auth="callout", agent_mode="subprocess",
                                workdir=tmp_path / "stack")
    try:
        yield stack
    finally:
        await stack.down()


def callout_of(stack: LocalStack) -> ServiceProcess:
    return next(p for p in stack.services.processes if p.name == "fleet-callout")


async def sigterm_to_exit(process: ServiceProcess) -> tuple[float, int, str]:
    """SIGTERM ``process``; (seconds until it exited, exit code, what it logged meanwhile)."""
    assert process.proc is not None
    offset = process.log_file.stat().st_size
    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.proc.wait, 30)
    took = time.monotonic() - started
    with process.log_file.open("rb") as log:
        log.seek(offset)
        return took, code, log.read().decode(errors="replace")


@pytest.mark.slow
async def test_sigterm_stops_fleet_callout_promptly_and_cleanly(stack: LocalStack) -> None:
    await asyncio.sleep(1)  # the agent reports and watches: requests are flowing
    took, code, logged = await sigterm_to_exit(callout_of(stack))
    assert code == 0, logged
    assert took < PROMPT_S, logged
    for needle in NOT_IN_LOG:
        assert needle not in logged, logged


@pytest.mark.slow
async def test_sigterm_as_nats_server_goes_away_is_prompt(stack: LocalStack) -> None:
    """The server dies while fleet-callout drains its connections (Ctrl-C on a foreground
    stack signals every process at once): this took 10 s, now it exits at once. The server
    is frozen first so that the drains are surely under way when it dies."""
    await asyncio.sleep(1)
    server = stack.server._proc
    assert server is not None
    callout = callout_of(stack)
    assert callout.proc is not None
    server.send_signal(signal.SIGSTOP)
    try:
        exiting = asyncio.create_task(sigterm_to_exit(callout))
        await asyncio.sleep(0.5)  # fleet-callout is draining, waiting for the server
    finally:
        server.kill()
    took, code, logged = await exiting
    assert code == 0, logged
    assert took < PROMPT_S, logged
    for needle in NOT_IN_LOG:
        assert needle not in logged, logged


async def test_the_writer_answers_reports_delivered_before_it_stopped(tmp_path: Path) -> None:
    """Stopping drains the subscription: reports already delivered to the writer are judged,
    written and acknowledged, none dropped (unsubscribing threw the queue away)."""
    services = await asyncio.to_thread(start_services, tmp_path / "srv", auth="dev")
    try:
        await LocalStack(services.workdir, services, owns_server=False).ensure_buckets()
        for process in services.processes:  # the writer under test runs in this process
            await asyncio.to_thread(process.stop)
        config = CalloutConfig.load(services.workdir / "fleet-callout.toml")
        writer_nc = await connect(config.writer.nats, name="writer-under-test")
        writer = ReportWriter(writer_nc, config.writer)
        await writer.start()

        first_write, release = asyncio.Event(), asyncio.Event()
        real_write = writer._write

        async def slow_first_write(checked: CheckedReport, data: bytes,
                                   instance: str | None) -> None:
            if not first_write.is_set():
                first_write.set()
                await release.wait()  # the rest queue up in the writer meanwhile
            await real_write(checked, data, instance)

        writer._write = slow_first_write  # type: ignore[method-assign]

        device = unique_device_id("drain")
        admin = services.admin
        assert admin is not None
        nc = await connect(NatsSettings.model_validate({
            "urls": [services.nats_url],
            "auth": {"mode": "userpass", "user": admin.user, "password": admin.password}}),
            name="reports", inbox_prefix=f"_INBOX.{device}")
        acks: list[ReportAck] = []

        async def on_ack(msg: Msg) -> None:
            acks.append(ReportAck.model_validate_json(msg.data))

        await nc.subscribe(f"_INBOX.{device}.acks.*", cb=on_ack)
        sent = 30
        for i in range(sent):
            beat = Heartbeat(device_id=device, timestamp=utcnow(), uptime_s=i,
                             agent_version="test")
            await nc.publish(report_heartbeat_subject(device), beat.to_json_bytes(),
                             reply=f"_INBOX.{device}.acks.{i}",
                             headers={HDR_AGENT_INSTANCE: "boot:test"})
        await nc.flush()
        await asyncio.wait_for(first_write.wait(), 10)
        stopping = asyncio.create_task(writer.stop())
        await asyncio.sleep(0.3)  # the writer has told the server it takes no more
        release.set()
        await asyncio.wait_for(stopping, 10)
        deadline = time.monotonic() + 5
        while len(acks) < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(acks) == sent
        assert all(ack.ok for ack in acks), [a.error for a in acks if not a.ok]
        await drain(nc)
        await drain(writer_nc)
    finally:
        await asyncio.to_thread(services.stop)
