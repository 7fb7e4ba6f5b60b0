"""A real inventory of the host the agent runs on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import socket
from pathlib import Path

from harmony_fleet.contracts import Inventory

log = logging.getLogger(__name__)


def _os_pretty_name(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key == "PRETTY_NAME":
                return value.strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} (unknown distribution)"


def _memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


async def podman_version(podman: str = "podman", timeout: float = 10.0) -> str | None:
    """podman's client version, or None if podman is missing or broken."""
    try:
        proc = await asyncio.create_subprocess_exec(
            podman, "version", "--format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (OSError, TimeoutError) as exc:
        log.warning("podman version failed: %s", exc)
        return None
    if proc.returncode != 0:
        log.warning("podman version exited %s: %s", proc.returncode, err.decode(errors="replace"))
        return None
    try:
        data = json.loads(out)
        return str(data["Client"]["Version"])
    except (ValueError, KeyError, TypeError):
        log.warning("podman version printed unexpected output")
        return None


async def collect_inventory(runtime_enabled: bool) -> Inventory:
    uname = platform.uname()
    return Inventory(
        hostname=socket.gethostname(),
        arch=uname.machine,
        os=_os_pretty_name(),
        kernel=uname.release,
        cpus=os.cpu_count() or 0,
        memory_bytes=_memory_bytes(),
        podman_version=await podman_version() if runtime_enabled else None,
    )
