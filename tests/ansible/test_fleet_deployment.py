"""harmony.fleet.fleet_deployment against a local stack whose agents drive podman."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from .conftest import CliStack, task_results, write_play

pytestmark = pytest.mark.podman

IMAGE = "localhost/fleet-busybox:latest"
IDLE = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"


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
    d0, d1 = runtime_stack.devices
    present = {"name": "web", "namespace": "shop", "selector": {"matchLabels": {"site": "lab"}},
                   "score": SCORE, "wait": True, "wait_timeout": 60}
    check = runtime_stack.playbook(
        write_play(tmp_path, [deploy_task("deploy", **present)], "check.yml"), "--check", "--diff"
    )
    res = task_results(check, "deploy")
    assert res["changed"] is True
    assert res["created"] == [d0, d1]
    assert res["diff"]["before"] == {}
    assert set(res["diff"]["after"]) == {d0, d1}
    assert running(d0) == []  # check mode wrote nothing

    play = write_play(tmp_path, [deploy_task("deploy", **present)])
    first = task_results(runtime_stack.playbook(play), "deploy")
    assert first.get("failed") is not True, first
    assert first["changed"] is True
    assert first["rolled_out"] is True
    assert {d: s["phase"] for d, s in first["states"].items()} == {d0: "Running", d1: "Running"}
    assert running(d0) == [f"{d0}.shop_web.web"]

    second = task_results(runtime_stack.playbook(play), "deploy")
    assert second["changed"] is False
    assert second["unchanged"] == [d0, d1]

    # narrow the targets: the second device's key is deleted and its container removed
    narrow = {k: v for k, v in present.items() if k != "selector"}
    narrowed = write_play(tmp_path, [deploy_task("deploy", **narrow, devices=[d0])], "n.yml")
    third = task_results(runtime_stack.playbook(narrowed), "deploy")
    assert third.get("failed") is not True, third
    assert third["removed"] == [d1]
    assert third["unchanged"] == [d0]

    gone = write_play(tmp_path, [deploy_task("deploy", name="web", namespace="shop",
                                             state="absent", wait=True, wait_timeout=60)], "a.yml")
    last = task_results(runtime_stack.playbook(gone), "deploy")
    assert last["changed"] is True
    assert last["removed"] == [d0]
    assert last["rolled_out"] is True
    assert running(d0) == []
    assert running(d1) == []


def test_failed_rollout_fails_the_task_with_the_reason(
    runtime_stack: CliStack, tmp_path: Path
) -> None:
    d0 = runtime_stack.devices[0]
    bad = {"services": [{"name": "web", "image": "localhost/absent-image:0"}]}
    play = write_play(tmp_path, [deploy_task("deploy", name="broken", devices=[d0],
                                             score=bad, wait=True, wait_timeout=60)])
    res = task_results(runtime_stack.playbook(play), "deploy")
    assert res["failed"] is True
    assert f"rollout failed on {d0}: cannot pull image localhost/absent-image:0" in res["msg"]
    cleanup = write_play(tmp_path, [deploy_task("deploy", name="broken", state="absent")], "c.yml")
    assert task_results(runtime_stack.playbook(cleanup), "deploy")["removed"] == [d0]


def test_wait_judges_the_new_write_not_a_failure_of_the_same_score_before_it(
    runtime_stack: CliStack, tmp_path: Path
) -> None:
    """A score fails (its image is missing), the operator pushes the image, deletes the
    deployment and writes the same score again. The device still shows the old Failed for a
    moment (here: its agent is held with SIGSTOP until the play is waiting); ``wait`` must
    wait for the report on the new write instead of failing on the old one."""
    d0 = runtime_stack.devices[0]
    image = f"localhost/fleet-late-{runtime_stack.prefix}:1"
    score = {"services": [{"name": "web", "image": image, "command": ["sh", "-c"],
                           "args": [IDLE]}]}
    target = {"name": "late", "devices": [d0], "score": score}
    failed = task_results(runtime_stack.playbook(write_play(
        tmp_path, [deploy_task("deploy", **target, wait=True, wait_timeout=60)], "f.yml")),
        "deploy")
    assert failed["failed"] is True, failed
    assert "cannot pull image" in failed["msg"], failed
    subprocess.run(["podman", "tag", IMAGE, image], check=True)
    (agent,) = [d["pid"] for d in runtime_stack.state["devices"] if d["device_id"] == d0]
    again = write_play(tmp_path, [
        deploy_task("delete", name="late", state="absent"),
        deploy_task("deploy", **target, wait=True, wait_timeout=60)], "again.yml")
    os.kill(agent, signal.SIGSTOP)
    resume = threading.Timer(4.0, os.kill, (agent, signal.SIGCONT))
    resume.start()
    try:
        doc = runtime_stack.playbook(again)
    finally:
        resume.cancel()
        os.kill(agent, signal.SIGCONT)
        subprocess.run(["podman", "rmi", "--force", image], capture_output=True, check=False)
    res = task_results(doc, "deploy")
    try:
        assert res.get("failed") is not True, res
        assert res["rolled_out"] is True
        assert res["states"][d0]["phase"] == "Running"
        assert res["revisions"][d0] > 0
    finally:
        cleanup = write_play(tmp_path, [deploy_task("deploy", name="late", state="absent",
                                                    wait=True, wait_timeout=60)], "c.yml")
        runtime_stack.playbook(cleanup)


def test_invalid_score_is_a_clear_error_and_writes_nothing(
    runtime_stack: CliStack, tmp_path: Path
) -> None:
    d0 = runtime_stack.devices[0]
    play = write_play(tmp_path, [deploy_task("deploy", name="typo", devices=[d0],
                                             score={"services": [{"name": "web"}]})])
    res = task_results(runtime_stack.playbook(play), "deploy")
    assert res["failed"] is True
    assert res["error"] == "InvalidInput"
    assert "services.0.image" in res["msg"]
    missing = write_play(tmp_path, [deploy_task("deploy", name="x", score=SCORE)], "m.yml")
    res = task_results(runtime_stack.playbook(missing), "deploy")
    assert res["failed"] is True
    assert "state is present but any of the following are missing: devices, selector" in res["msg"]
    assert json.dumps(res)  # serialisable


def test_a_score_over_the_limit_is_refused_by_size_and_the_broker_serves_on(
    runtime_stack: CliStack, tmp_path: Path
) -> None:
    """300 KB of env: refused with its size before anything is written (not "the broker closed
    the connection"), and the next task on the same broker works."""
    from harmony_fleet.contracts import MAX_DESIRED_STATE_BYTES

    d0 = runtime_stack.devices[0]
    env = {f"VAR_{i:05d}": "x" * 100 for i in range(3000)}
    big = {"services": [{"name": "web", "image": IMAGE, "command": ["sh", "-c"], "args": [IDLE],
                         "env": env}]}
    play = write_play(tmp_path, [
        deploy_task("too-big", name="big", devices=[d0], score=big),
        {"name": "still-served", "harmony.fleet.fleet_ping": {"device_id": d0}},
        {"name": "nothing-written", "harmony.fleet.fleet_kv": {
            "key": f"{d0}.default_big", "state": "get"}},
    ], ignore_errors=True)
    doc = runtime_stack.playbook(play)
    res = task_results(doc, "too-big")
    assert res["failed"] is True
    assert res["error"] == "InvalidInput"
    assert f"bytes, the limit is {MAX_DESIRED_STATE_BYTES}" in res["msg"]
    assert res["msg"].startswith("score is ")
    assert task_results(doc, "still-served")["ping"] == "pong"
    assert task_results(doc, "nothing-written")["exists"] is False
