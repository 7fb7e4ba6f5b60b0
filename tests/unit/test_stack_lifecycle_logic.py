"""The local stack's lifecycle, the pure parts: recognising its processes by their command
lines, the order they stop in, what ``fleet stack status`` reports, which state files can be
used, and what a failed process' log says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harmony_fleet.localstack.processes import Component, failure_line
from harmony_fleet.localstack.stack import (
    AGENT_PROGRAMS,
    StackError,
    StackHealth,
    read_state,
    stack_components,
)

WORKDIR = "/tmp/fleet-stack-abc"
AGENT_CONFIG = f"{WORKDIR}/agents/local-0/config.toml"
AGENT = Component("agent local-0", 100, AGENT_CONFIG, AGENT_PROGRAMS)
NATS = Component("nats-server", 10, f"{WORKDIR}/nats-server.conf", ("nats-server",))


@pytest.mark.parametrize("argv", [
    ["/v/bin/python", "-m", "harmony_fleet.agent.main", "--config", AGENT_CONFIG],
    ["/v/bin/python", "/v/bin/fleet-agent", "-c", AGENT_CONFIG],  # the console script
    ["fleet-agent", f"--config={AGENT_CONFIG}"],
])
def test_an_agent_started_again_by_hand_is_recognised(argv: list[str]) -> None:
    assert AGENT.runs_as(argv)


@pytest.mark.parametrize("argv", [
    ["vim", AGENT_CONFIG],  # has the file open, is not the agent
    ["tail", "-f", f"{WORKDIR}/agents/local-0/agent.log"],
    ["/v/bin/python", "-m", "harmony_fleet.agent.main", "--config",
     "/tmp/fleet-stack-other/agents/local-0/config.toml"],  # another stack's agent
    ["/v/bin/python", "-m", "harmony_fleet.agent.main", "--config", f"{AGENT_CONFIG}.bak"],
    [],
])
def test_other_processes_are_not(argv: list[str]) -> None:
    assert not AGENT.runs_as(argv)


def test_a_binary_is_recognised_by_its_name() -> None:
    argv = ["/opt/nats/nats-server", "-c", f"{WORKDIR}/nats-server.conf", "-P", "x.pid"]
    assert NATS.runs_as(argv)
    assert not NATS.runs_as(["cat", f"{WORKDIR}/nats-server.conf"])


def state(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1, "started_at": "2026-12-01T10:00:00+00:00", "auth_mode": "callout",
        "workdir": WORKDIR,
        "nats_server": {"pid": 10, "config_file": f"{WORKDIR}/nats-server.conf",
                        "programs": ["nats-server"]},
        "processes": [
            {"name": "oidc-issuer", "pid": 11, "match": f"{WORKDIR}/secrets/issuer.json",
             "programs": ["harmony_fleet.localstack.issuer"]},
            {"name": "fleet-callout", "pid": 12, "match": f"{WORKDIR}/fleet-callout.toml",
             "programs": ["harmony_fleet.callout.main", "fleet-callout"]},
        ],
        "devices": [
            {"device_id": "local-0", "pid": 100, "config_file": AGENT_CONFIG,
             "mode": "subprocess", "programs": list(AGENT_PROGRAMS)},
            {"device_id": "local-1", "pid": None, "config_file": f"{WORKDIR}/x.toml",
             "mode": "inprocess"},
        ],
        "owner": None,
    }
    return doc | overrides


def test_agents_stop_first_then_the_services_last_started_first_then_nats() -> None:
    groups = stack_components(state())
    assert [[c.name for c in group] for group in groups] == [
        ["agent local-0"], ["fleet-callout", "oidc-issuer"], ["nats-server"]]
    assert groups[0][0] == AGENT


def test_a_state_file_of_an_older_version_matches_by_file_alone() -> None:
    doc = state()
    del doc["nats_server"]["programs"]
    (server,) = stack_components(doc)[2]
    assert server.programs == ()
    assert server.runs_as(["anything", "-c", f"{WORKDIR}/nats-server.conf"])


def health(running: dict[str, list[int]], owner_alive: bool | None = None) -> StackHealth:
    components = [c for group in stack_components(state()) for c in group]
    return StackHealth({c: running.get(c.name, []) for c in components}, owner_alive)


def test_a_stack_whose_processes_are_all_gone_is_one_problem() -> None:
    problems = health({}).problems(Path("/s/stack.json"), state())
    assert problems == ["the stack recorded in /s/stack.json is no longer running (its "
                        "processes are gone): 'fleet stack down' removes what is left of it"]
    assert not health({}).anything_runs


def test_each_missing_part_is_one_line_with_what_it_breaks() -> None:
    problems = health({"nats-server": [10], "oidc-issuer": [11]}).problems(
        Path("/s/stack.json"), state())
    assert problems == [
        "agent local-0 (pid 100) is not running",
        "fleet-callout (pid 12) is not running: no device or admin can authenticate, and no "
        "report is written",
    ]


def test_a_foreground_stack_whose_owner_died_says_so() -> None:
    doc = state(owner={"pid": 4242, "started": 1})
    running = {c.name: [1] for group in stack_components(doc) for c in group}
    problems = health(running, owner_alive=False).problems(Path("/s/stack.json"), doc)
    assert problems == ["the 'fleet stack up' process (pid 4242) that ran this stack is gone: "
                        "stop what is left with 'fleet stack down'"]
    assert health({}, owner_alive=True).anything_runs  # still starting its processes


def test_a_healthy_stack_has_no_problem() -> None:
    running = {c.name: [1] for group in stack_components(state()) for c in group}
    assert health(running).problems(Path("/s/stack.json"), state()) == []


@pytest.mark.parametrize(("text", "needle"), [
    (None, "no local stack is running"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is not a state file of the local stack"),
    ('{"version": 1, "workdir": "/x"}', "nats_server: Field required"),
    ('{"version": 7}', "unsupported state version 7"),
])
def test_state_files_that_cannot_be_used_are_one_clear_line(
        tmp_path: Path, text: str | None, needle: str) -> None:
    path = tmp_path / "stack.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(StackError) as err:
        read_state(path)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_a_valid_state_file_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(state()))
    assert read_state(path) == state()


@pytest.mark.parametrize(("log", "line"), [
    ("[1] 2026/12/01 [INF] Starting nats-server\n"
     "[1] 2026/12/01 [FTL] Error listening on port: 127.0.0.1:4222, \"bind: address already "
     "in use\"\n", "[1] 2026/12/01 [FTL] Error listening on port: 127.0.0.1:4222, \"bind: "
     "address already in use\""),
    ("INFO starting\nERROR cannot read the seed file /x\nINFO bye\n",
     "ERROR cannot read the seed file /x"),
    ("one\ntwo\n\n", "two"),
    ("", "(nothing in its log)"),
])
def test_the_line_that_says_why_a_process_failed(log: str, line: str) -> None:
    assert failure_line(log) == line


def test_every_cluster_member_is_stopped_after_the_services() -> None:
    servers = [{"pid": 10 + i, "config_file": f"{WORKDIR}/{'' if i == 0 else f'nats-{i + 1}/'}"
                "nats-server.conf", "programs": ["nats-server"], "url": f"nats://x:{i}"}
               for i in range(3)]
    doc = state(nats_servers=servers)
    groups = stack_components(doc)
    assert [c.name for c in groups[2]] == ["nats-server", "nats-server 2", "nats-server 3"]
    assert [c.pid for c in groups[2]] == [10, 11, 12]
    running = {c: [c.pid or 0] for group in groups for c in group}
    member = next(c for c in running if c.name == "nats-server 2")
    running[member] = []
    (line,) = StackHealth(running, None).problems(Path("/s.json"), doc)
    assert line.startswith("nats-server 2 (pid 11) is not running: the cluster carries on")
