"""Run the real ``fleet`` CLI and ``ansible`` against a stack started by ``fleet stack up``."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STACK_DEVICES = 2


@dataclass
class CliStack:
    env: dict[str, str]
    state_file: Path
    state: dict[str, Any]
    #: device ids are <prefix>-0, <prefix>-1: a prefix of this run only, since the machine's
    #: podman and its device-id locks are shared with other test runs
    prefix: str

    @property
    def devices(self) -> list[str]:
        return [f"{self.prefix}-{i}" for i in range(STACK_DEVICES)]

    def ansible(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "ansible"), *args], cwd=REPO, env=self.env, capture_output=True,
            text=True, timeout=120, check=check,
        )

    def adhoc_results(self, *args: str) -> dict[str, dict[str, Any]]:
        """Run an ad-hoc command with the json callback; host -> result."""
        proc = self.ansible(*args)
        try:
            doc = json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"ansible printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return {host: res for play in doc["plays"] for task in play["tasks"]
                for host, res in task["hosts"].items()}

    def playbook(self, path: Path, *args: str) -> dict[str, Any]:
        """Run a playbook with the json callback; return the parsed document."""
        proc = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", "inventories/local", str(path), *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=300, check=False,
        )
        try:
            return dict(json.loads(proc.stdout))
        except json.JSONDecodeError:
            pytest.fail(f"no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def task_results(doc: dict[str, Any], name: str, host: str = "localhost") -> dict[str, Any]:
    """The result of task ``name`` on ``host`` in ansible-playbook's json output."""
    for play in doc["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] == name:
                return dict(task["hosts"][host])
    raise AssertionError(f"task {name!r} not in the output")


def write_play(tmp_path: Path, tasks: list[dict[str, Any]], name: str = "play.yml",
               **play: Any) -> Path:
    """A playbook of one play on localhost running ``tasks`` (``play``: more play keys)."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump([{"name": "fleet", "hosts": "localhost",
                                     "gather_facts": False, **play, "tasks": tasks}]))
    return path


def cli_env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "ANSIBLE_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        FLEET_STATE_DIR=str(state_dir),
        XDG_RUNTIME_DIR=str(state_dir / "run"),
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(state_dir / "ansible-tmp"),
    )
    return env


def unique_prefix(name: str) -> str:
    return f"{name}{secrets.token_hex(3)}"


def start_cli_stack(tmp_path_factory: pytest.TempPathFactory, *options: str,
                    prefix: str | None = None, env_extra: dict[str, str] | None = None) -> CliStack:
    """``fleet stack up --keep`` with two devices ``<prefix>-0`` and ``-1`` (a prefix unique to
    this run unless given); ``env_extra`` reaches the agents (``FLEET_AGENT_*`` overrides)."""
    state_dir = tmp_path_factory.mktemp("cli-stack")
    (state_dir / "run").mkdir(mode=0o700)
    env = cli_env(state_dir)
    prefix = prefix or unique_prefix("cli")
    up = subprocess.run(
        [str(BIN / "fleet"), "stack", "up", "--devices", str(STACK_DEVICES), "--keep", "--json",
         "--label", "site=lab", "--device-prefix", prefix, *options],
        cwd=REPO, env={**env, **(env_extra or {})}, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    state_file = state_dir / "stack.json"
    assert state_file.is_file()
    return CliStack(env, state_file, state, prefix)


def stop_cli_stack(stack: CliStack) -> None:
    down = subprocess.run([str(BIN / "fleet"), "stack", "down"], cwd=REPO, env=stack.env,
                          check=False, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def cli_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    stack = start_cli_stack(tmp_path_factory, "--no-runtime")
    try:
        yield stack
    finally:
        stop_cli_stack(stack)


@pytest.fixture(scope="module")
def runtime_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    from harmony_fleet.localstack.images import build_busybox_image

    build_busybox_image()
    stack = start_cli_stack(tmp_path_factory, "--runtime", prefix=unique_prefix("dep"))
    try:
        yield stack
    finally:
        stop_cli_stack(stack)
