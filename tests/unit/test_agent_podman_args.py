"""What podman can be given (agent.runtime env_delivery / argument_problem, agent.plan
unpassable_fields): the environment through an env file podman reads back exactly, the rest as
arguments within Linux's 128 KiB per argument, and per-field errors for what cannot be given."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.agent.plan import decode_desired, unpassable_fields
from harmony_fleet.agent.runtime import (
    ENV_FILE_LINE_MAX,
    MAX_ARG_STRLEN,
    argument_problem,
    entrypoint_argument,
    env_delivery,
    env_file_can_hold,
)
from harmony_fleet.contracts import MAX_DESIRED_STATE_BYTES, PodmanScore

from .strategies import PROPERTY

_WS = " \t"


def podman_reads_env_file(content: bytes) -> dict[str, str]:
    """podman 4.3's env-file reader (pkg/env ParseFile), line by line as Go's bufio.Scanner
    splits them (ScanLines: on "\\n", a trailing "\\r" dropped), each line left-trimmed,
    empty and "#" lines skipped, cut at the first "="."""
    env = {}
    for raw in content.decode().split("\n"):
        line = raw.removesuffix("\r").lstrip(_WS)
        assert len(raw.encode()) <= ENV_FILE_LINE_MAX, "bufio.Scanner: token too long"
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        env[name.lstrip(_WS)] = value
    return env


_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,10}\Z", fullmatch=True)
_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " lead", "trail  ", '"quoted"', "#hash", "a=b", "a\rb", "ab\r",
                     "-----BEGIN CERT-----\nAAAA\n-----END CERT-----\n", "ünï", "$HOME"]),
)


@PROPERTY
@given(env=st.dictionaries(_names, _values, max_size=8))
def test_the_env_file_reads_back_exactly_and_the_rest_goes_as_arguments(
    env: dict[str, str]
) -> None:
    env = {k: v for k, v in env.items() if "\0" not in v}  # refused earlier (see below)
    content, args = env_delivery(env)
    from_file = podman_reads_env_file(content)
    from_args = dict(a.split("=", 1) for a in args)
    assert from_file | from_args == env
    assert not set(from_file) & set(from_args)
    assert all(env_file_can_hold(k, v) for k, v in from_file.items())
    assert not any(env_file_can_hold(k, v) for k, v in from_args.items())


@pytest.mark.parametrize(("value", "in_file"), [
    ("plain", True), ("", True), (" spaces ", True), ('"q"', True), ("#x", True),
    ("a=b=c", True), ("in\rside", True), ("ünï", True),
    ("two\nlines", False), ("ends with cr\r", False),
])
def test_what_an_env_file_holds(value: str, in_file: bool) -> None:
    assert env_file_can_hold("V", value) is in_file


def test_the_env_file_line_limit() -> None:
    fits = "x" * (ENV_FILE_LINE_MAX - len("V="))
    assert env_file_can_hold("V", fits)
    assert not env_file_can_hold("V", fits + "x")
    content, args = env_delivery({"V": fits + "x", "W": "w"})
    assert content == b"W=w\n"
    assert args == [f"V={fits}x"]


def test_argument_limits() -> None:
    assert argument_problem("x" * (MAX_ARG_STRLEN - 1)) is None
    too_long = argument_problem("x" * MAX_ARG_STRLEN)
    assert too_long == (f"is {MAX_ARG_STRLEN} bytes; one argument or environment variable may "
                        f"have at most {MAX_ARG_STRLEN - 1} (Linux's MAX_ARG_STRLEN)")
    assert argument_problem("é" * (MAX_ARG_STRLEN // 2)) is not None  # bytes, not characters
    assert argument_problem("a\0b") == ("holds a NUL byte, which no argument or environment "
                                        "variable can carry")


def test_the_entrypoint_is_short_json() -> None:
    assert entrypoint_argument(["sh", "-c", "é"]) == '["sh", "-c", "é"]'
    assert json.loads(entrypoint_argument(["a\nb", '"'])) == ["a\nb", '"']


def score(**service: Any) -> PodmanScore:
    return PodmanScore.model_validate({
        "services": [{"name": "web", "image": "localhost/web:1", **service}],
        "init_containers": [{"name": "seed", "image": "localhost/web:1",
                             "args": ["x" * MAX_ARG_STRLEN]}],
    })


BIG = "x" * MAX_ARG_STRLEN


def test_each_field_is_named() -> None:
    problems = unpassable_fields(score(
        command=["sh", BIG], args=["ok", BIG, "a\0b"], env={"OK": "1", "BIG": BIG},
        volumes=[{"source": "/srv/a\0", "target": "/data"}]))
    assert [p.split(" ", 1)[0] for p in problems] == [
        "services[0].command[1]", "services[0].args[1]", "services[0].args[2]",
        "services[0].env.BIG", "services[0].volumes[0].source", "init_containers[0].args[0]"]
    assert problems[3].startswith(f"services[0].env.BIG (as BIG=...) is {MAX_ARG_STRLEN + 4} "
                                  "bytes;")


def test_a_command_whose_json_is_too_long_for_one_argument() -> None:
    parts = ["y" * 1000] * 140  # each fine, together more than one --entrypoint may hold
    assert unpassable_fields(PodmanScore.model_validate(
        {"services": [{"name": "web", "image": "i", "command": parts}]})) == [
        f"services[0].command (podman's --entrypoint, as JSON) is "
        f"{len(entrypoint_argument(parts).encode())} bytes; one argument or environment variable "
        f"may have at most {MAX_ARG_STRLEN - 1} (Linux's MAX_ARG_STRLEN)"]


def test_many_problems_are_counted_after_ten() -> None:
    problems = unpassable_fields(score(args=["a\0"] * 14))
    assert len(problems) == 11
    assert problems[-1] == "and 5 more"  # 14 args + the init container's: 15, 10 named


def test_fine_scores_have_no_problems() -> None:
    ok = PodmanScore.model_validate({"services": [{
        "name": "web", "image": "i", "command": ["sh", "-c"], "args": ["x" * (MAX_ARG_STRLEN - 1)],
        "env": {f"V{i}": "v" * 100 for i in range(1000)}}]})
    assert unpassable_fields(ok) == []


def test_decoding_refuses_it_before_anything_is_created() -> None:
    raw = json.dumps({"services": [{"name": "web", "image": "i", "args": [BIG]}]}).encode()
    assert len(raw) <= MAX_DESIRED_STATE_BYTES
    desired = decode_desired("ns_web", raw, 4, MAX_DESIRED_STATE_BYTES)
    assert desired.score is None
    assert desired.score_hash is not None
    assert desired.error == (f"cannot be given to podman: services[0].args[0] is "
                             f"{MAX_ARG_STRLEN} bytes; one argument or environment variable may "
                             f"have at most {MAX_ARG_STRLEN - 1} (Linux's MAX_ARG_STRLEN)")
