"""What every daemon's configuration shares: a TOML file, environment overrides, clear errors."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

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


class DaemonConfig(TomlConfig):
    """A daemon config with the sections every daemon has."""

    log: LogSection = Field(default_factory=LogSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)


DaemonConfigT = TypeVar("DaemonConfigT", bound=DaemonConfig)


def daemon_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    config_cls: type[DaemonConfigT],
    default_config: Path,
    run: Callable[[DaemonConfigT, asyncio.Event], Awaitable[None]],
    describe: Callable[[DaemonConfigT], str] = lambda _config: "OK",
    extra: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int | None]]
    | None = None,
) -> int:
    """The command line every daemon shares: ``-c/--config``, ``--check-config``, logging,
    metrics, one stop flag fed by SIGTERM/SIGINT. Exit codes: 0 ok, 1 crashed, 2 bad config."""
    from harmony_fleet.daemon import install_stop_signals, setup_logging, start_metrics_server

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-c", "--config", type=Path, default=default_config,
                        help=f"TOML config file (default {default_config})")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config and exit")
    early = extra(parser) if extra else None
    args = parser.parse_args(argv)
    if early is not None:
        code = early(args)
        if code is not None:
            return code
    try:
        config = config_cls.load(args.config)
    except ConfigError as exc:
        print(f"{prog}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.config}: {describe(config)}")
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
    except KeyboardInterrupt:  # pragma: no cover - the signal handlers normally catch it
        return 130
    except Exception:
        logging.getLogger(prog).exception("%s failed", prog)
        return 1
    return 0
