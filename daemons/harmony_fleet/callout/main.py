"""``fleet-callout``: the NATS auth callout and/or the report writer, in one daemon."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from harmony_fleet.bus import connect, drain
from harmony_fleet.config import daemon_main
from harmony_fleet.daemon import (
    sd_notify,
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
    return daemon_main(argv, prog="fleet-callout", description=__doc__ or "",
                       config_cls=CalloutConfig, default_config=DEFAULT_CONFIG, run=run)


if __name__ == "__main__":
    sys.exit(main())
