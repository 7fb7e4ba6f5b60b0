"""What every daemon's configuration shares: a TOML file, environment overrides, clear errors.

A config is a pydantic model validated from three sources, each overriding the one before,
nested sections merged key by key: the TOML file, then environment variables
``<env_prefix><FIELD>`` and ``<env_prefix><SECTION>__<FIELD>`` (any depth, names not case
sensitive), then keyword arguments of :meth:`TomlConfig.load`. A variable for a list, a table
or a section holds JSON (``FLEET_AGENT_EXEC__ALLOW='[{"commands": ["ls"]}]'``); any other
holds the text pydantic validates (``FLEET_AGENT_LOG__JSON=true``). These are
pydantic-settings' rules for the same names (``tests/unit/test_config_environment.py``
compares the two); the package itself is not used, a device agent's memory being the reason
(``benchmarks/bench_agent_memory.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tomllib
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harmony_fleet.contracts import validation_summary
from harmony_fleet.errors import FleetError


class ConfigError(FleetError, ValueError):
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


class TomlConfig(BaseModel):
    """A daemon config: ``load(path)`` reads TOML; ``<env_prefix><SECTION>__<FIELD>`` overrides."""

    #: the environment variables' prefix (``FLEET_AGENT_``); subclasses set it
    env_prefix: ClassVar[str] = ""
    env_nested_delimiter: ClassVar[str] = "__"

    # as pydantic-settings' BaseSettings had it: the top level's defaults are validated too
    model_config = ConfigDict(extra="forbid", validate_default=True)

    @classmethod
    def load(cls, path: Path, **overrides: Any) -> Self:
        """Read ``path`` (TOML), apply environment overrides, validate."""
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            with path.open("rb") as handle:
                document = tomllib.load(handle)
            values = _merged(_merged(document, cls.environment_values(os.environ)), overrides)
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {validation_summary(exc)}") from exc
        except (ValueError, OSError) as exc:  # TOML syntax, an environment value that is no JSON
            raise ConfigError(f"{path}: {exc}") from exc

    @classmethod
    def environment_values(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """The values that ``environ`` sets for this config (pure): nested dicts keyed by field
        (or alias) names, as :meth:`load` merges them over the file."""
        prefix, delimiter = cls.env_prefix.lower(), cls.env_nested_delimiter
        values: dict[str, Any] = {}
        for name, raw in sorted(environ.items()):
            lowered = name.lower()
            if not lowered.startswith(prefix) or len(lowered) == len(prefix):
                continue
            path = lowered[len(prefix):].split(delimiter)
            if not path[0] or _field(cls, path[0]) is None:
                continue  # not one of this config's fields (another daemon's, or a typo'd one)
            annotation = _annotation_at(cls, path)
            value: Any = raw
            if raw and annotation is not None and _is_complex(annotation):
                try:
                    value = json.loads(raw)
                except ValueError:
                    raise ValueError(f"environment variable {name} must be JSON for "
                                     f"this setting") from None
            target = values
            for key in path[:-1]:
                child = target.get(key)
                if not isinstance(child, dict):
                    child = target[key] = {}
                target = child
            existing = target.get(path[-1])
            target[path[-1]] = (_merged(value, existing) if isinstance(value, dict)
                                and isinstance(existing, dict) else value)
        return values


def _merged(base: Any, override: Any) -> Any:
    """``override`` over ``base``, nested dicts merged key by key (pure)."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if key in out else value
    return out


def _members(annotation: Any) -> list[Any]:
    """The types of a union (``X | None``, ``Annotated`` unwrapped), or the type itself."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _field(model: type[BaseModel], key: str) -> Any:
    """The annotation of ``model``'s field named or aliased ``key`` (case-insensitively)."""
    for name, info in model.model_fields.items():
        if key in (name.lower(), (info.alias or "").lower()):
            return info.annotation
    return None


def _annotation_at(model: type[BaseModel], path: list[str]) -> Any:
    """The annotation of the field at ``path`` below ``model`` (through sections, and unions
    of sections: the first member that has the key); None when there is no such field."""
    annotation: Any = model
    for key in path:
        found = None
        for member in _members(annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                found = _field(member, key)
                if found is not None:
                    break
        if found is None:
            return None
        annotation = found
    return annotation


def _is_complex(annotation: Any) -> bool:
    """A list, a table or a section (its environment value is JSON)."""
    for member in _members(annotation):
        origin = typing.get_origin(member) or member
        if isinstance(origin, type) and issubclass(
                origin, (BaseModel, list, dict, set, tuple, frozenset)):
            return True
    return False


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
    check: Callable[[DaemonConfigT], list[str]] | None = None,
    extra: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int | None]]
    | None = None,
) -> int:
    """The command line every daemon shares: ``-c/--config``, ``--check-config``, logging,
    metrics, one stop flag fed by SIGTERM/SIGINT. Exit codes: 0 ok, 1 crashed, 2 bad config,
    and a :class:`~harmony_fleet.daemon.DaemonExit`'s own code.

    ``check`` (``--check-config`` only) looks past the file at what it names (key files…):
    it returns warnings to print, or raises :class:`ConfigError` for what the daemon would
    refuse."""
    from harmony_fleet.daemon import setup_logging, start_metrics_server

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
        return _check_config(prog, args.config, config, describe, check)
    setup_logging(config.log.level, config.log.json_logs)
    if config.metrics.listen:
        start_metrics_server(config.metrics.listen)
    return _serve(prog, config, run)


def _serve(prog: str, config: DaemonConfigT,
           run: Callable[[DaemonConfigT, asyncio.Event], Awaitable[None]]) -> int:
    """Run the daemon until its stop flag; its exit code (1: crashed, DaemonExit: its own)."""
    from harmony_fleet.daemon import DaemonExit, install_stop_signals

    async def _main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run(config, stop)

    try:
        asyncio.run(_main())
    except KeyboardInterrupt:  # pragma: no cover - the signal handlers normally catch it
        return 130
    except DaemonExit as exc:
        logging.getLogger(prog).error("%s: %s", prog, exc)
        return exc.exit_code
    except Exception:
        logging.getLogger(prog).exception("%s failed", prog)
        return 1
    return 0


def _check_config(
    prog: str, path: Path, config: DaemonConfigT, describe: Callable[[DaemonConfigT], str],
    check: Callable[[DaemonConfigT], list[str]] | None,
) -> int:
    """``--check-config`` after the file validated: what it names, then OK (or exit 2)."""
    try:
        warnings = check(config) if check else []
    except ConfigError as exc:
        print(f"{prog}: invalid configuration: {path}: {exc}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"{prog}: warning: {path}: {warning}", file=sys.stderr)
    print(f"{path}: {describe(config)}")
    return 0
