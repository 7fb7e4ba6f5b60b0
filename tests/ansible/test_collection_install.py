"""The collection as Ansible users get it: the built tarball, installed into an empty
collections path, used from a venv holding only ansible-core and the collection's declared
requirements (requirements.txt) — away from this checkout, its .venv and its ansible.cfg."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .conftest import BIN, REPO, CliStack

# a venv not cached yet is built with pip from the package index: minutes on a loaded machine
pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.podman, pytest.mark.timeout(600)]

#: venvs built by these tests, kept between runs like the images (cached by content hash)
VENV_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harmony-fleet" / "venvs"


@dataclass
class Installed:
    tarball: Path
    venv: Path
    collections: Path
    workdir: Path
    #: this module's temporary directory (the venv may live in the cache)
    root: Path

    def run(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.workdir,
                              env=env, capture_output=True, text=True, timeout=300, check=False)


def _ansible_core_version() -> str:
    from ansible.release import __version__

    return str(__version__)


def cached_venv(label: str, requirements: str) -> Path:
    """A venv holding nothing but ``requirements`` (a requirements file's text) installed by
    pip, built once per content: the key is this Python and the requirements, so a changed
    ``requirements.txt`` or ansible-core builds a new one. Test runs that share the cache wait
    for each other (a lock file); a build that did not finish is thrown away and done again."""
    key = hashlib.sha256("\n".join([sys.version, str(Path(sys.base_prefix).resolve()),
                                    requirements]).encode()).hexdigest()[:16]
    path = VENV_CACHE / f"{label}-{key}"
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    with (VENV_CACHE / f"{label}-{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = path / "harmony-fleet-requirements.txt"
        if not done.is_file() or done.read_text() != requirements:
            shutil.rmtree(path, ignore_errors=True)
            venv.EnvBuilder(with_pip=True, clear=True).create(path)
            wanted = path / "requirements.in"
            wanted.write_text(requirements)
            pip = subprocess.run(
                [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(wanted)],
                capture_output=True, text=True, timeout=600, check=False)
            assert pip.returncode == 0, pip.stderr
            done.write_text(requirements)  # written last: the venv is complete
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("collection-install")
    build = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                            str(root), str(REPO)], capture_output=True, text=True, timeout=120,
                           check=False)
    assert build.returncode == 0, build.stderr
    (tarball,) = root.glob("harmony-fleet-*.tar.gz")
    # a venv with nothing but ansible-core and what the collection declares
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("requirements.txt")
        assert member is not None
        declared = member.read().decode()
    env_dir = cached_venv("collection", f"ansible-core=={_ansible_core_version()}\n{declared}")
    collections = root / "collections"
    collections.mkdir()
    workdir = root / "work"
    workdir.mkdir()
    result = Installed(tarball, env_dir, collections, workdir, root)
    install = result.run("ansible-galaxy", "collection", "install", str(tarball), "-p",
                         str(collections), env=_clean_env(root, collections))
    assert install.returncode == 0, install.stdout + install.stderr
    return result


def _clean_env(root: Path, collections: Path) -> dict[str, str]:
    """Nothing of this checkout: no ANSIBLE_CONFIG, no PYTHONPATH, no .venv on PATH."""
    keep = {"HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", ANSIBLE_COLLECTIONS_PATH=str(collections),
               ANSIBLE_LOCAL_TEMP=str(root / "ansible-tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOST_KEY_CHECKING="False",
               XDG_RUNTIME_DIR=str(root / "run"))
    (root / "run").mkdir(mode=0o700, exist_ok=True)
    return env


def test_the_tarball_ships_ansible_content_and_the_package_not_the_tests(
    installed: Installed,
) -> None:
    with tarfile.open(installed.tarball) as tar:
        names = tar.getnames()
    tops = {n.split("/")[0] for n in names}
    assert {"plugins", "meta", "daemons", "pyproject.toml", "requirements.txt", "LICENSE",
            "README.md", "MANIFEST.json", "FILES.json"} <= tops
    for absent in ("tests", "benchmarks", "scripts", ".ci", ".venv", ".collections",
                   "Makefile", "ansible.cfg"):
        assert absent not in tops, absent
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "meta/execution-environment.yml" in names
    size = installed.tarball.stat().st_size
    print(f"\ncollection tarball: {size / 1024:.0f} KiB, {len(names)} entries")


def test_the_venv_has_no_harmony_fleet_of_its_own(installed: Installed) -> None:
    probe = subprocess.run([str(installed.venv / "bin" / "python"), "-c",
                            "import harmony_fleet"], capture_output=True, text=True, check=False)
    assert probe.returncode != 0  # the plugins must work from the collection's own copy


def test_fleet_ping_and_the_inventory_from_the_installed_collection(
    installed: Installed, runtime_stack: CliStack,
) -> None:
    env = _clean_env(installed.root, installed.collections)
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.minimal"
    ping = installed.run("ansible", "-i", ",".join(runtime_stack.devices) + ",", "all", "-c", "local",
                         "-m", "harmony.fleet.fleet_ping",
                         "-a", f"connection_file={runtime_stack.state_file}", env=env)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count('"ping": "pong"') == 2, ping.stdout
    inventory = installed.workdir / "fleet.yml"
    inventory.write_text(f"plugin: harmony.fleet.fleet\nconnection_file: {runtime_stack.state_file}\n"
                         "keyed_groups:\n  - key: fleet_labels\n    prefix: label\n")
    listed = installed.run("ansible-inventory", "-i", str(inventory), "--list", env=env)
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert sorted(doc["fleet"]["hosts"]) == runtime_stack.devices
    assert sorted(doc["label_site_lab"]["hosts"]) == runtime_stack.devices
    # the collection's documentation is there too
    docs = installed.run("ansible-doc", "harmony.fleet.fleet_ping", env=env)
    assert docs.returncode == 0, docs.stderr
    assert "requirements.txt" in docs.stdout


def test_a_missing_requirement_says_how_to_install_it(installed: Installed, tmp_path: Path,
                                                       runtime_stack: CliStack) -> None:
    bare = cached_venv("ansible-core", f"ansible-core=={_ansible_core_version()}\n")
    env = _clean_env(tmp_path, installed.collections)
    proc = subprocess.run([str(bare / "bin" / "ansible"), "-i", f"{runtime_stack.devices[0]},", "all",
                           "-c", "local",
                           "-m", "harmony.fleet.fleet_ping", "-a",
                           f"connection_file={runtime_stack.state_file}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode != 0
    assert "requirements.txt" in proc.stdout + proc.stderr
    assert sys.executable not in proc.stdout  # nothing leaked from the checkout's own venv


SHOWN = ("{{ {'phase': (info.deployments | selectattr('deployment', 'equalto', 'install_tarball')"
         " | first).phase, 'online': info.online, 'first_line': logs.lines | first} | to_json }}")


def test_deploy_read_state_and_tail_logs_from_the_installed_collection(
    installed: Installed, runtime_stack: CliStack,
) -> None:
    """The day-2 path a user follows with the README only: roll a workload out, read the
    device's state, tail the workload's logs, all through the installed tarball."""
    d0 = runtime_stack.devices[0]
    shown_file = installed.workdir / "shown.json"
    conn = {"connection_file": str(runtime_stack.state_file)}
    score = {"services": [{"name": "app", "image": "localhost/fleet-busybox:latest",
                           "command": ["sh", "-c"],
                           "args": ["trap 'exit 0' TERM; echo installed-hello; "
                                    "while :; do sleep 1 & wait $!; done"]}]}
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "deploy", "harmony.fleet.fleet_deployment": {
            **conn, "name": "tarball", "namespace": "install",
            "devices": [d0], "score": score, "wait": True,
            "wait_timeout": 90}},
        {"name": "info", "register": "info",
         "harmony.fleet.fleet_device_info": {**conn, "device_id": d0}},
        {"name": "logs", "register": "logs", "harmony.fleet.fleet_logs": {
            **conn, "device_id": d0, "deployment": "install_tarball", "service": "app",
            "tail": 5}},
        {"name": "show", "ansible.builtin.copy": {"dest": str(shown_file),
                                                  "content": SHOWN}},
        {"name": "remove", "harmony.fleet.fleet_deployment": {
            **conn, "name": "tarball", "namespace": "install", "state": "absent"}},
    ]}]
    path = installed.workdir / "day2.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    env = _clean_env(installed.root, installed.collections)
    proc = installed.run("ansible-playbook", "-i", "localhost,", "-c", "local", str(path), env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert json.loads(shown_file.read_text()) == {
        "phase": "Running", "online": True, "first_line": "installed-hello"}
