"""Smoke tests of a deployed control plane, run by ``fleet smoke <check>``: the same command the
roles run in a Kubernetes Job (where the controller cannot reach in-cluster NATS) and the tests
run on this machine against real processes.

The configuration is a small TOML file (env ``FLEET_SMOKE_<SECTION>__<FIELD>``)::

    [nats]                   # who connects, as in every daemon's config
    urls = ["nats://nats.harmony-fleet.svc:4222"]
    auth = { mode = "zitadel", issuer = "https://id.example.net",
             key_file = "/etc/fleet-smoke/key.json", project_id = "2547..." }

Checks (each prints one JSON line and succeeds or raises :class:`SmokeFailed`):

* ``jetstream``: JetStream answers in the account of ``[nats]``; with ``buckets`` every fleet
  bucket exists (``ensure_buckets`` creates or corrects them first: the credential must be an
  admin's);
* ``callout``: the credential of ``[nats]`` is allowed in, and a forged token is refused;
* ``token``: the identity provider issues a token for the machine key of ``[nats]``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import nats
import nats.errors
import nats.js.errors
from pydantic import Field

from harmony_fleet.bus import NatsSettings, TokenAuth, connect, drain, ensure_buckets
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.config import TomlConfig
from harmony_fleet.contracts import BUCKETS, kv_stream_name
from harmony_fleet.errors import FleetError

#: what a forged credential looks like to the callout: a JWT-shaped string no issuer signed
FORGED_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzbW9rZS10ZXN0In0.c21va2U"  # noqa: S105 - signed by nobody


class SmokeFailed(FleetError, RuntimeError):
    """A smoke test found the deployment not working; the message says what."""


class SmokeConfig(TomlConfig):
    nats: NatsSettings = Field(default_factory=NatsSettings)
    timeout_s: float = Field(default=10.0, gt=0, description="Each step's limit")

    env_prefix: ClassVar[str] = "FLEET_SMOKE_"


def _once(settings: NatsSettings) -> NatsSettings:
    """A smoke test connects once: no retries hiding a refusal."""
    return settings.model_copy(update={"connect_attempts": 1})


async def check_jetstream(config: SmokeConfig, *, buckets: bool = False,
                          ensure: bool = False, replicas: int = 1) -> dict[str, Any]:
    """JetStream answers (and with ``buckets`` the fleet buckets exist; ``ensure`` creates
    missing ones with ``replicas`` replicas)."""
    nc = await connect(_once(config.nats), name="fleet-smoke")
    try:
        js = nc.jetstream(timeout=config.timeout_s)
        result: dict[str, Any] = {"check": "jetstream", "ok": True}
        if ensure:
            checks = await ensure_buckets(js, replicas=replicas)
            result["created"] = [c.bucket for c in checks if c.created]
        found, missing = [], []
        for spec in BUCKETS:
            try:
                await js.stream_info(kv_stream_name(spec.name))
                found.append(spec.name)
            except nats.js.errors.NotFoundError:
                missing.append(spec.name)  # JetStream answered: the stream is not there
            except nats.errors.TimeoutError as exc:
                raise SmokeFailed(f"JetStream did not answer within {config.timeout_s:g}s "
                                  f"(is it enabled for this account?): {exc}") from exc
        result["buckets"] = found
        if buckets and missing:
            raise SmokeFailed(f"JetStream answers, but these buckets are missing: "
                              f"{', '.join(missing)}")
        return result
    finally:
        await drain(nc)


async def check_callout(config: SmokeConfig) -> dict[str, Any]:
    """The configured credential gets in; a forged token is refused by the callout."""
    settings = _once(config.nats)
    nc = await connect(settings, name="fleet-smoke")
    try:
        await nc.flush(timeout=max(1, round(config.timeout_s)))
    finally:
        await drain(nc)
    forged = settings.model_copy(update={"auth": TokenAuth.model_validate({"token": FORGED_TOKEN})})
    try:
        bad = await connect(forged, name="fleet-smoke-forged")
    except FleetError as exc:
        return {"check": "callout", "ok": True, "allowed": True,
                "forged_refused": str(exc)[:200]}
    await drain(bad)
    raise SmokeFailed("a forged token was let in: the auth callout is not deciding connections")


async def check_token(config: SmokeConfig) -> dict[str, Any]:
    """The identity provider issues an access token for the configured machine key."""
    from harmony_fleet.bus.tokens import MachineKey, exchange

    auth = config.nats.auth
    if not isinstance(auth, ZitadelAuth):
        raise SmokeFailed("the token check needs [nats] auth with mode = \"zitadel\"")
    token = await asyncio.to_thread(exchange, auth, MachineKey.load(auth.key_file))
    if not token.value:
        raise SmokeFailed(f"{auth.issuer} issued an empty token")
    return {"check": "token", "ok": True, "issuer": auth.issuer}


async def run_check(name: str, config: SmokeConfig, *, buckets: bool = False,
                    ensure: bool = False, replicas: int = 1) -> dict[str, Any]:
    if name == "jetstream":
        return await check_jetstream(config, buckets=buckets, ensure=ensure, replicas=replicas)
    if name == "callout":
        return await check_callout(config)
    if name == "token":
        return await check_token(config)
    raise SmokeFailed(f"unknown smoke check {name!r}")


def describe(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=True)
