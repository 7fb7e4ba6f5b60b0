"""site.yml and its smoke tests on a real cluster, in a namespace of this run only.

Skipped unless FLEET_REAL_CLUSTER_KUBECONFIG names a kubeconfig. Also read:

* FLEET_REAL_CLUSTER_VARS - a YAML file with the variables of
  inventories/example/group_vars/fleet_control_plane (images the cluster can pull, Zitadel's
  URL and bootstrap key, the NATS keys and passwords); the namespace is set by the test;
* FLEET_REAL_CLUSTER_KEEP=1 - leave the namespace (and the cluster-scoped objects) for a look.

On failure the test prints the namespace's pods, events and the logs of every container.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
import yaml

from .conftest import SiteEnv, recap, write_inventory

KUBECONFIG = os.environ.get("FLEET_REAL_CLUSTER_KUBECONFIG", "")
pytestmark = [
    pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(1800),
    pytest.mark.skipif(not KUBECONFIG, reason="no real cluster: set FLEET_REAL_CLUSTER_KUBECONFIG "
                       "(and FLEET_REAL_CLUSTER_VARS) to run site.yml on one"),
]


def _debug(namespace: str) -> str:
    """What an operator looks at first: pods, events, logs."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(KUBECONFIG))
    lines = []
    for pod in api.list_namespaced_pod(namespace).items:
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase}")
        for container in pod.spec.containers:
            try:
                log = api.read_namespaced_pod_log(pod.metadata.name, namespace,
                                                  container=container.name, tail_lines=40)
            except client.ApiException as exc:
                log = f"(no log: {exc.reason})"
            lines.append(f"--- {pod.metadata.name}/{container.name}\n{log}")
    for event in api.list_namespaced_event(namespace).items[-30:]:
        lines.append(f"event {event.involved_object.kind}/{event.involved_object.name}: "
                     f"{event.reason}: {event.message}")
    return "\n".join(lines)


def test_site_converges_and_its_smoke_tests_pass_on_a_real_cluster(tmp_path: Path) -> None:
    from kubernetes import client, config

    namespace = f"fleet-e2e-{secrets.token_hex(3)}"
    given = yaml.safe_load(Path(os.environ["FLEET_REAL_CLUSTER_VARS"]).read_text()) or {}
    variables = {**given, "harmony_fleet_kubeconfig": KUBECONFIG,
                 "harmony_fleet_namespace": namespace}
    for role in ("zitadel", "nats", "auth_callout", "operator"):
        variables[f"{role}_namespace"] = namespace
    url = f"nats://nats.{namespace}.svc:4222"
    variables |= {"auth_callout_nats_url": url, "operator_nats_url": url}
    inventory = write_inventory(tmp_path / "inventory", variables)
    env = SiteEnv(None, tmp_path, inventory, Path(KUBECONFIG), variables)  # type: ignore[arg-type]
    print(f"\nreal cluster: namespace {namespace}, kubeconfig {KUBECONFIG}")
    try:
        first = env.playbook(timeout=1500)
        assert first.returncode == 0, first.stdout[-6000:] + "\n" + _debug(namespace)
        again = env.playbook(timeout=1500)
        assert again.returncode == 0, again.stdout[-6000:]
        assert recap(again.stdout)["changed"] == 0, again.stdout[-6000:]
        print(json.dumps(recap(first.stdout)), json.dumps(recap(again.stdout)))
    finally:
        if os.environ.get("FLEET_REAL_CLUSTER_KEEP") == "1":
            print(f"FLEET_REAL_CLUSTER_KEEP=1: namespace {namespace} left in place")
        else:
            api = client.CoreV1Api(config.new_client_from_config(KUBECONFIG))
            api.delete_namespace(namespace)
