"""Desired-state values over the shared limit are refused before anything is written."""

from __future__ import annotations

import pytest

from harmony_fleet.contracts import MAX_DESIRED_STATE_BYTES, ScoreTemplate
from harmony_fleet.contracts.sealing import generate_private_key, public_key_of
from harmony_fleet.errors import InvalidInput
from harmony_fleet.planning import (
    ScoreTooLarge,
    check_score_size,
    check_value_size,
    score_bytes,
    seal_for_devices,
)


def template(env_bytes: int, secret: bool = False) -> ScoreTemplate:
    service: dict[str, object] = {"name": "web", "image": "localhost/x:1",
                                  "env": {"BIG": "x" * env_bytes}}
    if secret:
        service["secrets"] = ["db"]
    return ScoreTemplate.model_validate({"services": [service]})


def test_the_limit_is_the_buckets() -> None:
    assert check_value_size(b"x" * MAX_DESIRED_STATE_BYTES) == b"x" * MAX_DESIRED_STATE_BYTES
    with pytest.raises(ScoreTooLarge) as exc:
        check_value_size(b"x" * (MAX_DESIRED_STATE_BYTES + 1))
    assert str(exc.value) == (f"score is {MAX_DESIRED_STATE_BYTES + 1} bytes, the limit is "
                              f"{MAX_DESIRED_STATE_BYTES}")
    assert isinstance(exc.value, InvalidInput)  # what the modules report as error


def test_a_score_just_under_and_just_over() -> None:
    base = len(score_bytes(template(0)))
    fits = template(MAX_DESIRED_STATE_BYTES - base)
    check_score_size(fits, "ns_app", {})
    assert len(seal_for_devices(fits, "ns_app", {}, {}, ["pi-1"])["pi-1"]) \
        == MAX_DESIRED_STATE_BYTES
    with pytest.raises(ScoreTooLarge):
        check_score_size(template(MAX_DESIRED_STATE_BYTES - base + 1), "ns_app", {})
    with pytest.raises(ScoreTooLarge):
        seal_for_devices(template(MAX_DESIRED_STATE_BYTES), "ns_app", {}, {}, ["pi-1"])


def test_sealed_secrets_count_and_the_probe_predicts_every_device() -> None:
    """A sealed value is as long for every key: the size check without keys is exact."""
    secrets = {"db": b"s" * 3000}
    keys = {f"pi-{i}": public_key_of(generate_private_key()) for i in range(5)}
    values = seal_for_devices(template(1000, secret=True), "ns_app", secrets, keys, list(keys))
    assert len({len(v) for v in values.values()}) == 1
    plain = len(score_bytes(template(1000, secret=True)))
    assert len(next(iter(values.values()))) > plain + 3000  # the envelope is counted
    room = MAX_DESIRED_STATE_BYTES - len(next(iter(values.values())))
    check_score_size(template(1000 + room, secret=True), "ns_app", secrets)
    with pytest.raises(ScoreTooLarge, match="with its secrets sealed"):
        check_score_size(template(1000 + room + 1, secret=True), "ns_app", secrets)
