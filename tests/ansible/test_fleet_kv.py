"""harmony.fleet.fleet_kv (module and lookup) against ``fleet stack up``: the real
ansible-playbook, real NATS, keys of devices unique to this run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harmony_fleet.contracts import REDACTED
from harmony_fleet.contracts.sealing import generate_private_key, public_key_of, seal

from .conftest import CliStack, task_results, write_play

pytestmark = pytest.mark.ansible

IMAGE = "localhost/fleet-busybox:latest"


def score(tag: str) -> dict[str, Any]:
    return {"services": [{"name": "web", "image": f"{IMAGE}", "args": [tag]}]}


def kv(title: str, **args: Any) -> dict[str, Any]:
    return {"name": title, "harmony.fleet.fleet_kv": args}


def run_tasks(stack: CliStack, tmp_path: Path, name: str, tasks: list[dict[str, Any]],
              *options: str) -> dict[str, Any]:
    return stack.playbook(write_play(tmp_path, tasks, f"{name}.yml"), *options)


def test_put_is_checked_idempotent_diffed_and_read_back(cli_stack: CliStack, tmp_path: Path) -> None:
    key = f"{cli_stack.devices[0]}.ops_kv"
    put = kv("put", key=key, value=score("one"))

    checked = task_results(run_tasks(cli_stack, tmp_path, "check", [put], "--check", "--diff"),
                           "put")
    assert checked["changed"] is True
    assert checked["diff"]["before"] is None
    assert checked["diff"]["after"]["services"][0]["args"] == ["one"]
    assert checked["revision"] is None
    got = task_results(run_tasks(cli_stack, tmp_path, "get0", [kv("get", key=key, state="get")]),
                       "get")
    assert got["exists"] is False  # check mode wrote nothing
    assert got["value"] is None

    first = task_results(run_tasks(cli_stack, tmp_path, "first", [put], "--diff"), "put")
    assert first.get("failed") is not True, first
    assert first["changed"] is True
    assert first["exists"] is True
    assert isinstance(first["revision"], int)
    assert first["value"]["services"][0]["args"] == ["one"]

    second = task_results(run_tasks(cli_stack, tmp_path, "second", [put], "--diff"), "put")
    assert second["changed"] is False
    assert second["revision"] == first["revision"]
    assert "diff" not in second

    got = task_results(run_tasks(cli_stack, tmp_path, "get1", [kv("get", key=key, state="get")]),
                       "get")
    assert got["changed"] is False
    assert got["revision"] == first["revision"]
    # stored as fleet_deployment stores scores: canonical, defaults filled in
    assert got["value"]["version"] == 0
    assert got["value"]["services"][0]["image"] == IMAGE


def test_compare_and_set_on_revision(cli_stack: CliStack, tmp_path: Path) -> None:
    key = f"{cli_stack.devices[0]}.ops_cas"
    first = task_results(run_tasks(cli_stack, tmp_path, "init",
                                   [kv("put", key=key, value=score("v1"), revision=0)]), "put")
    assert first["changed"] is True
    rev = first["revision"]

    # someone else's revision: refused, in check mode too, and nothing is written
    for options in (("--check",), ()):
        stale = task_results(run_tasks(cli_stack, tmp_path, "stale", [
            kv("put", key=key, value=score("v2"), revision=rev + 7)], *options), "put")
        assert stale["failed"] is True
        assert stale["error"] == "RevisionMismatch"
        assert f"expected revision {rev + 7}, found revision {rev}" in stale["msg"]
    again = task_results(run_tasks(cli_stack, tmp_path, "create-again", [
        kv("put", key=key, value=score("v2"), revision=0)]), "put")
    assert again["error"] == "RevisionMismatch"  # 0: the key must have no value

    # the right revision: written; the same task again is unchanged (the value is there)
    cas = [kv("put", key=key, value=score("v2"), revision=rev)]
    written = task_results(run_tasks(cli_stack, tmp_path, "cas", cas), "put")
    assert written["changed"] is True
    assert written["revision"] > rev
    assert task_results(run_tasks(cli_stack, tmp_path, "cas2", cas), "put")["changed"] is False

    # the history still holds the first value
    old = task_results(run_tasks(cli_stack, tmp_path, "old", [
        kv("get", key=key, state="get", revision=rev)]), "get")
    assert old["value"]["services"][0]["args"] == ["v1"]

    # delete: only at the current revision, then gone, then unchanged
    wrong = task_results(run_tasks(cli_stack, tmp_path, "del-stale", [
        kv("del", key=key, state="absent", revision=rev)]), "del")
    assert wrong["error"] == "RevisionMismatch"
    delete = [kv("del", key=key, state="absent", revision=written["revision"])]
    checked = task_results(run_tasks(cli_stack, tmp_path, "del-check", delete, "--check",
                                     "--diff"), "del")
    assert checked["changed"] is True
    assert checked["diff"]["after"] is None
    gone = task_results(run_tasks(cli_stack, tmp_path, "del", delete), "del")
    assert gone["changed"] is True
    assert gone["exists"] is False
    assert task_results(run_tasks(cli_stack, tmp_path, "del2", delete), "del")["changed"] is False
    # a deleted key can be created again with revision 0
    recreated = task_results(run_tasks(cli_stack, tmp_path, "recreate", [
        kv("put", key=key, value=score("v3"), revision=0)]), "put")
    assert recreated["changed"] is True


def test_sealed_values_are_never_shown(cli_stack: CliStack, tmp_path: Path) -> None:
    key = f"{cli_stack.devices[0]}.ops_sealed"
    envelope = seal(public_key_of(generate_private_key()), "ops_sealed", "db", b"s3cret-pw")
    value = {"services": [{"name": "web", "image": IMAGE, "secrets": ["db"]}],
             "secrets": {"db": envelope}}
    doc = run_tasks(cli_stack, tmp_path, "sealed", [
        kv("put", key=key, value=value),
        kv("get", key=key, state="get"),
        {"name": "lookup", "ansible.builtin.debug": {
            "msg": f"{{{{ lookup('harmony.fleet.fleet_kv', '{key}') }}}}"}},
    ], "--diff")
    put, got = task_results(doc, "put"), task_results(doc, "get")
    assert put["changed"] is True
    assert put["diff"]["after"]["secrets"] == {"db": REDACTED}
    assert got["value"]["secrets"] == {"db": REDACTED}
    assert task_results(doc, "lookup")["msg"]["secrets"] == {"db": REDACTED}
    # the task's JSON carries the value (the envelope) as the task argument; the results
    # never do
    results = [put, got, task_results(doc, "lookup")]
    assert envelope not in json.dumps([{k: v for k, v in r.items() if k != "invocation"}
                                       for r in results])
    # a plaintext "secret" is not a sealed value: refused
    plain = dict(value, secrets={"db": "s3cret-pw"})
    refused = task_results(run_tasks(cli_stack, tmp_path, "plain", [
        kv("put", key=key, value=plain)]), "put")
    assert refused["error"] == "InvalidInput"
    assert "s3cret-pw" not in refused["msg"]


def test_bad_keys_and_report_buckets_are_invalid_input(cli_stack: CliStack, tmp_path: Path) -> None:
    d0 = cli_stack.devices[0]
    doc = run_tasks(cli_stack, tmp_path, "bad", [
        {**kv("no-deployment", key=d0, state="get"), "ignore_errors": True},
        {**kv("bad-token", key=f"{d0}.Shop_Web", state="get"), "ignore_errors": True},
        {**kv("wrong-prefix", bucket="device-state", key=f"info.{d0}.ops_kv", state="get"),
         "ignore_errors": True},
        {**kv("report-write", bucket="device-info", key=f"info.{d0}", value={"x": 1}),
         "ignore_errors": True},
        {**kv("report-delete", bucket="device-heartbeat", key=f"heartbeat.{d0}",
              state="absent"), "ignore_errors": True},
        {**kv("not-a-score", key=f"{d0}.ops_kv", value={"services": [{"name": "web"}]}),
         "ignore_errors": True},
    ])
    expected = {
        "no-deployment": "has 1 token(s), expected 2",
        "bad-token": "deployment 'Shop_Web' is not a deployment token",
        "wrong-prefix": "must start with 'state.'",
        "report-write": "device-info holds device reports, written by the report writer only",
        "report-delete": "device-heartbeat holds device reports",
        "not-a-score": "value is not a valid score: services.0.image",
    }
    for title, fragment in expected.items():
        res = task_results(doc, title)
        assert res["failed"] is True, title
        assert res["error"] == "InvalidInput", (title, res)
        assert fragment in res["msg"], (title, res["msg"])


def test_reads_of_report_buckets(cli_stack: CliStack, tmp_path: Path) -> None:
    d0 = cli_stack.devices[0]
    doc = run_tasks(cli_stack, tmp_path, "reports", [
        kv("info", bucket="device-info", key=f"info.{d0}", state="get"),
        kv("beat", bucket="device-heartbeat", key=f"heartbeat.{d0}", state="get"),
    ])
    info = task_results(doc, "info")
    assert info["exists"] is True
    assert info["value"]["device_id"] == d0
    assert info["value"]["labels"] == {"site": "lab"}
    assert task_results(doc, "beat")["value"]["device_id"] == d0


def test_lookup_keys_filters_and_errors(cli_stack: CliStack, tmp_path: Path) -> None:
    d0, d1 = cli_stack.devices
    prepare = [kv(f"put {d}", key=f"{d}.ops_look", value=score(d)) for d in (d0, d1)]
    run_tasks(cli_stack, tmp_path, "prepare", prepare)

    def lookup(title: str, expression: str) -> dict[str, Any]:
        return {"name": title, "ansible.builtin.debug": {"msg": f"{{{{ {expression} }}}}"},
                "ignore_errors": True}

    doc = run_tasks(cli_stack, tmp_path, "lookups", [
        lookup("one", f"lookup('harmony.fleet.fleet_kv', '{d0}.ops_look')"),
        lookup("missing", f"lookup('harmony.fleet.fleet_kv', '{d0}.ops_none') is none"),
        lookup("filter", "lookup('harmony.fleet.fleet_kv', '*.ops_look')"),
        lookup("several", f"query('harmony.fleet.fleet_kv', '{d0}.ops_look', '{d1}.>')"),
        lookup("info", "lookup('harmony.fleet.fleet_kv', 'info.*', bucket='device-info')"),
        lookup("bad", "lookup('harmony.fleet.fleet_kv', '*.Bad_Token')"),
        lookup("bad-bucket", "lookup('harmony.fleet.fleet_kv', 'x', bucket='secrets')"),
    ])
    assert task_results(doc, "one")["msg"]["services"][0]["args"] == [d0]
    assert task_results(doc, "missing")["msg"] is True
    both = task_results(doc, "filter")["msg"]
    assert sorted(both) == [f"{d0}.ops_look", f"{d1}.ops_look"]
    assert both[f"{d1}.ops_look"]["services"][0]["args"] == [d1]
    several = task_results(doc, "several")["msg"]
    assert several[0]["services"][0]["args"] == [d0]
    assert list(several[1]) == [f"{d1}.ops_look"]
    assert sorted(task_results(doc, "info")["msg"]) == [f"info.{d0}", f"info.{d1}"]
    bad = task_results(doc, "bad")
    assert bad["failed"] is True
    assert "InvalidInput" in bad["msg"]
    assert "key filter '*.Bad_Token'" in bad["msg"]
    assert "secrets" in task_results(doc, "bad-bucket")["msg"]
