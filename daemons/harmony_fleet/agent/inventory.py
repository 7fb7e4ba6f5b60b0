"""A real inventory of the host the agent runs on."""

from __future__ import annotations

import logging
import os
import platform
import socket
from pathlib import Path

from harmony_fleet.contracts import Inventory

from .runtime import ContainerRuntime

log = logging.getLogger(__name__)


def _os_pretty_name(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text(encoding="utf-8").splitlines():
            key, _sep, value = line.partition("=")
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


async def collect_inventory(runtime: ContainerRuntime | None) -> Inventory:
    uname = platform.uname()
    return Inventory(
        hostname=socket.gethostname(),
        arch=uname.machine,
        os=_os_pretty_name(),
        kernel=uname.release,
        cpus=os.cpu_count() or 0,
        memory_bytes=_memory_bytes(),
        podman_version=await runtime.version() if runtime is not None else None,
    )
