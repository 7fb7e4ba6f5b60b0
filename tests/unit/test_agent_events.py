"""podman's event lines (agent.runtime.parse_event) and which deployment they touch
(agent.events.deployment_touched). The samples are lines podman 4.3 printed on this machine."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.agent.events import STATE_CHANGES, deployment_touched
from harmony_fleet.agent.runtime import (
    LABEL_DEPLOYMENT,
    LABEL_DEVICE,
    ContainerEvent,
    parse_event,
)

from .strategies import PROPERTY, json_values

DIED = (b'{"ContainerExitCode":137,"ID":"a5903005b862","Image":"localhost/fleet-busybox:latest",'
        b'"Name":"pi-1.ns_web.web","Status":"died","Time":"2026-12-02T00:43:58.224835157Z",'
        b'"Type":"container","Attributes":{"io.nationtech.fleet.device":"pi-1",'
        b'"io.nationtech.fleet.deployment":"ns_web"}}\n')


def event(status: str, labels: dict[str, str] | None = None) -> ContainerEvent:
    return ContainerEvent("a590", "pi-1.ns_web.web", status,
                          {LABEL_DEVICE: "pi-1", LABEL_DEPLOYMENT: "ns_web"}
                          if labels is None else labels)


def test_a_podman_43_line() -> None:
    assert parse_event(DIED) == ContainerEvent(
        "a5903005b862", "pi-1.ns_web.web", "died",
        {LABEL_DEVICE: "pi-1", LABEL_DEPLOYMENT: "ns_web"})


@pytest.mark.parametrize("line", [
    b"", b"\n", b"not json", b"[]", b"null", b'"died"',
    b'{"Type":"image","ID":"f81d","Status":"pull","Name":"localhost/x:1"}',  # not a container
    b'{"Type":"container","Status":"died"}',  # no id
    b'{"Type":"container","ID":"","Status":"died"}',
    b'{"Type":"container","ID":"a590"}',  # no status
    b'{"Type":"container","ID":7,"Status":"died"}',
])
def test_lines_that_are_no_container_event(line: bytes) -> None:
    assert parse_event(line) is None


def test_missing_or_odd_attributes_mean_no_labels() -> None:
    line = b'{"Type":"container","ID":"a590","Status":"Start","Attributes":[1]}'
    assert parse_event(line) == ContainerEvent("a590", "", "start", {})


@PROPERTY
@given(doc=json_values)
def test_never_raises(doc: object) -> None:
    parsed = parse_event(json.dumps(doc).encode())
    assert parsed is None or isinstance(parsed, ContainerEvent)


@PROPERTY
@given(raw=st.binary(max_size=200))
def test_never_raises_on_bytes(raw: bytes) -> None:
    parse_event(raw)


@pytest.mark.parametrize("status", sorted(STATE_CHANGES))
def test_state_changes_touch_their_deployment(status: str) -> None:
    assert deployment_touched(event(status)) == "ns_web"


@pytest.mark.parametrize("status", ["exec", "exec_died", "attach", "mount", "unmount", "sync",
                                    "health_status", "kill", "export", "commit", "copy"])
def test_events_that_change_nothing_podman_lists_touch_nothing(status: str) -> None:
    assert deployment_touched(event(status)) is None


def test_a_container_without_a_deployment_label_touches_nothing() -> None:
    assert deployment_touched(event("died", {LABEL_DEVICE: "pi-1"})) is None
    assert deployment_touched(event("died", {LABEL_DEVICE: "pi-1", LABEL_DEPLOYMENT: ""})) is None
