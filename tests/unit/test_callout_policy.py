"""Who gets which permissions (harmony_fleet.callout.service.user_permissions, pure)."""

from __future__ import annotations

import pytest
from hypothesis import given

from harmony_fleet.callout.oidc import Identity
from harmony_fleet.callout.permissions import admin_permissions, device_permissions
from harmony_fleet.callout.service import (
    AUTH_SUBJECT,
    QUEUE_GROUP,
    REQUEST_AUDIENCE,
    CalloutPolicy,
    Denied,
    user_permissions,
)

from .strategies import PROPERTY, device_ids

POLICY = CalloutPolicy()


def ident(*roles: str, device: str | None = None, name: str = "machine-1") -> Identity:
    return Identity(subject="sub-1", device_id=device, roles=frozenset(roles),
                    expires_at=1_777_003_600, name=name)


def test_default_policy() -> None:
    assert POLICY.target_account == "FLEET"
    assert POLICY.device_role == "fleet-device"
    assert POLICY.admin_roles == {"fleet-admin", "fleet-operator"}
    assert POLICY.max_user_jwt_s == 3600


def test_protocol_constants() -> None:
    assert AUTH_SUBJECT == "$SYS.REQ.USER.AUTH"
    assert REQUEST_AUDIENCE == "nats-authorization-request"
    assert QUEUE_GROUP == "fleet-callout"


@pytest.mark.parametrize("role", ["fleet-admin", "fleet-operator"])
def test_admin_roles(role: str) -> None:
    assert user_permissions(ident(role, name="ops"), POLICY) == ("admin:ops",
                                                                  admin_permissions())


@pytest.mark.parametrize("device", [None, "pi-1"])
def test_admin_role_wins_over_the_device_role(device: str | None) -> None:
    name, perms = user_permissions(ident("fleet-device", "fleet-admin", device=device,
                                         name="ops"), POLICY)
    assert name == "admin:ops"
    assert perms == admin_permissions()


def test_device_role_with_device_id() -> None:
    name, perms = user_permissions(ident("fleet-device", device="pi-1", name="machine"), POLICY)
    assert name == "pi-1"  # the device id, not the token's user name
    assert perms == device_permissions("pi-1")


def test_device_role_with_unrelated_roles() -> None:
    name, perms = user_permissions(ident("fleet-device", "viewer", device="pi-1"), POLICY)
    assert (name, perms) == ("pi-1", device_permissions("pi-1"))


def test_device_role_without_device_id() -> None:
    with pytest.raises(Denied) as info:
        user_permissions(ident("fleet-device"), POLICY)
    assert info.value.reason == "no-device-id"
    assert "sub-1" in str(info.value)


@pytest.mark.parametrize("roles", [(), ("viewer",), ("Fleet-Admin",), ("fleet-devices",),
                                   ("fleet",), ("admin",)])
@pytest.mark.parametrize("device", [None, "pi-1"])
def test_no_fleet_role(roles: tuple[str, ...], device: str | None) -> None:
    # a device id alone (metadata without the role grant) is not enough
    with pytest.raises(Denied) as info:
        user_permissions(ident(*roles, device=device), POLICY)
    assert info.value.reason == "no-fleet-role"


def test_denied_carries_its_reason() -> None:
    exc = Denied("no-token", "the client presented no bearer token")
    assert exc.reason == "no-token"
    assert str(exc) == "no-token: the client presented no bearer token"


def test_custom_policy_roles() -> None:
    policy = CalloutPolicy(device_role="edge", admin_roles=frozenset({"boss"}))
    assert user_permissions(ident("boss", name="b"), policy)[0] == "admin:b"
    assert user_permissions(ident("edge", device="pi-1"), policy)[0] == "pi-1"
    # the default role names mean nothing under this policy
    with pytest.raises(Denied) as info:
        user_permissions(ident("fleet-admin", "fleet-device", device="pi-1"), policy)
    assert info.value.reason == "no-fleet-role"


def test_policy_without_admin_roles() -> None:
    policy = CalloutPolicy(admin_roles=frozenset())
    name, _ = user_permissions(ident("fleet-admin", "fleet-device", device="pi-1"), policy)
    assert name == "pi-1"


@PROPERTY
@given(device=device_ids)
def test_every_device_gets_exactly_its_own_permissions(device: str) -> None:
    assert user_permissions(ident("fleet-device", device=device), POLICY) == (
        device, device_permissions(device))
