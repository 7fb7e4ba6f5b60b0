"""``fleet-operator`` entry point and configuration.

Example ``/etc/fleet-operator/config.toml`` (env ``FLEET_OPERATOR_<SECTION>__<FIELD>``)::

    [operator]
    namespaces = []                 # empty: every namespace (cluster-wide)
    lease_namespace = "harmony-fleet"
    offline_after_s = 60
    probe_listen = "0.0.0.0:8080"   # /healthz (kopf liveness, includes "leader")

    [kube]                          # omit in a pod: the service account is used
    server = "https://127.0.0.1:6443"
    token_file = "/path/to/token"
    ca_file = "/path/to/ca.crt"

    [nats]
    urls = ["nats://nats.harmony-fleet:4222"]
    auth = { mode = "zitadel", issuer = "https://zitadel.example.net",
             key_file = "/etc/fleet-operator/zitadel-key.json", project_id = "2547..." }
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from harmony_fleet.bus import connect, drain, provider_from_settings
from harmony_fleet.bus.connection import keep_authenticated
from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.config import DaemonConfig, Section, daemon_main
from harmony_fleet.daemon import supervise

from .app import FleetOperator, OperatorSettings
from .kube import KubeClient, KubeTarget

log = logging.getLogger("harmony_fleet.operator")
DEFAULT_CONFIG = Path("/etc/fleet-operator/config.toml")


class OperatorSection(Section):
    namespaces: list[str] = Field(default_factory=list)
    lease_namespace: str = "harmony-fleet"
    lease_name: str = "fleet-operator"
    identity: str = Field(default_factory=socket.gethostname)
    offline_after_s: float = Field(default=60, gt=0)
    probe_listen: str | None = Field(default="0.0.0.0:8080", pattern=r"^[^:]*:\d+$")
    device_resources: bool = Field(default=True, description="mirror devices as Device CRs")


class KubeSection(Section):
    server: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False

    def target(self) -> KubeTarget:
        if self.server is None:
            return KubeTarget.in_cluster()
        token = self.token_file.read_text(encoding="utf-8").strip() if self.token_file else None
        return KubeTarget(self.server, token, self.ca_file, self.insecure)


class OperatorConfig(DaemonConfig):
    operator: OperatorSection = Field(default_factory=OperatorSection)
    kube: KubeSection = Field(default_factory=KubeSection)
    nats: NatsSettings = Field(default_factory=NatsSettings)

    model_config = SettingsConfigDict(
        env_prefix="FLEET_OPERATOR_", env_nested_delimiter="__", extra="forbid"
    )


def build_registry(operator: FleetOperator, target: KubeTarget,
                   tune: dict[str, Any] | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    operator.register(registry)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=target.server, token=target.token, insecure=target.insecure,
            ca_path=str(target.ca_file) if target.ca_file else None,
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = "fleet.nationtech.io/desired-state-cleanup"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="fleet.nationtech.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="fleet.nationtech.io")
        for key, value in (tune or {}).items():
            section, _sep, name = key.partition(".")
            setattr(getattr(settings, section), name, value)

    return registry


async def run_operator(
    config: OperatorConfig, stop: asyncio.Event, *, target: KubeTarget | None = None,
    settings: OperatorSettings | None = None, kopf_tune: dict[str, Any] | None = None,
    started: asyncio.Event | None = None, holder: list[FleetOperator] | None = None,
) -> None:
    """Run until ``stop``: NATS views, the elector, the writers, and kopf."""
    target = target or config.kube.target()
    credentials = provider_from_settings(config.nats.auth)
    nc = await connect(config.nats, name="fleet-operator", credentials=credentials, stop=stop)
    kube = KubeClient(target)
    op_settings = settings or OperatorSettings(
        lease_namespace=config.operator.lease_namespace,
        lease_name=config.operator.lease_name, identity=config.operator.identity,
        offline_after_s=config.operator.offline_after_s,
        device_resources=config.operator.device_resources,
    )
    operator = FleetOperator(nc, kube, op_settings)
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


def main(argv: list[str] | None = None) -> int:
    async def _run(config: OperatorConfig, stop: asyncio.Event) -> None:
        await run_operator(config, stop)

    return daemon_main(argv, prog="fleet-operator", description=__doc__.splitlines()[0],
                       config_cls=OperatorConfig, default_config=DEFAULT_CONFIG, run=_run)


if __name__ == "__main__":
    sys.exit(main())
