"""One agent per device id: the host lock and the writer's lease book (pure parts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.agent.identity import (
    EXIT_DEVICE_ID_IN_USE,
    DeviceIdInUse,
    HostLock,
    default_lock_dir,
    new_instance_id,
    read_boot_id,
)
from harmony_fleet.callout.limits import LeaseBook
from harmony_fleet.contracts import agent_instance_id, same_boot

from .strategies import PROPERTY

HOST_A, HOST_B = "boot-a", "boot-b"


# ----------------------------------------------------------------------------- the host lock


def test_one_lock_per_device_id(tmp_path: Path) -> None:
    first = HostLock(tmp_path, "pi-1")
    first.acquire("instance-1")
    assert first.held
    with pytest.raises(DeviceIdInUse) as exc:
        HostLock(tmp_path, "pi-1").acquire("instance-2")
    assert "pid" in str(exc.value)
    assert "instance-1" in str(exc.value)  # who holds it
    assert exc.value.exit_code == EXIT_DEVICE_ID_IN_USE == 3
    HostLock(tmp_path, "pi-2").acquire("other-device")  # another id is another lock
    first.release()
    again = HostLock(tmp_path, "pi-1")
    again.acquire("instance-3")
    again.release()


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    """A killed agent (SIGKILL, a crash) leaves the lock file but not the lock."""
    code = ("import sys, time; from pathlib import Path; "
            "from harmony_fleet.agent.identity import HostLock; "
            f"HostLock(Path({str(tmp_path)!r}), 'pi-1').acquire('child'); "
            "print('locked', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    with pytest.raises(DeviceIdInUse):
        HostLock(tmp_path, "pi-1").acquire("parent")
    child.kill()
    child.wait()
    assert (tmp_path / "pi-1.lock").exists()
    HostLock(tmp_path, "pi-1").acquire("parent")


def test_lock_files_are_private(tmp_path: Path) -> None:
    HostLock(tmp_path / "locks", "pi-1").acquire("x")
    assert (tmp_path / "locks").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "locks" / "pi-1.lock").stat().st_mode & 0o777 == 0o600


def test_default_lock_dir_follows_podmans_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        assert default_lock_dir() == Path("/run/fleet-agent")  # rootful podman: host-wide
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
        assert default_lock_dir() == Path("/run/user/1000/fleet-agent")


def test_instance_ids_name_the_boot(tmp_path: Path) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("1b3c:9f\n")
    one, two = new_instance_id(boot), new_instance_id(boot)
    assert one != two  # each process is its own instance
    assert same_boot(one, two)
    assert one.startswith("1b3c-9f:")  # a ':' in the boot id cannot confuse the split
    assert read_boot_id(tmp_path / "missing").startswith("unknown-")
    assert not same_boot(new_instance_id(tmp_path / "missing"),
                         new_instance_id(tmp_path / "missing"))


# ----------------------------------------------------------------------------- the lease book


def test_a_live_lease_refuses_a_clone_on_another_host() -> None:
    book = LeaseBook(ttl_s=30)
    original, clone = agent_instance_id(HOST_A, "1"), agent_instance_id(HOST_B, "2")
    assert book.conflict("pi-1", original, now=0) is None  # free
    book.record("pi-1", original, seen=0)
    holder = book.conflict("pi-1", clone, now=29)
    assert holder is not None
    assert holder.instance == original
    assert book.conflict("pi-1", original, now=29) is None  # the holder itself goes on
    assert book.conflict("pi-2", clone, now=29) is None  # another device is another lease


def test_a_lapsed_lease_can_be_taken() -> None:
    book = LeaseBook(ttl_s=30)
    book.record("pi-1", agent_instance_id(HOST_A, "1"), seen=0)
    assert book.conflict("pi-1", agent_instance_id(HOST_B, "2"), now=30.1) is None


def test_a_restart_on_the_same_host_takes_over_at_once() -> None:
    book = LeaseBook(ttl_s=30)
    book.record("pi-1", agent_instance_id(HOST_A, "old"), seen=0)
    # the new instance holds the host lock, so the old one of the same boot is gone
    assert book.conflict("pi-1", agent_instance_id(HOST_A, "new"), now=1) is None


def test_agents_without_instance_ids_are_not_judged() -> None:
    book = LeaseBook(ttl_s=30)
    book.record("pi-1", None, seen=0, revision=7)
    assert book.conflict("pi-1", agent_instance_id(HOST_B, "2"), now=1) is None
    book.record("pi-1", agent_instance_id(HOST_A, "1"), seen=1)
    assert book.conflict("pi-1", None, now=2) is None
    lease = book.holder("pi-1")
    assert lease is not None
    assert lease.revision == 7  # kept for compare-and-set


def test_an_old_entry_read_back_never_rewinds_a_lease() -> None:
    book = LeaseBook(ttl_s=30)
    me = agent_instance_id(HOST_A, "1")
    book.record("pi-1", me, seen=100, revision=5)
    book.record("pi-1", me, seen=10, revision=6)  # the watch delivers an older timestamp
    lease = book.holder("pi-1")
    assert lease is not None
    assert (lease.seen, lease.revision) == (100, 6)


@PROPERTY
@given(events=st.lists(st.tuples(st.sampled_from(["a:1", "b:2", "c:3"]),
                                  st.floats(0, 5)), min_size=1, max_size=50))
def test_never_two_live_instances_from_different_hosts(events: list[tuple[str, float]]) -> None:
    """Whatever the interleaving, an accepted report from another host's instance only
    happens once the previous holder has been silent for the whole TTL."""
    book = LeaseBook(ttl_s=10)
    now, last_accepted = 0.0, {}
    for instance, gap in events:
        now += gap
        holder = book.holder("pi-1")
        if book.conflict("pi-1", instance, now) is None:
            if holder is not None and holder.instance not in (None, instance):
                assert now - last_accepted[holder.instance] > 10 or same_boot(
                    holder.instance, instance)
            book.record("pi-1", instance, now)
            last_accepted[instance] = now


def test_a_released_lock_leaves_no_file_and_a_racing_opener_retries(tmp_path: Path) -> None:
    first = HostLock(tmp_path, "pi-1")
    first.acquire("one")
    # a second agent opened the file before the first let go (the classic flock/unlink race)
    stale = os.open(tmp_path / "pi-1.lock", os.O_RDWR)
    first.release()
    assert not (tmp_path / "pi-1.lock").exists()
    import fcntl

    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the lock of a deleted file...
    second = HostLock(tmp_path, "pi-1")
    second.acquire("two")  # ...which holds nothing: the path's file is a new one
    assert second.held
    os.close(stale)
    second.release()
