"""The local stack's processes: started so that they cannot outlive a foreground stack, found
again by their command line, stopped for sure.

**Bound to the stack.** A foreground ``fleet stack up`` (no ``--keep``) must take its
nats-server, issuer, fleet-callout and agents with it however it ends: Ctrl-C, a closed
terminal, a CI timeout, ``kill -9``. Its children are started with
``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends them SIGTERM when their parent goes,
whatever killed it, and they stop as they do on any SIGTERM (agents drain, nats-server shuts
down cleanly). A supervisor pipe would need a process of ours watching it — nats-server cannot
— and that watcher could itself be killed; the death signal cannot be lost. The kernel ties it
to the *thread* that forked the child, so every bound child is forked by one long-lived thread
(:data:`_SPAWNER`) rather than by whichever worker thread asked. Detached stacks (``--keep``)
start their children in a session of their own instead, unbound: they are meant to outlive it.

**Found again.** A process of the stack is recognised by its command line: the program (a
module or binary name) and the file it was started with, which lies in the stack's workdir
(an agent's ``config.toml``, nats-server's ``nats-server.conf``...). A pid alone is not
enough: the process may have been restarted by hand (a new pid), or the pid reused by
something else.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

#: <linux/prctl.h>: the signal the calling process gets when its parent (thread) dies
PR_SET_PDEATHSIG = 1
#: what a foreground stack's children get when it dies: they stop as on any SIGTERM
DEATH_SIGNAL = signal.SIGTERM
#: how long a process gets after SIGTERM before SIGKILL, and after SIGKILL
STOP_TIMEOUT_S = 15.0
KILL_TIMEOUT_S = 5.0
_POLL_S = 0.05


# ------------------------------------------------------------------------------ starting


def _death_signal_hook() -> Callable[[], None]:
    """A ``preexec_fn`` that asks for :data:`DEATH_SIGNAL` when the parent dies.

    Everything it needs is resolved here, before the fork: in the child it only makes system
    calls (``prctl``, ``getppid``, at worst ``kill``), importing nothing and taking no lock —
    what a ``preexec_fn`` must keep to when other threads exist."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    death_signal = int(DEATH_SIGNAL)

    def bind_to_parent() -> None:
        if prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0:
            os._exit(126)  # never run unbound: nothing would stop this child
        if os.getppid() != parent:  # the parent died before the prctl: do what it would do
            os.kill(os.getpid(), death_signal)

    return bind_to_parent


#: The one thread that forks bound children (its thread starts with the first of them). It
#: lives until the interpreter exits (the executor is never shut down before), so the death
#: signal means "the stack process died", not "some worker thread ended".
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-stack-spawner")


def spawn(argv: Sequence[str], log_file: Path, *, detach: bool,
          env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_file``; ``env``: variables
    added to this process's environment for it.

    ``detach``: in a session of its own, to outlive this process (``--keep``); otherwise bound
    to this process (see the module docstring)."""
    environment = {**os.environ, **env} if env else None
    with log_file.open("ab") as out:
        if detach:
            return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=environment)
        hook = _death_signal_hook()
        # a process group of its own: Ctrl-C on the terminal reaches the stack only, which
        # stops its parts in order (agents first, nats-server last), not all at once
        return _SPAWNER.submit(
            subprocess.Popen, list(argv), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=hook, process_group=0, env=environment,
        ).result()


# ------------------------------------------------------------------------------ recognising


@dataclass(frozen=True)
class Component:
    """One process of a stack as its state file describes it."""

    name: str  # what to call it in messages: "agent local-0", "nats-server", ...
    pid: int | None  # the pid it was started with
    config: str  # the file it was started with; its command line names it
    programs: tuple[str, ...] = ()  # module or binary names, any of which identifies it

    def runs_as(self, argv: Sequence[str]) -> bool:
        """True if a process with command line ``argv`` is this component (pure).

        The file must appear as an argument (``-c FILE``, ``--config FILE`` or
        ``--config=FILE``) and, when ``programs`` are known, the program too (as a ``-m``
        module or a binary's name): an editor that has the config open is not the agent."""
        if not any(arg == self.config or arg.endswith(f"={self.config}") for arg in argv):
            return False
        if not self.programs:
            return True
        return any(arg in self.programs or Path(arg).name in self.programs for arg in argv)


def command_line(pid: int) -> list[str] | None:
    """The argv of a live process; None if it is gone (or a zombie: an empty command line)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0") if raw else None


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, it names one process even
    after the pid is reused. None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[-1].split()[19])


def _all_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def find(components: Iterable[Component]) -> dict[Component, list[int]]:
    """The live processes of each component: its recorded pid if that still runs it, and any
    other process that does (restarted by hand, or started again by something else)."""
    wanted = list(components)
    found: dict[Component, list[int]] = {c: [] for c in wanted}
    me = os.getpid()
    for pid in _all_pids():
        if pid == me:
            continue
        argv = command_line(pid)
        if argv is None:
            continue
        for component in wanted:
            if component.runs_as(argv) and alive(pid):
                found[component].append(pid)
    return found


# ------------------------------------------------------------------------------ stopping


@dataclass
class StopReport:
    """What :func:`stop` did: ``stopped`` names, ``failed`` one line per process it could
    not stop (with the reason)."""

    stopped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _signal(pid: int, sig: signal.Signals) -> str | None:
    """Send ``sig``; None if sent (or the process is gone already), else why not."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return None
    except PermissionError:
        return "not permitted to signal it"
    return None


def _wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until every pid is gone or ``timeout``; return those still running."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while left:
        left = {pid for pid in left if alive(pid)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    return left


def stop(groups: Sequence[Sequence[Component]], *, timeout: float = STOP_TIMEOUT_S,
         kill_timeout: float = KILL_TIMEOUT_S) -> StopReport:
    """Stop every process of every component, group after group (agents before the services
    they use); within a group all at once: SIGTERM, then SIGKILL after ``timeout``."""
    report = StopReport()
    for group in groups:
        found = find(group)
        targets: dict[int, Component] = {}
        for component, pids in found.items():
            for pid in pids:
                problem = _signal(pid, signal.SIGTERM)
                if problem is not None:
                    report.failed.append(f"{component.name} (pid {pid}): {problem}")
                else:
                    targets[pid] = component
        left = _wait_gone(targets, timeout)
        for pid in left:
            _signal(pid, signal.SIGKILL)
        left = _wait_gone(left, kill_timeout)
        for pid, component in targets.items():
            if pid in left:
                report.failed.append(f"{component.name} (pid {pid}): still running after "
                                     "SIGTERM and SIGKILL")
            elif component.name not in report.stopped:
                report.stopped.append(component.name)
    return report


# ------------------------------------------------------------------------------ logs


def failure_line(log_text: str) -> str:
    """The line of a process' log that says why it failed (pure): the last line marked as an
    error or fatal, else the last line; a whole log does not fit an error message."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if any(mark in line
               for mark in ("[FTL]", "[ERR]", "ERROR", "CRITICAL", "Error:", "error:")):
            return line
    return lines[-1] if lines else "(nothing in its log)"
