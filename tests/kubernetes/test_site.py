"""playbooks/site.yml against the Kubernetes API emulator: converge, idempotence, check mode,
manifests valid for real Kubernetes schemas, preflight failures that name the variable, a CRD
that never gets Established, and the operator's RBAC as the operator needs it."""

from __future__ import annotations

import base64
import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harmony_fleet_harness.kube_emulator import CRDS, FleetKubeEmulator, KubeEmulatorServer

from .conftest import (
    NAMESPACE,
    REPO,
    SiteEnv,
    converged,
    kubeconfig_for,
    recap,
    role_objects,
    timed,
    write_inventory,
)

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(600)]

ROLES = ("nats", "auth_callout", "operator", "zitadel", "smoke_job")


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_document_every_default(role: str) -> None:
    """meta/argument_specs.yml and defaults/main.yml agree: every default is documented with
    the same value, and a required option has no default."""
    specs = yaml.safe_load((REPO / f"roles/{role}/meta/argument_specs.yml").read_text())
    defaults = yaml.safe_load((REPO / f"roles/{role}/defaults/main.yml").read_text()) or {}
    documented: dict[str, Any] = {}
    for entry in specs["argument_specs"].values():
        for name, option in entry["options"].items():
            assert name.startswith(f"{role}_"), f"{name}: not prefixed with {role}_"
            if option.get("required"):
                assert name not in defaults, f"{name} is required but has a default"
            else:
                assert "default" in option, f"{name}: optional without a documented default"
                assert name in defaults, f"{name} is documented but not in defaults/main.yml"
                assert option["default"] == defaults[name], name
                documented[name] = option
    assert set(defaults) <= set(documented), set(defaults) - set(documented)


def test_converge_creates_every_object_with_lab_tls_and_websocket(site_env: SiteEnv) -> None:
    """The one converge (zitadel, nats, auth_callout, buckets, operator): every role's objects,
    the lab certificate the nats role made - its key in Secrets only, never in the output -
    and the CA handed to the callout's and the operator's NATS connections."""
    first = converged(site_env)
    assert recap(first.stdout)["changed"] > 0
    emulator = site_env.emulator
    created = {(r.resource.plural if r.resource else None, r.name) for r in emulator.write_log}
    for kind, name in [("statefulsets", "nats"), ("secrets", "nats-config"),
                       ("secrets", "nats-tls"), ("secrets", "nats-lab-ca"),
                       ("deployments", "fleet-callout"), ("deployments", "fleet-operator"),
                       ("deployments", "zitadel"), ("statefulsets", "zitadel-db"),
                       ("secrets", "fleet-machine-keys"),
                       ("customresourcedefinitions", "deployments.fleet.nationtech.io"),
                       ("clusterroles", "fleet-operator"), ("clusterroles", "harmony-fleet-view")]:
        assert (kind, name) in created, (kind, name)

    tls = secret_files(site_env, "nats-tls")
    lab_ca = secret_files(site_env, "nats-lab-ca")
    assert sorted(tls) == ["ca.crt", "tls.crt", "tls.key"]
    assert lab_ca["ca.crt"] == tls["ca.crt"]
    for secret in (tls["tls.key"], lab_ca["ca.key"]):
        assert secret.strip().splitlines()[1] not in first.stdout, "a private key was shown"
    conf = secret_files(site_env, "nats-config")["nats.conf"]
    assert 'cert_file: "/etc/nats-tls/tls.crt"' in conf
    assert f'listen: "127.0.0.1:{site_env.variables["nats_websocket_port"]}"' in conf
    statefulset = emulator.get_object("apps/v1/statefulsets", "nats", namespace=NAMESPACE)
    assert statefulset is not None
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "tls", "mountPath": "/etc/nats-tls", "readOnly": True} in \
        container["volumeMounts"]
    assert {"name": "websocket", "containerPort": site_env.variables["nats_websocket_port"]} \
        in container["ports"]
    service = emulator.get_object("v1/services", "nats", namespace=NAMESPACE)
    assert service is not None
    assert {"name": "websocket", "port": site_env.variables["nats_websocket_port"],
            "targetPort": "websocket"} in service["spec"]["ports"]
    # the callout's and the operator's connections trust that CA
    for secret, config in (("fleet-callout", "fleet-callout"), ("fleet-operator", "fleet-operator")):
        assert secret_files(site_env, secret)["ca.crt"] == tls["ca.crt"]
        configmap = emulator.get_object("v1/configmaps", config, namespace=NAMESPACE)
        assert configmap is not None
        assert f'tls_ca_file = "/etc/{config}/secrets/ca.crt"' in configmap["data"]["config.toml"]


def test_check_mode_shows_a_change_and_writes_nothing(site_env: SiteEnv) -> None:
    """A changed variable in check mode: reported (with its diff), not made, nothing written;
    the lab certificate is kept (read back, not made again)."""
    converged(site_env)
    emulator = site_env.emulator
    rv, writes_before = emulator.resource_version, len(emulator.write_log)
    check = timed(site_env, "check", "--check", "--diff", extra={"auth_callout_replicas": 3})
    assert check.returncode == 0, check.stdout[-5000:]
    assert recap(check.stdout)["changed"] == 1, check.stdout[-5000:]
    assert '-        "replicas": 2' in check.stdout
    assert '+        "replicas": 3' in check.stdout
    assert "lab TLS for nats" not in check.stdout
    assert len(emulator.write_log) == writes_before, "check mode wrote to the cluster"
    assert emulator.resource_version == rv
    assert emulator.dry_run_log, "check mode asked the API server for dry runs"
    deployment = emulator.get_object("apps/v1/deployments", "fleet-callout", namespace=NAMESPACE)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2
    print(f"\nsite.yml on the emulator: converge {site_env.timings['converge']:.1f} s "
          f"({site_env.figures['converge CPU']} CPU), check {site_env.timings['check']:.1f} s "
          f"({site_env.figures['check CPU']} CPU)")


def test_a_second_run_changes_nothing_without_podman(site_env: SiteEnv) -> None:
    """The idempotence run where podman cannot run the workloads. With podman, the second run
    is test_workloads_podman's, with every smoke test on (what a user's rerun does)."""
    if shutil.which("podman"):
        pytest.skip("the second run is test_workloads_podman's, with every smoke test on")
    converged(site_env)
    before = role_objects(site_env.emulator)
    second = timed(site_env, "idempotence")
    assert second.returncode == 0, second.stdout[-5000:]
    assert recap(second.stdout)["changed"] == 0, second.stdout[-5000:]
    assert role_objects(site_env.emulator) == before, "a second run changed objects"


def secret_files(env: SiteEnv, name: str) -> dict[str, str]:
    secret = env.emulator.get_object("v1/secrets", name, namespace=NAMESPACE)
    assert secret is not None, name
    files = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return files | (secret.get("stringData") or {})


def _ours(emulator: FleetKubeEmulator) -> list[dict[str, Any]]:
    objects = []
    for resource in list(emulator.resources):
        if resource.plural in ("events", "leases"):
            continue
        for obj in emulator.list_objects(resource):
            labels = obj["metadata"].get("labels") or {}
            if labels.get("app.kubernetes.io/part-of") == "harmony-fleet" or \
                    obj["metadata"].get("namespace") == NAMESPACE:
                objects.append(obj)
    return objects


def test_every_rendered_manifest_is_valid_for_kubernetes(site_env: SiteEnv, tmp_path: Path) -> None:
    """kubernetes-validate --strict (the real schemas) on every object the roles applied, and
    the fleet CRDs' own schemas on the fleet Deployment the operator's smoke test creates."""
    import jsonschema

    converged(site_env)
    objects = _ours(site_env.emulator)
    kinds = {obj["kind"] for obj in objects}
    assert {"StatefulSet", "Deployment", "Service", "Secret", "ConfigMap", "ClusterRole",
            "CustomResourceDefinition", "ServiceAccount", "RoleBinding",
            "PodDisruptionBudget", "Namespace"} <= kinds, kinds
    server_fields = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")
    docs = []
    for obj in objects:
        clean = copy.deepcopy(obj)
        for field in server_fields:
            clean["metadata"].pop(field, None)
        clean.pop("status", None)
        docs.append(clean)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    validate = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict",
         "--kubernetes-version", "1.31", str(manifest)],
        capture_output=True, text=True, timeout=120, check=False)
    assert validate.returncode == 0, validate.stdout[-4000:] + validate.stderr[-2000:]
    assert validate.stdout.count(" passed for resource ") == len(docs), validate.stdout[-3000:]

    smoke = yaml.safe_load((REPO / "roles/operator/tasks/smoke.yml").read_text())
    task = next(t for t in smoke[1]["block"] if "kubernetes.core.k8s" in t)
    example = task["kubernetes.core.k8s"]["definition"]
    crd = yaml.safe_load((REPO / "manifests/crds/deployments.fleet.nationtech.io.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate({**example, "metadata": {"name": "smoke", "namespace": "x"}}, schema)


def test_the_operator_gets_exactly_the_rbac_of_the_manifest(site_env: SiteEnv) -> None:
    converged(site_env)
    emulator = site_env.emulator
    source = yaml.safe_load((REPO / "manifests/operator/rbac.yaml").read_text())["items"]
    for doc in source:
        resource = {"ClusterRole": "rbac.authorization.k8s.io/v1/clusterroles",
                    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1/clusterrolebindings",
                    "Role": "rbac.authorization.k8s.io/v1/roles",
                    "RoleBinding": "rbac.authorization.k8s.io/v1/rolebindings",
                    "ServiceAccount": "v1/serviceaccounts"}[doc["kind"]]
        namespaced = doc["kind"] in ("Role", "RoleBinding", "ServiceAccount")
        live = emulator.get_object(resource, doc["metadata"]["name"],
                                   namespace=NAMESPACE if namespaced else None)
        assert live is not None, doc["metadata"]["name"]
        assert live.get("rules") == doc.get("rules")
        for subject in live.get("subjects") or []:
            assert subject["namespace"] == NAMESPACE
    deployment = emulator.get_object("apps/v1/deployments", "fleet-operator", namespace=NAMESPACE)
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "fleet-operator"
    crd = emulator.get_object(CRDS, "deployments.fleet.nationtech.io")
    assert crd is not None
    assert {"type": "Established", "status": "True"}.items() <= \
        next(c for c in crd["status"]["conditions"] if c["type"] == "Established").items()
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert any(c["name"] == "Ready" for c in columns)


@pytest.mark.parametrize(("role", "variable"), [
    ("nats", "nats_callout_password"), ("auth_callout", "auth_callout_oidc_issuer")])
def test_a_missing_required_variable_stops_the_play_naming_it(
        site_env: SiteEnv, tmp_path: Path, role: str, variable: str) -> None:
    variables = {k: v for k, v in site_env.variables.items() if k != variable}
    inventory = write_inventory(tmp_path / "inventory", variables)
    env = SiteEnv(site_env.kube, tmp_path, inventory, site_env.kubeconfig, variables)
    writes = len(site_env.emulator.write_log)
    result = env.playbook("--tags", role)
    assert result.returncode != 0
    assert f"missing required arguments: {variable}" in result.stdout, result.stdout[-3000:]
    later = site_env.emulator.write_log[writes:]
    assert all(w.resource is not None and w.resource.plural == "namespaces" for w in later), \
        "the role wrote before its preflight"


def test_a_crd_that_never_gets_established_stops_the_play_and_a_rerun_converges(
        site_env: SiteEnv, tmp_path: Path) -> None:
    emulator = FleetKubeEmulator(establish_crds=False)
    emulator.register_platform_resources()
    with KubeEmulatorServer(emulator) as kube:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_for(kube.url))
        variables = {**site_env.variables, "harmony_fleet_kubeconfig": str(kubeconfig),
                     "operator_crd_timeout": 3}
        inventory = write_inventory(tmp_path / "inventory", variables)
        env = SiteEnv(kube, tmp_path, inventory, kubeconfig, variables)
        failed = env.playbook("--tags", "operator")
        assert failed.returncode != 0
        assert "deployments.fleet.nationtech.io" in failed.stdout
        assert emulator.get_object("apps/v1/deployments", "fleet-operator",
                                   namespace=NAMESPACE) is None, "went on past the CRD"
        # the API server establishes it after all (names accepted): the rerun converges
        for name in ("deployments.fleet.nationtech.io", "devices.fleet.nationtech.io"):
            crd = emulator.get_object(CRDS, name)
            if crd is not None:
                emulator.patch_object(CRDS, name, {"status": emulator._crd_status_for(crd)},
                                      status=True)
        emulator.establish_crds = True
        rerun = env.playbook("--tags", "operator")
        assert rerun.returncode == 0, rerun.stdout[-4000:]
        assert emulator.get_object("apps/v1/deployments", "fleet-operator", namespace=NAMESPACE)
