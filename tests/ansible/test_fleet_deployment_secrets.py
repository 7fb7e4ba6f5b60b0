"""harmony.fleet.fleet_deployment with secrets: sealed per device, never shown, idempotent.

A local stack of its own (real agents driving podman, under device ids unique to this run), the
real ``ansible-playbook`` as a subprocess, and every output it can produce searched for the
plaintext: the JSON result, the human-readable output with ``--diff -vvv``, the check-mode diff.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets as random_secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harmony_fleet.bus import NatsSettings, connect, drain
from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.contracts import BUCKET_DESIRED_STATE, REDACTED, PodmanScore
from harmony_fleet.contracts.score import REDACTED_CHANGED

from .conftest import (
    BIN,
    REPO,
    CliStack,
    start_cli_stack,
    stop_cli_stack,
    task_results,
    unique_prefix,
)
from .test_fleet_deployment import IDLE, IMAGE, deploy_task

pytestmark = [pytest.mark.podman, pytest.mark.ansible]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    from harmony_fleet.localstack.images import build_busybox_image

    build_busybox_image()
    # a prefix of this run only: podman (container names) is shared with other test runs
    started = start_cli_stack(tmp_path_factory, "--runtime", prefix=unique_prefix("sec"))
    try:
        yield started
    finally:
        stop_cli_stack(started)


def devices(stack: CliStack) -> list[str]:
    return [d["device_id"] for d in stack.state["devices"]]


def play(tmp_path: Path, name: str, value: str, task: dict[str, Any]) -> Path:
    """The secret value is a play variable: the way a vaulted value reaches a task."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump([{"name": "fleet", "hosts": "localhost", "gather_facts": False,
                                     "vars": {"db_password": value}, "tasks": [task]}]))
    return path


def secret_score() -> dict[str, Any]:
    return {"services": [{"name": "web", "image": IMAGE, "command": ["sh", "-c"],
                          "args": [IDLE], "secrets": ["db"]}]}


def deploy(targets: list[str], **extra: Any) -> dict[str, Any]:
    return deploy_task("deploy", name="vault", namespace="sec", devices=targets,
                       score=secret_score(), secrets={"db": "{{ db_password }}"}, **extra)


def run_human(stack: CliStack, path: Path, *args: str) -> str:
    """ansible-playbook with the default (human) callback; stdout and stderr together."""
    env = {**stack.env, "ANSIBLE_STDOUT_CALLBACK": "default"}
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventories/local", str(path),
                           *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return proc.stdout + proc.stderr


def assert_absent(text: str, value: str, where: str) -> None:
    for spelling in (value, base64.b64encode(value.encode()).decode()):
        assert spelling not in text, f"the secret appears in {where}"


def desired_values(stack: CliStack, token: str) -> dict[str, bytes]:
    async def read() -> dict[str, bytes]:
        nc = await connect(NatsSettings.model_validate(stack.state["connection"]),
                           name="pytest-secrets")
        try:
            return await read_bucket(nc.jetstream(), BUCKET_DESIRED_STATE, f"*.{token}")
        finally:
            await drain(nc)

    return asyncio.run(read())


def read_secret(container: str) -> str:
    return subprocess.run(["podman", "exec", container, "cat", "/run/secrets/db"],
                          capture_output=True, text=True, check=True).stdout


def test_secrets_are_sealed_per_device_redacted_and_idempotent(
    stack: CliStack, tmp_path: Path
) -> None:
    targets = devices(stack)
    value = "pw-" + random_secrets.token_hex(16)

    first_doc = stack.playbook(play(tmp_path, "first.yml", value,
                                    deploy(targets, wait=True, wait_timeout=90)), "--diff")
    first = task_results(first_doc, "deploy")
    assert first.get("failed") is not True, first
    assert first["changed"] is True
    assert first["created"] == targets
    assert first["rolled_out"] is True
    assert_absent(json.dumps(first_doc), value, "the JSON output")
    # each device got its own sealing, so its own score and hash
    assert first["spec_hash"] is None
    assert len(set(first["spec_hashes"].values())) == len(targets)
    after = first["diff"]["after"]
    assert set(after) == set(targets)
    for device in targets:
        assert after[device]["secrets"] == {"db": REDACTED}
        assert after[device]["services"][0]["secrets"] == ["db"]
    for device in targets:
        assert read_secret(f"{device}.sec_vault.web") == value

    stored = desired_values(stack, "sec_vault")
    assert len(set(stored.values())) == len(targets)
    for raw in stored.values():
        assert_absent(raw.decode(), value, "the desired-state bucket")
        assert PodmanScore.model_validate_json(raw).secrets["db"].startswith("v1:")

    # the second run finds every key right: sealing is deterministic
    second = task_results(stack.playbook(play(tmp_path, "second.yml", value, deploy(targets)),
                                         "--diff"), "deploy")
    assert second["changed"] is False
    assert second["unchanged"] == targets
    assert desired_values(stack, "sec_vault") == stored

    # the most talkative output, with the diff, still never shows it
    shown = run_human(stack, play(tmp_path, "loud.yml", value, deploy(targets)), "--diff", "-vvv")
    assert "ok: [localhost]" in shown
    assert_absent(shown, value, "ansible-playbook --diff -vvv")

    # a new value, in check mode: the diff says which secret changes, not what it is
    new_value = "pw-" + random_secrets.token_hex(16)
    checked_doc = stack.playbook(play(tmp_path, "check.yml", new_value, deploy(targets)),
                                 "--check", "--diff")
    checked = task_results(checked_doc, "deploy")
    assert checked["changed"] is True
    assert checked["updated"] == targets
    for device in targets:
        assert checked["diff"]["before"][device]["secrets"] == {"db": REDACTED}
        assert checked["diff"]["after"][device]["secrets"] == {"db": REDACTED_CHANGED}
    assert_absent(json.dumps(checked_doc), new_value, "the check-mode output")
    assert_absent(json.dumps(checked_doc), value, "the check-mode output")
    assert desired_values(stack, "sec_vault") == stored  # check mode wrote nothing
    loud_check = run_human(stack, play(tmp_path, "loudcheck.yml", new_value, deploy(targets)),
                           "--check", "--diff", "-vvv")
    assert REDACTED_CHANGED in loud_check
    assert_absent(loud_check, new_value, "ansible-playbook --check --diff -vvv")

    gone = deploy_task("deploy", name="vault", namespace="sec", state="absent", wait=True,
                       wait_timeout=60)
    removed = task_results(stack.playbook(play(tmp_path, "absent.yml", value, gone)), "deploy")
    assert removed["removed"] == targets


def test_a_target_without_a_sealing_key_fails_and_nothing_is_written(
    stack: CliStack, tmp_path: Path
) -> None:
    targets = [*devices(stack), "never-enrolled"]
    value = "pw-" + random_secrets.token_hex(16)
    doc = stack.playbook(play(tmp_path, "nokey.yml", value, deploy(targets)))
    res = task_results(doc, "deploy")
    assert res["failed"] is True
    assert res["error"] == "MissingSealingKeys"
    assert res["msg"].startswith("cannot seal secrets for never-enrolled: no sealing key")
    assert_absent(json.dumps(doc), value, "the JSON output")
    assert desired_values(stack, "sec_vault") == {}


@pytest.mark.parametrize(
    ("task_args", "error"),
    [
        ({"score": {**secret_score(), "secrets": {"db": "v1:abc"}}},
         "score.secrets cannot be given: pass the plaintext values in the module's secrets option"),
        ({"secrets": {"other": "{{ db_password }}"}},
         "service web references secret 'db', which is not defined"),
        ({"secrets": {"db.key": "{{ db_password }}"}}, "secrets: db.key.[key]: String should match"),
    ],
    ids=["sealed-values-in-score", "undefined-reference", "bad-name"],
)
def test_bad_secrets_are_clear_errors_without_the_value(
    stack: CliStack, tmp_path: Path, task_args: dict[str, Any], error: str
) -> None:
    value = "pw-" + random_secrets.token_hex(16)
    task = deploy(devices(stack))
    task["harmony.fleet.fleet_deployment"].update(task_args)
    doc = stack.playbook(play(tmp_path, "bad.yml", value, task))
    res = task_results(doc, "deploy")
    assert res["failed"] is True
    assert res["error"] == "InvalidInput"
    assert error in res["msg"]
    assert_absent(json.dumps(doc), value, "the JSON output")
