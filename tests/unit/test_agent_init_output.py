"""A failed init container's last output in its deployment's state message (agent.plan
output_tail and init_failure): the last lines, bounded, safe to show, within the report."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.agent.plan import (
    INIT_OUTPUT_BYTES,
    INIT_OUTPUT_LINES,
    init_container_name,
    init_failure,
    output_tail,
)
from harmony_fleet.agent.reporter import fit_state
from harmony_fleet.contracts import MAX_STATE_MESSAGE_BYTES, DeploymentState, Phase
from harmony_fleet.contracts.base import utcnow

from .strategies import PROPERTY


def test_the_last_lines() -> None:
    raw = b"".join(f"line {i}\n".encode() for i in range(1, 26))
    assert INIT_OUTPUT_LINES == 10
    assert output_tail(raw) == "\n".join(f"line {i}" for i in range(16, 26))
    assert output_tail(raw, lines=2) == "line 24\nline 25"


def test_short_output_whole_and_empty_output_nothing() -> None:
    assert output_tail(b"migrating...\nERROR: no database\n") == "migrating...\nERROR: no database"
    assert output_tail(b"") == ""
    assert output_tail(b"\n\n") == ""
    assert output_tail(b"no newline at the end") == "no newline at the end"


def test_a_huge_last_line_is_cut_at_the_front() -> None:
    raw = b"x" * 5000 + b" the cause"
    tail = output_tail(raw)
    assert len(tail.encode()) == INIT_OUTPUT_BYTES
    assert tail.startswith("[...]")
    assert tail.endswith("x the cause")


def test_cut_never_splits_a_character() -> None:
    raw = "é".encode() * 2000
    tail = output_tail(raw)
    assert len(tail.encode()) <= INIT_OUTPUT_BYTES
    assert tail.removeprefix("[...]") == "é" * len(tail.removeprefix("[...]"))


def test_control_characters_are_neutralised() -> None:
    raw = b"\x1b[31mred\x1b[0m\r\nbell\x07 tab\there\r\n\xff\xfe"
    assert output_tail(raw) == "\ufffd[31mred\ufffd[0m\nbell\ufffd tab\there\n\ufffd\ufffd"


def test_the_message() -> None:
    assert init_failure("init container m (x) exited with code 3", "") == \
        "init container m (x) exited with code 3"
    assert init_failure("init container m (x) exited with code 3", "boom") == \
        "init container m (x) exited with code 3; its last output:\nboom"


@PROPERTY
@given(raw=st.binary(max_size=4000), lines=st.integers(1, 20),
       max_bytes=st.integers(16, 2048))
def test_always_within_bounds(raw: bytes, lines: int, max_bytes: int) -> None:
    tail = output_tail(raw, lines=lines, max_bytes=max_bytes)
    assert len(tail.encode()) <= max_bytes
    assert tail.count("\n") < lines
    assert all(c in "\n\t" or c.isprintable() for c in tail)


@PROPERTY
@given(text=st.text(max_size=60).filter(lambda t: t.isprintable() and t.strip() != ""))
def test_printable_short_output_is_kept_as_is(text: str) -> None:
    assert output_tail(text.encode()) == text


def test_the_longest_message_fits_the_state_report_whole() -> None:
    device, deployment, name = "d" * 63, "n" * 63 + "_" + "m" * 63, "i" * 63
    what = (f"init container {name} ({init_container_name(device, deployment, name)}) timed "
            f"out after 86400s and was removed")
    message = init_failure(what, output_tail(("é" * 3000 + "\n").encode() * 20))
    assert len(message.encode()) <= MAX_STATE_MESSAGE_BYTES
    state = DeploymentState(device_id=device, deployment=deployment, phase=Phase.FAILED,
                            message=message, since=utcnow(), updated_at=utcnow())
    assert fit_state(state).message == message
