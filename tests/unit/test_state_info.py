"""Device reports: deployment state, device info, heartbeat (contracts.state, contracts.info)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from harmony_fleet.agent.reporter import fit_state
from harmony_fleet.contracts import (
    MAX_STATE_MESSAGE_BYTES,
    MAX_STATE_REPORT_BYTES,
    TERMINAL_PHASES,
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    Inventory,
    Labels,
    Phase,
    ServiceStatus,
    WireModel,
)
from harmony_fleet.contracts.info import validate_label_key, validate_label_value

from .strategies import PROPERTY, deployment_tokens, device_ids

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=42, microseconds=500_000)

INVENTORY: dict[str, Any] = {
    "hostname": "pi-kitchen",
    "arch": "aarch64",
    "os": "Debian GNU/Linux 12 (bookworm)",
    "kernel": "6.6.31+rpt-rpi-v8",
    "cpus": 4,
    "memory_bytes": 8 * 1024**3,
    "podman_version": "4.3.1",
}


def _state(**over: Any) -> dict[str, Any]:
    return {
        "device_id": "pi-1",
        "deployment": "default_web",
        "phase": "Running",
        "message": "2/2 services running",
        "spec_hash": "0123456789abcdef",
        "revision": 7,
        "since": "2026-05-01T12:00:00Z",
        "updated_at": "2026-05-01T12:00:42.500000Z",
        "services": [
            {
                "name": "web",
                "container": "fleet-default_web-web",
                "state": "running",
                "exit_code": None,
                "restart_count": 1,
                "spec_hash": "fedcba9876543210",
            }
        ],
        **over,
    }


def _info(**over: Any) -> dict[str, Any]:
    return {
        "device_id": "pi-1",
        "agent_version": "0.1.0",
        "labels": {"site": "kitchen", "fleet.nationtech.io/arch": "arm64", "tier": ""},
        "inventory": INVENTORY,
        "runtime_enabled": True,
        "started_at": "2026-05-01T12:00:00Z",
        "updated_at": "2026-05-01T12:00:42.500000Z",
        "sealing_key": SEALING_KEY,
        **over,
    }


#: An X25519 public key as the agent publishes it (base64url of 32 bytes).
SEALING_KEY = "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"


# ----------------------------------------------------------------------------- phases


def test_phase_values_are_the_design_ones_in_order() -> None:
    assert [p.value for p in Phase] == ["Pending", "Pulling", "Starting", "Running", "Failed", "Removed"]


def test_terminal_phases() -> None:
    assert frozenset({Phase.RUNNING, Phase.FAILED, Phase.REMOVED}) == TERMINAL_PHASES
    assert {Phase.PENDING, Phase.PULLING, Phase.STARTING}.isdisjoint(TERMINAL_PHASES)


# ----------------------------------------------------------------------------- DeploymentState


def test_deployment_state_parses_and_serialises_exactly() -> None:
    state = DeploymentState.model_validate_json(json.dumps(_state()))
    assert state.phase is Phase.RUNNING
    assert state.since == T0
    assert state.updated_at == T1
    assert state.services[0] == ServiceStatus(
        name="web",
        container="fleet-default_web-web",
        state="running",
        restart_count=1,
        spec_hash="fedcba9876543210",
    )
    assert json.loads(state.to_json_bytes()) == _state()
    assert DeploymentState.model_validate_json(state.to_json_bytes()) == state


def test_deployment_state_defaults() -> None:
    minimal = {
        "device_id": "pi-1",
        "deployment": "web",
        "phase": "Pending",
        "since": "2026-05-01T12:00:00Z",
        "updated_at": "2026-05-01T12:00:00Z",
    }
    state = DeploymentState.model_validate(minimal)
    assert (state.message, state.spec_hash, state.revision, state.services) == ("", None, None, [])
    assert json.loads(state.to_json_bytes()) == {
        **minimal,
        "message": "",
        "spec_hash": None,
        "revision": None,
        "services": [],
    }
    status = ServiceStatus(name="web", container="c", state="created")
    assert (status.exit_code, status.restart_count, status.spec_hash) == (None, 0, None)


@pytest.mark.parametrize("phase", [p.value for p in Phase])
def test_every_phase_round_trips(phase: str) -> None:
    state = DeploymentState.model_validate(_state(phase=phase))
    assert json.loads(state.to_json_bytes())["phase"] == phase


@pytest.mark.parametrize(
    ("over", "loc"),
    [
        ({"phase": "Crashed"}, ("phase",)),
        ({"phase": "running"}, ("phase",)),
        ({"phase": None}, ("phase",)),
        ({"device_id": "Pi_1"}, ("device_id",)),
        ({"device_id": ""}, ("device_id",)),
        ({"deployment": "default.web"}, ("deployment",)),
        ({"deployment": "a_b_c"}, ("deployment",)),
        ({"since": "yesterday"}, ("since",)),
        ({"updated_at": None}, ("updated_at",)),
        ({"revision": "seven"}, ("revision",)),
        ({"services": [{"name": "web"}]}, ("services", 0, "container")),
    ],
)
def test_deployment_state_validation(over: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        DeploymentState.model_validate(_state(**over))
    assert tuple(info.value.errors()[0]["loc"]) == loc


@pytest.mark.parametrize("missing", ["device_id", "deployment", "phase", "since", "updated_at"])
def test_deployment_state_required_fields(missing: str) -> None:
    data = _state()
    del data[missing]
    with pytest.raises(ValidationError) as info:
        DeploymentState.model_validate(data)
    assert [(tuple(e["loc"]), e["type"]) for e in info.value.errors()] == [((missing,), "missing")]


def test_extra_fields_are_ignored_for_forward_compatibility() -> None:
    newer = _state(rollout_wave=3, services=[{**_state()["services"][0], "health": "ok"}])
    state = DeploymentState.model_validate(newer)
    assert state == DeploymentState.model_validate(_state())
    assert "rollout_wave" not in json.loads(state.to_json_bytes())
    assert "health" not in json.loads(state.to_json_bytes())["services"][0]


def test_timestamps_keep_their_instant_in_utc() -> None:
    state = DeploymentState.model_validate(_state(since="2026-05-01T14:00:00+02:00"))
    assert state.since == T0
    assert state.since.utcoffset() == timedelta(0)  # normalised to UTC


def test_timestamps_without_a_zone_are_utc() -> None:
    state = DeploymentState.model_validate(_state(since="2026-05-01T12:00:00"))
    assert state.since == T0
    assert state.since.tzinfo is not None
    again = DeploymentState.model_validate_json(state.to_json_bytes())
    assert again.since == T0


def test_report_models_are_frozen_wire_models() -> None:
    for model in (DeploymentState, ServiceStatus, DeviceInfo, Inventory, Heartbeat):
        assert issubclass(model, WireModel)
    state = DeploymentState.model_validate(_state())
    with pytest.raises(ValidationError):
        state.phase = Phase.FAILED  # type: ignore[misc]


deployment_states = st.builds(
    DeploymentState,
    device_id=device_ids,
    deployment=deployment_tokens,
    phase=st.sampled_from(list(Phase)),
    message=st.text(max_size=50),
    spec_hash=st.none() | st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    revision=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    since=st.datetimes(timezones=st.just(UTC)),
    updated_at=st.datetimes(timezones=st.just(UTC)),
    services=st.lists(
        st.builds(
            ServiceStatus,
            name=st.text(max_size=10),
            container=st.text(max_size=10),
            state=st.sampled_from(["created", "running", "exited"]),
            exit_code=st.none() | st.integers(min_value=-1, max_value=255),
            restart_count=st.integers(min_value=0, max_value=1000),
        ),
        max_size=3,
    ),
)


@PROPERTY
@given(deployment_states)
def test_deployment_state_round_trip(state: DeploymentState) -> None:
    data = state.to_json_bytes()
    again = DeploymentState.model_validate_json(data)
    assert again == state
    assert again.to_json_bytes() == data


# ----------------------------------------------------------------------------- DeviceInfo, Heartbeat


def test_device_info_parses_and_serialises_exactly() -> None:
    info = DeviceInfo.model_validate(_info())
    assert info.inventory == Inventory(**INVENTORY)
    assert info.labels == {"site": "kitchen", "fleet.nationtech.io/arch": "arm64", "tier": ""}
    assert json.loads(info.to_json_bytes()) == _info()
    assert DeviceInfo.model_validate_json(info.to_json_bytes()) == info


def test_device_info_defaults_and_forward_compatibility() -> None:
    data = _info(inventory={**INVENTORY, "gpu": "none"}, future_field=[1, 2])
    del data["labels"]
    del data["runtime_enabled"]
    del data["sealing_key"]  # agents that predate secrets
    info = DeviceInfo.model_validate(data)
    assert info.labels == {}
    assert info.runtime_enabled is True
    assert info.sealing_key is None
    dumped = json.loads(info.to_json_bytes())
    assert "future_field" not in dumped
    assert "gpu" not in dumped["inventory"]
    inv = {**INVENTORY}
    del inv["podman_version"]
    assert Inventory.model_validate(inv).podman_version is None


@pytest.mark.parametrize(
    ("over", "loc"),
    [
        ({"device_id": "PI"}, ("device_id",)),
        ({"inventory": {**INVENTORY, "cpus": -1}}, ("inventory", "cpus")),
        ({"inventory": {**INVENTORY, "memory_bytes": -5}}, ("inventory", "memory_bytes")),
        ({"inventory": {k: v for k, v in INVENTORY.items() if k != "arch"}}, ("inventory", "arch")),
        ({"labels": {"bad key": "x"}}, ("labels",)),
        ({"labels": {"site": "bad value"}}, ("labels",)),
        ({"labels": {"site": 3}}, ("labels", "site")),
        ({"started_at": "not a time"}, ("started_at",)),
        ({"sealing_key": "not base64!"}, ("sealing_key",)),
        ({"sealing_key": SEALING_KEY[:-2]}, ("sealing_key",)),  # 31 bytes
        ({"sealing_key": SEALING_KEY + "AAAA"}, ("sealing_key",)),  # 35 bytes
        ({"sealing_key": SEALING_KEY + "="}, ("sealing_key",)),  # padding is not the format
    ],
)
def test_device_info_validation(over: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        DeviceInfo.model_validate(_info(**over))
    assert tuple(info.value.errors()[0]["loc"]) == loc


def test_heartbeat_round_trip_and_field_names() -> None:
    beat = Heartbeat(device_id="pi-1", timestamp=T1, uptime_s=42, agent_version="0.1.0")
    assert json.loads(beat.to_json_bytes()) == {
        "device_id": "pi-1",
        "timestamp": "2026-05-01T12:00:42.500000Z",
        "uptime_s": 42,
        "agent_version": "0.1.0",
        "instance_id": None,
    }
    assert Heartbeat.model_validate_json(beat.to_json_bytes()) == beat
    # heartbeats of agents that predate instance ids still parse
    old = b'{"device_id": "pi-1", "timestamp": "2026-05-01T12:00:42Z", "uptime_s": 1, ' \
          b'"agent_version": "0.1.0"}'
    assert Heartbeat.model_validate_json(old).instance_id is None
    assert Heartbeat.model_validate({**beat.model_dump(), "load": 0.5}) == beat


@pytest.mark.parametrize(
    ("over", "loc"),
    [({"uptime_s": -1}, "uptime_s"), ({"device_id": "a.b"}, "device_id"), ({"timestamp": None}, "timestamp")],
)
def test_heartbeat_validation(over: dict[str, Any], loc: str) -> None:
    data = {"device_id": "pi-1", "timestamp": "2026-05-01T12:00:00Z", "uptime_s": 1, "agent_version": "1"}
    with pytest.raises(ValidationError) as info:
        Heartbeat.model_validate({**data, **over})
    assert [e["loc"][0] for e in info.value.errors()] == [loc]


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "key",
    [
        "app",
        "A",
        "a" * 63,
        "app.kubernetes.io",
        "a_b.c-d",
        "example.com/app",
        "kubernetes.io/arch",
        "fleet.nationtech.io/site",
        "a/b",
        "sub-1.example.com/Name_1",
        ("p" * 63 + ".") * 3 + "p" * 61 + "/name",  # prefix of exactly 253
    ],
)
def test_valid_label_keys(key: str) -> None:
    assert validate_label_key(key) == key


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "name must be 1-63"),
        ("-app", "name must be 1-63"),
        ("app-", "name must be 1-63"),
        ("_app", "name must be 1-63"),
        ("app.", "name must be 1-63"),
        ("a" * 64, "name must be 1-63"),
        ("app name", "name must be 1-63"),
        ("app:x", "name must be 1-63"),
        ("example.com/", "name must be 1-63"),
        ("example.com/-x", "name must be 1-63"),
        ("/app", "prefix must be a DNS-1123 subdomain"),
        ("Example.com/app", "prefix must be a DNS-1123 subdomain"),
        ("exa_mple.com/app", "prefix must be a DNS-1123 subdomain"),
        ("example..com/app", "prefix must be a DNS-1123 subdomain"),
        ("-example.com/app", "prefix must be a DNS-1123 subdomain"),
        ("a/b/c", "prefix must be a DNS-1123 subdomain"),
        (("p" * 63 + ".") * 3 + "p" * 62 + "/name", "prefix must be a DNS-1123 subdomain"),
    ],
)
def test_invalid_label_keys(key: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"label key {key!r}")) as info:
        validate_label_key(key)
    assert fragment in str(info.value)


@pytest.mark.parametrize("value", ["", "v1", "kitchen", "a.b_c-d", "A", "a" * 63, "1.2.3"])
def test_valid_label_values(value: str) -> None:
    assert validate_label_value(value) == value


@pytest.mark.parametrize("value", ["-v", "v-", ".v", "v_", "a" * 64, "v v", "v/x", "v:1", "é"])
def test_invalid_label_values(value: str) -> None:
    with pytest.raises(ValueError, match="must be empty or 1-63 alphanumerics"):
        validate_label_value(value)


@pytest.mark.parametrize(
    "check",
    [
        lambda: validate_label_key("site\n"),
        lambda: validate_label_key("example.com\n/site"),
        lambda: validate_label_value("kitchen\n"),
    ],
    ids=["key-name", "key-prefix", "value"],
)
def test_labels_with_trailing_newline_are_rejected(check: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any rejection will do
        check()


def test_labels_type() -> None:
    adapter = TypeAdapter(Labels)
    assert adapter.validate_python({"a": "b", "example.com/c": ""}) == {"a": "b", "example.com/c": ""}
    with pytest.raises(ValidationError, match="label value 'x y'"):
        adapter.validate_python({"a": "x y"})
    with pytest.raises(ValidationError, match="label key 'a b'"):
        adapter.validate_python({"a b": "x"})


# ----------------------------------------------------------------------------- fit to the limit


def _state_with(message: str, services: int) -> DeploymentState:
    now = datetime(2026, 5, 1, tzinfo=UTC)
    return DeploymentState(
        device_id="pi-1", deployment="ns_app", phase=Phase.FAILED, message=message,
        since=now, updated_at=now,
        services=[ServiceStatus(name=f"service-{i:02d}-" + "x" * 40,
                                container=f"pi-1.ns_app.service-{i:02d}-" + "x" * 40,
                                state="exited", exit_code=1, spec_hash="0123456789abcdef")
                  for i in range(services)])


def test_a_small_state_is_sent_as_it_is() -> None:
    state = _state_with("3 service(s) running", 3)
    assert fit_state(state) == state


@pytest.mark.parametrize("message", ["x" * 100_000, "é" * 50_000, "🙂" * 30_000])
def test_a_long_message_is_cut_on_a_character_boundary(message: str) -> None:
    fitted = fit_state(_state_with(message, 1))
    assert len(fitted.message.encode()) <= MAX_STATE_MESSAGE_BYTES
    assert fitted.message.endswith("[...]")
    assert message.startswith(fitted.message.removesuffix(" [...]"))
    assert len(fitted.to_json_bytes()) <= MAX_STATE_REPORT_BYTES


@PROPERTY
@given(message=st.text(max_size=20_000), services=st.integers(0, 64))
def test_every_state_fits_the_writers_limit(message: str, services: int) -> None:
    state = _state_with(message, services)
    fitted = fit_state(state)
    assert len(fitted.to_json_bytes()) <= MAX_STATE_REPORT_BYTES
    assert fitted.services == state.services[:len(fitted.services)]
    if len(fitted.services) < services:
        assert "left out of this report" in fitted.message
    assert (fitted.phase, fitted.spec_hash, fitted.revision) == (
        state.phase, state.spec_hash, state.revision)
