"""The dashboard's settings: ``[dashboard]`` in fleet-operator's config, or ``fleet dashboard``'s
options. Auth is OIDC (authorization code + PKCE, an allowed-role check) or off; off is only
accepted on a loopback address."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from harmony_fleet.config import Section
from harmony_fleet.contracts import DEFAULT_OFFLINE_AFTER_S
from harmony_fleet.contracts.identity import ADMIN_ROLE, OPERATOR_ROLE

DEFAULT_LISTEN = "127.0.0.1:18080"
MAX_PAGE_SIZE = 200


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port); ValueError if it is not one."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen {listen!r}: expected host:port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"listen {listen!r}: port out of range")
    host = host.strip("[]")
    if not host:
        raise ValueError(f"listen {listen!r}: a host is required (127.0.0.1 for this machine only)")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OidcSection(Section):
    """``[dashboard.oidc]``: the issuer (Zitadel; the local stack's issuer speaks the same) and
    this dashboard's web client registered there."""

    issuer: str = Field(description="issuer URL; its discovery document names the endpoints")
    client_id: str = Field(min_length=1)
    client_secret_file: Path | None = Field(
        default=None, description="for a confidential client; a public client uses PKCE alone")
    project_id: str | None = Field(
        default=None, description="Zitadel project whose roles are checked (audience scope)")
    allowed_roles: list[str] = Field(
        default_factory=lambda: [ADMIN_ROLE, OPERATOR_ROLE], min_length=1,
        description="a user needs one of these project roles")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    session_ttl_s: int = Field(default=8 * 3600, ge=60)


class DashboardSection(Section):
    """``[dashboard]``: no listener unless ``listen`` is set."""

    listen: str | None = Field(default=None, description="host:port, e.g. 0.0.0.0:18080")
    auth: Literal["oidc", "off"] = Field(
        default="oidc", description="off: no login; only accepted on a loopback address")
    external_url: str | None = Field(
        default=None, description="how browsers reach it (https://fleet.example.net): the "
                                  "login's redirect URI, Secure cookies, the accepted Host")
    page_size: int = Field(default=50, ge=1, le=MAX_PAGE_SIZE)
    offline_after_s: float = Field(default=DEFAULT_OFFLINE_AFTER_S, gt=0)
    oidc: OidcSection | None = None
    max_log_streams: int = Field(default=32, ge=1, description="live log streams at once")

    @model_validator(mode="after")
    def _safe(self) -> DashboardSection:
        if self.listen is None:
            return self
        host, _port = split_listen(self.listen)
        if self.auth == "off" and not is_loopback(host):
            raise ValueError(
                f"dashboard auth is off, so it may only listen on a loopback address, not "
                f"{host!r} (anyone who reaches it would see the fleet); set auth = \"oidc\"")
        if self.auth == "oidc" and self.oidc is None:
            raise ValueError("dashboard auth = \"oidc\" needs a [dashboard.oidc] section "
                             "(issuer, client_id), or auth = \"off\" on a loopback address")
        if self.external_url is not None:
            parts = urlsplit(self.external_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"external_url {self.external_url!r}: expected http(s)://host")
        return self

    def base_url(self) -> str:
        """Where browsers reach the dashboard (no trailing slash)."""
        if self.external_url:
            return self.external_url.rstrip("/")
        host, port = split_listen(self.listen or DEFAULT_LISTEN)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"
