"""nats-server configuration, generated from one place.

Accounts:

* ``FLEET`` — JetStream enabled; devices, the operator and admins land here.
* ``SYS``   — the system account.

* ``AUTH``  — (callout mode) the callout service's own user.

Modes:

* ``dev`` (**insecure**): static users in ``FLEET``: ``admin`` (everything) and ``device``
  (shared by every device, which therefore can read and write every device's keys). For a
  laptop or CI only.
* ``callout``: every connection that is not one of the static service users is decided by
  ``fleet-callout`` (``authorization.auth_callout``), which checks an OIDC token and returns a
  user JWT with per-device permissions. A callout that does not answer means the connection
  is refused. The static users are only the services that must connect before the callout
  can answer (the callout itself, the report writer, with limited permissions) and the
  system user; admins, like devices, authenticate with an identity-provider credential.

Clustering: :func:`cluster_configs` turns one server's configuration and the list of cluster
members into each member's configuration (a ``cluster`` block with routes to every other
member; JetStream replicates across them). The local stack (``fleet stack up --cluster 3``)
and the Kubernetes ``nats`` role render the same text from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from harmony_fleet.errors import InvalidInput


@dataclass(frozen=True)
class StaticUser:
    user: str
    password: str
    #: ``{"publish": [...], "subscribe": [...]}`` allow lists; None: no restriction
    permissions: dict[str, list[str]] | None = None


@dataclass(frozen=True)
class CalloutConfig:
    """``authorization.auth_callout``: who signs the answers, and the callout's own users."""

    issuer_public_key: str  # the account nkey (A…) whose seed fleet-callout signs with
    callout_users: list[StaticUser]  # in account AUTH
    xkey_public_key: str | None = None  # requests are sealed to this curve key when set
    timeout_s: float = 2.0


@dataclass(frozen=True)
class TlsConfig:
    """The server's ``tls {}`` block: its certificate, and (optional) client certificates.

    ``ca_file`` with ``verify`` asks every client for a certificate signed by that CA (mutual
    TLS); ``ca_file`` alone only names the CA the server trusts (routes, leaf nodes).
    ``timeout_s`` bounds the TLS handshake."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify: bool = False
    timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.verify and self.ca_file is None:
            raise ValueError("verify (client certificates) needs ca_file")
        if not self.timeout_s > 0:
            raise ValueError("the TLS handshake timeout must be more than 0 seconds")


def render_tls_block(tls: TlsConfig, indent: str = "") -> str:
    """The ``tls { ... }`` block for ``tls`` (pure): what nats.conf of the local stack and of
    the Kubernetes ``nats`` role both contain. ``indent`` prefixes every line (nested blocks).
    """
    body = [
        f"cert_file: {_q(str(tls.cert_file))}",
        f"key_file: {_q(str(tls.key_file))}",
        *([f"ca_file: {_q(str(tls.ca_file))}"] if tls.ca_file is not None else []),
        *(["verify: true"] if tls.verify else []),
        f"timeout: {tls.timeout_s:g}",
    ]
    return "\n".join([f"{indent}tls {{", *(f"{indent}  {line}" for line in body), f"{indent}}}"])


@dataclass(frozen=True)
class WebsocketConfig:
    """The ``websocket {}`` listener: NATS over WebSocket for clients behind HTTP proxies
    (``ws://``/``wss://`` URLs). Its connections are authenticated like the client port's
    (the auth callout decides). ``tls`` is its certificate (``wss://``); without one the
    listener is plain ``ws://``, which must be asked for with ``no_tls`` (a lab)."""

    port: int
    host: str | None = None  # None: the server's host
    tls: TlsConfig | None = None
    no_tls: bool = False
    compression: bool = False

    def __post_init__(self) -> None:
        if self.tls is None and not self.no_tls:
            raise ValueError("a websocket listener needs a certificate (tls) or, for a lab, "
                             "no_tls")
        if self.tls is not None and self.no_tls:
            raise ValueError("a websocket listener has a certificate or no_tls, not both")


@dataclass(frozen=True)
class ClusterConfig:
    """``cluster``: where this server listens for routes, and the routes to the others."""

    name: str
    port: int
    routes: tuple[str, ...]  # host:port of every other member's route listener
    host: str = "127.0.0.1"
    #: the credential every route presents and every member asks for (None: routes are not
    #: authenticated - whoever reaches the route port joins the cluster)
    route_user: StaticUser | None = None
    #: TLS on routes (None: plaintext): every member presents ``cert_file`` and accepts only
    #: routes whose certificate ``ca_file`` signs (nats-server verifies both ways on routes);
    #: the certificate must be valid for client and server use and name the route hosts
    tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        if self.tls is not None and self.tls.ca_file is None:
            raise ValueError("route TLS needs ca_file (the CA that signs every member's "
                             "certificate)")


@dataclass(frozen=True)
class ClusterMember:
    """One server of a cluster: its name (unique, JetStream's peer name), address and ports,
    and its own JetStream store."""

    server_name: str
    host: str
    port: int  # clients
    cluster_port: int  # routes
    store_dir: Path
    http_port: int | None = None  # monitoring
    #: the address this member listens on (clients, routes, monitoring) when it is not
    #: ``host``, the name the others route to (Kubernetes: ``0.0.0.0`` and the pod's DNS name)
    listen_host: str | None = None
    #: this member's WebSocket port, when the base has a listener and members share a host
    websocket_port: int | None = None


class ClusterConfigError(InvalidInput):
    """Members that cannot form a cluster (duplicate names or addresses, too few)."""


def cluster_configs(base: ServerConfig, members: Sequence[ClusterMember],
                    name: str = "fleet", route_user: StaticUser | None = None,
                    route_tls: TlsConfig | None = None) -> list[ServerConfig]:
    """Each member's configuration: ``base`` (accounts, users, callout, limits) with the
    member's name, addresses and store, and routes to every other member (pure). With
    ``route_user`` the members accept only routes presenting it, and present it themselves;
    with ``route_tls`` routes are TLS, both ends verified against its CA.

    JetStream needs a majority of the members to elect its meta leader: three (or five)
    members survive the loss of one (two).
    """
    if len(members) < 2:
        raise ClusterConfigError("a cluster needs at least two members")
    for what, values in (("server name", [m.server_name for m in members]),
                         ("client address", [(m.host, m.port) for m in members]),
                         ("route address", [(m.host, m.cluster_port) for m in members]),
                         ("store", [m.store_dir for m in members])):
        if len(set(values)) != len(values):
            raise ClusterConfigError(f"two members share a {what}")

    def routes(member: ClusterMember) -> tuple[str, ...]:
        return tuple(f"{o.host}:{o.cluster_port}" for o in members if o is not member)

    return [
        replace(base, server_name=m.server_name, host=m.listen_host or m.host, port=m.port,
                http_port=m.http_port, store_dir=m.store_dir,
                websocket=replace(base.websocket, port=m.websocket_port)
                if base.websocket is not None and m.websocket_port else base.websocket,
                cluster=ClusterConfig(name=name, host=m.listen_host or m.host,
                                      port=m.cluster_port, route_user=route_user,
                                      routes=routes(m), tls=route_tls))
        for m in members
    ]


@dataclass(frozen=True)
class ServerConfig:
    port: int
    store_dir: Path
    http_port: int | None = None
    host: str = "127.0.0.1"
    server_name: str = "fleet-local"
    fleet_users: list[StaticUser] = field(default_factory=list)
    sys_user: StaticUser | None = None
    max_file_store: str = "2GB"
    max_memory_store: str = "256MB"
    max_payload: int = 1024 * 1024
    callout: CalloutConfig | None = None
    #: TLS on the client port (None: plaintext)
    tls: TlsConfig | None = None
    cluster: ClusterConfig | None = None
    #: a WebSocket listener besides the client port (None: none)
    websocket: WebsocketConfig | None = None


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _q(value: str) -> str:
    """Quote a string for the NATS config format.

    Its parser knows only the escapes ``\\x.. \\t \\n \\r \\" \\\\`` (no ``\\u``, unlike JSON);
    anything else, non-ASCII included, goes in as raw UTF-8.
    """
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _user(u: StaticUser) -> str:
    text = f"user: {_q(u.user)}, password: {_q(u.password)}"
    if u.permissions:
        perms = ", ".join(f"{k}: {json.dumps(v)}" for k, v in u.permissions.items())
        text += f", permissions: {{{perms}}}"
    return f"{{{text}}}"


def _users(users: list[StaticUser]) -> str:
    return ", ".join(_user(u) for u in users)


def render(config: ServerConfig) -> str:
    lines = [
        "# Generated by harmony_fleet.natsconf. Do not edit.",
        f"server_name: {_q(config.server_name)}",
        f"listen: {_q(f'{config.host}:{config.port}')}",
        f"max_payload: {config.max_payload}",
    ]
    if config.http_port is not None:
        lines.append(f"http: {_q(f'{config.host}:{config.http_port}')}")
    if config.tls is not None:
        lines.append(render_tls_block(config.tls))
    if config.websocket is not None:
        ws = config.websocket
        lines += [
            "websocket {",
            f"  listen: {_q(f'{ws.host or config.host}:{ws.port}')}",
            *([render_tls_block(ws.tls, "  ")] if ws.tls is not None else ["  no_tls: true"]),
            f"  compression: {'true' if ws.compression else 'false'}",
            "}",
        ]
    lines += [
        "jetstream {",
        f"  store_dir: {_q(str(config.store_dir))}",
        f"  max_memory_store: {config.max_memory_store}",
        f"  max_file_store: {config.max_file_store}",
        "}",
        "accounts {",
        *([
            "  AUTH {",
            f"    users: [{_users(config.callout.callout_users)}]",
            "  }",
        ] if config.callout else []),
        "  FLEET {",
        "    jetstream: enabled",
        f"    users: [{_users(config.fleet_users)}]",
        "  }",
        "  SYS {",
        f"    users: [{_users([config.sys_user] if config.sys_user else [])}]",
        "  }",
        "}",
        "system_account: SYS",
    ]
    if config.cluster is not None:
        cluster = config.cluster
        auth = cluster.route_user
        cred = (f"{quote(auth.user, safe='')}:{quote(auth.password, safe='')}@"
                if auth is not None else "")
        routes = ", ".join(_q(f"nats-route://{cred}{r}") for r in cluster.routes)
        lines += [
            "cluster {",
            f"  name: {_q(cluster.name)}",
            f"  listen: {_q(f'{cluster.host}:{cluster.port}')}",
            *([f"  authorization {{user: {_q(auth.user)}, password: {_q(auth.password)}}}"]
              if auth is not None else []),
            *([render_tls_block(cluster.tls, "  ")] if cluster.tls is not None else []),
            f"  routes: [{routes}]",
            "}",
        ]
    if config.callout is not None:
        callout = config.callout
        static = [u.user for u in (*callout.callout_users, *config.fleet_users)]
        if config.sys_user:
            static.append(config.sys_user.user)
        lines += [
            "authorization {",
            f"  timeout: {_q(f'{callout.timeout_s:g}s')}",
            "  auth_callout {",
            f"    issuer: {_q(callout.issuer_public_key)}",
            "    account: AUTH",
            f"    auth_users: {json.dumps(static)}",
            *([f"    xkey: {_q(callout.xkey_public_key)}"] if callout.xkey_public_key else []),
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"
