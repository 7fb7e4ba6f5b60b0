"""What the roles render, run for real: site.yml converges on the emulator, then the rendered
nats.conf (TLS with the lab certificate the nats role made, a WebSocket listener),
fleet-callout and fleet-operator configurations (read back from the emulator's Secrets and
ConfigMaps, the CA included) run in the images built by images/build.sh under podman, each
container started from its rendered container spec (image, command, args, mounts); the smoke
commands the roles' Jobs run pass against them, locally (over WebSocket too) and inside the
daemon image, a client without the CA is refused, and the operator role's own smoke test passes
against the running operator. That second site.yml run, with every smoke test on, is the
session's idempotence run: zero changed, no object of the roles written.

podman kube play is not used: podman 4.3 has no StatefulSet, and the pods it would create for
the Deployments cannot reach the emulator and issuer on this host's loopback; the containers
run with the host's network instead (loopback only: every port is bound to 127.0.0.1).
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harmony_fleet_harness.kube_emulator import FleetKubeEmulator

from .conftest import (
    NAMESPACE,
    PROJECT_ID,
    SiteEnv,
    converged,
    free_port,
    recap,
    role_objects,
    timed,
)

pytestmark = [pytest.mark.podman, pytest.mark.ansible, pytest.mark.slow,
              pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
PREFIX = f"server-roles-{secrets.token_hex(3)}"


def _podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          check=check)


def _wait(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Workloads:
    env: SiteEnv
    emulator: FleetKubeEmulator
    files: Path
    images: dict[str, str]
    issuer_url: str
    project_id: str
    admin_key: Path
    nats_url: str
    containers: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    def object(self, resource: str, name: str) -> dict[str, Any]:
        obj = self.emulator.get_object(resource, name, namespace=NAMESPACE)
        assert obj is not None, f"{resource} {name} was not rendered"
        return obj

    def volume_files(self, volume: dict[str, Any]) -> Path:
        """A rendered ConfigMap/Secret volume as a local directory (0444 files, as Kubernetes
        shows them with fsGroup), or a fresh directory for an emptyDir or a volume claim."""
        name = volume["name"]
        target = self.files / f"{PREFIX}-{name}-{secrets.token_hex(2)}"
        target.mkdir(mode=0o755)
        data: dict[str, str] = {}
        if "configMap" in volume:
            data = self.object("v1/configmaps", volume["configMap"]["name"])["data"]
        elif "secret" in volume:
            secret = self.object("v1/secrets", volume["secret"]["secretName"])
            data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
            data |= secret.get("stringData") or {}
        else:
            target.chmod(0o777)  # writable by the image's unprivileged user
        for key, value in data.items():
            (target / key).write_text(value)
            (target / key).chmod(0o444)
        return target

    def run(self, workload: dict[str, Any], name: str, env: dict[str, str] | None = None) -> str:
        """Start the workload's first container as its rendered spec says, on the host's network."""
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for claim in workload["spec"].get("volumeClaimTemplates") or []:
            volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"]}
        argv = ["run", "-d", "--name", f"{PREFIX}-{name}", "--network", "host",
                "--stop-timeout", "5", "--read-only", "--user",
                f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
        if pod.get("restartPolicy", "Always") == "Always":  # as the kubelet restarts a crash
            argv += ["--restart", "always"]
        for mount in container.get("volumeMounts") or []:
            local = self.volume_files(volumes[mount["name"]])
            source = local / mount["subPath"] if mount.get("subPath") else local
            argv += ["-v", f"{source}:{mount['mountPath']}:{'ro' if mount.get('readOnly') else 'rw'}"]
        for variable in container.get("env") or []:
            if "value" in variable:
                argv += ["-e", f"{variable['name']}={variable['value']}"]
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        if container.get("command"):
            argv += ["--entrypoint", json.dumps(container["command"])]
        argv += [container["image"], *container.get("args", [])]
        self.containers.append(f"{PREFIX}-{name}")  # removed at the end even if it fails
        _podman(*argv)
        return f"{PREFIX}-{name}"

    @contextlib.contextmanager
    def job_runner(self, after: dict[str, Any] | None = None) -> Iterator[list[str]]:
        """The kubelet's part for Jobs: each Job created in the emulator runs its container under
        podman (as run() does), and its status says how it ended. ``after``: what to start
        once the Job of that name succeeded. Yields the log of what ran."""
        ran: list[str] = []
        stop = threading.Event()
        after = dict(after or {})

        def execute(job: dict[str, Any]) -> None:
            try:
                name = self.run(job, f"job-{job['metadata']['name']}-{len(self.containers)}")
            except Exception as exc:  # reported by the test, which sees the Job fail
                ran.append(f"{job['metadata']['name']}: not started: {exc!r}"[:600])
                name, code = "", "not started"
            else:
                code = _podman("wait", name, timeout=300, check=False).stdout.strip()
            if name:
                ran.append(f"{job['metadata']['name']}: exit {code}: {self.logs(name).strip()[-300:]}")
            outcome = {"succeeded": 1} if code == "0" else {"failed": 1}
            with contextlib.suppress(Exception):  # deleted meanwhile: nobody waits for it
                self.emulator.patch_object("batch/v1/jobs", job["metadata"]["name"],
                                           {"status": outcome}, namespace=NAMESPACE, status=True)
            if code == "0" and job["metadata"]["name"] in after:
                try:
                    after.pop(job["metadata"]["name"])()
                except Exception as exc:  # reported by the test, which sees what is missing
                    ran.append(f"after {job['metadata']['name']}: {exc!r}"[:600])

        def watch() -> None:
            seen: set[str] = set()
            while not stop.wait(0.3):
                for job in self.emulator.list_objects("batch/v1/jobs", namespace=NAMESPACE):
                    if job["metadata"]["uid"] not in seen:
                        seen.add(job["metadata"]["uid"])
                        threading.Thread(target=execute, args=(job,), daemon=True).start()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield ran
        finally:
            stop.set()
            watcher.join(5)

    def logs(self, name: str) -> str:
        result = _podman("logs", name, check=False)
        return result.stdout + result.stderr

    def smoke(self, check: str, toml: str, *extra: str) -> subprocess.CompletedProcess[str]:
        config = self.files / f"smoke-{secrets.token_hex(3)}.toml"
        config.write_text(toml)
        return subprocess.run([str(BIN / "fleet"), "smoke", check, "--config", str(config), *extra],
                              capture_output=True, text=True, timeout=60, check=False)

    def ca_file(self) -> Path:
        """The lab CA the nats role made (from its Secret), as a file."""
        path = self.files / "nats-ca.crt"
        if not path.exists():
            secret = self.object("v1/secrets", "nats-tls")
            ca = (secret.get("stringData") or {}).get("ca.crt") or \
                base64.b64decode(secret["data"]["ca.crt"]).decode()
            path.write_text(ca)
        return path

    def admin_toml(self, url: str | None = None) -> str:
        return (f'[nats]\nurls = ["{url or self.nats_url}"]\ntls_ca_file = "{self.ca_file()}"\n'
                f'auth = {{ mode = "zitadel", issuer = '
                f'"{self.issuer_url}", key_file = "{self.admin_key}", project_id = '
                f'"{self.project_id}" }}\n')

    def writer_toml(self, ca: bool = True) -> str:
        return (f'[nats]\nurls = ["{self.nats_url}"]\n'
                + (f'tls_ca_file = "{self.ca_file()}"\n' if ca else "")
                + 'auth = { mode = "userpass", user = "writer", '
                f'password = "{self.env.variables["nats_writer_password"]}" }}\n')


@pytest.fixture
def workloads(site_env: SiteEnv, tmp_path: Path) -> Iterator[Workloads]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    converged(site_env)
    tmp_path.chmod(0o755)
    assert site_env.admin_key is not None
    nats_url = site_env.variables["auth_callout_nats_url"]  # nats:// with a CA: TLS
    containers: list[str] = []
    try:
        yield Workloads(site_env, site_env.emulator, tmp_path, site_env.images,
                        site_env.issuer_url, PROJECT_ID, site_env.admin_key, nats_url, containers,
                        site_env.figures)
    finally:
        for name in containers:
            _podman("rm", "-f", "-t", "2", name, check=False)


def test_the_rendered_configs_run_in_the_images(workloads: Workloads) -> None:
    w = workloads
    # nats-server: the rendered nats.conf (its TLS files where this host has them) passes its
    # own test mode, then serves from the container, TLS files mounted as the pod has them
    conf_dir = w.volume_files({"name": "natsconf", "secret": {"secretName": "nats-config"}})
    tls_dir = w.volume_files({"name": "tls", "secret": {"secretName": "nats-tls"}})
    local_conf = w.files / "nats-local.conf"
    local_conf.write_text((conf_dir / "nats.conf").read_text().replace("/etc/nats-tls/",
                                                                        f"{tls_dir}/"))
    tested = subprocess.run([str(BIN / "nats-server"), "-t", "-c", str(local_conf)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert tested.returncode == 0, tested.stderr
    nats = w.run(w.object("apps/v1/statefulsets", "nats"), "nats")
    monitor = w.env.variables
    _wait(lambda: _healthy(f"http://127.0.0.1:{monitor['nats_monitor_port']}/healthz"),
          "nats-server's /healthz: " + w.logs(nats)[-1000:], 30)

    # fleet-callout: two replicas of the rendered Deployment (the second on its own metrics
    # port), connecting over TLS with the CA of their Secret
    callout = w.object("apps/v1/deployments", "fleet-callout")
    assert callout["spec"]["replicas"] == 2
    first = w.run(callout, "callout-0")
    second = w.run(callout, "callout-1",
                   env={"FLEET_CALLOUT_METRICS__LISTEN": f"127.0.0.1:{free_port()}"})
    for name in (first, second):
        _wait(lambda name=name: "answering $SYS.REQ.USER.AUTH" in w.logs(name),
              f"{name} to answer: " + w.logs(name)[-1500:], 60)

    # the smoke commands of the roles' Jobs, locally against these containers
    answered = w.smoke("jetstream", w.writer_toml())
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["ok"] is True
    missing = w.smoke("jetstream", w.writer_toml(), "--buckets")
    assert missing.returncode != 0, "buckets before their creation"
    assert "missing" in missing.stderr
    allowed = w.smoke("callout", w.admin_toml())
    assert allowed.returncode == 0, allowed.stderr + w.logs(first)[-2000:]
    assert json.loads(allowed.stdout)["forged_refused"]
    assert w.smoke("token", w.admin_toml()).returncode == 0
    # a client without the lab CA is refused: the server's certificate is not one it trusts
    untrusted = w.smoke("jetstream", w.writer_toml(ca=False))
    assert untrusted.returncode != 0, "a client without the CA got in"
    assert "TLS" in untrusted.stderr, untrusted.stderr[-2000:]
    # WebSocket (devices behind HTTP proxies): wss:// with the same certificate, through the
    # auth callout - the admin key is let in, a forged token refused
    wss = f"wss://127.0.0.1:{w.env.variables['nats_websocket_port']}"
    over_ws = w.smoke("callout", w.admin_toml(wss))
    assert over_ws.returncode == 0, over_ws.stderr[-2000:] + w.logs(nats)[-2000:]
    assert json.loads(over_ws.stdout)["forged_refused"]

    # a killed callout replica: the other one answers (same queue group)
    _podman("kill", first)
    assert w.smoke("callout", w.admin_toml()).returncode == 0

    # fleet-operator: two replicas against the emulator, leader election on the Lease; started
    # once the bucket Job made the buckets (the operator needs them: before, it would only
    # crash and restart, as a pod does until then)
    operator = w.object("apps/v1/deployments", "fleet-operator")
    kube_env = {"FLEET_OPERATOR_KUBE__SERVER": w.env.kube.url, "FLEET_OPERATOR_KUBE__INSECURE": "true"}

    def start_operators() -> None:
        for index in range(2):
            w.run(operator, f"operator-{index}", env={
                **kube_env, "FLEET_OPERATOR_OPERATOR__IDENTITY": f"{PREFIX}-operator-{index}",
                "FLEET_OPERATOR_OPERATOR__PROBE_LISTEN": f"127.0.0.1:{free_port()}",
                "FLEET_OPERATOR_METRICS__LISTEN": f"127.0.0.1:{free_port()}"})
    # site.yml again with every smoke test on - the session's idempotence run: the nats,
    # callout and bucket Jobs run in the daemon image (the job runner plays the kubelet), the
    # operator's checks run as written; zero changed and no object of the roles written
    before = role_objects(w.emulator)
    admin_key = w.admin_key.read_text()
    with w.job_runner(after={"nats-buckets": start_operators}) as jobs:
        smoke = timed(w.env, "second run (smoke tests on)", extra={
            "nats_smoke": True, "nats_smoke_url": w.nats_url, "nats_admin_key": admin_key,
            "auth_callout_smoke": True, "auth_callout_smoke_key": admin_key,
            "operator_smoke": True, "nats_wait_timeout": 60, "auth_callout_wait_timeout": 60},
            timeout=480)
    assert smoke.returncode == 0, smoke.stdout[-5000:] + "\n".join(jobs) + "".join(
        w.logs(c)[-1500:] for c in w.containers if "operator" in c)
    assert recap(smoke.stdout)["changed"] == 0, smoke.stdout[-5000:]
    assert role_objects(w.emulator) == before, "a second run changed objects"
    assert "lab TLS for nats" not in smoke.stdout, "the lab certificate was made again"
    assert sorted(job.split(":")[0] for job in jobs) == \
        ["fleet-callout-smoke", "nats-buckets", "nats-smoke"], jobs
    assert all(": exit 0:" in job for job in jobs), jobs
    assert "holds the Lease as" in smoke.stdout
    assert w.emulator.list_objects("batch/v1/jobs", namespace=NAMESPACE) == []
    exists = w.smoke("jetstream", w.writer_toml(), "--buckets")
    assert exists.returncode == 0, exists.stderr
    lease = w.emulator.get_object("coordination.k8s.io/v1/leases", "fleet-operator",
                                  namespace=NAMESPACE)
    assert lease is not None
    assert lease["spec"]["holderIdentity"].startswith(PREFIX)
    assert w.emulator.get_object("fleet.nationtech.io/v1alpha1/deployments",
                                 "fleet-operator-smoke", namespace=NAMESPACE) is None
    print("\n" + "\n".join(f"{k}: {v}" for k, v in w.figures.items()))
    print("site.yml on the emulator: " + ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in w.env.timings.items()))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False
