"""A read-only view of the fleet for clients (inventory plugin, CLI): devices, labels, liveness."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nats.js import JetStreamContext
from pydantic import ValidationError

from harmony_fleet.contracts import (
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    DeviceInfo,
    Heartbeat,
    KeyFormatError,
    parse_device_heartbeat_key,
    parse_device_info_key,
    validation_summary,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.planning import device_online

from .kv import read_bucket

DEFAULT_OFFLINE_AFTER = timedelta(seconds=30)


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
