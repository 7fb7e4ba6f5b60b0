"""With no stack running, ``inventories/local`` says why at default verbosity, and nothing
else: no other inventory parser buries the reason under its own warnings."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import BIN, REPO, cli_env

pytestmark = pytest.mark.ansible

OTHER_PARSERS = ("Invalid host pattern", "with 'yaml' plugin", "with 'ini' plugin",
                 "with 'auto' plugin", "with 'toml' plugin", "with 'script' plugin")


def run(state_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(state_dir)
    env.pop("ANSIBLE_STDOUT_CALLBACK")
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_no_stack_names_the_reason_once(tmp_path: Path) -> None:
    listed = run(tmp_path, "ansible-inventory", "-i", "inventories/local", "--list")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["_meta"]["hostvars"] == {}
    err = listed.stderr
    assert "fleet inventory: ConnectionConfigError: no NATS server given" in err
    assert "start a local stack with 'fleet stack up'" in err
    for noise in OTHER_PARSERS:
        assert noise not in err, noise

    adhoc = run(tmp_path, "ansible", "localhost", "-m", "ansible.builtin.ping")
    assert adhoc.returncode == 0, adhoc.stderr
    assert '"ping": "pong"' in adhoc.stdout
    assert "no NATS server given" in adhoc.stderr
    for noise in OTHER_PARSERS:
        assert noise not in adhoc.stderr + adhoc.stdout, noise


def test_a_stack_that_is_gone_names_the_connect_error(tmp_path: Path) -> None:
    # a state file left behind by a stack that no longer runs (port 9: nothing listens)
    (tmp_path / "stack.json").write_text(json.dumps(
        {"connection": {"urls": ["nats://127.0.0.1:9"], "auth": {"mode": "none"}}}))
    listed = run(tmp_path, "ansible-inventory", "-i", "inventories/local", "--list")
    assert "fleet inventory: cannot read the fleet: ConnectError: could not connect to " \
           "nats://127.0.0.1:9" in listed.stderr
    for noise in OTHER_PARSERS:
        assert noise not in listed.stderr, noise


def test_host_lists_still_work(tmp_path: Path) -> None:
    proc = run(tmp_path, "ansible-inventory", "-i", "pi-01,pi-02,", "--list")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["ungrouped"]["hosts"]) == ["pi-01", "pi-02"]
    assert "WARNING" not in proc.stderr
