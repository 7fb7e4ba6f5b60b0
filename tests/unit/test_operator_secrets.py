"""The operator's pure side of secrets: per-device sealing in the planner, aggregation with
per-device hashes and devices that cannot be sealed to."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from harmony_fleet.contracts import (
    DeploymentState,
    Phase,
    PodmanScore,
    ScoreTemplate,
    open_sealed,
)
from harmony_fleet.contracts.crd import DeploymentSpec, LabelSelector
from harmony_fleet.contracts.sealing import public_key_of
from harmony_fleet.operator.aggregate import aggregate, deployment_status
from harmony_fleet.operator.planner import (
    NO_SEALING_KEY,
    DeploymentView,
    device_values,
    diff_desired_state,
    plan_desired_state,
    unsealable_devices,
)
from harmony_fleet.purecrypto import X25519PrivateKey

PRIVATE = {d: X25519PrivateKey.from_private_bytes(bytes([i + 7] * 32))
           for i, d in enumerate(["pi-a", "pi-b"])}
KEYS: dict[str, str | None] = {**{d: public_key_of(k) for d, k in PRIVATE.items()}, "pi-old": None}
LABELS = {"pi-a": {"site": "x"}, "pi-b": {"site": "x"}, "pi-old": {"site": "x"}}
TEMPLATE = ScoreTemplate.model_validate(
    {"services": [{"name": "web", "image": "localhost/web:1", "secrets": ["db"]}]})
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def view(secrets: dict[str, bytes] | None = None,
         template: ScoreTemplate | None = TEMPLATE) -> DeploymentView:
    return DeploymentView("shop_web", LabelSelector(match_labels={"site": "x"}), template,
                          secrets={"db": b"pw"} if secrets is None else secrets)


def test_the_plan_seals_per_device_and_skips_devices_without_a_key() -> None:
    plan, matched, managed = plan_desired_state([view()], LABELS, KEYS)
    assert matched == {"shop_web": ["pi-a", "pi-b", "pi-old"]}
    assert managed == {"shop_web"}
    assert sorted(plan) == ["pi-a.shop_web", "pi-b.shop_web"]
    for device, key in PRIVATE.items():
        score = PodmanScore.model_validate_json(plan[f"{device}.shop_web"])
        assert open_sealed(key, "shop_web", "db", score.secrets["db"]) == b"pw"
    assert unsealable_devices(view(), matched["shop_web"], KEYS) == ["pi-old"]


def test_replanning_gives_the_same_bytes_so_the_diff_is_empty() -> None:
    plan, _, managed = plan_desired_state([view()], LABELS, KEYS)
    again, _, _ = plan_desired_state([view()], LABELS, dict(KEYS))
    assert again == plan
    assert diff_desired_state(again, plan, managed).empty


def test_a_new_device_key_reseals_for_that_device_only() -> None:
    plan, _, managed = plan_desired_state([view()], LABELS, KEYS)
    rekeyed = {**KEYS, "pi-b": public_key_of(X25519PrivateKey.from_private_bytes(bytes([99] * 32)))}
    again, _, _ = plan_desired_state([view()], LABELS, rekeyed)
    assert list(diff_desired_state(again, plan, managed).put) == ["pi-b.shop_web"]


def test_a_device_that_loses_its_key_loses_the_deployment() -> None:
    plan, _, managed = plan_desired_state([view()], LABELS, KEYS)
    again, _, _ = plan_desired_state([view()], LABELS, {**KEYS, "pi-a": None})
    assert diff_desired_state(again, plan, managed).delete == ["pi-a.shop_web"]


def test_without_secrets_no_keys_are_needed() -> None:
    plain = ScoreTemplate.model_validate({"services": [{"name": "web", "image": "i"}]})
    plan, _, _ = plan_desired_state([view({}, plain)], LABELS, {})
    assert len(plan) == 3
    assert len(set(plan.values())) == 1
    assert unsealable_devices(view({}, plain), list(LABELS), {}) == []
    # the old two-argument form still plans scores without secrets
    assert plan_desired_state([view({}, plain)], LABELS)[0] == plan


def test_unresolved_references_are_not_planned_nor_managed() -> None:
    plan, matched, managed = plan_desired_state([view({})], LABELS, KEYS)
    assert (plan, matched, managed) == ({}, {}, set())
    assert device_values(view(template=None), ["pi-a"], KEYS) == {}


def test_plaintext_is_not_in_a_views_repr() -> None:
    assert "pw" not in repr(view({"db": b"pw-very-secret"})).replace("pi-", "")


def test_spec_secrets_must_cover_the_score_references() -> None:
    spec = {"targetSelector": {}, "score": TEMPLATE.model_dump(mode="json"),
            "secrets": [{"name": "db", "secretKeyRef": {"name": "creds", "key": "password"}}]}
    assert DeploymentSpec.model_validate(spec).secrets[0].secret_key_ref.name == "creds"
    with pytest.raises(ValidationError, match="references secret 'db', which is not defined"):
        DeploymentSpec.model_validate({**spec, "secrets": []})
    with pytest.raises(ValidationError, match="defined more than once"):
        DeploymentSpec.model_validate({**spec, "secrets": spec["secrets"] * 2})
    with pytest.raises(ValidationError):
        DeploymentSpec.model_validate({**spec, "secrets": [
            {"name": "db", "secretKeyRef": {"name": "Not_A_Name", "key": "password"}}]})
    assert "secrets" not in DeploymentSpec.model_validate(
        {**spec, "score": {"services": [{"name": "w", "image": "i"}]}, "secrets": []}
    ).model_dump(by_alias=True)


# ----------------------------------------------------------------------------- aggregation


def state(device: str, phase: Phase, spec_hash: str, message: str = "") -> DeploymentState:
    return DeploymentState(device_id=device, deployment="shop_web", phase=phase, message=message,
                           spec_hash=spec_hash, since=T0, updated_at=T0)


def test_each_device_is_judged_by_its_own_hash() -> None:
    states = {"pi-a": state("pi-a", Phase.RUNNING, "aaaa"),
              "pi-b": state("pi-b", Phase.RUNNING, "aaaa")}  # pi-b runs pi-a's hash: stale
    result = aggregate(["pi-a", "pi-b"], states, {"pi-a": "aaaa", "pi-b": "bbbb"})
    assert (result.succeeded, result.failed, result.pending) == (1, 0, 1)


def test_blocked_devices_count_as_failed_with_their_reason() -> None:
    states = {"pi-a": state("pi-a", Phase.RUNNING, "aaaa")}
    result = aggregate(["pi-a", "pi-old"], states, {"pi-a": "aaaa"},
                       {"pi-old": NO_SEALING_KEY})
    assert (result.succeeded, result.failed, result.pending) == (1, 1, 0)
    assert result.last_error == f"pi-old: {NO_SEALING_KEY}"
    # a device's own failure is the newer news
    states["pi-a"] = state("pi-a", Phase.FAILED, "aaaa", "boom")
    assert aggregate(["pi-a", "pi-old"], states, {"pi-a": "aaaa"},
                     {"pi-old": NO_SEALING_KEY}).last_error == "pi-a: boom"


def test_secret_errors_have_their_own_reason() -> None:
    status = deployment_status(generation=1, error="secret db: Kubernetes Secret shop/x does "
                               "not exist", agg=None, previous=[], now=T0,
                               error_reason="SecretUnavailable")
    assert [(c.type, c.status, c.reason) for c in status.conditions] == [
        ("Valid", "False", "SecretUnavailable"), ("Ready", "False", "SecretUnavailable")]


def test_the_example_is_a_valid_deployment() -> None:
    from pathlib import Path

    import yaml

    from harmony_fleet.contracts.crd import Deployment

    doc = yaml.safe_load((Path(__file__).parents[2] / "examples/deployment-secrets.yaml").read_text())
    assert doc["kind"] == "List"
    secret, resource = doc["items"]
    assert secret["kind"] == "Secret"
    parsed = Deployment.model_validate(resource)
    refs = {s.name: s.secret_key_ref for s in parsed.spec.secrets}
    assert all(ref.name == secret["metadata"]["name"] and ref.key in secret["stringData"]
               for ref in refs.values())
    assert set(refs) == {name for _, name in parsed.spec.score.secret_references()}
