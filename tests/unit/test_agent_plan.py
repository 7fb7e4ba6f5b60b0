"""The agent's pure reconcile planner (agent.plan): decoding, names, labels, hashes, plans.

``ContainerInfo`` objects are built from the specs the planner itself produces, so the tests
model "what podman would list" after the agent created those containers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony_fleet.agent.plan import (
    Condition,
    DeploymentPlan,
    Desired,
    Health,
    condition_of,
    decode_desired,
    device_labels,
    group_by_deployment,
    init_container_name,
    init_hash,
    init_spec,
    orphans,
    plan_deployment,
    service_container_name,
    service_hash,
    service_health,
    service_spec,
)
from harmony_fleet.agent.runtime import (
    LABEL_DEPLOYMENT,
    LABEL_DEVICE,
    LABEL_INIT,
    LABEL_MANAGED,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    ContainerInfo,
    ContainerSpec,
    Mount,
    Port,
    Userns,
)
from harmony_fleet.contracts import (
    InitContainer,
    PodmanScore,
    spec_hash,
)

from .strategies import PROPERTY, deployment_tokens, device_ids, dns1123_labels

DEV = "pi-kitchen-01"
DEP = "default_web"
MAX = 256 * 1024


# ---- helpers ---------------------------------------------------------------------------------


def svc(name: str, image: str = "localhost/demo:1", **kw: Any) -> dict[str, Any]:
    return {"name": name, "image": image, **kw}


def make_score(services: Sequence[dict[str, Any]], inits: Sequence[dict[str, Any]] = ()) -> PodmanScore:
    return PodmanScore.model_validate({"services": list(services), "init_containers": list(inits)})


def listed(spec: ContainerSpec, *, state: str = "running", exit_code: int | None = None,
           cid: str | None = None, name: str | None = None) -> ContainerInfo:
    """What ``podman ps`` would list for a container created from ``spec``."""
    return ContainerInfo(id=cid or f"id-{spec.name}", name=name or spec.name, state=state,
                         labels=dict(spec.labels), exit_code=exit_code)


def converged_actual(score: PodmanScore, device: str = DEV, deployment: str = DEP,
                     **kw: Any) -> list[ContainerInfo]:
    """The containers a successful reconcile of ``score`` leaves behind (services only)."""
    return [listed(service_spec(device, deployment, s, score.init_containers), **kw)
            for s in score.services]


def apply_plan(plan: DeploymentPlan, actual: Sequence[ContainerInfo]) -> list[ContainerInfo]:
    """Simulate the reconciler: remove, (init containers run and are removed), create, start."""
    removed = {id(c) for c in plan.remove}
    started = {c.name for c in plan.start}
    result = []
    for c in actual:
        if id(c) in removed:
            continue
        result.append(dataclasses.replace(c, state="running", exit_code=None)
                      if c.name in started else c)
    result += [listed(spec, cid=f"new-{spec.name}") for spec in plan.create]
    return result


WEB = svc("web", "localhost/web:1", command=["httpd"], args=["-f"], env={"MODE": "prod"},
          ports=[{"container_port": 80, "host_port": 8080},
                 {"container_port": 53, "protocol": "udp", "host_ip": "127.0.0.1"}],
          volumes=[{"source": "/srv/web", "target": "/www", "read_only": True},
                   {"source": "data", "target": "/data"}],
          restart_policy="always")
DB = svc("db", "localhost/db:2", restart_policy="unless-stopped")
MIGRATE = {"name": "migrate", "image": "localhost/web:1", "args": ["migrate"], "timeout": 42,
           "env": {"DSN": "x"}, "volumes": [{"source": "/srv/m", "target": "/m"}]}
SEED = {"name": "seed", "image": "localhost/seed:1"}


# ---- decode_desired --------------------------------------------------------------------------


class TestDecodeDesired:
    def test_valid_score(self) -> None:
        raw = json.dumps({"services": [WEB, DB], "init_containers": [MIGRATE]}).encode()
        desired = decode_desired(DEP, raw, 7, MAX)
        assert desired.error is None
        assert desired.deployment == DEP
        assert desired.revision == 7
        assert isinstance(desired.score, PodmanScore)
        assert [s.name for s in desired.score.services] == ["web", "db"]
        assert [c.name for c in desired.score.init_containers] == ["migrate"]
        assert desired.score_hash == desired.score.spec_hash()
        assert len(desired.score_hash) == 16

    def test_score_without_init_containers_parses(self) -> None:
        desired = decode_desired(DEP, json.dumps({"version": 0, "services": [DB]}).encode(), 1, MAX)
        assert desired.error is None
        assert desired.score is not None
        assert desired.score.init_containers == []

    def test_same_score_same_hash_whatever_the_key_order(self) -> None:
        a = decode_desired(DEP, b'{"version":0,"services":[{"name":"w","image":"i"}]}', 1, MAX)
        b = decode_desired(DEP, b'{ "services": [ {"image": "i", "name": "w"} ], "version": 0 }',
                           2, MAX)
        assert a.score_hash == b.score_hash
        c = decode_desired(DEP, b'{"services":[{"name":"w","image":"j"}]}', 3, MAX)
        assert c.score_hash != a.score_hash

    def test_oversize_rejected_with_the_limit(self) -> None:
        raw = json.dumps({"services": [WEB]}).encode()
        limit = len(raw) - 1
        desired = decode_desired(DEP, raw, 3, limit)
        assert desired.score is None
        assert desired.score_hash is None
        assert desired.error is not None
        assert str(limit) in desired.error
        assert str(len(raw)) in desired.error
        assert desired.error == (f"desired state is {len(raw)} bytes; this device accepts at most "
                                 f"{limit}")
        assert desired.revision == 3
        assert desired.deployment == DEP

    def test_exactly_the_limit_is_accepted(self) -> None:
        raw = json.dumps({"services": [WEB]}).encode()
        desired = decode_desired(DEP, raw, 3, len(raw))
        assert desired.error is None
        assert desired.score is not None

    def test_oversize_checked_before_parsing(self) -> None:
        desired = decode_desired(DEP, b"{" * 2000, 1, 1024)
        assert desired.error is not None
        assert "1024" in desired.error
        assert "JSON" not in desired.error

    @pytest.mark.parametrize("raw", [b"", b"{", b"\xff", b"\xff\xfe{}", b"not json",
                                     b'{"services":[{"name":"w","image":"i"}]} trailing',
                                     b"[" * 5000 + b"]" * 5000,
                                     b'{"services":[{"name":"w","image":"\xff"}]}'])
    def test_invalid_json(self, raw: bytes) -> None:
        desired = decode_desired(DEP, raw, 1, MAX)
        assert desired.score is None
        assert desired.score_hash is None
        assert desired.error is not None
        assert desired.error.startswith("desired state is not valid JSON: ")

    @pytest.mark.parametrize(("doc", "path"), [
        ({}, "services: Field required"),
        ({"services": []}, "services: List should have at least 1 item"),
        ({"services": [{"name": "web"}]}, "services.0.image: Field required"),
        ({"services": [{"name": "web", "image": "a b"}]}, "services.0.image: String should match"),
        ({"services": [{"name": "Web", "image": "a"}]}, "services.0.name: String should match"),
        ({"services": [{"name": "web", "image": "a", "imag": 1}]},
         "services.0.imag: Extra inputs are not permitted"),
        ({"services": [{"name": "web", "image": "a", "env": {"A": 1}}]},
         "services.0.env.A: Input should be a valid string"),
        ({"services": [{"name": "web", "image": "a", "restart_policy": "sometimes"}]},
         "services.0.restart_policy: "),
        ({"services": [{"name": "web", "image": "a", "ports": [{"container_port": 0}]}]},
         "services.0.ports.0.container_port: "),
        ({"services": [WEB], "init_containers": [{"name": "m", "image": "a", "timeout": 0}]},
         "init_containers.0.timeout: "),
        ({"version": 1, "services": [WEB]}, "version: "),
        ({"services": [WEB], "init_containers": [{"name": "web", "image": "a"}]},
         "<root>: Value error, container name 'web' is used more than once"),
        ([], "<root>: Input should be an object"),
        (None, "<root>: Input should be an object"),
        ("score", "<root>: Input should be an object"),
    ])
    def test_schema_errors_name_the_field(self, doc: Any, path: str) -> None:
        desired = decode_desired(DEP, json.dumps(doc).encode(), 5, MAX)
        assert desired.score is None
        assert desired.score_hash is None
        assert desired.error is not None
        assert desired.error.startswith("invalid workload: ")
        assert path in desired.error
        assert desired.revision == 5

    def test_schema_errors_do_not_echo_values(self) -> None:
        doc = {"services": [{"name": "web", "image": "s3cr3t-value with-space",
                             "env": {"TOKEN": ["hunter2-secret"]}}]}
        desired = decode_desired(DEP, json.dumps(doc).encode(), 1, MAX)
        assert desired.error is not None
        assert "s3cr3t" not in desired.error
        assert "hunter2" not in desired.error
        assert "services.0.image" in desired.error
        assert "services.0.env.TOKEN" in desired.error

    @PROPERTY
    @given(raw=st.binary(max_size=512), revision=st.integers(min_value=0, max_value=2**63),
           limit=st.integers(min_value=0, max_value=1024))
    def test_never_raises_for_arbitrary_bytes(self, raw: bytes, revision: int, limit: int) -> None:
        desired = decode_desired(DEP, raw, revision, limit)
        assert isinstance(desired, Desired)
        assert desired.revision == revision
        assert (desired.score is None) != (desired.error is None)
        assert (desired.score is None) == (desired.score_hash is None)
        if len(raw) > limit:
            assert desired.error is not None
            assert str(limit) in desired.error

    @settings(PROPERTY, max_examples=100)
    @given(doc=st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.sampled_from(["version", "services", "init_containers", "name",
                                             "image", "env", "args", "timeout", "x"]),
                            children, max_size=4),
        ), max_leaves=10))
    def test_never_raises_for_json_shaped_input(self, doc: Any) -> None:
        desired = decode_desired(DEP, json.dumps(doc).encode(), 1, MAX)
        assert (desired.score is None) != (desired.error is None)
        if desired.error is not None:
            assert desired.error.startswith("invalid workload: ")


# ---- names and labels ------------------------------------------------------------------------


class TestNames:
    def test_formats(self) -> None:
        assert service_container_name("pi-1", "ns_app", "web") == "pi-1.ns_app.web"
        assert init_container_name("pi-1", "ns_app", "migrate") == "pi-1.ns_app.init.migrate"

    def test_service_called_init_does_not_collide(self) -> None:
        assert service_container_name(DEV, DEP, "init") != init_container_name(DEV, DEP, "init")

    @settings(PROPERTY, max_examples=100)
    @given(a=st.tuples(device_ids, deployment_tokens, dns1123_labels),
           b=st.tuples(device_ids, deployment_tokens, dns1123_labels))
    def test_service_and_init_names_never_collide(self, a: tuple[str, str, str],
                                                  b: tuple[str, str, str]) -> None:
        assert service_container_name(*a) != init_container_name(*b)
        assert service_container_name(*a) != init_container_name(*a)
        # each form is injective: equal names mean equal (device, deployment, name)
        assert (service_container_name(*a) == service_container_name(*b)) == (a == b)
        assert (init_container_name(*a) == init_container_name(*b)) == (a == b)

    def test_device_labels(self) -> None:
        assert device_labels(DEV) == {LABEL_MANAGED: "true", LABEL_DEVICE: DEV}


class TestServiceSpec:
    def test_fields_and_labels(self) -> None:
        score = make_score([WEB], [MIGRATE])
        web = score.services[0]
        spec = service_spec(DEV, DEP, web, score.init_containers)
        assert spec.name == f"{DEV}.{DEP}.web"
        assert spec.image == "localhost/web:1"
        assert dict(spec.labels) == {
            LABEL_MANAGED: "true",
            LABEL_DEVICE: DEV,
            LABEL_DEPLOYMENT: DEP,
            LABEL_SERVICE: "web",
            LABEL_SPEC_HASH: service_hash(web, score.init_containers),
        }
        assert LABEL_INIT not in spec.labels
        assert list(spec.command or []) == ["httpd"]
        assert tuple(spec.args) == ("-f",)
        assert dict(spec.env) == {"MODE": "prod"}
        assert tuple(spec.ports) == (Port(80, 8080, "tcp", None), Port(53, None, "udp", "127.0.0.1"))
        # the default policy's user namespace: writable mounts are handed to the container's ids
        assert tuple(spec.mounts) == (Mount("/srv/web", "/www", True),
                                      Mount("data", "/data", False, chown=True))
        assert spec.userns is Userns.AUTO
        assert spec.restart_policy == "always"
        assert spec.stop_timeout_s == 10
        assert spec.timeout_s is None

    def test_defaults_and_stop_timeout(self) -> None:
        score = make_score([svc("a", restart_policy="no")])
        spec = service_spec(DEV, DEP, score.services[0], [], stop_timeout_s=33)
        assert spec.command is None
        assert tuple(spec.args) == ()
        assert dict(spec.env) == {}
        assert tuple(spec.ports) == ()
        assert tuple(spec.mounts) == ()
        assert spec.restart_policy == "no"
        assert spec.stop_timeout_s == 33

    def test_spec_is_deterministic(self) -> None:
        a = make_score([WEB, DB], [MIGRATE])
        b = make_score([WEB, DB], [MIGRATE])
        assert service_spec(DEV, DEP, a.services[0], a.init_containers) == \
            service_spec(DEV, DEP, b.services[0], b.init_containers)


class TestInitSpec:
    def test_fields_and_labels(self) -> None:
        init = InitContainer.model_validate(MIGRATE)
        spec = init_spec(DEV, DEP, init)
        assert spec.name == f"{DEV}.{DEP}.init.migrate"
        assert spec.image == "localhost/web:1"
        assert dict(spec.labels) == {
            LABEL_MANAGED: "true",
            LABEL_DEVICE: DEV,
            LABEL_DEPLOYMENT: DEP,
            LABEL_INIT: "migrate",
            LABEL_SPEC_HASH: init_hash(init),
        }
        assert LABEL_SERVICE not in spec.labels
        assert tuple(spec.args) == ("migrate",)
        assert dict(spec.env) == {"DSN": "x"}
        assert tuple(spec.mounts) == (Mount("/srv/m", "/m", False, chown=True),)
        assert tuple(spec.ports) == ()
        assert spec.userns is Userns.AUTO

    def test_restart_policy_forced_to_no_and_timeout_from_score(self) -> None:
        spec = init_spec(DEV, DEP, InitContainer.model_validate(MIGRATE))
        assert spec.restart_policy == "no"
        assert spec.timeout_s == 42.0
        assert isinstance(spec.timeout_s, float)

    def test_default_timeout(self) -> None:
        spec = init_spec(DEV, DEP, InitContainer.model_validate(SEED))
        assert spec.timeout_s == 300.0
        assert spec.restart_policy == "no"


# ---- service_hash ----------------------------------------------------------------------------


class TestServiceHash:
    def test_stable(self) -> None:
        s = make_score([WEB], [MIGRATE])
        t = make_score([WEB], [MIGRATE])
        assert service_hash(s.services[0], s.init_containers) == \
            service_hash(t.services[0], t.init_containers)

    @pytest.mark.parametrize("change", [
        {"image": "localhost/web:2"},
        {"args": ["-v"]},
        {"command": None},
        {"env": {"MODE": "dev"}},
        {"ports": []},
        {"volumes": []},
        {"restart_policy": "on-failure"},
    ])
    def test_changes_with_the_service(self, change: dict[str, Any]) -> None:
        before = make_score([WEB], [MIGRATE])
        after = make_score([{**WEB, **change}], [MIGRATE])
        assert service_hash(before.services[0], before.init_containers) != \
            service_hash(after.services[0], after.init_containers)

    @pytest.mark.parametrize("inits", [
        [],
        [{**MIGRATE, "timeout": 43}],
        [{**MIGRATE, "image": "localhost/web:2"}],
        [{**MIGRATE, "args": []}],
        [MIGRATE, SEED],
        [SEED, MIGRATE],
    ])
    def test_changes_with_any_init_container(self, inits: list[dict[str, Any]]) -> None:
        before = make_score([WEB], [MIGRATE])
        after = make_score([WEB], inits)
        assert service_hash(before.services[0], before.init_containers) != \
            service_hash(after.services[0], after.init_containers)

    def test_unchanged_when_another_service_changes(self) -> None:
        before = make_score([WEB, DB], [MIGRATE])
        after = make_score([WEB, {**DB, "image": "localhost/db:3"}, svc("cache")], [MIGRATE])
        assert service_hash(before.services[0], before.init_containers) == \
            service_hash(after.services[0], after.init_containers)
        assert service_hash(before.services[1], before.init_containers) != \
            service_hash(after.services[1], after.init_containers)


# ---- the device policy's user namespace and resolved host paths -------------------------------


class TestUsernsAndHostPaths:
    def test_host_mode_runs_without_namespace_and_never_chowns(self) -> None:
        score = make_score([WEB], [MIGRATE])
        spec = service_spec(DEV, DEP, score.services[0], score.init_containers,
                            userns=Userns.HOST)
        assert spec.userns is Userns.HOST
        assert tuple(spec.mounts) == (Mount("/srv/web", "/www", True),
                                      Mount("data", "/data", False))
        init = init_spec(DEV, DEP, score.init_containers[0], userns=Userns.HOST)
        assert init.userns is Userns.HOST
        assert tuple(init.mounts) == (Mount("/srv/m", "/m", False),)

    def test_auto_mode_chowns_writable_mounts_only(self) -> None:
        score = make_score([svc("a", volumes=[
            {"source": "/srv/ro", "target": "/ro", "read_only": True},
            {"source": "/srv/rw", "target": "/rw"},
            {"source": "cache", "target": "/cache", "read_only": True},
            {"source": "data", "target": "/data"},
        ])])
        spec = service_spec(DEV, DEP, score.services[0], [], userns=Userns.AUTO)
        assert [m.chown for m in spec.mounts] == [False, True, False, True]
        assert [m.flag() for m in spec.mounts] == [
            "/srv/ro:/ro:ro", "/srv/rw:/rw:rw,U", "cache:/cache:ro", "data:/data:rw,U"]

    def test_service_hash_covers_userns(self) -> None:
        score = make_score([WEB], [MIGRATE])
        web, inits = score.services[0], score.init_containers
        assert service_hash(web, inits, userns=Userns.AUTO) != \
            service_hash(web, inits, userns=Userns.HOST)
        assert service_hash(web, inits) == service_hash(web, inits, userns=Userns.AUTO)

    def test_host_mode_keeps_the_hash_containers_had_before_the_policy(self) -> None:
        # containers created before the policy existed ran without a user namespace: a device
        # that opts out (host) adopts them instead of recreating them
        score = make_score([WEB], [MIGRATE])
        web, inits = score.services[0], score.init_containers
        before = spec_hash({"service": web.model_dump(mode="json"),
                            "init_containers": [c.model_dump(mode="json") for c in inits]})
        assert service_hash(web, inits, userns=Userns.HOST) == before
        assert init_hash(inits[0], userns=Userns.HOST) == spec_hash(inits[0])
        assert init_hash(inits[0], userns=Userns.AUTO) != spec_hash(inits[0])

    @pytest.mark.parametrize(("created", "now"), [(Userns.HOST, Userns.AUTO),
                                                   (Userns.AUTO, Userns.HOST)])
    def test_changing_the_device_userns_recreates_every_service(
        self, created: Userns, now: Userns
    ) -> None:
        score = make_score([WEB, DB], [MIGRATE])
        actual = [listed(service_spec(DEV, DEP, s, score.init_containers, userns=created))
                  for s in score.services]
        assert plan_deployment(DEV, score, DEP, actual, userns=created).converged
        plan = plan_deployment(DEV, score, DEP, actual, userns=now)
        assert sorted(c.name for c in plan.remove) == sorted(c.name for c in actual)
        assert [c.userns for c in plan.create] == [now, now]
        assert [c.userns for c in plan.init] == [now]

    def test_resolved_host_paths_are_what_gets_mounted(self) -> None:
        score = make_score([svc("a", volumes=[
            {"source": "/srv/fleet/link", "target": "/x"},
            {"source": "data", "target": "/data"},
        ])], [{"name": "prep", "image": "localhost/i:1",
               "volumes": [{"source": "/srv/fleet/link", "target": "/x"}]}])
        resolved = {"/srv/fleet/link": "/srv/fleet/real"}
        plan = plan_deployment(DEV, score, DEP, [], host_paths=resolved)
        assert [m.source for m in plan.create[0].mounts] == ["/srv/fleet/real", "data"]
        assert [m.source for m in plan.init[0].mounts] == ["/srv/fleet/real"]
        # the hash is the score's: a re-resolved symlink alone does not recreate anything
        assert plan.create[0].labels[LABEL_SPEC_HASH] == \
            plan_deployment(DEV, score, DEP, []).create[0].labels[LABEL_SPEC_HASH]


# ---- plan_deployment -------------------------------------------------------------------------


class TestPlanDeployment:
    def test_fresh_deployment_creates_everything(self) -> None:
        score = make_score([WEB, DB, svc("cache", "localhost/web:1")], [MIGRATE, SEED])
        plan = plan_deployment(DEV, score, DEP, [])
        assert plan.deployment == DEP
        assert not plan.converged
        assert plan.create == [service_spec(DEV, DEP, s, score.init_containers)
                               for s in score.services]
        assert plan.init == [init_spec(DEV, DEP, c) for c in score.init_containers]
        assert [s.labels[LABEL_INIT] for s in plan.init] == ["migrate", "seed"]  # score order
        assert plan.remove == []
        assert plan.start == []
        # deduplicated, services first then init containers, first-seen order
        assert plan.images == ["localhost/web:1", "localhost/db:2", "localhost/seed:1"]

    def test_fresh_deployment_without_init_containers(self) -> None:
        score = make_score([DB])
        plan = plan_deployment(DEV, score, DEP, [])
        assert [s.name for s in plan.create] == [f"{DEV}.{DEP}.db"]
        assert plan.init == []
        assert plan.images == ["localhost/db:2"]

    def test_stop_timeout_is_passed_to_created_services(self) -> None:
        plan = plan_deployment(DEV, make_score([DB]), DEP, [], stop_timeout_s=77)
        assert [s.stop_timeout_s for s in plan.create] == [77]

    def test_converged_deployment_needs_nothing(self) -> None:
        score = make_score([WEB, DB], [MIGRATE])
        plan = plan_deployment(DEV, score, DEP, converged_actual(score))
        assert plan.converged
        assert plan.create == []
        assert plan.remove == []
        assert plan.start == []
        assert plan.init == []  # init containers do not re-run for a converged deployment
        assert plan.images == []

    def test_converged_regardless_of_list_order(self) -> None:
        score = make_score([WEB, DB, svc("cache")], [MIGRATE])
        actual = list(reversed(converged_actual(score)))
        assert plan_deployment(DEV, score, DEP, actual).converged

    def test_one_service_changed_recreates_only_that_one(self) -> None:
        old = make_score([WEB, DB], [MIGRATE])
        actual = converged_actual(old)
        new = make_score([WEB, {**DB, "image": "localhost/db:3"}], [MIGRATE])
        plan = plan_deployment(DEV, new, DEP, actual)
        assert [c.name for c in plan.remove] == [f"{DEV}.{DEP}.db"]
        assert plan.remove[0] is actual[1]
        assert plan.create == [service_spec(DEV, DEP, new.services[1], new.init_containers)]
        assert plan.start == []
        # a fresh service set needs its init containers again
        assert plan.init == [init_spec(DEV, DEP, new.init_containers[0])]
        assert plan.images == ["localhost/db:3", "localhost/web:1"]

    def test_init_container_changed_recreates_every_service(self) -> None:
        old = make_score([WEB, DB], [MIGRATE])
        actual = converged_actual(old)
        new = make_score([WEB, DB], [{**MIGRATE, "args": ["migrate", "--v2"]}])
        plan = plan_deployment(DEV, new, DEP, actual)
        assert sorted(c.name for c in plan.remove) == sorted(c.name for c in actual)
        assert [s.name for s in plan.create] == [f"{DEV}.{DEP}.web", f"{DEV}.{DEP}.db"]
        assert [s.args for s in plan.init] == [("migrate", "--v2")]

    def test_init_container_added_recreates_every_service(self) -> None:
        old = make_score([WEB, DB])
        new = make_score([WEB, DB], [SEED])
        plan = plan_deployment(DEV, new, DEP, converged_actual(old))
        assert len(plan.remove) == 2
        assert len(plan.create) == 2
        assert [s.labels[LABEL_INIT] for s in plan.init] == ["seed"]

    def test_leftover_init_container_is_removed(self) -> None:
        score = make_score([WEB], [MIGRATE])
        leftover = listed(init_spec(DEV, DEP, score.init_containers[0]), state="exited",
                          exit_code=0)
        actual = [*converged_actual(score), leftover]
        plan = plan_deployment(DEV, score, DEP, actual)
        assert plan.remove == [leftover]
        assert plan.create == []
        assert plan.init == []  # services are fine: no reason to re-run init containers
        assert plan.start == []
        assert not plan.converged

    def test_leftover_init_container_of_an_unknown_init_is_removed(self) -> None:
        score = make_score([WEB])
        old = InitContainer.model_validate(SEED)
        leftover = listed(init_spec(DEV, DEP, old), state="running")
        plan = plan_deployment(DEV, score, DEP, [*converged_actual(score), leftover])
        assert plan.remove == [leftover]

    def test_duplicate_containers_for_one_service(self) -> None:
        score = make_score([WEB, DB])
        good = converged_actual(score)
        web_spec = service_spec(DEV, DEP, score.services[0], [])
        # same labels (same service, same hash) under other names: sorting before and after
        dup_before = listed(web_spec, cid="dup1", name="aaa-copy-of-web")
        dup_after = listed(web_spec, cid="dup2", name=f"{web_spec.name}-2")
        plan = plan_deployment(DEV, score, DEP, [dup_after, *good, dup_before])
        assert sorted(c.id for c in plan.remove) == ["dup1", "dup2"]
        assert plan.create == []  # the canonically named one is kept
        assert plan.start == []

    def test_same_service_listed_twice_under_its_name_keeps_one(self) -> None:
        score = make_score([WEB])
        web_spec = service_spec(DEV, DEP, score.services[0], [])
        first, second = listed(web_spec, cid="one"), listed(web_spec, cid="two")
        plan = plan_deployment(DEV, score, DEP, [first, second])
        assert plan.remove == [second]
        assert plan.create == []

    def test_duplicate_only_under_another_name_is_replaced(self) -> None:
        score = make_score([WEB])
        web_spec = service_spec(DEV, DEP, score.services[0], [])
        stray = listed(web_spec, name="renamed")
        plan = plan_deployment(DEV, score, DEP, [stray])
        assert plan.remove == [stray]
        assert plan.create == [web_spec]

    def test_service_no_longer_in_score_is_removed(self) -> None:
        old = make_score([WEB, DB], [MIGRATE])
        actual = converged_actual(old)
        new = make_score([WEB], [MIGRATE])
        plan = plan_deployment(DEV, new, DEP, actual)
        assert [c.name for c in plan.remove] == [f"{DEV}.{DEP}.db"]
        assert plan.create == []
        assert plan.init == []  # web is unchanged: init containers do not re-run
        assert plan.images == []

    def test_unlabelled_or_foreign_container_is_removed(self) -> None:
        score = make_score([WEB])
        actual = converged_actual(score)
        stray = ContainerInfo(id="x", name="something", state="running",
                              labels={**device_labels(DEV), LABEL_DEPLOYMENT: DEP})
        plan = plan_deployment(DEV, score, DEP, [*actual, stray])
        assert plan.remove == [stray]
        assert plan.create == []

    def test_container_of_another_device_is_not_adopted(self) -> None:
        score = make_score([WEB])
        other = converged_actual(score, device="pi-other")
        plan = plan_deployment(DEV, score, DEP, other)
        assert plan.remove == other
        assert [s.name for s in plan.create] == [f"{DEV}.{DEP}.web"]

    @pytest.mark.parametrize("policy", ["no", "on-failure", "always", "unless-stopped"])
    @pytest.mark.parametrize("code", [0, 1, 137])
    def test_exited_service_is_left_to_its_restart_policy(self, policy: str, code: int) -> None:
        # podman restarts what its policy says; the agent starting it too would race podman
        score = make_score([svc("web", restart_policy=policy), DB])
        actual = converged_actual(score)
        actual[0] = dataclasses.replace(actual[0], state="exited", exit_code=code)
        plan = plan_deployment(DEV, score, DEP, actual)
        assert plan.converged
        assert (plan.start, plan.create, plan.remove, plan.init, plan.waiting) == \
            ([], [], [], [], [])

    def test_paused_service_is_not_started(self) -> None:
        score = make_score([WEB])
        plan = plan_deployment(DEV, score, DEP, converged_actual(score, state="paused"))
        assert plan.converged

    @pytest.mark.parametrize("policy", ["no", "on-failure"])
    def test_created_but_never_started_service_is_started(self, policy: str) -> None:
        score = make_score([svc("job", restart_policy=policy)])
        actual = converged_actual(score, state="created")
        plan = plan_deployment(DEV, score, DEP, actual)
        assert plan.start == actual

    @pytest.mark.parametrize("policy", ["always", "unless-stopped"])
    def test_created_but_never_started_service_with_keep_running_policy(self, policy: str) -> None:
        score = make_score([svc("web", restart_policy=policy)])
        actual = converged_actual(score, state="created")
        assert plan_deployment(DEV, score, DEP, actual).start == actual

    def test_mixed_situation(self) -> None:
        old = make_score([WEB, DB, svc("gone")], [MIGRATE])
        actual = converged_actual(old)
        actual[1] = dataclasses.replace(actual[1], state="created")  # db never started
        leftover = listed(init_spec(DEV, DEP, old.init_containers[0]), state="exited")
        new = make_score([{**WEB, "args": []}, DB, svc("fresh", "localhost/fresh:1")], [MIGRATE])
        plan = plan_deployment(DEV, new, DEP, [*actual, leftover])
        assert sorted(c.name for c in plan.remove) == sorted(
            [actual[0].name, actual[2].name, leftover.name])
        assert [s.labels[LABEL_SERVICE] for s in plan.create] == ["web", "fresh"]
        assert plan.start == [actual[1]]
        assert [s.labels[LABEL_INIT] for s in plan.init] == ["migrate"]
        assert plan.images == ["localhost/web:1", "localhost/fresh:1"]


# ---- service_health --------------------------------------------------------------------------


class TestServiceHealth:
    def test_running_is_healthy(self) -> None:
        score = make_score([WEB, DB])
        assert service_health(score, converged_actual(score)) == Health()

    @pytest.mark.parametrize("policy", ["no", "on-failure"])
    def test_completed_one_shot_is_healthy(self, policy: str) -> None:
        score = make_score([svc("job", restart_policy=policy)])
        actual = converged_actual(score, state="exited", exit_code=0)
        assert service_health(score, actual) == Health()

    @pytest.mark.parametrize("policy", ["no", "on-failure", "always", "unless-stopped"])
    def test_nonzero_exit_is_a_problem(self, policy: str) -> None:
        score = make_score([svc("job", restart_policy=policy)])
        actual = converged_actual(score, state="exited", exit_code=3)
        assert service_health(score, actual).problems == ("service job exited with code 3",)

    @pytest.mark.parametrize("policy", ["always", "unless-stopped"])
    def test_exit_zero_of_a_keep_running_service_is_a_problem(self, policy: str) -> None:
        score = make_score([svc("web", restart_policy=policy)])
        actual = converged_actual(score, state="exited", exit_code=0)
        assert service_health(score, actual).problems == ("service web exited with code 0",)

    def test_missing_container(self) -> None:
        score = make_score([WEB, DB])
        actual = converged_actual(score)[:1]
        assert service_health(score, actual).problems == ("service db has no container",)
        assert service_health(score, []).problems == ("service web has no container",
                                                      "service db has no container")

    @pytest.mark.parametrize("state", ["paused", "created", "configured", "unknown", "dead",
                                       "bad state"])
    def test_settled_states_that_are_not_running_are_problems(self, state: str) -> None:
        score = make_score([WEB])
        actual = converged_actual(score, state=state)
        assert service_health(score, actual) == Health(problems=(f"service web is {state}",))

    @pytest.mark.parametrize("state", ["stopping", "removing", "initialized", "stopped",
                                       "restarting"])
    @pytest.mark.parametrize("policy", ["no", "always"])
    def test_a_service_in_transition_is_waited_for_not_failed(self, state: str,
                                                              policy: str) -> None:
        score = make_score([svc("web", restart_policy=policy), DB])
        actual = converged_actual(score)
        actual[0] = dataclasses.replace(actual[0], state=state, exit_code=137)
        assert service_health(score, actual) == Health(waiting=("web",))

    def test_problems_and_waiting_together(self) -> None:
        score = make_score([WEB, DB])
        actual = converged_actual(score)
        actual[0] = dataclasses.replace(actual[0], state="stopping")
        actual[1] = dataclasses.replace(actual[1], state="exited", exit_code=2)
        assert service_health(score, actual) == Health(("service db exited with code 2",),
                                                       ("web",))

    def test_init_containers_are_not_services(self) -> None:
        score = make_score([WEB], [MIGRATE])
        leftover = listed(init_spec(DEV, DEP, score.init_containers[0]), state="exited",
                          exit_code=9)
        assert service_health(score, [*converged_actual(score), leftover]) == Health()
        assert service_health(score, [leftover]).problems == ("service web has no container",)

    def test_several_problems_in_score_order(self) -> None:
        score = make_score([WEB, DB, svc("c")])
        actual = converged_actual(score)
        actual[0] = dataclasses.replace(actual[0], state="exited", exit_code=1)
        del actual[2]
        assert service_health(score, actual).problems == ("service web exited with code 1",
                                                          "service c has no container")


# ---- podman's states -------------------------------------------------------------------------

#: Every state string podman 4 and 5 report (libpod define.ContainerStatus.String(), including
#: "bad state") and the Docker-compatible ones, with what the agent makes of each.
KNOWN_STATES = {
    "running": Condition.RUNNING,
    "created": Condition.NOT_STARTED,
    "configured": Condition.NOT_STARTED,
    "exited": Condition.EXITED,
    "paused": Condition.PAUSED,
    "initialized": Condition.IN_TRANSITION,
    "stopped": Condition.IN_TRANSITION,
    "stopping": Condition.IN_TRANSITION,
    "removing": Condition.IN_TRANSITION,
    "restarting": Condition.IN_TRANSITION,
    "unknown": Condition.UNKNOWN,
    "dead": Condition.UNKNOWN,
    "bad state": Condition.UNKNOWN,
}


class TestConditions:
    @pytest.mark.parametrize(("state", "condition"), sorted(KNOWN_STATES.items()))
    def test_each_podman_state(self, state: str, condition: Condition) -> None:
        assert condition_of(state) is condition
        assert condition_of(state.upper()) is condition  # podman's ps prints "Exited (0) ..."
        assert condition_of(f" {state.title()}\n") is condition

    def test_every_condition_is_reachable(self) -> None:
        assert set(KNOWN_STATES.values()) == set(Condition)

    @PROPERTY
    @given(state=st.text(max_size=20))
    def test_any_string_is_classified_and_unknown_ones_are_left_alone(self, state: str) -> None:
        condition = condition_of(state)
        assert isinstance(condition, Condition)
        if state.strip().lower() not in KNOWN_STATES:
            assert condition is Condition.UNKNOWN

    @pytest.mark.parametrize("state", sorted(KNOWN_STATES))
    @pytest.mark.parametrize("policy", ["no", "on-failure", "always", "unless-stopped"])
    def test_plan_for_a_current_container_in_each_state(self, state: str, policy: str) -> None:
        score = make_score([svc("web", restart_policy=policy), svc("api")])
        web, api = converged_actual(score, exit_code=1)
        web = dataclasses.replace(web, state=state)
        plan = plan_deployment(DEV, score, DEP, [web, api])
        condition = KNOWN_STATES[state]
        if condition is Condition.IN_TRANSITION:
            assert plan.waiting == [web]
            assert not plan.converged
        else:
            assert plan.waiting == []
        assert plan.start == ([web] if condition is Condition.NOT_STARTED else [])
        assert (plan.create, plan.remove, plan.init, plan.images) == ([], [], [], [])
        assert plan.converged == (condition not in (Condition.IN_TRANSITION,
                                                    Condition.NOT_STARTED))

    @pytest.mark.parametrize("state", sorted(s for s, c in KNOWN_STATES.items()
                                             if c is Condition.IN_TRANSITION))
    def test_an_outdated_container_in_transition_is_neither_removed_nor_replaced(
        self, state: str
    ) -> None:
        old = make_score([WEB, DB], [MIGRATE])
        actual = converged_actual(old)
        actual[0] = dataclasses.replace(actual[0], state=state)
        new = make_score([{**WEB, "image": "localhost/web:2"}, svc("fresh")], [MIGRATE])
        plan = plan_deployment(DEV, new, DEP, actual)
        assert plan.waiting == [actual[0]]
        assert (plan.create, plan.remove, plan.start, plan.init, plan.images, plan.secrets) == \
            ([], [], [], [], [], {})
        assert not plan.converged

    @pytest.mark.parametrize("state", ["removing", "stopping"])
    def test_an_init_leftover_in_transition_is_waited_for(self, state: str) -> None:
        score = make_score([WEB], [MIGRATE])
        leftover = listed(init_spec(DEV, DEP, score.init_containers[0]), state=state)
        plan = plan_deployment(DEV, score, DEP, [leftover])
        assert plan.waiting == [leftover]
        assert plan.create == []
        assert plan.remove == []

    @pytest.mark.parametrize("state", ["removing", "stopping", "initialized"])
    def test_a_container_stuck_in_transition_is_removed_and_the_score_applied_again(
        self, state: str
    ) -> None:
        score = make_score([WEB, DB])
        actual = converged_actual(score)
        actual[0] = dataclasses.replace(actual[0], state=state)
        plan = plan_deployment(DEV, score, DEP, actual, stuck={actual[0].id})
        assert plan.waiting == []
        assert plan.remove == [actual[0]]
        assert [s.name for s in plan.create] == [actual[0].name]
        assert plan.start == []
        assert apply_plan(plan, actual)  # converges as a fresh create would

    def test_stuck_names_only_containers_in_transition(self) -> None:
        """An id in ``stuck`` that is running (the transition ended meanwhile) is kept; one
        still moving but not stuck keeps the whole deployment waiting."""
        score = make_score([WEB, DB])
        actual = converged_actual(score)
        actual[1] = dataclasses.replace(actual[1], state="stopping")
        plan = plan_deployment(DEV, score, DEP, actual, stuck={actual[0].id})
        assert plan.waiting == [actual[1]]
        assert plan.remove == []


# ---- orphans and grouping --------------------------------------------------------------------


class TestOrphansAndGrouping:
    def test_group_by_deployment(self) -> None:
        a = converged_actual(make_score([WEB, DB]), deployment="a")
        b = converged_actual(make_score([DB]), deployment="ns_b")
        init = listed(init_spec(DEV, "a", InitContainer.model_validate(SEED)), state="exited")
        unlabelled = ContainerInfo(id="u", name="u", state="running", labels={LABEL_MANAGED: "true"})
        empty = ContainerInfo(id="e", name="e", state="running", labels={LABEL_DEPLOYMENT: ""})
        groups = group_by_deployment([a[0], b[0], unlabelled, init, a[1], empty])
        assert groups == {"a": [a[0], init, a[1]], "ns_b": [b[0]]}

    def test_group_by_deployment_empty(self) -> None:
        assert group_by_deployment([]) == {}

    def test_orphans(self) -> None:
        a = converged_actual(make_score([WEB]), deployment="a")
        b = converged_actual(make_score([WEB, DB]), deployment="b")
        groups = {"a": a, "b": b}
        assert orphans({"a": object()}, groups) == {"b": b}
        assert orphans({"a": 1, "b": 2}, groups) == {}
        assert orphans({}, groups) == {"a": a, "b": b}
        assert orphans({"c": 1}, {}) == {}

    def test_orphans_returns_copies(self) -> None:
        a = converged_actual(make_score([WEB]), deployment="a")
        result = orphans({}, {"a": tuple(a)})
        assert result == {"a": a}
        assert isinstance(result["a"], list)


# ---- properties: any score converges in one plan ---------------------------------------------

#: Fast label strategies for the heavier properties (``from_regex`` dominates their runtime).
_label_chars = "abcdefghijklmnopqrstuvwxyz0123456789-"
_labels = st.text(_label_chars, min_size=1, max_size=12).filter(
    lambda s: s[0] != "-" and s[-1] != "-")
_devices = st.one_of(st.just(DEV), _labels)
_deployments = st.one_of(st.just(DEP), _labels, st.builds("{}_{}".format, _labels, _labels))
CONVERGENCE = settings(PROPERTY, max_examples=100)

_images = st.sampled_from(["localhost/a:1", "localhost/b:1", "docker.io/library/c:2"])
_policies = st.sampled_from(["no", "always", "on-failure", "unless-stopped"])
_args = st.lists(st.text(min_size=1, max_size=5), max_size=2)
_env = st.dictionaries(st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,4}\Z", fullmatch=True),
                       st.text(max_size=4), max_size=2)


@st.composite
def scores(draw: st.DrawFn) -> PodmanScore:
    names = draw(st.lists(_labels, min_size=1, max_size=6,
                          unique=True))
    n_services = draw(st.integers(min_value=1, max_value=len(names)))
    services = [
        {"name": n, "image": draw(_images), "args": draw(_args), "env": draw(_env),
         "restart_policy": draw(_policies),
         "ports": draw(st.lists(st.builds(lambda p: {"container_port": p},
                                          st.integers(1, 65535)), max_size=1))}
        for n in names[:n_services]
    ]
    inits = [{"name": n, "image": draw(_images), "args": draw(_args),
              "timeout": draw(st.integers(1, 600))} for n in names[n_services:]]
    return make_score(services, inits)


_states = st.sampled_from(sorted(KNOWN_STATES))


@st.composite
def prior_containers(draw: st.DrawFn, device: str, deployment: str) -> list[ContainerInfo]:
    """What an earlier, possibly interrupted reconcile of some other score may have left."""
    old = draw(scores())
    result = []
    for s in old.services:
        if draw(st.booleans()):
            spec = service_spec(device, deployment, s, old.init_containers)
            result.append(listed(spec, state=draw(_states), exit_code=draw(st.sampled_from([0, 1])),
                                 cid=f"old-{s.name}"))
    for c in old.init_containers:
        if draw(st.booleans()):
            result.append(listed(init_spec(device, deployment, c), state=draw(_states),
                                 cid=f"old-init-{c.name}"))
    return result


def settle(actual: Sequence[ContainerInfo]) -> list[ContainerInfo]:
    """What podman ends every transition in: removals complete, the rest have exited."""
    return [c if condition_of(c.state) is not Condition.IN_TRANSITION
            else dataclasses.replace(c, state="exited", exit_code=137)
            for c in actual if c.state != "removing"]


class TestPlanProperties:
    @CONVERGENCE
    @given(score=scores(), device=_devices, deployment=_deployments)
    def test_fresh_plan_then_replan_is_converged(self, score: PodmanScore, device: str,
                                                 deployment: str) -> None:
        plan = plan_deployment(device, score, deployment, [])
        assert len(plan.create) == len(score.services)
        assert len(plan.init) == len(score.init_containers)
        assert len(plan.images) == len(set(plan.images))
        assert set(plan.images) == {s.image for s in score.services} | \
            {c.image for c in score.init_containers}
        names = [s.name for s in plan.create] + [s.name for s in plan.init]
        assert len(names) == len(set(names))
        after = apply_plan(plan, [])
        again = plan_deployment(device, score, deployment, after)
        assert again.converged, again
        assert again.init == []
        assert again.images == []
        assert service_health(score, after) == Health()

    @CONVERGENCE
    @given(data=st.data(), score=scores(), device=_devices, deployment=_deployments)
    def test_any_prior_state_converges_once_podman_settles(
        self, data: st.DataObject, score: PodmanScore, device: str, deployment: str
    ) -> None:
        actual = data.draw(prior_containers(device, deployment))
        plan = plan_deployment(device, score, deployment, actual)
        in_transition = [c for c in actual if condition_of(c.state) is Condition.IN_TRANSITION]
        assert plan.waiting == sorted(in_transition, key=lambda c: c.name)
        if plan.waiting:
            # nothing is touched while podman acts; then it settles and planning goes on
            assert (plan.create, plan.remove, plan.start, plan.init) == ([], [], [], [])
            actual = settle(actual)
            plan = plan_deployment(device, score, deployment, actual)
            assert plan.waiting == []
        # every init leftover is removed; nothing is both kept and removed
        assert {c.name for c in actual if c.labels.get(LABEL_INIT)} <= {c.name for c in plan.remove}
        assert not ({c.name for c in plan.start} & {c.name for c in plan.remove})
        assert all(condition_of(c.state) is Condition.NOT_STARTED for c in plan.start)
        assert bool(plan.init) == (bool(plan.create) and bool(score.init_containers))
        after = apply_plan(plan, actual)
        again = plan_deployment(device, score, deployment, after)
        assert again.converged, again
        # exactly one container per service, with the current spec's name and hash
        by_name = {c.name: c for c in after}
        assert len(by_name) == len(after) == len(score.services)
        for s in score.services:
            spec = service_spec(device, deployment, s, score.init_containers)
            assert by_name[spec.name].labels[LABEL_SPEC_HASH] == spec.labels[LABEL_SPEC_HASH]
            # nothing is left never started; what ran and exited is its restart policy's
            assert condition_of(by_name[spec.name].state) is not Condition.NOT_STARTED
        # a third plan is still converged (idempotence)
        assert plan_deployment(device, score, deployment, apply_plan(again, after)).converged
