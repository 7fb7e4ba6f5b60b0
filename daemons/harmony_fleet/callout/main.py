"""``fleet-callout``: the NATS auth callout and/or the report writer, in one daemon."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from harmony_fleet.bus import ConnectError, NatsSettings, connect, drain
from harmony_fleet.config import daemon_main
from harmony_fleet.daemon import DaemonExit, sd_notify, supervise

from .config import CalloutConfig
from .nkjwt import nkey_from_seed, xkey_from_seed
from .oidc import JwksCache, TokenValidator
from .revocations import RevocationCheck
from .service import CalloutPolicy, CalloutService
from .watches import WatchGrants
from .writer import ReportWriter

log = logging.getLogger("harmony_fleet.callout")

DEFAULT_CONFIG = Path("/etc/fleet-callout/config.toml")
#: how long each stage of a shutdown may take (draining, then cancelling what is left)
SHUTDOWN_TIMEOUT_S = 10.0


def _read_seed(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DaemonExit(f"cannot read the seed file {path}: {exc.strerror or exc}") from None


async def _connect(settings: NatsSettings, name: str, stop: asyncio.Event) -> NatsClient | None:
    """Connect (retrying until it works); None when stopped first."""
    try:
        return await connect(settings, name=name, stop=stop)
    except ConnectError:
        if stop.is_set():
            return None
        raise


async def _serve_callout(config: CalloutConfig, stop: asyncio.Event) -> None:
    section = config.callout
    assert section.issuer_seed_file is not None
    issuer = nkey_from_seed(_read_seed(section.issuer_seed_file))
    xkey = xkey_from_seed(_read_seed(section.xkey_seed_file)) if section.xkey_seed_file else None
    validator = TokenValidator(
        JwksCache(config.oidc.issuer, max_age_s=config.oidc.jwks_max_age_s,
                  url=config.oidc.issuer_url),
        config.oidc.audience, leeway_s=config.oidc.leeway_s,
    )
    policy = CalloutPolicy(section.target_account, section.device_role,
                           frozenset(section.admin_roles), section.max_user_jwt_s)
    revocations_settings = config.revocations_nats()
    if revocations_settings is None:
        log.warning("callout.check_revocations is off: revoked devices are let in (INSECURE)")
        revocations_nc = None
    else:
        # before answering anyone: a revocation must hold from the first answer on
        revocations_nc = await _connect(revocations_settings, "fleet-callout-revocations", stop)
        if revocations_nc is None:
            return
    nc = await _connect(section.nats, "fleet-callout", stop)
    if nc is None:
        if revocations_nc is not None:
            await drain(revocations_nc)
        return
    service = CalloutService(
        nc, issuer, validator, policy, xkey,
        revocations=RevocationCheck(revocations_nc) if revocations_nc is not None else None)
    try:
        await service.start()
        await stop.wait()
    finally:
        await service.stop(section.nats.drain_timeout_s)
        await drain(nc, section.nats.drain_timeout_s)
        if revocations_nc is not None:
            await drain(revocations_nc, section.nats.drain_timeout_s)


async def _serve_writer(config: CalloutConfig, stop: asyncio.Event) -> None:
    nc = await _connect(config.writer.nats, "fleet-report-writer", stop)
    if nc is None:
        return
    writer = ReportWriter(nc, config.writer)
    grants = WatchGrants(nc, config.writer, lease_check=writer.check_lease)
    try:
        await writer.start()
        await grants.start()
        await stop.wait()
    finally:
        await grants.stop()
        await writer.stop()
        await drain(nc, config.writer.nats.drain_timeout_s)


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
    # both services watch ``stop`` and drain on their way out (bounded by their connections'
    # drain_timeout_s): cancelling them mid-drain would drop requests already delivered
    await supervise(tasks, stop, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                    grace_s=SHUTDOWN_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    return daemon_main(argv, prog="fleet-callout", description=__doc__ or "",
                       config_cls=CalloutConfig, default_config=DEFAULT_CONFIG, run=run)


if __name__ == "__main__":
    sys.exit(main())
