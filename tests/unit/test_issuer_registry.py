"""The local issuer's registry: the document (pure), the atomic private file, and persistence
of what the management API changes (restart = a new issuer loaded from the file)."""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest

from harmony_fleet.contracts.identity import ZITADEL_API_SCOPE
from harmony_fleet.localstack import files
from harmony_fleet.localstack import issuer as issuer_module
from harmony_fleet.localstack.files import write_private_file
from harmony_fleet.localstack.issuer import (
    OidcIssuer,
    RegistryError,
    issuer_from_document,
    load_registry,
    registry_document,
)

# ----------------------------------------------------------------------------- write_private_file


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_private_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_private_file(tmp_path / "sub" / "secret", "s3cret")
    finally:
        os.umask(old)
    assert path.read_text() == "s3cret"
    assert mode(path) == 0o600


def test_private_file_replaces_a_readable_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    write_private_file(path, "new")
    assert (path.read_text(), mode(path)) == ("new", 0o600)
    assert os.listdir(tmp_path) == ["secret"]  # no temporary file left behind


def test_a_failed_write_keeps_the_old_content(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_private_file(tmp_path / "registry.json", '{"old": true}')

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_private_file(path, '{"new": true}')
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["registry.json"]


CRASH_MID_WRITE = """
import os, sys, time
from pathlib import Path
from harmony_fleet.contracts.identity import ZITADEL_API_SCOPE
from harmony_fleet.localstack import files

real_fsync = os.fsync

def fsync_then_hang(fd):
    real_fsync(fd)
    print("temporary file written", flush=True)
    time.sleep(60)  # killed here: written, not yet renamed

files.os.fsync = fsync_then_hang
files.write_private_file(Path(sys.argv[1]), '{"new": "' + 'x' * 100000 + '"}')
"""


def test_kill_9_mid_write_loses_nothing(tmp_path: Path) -> None:
    path = write_private_file(tmp_path / "registry.json", '{"old": true}')
    child = subprocess.Popen([sys.executable, "-c", CRASH_MID_WRITE, str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "temporary file written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert json.loads(path.read_text()) == {"old": True}
    assert mode(path) == 0o600


# ----------------------------------------------------------------------------- the document


def populated(registry: Path | None = None) -> OidcIssuer:
    issuer = OidcIssuer(project_id="p-1", token_lifetime_s=42, port=4567, registry=registry)
    user = issuer.create_machine_user("dev-1")
    issuer.set_metadata(user.user_id, "device_id", "dev-1")
    issuer.grant_roles(user.user_id, ["fleet-device", "extra"])
    issuer.add_key(user.user_id)
    issuer.add_key(user.user_id)
    issuer.create_machine_user("bare")
    issuer.rotate_signing_key()
    return issuer


def test_document_round_trip() -> None:
    issuer = populated()
    doc = json.loads(json.dumps(registry_document(issuer)))
    restored = issuer_from_document(doc)
    assert registry_document(restored) == registry_document(issuer)
    assert restored.registry is None
    # the restored issuer signs with the same key: a token it issues verifies with the
    # original's JWKS key for that kid (what the callout has cached across a restart)
    user = next(u for u in restored.users.values() if u.user_name == "dev-1")
    token = restored.issue_token(user)
    assert jwt.get_unverified_header(token)["kid"] == issuer._kid
    claims = jwt.decode(token, issuer._signing_key.public_key(), algorithms=["RS256"],
                        audience="p-1")
    assert claims["urn:zitadel:iam:user:metadata"] == {
        "device_id": base64.b64encode(b"dev-1").decode()}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return registry_document(populated())


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("users"), "missing 'users'"),
    (lambda d: d.pop("signing_key"), "missing 'signing_key'"),
    (lambda d: d.update(users={"a": 1}), "not an issuer registry"),
    (lambda d: d.update(port="http"), "ValueError"),
    (lambda d: d.update(signing_key="-----BEGIN PRIVATE KEY-----\nAAAA\n"), "ValueError"),
    (lambda d: d["users"][0].pop("keys"), "missing 'keys'"),
    (lambda d: d["users"][0].update(metadata=["x"]), "AttributeError"),
])
def test_broken_documents_are_refused_clearly(document: dict[str, Any], mutate: Any,
                                              message: str) -> None:
    doc = copy.deepcopy(document)
    secret = doc["signing_key"]
    mutate(doc)
    with pytest.raises(RegistryError, match=message) as info:
        issuer_from_document(doc)
    assert "PRIVATE KEY" not in str(info.value)
    assert secret not in str(info.value)


@pytest.mark.parametrize("doc", [None, [], "text", 3])
def test_documents_that_are_not_objects(doc: Any) -> None:
    with pytest.raises(RegistryError, match="not an issuer registry"):
        issuer_from_document(doc)


def test_load_registry_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{torn")
    with pytest.raises(RegistryError, match=f"{bad} is not JSON"):
        load_registry(bad)
    bad.write_text("{}")
    with pytest.raises(RegistryError, match=f"{bad}: not an issuer registry"):
        load_registry(bad)


# ----------------------------------------------------------------------------- persistence


def test_every_change_is_saved_before_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    issuer = OidcIssuer(project_id="p-1", registry=path)

    def on_disk() -> dict[str, Any]:
        return registry_document(load_registry(path))

    user = issuer.create_machine_user("dev-1")
    assert [u["user_name"] for u in on_disk()["users"]] == ["dev-1"]
    issuer.set_metadata(user.user_id, "device_id", "dev-1")
    assert on_disk()["users"][0]["metadata"] == {"device_id": "dev-1"}
    issuer.grant_roles(user.user_id, ["fleet-device"])
    assert [g["roles"] for g in on_disk()["users"][0]["grants"].values()] == [["fleet-device"]]
    key = issuer.add_key(user.user_id)
    assert list(on_disk()["users"][0]["keys"]) == [key["keyId"]]
    old_kid = issuer._kid
    issuer.rotate_signing_key()
    assert on_disk()["kid"] == issuer._kid
    assert [r["kid"] for r in on_disk()["retired_signing_keys"]] == [old_kid]
    assert on_disk() == registry_document(issuer)
    assert mode(path) == 0o600


def test_in_memory_issuer_writes_nothing(tmp_path: Path) -> None:
    populated()
    assert os.listdir(tmp_path) == []


def test_load_registry_persists_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    issuer_module.save_registry(populated(), path)
    before = path.read_text()
    twin = load_registry(path)  # a reader (tests mint tokens with it): never writes
    twin.create_machine_user("not-saved")
    assert path.read_text() == before
    owner = load_registry(path, persist=True)
    owner.create_machine_user("saved")
    assert "saved" in [u.user_name for u in load_registry(path).users.values()]


def test_a_change_that_cannot_be_saved_is_undone(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "registry.json"
    issuer = populated(registry=path)
    saved = path.read_text()
    expected = registry_document(issuer)
    user_id = next(u.user_id for u in issuer.users.values() if u.user_name == "dev-1")

    def disk_full(path: Path, text: str) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(issuer_module, "write_private_file", disk_full)
    changes = [
        lambda: issuer.create_machine_user("lost"),
        lambda: issuer.set_metadata(user_id, "device_id", "changed"),
        lambda: issuer.grant_roles(user_id, ["fleet-admin"]),
        lambda: issuer.add_key(user_id),
        issuer.rotate_signing_key,
    ]
    for change in changes:
        with pytest.raises(RegistryError, match=r"not saved .*No space.*undone"):
            change()
        assert registry_document(issuer) == expected
    assert path.read_text() == saved


# ----------------------------------------------------------------------------- over HTTP


def call(issuer: OidcIssuer, token: str | None, path: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{issuer.url}{path}", data=body, method="POST",
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    path = tmp_path / "registry.json"
    issuer = OidcIssuer(project_id="p-1", registry=path)
    admin = issuer.create_machine_user("admin")
    issuer.add_membership(admin.user_id, "ORG_OWNER")
    await issuer.start()
    try:
        yield issuer, issuer.issue_token(admin, scopes=["openid", ZITADEL_API_SCOPE])
    finally:
        await issuer.stop()


async def test_management_api_changes_survive_a_restart(served: Any) -> None:
    import asyncio

    issuer, token = served

    def enroll() -> dict[str, Any]:
        _, created = call(issuer, token, "/management/v1/users/machine", b'{"userName": "d-1"}')
        user_id = created["userId"]
        call(issuer, token, f"/management/v1/users/{user_id}/metadata/device_id",
             json.dumps({"value": base64.b64encode(b"d-1").decode()}).encode())
        call(issuer, token, f"/management/v1/users/{user_id}/grants",
             b'{"projectId": "p-1", "roleKeys": ["fleet-device"]}')
        _, key = call(issuer, token, f"/management/v1/users/{user_id}/keys",
                      b'{"type": "KEY_TYPE_JSON"}')
        return dict(json.loads(base64.b64decode(key["keyDetails"])))

    key = await asyncio.to_thread(enroll)
    assert issuer.registry is not None
    restarted = load_registry(issuer.registry)
    user = restarted.users[key["userId"]]
    assert (user.metadata, user.roles) == ({"device_id": "d-1"}, {"fleet-device"})
    assert restarted._verify_assertion(_assertion(key, issuer.url)) is user


def _assertion(key: dict[str, Any], audience: str) -> str:
    from harmony_fleet.bus.tokens import MachineKey

    return MachineKey(key["keyId"], key["key"], key["userId"]).assertion(audience)


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/management/v1/users/machine", b"not json", 400, "JSON object"),
    ("/management/v1/users/machine", b"[1]", 400, "JSON object"),
    ("/management/v1/users/machine", b'{"userName": 7}', 400, "userName"),
    ("/management/v1/users/{user}/metadata/device_id", b'{"value": "%%%"}', 400, "base64"),
    ("/management/v1/users/{user}/metadata/device_id", b"{}", 400, "base64"),
    ("/management/v1/users/{user}/grants", b'{"projectId": "p-1", "roleKeys": "x"}', 400,
     "roleKeys"),
    ("/management/v1/users/404/grants", b'{"projectId": "p-1"}', 404, "User could not be found"),
])
async def test_bad_management_requests_get_clear_errors(
        served: Any, path: str, body: bytes, status: int, message: str) -> None:
    import asyncio

    issuer, token = served
    user = next(iter(issuer.users))
    before = registry_document(issuer)
    code, answer = await asyncio.to_thread(call, issuer, token, path.format(user=user), body)
    assert (code, message in answer["message"]) == (status, True), answer
    assert registry_document(issuer) == before


async def test_unsaved_change_is_refused_over_http(served: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    issuer, token = served
    before = registry_document(issuer)

    def disk_full(path: Path, text: str) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(issuer_module, "write_private_file", disk_full)
    code, answer = await asyncio.to_thread(call, issuer, token, "/management/v1/users/machine",
                                           b'{"userName": "lost"}')
    assert code == 503
    assert "not saved" in answer["message"]
    assert registry_document(issuer) == before


async def test_unknown_users_and_keys_are_named_in_the_refusal(served: Any) -> None:
    issuer, _ = served
    user = next(iter(issuer.users.values()))
    key = issuer.add_key(user.user_id)
    stranger = {**key, "userId": "999"}
    from harmony_fleet.localstack.issuer import _GrantRefused

    with pytest.raises(_GrantRefused, match="unknown machine user"):
        issuer._verify_assertion(_assertion(stranger, issuer.url))
    with pytest.raises(_GrantRefused, match="unknown machine key"):
        issuer._verify_assertion(_assertion({**key, "keyId": "1"}, issuer.url))
    with pytest.raises(_GrantRefused, match="InvalidAudienceError"):
        issuer._verify_assertion(_assertion(key, "http://elsewhere"))
    assert issuer._verify_assertion(_assertion(key, issuer.url)) is user
