"""What a device says about itself: ``device-info`` and ``device-heartbeat``."""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator, Field

from .base import UtcDatetime, WireModel
from .ids import DeviceId
from .sealing import validate_public_key

#: A device whose last heartbeat is older than this (seconds) is offline: the operator's
#: Device status, the inventory plugin and the Ansible modules all judge liveness by it. The
#: same span as a device's lease (reports.DEFAULT_DEVICE_LEASE_S): three missed heartbeats at the
#: agent's default interval of 10 s, and the moment another agent may take the device id over.
DEFAULT_OFFLINE_AFTER_S: Final = 30.0

#: Longest agent instance id: ``<boot id>:<random hex>``.
AGENT_INSTANCE_MAX = 80

# Kubernetes label syntax: labels become the Device CR's metadata.labels.
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate_label_key(key: str) -> str:
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(f"label key {key!r}: prefix must be a DNS-1123 subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"label key {key!r}: name must be 1-63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return key


def validate_label_value(value: str) -> str:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        raise ValueError(
            f"label value {value!r} must be empty or 1-63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return value


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        validate_label_key(key)
        validate_label_value(value)
    return labels


Labels = Annotated[dict[str, str], AfterValidator(validate_labels)]
SealingKey = Annotated[str, Field(max_length=64), AfterValidator(validate_public_key)]


class Inventory(WireModel):
    hostname: str
    arch: str = Field(description="machine architecture as uname reports it: x86_64, aarch64")
    os: str = Field(description="PRETTY_NAME from os-release")
    kernel: str
    cpus: int = Field(ge=0)
    memory_bytes: int = Field(ge=0)
    podman_version: str | None = Field(default=None, description="None when the runtime is off")


class DeviceInfo(WireModel):
    device_id: DeviceId
    agent_version: str
    labels: Labels = Field(default_factory=dict, description="routing labels from the config")
    inventory: Inventory
    runtime_enabled: bool = True
    started_at: UtcDatetime
    updated_at: UtcDatetime
    sealing_key: SealingKey | None = Field(
        default=None,
        description="X25519 public key (base64url) that secrets for this device are sealed to; "
        "absent from agents that predate secrets and from agents without a runtime",
    )


class Heartbeat(WireModel):
    device_id: DeviceId
    timestamp: UtcDatetime
    uptime_s: int = Field(ge=0)
    agent_version: str
    instance_id: str | None = Field(
        default=None, max_length=AGENT_INSTANCE_MAX,
        description="the agent process that sent it (see contracts.reports.HDR_AGENT_INSTANCE)",
    )
