"""The agent's pure handling of secrets (agent.plan): names, mounts, hashes, decoding, cleanup."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given

from harmony_fleet.agent.plan import (
    decode_desired,
    deployment_secret_prefix,
    deployment_secrets,
    device_secret_prefix,
    leftover_secrets,
    plan_deployment,
    podman_secret_name,
    pull_failure,
    secret_labels,
    service_hash,
    stale_secrets,
    unopenable_secret,
)
from harmony_fleet.agent.runtime import (
    LABEL_DEPLOYMENT,
    LABEL_DEVICE,
    LABEL_MANAGED,
    LABEL_SECRET,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    ContainerInfo,
    RegistryAuth,
    SecretMount,
)
from harmony_fleet.contracts import PodmanScore, seal
from harmony_fleet.contracts.sealing import envelope_digest, public_key_of
from harmony_fleet.purecrypto import X25519PrivateKey

from .strategies import PROPERTY, deployment_tokens, device_ids

DEV = "pi-kitchen-01"
DEP = "shop_web"
MAX = 256 * 1024
KEY = X25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUB = public_key_of(KEY)


def score(values: dict[str, bytes] | None = None, deployment: str = DEP,
          **over: Any) -> dict[str, Any]:
    values = {"db": b"pw-1", "api": b"token-1"} if values is None else values
    return {
        "services": [{"name": "web", "image": "localhost/app:1", "secrets": ["db"]},
                     {"name": "worker", "image": "localhost/app:1", "secrets": ["api"]},
                     {"name": "plain", "image": "localhost/app:1"}],
        "secrets": {n: seal(PUB, deployment, n, v) for n, v in values.items()},
        **over,
    }


def decoded(data: dict[str, Any], key: X25519PrivateKey | None = KEY) -> PodmanScore:
    desired = decode_desired(DEP, json.dumps(data).encode(), 1, MAX, sealing_key=key)
    assert desired.error is None, desired.error
    assert desired.score is not None
    return desired.score


def containers_for(plan_score: PodmanScore) -> list[ContainerInfo]:
    """What podman lists after the agent created every planned service."""
    plan = plan_deployment(DEV, plan_score, DEP, [])
    return [ContainerInfo(id=s.name, name=s.name, state="running", labels=dict(s.labels))
            for s in plan.create]


# ----------------------------------------------------------------------------- names


@PROPERTY
@given(device=device_ids, deployment=deployment_tokens, other=deployment_tokens)
def test_podman_secret_names_fit_podman_and_group_by_owner(
    device: str, deployment: str, other: str
) -> None:
    name = "n" * 32
    podman = podman_secret_name(device, deployment, seal(PUB, deployment, name, b"x"))
    # podman 4.3 refuses longer names ("only 64 [a-zA-Z0-9-_.] characters allowed")
    assert len(podman) == 48
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*[a-zA-Z0-9]", podman)
    assert podman.startswith(device_secret_prefix(device))
    assert deployment_secrets(device, deployment, [podman, "unrelated"]) == [podman]
    assert leftover_secrets(device, [podman], known=[deployment]) == []
    assert leftover_secrets(device, [podman], known=[]) == [podman]
    if other != deployment:
        assert deployment_secrets(device, other, [podman]) == []
        assert leftover_secrets(device, [podman], known=[other]) == [podman]
    assert leftover_secrets(device + "x", [podman], known=[]) == []


def test_podman_secret_name_ends_with_a_digest_of_the_envelope_only() -> None:
    envelope = seal(PUB, DEP, "db", b"1234")
    assert podman_secret_name(DEV, DEP, envelope) == \
        f"{deployment_secret_prefix(DEV, DEP)}{envelope_digest(envelope)}"
    assert podman_secret_name(DEV, DEP, envelope).startswith("fleet-")


def test_secrets_of_other_agents_and_foreign_secrets_are_never_ours() -> None:
    mine = podman_secret_name(DEV, DEP, seal(PUB, DEP, "db", b"x"))
    theirs = podman_secret_name("pi-other", DEP, seal(PUB, DEP, "db", b"x"))
    names = [mine, theirs, "mysecret", "fleet-", ""]
    assert leftover_secrets(DEV, names, known=[]) == [mine]
    assert deployment_secrets(DEV, DEP, names) == [mine]


def test_secret_labels() -> None:
    assert secret_labels(DEV, DEP, "db") == {LABEL_MANAGED: "true", LABEL_DEVICE: DEV,
                                             LABEL_DEPLOYMENT: DEP, LABEL_SECRET: "db"}


# ----------------------------------------------------------------------------- decoding


def test_a_score_whose_secrets_open_decodes() -> None:
    assert set(decoded(score()).secrets) == {"db", "api"}


def test_a_secret_for_another_device_fails_the_deployment() -> None:
    data = score()
    data["secrets"]["db"] = seal(public_key_of(OTHER), DEP, "db", b"pw-1")
    desired = decode_desired(DEP, json.dumps(data).encode(), 3, MAX, sealing_key=KEY)
    assert desired.score is None
    assert desired.error == ("secret 'db': cannot be opened: it was sealed to another device's "
                             "key, for another deployment or name, or it was altered")
    assert desired.revision == 3


def test_a_secret_copied_from_another_deployment_fails() -> None:
    data = score()
    data["secrets"]["db"] = seal(PUB, "shop_other", "db", b"pw-1")
    desired = decode_desired(DEP, json.dumps(data).encode(), 1, MAX, sealing_key=KEY)
    assert desired.error is not None
    assert desired.error.startswith("secret 'db': cannot be opened")


def test_a_tampered_secret_fails_and_the_message_holds_no_secret_material() -> None:
    data = score({"db": b"hunter2"})
    envelope = data["secrets"]["db"]
    data["secrets"]["db"] = envelope[:-4] + ("AAAA" if envelope[-4:] != "AAAA" else "BBBB")
    desired = decode_desired(DEP, json.dumps(data).encode(), 1, MAX, sealing_key=KEY)
    assert desired.error is not None
    assert "hunter2" not in desired.error
    assert envelope[3:30] not in desired.error


def test_an_unknown_secret_reference_is_a_schema_error() -> None:
    data = score()
    data["services"][0]["secrets"] = ["nope"]
    desired = decode_desired(DEP, json.dumps(data).encode(), 1, MAX, sealing_key=KEY)
    assert desired.error == ("invalid workload: <root>: Value error, service web references "
                             "secret 'nope', which is not defined")


def test_secrets_without_a_key_fail_and_scores_without_secrets_need_none() -> None:
    desired = decode_desired(DEP, json.dumps(score()).encode(), 1, MAX, sealing_key=None)
    assert desired.error == "the workload has secrets but this agent has no sealing key"
    plain = {"services": [{"name": "web", "image": "localhost/app:1"}]}
    assert decode_desired(DEP, json.dumps(plain).encode(), 1, MAX).error is None


def test_unopenable_secret_checks_unused_values_too() -> None:
    data = score({"db": b"a", "api": b"b", "spare": b"c"})
    data["secrets"]["spare"] = seal(public_key_of(OTHER), DEP, "spare", b"c")
    parsed = PodmanScore.model_validate(data)
    assert unopenable_secret(parsed, DEP, KEY) is not None
    assert unopenable_secret(parsed, DEP, KEY).startswith("secret 'spare'")  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- plans


def test_containers_mount_their_secrets_as_files() -> None:
    parsed = decoded(score())
    plan = plan_deployment(DEV, parsed, DEP, [])
    by_service = {s.labels[LABEL_SERVICE]: s for s in plan.create}
    db = podman_secret_name(DEV, DEP, parsed.secrets["db"])
    api = podman_secret_name(DEV, DEP, parsed.secrets["api"])
    assert by_service["web"].secrets == (SecretMount(db, "db"),)
    assert by_service["worker"].secrets == (SecretMount(api, "api"),)
    assert by_service["plain"].secrets == ()
    assert SecretMount(db, "db").flag() == f"{db},type=mount,target=db"
    assert plan.secrets == {db: "db", api: "api"}
    assert plan.keep_secrets == {db, api}
    # nothing in a spec is plaintext
    for spec in plan.create:
        assert "pw-1" not in repr(spec)
        assert "token-1" not in repr(spec)


def test_init_containers_mount_secrets_too() -> None:
    data = score()
    data["init_containers"] = [{"name": "migrate", "image": "localhost/app:1", "secrets": ["db"]}]
    parsed = decoded(data)
    plan = plan_deployment(DEV, parsed, DEP, [])
    db = podman_secret_name(DEV, DEP, parsed.secrets["db"])
    assert plan.init[0].secrets == (SecretMount(db, "db"),)


def test_a_changed_secret_recreates_exactly_the_services_that_read_it() -> None:
    first = decoded(score())
    running = containers_for(first)
    assert plan_deployment(DEV, first, DEP, running).converged
    second = decoded(score({"db": b"pw-2", "api": b"token-1"}))
    plan = plan_deployment(DEV, second, DEP, running)
    assert [s.labels[LABEL_SERVICE] for s in plan.create] == ["web"]
    assert [c.labels[LABEL_SERVICE] for c in plan.remove] == ["web"]
    new_db = podman_secret_name(DEV, DEP, second.secrets["db"])
    old_db = podman_secret_name(DEV, DEP, first.secrets["db"])
    assert plan.secrets == {new_db: "db"}
    assert old_db not in plan.keep_secrets
    assert stale_secrets([old_db, new_db, *plan.keep_secrets], plan.keep_secrets) == [old_db]


def test_a_changed_init_secret_recreates_every_service() -> None:
    data = score()
    data["init_containers"] = [{"name": "migrate", "image": "localhost/app:1", "secrets": ["api"]}]
    first = decoded(data)
    running = containers_for(first)
    data2 = score({"db": b"pw-1", "api": b"token-2"})
    data2["init_containers"] = data["init_containers"]
    plan = plan_deployment(DEV, decoded(data2), DEP, running)
    assert sorted(s.labels[LABEL_SERVICE] for s in plan.create) == ["plain", "web", "worker"]


def test_the_same_secret_sealed_again_changes_nothing() -> None:
    first = decoded(score())
    again = decoded(score())
    assert plan_deployment(DEV, again, DEP, containers_for(first)).converged


def test_service_hash_without_secrets_is_what_it_was() -> None:
    parsed = decoded(score())
    plain = parsed.services[2]
    assert service_hash(plain, [], parsed.secrets) == service_hash(plain, [])
    web = parsed.services[0]
    assert service_hash(web, [], parsed.secrets) != service_hash(web, [], {
        "db": seal(PUB, DEP, "db", b"other")})


def test_spec_hash_labels_do_not_contain_envelopes() -> None:
    parsed = decoded(score())
    for spec in plan_deployment(DEV, parsed, DEP, []).create:
        assert len(spec.labels[LABEL_SPEC_HASH]) == 16
        assert all(env not in json.dumps(dict(spec.labels)) for env in parsed.secrets.values())


def test_stale_secrets() -> None:
    assert stale_secrets(["c", "a", "b"], {"b"}) == ["a", "c"]
    assert stale_secrets([], {"b"}) == []
    assert stale_secrets(["a"], frozenset()) == ["a"]


# ----------------------------------------------------------------------------- pulls


def test_registry_auth_never_shows_its_password() -> None:
    auth = RegistryAuth("127.0.0.1:5000", "fleet", b"pa:ss")
    assert "pa:ss" not in repr(auth)
    doc = json.loads(auth.authfile())
    assert doc == {"auths": {"127.0.0.1:5000": {"auth": "ZmxlZXQ6cGE6c3M="}}}  # fleet:pa:ss


@pytest.mark.parametrize(
    ("error", "registry", "has", "expected"),
    [
        ("cannot pull image r:1/x: reading manifest 1 in r:1/x: unauthorized: authentication required",
         "r:1", False,
         "cannot pull image r:1/x: reading manifest 1 in r:1/x: unauthorized: authentication "
         "required (the workload has no registry_credentials for r:1)"),
        ("cannot pull image r:1/x: unauthorized: authentication required", "r:1", True,
         "cannot pull image r:1/x: unauthorized: authentication required"),
        ("cannot pull image r:1/x: manifest unknown", "r:1", False,
         "cannot pull image r:1/x: manifest unknown"),
        ("cannot pull image x: requested access to the resource is denied", None, False,
         "cannot pull image x: requested access to the resource is denied (the workload has no "
         "registry_credentials (the image names no registry))"),
    ],
)
def test_pull_failure_hints_at_a_missing_login(error: str, registry: str | None, has: bool,
                                               expected: str) -> None:
    assert pull_failure(error, registry, has) == expected
