"""The zitadel role against the local issuer (which speaks Zitadel's management API v1) and the
emulator, as part of the session's one site.yml converge: Zitadel's manifests, then the project,
roles, machine users, grants and keys, each looked up before it is created (the second run and
check mode, with the other roles, change nothing: test_workloads_podman and test_site); the
keys it hands on get tokens."""

from __future__ import annotations

import base64
import json

import pytest

from .conftest import NAMESPACE, SiteEnv, converged

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_zitadel_role_configures_the_identities(site_env: SiteEnv) -> None:
    import jwt

    from harmony_fleet.bus.settings import ZitadelAuth
    from harmony_fleet.bus.tokens import MachineKey, exchange

    first = converged(site_env)
    assert site_env.variables["zitadel_admin_key"] not in first.stdout
    emulator = site_env.emulator
    assert emulator.get_object("apps/v1/deployments", "zitadel", namespace=NAMESPACE)
    assert emulator.get_object("apps/v1/statefulsets", "zitadel-db", namespace=NAMESPACE)
    keys = emulator.get_object("v1/secrets", "fleet-machine-keys", namespace=NAMESPACE)
    assert keys is not None
    assert set(keys["data"]) == {"operator.json", "ansible.json", "project-id"}
    project_id = base64.b64decode(keys["data"]["project-id"]).decode()
    assert project_id != "fleet-project"

    # the keys the role created get tokens for the new project, with the granted roles
    for name, role in (("operator", "fleet-operator"), ("ansible", "fleet-admin")):
        path = site_env.workdir / f"zitadel-{name}.json"
        path.write_text(base64.b64decode(keys["data"][f"{name}.json"]).decode())
        path.chmod(0o600)
        token = exchange(ZitadelAuth(issuer=site_env.issuer_url, key_file=path,
                                     project_id=project_id), MachineKey.load(path))
        claims = jwt.decode(token.value, options={"verify_signature": False})
        roles = claims.get("urn:zitadel:iam:org:project:roles") or {}
        assert role in roles, json.dumps(claims)[:500]
