"""Agent configuration: ``/etc/fleet-agent/config.toml``, overridable by environment.

Example::

    [agent]
    device_id = "pi-kitchen-01"
    runtime_enabled = true          # false: no podman; commands and heartbeats only
    heartbeat_interval_s = 10
    labels = { site = "lab", role = "sensor" }
    sealing_key_file = "/etc/fleet-agent/sealing-key"   # created (0600) on first start

    [nats]
    urls = ["tls://nats.example.net:4222"]    # several for a cluster
    tls_ca_file = "/etc/fleet-agent/ca.pem"    # the CA of the server's certificate (TLS)
    # tls_cert_file / tls_key_file: a client certificate, when the server asks for one
    [nats.auth]
    mode = "userpass"               # development only
    user = "device"
    password_file = "/etc/fleet-agent/nats-password"

    [runtime]
    reconcile_interval_s = 10       # periodic check, the safety net under podman's events
    events = true                   # follow podman's event stream: a crash is seen at once
    max_parallel_deployments = 4
    insecure_registries = []        # e.g. ["127.0.0.1:5000"]: pulled without TLS verification

    [exec]                          # exec is refused unless enabled, then only what is listed
    enabled = true
    allow = [ { deployment = "default_web", service = "*", commands = ["cat", "ls"] } ]

    [policy]                        # what workloads may touch here, whatever is deployed
    host_paths = [                  # bind mounts: none unless listed; read-only by default
      { prefix = "/srv/fleet", writable = true },
      { prefix = "/etc/fleet-shared" },
    ]                               # named volumes are always allowed
    privileged_ports = [80, 443]    # host ports 1024-65535 are always allowed, lower ones if listed
    host_ips = ["127.0.0.1"]        # omit: any address
    userns = "auto"                 # a user namespace per container; "host": container root is root

    [log]
    level = "info"
    json = true

    [metrics]
    listen = "127.0.0.1:9464"       # omit to disable

Environment variables ``FLEET_AGENT_<SECTION>__<FIELD>`` override the file, e.g.
``FLEET_AGENT_AGENT__DEVICE_ID=pi-02`` or ``FLEET_AGENT_LOG__JSON=true``.

``[policy]`` is read at start (restart the agent after changing it); its rules and defaults
are documented in :mod:`harmony_fleet.agent.policy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.config import ConfigError, DaemonConfig, Section
from harmony_fleet.contracts import (
    DEFAULT_DEVICE_LEASE_S,
    MAX_DESIRED_STATE_BYTES,
    DeviceId,
    Labels,
)
from harmony_fleet.contracts.score import Registry

from .identity import BOOT_ID_FILE
from .keys import DEFAULT_SEALING_KEY_FILE
from .policy import HostPathRule, PolicySection

__all__ = [
    "AgentConfig", "ConfigError", "ExecRule", "ExecSection", "HostPathRule", "PolicySection",
    "RuntimeSection",
]

DEFAULT_CONFIG_PATH = Path("/etc/fleet-agent/config.toml")


class AgentSection(Section):
    device_id: DeviceId
    runtime_enabled: bool = Field(
        default=True, description="Drive podman; when false only commands and reports run"
    )
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, le=DEFAULT_DEVICE_LEASE_S / 3,
        description="Heartbeats keep the device's lease (one live agent per device id)")
    info_interval_s: float = Field(
        default=300.0, gt=0, description="Re-publish device-info this often (labels, inventory)"
    )
    labels: Labels = Field(default_factory=dict)
    max_concurrent_commands: int = Field(default=16, ge=1)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    lock_dir: Path | None = Field(
        default=None, description="Where agents sharing a podman lock their device ids "
                                  "(default: /run/fleet-agent for root, else "
                                  "$XDG_RUNTIME_DIR/fleet-agent)")
    boot_id_file: Path = Field(
        default=BOOT_ID_FILE, description="Identifies this boot of this host (a restarted "
                                          "agent takes over its own lease at once)")
    claim_timeout_s: float = Field(
        default=DEFAULT_DEVICE_LEASE_S + 10, gt=0,
        description="At start, wait this long for another instance's lease to lapse (the "
                    "previous run before a reboot) before refusing to run")
    sealing_key_file: Path = Field(
        default=DEFAULT_SEALING_KEY_FILE,
        description="X25519 private key that this device's secrets are sealed to; created with "
        "mode 0600 on first start when the runtime is enabled",
    )


class RuntimeSection(Section):
    """How the agent drives podman (used when ``agent.runtime_enabled``)."""

    podman: str = Field(default="podman", description="podman binary (name on PATH or a path)")
    reconcile_interval_s: float = Field(
        default=10.0, gt=0,
        description="Periodic full reconcile: the safety net under podman's event stream (and "
                    "how dead containers are noticed when events are off)")
    events: bool = Field(
        default=True,
        description="Follow `podman events` for this device's containers, so a container that "
                    "dies, restarts or goes is seen within a second, not at the next pass")
    events_retry_initial_s: float = Field(
        default=0.5, gt=0, description="Backoff before following podman's events again after "
                                       "the stream ended (full jitter, doubling)")
    events_retry_max_s: float = Field(default=30.0, gt=0)
    max_parallel_deployments: int = Field(default=4, ge=1)
    stop_timeout_s: int = Field(
        default=10, ge=0, le=600,
        description="Seconds a container gets between SIGTERM and SIGKILL, whenever the agent "
                    "stops or removes one (an update, a removal, a timed-out init container)")
    transition_timeout_s: float = Field(
        default=300.0, gt=0, le=3600,
        description="A container podman keeps in a transition (stopping, removing, between "
                    "init and start) longer than this, and longer than stop_timeout_s + 30 s, "
                    "is removed by force and its deployment applied again")
    max_desired_state_bytes: int = Field(
        default=MAX_DESIRED_STATE_BYTES, ge=1024, le=MAX_DESIRED_STATE_BYTES,
        description="Larger desired-state values fail their deployment",
    )
    watch_heartbeat_s: float = Field(default=5.0, gt=0, le=60)
    insecure_registries: list[Registry] = Field(
        default_factory=list,
        description="Registries (host or host:port) pulled from with --tls-verify=false: plain "
        "HTTP or unverified TLS. The device owner's decision, so it lives here, never in a score",
    )


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
    policy: PolicySection = Field(default_factory=PolicySection)
    nats: NatsSettings = Field(default_factory=NatsSettings)

    env_prefix: ClassVar[str] = "FLEET_AGENT_"
