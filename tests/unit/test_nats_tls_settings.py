"""TLS in the connection settings: what turns it on, what is refused before connecting, how
connection files and the environment carry it, and what a TLS failure is called."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from harmony_fleet.bus.connection import tls_failure
from harmony_fleet.bus.profile import (
    ConnectionConfigError,
    resolve_settings,
    resolve_system_settings,
)
from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.bus.tls import TlsConfigError, client_ssl_context
from harmony_fleet.localstack.tls import DEFAULT_SANS, TlsSetupError, make_lab_pki, server_sans


def test_tls_is_off_unless_asked_for() -> None:
    plain = NatsSettings(urls=["nats://127.0.0.1:4222"])
    assert not plain.uses_tls
    assert client_ssl_context(plain) is None
    assert NatsSettings(urls=["tls://h:4222"]).uses_tls
    assert NatsSettings(urls=["nats://a:1", "nats://b:2"], tls_ca_file=Path("/ca")).uses_tls


def test_client_certificate_and_key_go_together() -> None:
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        NatsSettings(urls=["tls://h:4222"], tls_cert_file=Path("/c.pem"))


def test_verification_is_always_on(tmp_path: Path) -> None:
    pki = make_lab_pki(tmp_path / "tls")
    context = client_ssl_context(NatsSettings(urls=["tls://h:1"], tls_ca_file=pki.ca_file))
    assert context is not None
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert "insecure" not in NatsSettings.model_fields
    assert not any("verify" in name for name in NatsSettings.model_fields)


def test_unusable_tls_files_are_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="cannot use the CA bundle"):
        client_ssl_context(NatsSettings(urls=["tls://h:1"], tls_ca_file=tmp_path / "none.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TlsConfigError):
        client_ssl_context(NatsSettings(urls=["tls://h:1"], tls_ca_file=junk))
    pki = make_lab_pki(tmp_path / "tls")
    with pytest.raises(TlsConfigError, match="client certificate"):  # the CA is no key
        client_ssl_context(NatsSettings(urls=["tls://h:1"], tls_ca_file=pki.ca_file,
                                        tls_cert_file=pki.cert_file, tls_key_file=pki.ca_file))
    assert TlsConfigError.exit_code == 2


def test_lab_pki_files_are_private_and_name_the_slirp_host(tmp_path: Path) -> None:
    pki = make_lab_pki(tmp_path / "tls", ["fleet.lab.example", "192.0.2.7"])
    for path in (pki.ca_file, pki.cert_file, pki.key_file):
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "tls").stat().st_mode & 0o777) == "0o700"
    assert pki.sans == (*DEFAULT_SANS, "fleet.lab.example", "192.0.2.7")
    assert "10.0.2.2" in DEFAULT_SANS
    assert server_sans(["localhost", "x.example"]) == (*DEFAULT_SANS, "x.example")
    for bad in ("", "a b", "-x", "x" * 64, "exa_mple.com"):
        with pytest.raises(TlsSetupError):
            server_sans([bad])


def test_connection_file_and_environment_carry_tls(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLEET_NATS_URL", "FLEET_NATS_TLS_CA_FILE", "FLEET_CONNECTION_FILE",
                 "FLEET_NATS_SYSTEM_USER", "FLEET_NATS_SYSTEM_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "stack.json"
    state.write_text(json.dumps({
        "connection": {"urls": ["tls://127.0.0.1:4222"], "tls_ca_file": "/lab/ca.pem",
                       "auth": {"mode": "userpass", "user": "admin", "password": "pw"}},
        "system_connection": {"urls": ["tls://127.0.0.1:4222"], "tls_ca_file": "/lab/ca.pem",
                              "auth": {"mode": "userpass", "user": "sys",
                                       "password_file": "/lab/sys-pw"}},
    }))
    settings = resolve_settings(connection_file=state)
    assert settings.tls_ca_file == Path("/lab/ca.pem")
    # an explicit CA wins over the file's; the environment over the file's too
    assert resolve_settings(connection_file=state,
                            tls_ca_file="/other.pem").tls_ca_file == Path("/other.pem")
    monkeypatch.setenv("FLEET_NATS_TLS_CA_FILE", "/env.pem")
    assert resolve_settings(connection_file=state).tls_ca_file == Path("/env.pem")
    monkeypatch.delenv("FLEET_NATS_TLS_CA_FILE")

    system = resolve_system_settings(settings, connection_file=state)
    assert system.auth.model_dump()["user"] == "sys"
    assert system.tls_ca_file == Path("/lab/ca.pem")
    # explicit system credentials: the fleet connection's servers and TLS, another user
    explicit = resolve_system_settings(settings, user="sys2", password="pw2",
                                       use_environment=False)
    assert explicit.urls == settings.urls
    assert explicit.tls_ca_file == settings.tls_ca_file
    assert explicit.auth.model_dump()["user"] == "sys2"
    with pytest.raises(ConnectionConfigError, match="go together"):
        resolve_system_settings(settings, user="sys2", use_environment=False)
    without = tmp_path / "plain.json"
    without.write_text(json.dumps({"urls": ["nats://127.0.0.1:4222"]}))
    with pytest.raises(ConnectionConfigError, match="system_connection"):
        resolve_system_settings(settings, connection_file=without)
    with pytest.raises(ConnectionConfigError, match="no system account credentials"):
        resolve_system_settings(settings, use_environment=False)


def test_what_a_tls_failure_is_called() -> None:
    plain = NatsSettings(urls=["nats://127.0.0.1:4222"])
    secure = NatsSettings(urls=["tls://127.0.0.1:4222"], tls_ca_file=Path("/ca"))
    refused = ssl.SSLCertVerificationError(1, "certificate verify failed")
    refused.verify_message = "Hostname mismatch, certificate is not valid for '127.0.0.1'."
    said = tls_failure(refused, plain)
    assert said is not None
    assert said.startswith("the server requires TLS and this client has no TLS settings")
    said = tls_failure(refused, secure)
    assert said is not None
    assert "Hostname mismatch" in said
    assert "tls_ca_file" in said
    assert tls_failure(ConnectionResetError(), secure) is not None
    assert tls_failure(ConnectionResetError(), plain) is None
    assert tls_failure(OSError("Connect call failed"), secure) is None


def test_asyncio_ssl_noise_of_nats_py_is_dropped_and_nothing_else(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import harmony_fleet.bus.tls  # noqa: F401 - installs the filter

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        logging.getLogger("asyncio").warning(
            "returning true from eof_received() has no effect when using ssl")
        logging.getLogger("asyncio").warning("Task was destroyed but it is pending!")
    assert [r.getMessage() for r in caplog.records] == ["Task was destroyed but it is pending!"]
