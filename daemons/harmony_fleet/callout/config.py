"""``fleet-callout`` configuration (``/etc/fleet-callout/config.toml``; env ``FLEET_CALLOUT_*``).

Example::

    [callout]                          # the auth callout (omit or enabled = false: writer only)
    enabled = true
    issuer_seed_file = "/etc/fleet-callout/issuer.nk"   # account nkey seed (SA...)
    xkey_seed_file = "/etc/fleet-callout/xkey.nk"       # optional: sealed requests
    target_account = "FLEET"

    [callout.nats]                     # the callout's own user, in account AUTH
    urls = ["tls://nats:4222"]
    tls_ca_file = "/etc/fleet-callout/ca.pem"         # TLS: the CA of the server's certificate
    auth = { mode = "userpass", user = "callout", password_file = "/etc/fleet-callout/pw" }

    # revocations: devices in the device-revocations bucket are refused. Read over a FLEET
    # account connection: [callout.revocations_nats] (else the writer's, [writer.nats])
    check_revocations = true

    [oidc]
    issuer = "https://zitadel.example.net"
    audience = "<fleet project id>"

    [writer]                           # the report writer, in account FLEET
    enabled = true
    [writer.nats]
    urls = ["nats://nats:4222"]
    auth = { mode = "userpass", user = "writer", password_file = "/etc/fleet-callout/writer-pw" }
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.config import DaemonConfig, Section
from harmony_fleet.contracts import DEFAULT_DEVICE_LEASE_S, REMOVED_STATE_TTL
from harmony_fleet.contracts.identity import ADMIN_ROLES, DEVICE_ROLE, FLEET_ACCOUNT

#: The longest a NATS user JWT issued by the callout lives (it also ends with the token).
DEFAULT_MAX_USER_JWT_S = 3600


class CalloutSection(Section):
    enabled: bool = True
    issuer_seed_file: Path | None = Field(default=None, description="account nkey seed (SA…)")
    xkey_seed_file: Path | None = None
    target_account: str = FLEET_ACCOUNT
    device_role: str = DEVICE_ROLE
    admin_roles: list[str] = Field(default_factory=lambda: sorted(ADMIN_ROLES))
    max_user_jwt_s: int = Field(default=DEFAULT_MAX_USER_JWT_S, ge=10)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    check_revocations: bool = Field(
        default=True,
        description="Refuse devices listed in the device-revocations bucket (fail closed: "
                    "refuse devices while it cannot be read). Turning it off means a revoked "
                    "device comes back with any valid token: INSECURE")
    revocations_nats: NatsSettings | None = Field(
        default=None,
        description="A FLEET-account connection that may read device-revocations (direct "
                    "get); default: the writer's [writer.nats]")

    @model_validator(mode="after")
    def _seed(self) -> CalloutSection:
        if self.enabled and self.issuer_seed_file is None:
            raise ValueError("callout.issuer_seed_file is required when the callout is enabled")
        return self


class OidcSection(Section):
    issuer: str = Field(default="", pattern=r"^(https?://.*)?$")
    issuer_url: str | None = Field(
        default=None, pattern=r"^https?://",
        description="Where to reach the issuer when that is not its identity ``issuer``: "
                    "discovery is fetched there, and discovery URLs under ``issuer`` are "
                    "reached under this base instead")
    audience: str = ""
    jwks_max_age_s: float = Field(default=300, gt=0)
    leeway_s: float = Field(default=5, ge=0)


class WriterSection(Section):
    """The report writer and the desired-state watch grants: what devices may make the server
    side do, per device."""

    enabled: bool = True
    nats: NatsSettings = Field(default_factory=NatsSettings)
    reports_per_s: float = Field(
        default=20.0, gt=0, description="Reports one device may send per second, sustained")
    report_burst: int = Field(
        default=200, ge=1, description="Reports one device may send at once (start-up)")
    watches_per_s: float = Field(
        default=0.2, gt=0, description="Watch (re)starts one device may ask for per second")
    watch_burst: int = Field(default=10, ge=1)
    watch_concurrency: int = Field(
        default=32, ge=1, description="Consumer (re)creations in flight at once")
    removed_grace_s: float = Field(
        default=REMOVED_STATE_TTL.total_seconds(), gt=0,
        description="Removed reports are accepted (and kept) this long after a deployment "
                    "was deleted")
    refusal_log_interval_s: float = Field(
        default=60.0, gt=0, description="At most one log line per device and reason this often")
    device_lease_s: float = Field(
        default=DEFAULT_DEVICE_LEASE_S, gt=0,
        description="One agent per device id: another instance is refused until the current "
                    "one has sent nothing for this long (agents heartbeat at most every "
                    "third of it)")


class CalloutConfig(DaemonConfig):
    callout: CalloutSection = Field(default_factory=lambda: CalloutSection(enabled=False))
    oidc: OidcSection = Field(default_factory=OidcSection)
    writer: WriterSection = Field(default_factory=WriterSection)

    env_prefix: ClassVar[str] = "FLEET_CALLOUT_"

    @model_validator(mode="after")
    def _oidc(self) -> CalloutConfig:
        if self.callout.enabled and not (self.oidc.issuer and self.oidc.audience):
            raise ValueError("oidc.issuer and oidc.audience are required for the callout")
        if not (self.callout.enabled or self.writer.enabled):
            raise ValueError("nothing to run: enable the callout, the writer or both")
        if (self.callout.enabled and self.callout.check_revocations
                and self.callout.revocations_nats is None and not self.writer.enabled):
            raise ValueError("callout.revocations_nats is required when the writer is disabled "
                             "(or set callout.check_revocations = false: INSECURE)")
        return self

    def revocations_nats(self) -> NatsSettings | None:
        """The connection the callout reads revocations over (None: no check)."""
        if not (self.callout.enabled and self.callout.check_revocations):
            return None
        return self.callout.revocations_nats or self.writer.nats
