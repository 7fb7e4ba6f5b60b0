"""``fleet-agent``: the device daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from importlib import resources
from pathlib import Path

from harmony_fleet.daemon import install_stop_signals, setup_logging, start_metrics_server

from .app import Agent
from .config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError

log = logging.getLogger("harmony_fleet.agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fleet-agent", description="Harmony Fleet device agent (runs workloads with podman)"
    )
    parser.add_argument(
        "-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
        help=f"TOML config file (default {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config and exit")
    parser.add_argument("--print-systemd-unit", action="store_true",
                        help="print the systemd unit this package ships and exit")
    return parser.parse_args(argv)


def systemd_unit() -> str:
    return resources.files("harmony_fleet.agent").joinpath(
        "systemd/fleet-agent.service").read_text(encoding="utf-8")


async def _run(agent: Agent) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    await agent.run(stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_systemd_unit:
        print(systemd_unit(), end="")
        return 0
    try:
        config = AgentConfig.load(args.config)
    except ConfigError as exc:
        print(f"fleet-agent: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.config}: OK (device {config.agent.device_id})")
        return 0
    setup_logging(config.log.level, config.log.json_logs)
    if config.metrics.listen:
        start_metrics_server(config.metrics.listen)
    try:
        asyncio.run(_run(Agent(config)))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 130
    except Exception:
        log.exception("agent failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
