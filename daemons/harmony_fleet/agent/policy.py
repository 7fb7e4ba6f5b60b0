"""The device's workload policy: what a workload may touch on this device.

Deploy rights are whatever the agent is willing to do for a deployer. podman runs as root on a
device, so without a bound a score that mounts ``/`` read-write, or binds port 22, makes every
deployer root on every device. The device's owner sets the bound in the ``[policy]`` section of
the agent config; the agent checks every score against it (services *and* init containers)
before it pulls or creates anything, whatever the control plane sends, and refuses the whole
deployment (``Failed``, with every reason) when one mount or port is outside it.

The rules; every default is the restrictive choice:

* **Host paths** (bind mounts: ``source`` is an absolute path) are refused unless the path lies
  under an entry of ``host_paths``. An entry is read-only unless it says ``writable = true``;
  a score that asks to write under a read-only entry (``read_only: false``) is refused rather
  than mounted read-only behind its back, which would only fail later and less clearly.
  Named volumes (podman-managed storage) are always allowed.
* A path is checked twice, and both must pass: as written, normalised lexically
  (``/srv/fleet/../../etc`` is ``/etc``), against the prefixes as configured; and as the device
  resolves it (``realpath``: a symlink under an allowed prefix that points at ``/etc`` is
  ``/etc``), against the prefixes resolved the same way. Prefixes match whole path components:
  ``/srv/fleet`` allows ``/srv/fleet/web``, never ``/srv/fleet-other``. The most specific
  (longest) matching entry decides read-only or writable. The container gets the *resolved*
  path, so what was checked is what is mounted; a path containing ``:`` is refused (podman's
  ``--volume`` syntax cannot express it, and it could smuggle a second path past the check).
* **Host ports** 1024-65535 are allowed; a lower (privileged) port only when it is listed in
  ``privileged_ports``. A mapping without a host port gets an ephemeral (high) one.
* **Host addresses**: any, unless ``host_ips`` lists the allowed ones; then a published port
  must name one of them. A port without ``host_ip`` binds every address, which needs ``0.0.0.0``
  (or ``::``) in the list.
* **User namespace** (``userns``): ``auto`` (the default) runs every container in a user
  namespace of its own that podman carves from the subordinate ids of user ``containers``
  (``/etc/subuid``, ``/etc/subgid``; :data:`~.runtime.AUTO_USERNS_SIZE` ids per container):
  the container's root is an unprivileged host uid, so a write through a mount or an escape
  from the container does not land as host root. Writable mounts then get podman's ``U``
  option (the mounted tree is handed to the container's ids at every start; without it a
  recreated container, which gets another range, could not write its own volume); read-only
  mounts are not touched, so what they expose must be world-readable.
  Containers that *write* the same volume at the same time hold different ids under ``auto``:
  such workloads need ``host``. ``host`` is the opt-out: no user namespace, container root is
  host root. The choice is part of every container's spec hash, so changing it recreates the
  containers. Without subordinate ids, ``auto`` deployments fail with the reason.

Residual risk, stated: a workload that may write a directory can replace what lies under it
with symlinks, and podman follows them when a container (re)starts. The check runs on every
reconcile pass (so such a swap is reported), but it cannot stop a restart that happens in
between: never make a writable entry a parent of paths other deployments mount.

The checker is pure: path resolution is injected (:func:`resolve_host_path` on a device), so
the rules are unit-tested without touching the filesystem.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import pwd
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydantic import Field, field_validator

from harmony_fleet.config import Section
from harmony_fleet.contracts import PodmanScore, PortMapping, VolumeMount

from .runtime import AUTO_USERNS_SIZE, Userns

__all__ = [
    "DEFAULT_USERNS",
    "FIRST_UNPRIVILEGED_PORT",
    "HostPathRule",
    "PolicyDecision",
    "PolicySection",
    "Resolver",
    "auto_userns_problem",
    "check_score",
    "is_within",
    "normalise_host_path",
    "resolve_host_path",
    "subordinate_id_problem",
]

#: Container root is not host root unless the device's owner opts out.
DEFAULT_USERNS: Final = Userns.AUTO
#: Linux's default ``net.ipv4.ip_unprivileged_port_start``: ports below it are privileged.
FIRST_UNPRIVILEGED_PORT: Final = 1024
#: A refusal lists every violation, up to this many characters (state reports are bounded).
MAX_REFUSAL_CHARS: Final = 4000
#: Paths longer than this are shortened in messages (a score may carry 4 KiB paths).
_SHOWN_PATH_CHARS: Final = 200

#: Where podman (shadow-utils) reads subordinate id ranges; read at call time (tests point
#: these elsewhere).
SUBUID_FILE = Path("/etc/subuid")
SUBGID_FILE = Path("/etc/subgid")
#: The user whose ranges rootful podman allocates ``--userns=auto`` from (containers-storage's
#: ``root-auto-userns-user`` default).
ROOT_AUTO_USERNS_USER: Final = "containers"
#: What scripts/setup.sh adds: the upper half of the 32-bit id space, far above any login user.
EXAMPLE_SUBORDINATE_RANGE: Final = "2147483647:2147483648"

#: Maps a host path to the path the device would actually open (symlinks followed).
Resolver = Callable[[str], str]


def resolve_host_path(path: str) -> str:
    """The real resolver: ``os.path.realpath`` (symlinks followed, ``..`` applied after them,
    like the kernel; a missing tail is kept as written)."""
    return os.path.realpath(path)


def normalise_host_path(path: str) -> str:
    """The lexical normal form of an absolute path: no ``.``, ``..`` or repeated slashes.

    No filesystem access. A leading ``//`` (which POSIX leaves implementation-defined and
    ``posixpath.normpath`` keeps) is one ``/`` here, as it is on Linux.
    """
    return "/" + posixpath.normpath(path).lstrip("/")


def is_within(path: str, prefix: str) -> bool:
    """Whether normalised ``path`` is ``prefix`` or lies below it (whole components only)."""
    if prefix == "/":
        return True  # "/" + "/" would be "//", which no normalised path starts with
    return path == prefix or path.startswith(prefix + "/")


# ---- the [policy] section -------------------------------------------------------------------


class HostPathRule(Section):
    """One allowed host path: everything at or below ``prefix``."""

    prefix: str = Field(description="An absolute host path (normalised when read)")
    writable: bool = Field(
        default=False, description="Workloads may mount it read-write (default: read-only)"
    )

    @field_validator("prefix")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"host path prefix {value!r} must be an absolute path")
        if "\0" in value:
            raise ValueError("host path prefix must not contain a NUL character")
        return normalise_host_path(value)


class PolicySection(Section):
    """``[policy]``: what workloads may touch on this device (see the module docstring)."""

    host_paths: list[HostPathRule] = Field(
        default_factory=list,
        description="Host paths workloads may bind-mount (none by default); named volumes "
                    "are always allowed",
    )
    privileged_ports: list[int] = Field(
        default_factory=list,
        description="Host ports below 1024 workloads may publish (none by default); "
                    "1024-65535 are always allowed",
    )
    host_ips: list[str] | None = Field(
        default=None,
        description="Host addresses published ports may bind; unset: any",
    )
    userns: Userns = Field(
        default=DEFAULT_USERNS,
        description='"auto": a user namespace per container (container root is not host '
                    'root); "host": none',
    )

    @field_validator("host_paths")
    @classmethod
    def _distinct_prefixes(cls, rules: list[HostPathRule]) -> list[HostPathRule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.prefix in seen:
                raise ValueError(f"host path prefix {rule.prefix} is listed more than once")
            seen.add(rule.prefix)
        return rules

    @field_validator("privileged_ports")
    @classmethod
    def _privileged_only(cls, ports: list[int]) -> list[int]:
        for port in ports:
            if not 1 <= port < FIRST_UNPRIVILEGED_PORT:
                raise ValueError(
                    f"port {port} is not a privileged port (1-{FIRST_UNPRIVILEGED_PORT - 1}); "
                    f"ports {FIRST_UNPRIVILEGED_PORT}-65535 are always allowed"
                )
        return sorted(set(ports))

    @field_validator("host_ips")
    @classmethod
    def _addresses(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        normalised: list[str] = []
        for value in values:
            try:
                address = str(ipaddress.ip_address(value))
            except ValueError:
                raise ValueError(f"host_ips: {value!r} is not an IP address") from None
            if address not in normalised:
                normalised.append(address)
        return normalised


# ---- the checker ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyDecision:
    """The outcome of :func:`check_score`."""

    #: every reason the score is refused, ``"<container>: <why>"``; empty: allowed
    violations: tuple[str, ...] = ()
    #: each allowed bind-mount source, as written in the score -> the resolved path to mount
    host_paths: Mapping[str, str] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return not self.violations

    def message(self) -> str:
        """The state message for a refused score: every violation, bounded in length."""
        head = "refused by this device's workload policy: "
        parts: list[str] = []
        used = len(head)
        for index, violation in enumerate(self.violations):
            if used + len(violation) + 2 > MAX_REFUSAL_CHARS:
                parts.append(f"and {len(self.violations) - index} more")
                break
            parts.append(violation)
            used += len(violation) + 2
        return head + "; ".join(parts)


@dataclass(frozen=True)
class _Rule:
    shown: str  # the prefix as configured (normalised): what messages name
    prefix: str  # the prefix compared against (configured, or resolved)
    writable: bool


@dataclass(frozen=True)
class _Match:
    shown: str
    writable: bool


def _best_match(path: str, rules: Sequence[_Rule]) -> _Match | None:
    """The most specific rule containing ``path``; on a tie (two entries resolving to one
    path) it is writable only if every tied entry is."""
    matching = [r for r in rules if is_within(path, r.prefix)]
    if not matching:
        return None
    longest = max(len(r.prefix) for r in matching)
    tied = [r for r in matching if len(r.prefix) == longest]
    return _Match(tied[0].shown, all(r.writable for r in tied))


def _show(path: str) -> str:
    """A path fit for a message: shortened, and quoted when it holds unprintable characters."""
    shown = path if len(path) <= _SHOWN_PATH_CHARS else path[:_SHOWN_PATH_CHARS] + "..."
    return shown if shown.isprintable() else repr(shown)


def _containers(
    score: PodmanScore,
) -> Iterator[tuple[str, Sequence[VolumeMount], Sequence[PortMapping]]]:
    """Every container of a score, in run order: ``(label, volumes, ports)``."""
    for init in score.init_containers:
        yield f"init container {init.name}", init.volumes, ()
    for service in score.services:
        yield f"service {service.name}", service.volumes, service.ports


class _HostPathChecker:
    """Checks bind mounts against the ``host_paths`` rules; resolves each path once."""

    def __init__(self, rules: Sequence[HostPathRule], resolve: Resolver) -> None:
        self.resolve = resolve
        self.written_rules = [_Rule(r.prefix, r.prefix, r.writable) for r in rules]
        self.resolved_rules = []
        for r in rules:
            try:
                resolved = normalise_host_path(resolve(r.prefix))
            except (OSError, ValueError):
                continue  # an entry the device cannot resolve allows nothing
            self.resolved_rules.append(_Rule(r.prefix, resolved, r.writable))
        self.allowed_text = ", ".join(r.prefix for r in rules) or "none"
        self._resolved: dict[str, str] = {}

    def check(self, volume: VolumeMount) -> tuple[str | None, str]:
        """``(why it is refused or None, the resolved path)``."""
        source, shown = volume.source, _show(volume.source)
        if ":" in source:
            return (f"host path {shown} contains ':', which podman's volume syntax cannot "
                    "express"), source
        written = normalise_host_path(source)
        if source not in self._resolved:
            try:
                self._resolved[source] = normalise_host_path(self.resolve(source))
            except (OSError, ValueError) as exc:
                return f"host path {shown} cannot be resolved on this device: {exc}", source
        resolved = self._resolved[source]
        by_name = _best_match(written, self.written_rules)
        if by_name is None:
            spelled = shown if written == source else f"{shown} (that is {_show(written)})"
            return (f"host path {spelled} is outside the allowed host paths "
                    f"({self.allowed_text})"), resolved
        by_target = _best_match(resolved, self.resolved_rules)
        if by_target is None:
            return (f"host path {shown} resolves to {_show(resolved)}, outside the allowed "
                    f"host paths ({self.allowed_text})"), resolved
        if not volume.read_only and not (by_name.writable and by_target.writable):
            read_only = by_name.shown if not by_name.writable else by_target.shown
            return (f"host path {shown} is under {read_only}, which this device allows "
                    "read-only; mount it with read_only: true"), resolved
        return None, resolved


def _port_problems(port: PortMapping, policy: PolicySection) -> Iterator[str]:
    described = f"port {port.container_port}/{port.protocol.value}"
    host_port = port.host_port
    if host_port is not None and host_port < FIRST_UNPRIVILEGED_PORT \
            and host_port not in policy.privileged_ports:
        listed = ", ".join(map(str, policy.privileged_ports)) or "none"
        yield (f"host port {host_port} is privileged (below {FIRST_UNPRIVILEGED_PORT}) and not "
               f"in the allowed privileged ports ({listed})")
    if policy.host_ips is None:
        return
    allowed = [ipaddress.ip_address(a) for a in policy.host_ips]
    listed = ", ".join(policy.host_ips) or "none"
    if port.host_ip is None:
        if not any(a.is_unspecified for a in allowed):
            yield (f"{described} is published on every host address; this device allows only "
                   f"these host addresses ({listed})")
        return
    try:
        address = ipaddress.ip_address(port.host_ip)
    except ValueError:
        yield f"{described}: host_ip {port.host_ip!r} is not an IP address"
        return
    if address not in allowed:
        yield (f"{described}: host_ip {address} is not one of the allowed host addresses "
               f"({listed})")


def check_score(score: PodmanScore, policy: PolicySection, resolve: Resolver) -> PolicyDecision:
    """Check every container of ``score`` (init containers, then services) against ``policy``.

    Pure apart from ``resolve``. Returns every violation, not just the first, so a deployer
    fixes a score in one round; and, for the allowed bind mounts, the resolved host paths the
    containers must be given.
    """
    paths = _HostPathChecker(policy.host_paths, resolve)
    violations: list[str] = []
    host_paths: dict[str, str] = {}
    for label, volumes, ports in _containers(score):
        for volume in volumes:
            if not volume.source.startswith("/"):
                continue  # a named volume: podman-managed storage, always allowed
            problem, resolved = paths.check(volume)
            if problem is None:
                host_paths[volume.source] = resolved
            else:
                violations.append(f"{label}: {problem}")
        violations += [f"{label}: {problem}" for port in ports
                       for problem in _port_problems(port, policy)]
    return PolicyDecision(tuple(violations), host_paths)


# ---- subordinate ids for userns = "auto" -----------------------------------------------------


def _id_count(text: str | None, user: str, uid: int | None) -> int:
    """How many subordinate ids a subuid/subgid text gives ``user`` (by name, or by uid)."""
    names = {user} if uid is None else {user, str(uid)}
    total = 0
    for line in (text or "").splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in names:
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            total += count
    return total


def subordinate_id_problem(
    user: str, uid: int | None, subuid: str | None, subgid: str | None,
    *, subuid_file: Path = SUBUID_FILE, subgid_file: Path = SUBGID_FILE,
) -> str | None:
    """Why ``--userns=auto`` cannot work for ``user`` given the texts of the subordinate id
    files (None: the file is missing), or None when both give it room for a container."""
    missing = [str(path) for path, text in ((subuid_file, subuid), (subgid_file, subgid))
               if _id_count(text, user, uid) < AUTO_USERNS_SIZE]
    if not missing:
        return None
    return (f'userns "auto" needs subordinate ids for user {user} in {subuid_file} and '
            f"{subgid_file}, {AUTO_USERNS_SIZE} per container (too few in "
            f"{' and '.join(missing)}): add a line such as "
            f'"{user}:{EXAMPLE_SUBORDINATE_RANGE}" to both and restart the agent, or set '
            f'userns = "host" in [policy] (containers then run as host root)')


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def auto_userns_problem() -> str | None:
    """Whether podman can give containers ``--userns=auto`` on this device (None: it can).

    Rootful podman allocates from user ``containers``; rootless podman from the user itself.
    """
    euid = os.geteuid()
    if euid == 0:
        user, uid = ROOT_AUTO_USERNS_USER, None
    else:
        try:
            user = pwd.getpwuid(euid).pw_name
        except KeyError:
            user = str(euid)
        uid = euid
    return subordinate_id_problem(
        user, uid, _read(SUBUID_FILE), _read(SUBGID_FILE),
        subuid_file=SUBUID_FILE, subgid_file=SUBGID_FILE,
    )
