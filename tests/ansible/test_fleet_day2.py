"""Day-2 modules against real containers: fleet_device_info, fleet_logs and fleet_exec on a
workload that fleet_deployment rolled out (with its progress shown at -v), from the real
``ansible-playbook`` against ``fleet stack up`` whose agents drive podman and allow exec of
``echo`` and ``sh`` only (the device owner's policy, set through the agents' environment)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    BIN,
    REPO,
    CliStack,
    start_cli_stack,
    stop_cli_stack,
    task_results,
    unique_prefix,
    write_play,
)

pytestmark = [pytest.mark.podman, pytest.mark.ansible]

IMAGE = "localhost/fleet-busybox:latest"
TICKER = ("trap 'exit 0' TERM; echo hello; i=0; "
          "while :; do i=$((i+1)); echo tick $i; sleep 1 & wait $!; done")
EXEC_POLICY = [{"deployment": "*", "service": "*", "commands": ["echo", "sh"]}]


def ticker_score(marker: str = "v1") -> dict[str, Any]:
    return {"services": [{"name": "app", "image": IMAGE, "command": ["sh", "-c"],
                          "args": [TICKER], "env": {"MARKER": marker}}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    from harmony_fleet.localstack.images import build_busybox_image

    build_busybox_image()
    started = start_cli_stack(
        tmp_path_factory, "--runtime", prefix=unique_prefix("day"),
        env_extra={"FLEET_AGENT_EXEC__ENABLED": "true",
                   "FLEET_AGENT_EXEC__ALLOW": json.dumps(EXEC_POLICY)})
    try:
        yield started
    finally:
        stop_cli_stack(started)


@pytest.fixture(scope="module")
def app(stack: CliStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The deployment ``ops_app`` running on every device of the stack."""
    tmp = tmp_path_factory.mktemp("app")
    doc = stack.playbook(write_play(tmp, [{"name": "deploy", "harmony.fleet.fleet_deployment": {
        "name": "app", "namespace": "ops", "selector": {}, "score": ticker_score(),
        "wait": True, "wait_timeout": 90}}]))
    res = task_results(doc, "deploy")
    assert res.get("rolled_out") is True, res
    return "ops_app"


def human(stack: CliStack, path: Path, *args: str) -> str:
    """ansible-playbook with the default (human) callback; stdout and stderr together."""
    env = {**stack.env, "ANSIBLE_STDOUT_CALLBACK": "default"}
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventories/local", str(path),
                           *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return proc.stdout + proc.stderr


def test_device_info_shows_the_running_deployment(stack: CliStack, app: str,
                                                 tmp_path: Path) -> None:
    d0 = stack.devices[0]
    info = task_results(stack.playbook(write_play(tmp_path, [
        {"name": "info", "harmony.fleet.fleet_device_info": {"device_id": d0}}])), "info")
    assert info["runtime_enabled"] is True
    assert info["inventory"]["podman_version"]
    assert info["sealing_key"]
    (row,) = [r for r in info["deployments"] if r["deployment"] == app]
    assert row["phase"] == "Running"
    assert row["up_to_date"] is True
    assert row["reported_spec_hash"] == row["spec_hash"]
    (service,) = row["services"]
    assert service["name"] == "app"
    assert service["container"] == f"{d0}.{app}.app"
    assert service["state"] == "running"


def test_logs_tail_follow_and_not_found(stack: CliStack, app: str, tmp_path: Path) -> None:
    d0 = stack.devices[0]

    def logs(title: str, **args: Any) -> dict[str, Any]:
        return {"name": title, "harmony.fleet.fleet_logs": {"device_id": d0, "deployment": app,
                                                            "service": "app", **args},
                "ignore_errors": True}

    doc = stack.playbook(write_play(tmp_path, [
        logs("all"),
        logs("tail", tail=2),
        logs("follow", tail=0, follow=True, follow_timeout=3),
        logs("no-such-service", service="db"),
        logs("no-such-deployment", deployment="ops_nothing"),
    ]), "--check")  # read-only: check mode reads all the same
    every = task_results(doc, "all")
    assert every["changed"] is False
    assert every["lines"][0] == "hello"
    assert every["output"].startswith("hello\ntick 1\n")
    assert every["truncated"] is False
    tail = task_results(doc, "tail")
    assert len(tail["lines"]) == 2
    assert all(line.startswith("tick ") for line in tail["lines"])
    followed = task_results(doc, "follow")["lines"]
    ticks = [int(line.split()[1]) for line in followed]
    assert len(ticks) >= 2  # new output, one line a second, over three seconds
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))
    for title in ("no-such-service", "no-such-deployment"):
        res = task_results(doc, title)
        assert res["failed"] is True
        assert res["error"] == "RemoteError"
        assert res["kind"] == "NotFound"
        assert "has no service" in res["msg"]


def test_exec_policy_results_check_mode_and_changes(stack: CliStack, app: str,
                                                    tmp_path: Path) -> None:
    d0 = stack.devices[0]
    marker = f"/tmp/fleet-exec-{secrets.token_hex(4)}"

    def exe(title: str, argv: list[str], **args: Any) -> dict[str, Any]:
        return {"name": title, "harmony.fleet.fleet_exec": {
            "device_id": d0, "deployment": app, "service": "app", "argv": argv, **args},
            "ignore_errors": True}

    checked = stack.playbook(write_play(tmp_path, [
        exe("write", ["sh", "-c", f"echo ran >> {marker}"])], "check.yml"), "--check")
    skipped = task_results(checked, "write")
    assert skipped["skipped"] is True
    assert skipped["changed"] is False
    assert "rc" not in skipped

    play = write_play(tmp_path, [
        exe("read", ["sh", "-c", f"cat {marker} 2>/dev/null; echo end"], changes=False),
        exe("echo", ["echo", "hello", "wörld"]),
        exe("stderr", ["sh", "-c", "echo out; echo err >&2"], changes=False),
        exe("forbidden", ["cat", "/etc/hostname"]),
        exe("exit-3", ["sh", "-c", "exit 3"]),
        exe("too-slow", ["sh", "-c", "sleep 5"], command_timeout=1),
        exe("no-such-deployment", ["echo"], deployment="ops_nothing"),
    ])
    for _run in range(2):  # twice in a row: the same results
        doc = stack.playbook(play)
        read = task_results(doc, "read")
        assert read["output"] == "end\n"  # check mode ran nothing
        assert read["rc"] == 0
        assert read["changed"] is False
        echo = task_results(doc, "echo")
        assert echo["rc"] == 0
        assert echo["output"] == "hello wörld\n"
        assert echo["changed"] is True
        assert echo["truncated"] is False
        assert echo["timed_out"] is False
        assert sorted(task_results(doc, "stderr")["output"].split()) == ["err", "out"]
        forbidden = task_results(doc, "forbidden")
        assert forbidden["error"] == "RemoteError"
        assert forbidden["kind"] == "Forbidden"
        assert "'cat'" in forbidden["msg"]
        failed = task_results(doc, "exit-3")
        assert failed["failed"] is True
        assert failed["rc"] == 3
        assert "error" not in failed
        slow = task_results(doc, "too-slow")
        assert slow["failed"] is True
        assert slow["timed_out"] is True
        missing = task_results(doc, "no-such-deployment")
        assert missing["error"] == "RemoteError"
        assert missing["kind"] == "NotFound"


def test_rollout_progress_at_v_and_the_diff_shows_the_score(stack: CliStack, app: str,
                                                            tmp_path: Path) -> None:
    task = {"name": "deploy", "harmony.fleet.fleet_deployment": {
        "name": "app", "namespace": "ops", "selector": {}, "score": ticker_score("v2"),
        "wait": True, "wait_timeout": 90}}
    out = human(stack, write_play(tmp_path, [task]), "-v", "--diff")
    assert "changed: [localhost]" in out, out
    # the progress, per phase, while waiting; and the end state
    assert f"fleet_deployment {app}: 2 device(s): " in out
    assert f"fleet_deployment {app}: 2 device(s): 2 Running" in out
    progress = [line for line in out.splitlines() if f"fleet_deployment {app}:" in line]
    assert len(progress) >= 2  # it started elsewhere (Waiting, Pending...) and ended Running
    assert "Waiting" in progress[0] or "Pending" in progress[0] or "Starting" in progress[0]
    # the diff is the score itself, not a hash
    assert '"MARKER": "v1"' in out
    assert '"MARKER": "v2"' in out
    assert IMAGE in out

    # no_log: neither the result nor the diff is shown
    hidden = {**task, "no_log": True}
    hidden["harmony.fleet.fleet_deployment"] = {**task["harmony.fleet.fleet_deployment"],
                                                "score": ticker_score("v3-hidden")}
    out = human(stack, write_play(tmp_path, [hidden], "hidden.yml"), "-v", "--diff")
    assert "changed: [localhost]" in out, out
    assert "v3-hidden" not in out
    assert "no_log: true" in out
