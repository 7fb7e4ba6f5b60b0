"""Agent configuration: ``/etc/fleet-agent/config.toml``, overridable by environment.

Example::

    [agent]
    device_id = "pi-kitchen-01"
    runtime_enabled = true          # false: no podman; commands and heartbeats only
    heartbeat_interval_s = 10
    labels = { site = "lab", role = "sensor" }

    [nats]
    urls = ["nats://nats.example.net:4222"]
    [nats.auth]
    mode = "userpass"               # development only
    user = "device"
    password_file = "/etc/fleet-agent/nats-password"

    [log]
    level = "info"
    json = true

    [metrics]
    listen = "127.0.0.1:9464"       # omit to disable

Environment variables ``FLEET_AGENT_<SECTION>__<FIELD>`` override the file, e.g.
``FLEET_AGENT_AGENT__DEVICE_ID=pi-02`` or ``FLEET_AGENT_LOG__JSON=true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.contracts import DeviceId, Labels, validation_summary

DEFAULT_CONFIG_PATH = Path("/etc/fleet-agent/config.toml")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Section):
    device_id: DeviceId
    runtime_enabled: bool = Field(
        default=True, description="Drive podman; when false only commands and reports run"
    )
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    info_interval_s: float = Field(
        default=300.0, gt=0, description="Re-publish device-info this often (labels, inventory)"
    )
    labels: Labels = Field(default_factory=dict)
    max_concurrent_commands: int = Field(default=16, ge=1)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)


class LogSection(_Section):
    level: str = Field(default="info", pattern=r"(?i)^(debug|info|warning|error|critical)$")
    json_logs: bool = Field(default=False, alias="json")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MetricsSection(_Section):
    listen: str | None = Field(
        default=None, pattern=r"^[^:]*:\d+$", description="host:port for /metrics"
    )


class AgentConfig(BaseSettings):
    agent: AgentSection
    nats: NatsSettings = Field(default_factory=NatsSettings)
    log: LogSection = Field(default_factory=LogSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    model_config = SettingsConfigDict(
        env_prefix="FLEET_AGENT_", env_nested_delimiter="__", extra="forbid"
    )
    _toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, path: Path, **overrides: Any) -> AgentConfig:
        """Read ``path`` (TOML), apply environment overrides, validate."""
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        bound: type[AgentConfig] = type(cls.__name__, (cls,), {"_toml_file": path})
        try:
            return bound(**overrides)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {validation_summary(exc)}") from exc
        except ValueError as exc:  # TOML syntax errors
            raise ConfigError(f"{path}: {exc}") from exc
