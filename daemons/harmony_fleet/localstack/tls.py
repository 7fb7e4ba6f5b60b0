"""A lab certificate authority for the local stack (``fleet stack up --tls``).

One CA and one server certificate, made with ``cryptography`` and written 0600 into the stack's
``tls/`` directory: the CA certificate is what clients trust (``tls_ca_file``), the server's
key never leaves the stack. The server certificate names 127.0.0.1, ::1, localhost and
10.0.2.2 (the host as a slirp4netns container sees it), plus what the caller adds. A lab CA
for a laptop or CI; a real deployment brings certificates of its own.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import LocalStackError
from .files import write_private_file

#: the names every lab server certificate carries
DEFAULT_SANS: tuple[str, ...] = ("127.0.0.1", "::1", "localhost", "10.0.2.2")
CERT_LIFETIME = datetime.timedelta(days=30)


class TlsSetupError(LocalStackError):
    """A lab certificate cannot be made (an invalid subject alternative name)."""


@dataclass(frozen=True)
class LabPki:
    """Where the lab CA and the server's certificate and key are (PEM files, mode 0600)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    sans: tuple[str, ...]


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    label = name.rstrip(".")
    # a wildcard names every host of one domain (*.nats-headless.ns.svc: each cluster member)
    check = label[2:] if label.startswith("*.") and label.count(".") >= 2 else label
    if not check or len(label) > 253 or any(
            not part or len(part) > 63 or not all(c.isalnum() or c == "-" for c in part)
            or part.startswith("-") or part.endswith("-") for part in check.split(".")):
        raise TlsSetupError(f"{name!r} is neither an IP address nor a DNS name")
    return x509.DNSName(label.lower())


def server_sans(extra: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The default names plus ``extra``, each once, in order (pure; :class:`TlsSetupError`
    for a name that is not an IP address or DNS name)."""
    names: list[str] = []
    for name in (*DEFAULT_SANS, *extra):
        _san(name)
        if name not in names:
            names.append(name)
    return tuple(names)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue_certificate(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str,
    sans: tuple[str, ...], *, client: bool = False, route: bool = False,
    lifetime: datetime.timedelta = CERT_LIFETIME,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by the CA: a server's (``sans`` its names), with ``client``
    a client's (for mutual TLS), with ``route`` both (a cluster member's: it accepts routes
    and dials the others with it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
    if route:
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in sans]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def new_ca(common_name: str, lifetime: datetime.timedelta = CERT_LIFETIME,
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_lab_pki(directory: Path, extra_sans: list[str] | tuple[str, ...] = (), *,
                 route: bool = False) -> LabPki:
    """Create a lab CA and a server certificate for :func:`server_sans` in ``directory``
    (``ca.pem``, ``server.pem``, ``server-key.pem``; every file 0600, the directory 0700).
    With ``route`` the certificate serves cluster routes too (client and server use).
    The CA's own key is not kept: nothing else is ever signed with it."""
    sans = server_sans(extra_sans)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_cert, ca_key = new_ca("Harmony Fleet lab CA")
    cert, key = issue_certificate(ca_cert, ca_key, "fleet-local nats-server", sans, route=route)
    pki = LabPki(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem",
                 sans)
    write_private_file(pki.ca_file, _cert_pem(ca_cert))
    write_private_file(pki.cert_file, _cert_pem(cert))
    write_private_file(pki.key_file, _key_pem(key))
    return pki


#: the PEM files of a lab PKI kept by the Kubernetes ``nats`` role (in two Secrets)
LAB_PKI_FILES = ("ca.crt", "ca.key", "tls.crt", "tls.key")


def _sans_of(cert: x509.Certificate) -> set[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n.value).lower() for n in names}


def _key_matches(cert: x509.Certificate, key: object) -> bool:
    public = getattr(key, "public_key", None)
    return public is not None and public().public_numbers() == \
        cert.public_key().public_numbers()  # type: ignore[union-attr]


def _load(existing: dict[str, str], cert_name: str, key_name: str,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """A certificate and its key from PEM text, or None (absent, unreadable, mismatched)."""
    try:
        cert = x509.load_pem_x509_certificate(existing[cert_name].encode())
        key = serialization.load_pem_private_key(existing[key_name].encode(), password=None)
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _key_matches(cert, key):
        return None
    return cert, key


def lab_pki_pems(
    existing: dict[str, str], sans: list[str] | tuple[str, ...], *,
    lifetime: datetime.timedelta = datetime.timedelta(days=90),
    now: datetime.datetime | None = None,
) -> tuple[dict[str, str], list[str]]:
    """A lab CA and a server certificate (for client, WebSocket and route TLS: client and
    server use) naming exactly ``sans``, as PEM text: ``existing`` (the same four files,
    :data:`LAB_PKI_FILES`) kept where still good, else made anew. Also returns why anything
    was made (empty: ``existing`` is returned as it is).

    The CA is kept unless missing, unreadable, its key not its own or within a third of
    ``lifetime`` of expiring (a new CA brings a new certificate); the certificate is kept
    unless missing, unreadable, not signed by the CA, its names differ from ``sans`` or it
    is within a third of ``lifetime`` of expiring."""
    names = server_sans_exact(sans)
    now = now or datetime.datetime.now(datetime.UTC)
    renew_before = lifetime / 3
    reasons: list[str] = []
    ca = _load(existing, "ca.crt", "ca.key")
    if ca is None:
        reasons.append("no usable lab CA")
    elif ca[0].not_valid_after_utc - now < renew_before:
        reasons.append("the lab CA expires soon")
        ca = None
    leaf = None if ca is None else _load(existing, "tls.crt", "tls.key")
    if ca is not None and leaf is None:
        reasons.append("no usable certificate")
    elif ca is not None and leaf is not None:
        try:
            leaf[0].verify_directly_issued_by(ca[0])
        except (ValueError, TypeError, InvalidSignature):
            reasons.append("the certificate is not signed by the lab CA")
            leaf = None
        else:
            if _sans_of(leaf[0]) != {n.lower() for n in names}:
                reasons.append("the certificate's names changed")
                leaf = None
            elif leaf[0].not_valid_after_utc - now < renew_before:
                reasons.append("the certificate expires soon")
                leaf = None
    if ca is not None and leaf is not None:
        return {name: existing[name] for name in LAB_PKI_FILES}, []
    if ca is None:
        ca = new_ca("Harmony Fleet lab CA", lifetime * 2)
    cert, key = issue_certificate(ca[0], ca[1], "harmony-fleet nats-server", names, route=True,
                                  lifetime=lifetime)
    return {"ca.crt": _cert_pem(ca[0]), "ca.key": _key_pem(ca[1]), "tls.crt": _cert_pem(cert),
            "tls.key": _key_pem(key)}, reasons


def server_sans_exact(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``names`` each once, in order, every one valid for a certificate (pure;
    :class:`TlsSetupError` names the first that is not; at least one is needed)."""
    out: list[str] = []
    for name in names:
        _san(str(name))
        if str(name) not in out:
            out.append(str(name))
    if not out:
        raise TlsSetupError("a certificate needs at least one name")
    return tuple(out)
