"""One agent per device id: on this host (a lock), and across the fleet (an instance id).

* :class:`HostLock` — an exclusive ``flock`` on ``<lock dir>/<device id>.lock`` held for the
  agent's life. Two agents with one device id on one host would fight over the same
  containers (they find them by label); the second one stops at start instead. The default
  directory follows podman's storage: host-wide for root (``/run/fleet-agent``), per user
  otherwise (``$XDG_RUNTIME_DIR/fleet-agent``). The lock goes away with the process, whatever
  kills it.
* :func:`new_instance_id` — ``<boot id>:<random>``, sent with every report and watch request:
  the report writer keeps one live instance per device id across the fleet (a cloned SD card
  or a copied config on another host is refused while the first agent lives) and lets a new
  instance from the same boot of the same host take over at once (it holds the host lock, so
  the old one is gone).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path

from harmony_fleet.contracts import agent_instance_id, validate_device_id
from harmony_fleet.daemon import DaemonExit

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


#: ``fleet-agent`` exits with this when its device id is in use (its systemd unit does not
#: restart it then: a clone must be fixed, not retried every few seconds).
EXIT_DEVICE_ID_IN_USE = 3


class DeviceIdInUse(DaemonExit):
    """Another agent runs this device id (here or elsewhere): this one must not run."""

    exit_code = EXIT_DEVICE_ID_IN_USE


def default_lock_dir() -> Path:
    """Where agents lock their device ids: the same place for every agent sharing a podman."""
    if os.geteuid() == 0:
        return Path("/run/fleet-agent")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "fleet-agent" if runtime else Path(f"/tmp/fleet-agent-{os.getuid()}")  # noqa: S108 - per-user, mode 0700


class HostLock:
    """Hold ``<lock_dir>/<device_id>.lock`` exclusively (``acquire``) until ``release``."""

    def __init__(self, lock_dir: Path, device_id: str) -> None:
        self.path = lock_dir / f"{validate_device_id(device_id)}.lock"
        self._fd: int | None = None

    def acquire(self, owner: str) -> None:
        """Take the lock or raise :class:`DeviceIdInUse` naming who holds it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise DeviceIdInUse(
                    f"device id {self.path.stem} is already run by another agent on this host "
                    f"({holder or 'holder unknown'}; lock {self.path}): two agents with one "
                    "id would fight over the same containers") from None
            # the holder we waited for may have removed the file as it let go: the lock is
            # ours only if the file we locked is still the one at the path
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} instance {owner}\n".encode())
        self._fd = fd

    @staticmethod
    def _read(fd: int) -> str:
        with contextlib.suppress(OSError):
            return os.pread(fd, 200, 0).decode(errors="replace").strip()
        return ""

    def release(self) -> None:
        """Let go, and remove the lock file (a process killed outright leaves it behind,
        unlocked: the next agent takes it over)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still locked: nobody can hold a stale inode
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def read_boot_id(path: Path = BOOT_ID_FILE) -> str:
    """This boot of this host (changes with every boot; a clone boots with its own)."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError:
        value = ""
    # without a boot id, same-host takeover is off: a restarted agent waits for its lease
    return value.replace(":", "-") or f"unknown-{secrets.token_hex(8)}"


def new_instance_id(boot_id_file: Path = BOOT_ID_FILE) -> str:
    return agent_instance_id(read_boot_id(boot_id_file), secrets.token_hex(6))
