"""KV buckets and key formats (harmony_fleet.contracts.kv)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given

from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    BUCKET_DEVICE_HEARTBEAT,
    BUCKET_DEVICE_INFO,
    BUCKET_DEVICE_STATE,
    BUCKETS,
    CONTROL_PLANE_CONSUMERS,
    MAX_DEPLOYMENTS_PER_DEVICE,
    MAX_DESIRED_STATE_BYTES,
    MAX_REPORT_BYTES,
    BucketSpec,
    DesiredStateKey,
    DeviceStateKey,
    InvalidIdError,
    KeyFormatError,
    ReportKind,
    desired_state_filter,
    desired_state_key,
    device_heartbeat_key,
    device_info_key,
    device_state_filter,
    device_state_key,
    kv_stream_name,
    kv_subject,
    parse_desired_state_key,
    parse_device_heartbeat_key,
    parse_device_info_key,
    parse_device_state_key,
)

from .strategies import PROPERTY, deployment_tokens, device_ids

# ----------------------------------------------------------------------------- buckets


def test_bucket_names_are_the_ones_in_design() -> None:
    assert BUCKET_DESIRED_STATE == "desired-state"
    assert BUCKET_DEVICE_STATE == "device-state"
    assert BUCKET_DEVICE_INFO == "device-info"
    assert BUCKET_DEVICE_HEARTBEAT == "device-heartbeat"


def test_buckets_lists_exactly_the_four_buckets_once() -> None:
    assert [b.name for b in BUCKETS] == [
        "desired-state",
        "device-state",
        "device-info",
        "device-heartbeat",
    ]
    assert all(isinstance(b, BucketSpec) for b in BUCKETS)


def test_size_limits() -> None:
    assert MAX_DESIRED_STATE_BYTES == 256 * 1024 == 262144
    assert MAX_REPORT_BYTES == {ReportKind.STATE: 16 * 1024, ReportKind.INFO: 16 * 1024,
                                ReportKind.HEARTBEAT: 1024}


@pytest.mark.parametrize(
    ("name", "history", "max_value_size", "ttl", "keys_per_device"),
    [
        ("desired-state", 5, 256 * 1024, None, None),
        ("device-state", 1, 16 * 1024, None, MAX_DEPLOYMENTS_PER_DEVICE),
        ("device-info", 1, 16 * 1024, None, 1),
        ("device-heartbeat", 1, 1024, timedelta(days=1), 1),
    ],
)
def test_bucket_settings_match_the_documented_choices(
    name: str, history: int, max_value_size: int, ttl: timedelta | None,
    keys_per_device: int | None,
) -> None:
    spec = {b.name: b for b in BUCKETS}[name]
    assert spec.history == history
    assert spec.max_value_size == max_value_size
    assert spec.ttl == ttl
    assert spec.keys_per_device == keys_per_device


@pytest.mark.parametrize("capacity", [1, 10, 1000, 10_000])
def test_report_buckets_are_sized_from_the_per_device_caps(capacity: int) -> None:
    specs = {b.name: b for b in BUCKETS}
    # the control plane writes desired-state: no byte limit, but room for a watch per device
    assert specs["desired-state"].max_bytes(capacity) is None
    assert specs["desired-state"].max_consumers(capacity) == capacity + CONTROL_PLANE_CONSUMERS
    for name in ("device-state", "device-info", "device-heartbeat"):
        spec = specs[name]
        per_device = spec.keys_per_device * spec.max_value_size * spec.history
        assert spec.max_bytes(capacity) == capacity * per_device
    # only expired Removed states need delete markers for readers
    assert [b.name for b in BUCKETS if b.expiry_markers] == ["device-state"]


@pytest.mark.parametrize(
    ("name", "key_format"),
    [
        ("desired-state", "<device>.<deployment>"),
        ("device-state", "state.<device>.<deployment>"),
        ("device-info", "info.<device>"),
        ("device-heartbeat", "heartbeat.<device>"),
    ],
)
def test_bucket_descriptions_name_the_key_format(name: str, key_format: str) -> None:
    spec = {b.name: b for b in BUCKETS}[name]
    assert spec.description.startswith("Harmony Fleet: ")
    assert key_format in spec.description


def test_bucket_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BUCKETS[0].history = 99  # type: ignore[misc]


def test_kv_stream_name_and_subject() -> None:
    assert kv_stream_name("desired-state") == "KV_desired-state"
    assert [kv_stream_name(b.name) for b in BUCKETS] == [
        "KV_desired-state",
        "KV_device-state",
        "KV_device-info",
        "KV_device-heartbeat",
    ]
    assert kv_subject("desired-state", "pi-1.ns_web") == "$KV.desired-state.pi-1.ns_web"
    assert kv_subject("device-state", "state.pi-1.>") == "$KV.device-state.state.pi-1.>"
    assert kv_subject(BUCKET_DEVICE_INFO, device_info_key("pi-1")) == "$KV.device-info.info.pi-1"


# ----------------------------------------------------------------------------- builders


def test_key_builders_produce_the_documented_formats() -> None:
    assert desired_state_key("pi-1", "default_web") == "pi-1.default_web"
    assert desired_state_key("pi-1", "web") == "pi-1.web"
    assert device_state_key("pi-1", "default_web") == "state.pi-1.default_web"
    assert device_info_key("pi-1") == "info.pi-1"
    assert device_heartbeat_key("pi-1") == "heartbeat.pi-1"


def test_filters() -> None:
    assert desired_state_filter("pi-1") == "pi-1.>"
    assert device_state_filter() == "state.>"
    assert device_state_filter(None) == "state.>"
    assert device_state_filter("pi-1") == "state.pi-1.>"


@pytest.mark.parametrize("bad", ["", "Pi", "pi_1", "pi.1", "*", ">", "-pi", "a" * 64])
def test_builders_and_filters_reject_bad_device_ids(bad: str) -> None:
    for build in (
        lambda: desired_state_key(bad, "web"),
        lambda: device_state_key(bad, "web"),
        lambda: device_info_key(bad),
        lambda: device_heartbeat_key(bad),
        lambda: desired_state_filter(bad),
        lambda: device_state_filter(bad),
    ):
        with pytest.raises(InvalidIdError, match="device id"):
            build()


@pytest.mark.parametrize("bad", ["", "ns.web", "a_b_c", "*", ">", "Web", "ns__web", "_web"])
def test_builders_reject_bad_deployment_tokens(bad: str) -> None:
    with pytest.raises(InvalidIdError, match="deployment"):
        desired_state_key("pi-1", bad)
    with pytest.raises(InvalidIdError, match="deployment"):
        device_state_key("pi-1", bad)


def test_key_dataclasses_render_their_key() -> None:
    assert str(DesiredStateKey("pi-1", "ns_web")) == "pi-1.ns_web"
    assert str(DeviceStateKey("pi-1", "ns_web")) == "state.pi-1.ns_web"
    with pytest.raises(dataclasses.FrozenInstanceError):
        DesiredStateKey("pi-1", "ns_web").device_id = "x"  # type: ignore[misc]


# ----------------------------------------------------------------------------- round trips


@PROPERTY
@given(device_ids, deployment_tokens)
def test_desired_state_key_round_trip(device: str, deployment: str) -> None:
    key = desired_state_key(device, deployment)
    assert key.split(".") == [device, deployment]
    parsed = parse_desired_state_key(key)
    assert parsed == DesiredStateKey(device, deployment)
    assert str(parsed) == key
    assert key.startswith(desired_state_filter(device)[:-1])


@PROPERTY
@given(device_ids, deployment_tokens)
def test_device_state_key_round_trip(device: str, deployment: str) -> None:
    key = device_state_key(device, deployment)
    assert key.split(".") == ["state", device, deployment]
    parsed = parse_device_state_key(key)
    assert parsed == DeviceStateKey(device, deployment)
    assert str(parsed) == key
    assert key.startswith(device_state_filter(device)[:-1])
    assert key.startswith(device_state_filter()[:-1])


@PROPERTY
@given(device_ids)
def test_info_and_heartbeat_key_round_trip(device: str) -> None:
    assert parse_device_info_key(device_info_key(device)) == device
    assert parse_device_heartbeat_key(device_heartbeat_key(device)) == device


# ----------------------------------------------------------------------------- parser rejections

Parser = Callable[[str], Any]

_PARSERS: dict[str, Parser] = {
    "desired-state": parse_desired_state_key,
    "device-state": parse_device_state_key,
    "device-info": parse_device_info_key,
    "device-heartbeat": parse_device_heartbeat_key,
}

_BAD_KEYS: list[tuple[str, str, str]] = [
    # desired-state: <device>.<deployment>
    ("desired-state", "", "must be a non-empty string"),
    ("desired-state", "pi-1", "has 1 token(s), expected 2"),
    ("desired-state", "pi-1.ns_web.extra", "has 3 token(s), expected 2"),
    ("desired-state", "state.pi-1.ns_web", "has 3 token(s), expected 2"),
    ("desired-state", "pi-1.", "deployment must not be empty"),
    ("desired-state", ".ns_web", "device id must not be empty"),
    ("desired-state", "pi-1.>", "is not a deployment token"),
    ("desired-state", "pi-1.*", "is not a deployment token"),
    ("desired-state", "*.ns_web", "is not a DNS-1123 label"),
    ("desired-state", ">.ns_web", "is not a DNS-1123 label"),
    ("desired-state", "Pi-1.ns_web", "is not a DNS-1123 label"),
    ("desired-state", "pi_1.ns_web", "is not a DNS-1123 label"),
    ("desired-state", "pi-1.ns__web", "is not a deployment token"),
    ("desired-state", "pi-1.a_b_c", "is not a deployment token"),
    ("desired-state", "a" * 64 + ".web", "is 64 characters long"),
    # device-state: state.<device>.<deployment>
    ("device-state", "", "must be a non-empty string"),
    ("device-state", "pi-1.ns_web", "has 2 token(s), expected 3"),
    ("device-state", "state.pi-1.ns_web.x", "has 4 token(s), expected 3"),
    ("device-state", "info.pi-1.ns_web", "must start with 'state.'"),
    ("device-state", "State.pi-1.ns_web", "must start with 'state.'"),
    ("device-state", "*.pi-1.ns_web", "must start with 'state.'"),
    ("device-state", "state..ns_web", "device id must not be empty"),
    ("device-state", "state.pi-1.", "deployment must not be empty"),
    ("device-state", "state.*.ns_web", "is not a DNS-1123 label"),
    ("device-state", "state.pi-1.>", "is not a deployment token"),
    ("device-state", "state.PI.ns_web", "is not a DNS-1123 label"),
    # device-info: info.<device>
    ("device-info", "", "must be a non-empty string"),
    ("device-info", "info", "has 1 token(s), expected 2"),
    ("device-info", "info.pi-1.x", "has 3 token(s), expected 2"),
    ("device-info", "heartbeat.pi-1", "must start with 'info.'"),
    ("device-info", "infos.pi-1", "must start with 'info.'"),
    ("device-info", "info.", "device id must not be empty"),
    ("device-info", "info.*", "is not a DNS-1123 label"),
    ("device-info", "info.>", "is not a DNS-1123 label"),
    ("device-info", "info.pi_1", "is not a DNS-1123 label"),
    # device-heartbeat: heartbeat.<device>
    ("device-heartbeat", "", "must be a non-empty string"),
    ("device-heartbeat", "heartbeat", "has 1 token(s), expected 2"),
    ("device-heartbeat", "heartbeat.pi-1.x", "has 3 token(s), expected 2"),
    ("device-heartbeat", "info.pi-1", "must start with 'heartbeat.'"),
    ("device-heartbeat", "heartbeat.", "device id must not be empty"),
    ("device-heartbeat", "heartbeat.>", "is not a DNS-1123 label"),
    ("device-heartbeat", "heartbeat.-pi", "is not a DNS-1123 label"),
]


@pytest.mark.parametrize(("bucket", "key", "fragment"), _BAD_KEYS)
def test_parsers_reject_malformed_keys_naming_the_bucket(bucket: str, key: str, fragment: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        _PARSERS[bucket](key)
    message = str(info.value)
    assert message.startswith(f"{bucket}: "), message
    assert fragment in message


@pytest.mark.parametrize("bucket", sorted(_PARSERS))
@pytest.mark.parametrize("key", [None, 42, b"info.pi-1"])
def test_parsers_reject_non_string_keys(bucket: str, key: object) -> None:
    with pytest.raises(KeyFormatError, match=rf"^{bucket}: key must be a non-empty string"):
        _PARSERS[bucket](key)  # type: ignore[arg-type]


def test_key_format_error_is_a_value_error_not_an_id_error() -> None:
    assert issubclass(KeyFormatError, ValueError)
    assert not issubclass(KeyFormatError, InvalidIdError)
    with pytest.raises(KeyFormatError) as info:
        parse_desired_state_key("Bad.web")
    assert isinstance(info.value.__cause__, InvalidIdError)


def test_parser_rejects_key_with_trailing_newline() -> None:
    with pytest.raises(KeyFormatError):
        parse_desired_state_key("pi-1.web\n")
