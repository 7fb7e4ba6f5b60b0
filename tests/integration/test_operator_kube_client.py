"""The operator's Kubernetes client on a real HTTP server: "not now" answers (429 with
Retry-After, 5xx, a dropped connection) are retried within bounds, creates only on 429, the
Lease's calls not at all, and a rotated service-account token file is read again."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp.web
import pytest

from harmony_fleet.operator import kube
from harmony_fleet.operator.kube import KubeClient, KubeError, KubeTarget


class FlakyServer:
    """Answers each request with the next planned status (200 with a body once the plan is
    used up) and remembers the Authorization headers it saw."""

    def __init__(self) -> None:
        self.plan: list[tuple[int, dict[str, str]]] = []
        self.seen: list[tuple[str, str | None]] = []

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.seen.append((request.method, request.headers.get("Authorization")))
        if self.plan:
            status, headers = self.plan.pop(0)
            return aiohttp.web.json_response({"kind": "Status", "message": f"planned {status}"},
                                              status=status, headers=headers)
        return aiohttp.web.json_response({"kind": "Lease", "metadata": {"name": "x"}})


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FlakyServer, str]]:
    monkeypatch.setattr(kube, "RETRY_DELAYS_S", (0.01, 0.01, 0.01))
    flaky = FlakyServer()
    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", flaky.handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield flaky, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_5xx_and_429_are_retried_then_answered(server: tuple[FlakyServer, str]) -> None:
    flaky, url = server
    flaky.plan = [(503, {}), (429, {"Retry-After": "0"}), (500, {})]
    async with KubeClient(KubeTarget(url)) as client:
        assert await client.get("/apis/x") == {"kind": "Lease", "metadata": {"name": "x"}}
    assert len(flaky.seen) == 4


async def test_retries_are_bounded(server: tuple[FlakyServer, str]) -> None:
    flaky, url = server
    flaky.plan = [(503, {})] * 10
    async with KubeClient(KubeTarget(url)) as client:
        with pytest.raises(KubeError, match="503"):
            await client.merge_patch("/apis/x", {"a": 1})
    assert len(flaky.seen) == 4  # the first attempt and three retries


async def test_a_create_is_retried_on_429_only(server: tuple[FlakyServer, str]) -> None:
    flaky, url = server
    flaky.plan = [(429, {"Retry-After": "0"}), (503, {})]
    async with KubeClient(KubeTarget(url)) as client:
        with pytest.raises(KubeError, match="503"):
            await client.create("/apis/x", {"a": 1})
    assert len(flaky.seen) == 2  # 429: nothing was done, retried; 503: maybe done, not retried


async def test_the_leases_calls_are_not_retried(server: tuple[FlakyServer, str]) -> None:
    flaky, url = server
    flaky.plan = [(503, {})]
    async with KubeClient(KubeTarget(url)) as client:
        with pytest.raises(KubeError, match="503"):
            await client.replace("/apis/x", {"a": 1}, retry=False)
    assert len(flaky.seen) == 1


async def test_a_rotated_token_file_is_read_again(server: tuple[FlakyServer, str],
                                                  tmp_path: Path) -> None:
    flaky, url = server
    token = tmp_path / "token"
    token.write_text("first-token\n")
    async with KubeClient(KubeTarget(url, token_file=token)) as client:
        await client.get("/apis/x")
        token.write_text("second-token-after-rotation\n")
        stat = token.stat()
        os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        await client.get("/apis/x")
    assert [auth for _, auth in flaky.seen] == ["Bearer first-token",
                                                "Bearer second-token-after-rotation"]


async def test_a_refused_connection_is_retried_then_reported(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from harmony_fleet.localstack.nats_server import free_port

    monkeypatch.setattr(kube, "RETRY_DELAYS_S", (0.01,))
    async with KubeClient(KubeTarget(f"http://127.0.0.1:{free_port()}")) as client:
        with pytest.raises(KubeError, match="GET /apis/x"):
            await client.get("/apis/x")
