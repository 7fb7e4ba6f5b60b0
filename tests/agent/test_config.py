"""fleet-agent configuration: TOML file, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from harmony_fleet.agent.config import AgentConfig, ConfigError
from harmony_fleet.agent.main import main
from harmony_fleet.bus.settings import UserPasswordAuth

GOOD = """
[agent]
device_id = "pi-kitchen-01"
runtime_enabled = false
heartbeat_interval_s = 2.5
labels = { site = "lab", "example.com/role" = "sensor" }

[nats]
urls = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
[nats.auth]
mode = "userpass"
user = "device"
password_file = "/etc/fleet-agent/nats-password"

[log]
level = "debug"
json = true

[metrics]
listen = "127.0.0.1:9464"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_full_config_is_read(tmp_path: Path) -> None:
    config = AgentConfig.load(write(tmp_path, GOOD))
    assert config.agent.device_id == "pi-kitchen-01"
    assert config.agent.runtime_enabled is False
    assert config.agent.heartbeat_interval_s == 2.5
    assert config.agent.labels == {"site": "lab", "example.com/role": "sensor"}
    assert config.nats.urls == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    assert isinstance(config.nats.auth, UserPasswordAuth)
    assert config.nats.auth.password_file == Path("/etc/fleet-agent/nats-password")
    assert config.log.level == "debug"
    assert config.log.json_logs is True
    assert config.metrics.listen == "127.0.0.1:9464"


def test_defaults(tmp_path: Path) -> None:
    config = AgentConfig.load(write(tmp_path, '[agent]\ndevice_id = "d1"\n'))
    assert config.agent.runtime_enabled is True
    assert config.agent.heartbeat_interval_s == 10.0
    assert config.metrics.listen is None
    assert config.log.json_logs is False


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_AGENT_AGENT__DEVICE_ID", "pi-02")
    monkeypatch.setenv("FLEET_AGENT_LOG__JSON", "false")
    config = AgentConfig.load(write(tmp_path, GOOD))
    assert config.agent.device_id == "pi-02"
    assert config.log.json_logs is False
    assert config.agent.labels["site"] == "lab"  # the rest of the section still comes from the file


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[agent]\ndevice_id = "Bad_Id"\n', "agent.device_id"),
        ("[agent]\nruntime_enabled = true\n", "agent.device_id"),
        ('[agent]\ndevice_id = "d1"\nheartbeat_interval_s = 0\n', "heartbeat_interval_s"),
        ('[agent]\ndevice_id = "d1"\ntypo_field = 1\n', "typo_field"),
        ('[agent]\ndevice_id = "d1"\nlabels = { "bad key!" = "x" }\n', "labels"),
        ('[agent]\ndevice_id = "d1"\n[nats.auth]\nmode = "userpass"\nuser = "u"\n', "password"),
        ('[agent]\ndevice_id = "d1"\n[metrics]\nlisten = "nope"\n', "metrics.listen"),
        ("[agent\n", "config.toml"),
    ],
    ids=["bad-id", "missing-id", "zero-interval", "unknown-field", "bad-label", "no-password",
         "bad-listen", "toml-syntax"],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        AgentConfig.load(path)
    assert str(path) in str(err.value)
    assert needle in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        AgentConfig.load(tmp_path / "absent.toml")


def test_password_never_in_repr(tmp_path: Path) -> None:
    auth = UserPasswordAuth(user="device", password=SecretStr("hunter2-secret"))
    assert "hunter2-secret" not in repr(auth)
    assert "hunter2-secret" not in auth.model_dump_json()


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert main(["--config", str(path), "--check-config"]) == 0
    assert "pi-kitchen-01" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\ndevice_id = "NO"\n')
    assert main(["--config", str(bad), "--check-config"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_systemd_unit_is_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print-systemd-unit"]) == 0
    unit = capsys.readouterr().out
    assert "Type=notify" in unit
    assert "KillMode=process" in unit  # workloads survive agent restarts
    assert "ExecStart=/opt/fleet-agent/bin/fleet-agent --config /etc/fleet-agent/config.toml" in unit
