"""What every daemon's configuration shares: a TOML file, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

from harmony_fleet.contracts import validation_summary


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogSection(Section):
    level: str = Field(default="info", pattern=r"(?i)^(debug|info|warning|error|critical)$")
    json_logs: bool = Field(default=False, alias="json")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MetricsSection(Section):
    listen: str | None = Field(
        default=None, pattern=r"^[^:]*:\d+$", description="host:port for /metrics"
    )


class TomlConfig(BaseSettings):
    """A daemon config: ``load(path)`` reads TOML; ``<env_prefix><SECTION>__<FIELD>`` overrides."""

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
    def load(cls, path: Path, **overrides: Any) -> Self:
        """Read ``path`` (TOML), apply environment overrides, validate."""
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        bound: type[Self] = type(cls.__name__, (cls,), {"_toml_file": path})
        try:
            return bound(**overrides)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {validation_summary(exc)}") from exc
        except ValueError as exc:  # TOML syntax errors
            raise ConfigError(f"{path}: {exc}") from exc
