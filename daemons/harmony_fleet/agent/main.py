"""``fleet-agent``: the device daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from importlib import resources

from harmony_fleet.config import daemon_main

from .app import Agent
from .config import DEFAULT_CONFIG_PATH, AgentConfig


def systemd_unit() -> str:
    return resources.files("harmony_fleet.agent").joinpath(
        "systemd/fleet-agent.service").read_text(encoding="utf-8")


def _unit_option(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int | None]:
    parser.add_argument("--print-systemd-unit", action="store_true",
                        help="print the systemd unit this package ships and exit")

    def early(args: argparse.Namespace) -> int | None:
        if args.print_systemd_unit:
            print(systemd_unit(), end="")
            return 0
        return None

    return early


async def _run(config: AgentConfig, stop: asyncio.Event) -> None:
    await Agent(config).run(stop)


def main(argv: list[str] | None = None) -> int:
    return daemon_main(
        argv, prog="fleet-agent",
        description="Harmony Fleet device agent (runs workloads with podman)",
        config_cls=AgentConfig, default_config=DEFAULT_CONFIG_PATH, run=_run,
        describe=lambda c: f"OK (device {c.agent.device_id})",
        extra=_unit_option,
    )


if __name__ == "__main__":
    sys.exit(main())
