"""``fleet-operator`` entry point and configuration.

Example ``/etc/fleet-operator/config.toml`` (env ``FLEET_OPERATOR_<SECTION>__<FIELD>``)::

    [operator]
    namespaces = []                 # empty: every namespace (cluster-wide)
    lease_namespace = "harmony-fleet"
    offline_after_s = 30            # no heartbeat for this long: Device status.online false
    probe_listen = "0.0.0.0:8080"   # /healthz (kopf liveness, includes "leader")

    [kube]                          # omit in a pod: the service account is used
    server = "https://127.0.0.1:6443"
    token_file = "/path/to/token"
    ca_file = "/path/to/ca.crt"
    # or, instead of server/token_file/ca_file (KUBECONFIG and ~/.kube/config work too):
    # kubeconfig = "/etc/fleet-operator/kubeconfig"   # tokens, client certs, exec plugins
    # context = "prod"                                # default: its current-context

    [nats]
    urls = ["nats://nats.harmony-fleet:4222"]
    # tls_ca_file = "/etc/fleet-operator/ca.pem"   # TLS (and tls:// URLs); see the README
    auth = { mode = "zitadel", issuer = "https://zitadel.example.net",
             key_file = "/etc/fleet-operator/zitadel-key.json", project_id = "2547..." }

    [dashboard]                     # the web dashboard: no listener unless listen is set
    listen = "0.0.0.0:18080"
    external_url = "https://fleet.example.net"   # the login's redirect URI, Secure cookies
    offline_after_s = 30
    [dashboard.oidc]                # login: authorization code + PKCE, an allowed role
    issuer = "https://zitadel.example.net"
    client_id = "2547...@fleet"     # the dashboard's web application in the project
    project_id = "2547..."
    allowed_roles = ["fleet-admin", "fleet-operator"]
    # auth = "off" instead of [dashboard.oidc]: no login, accepted on a loopback address only
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf

from harmony_fleet.bus import connect, drain, provider_from_settings
from harmony_fleet.bus.connection import keep_authenticated
from harmony_fleet.config import ConfigError, daemon_main
from harmony_fleet.contracts.crd import DEPLOYMENT_FINALIZER, GROUP
from harmony_fleet.daemon import DaemonExit, supervise

from .app import FleetOperator
from .config import OperatorConfig, OperatorSection
from .dashboard import dashboard_task
from .kube import KubeClient, KubeTarget
from .kubeconfig import KubeconfigError

log = logging.getLogger("harmony_fleet.operator")
DEFAULT_CONFIG = Path("/etc/fleet-operator/config.toml")


def build_registry(operator: FleetOperator, target: KubeTarget,
                   tune: dict[str, Any] | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    operator.register(registry)

    handed: list[str | None] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf logs in again on a 401 and once ``expiration`` (an exec plugin's) has passed;
        # asked again while the plugin's token it has is still unexpired means a 401 (revoked,
        # or expired early): run the plugin again rather than hand kopf the same token
        token, expiration = target.token_and_expiry()
        if target.exec_plugin is not None and handed and token == handed[-1]:
            token, expiration = target.token_and_expiry(refresh=True)
        handed[:] = [token]
        return kopf.ConnectionInfo(
            server=target.server, token=token, insecure=target.insecure,
            ca_path=str(target.ca_file) if target.ca_file else None,
            certificate_path=str(target.cert_file) if target.cert_file else None,
            private_key_path=str(target.key_file) if target.key_file else None,
            expiration=expiration,
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = DEPLOYMENT_FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        for key, value in (tune or {}).items():
            section, _sep, name = key.partition(".")
            setattr(getattr(settings, section), name, value)

    return registry


async def run_operator(
    config: OperatorConfig, stop: asyncio.Event, *, target: KubeTarget | None = None,
    settings: OperatorSection | None = None, kopf_tune: dict[str, Any] | None = None,
    started: asyncio.Event | None = None, holder: list[FleetOperator] | None = None,
) -> None:
    """Run until ``stop``: NATS views, the elector, the writers, and kopf."""
    target = target or config.kube.target()
    credentials = provider_from_settings(config.nats.auth)
    watching: list[FleetOperator] = []

    async def reconnected() -> None:
        for each in watching:
            each.reconnected()

    nc = await connect(config.nats, name="fleet-operator", credentials=credentials, stop=stop,
                       reconnected_cb=reconnected)
    kube = KubeClient(target)
    operator = FleetOperator(nc, kube, settings or config.operator)
    watching.append(operator)
    if holder is not None:
        holder.append(operator)
    registry = build_registry(operator, target, kopf_tune)
    kopf_thread = KopfThread(registry, config.operator.namespaces, config.operator.probe_listen)
    kopf_ended = asyncio.Event()
    loop = asyncio.get_running_loop()
    kopf_thread.on_exit = lambda: loop.call_soon_threadsafe(kopf_ended.set)
    kopf_thread.start()
    if started is not None:
        started.set()

    async def kopf_alive() -> None:
        await kopf_ended.wait()
        raise RuntimeError(f"kopf stopped: {kopf_thread.error!r}")

    try:
        await supervise({
            "kopf": kopf_alive(),
            # token credentials: refresh, and re-authenticate before the NATS user JWT expires
            "credentials": keep_authenticated(nc, credentials, stop),
            **operator.tasks(stop),
            **dashboard_task(operator, config.dashboard, stop),
        }, stop, shutdown_timeout=15)
    finally:
        await asyncio.to_thread(kopf_thread.stop)
        await kube.close()
        await drain(nc)


class KopfThread(threading.Thread):
    """kopf in its own event loop: it cancels every task of its loop when it stops."""

    def __init__(self, registry: kopf.OperatorRegistry, namespaces: list[str],
                 probe: str | None) -> None:
        super().__init__(name="kopf", daemon=True)
        self.registry, self.namespaces, self.probe = registry, namespaces, probe
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None
        self.on_exit: Callable[[], object] = lambda: None

    def run(self) -> None:
        try:
            asyncio.run(kopf.operator(
                registry=self.registry, standalone=True, clusterwide=not self.namespaces,
                namespaces=self.namespaces, stop_flag=self.stop_flag,
                liveness_endpoint=f"http://{self.probe}/healthz" if self.probe else None,
            ))
        except BaseException as exc:  # reported by the supervisor, which sees the thread end
            self.error = exc
            log.exception("kopf failed")
        finally:
            self.on_exit()

    def stop(self, timeout: float = 20) -> None:
        self.stop_flag.set()
        self.join(timeout)


class KubeCredentialsError(DaemonExit):
    """No usable Kubernetes API target: exit 2 with the reason, before anything starts."""

    exit_code = 2


def main(argv: list[str] | None = None) -> int:
    async def _run(config: OperatorConfig, stop: asyncio.Event) -> None:
        try:
            target = config.kube.target()
        except KubeconfigError as exc:
            raise KubeCredentialsError(f"[kube]: {exc}") from None
        await run_operator(config, stop, target=target)

    def _check(config: OperatorConfig) -> list[str]:
        try:
            config.kube.target()
        except KubeconfigError as exc:
            if config.kube.kubeconfig is not None or config.kube.context is not None:
                raise ConfigError(f"[kube]: {exc}") from None
            # nothing named: the file may be meant for a pod, checked elsewhere
            return [f"[kube]: here: {exc}"]
        return []

    return daemon_main(argv, prog="fleet-operator", description=__doc__.splitlines()[0],
                       config_cls=OperatorConfig, default_config=DEFAULT_CONFIG, run=_run,
                       check=_check)


if __name__ == "__main__":
    sys.exit(main())
