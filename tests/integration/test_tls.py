"""NATS over TLS against a real nats-server with the rendered ``tls {}`` block: what a client
must have to get in, and what it is told when it has not.

The ping path over TLS with the auth callout (agents, callout, admin) is in
tests/integration/test_revocation.py, whose stack serves TLS; Ansible over TLS in
tests/ansible/test_fleet_device_revoke.py.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harmony_fleet.bus import NatsSettings, connect
from harmony_fleet.bus.connection import ConnectError, TlsError
from harmony_fleet.localstack.files import write_private_file
from harmony_fleet.localstack.nats_server import NatsServer, free_port
from harmony_fleet.localstack.tls import LabPki, issue_certificate, make_lab_pki, new_ca
from harmony_fleet.natsconf import ServerConfig, StaticUser, TlsConfig

USER = StaticUser("tls-revoke-user", "tls-revoke-pw")


@dataclass
class Pki:
    lab: LabPki
    dir: Path
    ca_cert: x509.Certificate
    ca_key: object

    def leaf(self, name: str, sans: tuple[str, ...], *, client: bool = False) -> tuple[Path, Path]:
        cert, key = issue_certificate(self.ca_cert, self.ca_key, name, sans,  # type: ignore[arg-type]
                                      client=client)
        cert_file, key_file = self.dir / f"{name}.pem", self.dir / f"{name}-key.pem"
        write_private_file(cert_file, cert.public_bytes(serialization.Encoding.PEM).decode())
        write_private_file(key_file, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode())
        return cert_file, key_file


def own_pki(directory: Path) -> Pki:
    """A CA whose key this test keeps (to sign client and wrongly named certificates)."""
    directory.mkdir(parents=True)
    ca_cert, ca_key = new_ca("tls test CA")
    ca_file = directory / "ca.pem"
    write_private_file(ca_file, ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    pki = Pki(LabPki(ca_file, directory / "x", directory / "x", ()), directory, ca_cert, ca_key)
    cert, key = pki.leaf("server", ("127.0.0.1", "localhost"))
    pki.lab = dataclasses.replace(pki.lab, cert_file=cert, key_file=key)
    return pki


def start(tmp: Path, tls: TlsConfig) -> NatsServer:
    server = NatsServer(ServerConfig(port=free_port(), store_dir=tmp / "js", fleet_users=[USER],
                                     tls=tls, server_name="tls-revoke-test"), tmp)
    server.start()
    return server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return own_pki(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = start(tmp_path_factory.mktemp("tls-srv"), TlsConfig(pki.lab.cert_file, pki.lab.key_file))
    yield srv
    srv.stop()


def settings(url: str, **tls: object) -> NatsSettings:
    return NatsSettings.model_validate({
        "urls": [url], "connect_attempts": 1, "connect_timeout_s": 3,
        "auth": {"mode": "userpass", "user": USER.user, "password": USER.password}, **tls})


async def refused(s: NatsSettings) -> ConnectError:
    try:
        nc = await connect(s, name="tls-test")
    except ConnectError as exc:
        return exc
    await nc.close()
    raise AssertionError("the connection was allowed")


async def test_a_client_with_the_ca_gets_in_by_ip_and_by_name(server: NatsServer, pki: Pki) -> None:
    port = server.config.port
    assert server.url == f"tls://127.0.0.1:{port}"
    for url in (f"tls://127.0.0.1:{port}", f"tls://localhost:{port}",
                # nats:// with TLS settings: upgraded, still verified
                f"nats://127.0.0.1:{port}"):
        nc = await connect(settings(url, tls_ca_file=pki.lab.ca_file), name="tls-test")
        try:
            assert nc.is_connected
            await nc.flush()
        finally:
            await nc.close()


async def test_several_urls_share_the_tls_settings(server: NatsServer, pki: Pki) -> None:
    """A cluster's URL list: a server that is down is skipped, the next one is verified with
    the same CA."""
    down = f"tls://127.0.0.1:{free_port()}"
    nc = await connect(NatsSettings.model_validate({
        "urls": [down, server.url], "connect_attempts": 1, "tls_ca_file": pki.lab.ca_file,
        "auth": {"mode": "userpass", "user": USER.user, "password": USER.password}}),
        name="tls-test")
    try:
        assert nc.connected_url is not None
        assert nc.connected_url.port == server.config.port
    finally:
        await nc.close()


async def test_a_client_without_the_ca_is_refused(server: NatsServer) -> None:
    exc = await refused(settings(server.url))
    assert isinstance(exc, TlsError)
    assert "the server's certificate was refused" in str(exc)
    assert "tls_ca_file" in str(exc)


async def test_a_client_that_trusts_another_ca_is_refused(server: NatsServer,
                                                          tmp_path: Path) -> None:
    other = make_lab_pki(tmp_path / "other")
    exc = await refused(settings(server.url, tls_ca_file=other.ca_file))
    assert isinstance(exc, TlsError)


async def test_plaintext_against_the_tls_port_fails_with_a_typed_error(
        server: NatsServer) -> None:
    exc = await refused(settings(f"nats://127.0.0.1:{server.config.port}"))
    assert isinstance(exc, TlsError)
    assert "the server requires TLS and this client has no TLS settings" in str(exc)


async def test_a_certificate_for_another_host_name_is_refused(pki: Pki, tmp_path: Path) -> None:
    """The server's certificate is signed by the trusted CA but names another host: the
    client's host name check refuses it (no switch turns that check off)."""
    cert, key = pki.leaf("elsewhere", ("nats.elsewhere.example", "192.0.2.1"))
    srv = start(tmp_path, TlsConfig(cert, key))
    try:
        for host in ("127.0.0.1", "localhost"):
            exc = await refused(settings(f"tls://{host}:{srv.config.port}",
                                         tls_ca_file=pki.lab.ca_file))
            assert isinstance(exc, TlsError)
            assert "mismatch" in str(exc).lower() or "not valid for" in str(exc), exc
    finally:
        srv.stop()


async def test_mutual_tls_wants_a_client_certificate_of_its_ca(pki: Pki, tmp_path: Path) -> None:
    srv = start(tmp_path / "srv", TlsConfig(pki.lab.cert_file, pki.lab.key_file,
                                            ca_file=pki.lab.ca_file, verify=True))
    try:
        url = srv.url
        # no client certificate
        exc = await refused(settings(url, tls_ca_file=pki.lab.ca_file))
        assert isinstance(exc, TlsError)
        # a client certificate from a CA the server does not trust
        stranger = own_pki(tmp_path / "stranger")
        cert, key = stranger.leaf("stranger", (), client=True)
        exc = await refused(settings(url, tls_ca_file=pki.lab.ca_file, tls_cert_file=cert,
                                     tls_key_file=key))
        assert isinstance(exc, TlsError)
        # its own client certificate
        cert, key = pki.leaf("device-1", (), client=True)
        nc = await connect(settings(url, tls_ca_file=pki.lab.ca_file, tls_cert_file=cert,
                                    tls_key_file=key), name="tls-test")
        assert nc.is_connected
        await nc.close()
    finally:
        srv.stop()


def test_lab_certificates_are_short_lived_and_name_what_they_serve(tmp_path: Path) -> None:
    lab = make_lab_pki(tmp_path / "lab", ["fleet.example"])
    cert = x509.load_pem_x509_certificate(lab.cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(v) for v in sans.get_values_for_type(x509.DNSName)] + [
        str(v) for v in sans.get_values_for_type(x509.IPAddress)]
    assert sorted(names) == sorted(["localhost", "fleet.example", "127.0.0.1", "::1",
                                    "10.0.2.2"])
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life <= datetime.timedelta(days=31)
