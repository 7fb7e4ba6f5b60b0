"""The fleet_device role speaks the wire contract's names, and documents every variable it has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from harmony_fleet.contracts.identity import DEVICE_ID_METADATA_KEY, DEVICE_ROLE
from harmony_fleet.contracts.ids import DNS1123_LABEL_MAX, DNS1123_LABEL_PATTERN, validate_device_id
from harmony_fleet.errors import InvalidInput

ROLE = Path(__file__).resolve().parents[2] / "roles" / "fleet_device"
ROLE_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
SPEC = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def test_role_names_are_the_contracts() -> None:
    assert ROLE_VARS["__fleet_device_id_pattern"] == DNS1123_LABEL_PATTERN
    assert ROLE_VARS["__fleet_device_id_max"] == DNS1123_LABEL_MAX
    assert ROLE_VARS["__fleet_device_grant_role"] == DEVICE_ROLE
    assert ROLE_VARS["__fleet_device_metadata_key"] == DEVICE_ID_METADATA_KEY


@pytest.mark.parametrize("device_id", ["pi-01", "a", "Pi_01", "-pi", "pi-", "x" * 64, "pi.01", ""])
def test_the_roles_id_check_agrees_with_the_contract(device_id: str) -> None:
    role_accepts = bool(re.search(ROLE_VARS["__fleet_device_id_pattern"], device_id)) \
        and len(device_id) <= ROLE_VARS["__fleet_device_id_max"]
    try:
        validate_device_id(device_id)
        contract_accepts = True
    except (InvalidInput, ValueError):
        contract_accepts = False
    assert role_accepts == contract_accepts


def test_every_default_is_documented_and_prefixed() -> None:
    assert set(DEFAULTS) <= set(SPEC["options"])
    assert all(name.startswith("fleet_device_") for name in SPEC["options"])
    assert all(name.startswith("fleet_device_") for name in DEFAULTS)
    secret = {name for name, spec in SPEC["options"].items() if spec.get("no_log")}
    assert secret == {"fleet_device_issuer_admin_token", "fleet_device_nats_password"}
