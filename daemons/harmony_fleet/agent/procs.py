"""Finding the processes of one ``podman exec`` session on the host, to stop it for good.

Killing the ``podman exec`` client leaves the command running inside the container: podman
does not end an exec session when its client goes. Wrapping the command in ``timeout`` or a
shell would need those in the image (a distroless image has neither; the local busybox image
has no ``timeout``), and finding the session's processes by what ``podman top`` shows would
confuse them with the workload's own. So each exec gets a marker in its environment
(``FLEET_EXEC_SESSION=<random>``, set with ``podman exec --env``: visible to the command, meant
for nobody). Its processes, and the children they start, inherit it; when the exec times out,
the agent (root, like podman) reads ``/proc/<pid>/environ`` of the processes in the container's
PID namespace and kills every one that carries the marker, until none is left.

:func:`carries` is the pure part; :func:`find_marked` reads a ``/proc`` tree (tests give their
own).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Final

#: The environment variable that marks the processes of one exec session.
EXEC_SESSION_ENV: Final = "FLEET_EXEC_SESSION"

PROC: Final = Path("/proc")


def session_marker(session: str) -> bytes:
    """The ``environ`` entry that marks the processes of exec session ``session``."""
    return f"{EXEC_SESSION_ENV}={session}".encode()


def carries(environ: bytes, marker: bytes) -> bool:
    """Whether a ``/proc/<pid>/environ`` (NUL-separated entries) holds exactly ``marker``."""
    return marker in environ.split(b"\0")


def pid_namespace(pid: int, proc: Path = PROC) -> str | None:
    """The PID namespace of ``pid`` (``pid:[4026532328]``), None if it cannot be read."""
    try:
        return os.readlink(proc / str(pid) / "ns" / "pid")
    except OSError:
        return None


def find_marked(namespace: str, marker: bytes, proc: Path = PROC) -> list[int]:
    """Host pids of the processes in PID namespace ``namespace`` that carry ``marker``.

    Processes that end while they are read, or that cannot be read, are skipped."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != namespace:
                continue
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if carries(environ, marker):
            found.append(int(entry.name))
    return sorted(found)


def kill_marked(namespace: str, marker: bytes, proc: Path = PROC) -> int:
    """SIGKILL the processes :func:`find_marked` finds; how many were killed.

    Each is opened as a pidfd first and checked again through it, so a pid reused by another
    process between the scan and the kill is never signalled."""
    killed = 0
    for pid in find_marked(namespace, marker, proc):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        try:
            if (os.readlink(proc / str(pid) / "ns" / "pid") == namespace
                    and carries((proc / str(pid) / "environ").read_bytes(), marker)):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed += 1
        except OSError:
            pass  # it ended meanwhile
        finally:
            os.close(fd)
    return killed
