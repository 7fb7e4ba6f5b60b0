"""``playbooks/enroll.yml`` refuses what it cannot do, clearly and before changing anything.

Against a real local stack (its issuer is the identity provider), a real SSH host (the
edge-device image with sshd as PID 1, *without* systemd) and hosts that do not exist. Each
case runs the real ``ansible-playbook`` with the example inventory's group_vars. The full
enrollment on systemd devices (and the wrong-NATS-URL case, which needs one) is the molecule
scenario ``device``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ansible.conftest import BIN, REPO, CliStack, start_cli_stack, stop_cli_stack

pytestmark = [pytest.mark.podman, pytest.mark.ansible, pytest.mark.slow,
              pytest.mark.timeout(600)]

LOCK = "/run/fleet-agent-enroll.lock"


@dataclass
class BareHost:
    """An SSH host that is not a systemd host: the edge-device image with sshd as PID 1."""

    name: str
    port: int
    key: Path

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", "exec", self.name, *argv], capture_output=True,
                              text=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    stack = start_cli_stack(tmp_path_factory, "--no-runtime", prefix="device-enroll-faults")
    try:
        yield stack
    finally:
        stop_cli_stack(stack)


@pytest.fixture(scope="module")
def bare_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareHost]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    image = subprocess.run([str(REPO / "images/edge-device/build.sh")], capture_output=True,
                           text=True, check=True, timeout=900).stdout.strip()
    keydir = tmp_path_factory.mktemp("ssh")
    key = keydir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    name = f"device-enroll-faults-{os.getpid()}"
    subprocess.run(
        ["podman", "run", "-d", "--name", name, "--systemd=false", "-p", "127.0.0.1::22",
         "--label", "io.nationtech.fleet.test=device-enroll-faults",
         "-v", f"{key}.pub:/etc/ssh/authorized_keys/ansible:ro", image,
         "sh", "-c", "mkdir -p /run/sshd && ssh-keygen -A && exec /usr/sbin/sshd -D -e"],
        check=True, capture_output=True, timeout=60)
    try:
        port = int(subprocess.run(["podman", "port", name, "22/tcp"], capture_output=True,
                                  text=True, check=True).stdout.strip().rsplit(":", 1)[1])
        yield BareHost(name, port, key)
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "2", name], capture_output=True, check=False)


def write_inventory(tmp: Path, hosts: dict[str, dict[str, object]]) -> Path:
    """The example inventory's group_vars with these hosts in group ``pis``."""
    inventory = tmp / "inventory"
    inventory.mkdir(exist_ok=True)
    (inventory / "hosts").write_text(json.dumps({"pis": {"hosts": hosts, "vars": {
        "ansible_user": "ansible", "ansible_python_interpreter": "/usr/bin/python3"}}}))
    group_vars = inventory / "group_vars"
    if not group_vars.exists():
        group_vars.symlink_to(REPO / "inventories/example/group_vars")
    return inventory


def enroll(stack: CliStack, inventory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "ANSIBLE_STDOUT_CALLBACK": "default",
           "XDG_CACHE_HOME": str(stack.state_file.parent / "cache")}
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/enroll.yml", "-l", "pis",
         "--vault-password-file", "inventories/example/vault-password.example", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def users(stack: CliStack) -> set[str]:
    """The machine user names the stack's issuer has (its registry file)."""
    registry = Path(stack.state["workdir"]) / "secrets" / "issuer-registry.json"
    return {u["user_name"] for u in json.loads(registry.read_text())["users"]}


def test_an_invalid_device_id_is_refused_before_any_connection(stack: CliStack,
                                                               tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, {"pi-x": {"ansible_host": "127.0.0.1",
                                                    "ansible_port": 9,
                                                    "fleet_device_id": "Pi_01"}})
    before = users(stack)
    proc = enroll(stack, inventory)
    assert proc.returncode == 2, proc.stdout
    assert 'fleet_device_id "Pi_01" is not a valid device id' in proc.stdout
    assert "UNREACHABLE" not in proc.stdout  # refused before SSH was tried
    assert users(stack) == before


def test_an_unreachable_host_fails_that_host_only_with_the_reason(stack: CliStack,
                                                                  tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, {"pi-gone": {"ansible_host": "127.0.0.1",
                                                       "ansible_port": 9}})
    before = users(stack)
    proc = enroll(stack, inventory)
    assert proc.returncode == 4, proc.stdout  # ansible's "host unreachable"
    assert "UNREACHABLE!" in proc.stdout
    assert "Connection refused" in proc.stdout
    assert users(stack) == before  # no machine user for a device never reached


def test_an_issuer_that_refuses_the_admin_credential(stack: CliStack, bare_host: BareHost,
                                                     tmp_path: Path) -> None:
    # a well-formed machine key the issuer does not know (a key of its own, never registered)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    forged = tmp_path / "admin-key.json"
    forged.write_text(json.dumps({"type": "serviceaccount", "keyId": "1", "key": pem,
                                  "userId": "424242"}))
    forged.chmod(0o600)
    inventory = write_inventory(tmp_path, {"pi-01": {
        "ansible_host": "127.0.0.1", "ansible_port": bare_host.port,
        "ansible_ssh_private_key_file": str(bare_host.key),
        "fleet_device_issuer_admin_key_file": str(forged)}})
    proc = enroll(stack, inventory)
    assert proc.returncode == 2, proc.stdout
    assert "refused the admin credential (HTTP 400)" in proc.stdout
    assert "unknown machine user" in proc.stdout  # the issuer's own reason
    assert pem.splitlines()[1] not in proc.stdout + proc.stderr
    # nothing was done on the device: not even the lock was taken
    assert bare_host.exec("test", "-e", LOCK).returncode == 1
    assert bare_host.exec("test", "-e", "/opt/fleet-agent").returncode == 1


def test_a_host_without_systemd_is_refused_and_left_as_it_was(stack: CliStack,
                                                              bare_host: BareHost,
                                                              tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, {"pi-01": {
        "ansible_host": "127.0.0.1", "ansible_port": bare_host.port,
        "ansible_ssh_private_key_file": str(bare_host.key)}})
    before = users(stack)
    proc = enroll(stack, inventory)
    assert proc.returncode == 2, proc.stdout
    assert "systemd as its service manager" in proc.stdout, proc.stdout
    assert users(stack) == before
    for path in ("/opt/fleet-agent", "/etc/fleet-agent", LOCK,
                 "/etc/containers/containers.conf.d/50-harmony-fleet.conf"):
        assert bare_host.exec("test", "-e", path).returncode == 1, path


def test_a_second_run_while_one_holds_the_lock(stack: CliStack, bare_host: BareHost,
                                               tmp_path: Path) -> None:
    """Another enrollment of the device is under way (its lock is fresh): refused at once,
    naming the lock, and the other run's lock is left alone. A lock left by a run that died
    (older than fleet_device_lock_stale_s) is taken over."""
    inventory = write_inventory(tmp_path, {"pi-01": {
        "ansible_host": "127.0.0.1", "ansible_port": bare_host.port,
        "ansible_ssh_private_key_file": str(bare_host.key)}})
    assert bare_host.exec("mkdir", LOCK).returncode == 0
    try:
        proc = enroll(stack, inventory)
        assert proc.returncode == 2, proc.stdout
        assert "another run of harmony.fleet.fleet_device holds pi-01's enrollment lock" \
            in proc.stdout
        assert "systemd as its service manager" not in proc.stdout  # stopped at the lock
        assert bare_host.exec("test", "-d", LOCK).returncode == 0  # not ours to release

        assert bare_host.exec("touch", "-d", "2 hours ago", LOCK).returncode == 0
        proc = enroll(stack, inventory)
        assert "holds pi-01's enrollment lock" not in proc.stdout
        assert "systemd as its service manager" in proc.stdout  # went on, then stopped there
        assert bare_host.exec("test", "-e", LOCK).returncode == 1  # and released it
    finally:
        bare_host.exec("rm", "-rf", LOCK)
