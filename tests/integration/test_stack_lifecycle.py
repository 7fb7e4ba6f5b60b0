"""The local stack's lifecycle under faults, with the real ``fleet`` CLI and real processes.

* ``fleet stack up`` in the foreground killed with SIGKILL takes its nats-server, issuer,
  fleet-callout and agents with it, and the next ``fleet stack up`` works;
* a state file whose processes are all gone (a reboot, everything killed) blocks nothing:
  it is recognised, said, and cleaned up; ``status`` says it in one line;
* ``fleet stack down`` stops a process that was started again by hand, and says what it
  could not stop (exit 1, the state kept);
* ``fleet stack status`` with a dead fleet-callout, then a dead nats-server: one line per
  problem, exit 1, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harmony_fleet.localstack import processes
from harmony_fleet.localstack.processes import Component, alive, spawn
from harmony_fleet.localstack.stack import AGENT_PROGRAMS, read_state
from harmony_fleet_harness.pytest_plugin import unique_device_id
from tests.ansible.conftest import BIN, REPO, cli_env

#: how long the stack's processes may take to go after their parent was killed
GONE_WITHIN_S = 8.0


def fleet(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fleet"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """stderr is exactly one ``fleet: ...`` line, with no traceback; return it."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fleet: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "never retrieved" not in proc.stderr
    return lines[0]


def of_workdir(workdir: str) -> list[int]:
    """Every live process whose command line names a file of ``workdir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = processes.command_line(int(entry.name))
        if argv and any(workdir in arg for arg in argv) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_gone(workdir: str, timeout: float = GONE_WITHIN_S) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := of_workdir(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_dead(born: dict[int, int | None], timeout: float = GONE_WITHIN_S) -> list[int]:
    """Those of ``born`` (pid -> start time, taken while they ran) still running after
    ``timeout``; a pid the kernel handed to a new process since does not count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid, started in born.items()
                if started is not None and processes.start_time(pid) == started and alive(pid)]
        if not left:
            break
        time.sleep(0.1)
    return left


def recorded_pids(state: dict[str, Any]) -> list[int]:
    pids = [state["nats_server"]["pid"], *(p["pid"] for p in state["processes"]),
            *(d["pid"] for d in state["devices"])]
    return [pid for pid in pids if pid]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "run").mkdir(mode=0o700)
    return cli_env(tmp_path)


@pytest.fixture
def state_file(env: dict[str, str]) -> Path:
    return Path(env["FLEET_STATE_DIR"]) / "stack.json"


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return unique_device_id(request.node.name.removeprefix("test_")[:20])


def keep_stack(env: dict[str, str], prefix: str, *options: str) -> dict[str, Any]:
    up = fleet(env, "stack", "up", "--devices", "2", "--no-runtime", "--keep", "--json",
               "--device-prefix", prefix, *options)
    assert up.returncode == 0, up.stderr
    return dict(json.loads(up.stdout))


def foreground_stack(env: dict[str, str], prefix: str,
                     state_file: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """``fleet stack up`` in the foreground, as a user runs it in a terminal."""
    proc = subprocess.Popen(
        [str(BIN / "fleet"), "stack", "up", "--devices", "2", "--no-runtime", "--json",
         "--device-prefix", prefix], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not state_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _out, err = proc.communicate()
            pytest.fail(f"fleet stack up did not come up: {err}")
        time.sleep(0.1)
    return proc, read_state(state_file)


# ------------------------------------------------------------------------------ bound children


@pytest.mark.slow
def test_a_foreground_stack_killed_with_sigkill_takes_its_processes_along(
        env: dict[str, str], state_file: Path, prefix: str) -> None:
    proc, state = foreground_stack(env, prefix, state_file)
    workdir = state["workdir"]
    started = recorded_pids(state)
    assert len(started) == 5  # nats-server, issuer, fleet-callout, two agents
    assert set(started) <= set(of_workdir(workdir))
    born = {pid: processes.start_time(pid) for pid in started}

    proc.kill()  # SIGKILL: no handler runs, nothing is torn down by the stack itself
    proc.wait(10)
    assert wait_gone(workdir) == [], "processes of the killed stack survived it"
    # a process in the middle of exiting has lost its command line but is not a zombie yet
    assert wait_dead(born) == [], "processes of the killed stack survived it"

    # the state file is left behind, its processes are gone: the next stack starts anyway
    # (with the same device ids: their agents are really gone, or the host lock would say so)
    assert state_file.exists()
    state = keep_stack(env, prefix)
    assert state["workdir"] != workdir
    assert not Path(workdir).exists()  # the old stack's remains were removed
    down = fleet(env, "stack", "down")
    assert down.returncode == 0, down.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hangup"])
def test_ctrl_c_or_a_closed_terminal_stops_a_foreground_stack_in_order_and_cleans_up(
        env: dict[str, str], state_file: Path, prefix: str, sig: signal.Signals) -> None:
    proc, state = foreground_stack(env, prefix, state_file)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "never retrieved" not in err
    assert of_workdir(state["workdir"]) == []
    assert not state_file.exists()
    assert not Path(state["workdir"]).exists()


@pytest.mark.slow
def test_a_stale_state_file_is_said_and_cleaned_up(
        env: dict[str, str], state_file: Path, prefix: str) -> None:
    state = keep_stack(env, prefix)
    for pid in of_workdir(state["workdir"]):  # everything dies at once: a reboot
        os.kill(pid, signal.SIGKILL)
    assert wait_gone(state["workdir"]) == []

    status = fleet(env, "stack", "status")
    assert status.returncode == 1
    assert "is no longer running" in one_line_error(status)

    again = keep_stack(env, prefix)  # same ids, same state file
    assert again["workdir"] != state["workdir"]
    assert not Path(state["workdir"]).exists()
    down = fleet(env, "stack", "down")
    assert down.returncode == 0, down.stderr
    assert of_workdir(again["workdir"]) == []


@pytest.mark.slow
def test_a_running_stack_is_not_replaced(env: dict[str, str], state_file: Path,
                                         prefix: str) -> None:
    state = keep_stack(env, prefix)
    try:
        again = fleet(env, "stack", "up", "--devices", "1", "--no-runtime", "--keep",
                      "--device-prefix", f"{prefix}-b")
        assert again.returncode == 1
        line = one_line_error(again)
        assert "a local stack is running" in line
        assert "nats-server (pid" in line
        assert read_state(state_file)["workdir"] == state["workdir"]
    finally:
        assert fleet(env, "stack", "down").returncode == 0


@pytest.mark.parametrize("text", ["{not json", '{"version": 1}'])
def test_a_corrupt_state_file_is_one_line_for_every_stack_command(
        env: dict[str, str], state_file: Path, text: str) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(text)
    extra = {"up": ["--devices", "1", "--no-runtime"],
             "add-user": ["alice", "--password-file", "/dev/null"],
             "add-web-client": ["dashboard", "--redirect-uri", "http://127.0.0.1:9/cb"]}
    for command in ("up", "status", "down", "add-user", "add-web-client"):
        proc = fleet(env, "stack", command, *extra.get(command, []))
        assert proc.returncode == 1, (command, proc.stderr)
        assert "remove it if no stack runs" in one_line_error(proc)
    assert state_file.read_text() == text  # nothing guessed, nothing removed


# ------------------------------------------------------------------------------ down


@pytest.mark.slow
def test_down_stops_a_process_restarted_by_hand(env: dict[str, str], prefix: str) -> None:
    state = keep_stack(env, prefix)
    agent = state["devices"][0]
    os.kill(agent["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 30
    while alive(agent["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    # the same agent again, as a user would restart it (a new pid the state file does not know)
    with open(os.devnull, "wb") as devnull:
        restarted = subprocess.Popen(
            [str(BIN / "fleet-agent"), "--config", agent["config_file"]], env=env,
            stdout=devnull, stderr=devnull, start_new_session=True)
    try:
        time.sleep(2)
        assert restarted.poll() is None
        down = fleet(env, "stack", "down")
        assert down.returncode == 0, down.stderr
        assert f"agent {agent['device_id']}" in down.stdout
        assert restarted.wait(5) is not None
        assert of_workdir(state["workdir"]) == []
        assert not Path(state["workdir"]).exists()
    finally:
        if restarted.poll() is None:
            restarted.kill()
            restarted.wait()


def test_stopping_says_which_process_it_could_not_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process of another user (root-owned, for a user's ``fleet stack down``) cannot be
    signalled: the report names it instead of carrying on as if it was stopped."""
    config = str(tmp_path / "agents" / "x" / "config.toml")
    # looks like an agent of that stack to the process table
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             AGENT_PROGRAMS[0], "--config", config])
    real_kill = os.kill

    def not_permitted(pid: int, sig: int) -> None:
        if pid == proc.pid:
            raise PermissionError(1, "Operation not permitted")
        real_kill(pid, sig)

    component = Component("agent x", None, config, AGENT_PROGRAMS)
    monkeypatch.setattr(processes.os, "kill", not_permitted)
    try:
        deadline = time.monotonic() + 5
        while not component.runs_as(processes.command_line(proc.pid) or []) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        report = processes.stop([[component]], timeout=1, kill_timeout=1)
        assert report.stopped == []
        assert report.failed == [f"agent x (pid {proc.pid}): not permitted to signal it"]
    finally:
        monkeypatch.undo()
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------ status


@pytest.mark.slow
def test_status_says_each_dead_part_in_one_line(env: dict[str, str], prefix: str) -> None:
    state = keep_stack(env, prefix)
    try:
        healthy = fleet(env, "stack", "status")
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stderr == ""

        callout = next(p for p in state["processes"] if p["name"] == "fleet-callout")
        os.kill(callout["pid"], signal.SIGKILL)
        status = fleet(env, "stack", "status", timeout=60)
        assert status.returncode == 1
        line = one_line_error(status)
        assert f"fleet-callout (pid {callout['pid']}) is not running" in line

        os.kill(state["nats_server"]["pid"], signal.SIGKILL)
        status = fleet(env, "stack", "status", timeout=60)
        assert status.returncode == 1
        lines = status.stderr.strip().splitlines()
        assert len(lines) == 2, status.stderr
        assert all(line.startswith("fleet: ") for line in lines)
        assert "Traceback" not in status.stderr
        assert any("nats-server" in line and "nothing can connect" in line for line in lines)
    finally:
        down = fleet(env, "stack", "down")
        assert down.returncode == 0, down.stderr
    assert of_workdir(state["workdir"]) == []


# ------------------------------------------------------------------------------ spawning


def test_a_bound_child_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    """The kernel's death signal follows the *thread* that forked: a stack started from a
    worker thread (``asyncio.to_thread``) must not lose its processes when that thread ends."""
    box: list[subprocess.Popen[bytes]] = []
    worker = threading.Thread(target=lambda: box.append(
        spawn(["sleep", "30"], tmp_path / "log", detach=False)))
    worker.start()
    worker.join()
    (child,) = box
    try:
        time.sleep(0.5)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("detach", [False, True], ids=["bound", "detached"])
def test_bound_children_die_with_their_parent_detached_ones_do_not(
        tmp_path: Path, detach: bool) -> None:
    script = ("import sys, time; from pathlib import Path; "
              "from harmony_fleet.localstack.processes import spawn; "
              f"p = spawn(['sleep', '30'], Path({str(tmp_path / 'log')!r}), detach={detach}); "
              "print(p.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 3
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive(child) is detach
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
