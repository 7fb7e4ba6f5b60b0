"""harmony.fleet.fleet_deployment against a local stack whose agents drive podman."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CliStack

pytestmark = pytest.mark.podman

IMAGE = "localhost/fleet-busybox:latest"
IDLE = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"


def task_results(doc: dict[str, Any], name: str) -> dict[str, Any]:
    for play in doc["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] == name:
                return dict(task["hosts"]["localhost"])
    raise AssertionError(f"task {name!r} not in the output")


def write_play(tmp_path: Path, tasks: list[dict[str, Any]], name: str = "play.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump([{"name": "fleet", "hosts": "localhost",
                                     "gather_facts": False, "tasks": tasks}]))
    return path


def deploy_task(title: str, **args: Any) -> dict[str, Any]:
    return {"name": title, "harmony.fleet.fleet_deployment": args}


SCORE = {
    "init_containers": [{"name": "prep", "image": IMAGE, "command": ["sh", "-c"],
                         "args": ["echo prepared"], "timeout": 30}],
    "services": [{"name": "web", "image": IMAGE, "command": ["sh", "-c"], "args": [IDLE]}],
}


def running(device: str) -> list[str]:
    out = subprocess.run(
        ["podman", "ps", "--format", "{{.Names}}", "--filter",
         f"label=io.nationtech.fleet.device={device}"],
        capture_output=True, text=True, check=True,
    )
    return sorted(out.stdout.split())


def test_deploy_check_diff_idempotent_then_absent(runtime_stack: CliStack, tmp_path: Path) -> None:
    present = {"name": "web", "namespace": "shop", "selector": {"matchLabels": {"site": "lab"}},
                   "score": SCORE, "wait": True, "wait_timeout": 60}
    check = runtime_stack.playbook(
        write_play(tmp_path, [deploy_task("deploy", **present)], "check.yml"), "--check", "--diff"
    )
    res = task_results(check, "deploy")
    assert res["changed"] is True
    assert res["created"] == ["dep-0", "dep-1"]
    assert res["diff"]["before"] == {}
    assert set(res["diff"]["after"]) == {"dep-0", "dep-1"}
    assert running("dep-0") == []  # check mode wrote nothing

    play = write_play(tmp_path, [deploy_task("deploy", **present)])
    first = task_results(runtime_stack.playbook(play), "deploy")
    assert first.get("failed") is not True, first
    assert first["changed"] is True
    assert first["rolled_out"] is True
    assert {d: s["phase"] for d, s in first["states"].items()} == {"dep-0": "Running",
                                                                  "dep-1": "Running"}
    assert running("dep-0") == ["dep-0.shop_web.web"]

    second = task_results(runtime_stack.playbook(play), "deploy")
    assert second["changed"] is False
    assert second["unchanged"] == ["dep-0", "dep-1"]

    # narrow the targets: dep-1's key is deleted and its container removed
    narrow = {k: v for k, v in present.items() if k != "selector"}
    narrowed = write_play(tmp_path, [deploy_task("deploy", **narrow, devices=["dep-0"])], "n.yml")
    third = task_results(runtime_stack.playbook(narrowed), "deploy")
    assert third.get("failed") is not True, third
    assert third["removed"] == ["dep-1"]
    assert third["unchanged"] == ["dep-0"]

    gone = write_play(tmp_path, [deploy_task("deploy", name="web", namespace="shop",
                                             state="absent", wait=True, wait_timeout=60)], "a.yml")
    last = task_results(runtime_stack.playbook(gone), "deploy")
    assert last["changed"] is True
    assert last["removed"] == ["dep-0"]
    assert last["rolled_out"] is True
    assert running("dep-0") == []
    assert running("dep-1") == []


def test_failed_rollout_fails_the_task_with_the_reason(
    runtime_stack: CliStack, tmp_path: Path
) -> None:
    bad = {"services": [{"name": "web", "image": "localhost/absent-image:0"}]}
    play = write_play(tmp_path, [deploy_task("deploy", name="broken", devices=["dep-0"],
                                             score=bad, wait=True, wait_timeout=60)])
    res = task_results(runtime_stack.playbook(play), "deploy")
    assert res["failed"] is True
    assert "rollout failed on dep-0: cannot pull image localhost/absent-image:0" in res["msg"]
    cleanup = write_play(tmp_path, [deploy_task("deploy", name="broken", state="absent")], "c.yml")
    assert task_results(runtime_stack.playbook(cleanup), "deploy")["removed"] == ["dep-0"]


def test_invalid_score_is_a_clear_error_and_writes_nothing(
    runtime_stack: CliStack, tmp_path: Path
) -> None:
    play = write_play(tmp_path, [deploy_task("deploy", name="typo", devices=["dep-0"],
                                             score={"services": [{"name": "web"}]})])
    res = task_results(runtime_stack.playbook(play), "deploy")
    assert res["failed"] is True
    assert res["error"] == "BadRequest"
    assert "services.0.image" in res["msg"]
    missing = write_play(tmp_path, [deploy_task("deploy", name="x", score=SCORE)], "m.yml")
    res = task_results(runtime_stack.playbook(missing), "deploy")
    assert res["failed"] is True
    assert "needs devices or selector" in res["msg"]
    assert json.dumps(res)  # serialisable
