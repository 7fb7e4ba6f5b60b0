"""The Kubernetes API emulator (harmony_fleet_harness.kube_emulator), proven over real HTTP.

Plain aiohttp requests pin the API server semantics the emulator adds to kmock (metadata stamping,
Status errors, merge/JSON patches, the status subresource, finalizers, selectors, watches, the
write log); an embedded kopf operator then runs create/update/delete handlers against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest

from harmony_fleet_harness.kube_emulator import (
    DEPLOYMENTS,
    DEVICES,
    EVENTS,
    LEASES,
    NAMESPACES,
    ApiError,
    FleetKubeEmulator,
    RunningKubeEmulator,
    embedded_kopf,
    max_per_window,
    min_interval,
    parse_api_path,
    serve_kube_emulator,
    start_kube_emulator,
)

GROUP = "/apis/fleet.nationtech.io/v1alpha1"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
REPO = Path(__file__).resolve().parents[2]


def deployments(namespace: str = "ns1", name: str | None = None, *, status: bool = False) -> str:
    path = f"{GROUP}/namespaces/{namespace}/deployments" + (f"/{name}" if name else "")
    return path + ("/status" if status else "")


def devices(name: str | None = None, *, status: bool = False) -> str:
    return f"{GROUP}/devices" + (f"/{name}" if name else "") + ("/status" if status else "")


def leases(namespace: str = "ns1", name: str | None = None) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases" + (f"/{name}" if name else "")


def deployment(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "fleet.nationtech.io/v1alpha1", "kind": "Deployment",
            "metadata": {"name": name}, "spec": spec}


@pytest.fixture
async def kube() -> AsyncIterator[RunningKubeEmulator]:
    async with start_kube_emulator() as running:
        yield running


@pytest.fixture
async def http(kube: RunningKubeEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(kube.url) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any = None, *,
               headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
               ) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    async with http.request(method, path, data=data, headers=hdrs, params=params) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def merge(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    return await call(http, "PATCH", path, body, headers=MERGE)


def since(obj: dict[str, Any]) -> dict[str, str]:
    return {"resourceVersion": obj["metadata"]["resourceVersion"]}


async def read_watch(http: aiohttp.ClientSession, path: str, count: int | None = None, *,
                     params: dict[str, str] | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Read a watch stream until ``count`` events arrived (or the server ended it)."""
    events: list[dict[str, Any]] = []
    query = {"watch": "true", **(params or {})}
    async with asyncio.timeout(timeout), http.get(path, params=query) as response:
        assert response.status == 200
        async for line in response.content:
            if line.strip():
                events.append(json.loads(line))
            if count is not None and len(events) >= count:
                break
    return events


def assert_status(body: Any, code: int, reason: str) -> None:
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason
    assert isinstance(body["message"], str)
    assert body["message"]


# ---------------------------------------------------------------------------- plain HTTP


def test_api_paths_are_parsed_like_the_api_server() -> None:
    ns_object = parse_api_path("/api/v1/namespaces/default")
    assert ns_object is not None
    assert (ns_object.plural, ns_object.name, ns_object.namespace) == \
        ("namespaces", "default", None)
    listing = parse_api_path("/api/v1/namespaces")
    assert listing is not None
    assert (listing.plural, listing.name) == ("namespaces", None)
    events = parse_api_path("/api/v1/namespaces/ns1/events/e1")
    assert events is not None
    assert (events.namespace, events.plural, events.name) == ("ns1", "events", "e1")
    status = parse_api_path(f"{GROUP}/namespaces/ns1/deployments/d1/status")
    assert status is not None
    assert (status.group, status.version, status.subresource) == \
        ("fleet.nationtech.io", "v1alpha1", "status")
    assert parse_api_path("/version") is None


async def test_discovery_serves_the_fleet_and_kopf_resources(http: aiohttp.ClientSession) -> None:
    _, fleet = await call(http, "GET", GROUP)
    by_name = {entry["name"]: entry for entry in fleet["resources"]}
    assert by_name["deployments"]["kind"] == "Deployment"
    assert by_name["deployments"]["namespaced"] is True
    assert by_name["devices"]["kind"] == "Device"
    assert by_name["devices"]["namespaced"] is False
    assert {"deployments/status", "devices/status"} <= set(by_name)
    verbs = {"list", "watch", "get", "patch", "create", "delete", "update"}
    assert verbs <= set(by_name["deployments"]["verbs"])
    _, core = await call(http, "GET", "/api/v1")
    assert core["groupVersion"] == "v1"
    core_names = {entry["name"]: entry for entry in core["resources"]}
    assert core_names["namespaces"]["namespaced"] is False
    assert core_names["events"]["namespaced"] is True
    _, coordination = await call(http, "GET", "/apis/coordination.k8s.io/v1")
    assert [entry["kind"] for entry in coordination["resources"]] == ["Lease"]
    _, groups = await call(http, "GET", "/apis")
    assert {"fleet.nationtech.io", "coordination.k8s.io"} <= {group["name"] for group in groups["groups"]}


async def test_create_stamps_metadata_and_get_and_list_return_it(http: aiohttp.ClientSession) -> None:
    body = deployment("web", replicas=1)
    body["status"] = {"phase": "ignored on create"}
    code, created = await call(http, "POST", deployments(), body)
    assert code == 201
    meta = created["metadata"]
    assert meta["name"] == "web"
    assert meta["namespace"] == "ns1"
    assert isinstance(meta["resourceVersion"], str)
    assert meta["resourceVersion"].isdigit()
    assert uuid.UUID(meta["uid"])
    assert TIMESTAMP.fullmatch(meta["creationTimestamp"])
    assert meta["generation"] == 1
    assert "status" not in created  # the status subresource: creates ignore it
    assert created["spec"] == {"replicas": 1}

    code, fetched = await call(http, "GET", deployments(name="web"))
    assert (code, fetched) == (200, created)
    code, fetched_status = await call(http, "GET", deployments(name="web", status=True))
    assert (code, fetched_status) == (200, created)

    code, second = await call(http, "POST", deployments(), deployment("api"))
    assert code == 201
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert second["metadata"]["uid"] != meta["uid"]

    code, listed = await call(http, "GET", deployments())
    assert code == 200
    assert listed["kind"] == "DeploymentList"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["api", "web"]
    assert int(listed["metadata"]["resourceVersion"]) >= int(second["metadata"]["resourceVersion"])
    _, everywhere = await call(http, "GET", f"{GROUP}/deployments")  # all namespaces
    assert len(everywhere["items"]) == 2

    # Cluster-scoped: no namespace in the URL nor in the stored object.
    code, device = await call(http, "POST", devices(), {"metadata": {"name": "dev-1", "namespace": "x"},
                                                         "spec": {"site": "lab"}})
    assert code == 201
    assert "namespace" not in device["metadata"]
    assert device["kind"] == "Device"
    assert (await call(http, "GET", devices("dev-1")))[1] == device
    assert (await call(http, "GET", f"{GROUP}/namespaces/ns1/devices/dev-1"))[0] == 404

    # generateName, as kopf uses for its events.
    code, event = await call(http, "POST", "/api/v1/namespaces/ns1/events",
                             {"metadata": {"generateName": "kopf-event-"}, "reason": "Test"})
    assert code == 201
    assert re.fullmatch(r"kopf-event-[a-z0-9]{5}", event["metadata"]["name"])


async def test_missing_objects_answer_404_with_a_status_body(http: aiohttp.ClientSession) -> None:
    code, body = await call(http, "GET", deployments(name="nope"))
    assert code == 404
    assert_status(body, 404, "NotFound")
    assert body["message"] == 'deployments.fleet.nationtech.io "nope" not found'
    assert body["details"] == {"name": "nope", "group": "fleet.nationtech.io", "kind": "deployments"}
    code, body = await merge(http, deployments(name="nope"), {"spec": {}})
    assert code == 404
    assert body["reason"] == "NotFound"
    code, body = await merge(http, deployments(name="nope", status=True), {"status": {}})
    assert code == 404
    assert body["reason"] == "NotFound"
    code, body = await call(http, "DELETE", deployments(name="nope"))
    assert code == 404
    assert body["reason"] == "NotFound"
    code, body = await call(http, "GET", "/apis/example.com/v1/namespaces/ns1/widgets/w")
    assert code == 404
    assert body["reason"] == "NotFound"
    code, body = await call(http, "GET", "/api/v1/namespaces/absent")
    assert code == 404
    assert body["message"] == 'namespaces "absent" not found'


async def test_creating_an_existing_name_answers_409_already_exists(http: aiohttp.ClientSession) -> None:
    assert (await call(http, "POST", deployments(), deployment("web")))[0] == 201
    code, body = await call(http, "POST", deployments(), deployment("web"))
    assert code == 409
    assert_status(body, 409, "AlreadyExists")
    assert body["message"] == 'deployments.fleet.nationtech.io "web" already exists'
    assert body["details"]["name"] == "web"
    # The same name in another namespace is another object.
    assert (await call(http, "POST", deployments("ns2"), deployment("web")))[0] == 201
    code, body = await call(http, "POST", deployments(), {"metadata": {"name": "Not_Valid"}})
    assert code == 422
    assert body["reason"] == "Invalid"
    code, body = await call(http, "POST", deployments(), {"metadata": {}})
    assert code == 422
    assert "name or generateName is required" in body["message"]


async def test_merge_patch_follows_rfc_7386_and_bumps_the_resource_version(
        http: aiohttp.ClientSession) -> None:
    spec = {"a": {"b": 1, "c": 2}, "items": [1, 2], "drop": "me"}
    _, created = await call(http, "POST", deployments(), deployment("web", **spec))
    rv0 = int(created["metadata"]["resourceVersion"])

    patch = {"metadata": {"labels": {"tier": "front"}},
             "spec": {"a": {"b": None, "d": 3}, "items": [3], "drop": None}}
    code, patched = await merge(http, deployments(name="web"), patch)
    assert code == 200
    assert patched["spec"] == {"a": {"c": 2, "d": 3}, "items": [3]}  # null deletes, lists replace
    assert patched["metadata"]["labels"] == {"tier": "front"}
    rv1 = int(patched["metadata"]["resourceVersion"])
    assert rv1 > rv0
    assert patched["metadata"]["uid"] == created["metadata"]["uid"]
    assert patched["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert (await call(http, "GET", deployments(name="web")))[1] == patched

    # The API server keeps the resourceVersion (and emits no event) when nothing changes.
    code, again = await merge(http, deployments(name="web"), patch)
    assert code == 200
    assert again["metadata"]["resourceVersion"] == str(rv1)

    # Server-managed metadata cannot be patched; a stale resourceVersion is a conflict.
    code, body = await merge(http, deployments(name="web"),
                            {"metadata": {"uid": "forged", "generation": 99}, "spec": {"x": 1}})
    assert code == 200
    assert body["metadata"]["uid"] == created["metadata"]["uid"]
    assert body["metadata"]["generation"] == 3
    code, body = await merge(http, deployments(name="web"),
                            {"metadata": {"resourceVersion": str(rv0)}, "spec": {"x": 2}})
    assert code == 409
    assert_status(body, 409, "Conflict")

    # Media types: JSON is not a patch; strategic merge only for built-in kinds.
    code, body = await call(http, "PATCH", deployments(name="web"), {"spec": {}})
    assert code == 415
    assert body["reason"] == "UnsupportedMediaType"
    strategic = {"Content-Type": "application/strategic-merge-patch+json"}
    assert (await call(http, "PATCH", deployments(name="web"), {"spec": {}}, headers=strategic))[0] == 415
    await call(http, "POST", leases(), {"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}})
    code, lease = await call(http, "PATCH", leases(name="leader"), {"spec": {"holderIdentity": "b"}},
                             headers=strategic)
    assert code == 200
    assert lease["spec"]["holderIdentity"] == "b"


async def test_the_status_subresource_isolates_status_writes(http: aiohttp.ClientSession) -> None:
    _, created = await call(http, "POST", deployments(), deployment("web", replicas=1))

    code, body = await merge(http, deployments(name="web", status=True),
                            {"status": {"phase": "Ready", "conditions": [{"type": "A"}]},
                             "spec": {"replicas": 5}, "metadata": {"labels": {"sneaky": "yes"}}})
    assert code == 200
    assert body["status"] == {"phase": "Ready", "conditions": [{"type": "A"}]}
    assert body["spec"] == {"replicas": 1}
    assert "labels" not in body["metadata"]
    assert body["metadata"]["generation"] == 1
    rv1 = int(body["metadata"]["resourceVersion"])
    assert rv1 > int(created["metadata"]["resourceVersion"])

    code, body = await merge(http, deployments(name="web", status=True),
                            {"status": {"conditions": None}})
    assert code == 200
    assert body["status"] == {"phase": "Ready"}

    # The main resource cannot touch status: a status-only patch there is a no-op.
    code, body = await merge(http, deployments(name="web"), {"status": {"phase": "Hacked"}})
    assert code == 200
    assert body["status"] == {"phase": "Ready"}
    assert int(body["metadata"]["resourceVersion"]) == rv1 + 1
    code, body = await merge(http, deployments(name="web"),
                            {"status": None, "spec": {"replicas": 2}})
    assert code == 200
    assert body["status"] == {"phase": "Ready"}
    assert body["spec"] == {"replicas": 2}

    # Without the subresource (Leases), status is part of the object.
    await call(http, "POST", leases(), {"metadata": {"name": "l"}, "spec": {}, "status": {"x": 1}})
    code, body = await merge(http, leases(name="l"), {"status": {"x": 2}})
    assert code == 200
    assert body["status"] == {"x": 2}
    assert (await merge(http, f"{leases(name='l')}/status", {}))[0] == 404


async def test_generation_grows_only_when_the_spec_changes(http: aiohttp.ClientSession) -> None:
    _, body = await call(http, "POST", deployments(), deployment("web", replicas=1))
    assert body["metadata"]["generation"] == 1
    rv = int(body["metadata"]["resourceVersion"])

    async def patch(path: str, change: dict[str, Any]) -> Any:
        nonlocal rv
        code, result = await merge(http, path, change)
        assert code == 200
        assert int(result["metadata"]["resourceVersion"]) > rv  # every change bumps it
        rv = int(result["metadata"]["resourceVersion"])
        return result

    async def generation_after(change: dict[str, Any], *, status: bool = False) -> int:
        return int((await patch(deployments(name="web", status=status), change))["metadata"]["generation"])

    assert await generation_after({"metadata": {"labels": {"a": "b"}}}) == 1
    assert await generation_after({"metadata": {"annotations": {"note": "x"}}}) == 1
    assert await generation_after({"status": {"phase": "Ready"}}, status=True) == 1
    assert await generation_after({"spec": {"replicas": 2}}) == 2
    assert await generation_after({"spec": {"image": "x"}}) == 3
    lease_body = {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}
    _, lease = await call(http, "POST", leases(), lease_body)
    assert lease["metadata"]["generation"] == 1
    lease["spec"]["holderIdentity"] = "b"
    code, replaced = await call(http, "PUT", leases(name="l"), lease)
    assert code == 200
    assert replaced["metadata"]["generation"] == 2


async def test_json_patch_with_a_resource_version_test(http: aiohttp.ClientSession) -> None:
    _, created = await call(http, "POST", deployments(), deployment("web", ports=[80]))
    rv = created["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
           {"op": "add", "path": "/metadata/finalizers", "value": ["fleet.nationtech.io/a"]},
           {"op": "add", "path": "/metadata/finalizers/-", "value": "fleet.nationtech.io/b"},
           {"op": "add", "path": "/spec/ports/0", "value": 443},
           {"op": "copy", "from": "/spec/ports", "path": "/spec/copied"}]
    code, body = await call(http, "PATCH", deployments(name="web"), ops, headers=JSON_PATCH)
    assert code == 200
    assert body["metadata"]["finalizers"] == ["fleet.nationtech.io/a", "fleet.nationtech.io/b"]
    assert body["spec"] == {"ports": [443, 80], "copied": [443, 80]}

    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
             {"op": "remove", "path": "/metadata/finalizers/0"}]
    code, status = await call(http, "PATCH", deployments(name="web"), stale, headers=JSON_PATCH)
    assert code == 422
    assert_status(status, 422, "Invalid")  # what kopf expects to retry its finalizer patches

    current = body["metadata"]["resourceVersion"]
    fresh = [{"op": "test", "path": "/metadata/resourceVersion", "value": current},
             {"op": "remove", "path": "/metadata/finalizers/0"},
             {"op": "replace", "path": "/spec/ports", "value": []},
             {"op": "move", "from": "/spec/copied", "path": "/spec/moved"}]
    code, body = await call(http, "PATCH", deployments(name="web"), fresh, headers=JSON_PATCH)
    assert code == 200
    assert body["metadata"]["finalizers"] == ["fleet.nationtech.io/b"]
    assert body["spec"] == {"ports": [], "moved": [443, 80]}
    bad = [{"op": "remove", "path": "/spec/absent"}]
    assert (await call(http, "PATCH", deployments(name="web"), bad, headers=JSON_PATCH))[0] == 422


async def test_put_replaces_with_optimistic_concurrency(http: aiohttp.ClientSession) -> None:
    _, lease = await call(http, "POST", leases(), {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
    stale = json.loads(json.dumps(lease))
    lease["spec"] = {"holderIdentity": "b"}
    code, replaced = await call(http, "PUT", leases(name="leader"), lease)
    assert code == 200
    assert replaced["spec"] == {"holderIdentity": "b"}
    assert int(replaced["metadata"]["resourceVersion"]) > int(lease["metadata"]["resourceVersion"])

    stale["spec"]["holderIdentity"] = "c"
    code, body = await call(http, "PUT", leases(name="leader"), stale)
    assert code == 409
    assert_status(body, 409, "Conflict")
    assert "the object has been modified" in body["message"]
    assert (await call(http, "GET", leases(name="leader")))[1]["spec"]["holderIdentity"] == "b"
    code, body = await call(http, "PUT", leases(name="leader"), {"metadata": {"name": "other"}, "spec": {}})
    assert code == 400
    assert body["reason"] == "BadRequest"


async def test_finalizers_hold_the_deletion_until_released(http: aiohttp.ClientSession) -> None:
    body = deployment("web")
    body["metadata"]["finalizers"] = ["fleet.nationtech.io/cleanup"]
    _, created = await call(http, "POST", deployments(), body)
    rv0 = created["metadata"]["resourceVersion"]

    code, marked = await call(http, "DELETE", deployments(name="web"))
    assert code == 200
    assert TIMESTAMP.fullmatch(marked["metadata"]["deletionTimestamp"])
    assert marked["metadata"]["finalizers"] == ["fleet.nationtech.io/cleanup"]
    code, still = await call(http, "GET", deployments(name="web"))
    assert code == 200
    assert still == marked
    code, again = await call(http, "DELETE", deployments(name="web"))  # already deleting: unchanged
    assert code == 200
    assert again == marked

    code, refused = await merge(http, deployments(name="web"),
                               {"metadata": {"finalizers": ["fleet.nationtech.io/cleanup", "late"]}})
    assert code == 422
    assert "no new finalizers" in refused["message"]
    code, status_write = await merge(http, deployments(name="web", status=True),
                                    {"status": {"phase": "Terminating"}})
    assert code == 200
    assert status_write["metadata"]["finalizers"] == ["fleet.nationtech.io/cleanup"]

    code, released = await merge(http, deployments(name="web"), {"metadata": {"finalizers": None}})
    assert code == 200
    assert "finalizers" not in released["metadata"]
    assert (await call(http, "GET", deployments(name="web")))[0] == 404

    # Watchers (resumed from the creation's resourceVersion) saw MODIFIED, MODIFIED, then DELETED.
    events = await read_watch(http, deployments(), 3, params={"resourceVersion": rv0})
    assert [event["type"] for event in events] == ["MODIFIED", "MODIFIED", "DELETED"]
    assert events[0]["object"]["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    assert events[2]["object"]["metadata"]["name"] == "web"

    # Without finalizers: gone at once, answered with a Success Status.
    _, plain = await call(http, "POST", deployments(), deployment("plain"))
    code, body = await call(http, "DELETE", deployments(name="plain"))
    assert code == 200
    assert body["kind"] == "Status"
    assert body["status"] == "Success"
    assert body["details"]["uid"] == plain["metadata"]["uid"]
    assert (await call(http, "GET", deployments(name="plain")))[0] == 404
    events = await read_watch(http, deployments(), 1, params=since(plain))
    assert events[0]["type"] == "DELETED"
    # Re-creating a deleted name starts a new object.
    code, reborn = await call(http, "POST", deployments(), deployment("plain"))
    assert code == 201
    assert reborn["metadata"]["uid"] != plain["metadata"]["uid"]


async def test_live_watches_with_both_flag_spellings(http: aiohttp.ClientSession, kube: RunningKubeEmulator,
                                                     ) -> None:
    await call(http, "POST", deployments(), deployment("existing"))

    # kopf sends watch=true; kubernetes_asyncio sends watch=True.
    for flag in ("true", "True", "1"):
        watcher = asyncio.create_task(read_watch(http, deployments(), 4, params={"watch": flag}))
        await kube.emulator.wait_until(lambda: kube.emulator.active_watches == 1)
        name = f"new-{flag.lower()}"
        await call(http, "POST", deployments(), deployment(name))
        await merge(http, deployments(name=name), {"spec": {"x": 1}})
        await call(http, "DELETE", deployments(name=name))
        events = await watcher
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "existing"), ("ADDED", name), ("MODIFIED", name), ("DELETED", name)]
        assert events[2]["object"]["spec"] == {"x": 1}
        await kube.emulator.wait_until(lambda: kube.emulator.active_watches == 0)

    # The server ends a watch after timeoutSeconds, as kopf's server_timeout expects.
    started = time.monotonic()
    events = await read_watch(http, deployments(), params={"timeoutSeconds": "1"})
    assert 0.9 <= time.monotonic() - started < 4
    assert [e["type"] for e in events] == ["ADDED"]

    # A single object's watch (fieldSelector) and the initial-events BOOKMARK (sendInitialEvents).
    events = await read_watch(http, deployments(), 2, params={
        "fieldSelector": "metadata.name=existing", "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"})
    assert events[0]["type"] == "ADDED"
    assert events[0]["object"]["metadata"]["name"] == "existing"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_watch_resumption_expires_beyond_the_history() -> None:
    async with start_kube_emulator(FleetKubeEmulator(watch_history_limit=4)) as kube, \
            aiohttp.ClientSession(kube.url) as http:
        _, first = await call(http, "POST", deployments(), deployment("d0"))
        for i in range(1, 8):
            await call(http, "POST", deployments(), deployment(f"d{i}"))
        events = await read_watch(http, deployments(), 1, params=since(first))
        assert events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410
        assert events[0]["object"]["reason"] == "Expired"
        listed = (await call(http, "GET", deployments()))[1]
        events = await read_watch(http, deployments(), params={
            "resourceVersion": listed["metadata"]["resourceVersion"], "timeoutSeconds": "1"})
        assert events == []  # nothing happened since the listing


async def test_label_selectors_on_lists_and_watches(http: aiohttp.ClientSession) -> None:
    for name, labels in [("a", {"app": "web", "tier": "front"}), ("b", {"app": "web"}),
                         ("c", {"app": "db", "tier": "back"}), ("d", {})]:
        body = deployment(name)
        body["metadata"]["labels"] = labels
        await call(http, "POST", deployments(), body)

    async def names(selector: str) -> list[str]:
        code, listed = await call(http, "GET", deployments(), params={"labelSelector": selector})
        assert code == 200
        return [item["metadata"]["name"] for item in listed["items"]]

    assert await names("app=web") == ["a", "b"]
    assert await names("app==web,tier=front") == ["a"]
    assert await names("app!=web") == ["c", "d"]
    assert await names("tier") == ["a", "c"]
    assert await names("!tier") == ["b", "d"]
    assert await names("app in (web, db),tier notin (front)") == ["b", "c"]
    assert await names("") == ["a", "b", "c", "d"]
    code, body = await call(http, "GET", deployments(), params={"labelSelector": "app in (web"})
    assert code == 400
    assert body["reason"] == "BadRequest"

    # A watcher sees objects entering (ADDED) and leaving (DELETED) its selection.
    _, listed = await call(http, "GET", deployments())
    rv = listed["metadata"]["resourceVersion"]
    await merge(http, deployments(name="d"), {"metadata": {"labels": {"app": "web"}}})
    await merge(http, deployments(name="a"), {"metadata": {"labels": {"app": "api"}}})
    await merge(http, deployments(name="c"), {"spec": {"x": 1}})  # never selected
    await merge(http, deployments(name="b"), {"spec": {"x": 1}})
    query = {"resourceVersion": rv, "labelSelector": "app=web"}
    events = await read_watch(http, deployments(), 3, params=query)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "d"), ("DELETED", "a"), ("MODIFIED", "b")]


async def test_lists_paginate_with_limit_and_continue(http: aiohttp.ClientSession) -> None:
    for i in range(5):
        await call(http, "POST", deployments(), deployment(f"d{i}"))
    seen, params, versions = [], {"limit": "2"}, set()
    while True:
        _, page = await call(http, "GET", deployments(), params=params)
        seen += [item["metadata"]["name"] for item in page["items"]]
        versions.add(page["metadata"]["resourceVersion"])
        if not page["metadata"].get("continue"):
            break
        assert page["metadata"]["remainingItemCount"] == 5 - len(seen)
        params = {"limit": "2", "continue": page["metadata"]["continue"]}
    assert seen == ["d0", "d1", "d2", "d3", "d4"]
    assert len(versions) == 1


async def test_namespaces_are_objects(http: aiohttp.ClientSession) -> None:
    _, listed = await call(http, "GET", "/api/v1/namespaces")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["default"]
    await call(http, "POST", deployments("team-a"), deployment("web"))  # auto-creates its namespace
    code, namespace = await call(http, "GET", "/api/v1/namespaces/team-a")
    assert code == 200
    assert namespace["kind"] == "Namespace"
    assert namespace["status"] == {"phase": "Active"}
    _, events = await call(http, "GET", "/api/v1/namespaces/team-a/events")
    assert events["items"] == []

    strict = FleetKubeEmulator(auto_create_namespaces=False)
    with pytest.raises(ApiError) as caught:
        strict.create_object(DEPLOYMENTS, deployment("web"), namespace="missing")
    assert caught.value.code == 404
    assert caught.value.message == 'namespaces "missing" not found'


async def test_the_write_log_counts_writes_per_object_and_subresource(
        http: aiohttp.ClientSession, kube: RunningKubeEmulator) -> None:
    await call(http, "POST", deployments(), deployment("web"))
    for phase in ("A", "B", "C"):
        await merge(http, deployments(name="web", status=True), {"status": {"phase": phase}})
        await asyncio.sleep(0.2)
    await merge(http, deployments(name="web"), {"spec": {"x": 1}})
    await call(http, "GET", deployments(name="web"))  # reads are not logged
    await call(http, "DELETE", deployments(name="web"))

    log = kube.emulator.write_log
    assert [(r.method, r.subresource, r.status) for r in log] == [
        ("POST", None, 201), ("PATCH", "status", 200), ("PATCH", "status", 200), ("PATCH", "status", 200),
        ("PATCH", None, 200), ("DELETE", None, 200)]
    assert log[0].name == "web"
    assert log[0].namespace == "ns1"
    assert log[0].resource == DEPLOYMENTS
    assert log[1].path == deployments(name="web", status=True)
    assert log[1].content_type == "application/merge-patch+json"
    assert log[1].data == {"status": {"phase": "A"}}

    status_patches = kube.emulator.writes(method="PATCH", resource=DEPLOYMENTS, namespace="ns1", name="web",
                                          subresource="status")
    assert len(status_patches) == 3
    assert len(kube.emulator.writes(method="patch", subresource=None)) == 1
    assert len(kube.emulator.writes(resource="deployments")) == 6
    # "At most one status patch per second" is asserted like this:
    gap = min_interval(status_patches)
    assert gap is not None
    assert gap >= 0.15
    assert max_per_window(status_patches, 0.15) == 1
    assert max_per_window(status_patches, 5.0) == 3
    assert min_interval(status_patches[:1]) is None


async def test_user_reactions_inject_faults_before_the_emulation(
        http: aiohttp.ClientSession, kube: RunningKubeEmulator) -> None:
    await call(http, "POST", deployments(), deployment("web"))
    kube.emulator[kmock.method.PATCH, kmock.subresource("status")] << 503
    code, _ = await merge(http, deployments(name="web", status=True), {"status": {"x": 1}})
    assert code == 503
    assert "status" not in (kube.emulator.get_object(DEPLOYMENTS, "web", namespace="ns1") or {})
    code, body = await merge(http, deployments(name="web"), {"spec": {"x": 1}})
    assert code == 200
    assert body["spec"] == {"x": 1}
    assert [r.status for r in kube.emulator.writes(method="PATCH")] == [503, 200]


async def test_the_python_api_shares_state_and_watchers(http: aiohttp.ClientSession,
                                                        kube: RunningKubeEmulator) -> None:
    emulator = kube.emulator
    created = emulator.create_object("deployments", deployment("web", replicas=1), namespace="ns1")
    assert created["metadata"]["generation"] == 1
    assert (await call(http, "GET", deployments(name="web")))[1] == created
    emulator.patch_object(DEPLOYMENTS, "web", {"status": {"phase": "Ready"}}, namespace="ns1", status=True)
    watcher = asyncio.create_task(read_watch(http, devices(), 2))
    await emulator.wait_until(lambda: emulator.active_watches == 1)
    emulator.create_object(DEVICES, {"metadata": {"name": "dev-1", "labels": {"site": "lab"}}})
    emulator.delete_object("devices.v1alpha1.fleet.nationtech.io", "dev-1")
    assert [e["type"] for e in await watcher] == ["ADDED", "DELETED"]
    assert emulator.get_object(DEVICES, "dev-1") is None
    assert [obj["metadata"]["name"] for obj in emulator.list_objects(NAMESPACES)] == ["default", "ns1"]
    assert emulator.list_objects(DEPLOYMENTS, label_selector="app") == []
    assert emulator.write_log == []  # direct calls are not requests

    async def later() -> None:
        await asyncio.sleep(0.1)
        await merge(http, deployments(name="web"), {"spec": {"replicas": 3}})

    patcher = asyncio.create_task(later())
    def resized() -> dict[str, Any] | None:
        obj = emulator.get_object(DEPLOYMENTS, "web", namespace="ns1")
        return obj if obj is not None and obj["spec"]["replicas"] == 3 else None

    found = await emulator.wait_until(resized, timeout=5)
    await patcher
    assert found["metadata"]["generation"] == 2
    # kmock's own view of the objects keeps the history of versions.
    history = emulator.objects[DEPLOYMENTS, "ns1", "web"].history
    assert [version["spec"]["replicas"] for version in history if version is not None] == [1, 1, 3]
    with pytest.raises(TimeoutError):
        await emulator.wait_until(lambda: False, timeout=0.2)


def test_the_crd_manifests_match_the_default_registrations() -> None:
    emulator = FleetKubeEmulator(register_defaults=False, initial_namespaces=())
    registered = []
    for manifest in sorted((REPO / "manifests" / "crds").glob("*.yaml")):
        registered += emulator.register_crd_file(manifest)
    assert set(registered) == {DEPLOYMENTS, DEVICES}
    defaults = FleetKubeEmulator()
    for resource in (DEPLOYMENTS, DEVICES):
        mine, theirs = defaults.resources[resource], emulator.resources[resource]
        assert (mine.kind, mine.namespaced, mine.subresources) == (theirs.kind, theirs.namespaced,
                                                                   theirs.subresources)
    assert {EVENTS, LEASES, NAMESPACES} <= set(defaults.resources)


def test_a_sync_server_for_session_scoped_fixtures() -> None:
    emulator = FleetKubeEmulator()
    with serve_kube_emulator(emulator) as running:
        assert running.url.startswith("http://127.0.0.1:")
        emulator.create_object(DEVICES, {"metadata": {"name": "dev-1"}})

        async def fetch() -> tuple[int, Any]:
            async with aiohttp.ClientSession(running.url) as session:
                return await call(session, "GET", devices("dev-1"))

        code, body = asyncio.run(fetch())
        assert code == 200
        assert body["metadata"]["name"] == "dev-1"


async def test_kubernetes_asyncio_works_against_it(kube: RunningKubeEmulator) -> None:
    k8s = pytest.importorskip("kubernetes_asyncio")
    from kubernetes_asyncio.watch import Watch

    merge_type = "application/merge-patch+json"
    async with k8s.client.ApiClient(k8s.client.Configuration(host=kube.url)) as api:
        custom = k8s.client.CustomObjectsApi(api)
        created = await custom.create_namespaced_custom_object(
            "fleet.nationtech.io", "v1alpha1", "ns1", "deployments", deployment("web", replicas=1))
        assert created["metadata"]["generation"] == 1  # a 201 with the object, not None
        patched = await custom.patch_namespaced_custom_object_status(
            "fleet.nationtech.io", "v1alpha1", "ns1", "deployments", "web", {"status": {"phase": "Ready"}},
            _content_type=merge_type)
        assert patched["status"] == {"phase": "Ready"}
        with pytest.raises(k8s.client.ApiException) as missing:
            await custom.get_namespaced_custom_object(
                "fleet.nationtech.io", "v1alpha1", "ns1", "deployments", "absent")
        assert missing.value.status == 404
        watch = Watch()  # sends watch=True
        seen = [(event["type"], event["object"]["metadata"]["name"]) async for event in watch.stream(
            custom.list_namespaced_custom_object, "fleet.nationtech.io", "v1alpha1", "ns1", "deployments",
            timeout_seconds=1)]
        assert seen == [("ADDED", "web")]

        coordination = k8s.client.CoordinationV1Api(api)
        lease = await coordination.create_namespaced_lease("ns1", k8s.client.V1Lease(
            metadata=k8s.client.V1ObjectMeta(name="leader"),
            spec=k8s.client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15)))
        lease.spec.holder_identity = "b"
        replaced = await coordination.replace_namespaced_lease("leader", "ns1", lease)
        assert replaced.spec.holder_identity == "b"
        with pytest.raises(k8s.client.ApiException) as stale:
            await coordination.replace_namespaced_lease("leader", "ns1", lease)
        assert stale.value.status == 409
        namespaces = await k8s.client.CoreV1Api(api).list_namespace()
        assert [ns.metadata.name for ns in namespaces.items] == ["default", "ns1"]


# ---------------------------------------------------------------------------- embedded kopf


async def test_an_embedded_kopf_operator_runs_its_handlers(
        http: aiohttp.ClientSession, kube: RunningKubeEmulator) -> None:
    import kopf

    finalizer = "fleet.nationtech.io/test-cleanup"
    calls: list[tuple[str, str]] = []
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kube.kopf_connection_info()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = finalizer
        settings.watching.server_timeout = 1  # the server ends each watch; kopf resumes from its rv
        settings.watching.client_timeout = 5
        settings.watching.reconnect_backoff = 0.1
        settings.networking.request_timeout = 5
        settings.posting.level = logging.INFO

    @kopf.on.create("fleet.nationtech.io", "v1alpha1", "deployments", registry=registry, id="accept")
    async def on_create(body: kopf.Body, spec: kopf.Spec, name: str, patch: kopf.Patch, **_: Any) -> None:
        calls.append(("create", name))
        patch.status["phase"] = "Accepted"
        patch.status["observedReplicas"] = spec.get("replicas")
        kopf.info(body, reason="Accepted", message=f"deployment {name} accepted")

    @kopf.on.update("fleet.nationtech.io", "v1alpha1", "deployments", field="spec", registry=registry,
                    id="resize")
    async def on_update(new: Any, name: str, patch: kopf.Patch, **_: Any) -> None:
        calls.append(("update", name))
        patch.status["observedReplicas"] = new.get("replicas")

    @kopf.on.delete("fleet.nationtech.io", "v1alpha1", "deployments", registry=registry, id="cleanup")
    async def on_delete(name: str, **_: Any) -> None:
        calls.append(("delete", name))

    @kopf.on.create("fleet.nationtech.io", "v1alpha1", "devices", registry=registry, id="device")
    async def on_device(name: str, patch: kopf.Patch, **_: Any) -> None:
        calls.append(("device", name))
        patch.status["seen"] = True

    emulator = kube.emulator

    def deployment_where(check: Any) -> Any:
        obj = emulator.get_object(DEPLOYMENTS, "web", namespace="ns1")
        return obj if obj is not None and check(obj) else None

    async with embedded_kopf(registry) as operator:
        code, _ = await call(http, "POST", deployments(), deployment("web", replicas=1))
        assert code == 201
        obj = await emulator.wait_until(lambda: deployment_where(
            lambda o: o.get("status", {}).get("phase") == "Accepted"))
        assert obj["status"]["observedReplicas"] == 1
        assert finalizer in obj["metadata"]["finalizers"]  # added by kopf (JSON-patch with a test op)

        await asyncio.sleep(1.5)  # across a server-side watch timeout: kopf reconnects and resumes
        code, _ = await merge(http, deployments(name="web"), {"spec": {"replicas": 3}})
        assert code == 200
        obj = await emulator.wait_until(lambda: deployment_where(
            lambda o: o.get("status", {}).get("observedReplicas") == 3))
        assert obj["metadata"]["generation"] == 2
        assert obj["status"]["phase"] == "Accepted"

        code, _ = await call(http, "POST", devices(), {"metadata": {"name": "dev-1"}, "spec": {}})
        assert code == 201
        device = await emulator.wait_until(
            lambda: (d := emulator.get_object(DEVICES, "dev-1")) and d.get("status", {}).get("seen") and d)
        assert "finalizers" not in device["metadata"]  # no delete handler for devices: no finalizer

        code, marked = await call(http, "DELETE", deployments(name="web"))
        assert code == 200
        assert "deletionTimestamp" in marked["metadata"]
        await emulator.wait_until(lambda: emulator.get_object(DEPLOYMENTS, "web", namespace="ns1") is None)
        assert not operator.done()

    assert operator.done()
    assert operator.exception() is None
    assert calls == [("create", "web"), ("update", "web"), ("device", "dev-1"), ("delete", "web")]

    # Everything was observed through the emulator: status went to the subresource, the main
    # resource was never asked to change status, the finalizer came and went, events were posted.
    status_writes = emulator.writes(method="PATCH", resource=DEPLOYMENTS, name="web", subresource="status")
    assert status_writes
    assert all(w.status == 200 for w in status_writes)
    main_writes = emulator.writes(method="PATCH", resource=DEPLOYMENTS, name="web", subresource=None)
    assert not any(isinstance(w.data, dict) and "status" in w.data for w in main_writes)
    assert any(w.content_type == "application/json-patch+json" for w in main_writes)
    changes = [(e.type, bool(e.obj["metadata"].get("deletionTimestamp")))
               for e in emulator.watch_events if e.resource == DEPLOYMENTS]
    assert changes[0] == ("ADDED", False)
    assert changes[-2:] == [("MODIFIED", True), ("DELETED", True)]
    posted = emulator.list_objects(EVENTS, namespace="ns1")
    assert any(e["reason"] == "Accepted" and e["involvedObject"]["name"] == "web" for e in posted)
    assert all(w.status is not None and w.status < 400 for w in emulator.write_log)
    assert emulator.errors == []  # nothing failed on the server side
