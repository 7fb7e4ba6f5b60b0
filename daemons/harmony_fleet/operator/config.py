"""``fleet-operator`` configuration (``/etc/fleet-operator/config.toml``; env
``FLEET_OPERATOR_<SECTION>__<FIELD>``): see :mod:`harmony_fleet.operator.main` for an example."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.config import DaemonConfig, Section
from harmony_fleet.contracts import DEFAULT_OFFLINE_AFTER_S
from harmony_fleet.dashboard.config import DashboardSection

from .kube import KubeTarget
from .kubeconfig import kubeconfig_paths, load_kubeconfig


class OperatorSection(Section):
    """``[operator]``: what the operator watches and how it paces its writes. The one home of
    these settings: the daemon reads them from its config, tests build them directly."""

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch (empty: every namespace)")
    lease_namespace: str = "harmony-fleet"
    lease_name: str = "fleet-operator"
    identity: str = Field(default_factory=socket.gethostname,
                          description="This replica's name in the Lease")
    lease_duration_s: int = Field(default=15, ge=1)
    lease_renew_s: float = Field(default=5.0, gt=0)
    offline_after_s: float = Field(default=DEFAULT_OFFLINE_AFTER_S, gt=0)
    probe_listen: str | None = Field(default="0.0.0.0:8080", pattern=r"^[^:]*:\d+$")
    device_resources: bool = Field(
        default=True, description="Mirror devices as Device resources (turn off for very "
                                  "large fleets that do not need them)")
    status_interval_s: float = Field(
        default=1.0, gt=0, description="At most one status patch per Deployment this often")
    device_interval_s: float = Field(default=2.0, gt=0)
    replan_interval_s: float = Field(
        default=30.0, gt=0, description="Re-plan everything this often (a safety net)")
    plan_min_interval_s: float = Field(
        default=0.2, ge=0, description="At least this long between two plans: the reports of "
        "a batch that answer together become one plan")
    last_seen_refresh_s: float = Field(
        default=30.0, gt=0, description="Refresh a Device's lastSeen at most this often")
    write_concurrency: int = Field(default=64, ge=1)
    device_write_concurrency: int = Field(
        default=16, ge=1, description="Device resource writes in flight at once")
    device_writes_per_s: float = Field(
        default=200.0, gt=0, description="Device resource writes (create, patch, status) per "
        "second at most: a large fleet's first sight and its lastSeen refreshes are spread "
        "out instead of flooding the API server")


class KubeSection(Section):
    """``[kube]``: where the Kubernetes API is and the credentials. In order: ``server`` (with
    ``token_file``/``ca_file``); else ``kubeconfig``, the ``KUBECONFIG`` environment variable or
    a ``context``; else the pod's service account; else ``~/.kube/config`` (kubectl's rules, see
    :mod:`harmony_fleet.operator.kubeconfig`)."""

    server: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False
    kubeconfig: Path | None = Field(
        default=None, description="A kubeconfig file (default: KUBECONFIG, then the service "
                                  "account, then ~/.kube/config)")
    context: str | None = Field(
        default=None, description="The kubeconfig context (default: its current-context)")

    def target(self) -> KubeTarget:
        """The API server and credentials; :class:`KubeconfigError` (an ``InvalidInput``) when
        none can be found or the kubeconfig cannot be used."""
        if self.server is not None:
            # the file, not its content: a rotated token is read again
            return KubeTarget(self.server, None, self.ca_file, self.insecure,
                              token_file=self.token_file)
        in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        if self.kubeconfig is not None or os.environ.get("KUBECONFIG", "").strip() \
                or self.context is not None \
                or (not in_pod and Path("~/.kube/config").expanduser().is_file()):
            return KubeTarget.from_kubeconfig(
                load_kubeconfig(kubeconfig_paths(self.kubeconfig), self.context))
        return KubeTarget.in_cluster()


class OperatorConfig(DaemonConfig):
    operator: OperatorSection = Field(default_factory=OperatorSection)
    kube: KubeSection = Field(default_factory=KubeSection)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    dashboard: DashboardSection = Field(
        default_factory=DashboardSection,
        description="the web dashboard; served only when [dashboard] listen is set")

    env_prefix: ClassVar[str] = "FLEET_OPERATOR_"
