"""``fleet-callout`` configuration (``/etc/fleet-callout/config.toml``; env ``FLEET_CALLOUT_*``).

Example::

    [callout]                          # the auth callout (omit or enabled = false: writer only)
    enabled = true
    issuer_seed_file = "/etc/fleet-callout/issuer.nk"   # account nkey seed (SA...)
    xkey_seed_file = "/etc/fleet-callout/xkey.nk"       # optional: sealed requests
    target_account = "FLEET"

    [callout.nats]                     # the callout's own user, in account AUTH
    urls = ["nats://nats:4222"]
    auth = { mode = "userpass", user = "callout", password_file = "/etc/fleet-callout/pw" }

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

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.config import DaemonConfig, Section


class CalloutSection(Section):
    enabled: bool = True
    issuer_seed_file: Path | None = Field(default=None, description="account nkey seed (SA…)")
    xkey_seed_file: Path | None = None
    target_account: str = "FLEET"
    device_role: str = "fleet-device"
    admin_roles: list[str] = Field(default_factory=lambda: ["fleet-admin", "fleet-operator"])
    max_user_jwt_s: int = Field(default=3600, ge=10)
    nats: NatsSettings = Field(default_factory=NatsSettings)

    @model_validator(mode="after")
    def _seed(self) -> CalloutSection:
        if self.enabled and self.issuer_seed_file is None:
            raise ValueError("callout.issuer_seed_file is required when the callout is enabled")
        return self


class OidcSection(Section):
    issuer: str = Field(default="", pattern=r"^(https?://.*)?$")
    audience: str = ""
    jwks_max_age_s: float = Field(default=300, gt=0)
    leeway_s: float = Field(default=5, ge=0)


class WriterSection(Section):
    enabled: bool = True
    nats: NatsSettings = Field(default_factory=NatsSettings)


class CalloutConfig(DaemonConfig):
    callout: CalloutSection = Field(default_factory=lambda: CalloutSection(enabled=False))
    oidc: OidcSection = Field(default_factory=OidcSection)
    writer: WriterSection = Field(default_factory=WriterSection)

    model_config = SettingsConfigDict(
        env_prefix="FLEET_CALLOUT_", env_nested_delimiter="__", extra="forbid"
    )

    @model_validator(mode="after")
    def _oidc(self) -> CalloutConfig:
        if self.callout.enabled and not (self.oidc.issuer and self.oidc.audience):
            raise ValueError("oidc.issuer and oidc.audience are required for the callout")
        if not (self.callout.enabled or self.writer.enabled):
            raise ValueError("nothing to run: enable the callout, the writer or both")
        return self
