"""Secrets and registry credentials in the score (contracts.score), and redaction."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from harmony_fleet.agent.plan import service_hash
from harmony_fleet.agent.runtime import Userns
from harmony_fleet.contracts import (
    REDACTED,
    PodmanScore,
    ScoreTemplate,
    image_registry,
    redact_score,
    seal,
    validation_summary,
)
from harmony_fleet.contracts.sealing import public_key_of
from harmony_fleet.planning import score_bytes
from harmony_fleet.purecrypto import X25519PrivateKey

from .strategies import PROPERTY

KEY = public_key_of(X25519PrivateKey.from_private_bytes(bytes(range(32))))

#: A score as written before secrets existed, and what it hashed to then (measured on the
#: commit before secrets were added). Agents compare these hashes with the labels of running
#: containers: if they moved, every service in the field would be recreated on upgrade.
OLD_PAYLOAD = (
    b'{"version": 0, "services": [{"name": "web", "image": "localhost/demo:1", '
    b'"command": ["httpd"], "args": ["-f"], "env": {"MODE": "prod"}, '
    b'"ports": [{"container_port": 80, "host_port": 8080}], '
    b'"volumes": [{"source": "/srv/web", "target": "/www", "read_only": true}], '
    b'"restart_policy": "always"}], "init_containers": [{"name": "migrate", '
    b'"image": "localhost/demo:1", "args": ["migrate"], "timeout": 300}]}'
)
OLD_SCORE_HASH = "a3c4b3ffcb6c8449"
OLD_SERVICE_HASH = "9d9d3ddc4961b3f3"
OLD_CANONICAL = (
    b'{"init_containers":[{"args":["migrate"],"command":null,"env":{},"image":"localhost/demo:1",'
    b'"name":"migrate","timeout":300,"volumes":[]}],"services":[{"args":["-f"],"command":["httpd"],'
    b'"env":{"MODE":"prod"},"image":"localhost/demo:1","name":"web","ports":[{"container_port":80,'
    b'"host_ip":null,"host_port":8080,"protocol":"tcp"}],"restart_policy":"always","volumes":'
    b'[{"read_only":true,"source":"/srv/web","target":"/www"}]}],"version":0}'
)


def sealed(name: str = "db-password", value: bytes = b"s3cret", deployment: str = "shop_web") -> str:
    return seal(KEY, deployment, name, value)


def with_secrets(**over: Any) -> dict[str, Any]:
    return {
        "services": [{"name": "web", "image": "registry.example.net:5000/shop/web:1",
                      "secrets": ["db-password"]}],
        "init_containers": [{"name": "prep", "image": "localhost/tools:1",
                             "secrets": ["db-password"]}],
        "registry_credentials": [{"registry": "registry.example.net:5000", "username": "fleet",
                                  "password_secret": "registry-password"}],
        "secrets": {"db-password": sealed(), "registry-password": sealed("registry-password")},
        **over,
    }


# ----------------------------------------------------------------------------- compatibility


def test_an_old_payload_keeps_its_bytes_and_hashes() -> None:
    score = PodmanScore.model_validate_json(OLD_PAYLOAD)
    assert score.spec_hash() == OLD_SCORE_HASH
    # with the user namespace podman used before the device policy existed (host)
    assert service_hash(score.services[0], score.init_containers, score.secrets,
                        userns=Userns.HOST) == OLD_SERVICE_HASH
    assert score_bytes(score) == OLD_CANONICAL
    # the new fields exist, empty, and are not written out
    assert score.secrets == {}
    assert score.registry_credentials == []
    assert score.services[0].secrets == []
    for key in ("secrets", "registry_credentials"):
        assert key not in json.loads(score.to_json_bytes())
    assert "secrets" not in json.loads(score.to_json_bytes())["services"][0]


def test_explicit_empty_new_fields_are_the_same_score() -> None:
    data = json.loads(OLD_PAYLOAD)
    data.update(secrets={}, registry_credentials=[])
    data["services"][0]["secrets"] = []
    data["init_containers"][0]["secrets"] = []
    explicit = PodmanScore.model_validate(data)
    assert explicit.spec_hash() == OLD_SCORE_HASH
    assert score_bytes(explicit) == OLD_CANONICAL


def test_a_score_with_secrets_round_trips_and_hashes_its_envelopes() -> None:
    score = PodmanScore.model_validate(with_secrets())
    again = PodmanScore.model_validate_json(score.to_json_bytes())
    assert again == score
    changed = PodmanScore.model_validate(with_secrets(secrets={
        "db-password": sealed(value=b"other"), "registry-password": sealed("registry-password")}))
    assert changed.spec_hash() != score.spec_hash()


# ----------------------------------------------------------------------------- references


def test_references_must_resolve() -> None:
    data = with_secrets()
    del data["secrets"]["db-password"]
    with pytest.raises(ValidationError) as info:
        PodmanScore.model_validate(data)
    assert validation_summary(info.value) == \
        "<root>: Value error, service web references secret 'db-password', which is not defined"
    data = with_secrets()
    del data["secrets"]["registry-password"]
    with pytest.raises(ValidationError, match=re.escape(
            "registry credential registry.example.net:5000 references secret 'registry-password'")):
        PodmanScore.model_validate(data)
    data = with_secrets(services=[{"name": "web", "image": "localhost/x:1"}])
    data["init_containers"][0]["secrets"] = ["nope"]
    with pytest.raises(ValidationError, match="init container prep references secret 'nope'"):
        PodmanScore.model_validate(data)


def test_unused_secrets_are_allowed() -> None:
    data = with_secrets()
    data["secrets"]["spare"] = sealed("spare")
    assert "spare" in PodmanScore.model_validate(data).secrets


def test_secret_references_lists_every_use_in_order() -> None:
    score = PodmanScore.model_validate(with_secrets())
    assert list(score.secret_references()) == [
        ("service web", "db-password"),
        ("init container prep", "db-password"),
        ("registry credential registry.example.net:5000", "registry-password"),
    ]


def test_a_template_references_without_values_and_refuses_them() -> None:
    data = with_secrets()
    values = data.pop("secrets")
    template = ScoreTemplate.model_validate(data)
    template.check_references(values)
    with pytest.raises(ValueError, match="service web references secret 'db-password'"):
        template.check_references({"registry-password"})
    with pytest.raises(ValidationError) as info:
        ScoreTemplate.model_validate({**data, "secrets": values})
    assert [e["loc"] for e in info.value.errors()] == [("secrets",)]


def test_template_of_a_sealed_score_drops_the_values() -> None:
    score = PodmanScore.model_validate(with_secrets())
    template = score.template()
    assert type(template) is ScoreTemplate
    assert "secrets" not in json.loads(template.to_json_bytes())
    assert template.services == score.services


# ----------------------------------------------------------------------------- field rules


@pytest.mark.parametrize("name", ["a", "db-password", "DB_PASSWORD", "tls-key2", "x" * 32])
def test_valid_secret_names(name: str) -> None:
    data = with_secrets(services=[{"name": "web", "image": "i", "secrets": [name]}],
                        init_containers=[], registry_credentials=[],
                        secrets={name: sealed(name)})
    assert PodmanScore.model_validate(data).services[0].secrets == [name]


@pytest.mark.parametrize("name", ["", "-a", "a-", "tls.key", "a/b", "x" * 33, "a b", "..", "é"])
def test_invalid_secret_names(name: str) -> None:
    with pytest.raises(ValidationError):
        PodmanScore.model_validate(with_secrets(services=[{"name": "web", "image": "i",
                                                          "secrets": [name]}]))
    with pytest.raises(ValidationError):
        PodmanScore.model_validate(with_secrets(secrets={name: sealed()}))


def test_a_container_lists_a_secret_once() -> None:
    with pytest.raises(ValidationError, match="secret 'db-password' is listed more than once"):
        PodmanScore.model_validate(with_secrets(services=[
            {"name": "web", "image": "i", "secrets": ["db-password", "db-password"]}]))


@pytest.mark.parametrize("value", ["plain text", "v1:", "v1:AAAA", "v9:" + "A" * 70, "v1:abc="])
def test_secret_values_must_be_envelopes_and_errors_do_not_echo_them(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        PodmanScore.model_validate(with_secrets(secrets={
            "db-password": value, "registry-password": sealed("registry-password")}))
    summary = validation_summary(info.value)
    assert summary.startswith("secrets.db-password:")
    if len(value) > 4:
        assert value[3:] not in summary.split(":", 1)[1]


def test_a_newer_envelope_version_is_accepted_by_shape_only_where_it_parses() -> None:
    # v2 is not understood by this contract version: it fails validation with a clear reason
    with pytest.raises(ValidationError, match="sealed with version v2"):
        PodmanScore.model_validate(with_secrets(secrets={
            "db-password": "v2:" + sealed()[3:], "registry-password": sealed("registry-password")}))


@pytest.mark.parametrize("registry", ["registry.example.net", "127.0.0.1:5000", "localhost:5000",
                                      "reg-1.example.net:443"])
def test_valid_registries(registry: str) -> None:
    data = with_secrets()
    data["registry_credentials"][0]["registry"] = registry
    assert PodmanScore.model_validate(data).registry_credentials[0].registry == registry


@pytest.mark.parametrize("registry", ["", "https://registry.example.net", "reg/path", "reg:",
                                      "reg:123456", "-reg", "reg.example.net/"])
def test_invalid_registries(registry: str) -> None:
    data = with_secrets()
    data["registry_credentials"][0]["registry"] = registry
    with pytest.raises(ValidationError):
        PodmanScore.model_validate(data)


def test_one_credential_per_registry() -> None:
    data = with_secrets()
    data["registry_credentials"].append(copy.deepcopy(data["registry_credentials"][0]))
    with pytest.raises(ValidationError, match="has more than one credential"):
        PodmanScore.model_validate(data)


def test_credential_fields_are_strict() -> None:
    data = with_secrets()
    data["registry_credentials"][0]["password"] = "plaintext"
    with pytest.raises(ValidationError) as info:
        PodmanScore.model_validate(data)
    assert [e["loc"] for e in info.value.errors()] == [("registry_credentials", 0, "password")]


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("127.0.0.1:5000/fleet/busybox:1", "127.0.0.1:5000"),
        ("registry.example.net/shop/web:1.4", "registry.example.net"),
        ("localhost/fleet-busybox:latest", "localhost"),
        ("localhost:5000/x", "localhost:5000"),
        ("docker.io/library/alpine", "docker.io"),
        ("library/alpine", None),
        ("alpine:3", None),
        ("alpine@sha256:abc", None),
    ],
)
def test_image_registry(image: str, registry: str | None) -> None:
    assert image_registry(image) == registry


def test_credential_for_an_image() -> None:
    score = PodmanScore.model_validate(with_secrets())
    cred = score.credential_for("registry.example.net:5000/shop/web:1")
    assert cred is not None
    assert cred.username == "fleet"
    assert score.credential_for("registry.example.net/shop/web:1") is None
    assert score.credential_for("web:1") is None


# ----------------------------------------------------------------------------- redaction


def test_redaction_replaces_every_sealed_value() -> None:
    score = PodmanScore.model_validate(with_secrets())
    shown = redact_score(score)
    assert shown["secrets"] == {"db-password": REDACTED, "registry-password": REDACTED}
    assert shown["services"][0]["secrets"] == ["db-password"]  # the names stay visible
    assert score.secrets["db-password"].startswith("v1:")  # the model is untouched
    text = json.dumps(shown)
    for envelope in score.secrets.values():
        assert envelope not in text
        assert envelope[3:15] not in text


def test_redaction_of_raw_values() -> None:
    raw = with_secrets()
    before = copy.deepcopy(raw)
    assert redact_score(raw)["secrets"] == {"db-password": REDACTED, "registry-password": REDACTED}
    assert raw == before  # not mutated
    assert redact_score({"secrets": "v1:garbage"})["secrets"] == REDACTED
    assert redact_score({"secrets": ["v1:a", "v1:b"]})["secrets"] == REDACTED
    assert redact_score({"services": []}) == {"services": []}
    assert "secrets" not in redact_score(PodmanScore.model_validate_json(OLD_PAYLOAD))


@PROPERTY
@given(values=st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9]{0,8}\Z", fullmatch=True),
                              st.binary(min_size=1, max_size=64), min_size=1, max_size=5))
def test_redaction_never_shows_a_sealed_value(values: dict[str, bytes]) -> None:
    secrets = {name: seal(KEY, "ns_app", name, value) for name, value in values.items()}
    score = PodmanScore.model_validate({
        "services": [{"name": "web", "image": "i", "secrets": sorted(values)}],
        "secrets": secrets,
    })
    text = json.dumps(redact_score(score))
    assert all(envelope not in text for envelope in secrets.values())
    assert set(redact_score(score)["secrets"]) == set(values)
