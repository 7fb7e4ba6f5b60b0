"""``fleet-agent``: the device daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from importlib import resources

from harmony_fleet.bus.connection import WebsocketUnavailable, check_transport
from harmony_fleet.bus.credentials import CredentialsError, check_credential_files
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tls import TlsConfigError, client_ssl_context
from harmony_fleet.bus.tokens import TokenError, check_key_file
from harmony_fleet.config import ConfigError, daemon_main

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


def check_credentials(config: AgentConfig) -> list[str]:
    """``--check-config``: the machine key file must be usable and private (see
    :func:`harmony_fleet.bus.tokens.check_key_file`); a password or token file must be
    readable and not empty; the TLS files (``tls_ca_file``, a client certificate and its key)
    must be usable; a WebSocket URL needs the ``websocket`` extra. (The NATS URLs were
    checked with the file: ``NatsSettings``.)"""
    auth = config.nats.auth
    try:
        check_transport(config.nats)
        client_ssl_context(config.nats)
    except (TlsConfigError, WebsocketUnavailable) as exc:
        raise ConfigError(f"[nats] {exc}") from exc
    try:
        check_credential_files(auth)
    except CredentialsError as exc:
        raise ConfigError(f"[nats.auth] {exc}") from exc
    if not isinstance(auth, ZitadelAuth):
        return []
    try:
        return check_key_file(auth)
    except TokenError as exc:
        raise ConfigError(f"[nats.auth] key_file: {exc}") from exc


async def _run(config: AgentConfig, stop: asyncio.Event) -> None:
    await Agent(config).run(stop)


def main(argv: list[str] | None = None) -> int:
    return daemon_main(
        argv, prog="fleet-agent",
        description="Harmony Fleet device agent (runs workloads with podman)",
        config_cls=AgentConfig, default_config=DEFAULT_CONFIG_PATH, run=_run,
        describe=lambda c: f"OK (device {c.agent.device_id})",
        check=check_credentials,
        extra=_unit_option,
    )


if __name__ == "__main__":
    sys.exit(main())
