"""Agent configuration: ``/etc/fleet-agent/config.toml``, overridable by environment.

Example::

    [agent]
    device_id = "pi-kitchen-01"
    runtime_enabled = true          # false: no podman; commands and heartbeats only
    heartbeat_interval_s = 10
    labels = { site = "lab", role = "sensor" }

    [nats]
    urls = ["nats://nats.example.net:4222"]
    [nats.auth]
    mode = "userpass"               # development only
    user = "device"
    password_file = "/etc/fleet-agent/nats-password"

    [runtime]
    reconcile_interval_s = 10       # periodic check: notices containers that died
    max_parallel_deployments = 4

    [exec]                          # exec is refused unless enabled, then only what is listed
    enabled = true
    allow = [ { deployment = "default_web", service = "*", commands = ["cat", "ls"] } ]

    [log]
    level = "info"
    json = true

    [metrics]
    listen = "127.0.0.1:9464"       # omit to disable

Environment variables ``FLEET_AGENT_<SECTION>__<FIELD>`` override the file, e.g.
``FLEET_AGENT_AGENT__DEVICE_ID=pi-02`` or ``FLEET_AGENT_LOG__JSON=true``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.config import ConfigError, DaemonConfig, Section
from harmony_fleet.contracts import MAX_DESIRED_STATE_BYTES, DeviceId, Labels

__all__ = ["AgentConfig", "ConfigError", "ExecRule", "ExecSection", "RuntimeSection"]

DEFAULT_CONFIG_PATH = Path("/etc/fleet-agent/config.toml")




class AgentSection(Section):
    device_id: DeviceId
    runtime_enabled: bool = Field(
        default=True, description="Drive podman; when false only commands and reports run"
    )
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    info_interval_s: float = Field(
        default=300.0, gt=0, description="Re-publish device-info this often (labels, inventory)"
    )
    labels: Labels = Field(default_factory=dict)
    max_concurrent_commands: int = Field(default=16, ge=1)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)


class RuntimeSection(Section):
    """How the agent drives podman (used when ``agent.runtime_enabled``)."""

    podman: str = Field(default="podman", description="podman binary (name on PATH or a path)")
    reconcile_interval_s: float = Field(
        default=10.0, gt=0, description="Periodic full reconcile (notices containers that died)"
    )
    max_parallel_deployments: int = Field(default=4, ge=1)
    stop_timeout_s: int = Field(default=10, ge=0, le=600,
                                description="podman --stop-timeout of service containers")
    max_desired_state_bytes: int = Field(
        default=MAX_DESIRED_STATE_BYTES, ge=1024, le=MAX_DESIRED_STATE_BYTES,
        description="Larger desired-state values fail their deployment",
    )
    watch_heartbeat_s: float = Field(default=5.0, gt=0, le=60)


class ExecRule(Section):
    """One allowlist entry: ``*`` matches anything."""

    deployment: str = "*"
    service: str = "*"
    commands: list[str] = Field(
        min_length=1, description="Allowed argv[0] values (program names or paths), or '*'"
    )

    def allows(self, deployment: str, service: str, program: str) -> bool:
        return (
            self.deployment in ("*", deployment)
            and self.service in ("*", service)
            and ("*" in self.commands or program in self.commands)
        )


class ExecSection(Section):
    """``exec`` is refused (Forbidden) unless enabled, and then only what ``allow`` lists."""

    enabled: bool = False
    allow: list[ExecRule] = Field(default_factory=list)

    def allows(self, deployment: str, service: str, program: str) -> bool:
        return self.enabled and any(r.allows(deployment, service, program) for r in self.allow)


class AgentConfig(DaemonConfig):
    agent: AgentSection
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    exec: ExecSection = Field(default_factory=ExecSection)
    nats: NatsSettings = Field(default_factory=NatsSettings)

    model_config = SettingsConfigDict(
        env_prefix="FLEET_AGENT_", env_nested_delimiter="__", extra="forbid"
    )
