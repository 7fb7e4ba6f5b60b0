"""Control-plane sealing (planning.seal_for_devices, seal_score, shown_value) and per-device
values in plan_desired_keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.contracts import REDACTED, PodmanScore, ScoreTemplate, open_sealed
from harmony_fleet.contracts.score import REDACTED_CHANGED
from harmony_fleet.contracts.sealing import public_key_of
from harmony_fleet.planning import (
    MissingSealingKeys,
    SealingCache,
    plan_desired_keys,
    score_bytes,
    seal_for_devices,
    seal_score,
    shown_value,
)
from harmony_fleet.purecrypto import X25519PrivateKey

from .strategies import PROPERTY

PRIVATE = {f"pi-{i}": X25519PrivateKey.from_private_bytes(bytes([i + 1] * 32)) for i in range(3)}
KEYS: dict[str, str | None] = {d: public_key_of(k) for d, k in PRIVATE.items()}
TOKEN = "shop_web"


def template(**over: Any) -> ScoreTemplate:
    return ScoreTemplate.model_validate({
        "services": [{"name": "web", "image": "registry.example.net/web:1", "secrets": ["db"]}],
        "registry_credentials": [{"registry": "registry.example.net", "username": "fleet",
                                  "password_secret": "reg"}],
        **over,
    })


SECRETS = {"db": b"db-password", "reg": b"registry-password"}


def test_each_device_gets_its_own_sealing_that_only_it_opens() -> None:
    values = seal_for_devices(template(), TOKEN, SECRETS, KEYS, ["pi-1", "pi-0"])
    assert list(values) == ["pi-0", "pi-1"]
    assert values["pi-0"] != values["pi-1"]
    for device, raw in values.items():
        score = PodmanScore.model_validate_json(raw)
        assert set(score.secrets) == {"db", "reg"}
        assert open_sealed(PRIVATE[device], TOKEN, "db", score.secrets["db"]) == b"db-password"
        other = PRIVATE["pi-2"]
        with pytest.raises(ValueError, match="cannot be opened"):
            open_sealed(other, TOKEN, "db", score.secrets["db"])
        assert b"db-password" not in raw
        assert score.template() == template()


def test_sealing_again_gives_the_same_bytes_so_nothing_is_rewritten() -> None:
    first = seal_for_devices(template(), TOKEN, SECRETS, KEYS, list(KEYS))
    again = seal_for_devices(template(), TOKEN, dict(SECRETS), dict(KEYS), list(KEYS))
    assert again == first
    plan = plan_desired_keys(list(KEYS), again, first)
    assert not plan.changed
    assert plan.unchanged == sorted(KEYS)


def test_a_changed_secret_updates_every_device() -> None:
    first = seal_for_devices(template(), TOKEN, SECRETS, KEYS, list(KEYS))
    changed = seal_for_devices(template(), TOKEN, {**SECRETS, "db": b"new"}, KEYS, list(KEYS))
    plan = plan_desired_keys(list(KEYS), changed, first)
    assert plan.updated == sorted(KEYS)
    assert plan.put == changed


def test_per_device_values_in_a_plan() -> None:
    values = {"pi-0": b'{"a":1}', "pi-1": b'{"a":2}'}
    plan = plan_desired_keys(["pi-0", "pi-1"], values, {"pi-0": b'{"a": 1}', "gone": b"{}"})
    assert plan.unchanged == ["pi-0"]
    assert plan.created == ["pi-1"]
    assert plan.put == {"pi-1": b'{"a":2}'}
    assert plan.delete == ["gone"]
    assert plan_desired_keys(["pi-0"], None, {"pi-0": b"{}"}).delete == ["pi-0"]
    with pytest.raises(KeyError):
        plan_desired_keys(["pi-0", "pi-9"], values, {})  # every target needs a value


def test_devices_without_a_key_are_all_named_and_nothing_is_sealed() -> None:
    keys = {**KEYS, "pi-1": None}
    with pytest.raises(MissingSealingKeys) as info:
        seal_for_devices(template(), TOKEN, SECRETS, keys, ["pi-0", "pi-1", "pi-9"])
    assert info.value.devices == ["pi-1", "pi-9"]
    assert str(info.value).startswith("cannot seal secrets for pi-1, pi-9: no sealing key")


def test_without_secrets_no_key_is_needed_and_every_device_gets_the_same_bytes() -> None:
    plain = ScoreTemplate.model_validate({"services": [{"name": "web", "image": "i"}]})
    values = seal_for_devices(plain, TOKEN, {}, {}, ["b", "a"])
    assert values == {"a": score_bytes(plain), "b": score_bytes(plain)}
    assert b"secrets" not in values["a"]


def test_a_reference_without_a_value_is_refused() -> None:
    with pytest.raises(ValueError, match="service web references secret 'db'"):
        seal_for_devices(template(), TOKEN, {"reg": b"x"}, KEYS, ["pi-0"])
    with pytest.raises(ValueError, match="references secret 'db'"):
        seal_for_devices(template(), TOKEN, {}, KEYS, ["pi-0"])
    with pytest.raises(ValueError, match=r"registry credential registry\.example\.net"):
        seal_score(template(), TOKEN, {"db": b"x"}, KEYS["pi-0"] or "")


# ----------------------------------------------------------------------------- shown values


def test_shown_value_redacts_and_marks_what_changed() -> None:
    before = seal_for_devices(template(), TOKEN, SECRETS, KEYS, ["pi-0"])["pi-0"]
    after = seal_for_devices(template(), TOKEN, {**SECRETS, "db": b"new"}, KEYS,
                             ["pi-0"])["pi-0"]
    assert shown_value(before)["secrets"] == {"db": REDACTED, "reg": REDACTED}
    shown = shown_value(after, before)
    assert shown["secrets"] == {"db": REDACTED_CHANGED, "reg": REDACTED}
    assert shown["services"][0]["image"] == "registry.example.net/web:1"  # the score itself
    text = json.dumps([shown, shown_value(before)])
    for raw in (before, after):
        for envelope in PodmanScore.model_validate_json(raw).secrets.values():
            assert envelope not in text
    # a device that had nothing before: nothing is "changed", all is new
    assert shown_value(after, None)["secrets"] == {"db": REDACTED, "reg": REDACTED}


def test_shown_value_of_odd_values() -> None:
    assert shown_value(None) is None
    assert shown_value(b"\xff not json") == "(not valid JSON)"
    assert shown_value(b"[1, 2]") == "(not a JSON object)"
    assert shown_value(b'{"secrets": "v1:x"}') == {"secrets": REDACTED}
    assert shown_value(b'{"secrets": {"a": "v1:x"}}', b"garbage") == \
        {"secrets": {"a": REDACTED_CHANGED}}


@PROPERTY
@given(values=st.dictionaries(st.sampled_from(["db", "reg", "extra"]),
                              st.binary(min_size=1, max_size=40), min_size=2))
def test_shown_values_never_contain_an_envelope(values: dict[str, bytes]) -> None:
    if not {"db", "reg"} <= set(values):
        return
    raw = seal_for_devices(template(), TOKEN, values, KEYS, ["pi-2"])["pi-2"]
    text = json.dumps(shown_value(raw))
    assert all(env not in text
               for env in PodmanScore.model_validate_json(raw).secrets.values())


# ----------------------------------------------------------------------------- the cache


def test_the_cache_gives_the_same_bytes_and_holds_no_plaintext() -> None:
    cache = SealingCache()
    plain = seal_for_devices(template(), TOKEN, SECRETS, KEYS, list(KEYS))
    cached = seal_for_devices(template(), TOKEN, SECRETS, KEYS, list(KEYS), cache=cache)
    assert cached == plain
    assert len(cache) == 2 * len(KEYS)
    again = seal_for_devices(template(), TOKEN, SECRETS, KEYS, list(KEYS), cache=cache)
    assert again == plain
    assert len(cache) == 2 * len(KEYS)  # nothing sealed twice
    assert all(value not in repr(cache._envelopes) for value in ("db-password", "registry-pass"))
    # a new value or a new key is a miss, not a stale hit
    changed = seal_for_devices(template(), TOKEN, {**SECRETS, "db": b"new"}, KEYS, list(KEYS),
                               cache=cache)
    assert changed == seal_for_devices(template(), TOKEN, {**SECRETS, "db": b"new"}, KEYS,
                                       list(KEYS))


def test_the_cache_is_bounded() -> None:
    cache = SealingCache(max_entries=2)
    for i in range(5):
        cache.seal(KEYS["pi-0"] or "", TOKEN, "db", str(i).encode())
    assert len(cache) == 2
