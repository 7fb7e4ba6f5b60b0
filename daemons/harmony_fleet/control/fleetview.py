"""A read-only view of the fleet for clients (inventory plugin, CLI, ``fleet_device_info``):
devices, labels, liveness, and what each device was told to run and reports about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nats.js import JetStreamContext
from pydantic import ValidationError

from harmony_fleet.bus.kv import KVEntry, get_entry, read_bucket, read_entries
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    DEFAULT_OFFLINE_AFTER_S,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    KeyFormatError,
    PodmanScore,
    desired_state_filter,
    device_heartbeat_key,
    device_info_key,
    device_state_filter,
    parse_deployment_token,
    parse_desired_state_key,
    parse_device_heartbeat_key,
    parse_device_info_key,
    parse_device_state_key,
    validate_device_id,
    validation_summary,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.errors import FleetError
from harmony_fleet.planning import device_online

DEFAULT_OFFLINE_AFTER = timedelta(seconds=DEFAULT_OFFLINE_AFTER_S)


@dataclass
class DeviceView:
    info: DeviceInfo
    heartbeat: Heartbeat | None
    online: bool

    @property
    def last_seen(self) -> datetime | None:
        return self.heartbeat.timestamp if self.heartbeat else None


@dataclass
class FleetView:
    devices: dict[str, DeviceView] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def read_fleet(
    js: JetStreamContext, offline_after: timedelta = DEFAULT_OFFLINE_AFTER
) -> FleetView:
    """Every device that published ``device-info``; malformed entries become ``problems``."""
    view = FleetView()
    heartbeats: dict[str, Heartbeat] = {}
    for key, raw in (await read_bucket(js, BUCKET_DEVICE_HEARTBEAT)).items():
        try:
            heartbeats[parse_device_heartbeat_key(key)] = Heartbeat.model_validate_json(raw)
        except KeyFormatError as exc:
            view.problems.append(str(exc))
        except ValidationError as exc:
            view.problems.append(f"{BUCKET_DEVICE_HEARTBEAT} {key}: {validation_summary(exc)}")
    now = utcnow()
    for key, raw in (await read_bucket(js, BUCKET_DEVICE_INFO)).items():
        try:
            device = parse_device_info_key(key)
            info = DeviceInfo.model_validate_json(raw)
        except KeyFormatError as exc:
            view.problems.append(str(exc))
            continue
        except ValidationError as exc:
            view.problems.append(f"{BUCKET_DEVICE_INFO} {key}: {validation_summary(exc)}")
            continue
        if info.device_id != device:
            view.problems.append(f"{BUCKET_DEVICE_INFO} {key}: payload names {info.device_id}")
            continue
        beat = heartbeats.get(device)
        view.devices[device] = DeviceView(info, beat, device_online(beat, now, offline_after))
    return view


class DeviceNotFound(FleetError, LookupError):
    """No device of that id has published ``device-info``: it never connected, or it is not
    enrolled (or its id is misspelt)."""


def _spec_hash(raw: bytes) -> str | None:
    try:
        return PodmanScore.model_validate_json(raw).spec_hash()
    except ValueError:
        return None


def deployment_rows(
    desired: dict[str, KVEntry], states: dict[str, DeploymentState]
) -> list[dict[str, Any]]:
    """One row per deployment a device holds in desired-state or reports in device-state
    (token -> entry, token -> state): what it should run and what it says about it."""
    rows = []
    for token in sorted(set(desired) | set(states)):
        namespace, name = parse_deployment_token(token)
        entry, state = desired.get(token), states.get(token)
        wanted = _spec_hash(entry.value) if entry is not None and entry.value is not None else None
        reported = state.spec_hash if state is not None else None
        rows.append({
            "deployment": token,
            "namespace": namespace,
            "name": name,
            "desired": entry is not None,
            "desired_revision": entry.revision if entry is not None else None,
            "spec_hash": wanted,
            "phase": state.phase.value if state is not None else None,
            "message": state.message if state is not None else "",
            "reported_spec_hash": reported,
            "up_to_date": entry is not None and wanted is not None and reported == wanted,
            "since": state.since.isoformat() if state is not None else None,
            "updated_at": state.updated_at.isoformat() if state is not None else None,
            "services": [s.model_dump(mode="json") for s in state.services] if state else [],
        })
    return rows


def device_detail(
    info: DeviceInfo, heartbeat: Heartbeat | None, desired: dict[str, KVEntry],
    states: dict[str, DeploymentState], *, now: datetime, offline_after: timedelta,
) -> dict[str, Any]:
    """Everything known about one device, as plain JSON values (``fleet_device_info``)."""
    return {
        "device_id": info.device_id,
        "online": device_online(heartbeat, now, offline_after),
        "last_seen": heartbeat.timestamp.isoformat() if heartbeat else None,
        "offline_after": offline_after.total_seconds(),
        "uptime_s": heartbeat.uptime_s if heartbeat else None,
        "agent_version": info.agent_version,
        "labels": dict(info.labels),
        "inventory": info.inventory.model_dump(mode="json"),
        "runtime_enabled": info.runtime_enabled,
        "sealing_key": info.sealing_key,
        "started_at": info.started_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
        "deployments": deployment_rows(desired, states),
    }


async def read_device(
    js: JetStreamContext, device_id: str, offline_after: timedelta = DEFAULT_OFFLINE_AFTER
) -> dict[str, Any]:
    """:func:`device_detail` of ``device_id``, read from the four buckets;
    :class:`DeviceNotFound` when it has no device-info."""
    validate_device_id(device_id)
    info_entry = await get_entry(js, BUCKET_DEVICE_INFO, device_info_key(device_id))
    if info_entry.value is None:
        raise DeviceNotFound(f"device {device_id} not found: it has never published device-info "
                             "(not enrolled, never connected, or a misspelt id)")
    try:
        info = DeviceInfo.model_validate_json(info_entry.value)
    except ValidationError as exc:
        raise DeviceNotFound(f"device {device_id}: its device-info is unreadable: "
                             f"{validation_summary(exc)}") from None
    beat_entry = await get_entry(js, BUCKET_DEVICE_HEARTBEAT, device_heartbeat_key(device_id))
    heartbeat = None
    if beat_entry.value is not None:
        try:
            heartbeat = Heartbeat.model_validate_json(beat_entry.value)
        except ValidationError:
            heartbeat = None  # unreadable: no proof of life
    desired = {parse_desired_state_key(k).deployment: e for k, e in
               (await read_entries(js, BUCKET_DESIRED_STATE, desired_state_filter(device_id))).items()}
    states: dict[str, DeploymentState] = {}
    for key, raw in (await read_bucket(js, BUCKET_DEVICE_STATE, device_state_filter(device_id))).items():
        try:
            states[parse_device_state_key(key).deployment] = DeploymentState.model_validate_json(raw)
        except ValidationError:
            continue  # the writer validates reports; an unreadable one is left out
    return device_detail(info, heartbeat, desired, states, now=utcnow(),
                         offline_after=offline_after)
