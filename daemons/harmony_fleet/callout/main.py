"""``fleet-callout``: the NATS auth callout and/or the report writer, in one daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from harmony_fleet.bus import connect, drain
from harmony_fleet.config import ConfigError
from harmony_fleet.daemon import (
    install_stop_signals,
    sd_notify,
    setup_logging,
    start_metrics_server,
    supervise,
)

from .config import CalloutConfig
from .nkjwt import nkey_from_seed, xkey_from_seed
from .oidc import JwksCache, TokenValidator
from .service import CalloutPolicy, CalloutService
from .writer import ReportWriter

log = logging.getLogger("harmony_fleet.callout")

DEFAULT_CONFIG = Path("/etc/fleet-callout/config.toml")


def _read_seed(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


async def _serve_callout(config: CalloutConfig, stop: asyncio.Event) -> None:
    section = config.callout
    assert section.issuer_seed_file is not None
    issuer = nkey_from_seed(_read_seed(section.issuer_seed_file))
    xkey = xkey_from_seed(_read_seed(section.xkey_seed_file)) if section.xkey_seed_file else None
    validator = TokenValidator(
        JwksCache(config.oidc.issuer, max_age_s=config.oidc.jwks_max_age_s),
        config.oidc.audience, leeway_s=config.oidc.leeway_s,
    )
    policy = CalloutPolicy(section.target_account, section.device_role,
                           frozenset(section.admin_roles), section.max_user_jwt_s)
    nc = await connect(section.nats, name="fleet-callout", stop=stop)
    service = CalloutService(nc, issuer, validator, policy, xkey)
    try:
        await service.start()
        await stop.wait()
    finally:
        await service.stop()
        await drain(nc)


async def _serve_writer(config: CalloutConfig, stop: asyncio.Event) -> None:
    nc = await connect(config.writer.nats, name="fleet-report-writer", stop=stop)
    writer = ReportWriter(nc)
    try:
        await writer.start()
        await stop.wait()
    finally:
        await writer.stop()
        await drain(nc)


async def run(config: CalloutConfig, stop: asyncio.Event) -> None:
    tasks: dict[str, Coroutine[Any, Any, None]] = {}
    if config.callout.enabled:
        tasks["auth-callout"] = _serve_callout(config, stop)
    if config.writer.enabled:
        tasks["report-writer"] = _serve_writer(config, stop)

    async def ready() -> None:
        await asyncio.sleep(0)
        sd_notify("READY=1")
        await stop.wait()

    tasks["notify"] = ready()
    await supervise(tasks, stop, shutdown_timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet-callout", description=__doc__)
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--check-config", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = CalloutConfig.load(args.config)
    except ConfigError as exc:
        print(f"fleet-callout: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.config}: OK")
        return 0
    setup_logging(config.log.level, config.log.json_logs)
    if config.metrics.listen:
        start_metrics_server(config.metrics.listen)

    async def _main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run(config, stop)

    try:
        asyncio.run(_main())
    except Exception:
        log.exception("fleet-callout failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
