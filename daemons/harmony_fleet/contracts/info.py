"""What a device says about itself: ``device-info`` and ``device-heartbeat``."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from .base import UtcDatetime, WireModel
from .ids import DeviceId

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


class Heartbeat(WireModel):
    device_id: DeviceId
    timestamp: UtcDatetime
    uptime_s: int = Field(ge=0)
    agent_version: str
