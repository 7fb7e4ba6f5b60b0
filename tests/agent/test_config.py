"""fleet-agent configuration: TOML file, environment overrides, clear errors."""

from __future__ import annotations

import json
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


def with_password_file(tmp_path: Path, text: str = GOOD) -> str:
    """``text`` naming a password file that exists (``--check-config`` reads it)."""
    password = tmp_path / "nats-password"
    password.write_text("s3cret")
    password.chmod(0o600)
    return text.replace("/etc/fleet-agent/nats-password", str(password))


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, with_password_file(tmp_path))
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


def zitadel_config(tmp_path: Path, key_mode: int, allow: bool | None = None) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    key = tmp_path / "zitadel-key.json"
    key.write_text(json.dumps({"type": "serviceaccount", "keyId": "k", "key": pem,
                               "userId": "u"}))
    key.chmod(key_mode)
    allow_line = "" if allow is None else \
        f"allow_insecure_key_permissions = {str(allow).lower()}\n"
    return write(tmp_path, (
        '[agent]\ndevice_id = "pi-01"\n[nats]\nurls = ["nats://127.0.0.1:4222"]\n'
        '[nats.auth]\nmode = "zitadel"\nissuer = "https://zitadel.example.net"\n'
        f'key_file = {json.dumps(str(key))}\nproject_id = "p"\n{allow_line}'))


def test_check_config_refuses_a_key_file_others_can_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = zitadel_config(tmp_path, 0o644)
    assert main(["--config", str(path), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert "[nats.auth] key_file" in err
    assert "permissions 0644" in err
    assert "too open" in err
    assert "PRIVATE KEY" not in err


def test_check_config_warns_about_an_allowed_open_key_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = zitadel_config(tmp_path, 0o640, allow=True)
    assert main(["--config", str(path), "--check-config"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err
    assert "permissions 0640" in captured.err
    assert "allowed by allow_insecure_key_permissions = true" in captured.err
    assert "OK (device pi-01)" in captured.out


def test_check_config_accepts_a_private_key_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = zitadel_config(tmp_path, 0o600, allow=False)
    assert main(["--config", str(path), "--check-config"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "OK (device pi-01)" in captured.out


def test_check_config_reports_a_missing_key_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = zitadel_config(tmp_path, 0o600)
    (tmp_path / "zitadel-key.json").unlink()
    assert main(["--config", str(path), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the machine key file" in err
    assert "No such file or directory" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("url", "why"), [
    ("nats//x", "expected nats://HOST:PORT"),
    ("http://x:4222", "the scheme must be one of"),
    ("nats://x:99999", "the port must be a number from 1 to 65535"),
    ("nats://x:port", "the port must be a number from 1 to 65535"),
])
def test_check_config_refuses_a_malformed_nats_url(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, why: str) -> None:
    text = with_password_file(tmp_path).replace('"nats://10.0.0.2:4222"', json.dumps(url))
    assert main(["--config", str(write(tmp_path, text)), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert "nats.urls.1" in err
    assert why in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("problem", ["missing", "empty", "directory"])
def test_check_config_refuses_a_password_file_it_cannot_use(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str) -> None:
    text = with_password_file(tmp_path)
    password = tmp_path / "nats-password"
    password.unlink()
    if problem == "empty":
        password.write_text("")
    elif problem == "directory":
        password.mkdir()
    assert main(["--config", str(write(tmp_path, text)), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert f"[nats.auth] cannot read the password file {password}" in err \
        or f"[nats.auth] the password file {password} is empty" in err
    assert len(err.strip().splitlines()) == 1


def test_the_agent_itself_exits_2_on_a_missing_password_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not only ``--check-config``: starting with it is one line and exit 2, no traceback."""
    absent = tmp_path / "absent"
    path = write(tmp_path, (
        '[agent]\ndevice_id = "pi-01"\nruntime_enabled = false\n'
        f"lock_dir = {json.dumps(str(tmp_path / 'locks'))}\n"
        '[nats]\nurls = ["nats://127.0.0.1:4222"]\n'
        f'[nats.auth]\nmode = "userpass"\nuser = "d"\npassword_file = {json.dumps(str(absent))}\n'))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read the password file {absent}: No such file or directory" in err
    assert "Traceback" not in err


def test_check_config_reads_the_tls_settings(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from harmony_fleet.localstack.tls import make_lab_pki

    pki = make_lab_pki(tmp_path / "tls")
    base = with_password_file(tmp_path).replace(
        'urls = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]',
        'urls = ["tls://10.0.0.1:4222", "tls://10.0.0.2:4222"]\ntls_ca_file = "CA"')
    good = write(tmp_path, base.replace("CA", str(pki.ca_file)))
    config = AgentConfig.load(good)
    assert config.nats.tls_ca_file == pki.ca_file
    assert main(["--config", str(good), "--check-config"]) == 0
    missing = write(tmp_path, base.replace("CA", str(tmp_path / "nope.pem")))
    assert main(["--config", str(missing), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert f"[nats] cannot use the CA bundle {tmp_path / 'nope.pem'}" in err
    half = write(tmp_path, base.replace("CA", str(pki.ca_file)).replace(
        "[nats.auth]", f'tls_cert_file = "{pki.cert_file}"\n[nats.auth]'))
    assert main(["--config", str(half), "--check-config"]) == 2
    assert "tls_cert_file and tls_key_file go together" in capsys.readouterr().err
