"""The server side of the local stack: nats-server, the report writer, and (callout mode) the
OIDC issuer and the auth callout, each a real process.

``dev`` mode (**insecure**): static users ``admin`` and a shared ``device`` user; the writer
runs as ``fleet-callout`` with only the writer enabled.

``callout`` mode: nats-server with ``authorization.auth_callout`` (issuer account key, xkey),
static service users ``admin`` (bootstrap: buckets, harness), ``writer`` and ``callout``; the
local OIDC issuer (Zitadel stand-in) with an admin machine user; ``fleet-callout`` running the
callout and the writer. Devices are enrolled through the issuer's management API and
authenticate with their own machine keys.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harmony_fleet.callout.nkjwt import new_nkey, new_xkey
from harmony_fleet.callout.permissions import writer_permissions
from harmony_fleet.natsconf import CalloutConfig, ServerConfig, StaticUser

from .nats_server import NatsServer, free_port
from .oidc import OidcIssuer, save_registry

AuthMode = Literal["dev", "callout"]
PROJECT_ID = "fleet-project"


class ServiceError(RuntimeError):
    pass


@dataclass
class ServiceProcess:
    """A daemon of ours as a subprocess; ``start()`` waits for ``ready_marker`` in its log."""

    name: str
    argv: list[str]
    log_file: Path
    ready_markers: tuple[str, ...]
    detach: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 20.0) -> None:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=self.detach,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   + self.log_file.read_text(errors="replace")[-2000:])
            text = self.log_file.read_text(errors="replace")
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
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text, encoding="utf-8")
    return path


def _toml_nats(url: str, user: str, password_file: Path) -> str:
    return (f'urls = [{json.dumps(url)}]\n'
            f'auth = {{ mode = "userpass", user = {json.dumps(user)}, '
            f'password_file = {json.dumps(str(password_file))} }}\n')


@dataclass
class Issuer:
    url: str
    project_id: str
    admin_key_file: Path
    registry: Path


@dataclass
class FleetServices:
    workdir: Path
    auth: AuthMode
    server: NatsServer
    admin: StaticUser
    device_user: StaticUser | None  # dev mode only: shared by every device
    processes: list[ServiceProcess] = field(default_factory=list)
    issuer: Issuer | None = None

    @property
    def nats_url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.server.stop()

    def describe(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            # "match": a string of the process' command line, checked before a signal is sent
            "processes": [{"name": p.name, "pid": p.pid, "log_file": str(p.log_file),
                           "match": p.argv[-1]} for p in self.processes],
        }
        if self.issuer is not None:
            doc["issuer"] = {"url": self.issuer.url, "project_id": self.issuer.project_id,
                             "admin_key_file": str(self.issuer.admin_key_file)}
        return doc

    # ---- enrollment (callout mode): the same management API calls a real enrollment makes
    def _admin_token(self) -> str:
        from harmony_fleet.bus.settings import ZitadelAuth
        from harmony_fleet.bus.tokens import MachineKey, exchange

        assert self.issuer is not None
        settings = ZitadelAuth(issuer=self.issuer.url, key_file=self.issuer.admin_key_file,
                               project_id=self.issuer.project_id)
        return exchange(settings, MachineKey.load(self.issuer.admin_key_file)).value

    def _management(self, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.issuer is not None
        request = urllib.request.Request(  # noqa: S310 - our own loopback issuer
            f"{self.issuer.url}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return dict(json.loads(response.read()))

    def enroll_device(self, device_id: str, key_file: Path) -> str:
        """Create the device's machine user, metadata, role grant and key; return the user id."""
        assert self.issuer is not None
        token = self._admin_token()
        user_id = str(self._management(token, "/management/v1/users/machine", {
            "userName": device_id, "name": device_id,
            "accessTokenType": "ACCESS_TOKEN_TYPE_JWT"})["userId"])
        self._management(token, f"/management/v1/users/{user_id}/metadata/device_id",
                         {"value": base64.b64encode(device_id.encode()).decode()})
        self._management(token, f"/management/v1/users/{user_id}/grants",
                         {"projectId": self.issuer.project_id, "roleKeys": ["fleet-device"]})
        key = self._management(token, f"/management/v1/users/{user_id}/keys",
                               {"type": "KEY_TYPE_JSON"})
        _secret_file(key_file, base64.b64decode(key["keyDetails"]).decode())
        return user_id


def start_services(
    workdir: Path, *, auth: AuthMode = "dev", detach: bool = False,
    token_lifetime_s: int = 3600,
) -> FleetServices:
    """Start everything the agents talk to; stop what was started if a step fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    admin = StaticUser("admin", secrets.token_urlsafe(18))
    writer = StaticUser("writer", secrets.token_urlsafe(18), _writer_static_permissions())
    device = StaticUser("device", secrets.token_urlsafe(18)) if auth == "dev" else None
    fleet_users = [admin, writer, *([device] if device else [])]
    callout_user = StaticUser("callout", secrets.token_urlsafe(18))
    issuer_key, xkey = new_nkey("account"), new_xkey()
    config = ServerConfig(
        port=free_port(), http_port=free_port(), store_dir=workdir / "jetstream",
        fleet_users=fleet_users, sys_user=StaticUser("sys", secrets.token_urlsafe(18)),
        callout=CalloutConfig(issuer_key.public_key, [callout_user], xkey.public_key)
        if auth == "callout" else None,
    )
    server = NatsServer(config, workdir, detach=detach)
    server.start()
    services = FleetServices(workdir, auth, server, admin, device)
    try:
        secrets_dir = workdir / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        writer_pw = _secret_file(secrets_dir / "writer-password", writer.password)
        callout_toml = (
            "[log]\nlevel = \"info\"\n\n[writer]\nenabled = true\n[writer.nats]\n"
            + _toml_nats(server.url, writer.user, writer_pw)
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
                + _toml_nats(server.url, callout_user.user, callout_pw)
            )
        callout_config = _secret_file(workdir / "fleet-callout.toml", callout_toml)
        markers = ("writing reports from",) + (
            ("answering $SYS.REQ.USER.AUTH",) if auth == "callout" else ())
        callout = ServiceProcess(
            "fleet-callout",
            [sys.executable, "-m", "harmony_fleet.callout.main", "--config", str(callout_config)],
            workdir / "fleet-callout.log", markers, detach,
        )
        services.processes.append(callout)
        callout.start()
    except BaseException:
        services.stop()
        raise
    return services


def _writer_static_permissions() -> dict[str, list[str]]:
    perms = writer_permissions()
    return {"publish": perms["publish"], "subscribe": perms["subscribe"]}


def _start_issuer(services: FleetServices, lifetime_s: int, detach: bool) -> Issuer:
    issuer = OidcIssuer(project_id=PROJECT_ID, token_lifetime_s=lifetime_s, port=free_port())
    admin_key = services.workdir / "secrets" / "admin-zitadel-key.json"
    issuer.enroll_admin("fleet-admin", admin_key)
    registry = services.workdir / "secrets" / "issuer-registry.json"
    save_registry(issuer, registry)
    process = ServiceProcess(
        "oidc-issuer", [sys.executable, "-m", "harmony_fleet.testing.oidc", "--registry",
                        str(registry)],
        services.workdir / "oidc-issuer.log", ("issuer listening on",), detach,
    )
    services.processes.append(process)
    process.start()
    return Issuer(issuer.url, PROJECT_ID, admin_key, registry)
