"""The server side of the local stack: nats-server, the report writer, and (callout mode) the
OIDC issuer and the auth callout, each a real process.

``dev`` mode (**insecure**): static users ``admin`` and a shared ``device`` user; the writer
runs as ``fleet-callout`` with only the writer enabled.

``callout`` mode: nats-server with ``authorization.auth_callout`` (issuer account key, xkey);
the only static users are the services that must connect before the callout can answer,
with limited permissions: ``writer`` and ``callout`` (and the system user). The local OIDC
issuer (Zitadel stand-in) holds an admin machine user whose key (``issuer.admin_key_file``)
is the admin credential: bucket creation, the harness, the CLI and Ansible authenticate with
it through the callout like everyone else. ``fleet-callout`` runs the callout and the writer.
Devices are enrolled through the issuer's management API and authenticate with their own
machine keys.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harmony_fleet.callout.nkjwt import new_nkey, new_xkey
from harmony_fleet.callout.permissions import writer_permissions
from harmony_fleet.contracts.identity import ADMIN_ROLE
from harmony_fleet.natsconf import (
    CalloutConfig,
    ClusterMember,
    ServerConfig,
    StaticUser,
    TlsConfig,
    WebsocketConfig,
    cluster_configs,
)

from .errors import LocalStackError
from .files import write_private_file
from .issuer import OidcIssuer, save_registry
from .issuer_admin import IssuerAdmin
from .nats_server import NatsServer, free_port
from .processes import failure_line, spawn
from .tls import LabPki, make_lab_pki

AuthMode = Literal["dev", "callout"]
PROJECT_ID = "fleet-project"


class ServiceError(LocalStackError):
    """A service of the stack did not start."""


#: module and console-script names that identify our daemons in a command line
CALLOUT_PROGRAMS = ("harmony_fleet.callout.main", "fleet-callout")
ISSUER_PROGRAMS = ("harmony_fleet.localstack.issuer",)


@dataclass
class ServiceProcess:
    """A daemon of ours as a subprocess; ``start()`` waits for ``ready_marker`` in its log.

    ``argv[-1]`` is the file it is started with (in the stack's workdir): with ``programs``
    it identifies the process again (:class:`~.processes.Component`)."""

    name: str
    argv: list[str]
    log_file: Path
    ready_markers: tuple[str, ...]
    detach: bool = False
    proc: subprocess.Popen[bytes] | None = None
    programs: tuple[str, ...] = ()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 20.0) -> None:
        # a restart appends to the same log: only what this run writes can say it is ready
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.proc = spawn(self.argv, self.log_file, detach=self.detach)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{failure_line(text)} (log: {self.log_file})")
            if all(marker in text for marker in self.ready_markers):
                return
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"{self.name} not ready within {timeout}s; see {self.log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _secret_file(path: Path, text: str) -> Path:
    return write_private_file(path, text)


def _toml_nats(urls: list[str], user: str, password_file: Path,
               ca_file: Path | None = None) -> str:
    return (f'urls = {json.dumps(urls)}\n'
            + (f"tls_ca_file = {json.dumps(str(ca_file))}\n" if ca_file else "")
            + f'auth = {{ mode = "userpass", user = {json.dumps(user)}, '
            f'password_file = {json.dumps(str(password_file))} }}\n')


@dataclass
class Issuer:
    url: str
    project_id: str
    admin_key_file: Path
    registry: Path
    #: a personal access token of the admin (Zitadel's PAT): a bearer for the management
    #: API that needs no signing (what an Ansible ``uri`` task can send)
    admin_pat_file: Path | None = None


@dataclass
class FleetServices:
    workdir: Path
    auth: AuthMode
    server: NatsServer
    admin: StaticUser | None  # dev mode only; callout mode: the issuer's admin machine key
    device_user: StaticUser | None  # dev mode only: shared by every device
    processes: list[ServiceProcess] = field(default_factory=list)
    issuer: Issuer | None = None
    #: the lab CA and server certificate (``--tls``); None: plaintext
    pki: LabPki | None = None
    #: the system account's password file (closing connections: control side only)
    sys_password_file: Path | None = None
    #: the other members of a cluster (``server`` is the first); empty: one server
    peers: list[NatsServer] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        return self.server.url

    @property
    def servers(self) -> list[NatsServer]:
        return [self.server, *self.peers]

    @property
    def nats_urls(self) -> list[str]:
        """Every server's client URL: clients fail over between them."""
        return [s.url for s in self.servers]

    @property
    def websocket_urls(self) -> list[str]:
        """Every server's WebSocket URL (empty: no WebSocket listener)."""
        return [s.websocket_url for s in self.servers if s.websocket_url is not None]

    @property
    def agent_urls(self) -> list[str]:
        """What the stack's agents connect to: WebSocket when the stack serves it (``fleet
        stack up --websocket``: as devices behind an HTTP proxy do), else the client port."""
        return self.websocket_urls or self.nats_urls

    @property
    def tls_ca_file(self) -> Path | None:
        return self.pki.ca_file if self.pki is not None else None

    def tls_settings(self) -> dict[str, str]:
        """What a client's connection settings add for TLS (empty without TLS)."""
        return {"tls_ca_file": str(self.pki.ca_file)} if self.pki is not None else {}

    def system_connection(self) -> dict[str, Any] | None:
        """The system account's connection document (a password file, never the password)."""
        sys_user = self.server.config.sys_user
        if sys_user is None or self.sys_password_file is None:
            return None
        return {"urls": self.nats_urls, **self.tls_settings(),
                "auth": {"mode": "userpass", "user": sys_user.user,
                         "password_file": str(self.sys_password_file)}}

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for server in reversed(self.servers):
            server.stop()

    def describe(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            # "match": a string of the process' command line, checked before a signal is sent
            "processes": [{"name": p.name, "pid": p.pid, "log_file": str(p.log_file),
                           "match": p.argv[-1], "programs": list(p.programs)}
                          for p in self.processes],
        }
        if self.websocket_urls:
            doc["websocket_urls"] = self.websocket_urls
        if self.pki is not None:
            doc["tls"] = {"ca_file": str(self.pki.ca_file), "cert_file": str(self.pki.cert_file),
                          "sans": list(self.pki.sans)}
        system = self.system_connection()
        if system is not None:
            doc["system_connection"] = system
        if self.issuer is not None:
            doc["issuer"] = {"url": self.issuer.url, "project_id": self.issuer.project_id,
                             "admin_key_file": str(self.issuer.admin_key_file),
                             "admin_pat_file": str(self.issuer.admin_pat_file)
                             if self.issuer.admin_pat_file else None}
        return doc

    # ---- enrollment (callout mode): the same management API calls a real enrollment makes
    def issuer_admin(self) -> IssuerAdmin:
        """A management API client with the stack's admin key (callout mode)."""
        if self.issuer is None:
            raise LocalStackError("this stack has no OIDC issuer (dev mode)")
        return IssuerAdmin(self.issuer.url, self.issuer.admin_key_file, self.issuer.project_id)

    def enroll_device(self, device_id: str, key_file: Path) -> str:
        """Create the device's machine user, metadata, role grant and key; return the user id."""
        return self.issuer_admin().enroll_device(device_id, key_file)


def start_services(
    workdir: Path, *, auth: AuthMode = "dev", detach: bool = False,
    token_lifetime_s: int = 3600, writer: dict[str, Any] | None = None,
    port: int | None = None, tls: bool = False, tls_sans: list[str] | tuple[str, ...] = (),
    cluster: int = 1, max_file_store: str = "2GB", websocket: bool = False,
) -> FleetServices:
    """Start everything the agents talk to; stop what was started if a step fails.

    ``writer`` sets options of fleet-callout's ``[writer]`` section (limits, the lease);
    ``port`` is the NATS client port of the (first) server (default: a free one). ``tls``: a
    lab CA and server certificate (:mod:`.tls`, names ``tls_sans`` besides the defaults) and
    TLS on the client port; every client of the stack trusts that CA. ``cluster`` > 1 runs that
    many clustered nats-servers (the first in ``workdir``, the others in ``workdir/nats-<i>``),
    every client given all their URLs, the routes TLS too with ``tls``; ``max_file_store``
    bounds JetStream's file store (buckets sized for a large fleet reserve more).
    ``websocket``: every server also serves WebSocket on a port of its own (``wss://`` with
    ``tls``, else ``ws://``), and the agents connect there."""
    workdir.mkdir(parents=True, exist_ok=True)
    # with a cluster the certificate serves the routes too (client and server use)
    pki = make_lab_pki(workdir / "tls", tls_sans, route=cluster > 1) if tls else None
    dev = auth == "dev"
    admin = StaticUser("admin", secrets.token_urlsafe(18)) if dev else None
    writer_user = StaticUser("writer", secrets.token_urlsafe(18), _writer_static_permissions())
    device = StaticUser("device", secrets.token_urlsafe(18)) if dev else None
    fleet_users = [u for u in (admin, writer_user, device) if u is not None]
    callout_user = StaticUser("callout", secrets.token_urlsafe(18))
    issuer_key, xkey = new_nkey("account"), new_xkey()
    sys_user = StaticUser("sys", secrets.token_urlsafe(18))
    config = ServerConfig(
        port=port or free_port(), http_port=free_port(), store_dir=workdir / "jetstream",
        max_file_store=max_file_store,
        fleet_users=fleet_users, sys_user=sys_user,
        callout=CalloutConfig(issuer_key.public_key, [callout_user], xkey.public_key)
        if auth == "callout" else None,
        tls=TlsConfig(pki.cert_file, pki.key_file) if pki is not None else None,
        websocket=WebsocketConfig(
            free_port(), tls=TlsConfig(pki.cert_file, pki.key_file) if pki is not None else None,
            no_tls=pki is None) if websocket else None,
    )
    if cluster > 1:
        members = [ClusterMember(f"fleet-{i}", config.host, port or free_port() if i == 1
                                 else free_port(), free_port(),
                                 _member_dir(workdir, i) / "jetstream", free_port(),
                                 websocket_port=free_port() if websocket else None)
                   for i in range(1, cluster + 1)]
        # routes: TLS with the lab certificate, verified both ways against the lab CA (the
        # same renderer as the nats role's nats_cluster_tls)
        route_tls = TlsConfig(pki.cert_file, pki.key_file, pki.ca_file) if pki else None
        servers = [NatsServer(c, _member_dir(workdir, i), detach=detach)
                   for i, c in enumerate(cluster_configs(config, members, route_tls=route_tls),
                                         start=1)]
    else:
        servers = [NatsServer(config, workdir, detach=detach)]
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    sys_pw = _secret_file(secrets_dir / "sys-password", sys_user.password)
    started: list[NatsServer] = []
    try:
        for server in servers:
            server.start()
            started.append(server)
        for server in servers:
            server.wait_jetstream()
    except BaseException:
        for server in reversed(started):
            server.stop()
        raise
    services = FleetServices(workdir, auth, servers[0], admin, device, pki=pki,
                             sys_password_file=sys_pw, peers=servers[1:])
    ca = services.tls_ca_file
    try:
        writer_pw = _secret_file(secrets_dir / "writer-password", writer_user.password)
        callout_toml = (
            "[log]\nlevel = \"info\"\n\n[writer]\nenabled = true\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in (writer or {}).items())
            + "[writer.nats]\n" + _toml_nats(services.nats_urls, writer_user.user, writer_pw, ca)
        )
        if auth == "callout":
            services.issuer = _start_issuer(services, token_lifetime_s, detach)
            callout_pw = _secret_file(secrets_dir / "callout-password", callout_user.password)
            seed = _secret_file(secrets_dir / "issuer.nk", issuer_key.seed)
            xseed = _secret_file(secrets_dir / "xkey.nk", xkey.seed)
            callout_toml += (
                f"\n[oidc]\nissuer = {json.dumps(services.issuer.url)}\n"
                f"audience = {json.dumps(services.issuer.project_id)}\n"
                f"\n[callout]\nenabled = true\nissuer_seed_file = {json.dumps(str(seed))}\n"
                f"xkey_seed_file = {json.dumps(str(xseed))}\n[callout.nats]\n"
                + _toml_nats(services.nats_urls, callout_user.user, callout_pw, ca)
            )
        callout_config = _secret_file(workdir / "fleet-callout.toml", callout_toml)
        markers = ("writing reports from",) + (
            ("answering $SYS.REQ.USER.AUTH",) if auth == "callout" else ())
        callout = ServiceProcess(
            "fleet-callout",
            [sys.executable, "-m", "harmony_fleet.callout.main", "--config", str(callout_config)],
            workdir / "fleet-callout.log", markers, detach, programs=CALLOUT_PROGRAMS,
        )
        services.processes.append(callout)
        callout.start()
    except BaseException:
        services.stop()
        raise
    return services


def _member_dir(workdir: Path, index: int) -> Path:
    """Where cluster member ``index`` (1-based) keeps its files: the first one where a single
    server would (older readers of the state file find it there)."""
    return workdir if index == 1 else workdir / f"nats-{index}"


def _writer_static_permissions() -> dict[str, list[str]]:
    perms = writer_permissions()
    return {"publish": perms["publish"], "subscribe": perms["subscribe"]}


def _start_issuer(services: FleetServices, lifetime_s: int, detach: bool) -> Issuer:
    issuer = OidcIssuer(project_id=PROJECT_ID, token_lifetime_s=lifetime_s, port=free_port())
    admin_key = services.workdir / "secrets" / "admin-zitadel-key.json"
    admin = issuer.enroll_admin(ADMIN_ROLE, admin_key)
    admin_pat = _secret_file(services.workdir / "secrets" / "admin-pat",
                             issuer.add_pat(admin.user_id)[1])
    registry = services.workdir / "secrets" / "issuer-registry.json"
    save_registry(issuer, registry)
    process = ServiceProcess(
        "oidc-issuer", [sys.executable, "-m", "harmony_fleet.localstack.issuer", "--registry",
                        str(registry)],
        services.workdir / "oidc-issuer.log", ("issuer listening on",), detach,
        programs=ISSUER_PROGRAMS,
    )
    services.processes.append(process)
    process.start()
    return Issuer(issuer.url, PROJECT_ID, admin_key, registry, admin_pat)
