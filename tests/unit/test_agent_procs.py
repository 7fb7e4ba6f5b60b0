"""Finding an exec session's processes (agent.procs): the marker must match one environment
entry exactly, and only processes of the container's PID namespace are considered. A fake
``/proc`` tree stands in for the host's."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.agent.procs import (
    EXEC_SESSION_ENV,
    carries,
    find_marked,
    pid_namespace,
    session_marker,
)

from .strategies import PROPERTY

NS = "pid:[4026532328]"
MARK = session_marker("5f2c9e1a0b7d3c44")


def fake_process(proc: Path, pid: int, namespace: str, environ: bytes | None) -> None:
    entry = proc / str(pid)
    (entry / "ns").mkdir(parents=True)
    os.symlink(namespace, entry / "ns" / "pid")  # /proc shows namespaces as such links
    if environ is not None:
        (entry / "environ").write_bytes(environ)


def test_the_marker() -> None:
    assert f"{EXEC_SESSION_ENV}=5f2c9e1a0b7d3c44".encode() == MARK


def test_carries_matches_a_whole_entry_only() -> None:
    assert carries(b"PATH=/bin\0" + MARK + b"\0HOME=/", MARK)
    assert carries(MARK, MARK)
    assert carries(MARK + b"\0", MARK)
    assert not carries(b"PATH=/bin\0" + MARK + b"0\0", MARK)  # another session's longer id
    assert not carries(b"X" + MARK, MARK)
    assert not carries(b"", MARK)
    assert not carries(MARK[:-1], MARK)


@PROPERTY
@given(entries=st.lists(st.binary(max_size=30).filter(lambda b: b"\0" not in b), max_size=6))
def test_carries_iff_one_entry_is_the_marker(entries: list[bytes]) -> None:
    assert carries(b"\0".join(entries), MARK) == (MARK in entries)


def test_find_marked_in_the_namespace_only(tmp_path: Path) -> None:
    fake_process(tmp_path, 11468, NS, b"PATH=/bin\0HOME=/\0")  # the container's PID 1
    fake_process(tmp_path, 11549, NS, b"PATH=/bin\0" + MARK + b"\0")  # the exec'd command
    fake_process(tmp_path, 11554, NS, MARK + b"\0")  # a child it started
    fake_process(tmp_path, 11561, NS, session_marker("another-session") + b"\0")
    fake_process(tmp_path, 900, "pid:[4026531836]", MARK + b"\0")  # the host's: never
    fake_process(tmp_path, 901, NS, None)  # ended while being read
    (tmp_path / "self").mkdir()
    (tmp_path / "cpuinfo").write_text("")
    assert find_marked(NS, MARK, tmp_path) == [11549, 11554]
    assert pid_namespace(11468, tmp_path) == NS
    assert pid_namespace(4242, tmp_path) is None
