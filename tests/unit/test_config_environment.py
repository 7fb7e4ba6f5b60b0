"""Daemon configs read TOML and ``<PREFIX><SECTION>__<FIELD>`` environment overrides
(harmony_fleet.config) with pydantic-settings' rules, without the package: the same
environment gives the same config as a pydantic-settings ``BaseSettings`` with the same
fields (the reference, a test dependency only), and the file, the environment and keyword
overrides take precedence in that order, sections merged key by key."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from harmony_fleet.agent.config import AgentConfig
from harmony_fleet.config import ConfigError, TomlConfig


class Mode(enum.StrEnum):
    AUTO = "auto"
    HOST = "host"


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    commands: list[str] = Field(default_factory=list)


class Password(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["password"] = "password"
    user: str = "u"
    secret_file: Path | None = None


class Token(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["token"]
    token_file: Path


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    level: str = "info"
    as_json: bool = Field(default=False, alias="json")
    interval_s: float = 10.0
    count: int | None = None
    mode: Mode = Mode.AUTO
    labels: dict[str, str] = Field(default_factory=dict)
    urls: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    rules: list[Rule] = Field(default_factory=list)
    auth: Password | Token = Field(default_factory=Password, discriminator="mode")


class Fields(BaseModel):
    main: Section = Field(default_factory=Section)
    other: Section = Field(default_factory=Section)
    top: int = 1


class Ours(Fields, TomlConfig):
    env_prefix: ClassVar[str] = "TEST_CFG_"


class Theirs(Fields, BaseSettings):
    """What harmony_fleet.config.TomlConfig was, on pydantic-settings: init > env > TOML."""

    model_config = SettingsConfigDict(env_prefix="TEST_CFG_", env_nested_delimiter="__",
                                      extra="forbid")
    toml_file: ClassVar[Path]

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings,
                TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))


FILE = """
top = 2
[main]
level = "debug"
labels = { site = "lab" }
[main.auth]
mode = "password"
user = "from-file"
[other]
interval_s = 3
"""

ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"TEST_CFG_MAIN__LEVEL": "warning"},
    {"test_cfg_main__level": "error", "TEST_CFG_TOP": "7"},                 # any case
    {"TEST_CFG_MAIN__JSON": "true", "TEST_CFG_OTHER__INTERVAL_S": "0.5"},   # an alias
    {"TEST_CFG_MAIN__COUNT": "3", "TEST_CFG_MAIN__MODE": "host"},           # an enum
    {"TEST_CFG_MAIN__LABELS": '{"role": "sensor"}'},                       # a table: JSON
    {"TEST_CFG_MAIN__URLS": '["tls://a:4222", "tls://b:4222"]'},
    {"TEST_CFG_MAIN__RULES": json.dumps([{"name": "r", "commands": ["ls"]}])},
    {"TEST_CFG_MAIN__AUTH__USER": "from-env"},                             # into a union member
    # a whole section: merged with the file's (its user= is then refused by both)
    {"TEST_CFG_MAIN__AUTH": '{"mode": "token", "token_file": "/t"}'},
    {"TEST_CFG_OTHER__AUTH": '{"mode": "token", "token_file": "/t"}'},
    {"TEST_CFG_OTHER": '{"level": "debug", "interval_s": 1}',
     "TEST_CFG_OTHER__LEVEL": "critical"},                                  # JSON, then a field
    {"TEST_CFG_UNRELATED": "x", "OTHER_PREFIX_MAIN__LEVEL": "x"},          # not ours: ignored
]


@pytest.mark.parametrize("environ", ENVIRONMENTS)
def test_the_environment_means_what_it_means_to_pydantic_settings(
    environ: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(FILE, encoding="utf-8")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    Theirs.toml_file = path
    try:
        theirs = Theirs()
    except ValidationError as exc:  # both refuse it, for the same field
        where = ".".join(str(part) for part in exc.errors()[0]["loc"])
        with pytest.raises(ConfigError, match=where):
            Ours.load(path)
        return
    assert Ours.load(path).model_dump() == theirs.model_dump()
    assert Ours.load(path, top=9).model_dump() == Theirs(top=9).model_dump()


@pytest.mark.parametrize(("environ", "fragment"), [
    ({"TEST_CFG_MAIN__LABELS": "site=lab"}, "TEST_CFG_MAIN__LABELS must be JSON"),
    ({"TEST_CFG_MAIN__INTERVAL_S": "soon"}, "main.interval_s"),
    ({"TEST_CFG_MAIN__NOPE": "1"}, "main.nope"),
])
def test_bad_environment_values_are_config_errors(
    environ: dict[str, str], fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(FILE, encoding="utf-8")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=fragment):
        Ours.load(path)


def test_file_then_environment_then_keywords(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text(FILE, encoding="utf-8")
    monkeypatch.setenv("TEST_CFG_MAIN__LEVEL", "warning")
    monkeypatch.setenv("TEST_CFG_MAIN__INTERVAL_S", "2")
    config = Ours.load(path, main={"interval_s": 4})
    assert config.main.level == "warning"          # env over file
    assert config.main.interval_s == 4             # keywords over env
    assert config.main.labels == {"site": "lab"}   # the file's, merged with both
    assert config.main.auth == Password(user="from-file")
    assert config.top == 2


def test_agent_overrides_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[agent]\ndevice_id = "pi-01"\n', encoding="utf-8")
    monkeypatch.setenv("FLEET_AGENT_AGENT__DEVICE_ID", "pi-02")
    monkeypatch.setenv("FLEET_AGENT_LOG__JSON", "true")
    monkeypatch.setenv("FLEET_AGENT_EXEC__ENABLED", "true")
    monkeypatch.setenv("FLEET_AGENT_EXEC__ALLOW", '[{"commands": ["ls"]}]')
    monkeypatch.setenv("FLEET_OPERATOR_LOG__LEVEL", "nonsense")  # another daemon's
    config = AgentConfig.load(path)
    assert config.agent.device_id == "pi-02"
    assert config.log.json_logs is True
    assert config.exec.allows("ns_app", "web", "ls")
