"""TLS for NATS connections: the client's SSL context, built from :class:`NatsSettings`.

Verification is never switched off: the server's certificate must chain to ``tls_ca_file``
(else the system's CAs) and name the host the URL names (an IP address in a URL must be in
the certificate's IP SANs).
"""

from __future__ import annotations

import logging
import ssl

from harmony_fleet.daemon import DaemonExit

from .settings import NatsSettings


class _NatsPyOverSsl(logging.Filter):
    """nats-py's asyncio protocol returns True from ``eof_received``, which asyncio's SSL
    transport ignores, saying so with a warning each time a TLS connection closes: noise on
    every CLI run and daemon stop, nothing to act on. Only that one message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("returning true from eof_received()")


logging.getLogger("asyncio").addFilter(_NatsPyOverSsl())


class TlsConfigError(DaemonExit):
    """A TLS file the settings name cannot be used (missing, unreadable, not PEM, a key that
    does not match its certificate): a configuration to fix (daemons exit 2)."""

    exit_code = 2


def client_ssl_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """The SSL context for ``settings`` (None: plaintext), or :class:`TlsConfigError`."""
    if not settings.uses_tls:
        return None
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot use the CA bundle {settings.tls_ca_file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        try:
            context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"cannot use the client certificate {settings.tls_cert_file} with key "
                f"{settings.tls_key_file}: {getattr(exc, 'strerror', None) or exc}") from None
    return context
