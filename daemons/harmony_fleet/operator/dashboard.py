"""The dashboard as fleet-operator serves it (``[dashboard] listen``): it reads the operator's
own view (the four buckets it already watches) and the Deployment resources with the status
the operator writes, and reaches devices through the operator's command client."""

from __future__ import annotations

import asyncio
from typing import Any

from harmony_fleet.contracts import DeploymentState
from harmony_fleet.dashboard.app import Dashboard
from harmony_fleet.dashboard.auth import OidcClient
from harmony_fleet.dashboard.config import DashboardSection
from harmony_fleet.dashboard.server import serve
from harmony_fleet.dashboard.source import DeploymentResource, FleetSnapshot

from .app import FleetOperator


class OperatorSource:
    """A :class:`~harmony_fleet.dashboard.source.FleetSource` over a running operator."""

    label = "fleet-operator (NATS buckets and Kubernetes)"

    def __init__(self, operator: FleetOperator) -> None:
        self.operator = operator

    def snapshot(self) -> FleetSnapshot:
        view = self.operator.view
        states: dict[str, dict[str, DeploymentState]] = {}
        for token, per_device in view.states.items():
            for device, state in per_device.items():
                states.setdefault(device, {})[token] = state
        desired: dict[str, dict[str, bytes]] = {}
        for key, value in view.desired.items():
            device, _sep, token = key.partition(".")
            desired.setdefault(device, {})[token] = value
        resources = {}
        for token, tracked in self.operator.deployments.items():
            spec = tracked.view
            resources[token] = DeploymentResource(
                tracked.namespace, tracked.name, token, tracked.generation,
                spec.selector.model_dump(mode="json", by_alias=True, exclude_defaults=True),
                spec.rollout.model_dump(mode="json", by_alias=True),
                dict(tracked.status or {}), spec.error or tracked.secret_error)
        return FleetSnapshot(view.infos, view.heartbeats, states, desired, resources,
                             ready=self.operator._views_ready())


def dashboard_task(operator: FleetOperator, settings: DashboardSection,
                   stop: asyncio.Event) -> dict[str, Any]:
    """The supervised task that serves the dashboard, or none when ``listen`` is not set."""
    if not settings.listen:
        return {}
    oidc = OidcClient(settings.oidc) if settings.auth == "oidc" and settings.oidc else None
    dashboard = Dashboard(settings, OperatorSource(operator), operator.commands, oidc=oidc)
    return {"dashboard": serve(dashboard, stop)}
