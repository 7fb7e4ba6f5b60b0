"""Keys and key filters of any bucket, checked with the bucket's own parser
(contracts.parse_bucket_key, contracts.validate_key_filter)."""

from __future__ import annotations

import pytest
from hypothesis import given

from harmony_fleet.contracts import (
    BUCKETS,
    KEY_FORMATS,
    KeyFormatError,
    desired_state_key,
    device_heartbeat_key,
    device_info_key,
    device_state_key,
    parse_bucket_key,
    validate_key_filter,
)
from harmony_fleet.errors import InvalidInput

from .strategies import PROPERTY, deployment_tokens, device_ids


def test_every_bucket_has_a_key_format() -> None:
    assert list(KEY_FORMATS) == [spec.name for spec in BUCKETS]


@PROPERTY
@given(device=device_ids, deployment=deployment_tokens)
def test_built_keys_parse_and_are_their_own_filters(device: str, deployment: str) -> None:
    keys = {
        "desired-state": desired_state_key(device, deployment),
        "device-state": device_state_key(device, deployment),
        "device-info": device_info_key(device),
        "device-heartbeat": device_heartbeat_key(device),
    }
    for bucket, key in keys.items():
        parse_bucket_key(bucket, key)
        assert validate_key_filter(bucket, key) == key


@pytest.mark.parametrize(
    ("bucket", "pattern"),
    [
        ("desired-state", "*.shop_web"),
        ("desired-state", "pi-01.*"),
        ("desired-state", "pi-01.>"),
        ("desired-state", "*.*"),
        ("desired-state", ">"),
        ("device-state", "state.*.shop_web"),
        ("device-state", "state.pi-01.>"),
        ("device-state", "state.>"),
        ("device-state", "*.pi-01.web"),
        ("device-info", "info.*"),
        ("device-info", "info.>"),
        ("device-heartbeat", "heartbeat.*"),
    ],
)
def test_filters_that_select_keys(bucket: str, pattern: str) -> None:
    assert validate_key_filter(bucket, pattern) == pattern


@pytest.mark.parametrize(
    ("bucket", "pattern", "reason"),
    [
        ("desired-state", "*.Shop_Web", "deployment 'Shop_Web' is not a deployment token"),
        ("desired-state", "PI.*", "device id 'PI' is not a DNS-1123 label"),
        ("desired-state", "a.b.c", "has 3 token(s); the keys have 2 (<device>.<deployment>)"),
        ("desired-state", "pi-01", "has 1 token(s); the keys have 2"),
        ("desired-state", "a.b.>", "has more tokens than the keys"),
        ("desired-state", ">.x", "'>' may only be the last token"),
        ("desired-state", "pi*.web", "device id 'pi*' is not a DNS-1123 label"),
        ("desired-state", "", "non-empty"),
        ("device-state", "info.*.web", "must start with 'state.'"),
        ("device-info", "*", "has 1 token(s); the keys have 2 (info.<device>)"),
        ("device-heartbeat", "info.pi-01", "must start with 'heartbeat.'"),
        ("secrets", "x", "unknown bucket 'secrets'"),
    ],
)
def test_filters_that_cannot_select_keys(bucket: str, pattern: str, reason: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        validate_key_filter(bucket, pattern)
    assert reason in str(info.value)
    assert isinstance(info.value, InvalidInput)


def test_a_key_of_another_bucket_is_refused() -> None:
    with pytest.raises(KeyFormatError, match=r"must start with 'info\.'"):
        parse_bucket_key("device-info", "heartbeat.pi-01")
    with pytest.raises(KeyFormatError, match="unknown bucket"):
        parse_bucket_key("KV_desired-state", "pi-01.web")
