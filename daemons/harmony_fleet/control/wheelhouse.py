"""The agent's wheelhouse: everything a device needs to install ``fleet-agent`` with no index.

Devices (a rack of Raspberry Pis) usually reach no package index; the controller does. So the
``harmony.fleet.fleet_device`` role builds, once per agent version and CPU architecture, a
directory of wheels on the controller and copies it to the device, which installs from it
with ``pip --no-index`` into ``/opt/fleet-agent`` (a venv of Debian's own python3):

* the ``harmony-fleet`` wheel itself, built from the collection's own copy of the package
  (``pip wheel --no-deps <collection>``) or from a requirement such as
  ``harmony-fleet==0.1.0``;
* its **base** dependencies only (the agent's: pydantic, nats-py, prometheus-client): no
  extra, so no aiohttp next to nats-py (which would import it and cost the agent ~20 MiB), no
  kopf, no PyYAML, no pydantic-settings, and no PyJWT/cryptography (the agent's RS256 and
  sealed secrets are :mod:`harmony_fleet.purecrypto`);
* ``pip`` itself as a wheel: the device runs ``python3 <wheelhouse>/pip-*.whl/pip install``,
  so neither ``python3-pip`` nor ``python3-venv`` (ensurepip) has to be on the device.

pydantic-core is native: it is fetched with ``pip download --platform`` for the device's
architecture (manylinux tags up to the device's glibc), never built; everything else is a
pure-Python wheel. Every architecture resolves completely from the index, armv7l included
(it did not while the agent needed ``cryptography``: cffi publishes no armv7l wheel, and the
device had to take Debian's ``python3-cryptography``). :data:`SYSTEM_PACKAGES` remains the
place to name a distribution that some architecture must take from Debian instead (the venv is
then made with ``--system-site-packages`` and the manifest carries it); none needs one today.

A zipapp or pex was the other choice: one file, but it cannot carry native wheels for another
architecture and still import them without unpacking them somewhere first, and an upgrade
replaces the whole file anyway. A wheelhouse installs into an ordinary venv that ``pip`` can
inspect, upgrade and verify (``pip check``), and the same directory serves every device of an
architecture.

This module needs only the standard library and the controller's ``pip`` (run as
``python -m harmony_fleet.control.wheelhouse``, even before harmony_fleet's own dependencies
are installed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from harmony_fleet.errors import FleetError

#: the agent's distribution
DISTRIBUTION = "harmony-fleet"
#: timestamps inside the agent's wheel (1980-01-01, the earliest a zip holds): same source,
#: same bytes
REPRODUCIBLE_EPOCH = "315532800"

#: ``ansible_architecture`` / ``uname -m`` -> the wheel platform suffix
ARCHITECTURES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv7l": "armv7l",
    "armhf": "armv7l",
}

#: distributions PyPI has no wheel of for an architecture -> the Debian package the device
#: uses instead (the venv then sees the system's site-packages); none today
SYSTEM_PACKAGES: dict[str, dict[str, str]] = {}

#: Debian 12 (bookworm): glibc 2.36, Python 3.11 (what Raspberry Pi OS bookworm has too)
DEFAULT_GLIBC = (2, 36)
DEFAULT_PYTHON = "3.11"
MANIFEST = "manifest.json"
#: the wheels and the manifest in one uncompressed tar (wheels are zip files already): one file
#: to copy and checksum over SSH instead of a dozen
ARCHIVE = "wheelhouse.tar"

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r"\bextra\s*==")


class WheelhouseError(FleetError):
    """The wheelhouse cannot be built as asked (an unknown architecture, pip failed)."""


def wheel_arch(machine: str) -> str:
    """The wheel architecture for ``uname -m`` / ``ansible_architecture`` (pure)."""
    try:
        return ARCHITECTURES[machine.strip().lower()]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise WheelhouseError(
            f"architecture {machine!r} is not supported by the agent's wheelhouse "
            f"(supported: {supported})") from None


def platform_tags(arch: str, glibc: tuple[int, int] = DEFAULT_GLIBC) -> list[str]:
    """Every manylinux tag a device with this glibc runs, newest first (pure).

    ``pip download --platform`` takes exact tags: it does not widen ``manylinux_2_36`` to the
    older glibc versions a wheel may be built for, so all of them are listed."""
    if arch not in ARCHITECTURES.values():
        raise WheelhouseError(f"unknown wheel architecture {arch!r}")
    major, minor = glibc
    if major != 2 or minor < 17:
        raise WheelhouseError(f"glibc {major}.{minor} is older than manylinux2014 (2.17)")
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
    return [*tags, f"manylinux2014_{arch}"]


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement (pure)."""
    match = _REQUIREMENT_NAME.match(requirement)
    if not match:
        raise WheelhouseError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def base_requirements(metadata: str) -> list[str]:
    """The ``Requires-Dist`` of a wheel's METADATA that apply with no extra (pure): what the
    agent needs, and nothing an extra (``operator``, ``localstack``...) adds."""
    message = Parser().parsestr(metadata)
    return [req for req in message.get_all("Requires-Dist") or []
            if not _EXTRA_MARKER.search(req.partition(";")[2])]


def device_requirements(requirements: Sequence[str], arch: str,
                        system_packages: dict[str, dict[str, str]] | None = None) -> list[str]:
    """``requirements`` minus what the device takes from Debian on ``arch``
    (``system_packages``, default :data:`SYSTEM_PACKAGES`; pure). An extra that only pulls
    such a package is dropped with it (``PyJWT[crypto]`` -> ``PyJWT``)."""
    system = (SYSTEM_PACKAGES if system_packages is None else system_packages).get(arch, {})
    kept = []
    for req in requirements:
        if requirement_name(req) in system:
            continue
        dropped = system and "[crypto]" in req and "cryptography" in system
        kept.append((req.replace("[crypto]", "") if dropped else req).strip())
    return kept


@dataclass(frozen=True)
class Wheelhouse:
    """A built wheelhouse directory and what its manifest says."""

    path: Path
    version: str
    arch: str
    wheels: list[str]
    system_packages: list[str]
    agent_wheel: str
    agent_sha256: str

    def manifest(self) -> dict[str, object]:
        return {"distribution": DISTRIBUTION, "version": self.version, "arch": self.arch,
                "wheels": self.wheels, "system_packages": self.system_packages,
                "agent_wheel": self.agent_wheel, "agent_sha256": self.agent_sha256,
                "pip_wheel": next(w for w in self.wheels if w.startswith("pip-"))}


def _pip(args: list[str], python: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run([python, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise WheelhouseError(f"pip {args[0]} failed (exit {proc.returncode}):\n{tail}")


def _wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name).decode("utf-8")


def build(source: str, machine: str, out: Path, *, glibc: tuple[int, int] = DEFAULT_GLIBC,
          python_version: str = DEFAULT_PYTHON, python: str = sys.executable,
          pip_options: Sequence[str] = ()) -> Wheelhouse:
    """Build the wheelhouse of ``source`` (a path or a requirement) for ``machine`` into
    ``out/<version>-<arch>-<digest>`` and return it; an existing complete one is returned as
    is. ``<digest>`` is the start of the harmony-fleet wheel's SHA-256: the wheel is built
    reproducibly (``SOURCE_DATE_EPOCH``), so the same source gives the same wheelhouse, and
    a changed checkout of the same version another one (the role reinstalls the agent when
    the digest changes, a released version never does).

    The directory appears whole or not at all (built in a sibling, then renamed)."""
    arch = wheel_arch(machine)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=out))
    try:
        _pip(["wheel", "--no-deps", "--quiet", "--no-cache-dir", "--wheel-dir", str(work),
              *pip_options, source], python, env={"SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH})
        own = sorted(work.glob("harmony_fleet-*.whl"))
        if len(own) != 1:
            raise WheelhouseError(f"{source} did not build exactly one harmony_fleet wheel")
        metadata = Parser().parsestr(_wheel_metadata(own[0]))
        version = str(metadata["Version"])
        digest = hashlib.sha256(own[0].read_bytes()).hexdigest()
        target = out / f"{version}-{arch}-{digest[:12]}"
        if (target / MANIFEST).is_file():
            return load(target)
        requirements = device_requirements(base_requirements(_wheel_metadata(own[0])), arch)
        platforms = [opt for tag in platform_tags(arch, glibc) for opt in ("--platform", tag)]
        _pip(["download", "--quiet", "--only-binary=:all:", "--dest", str(work),
              "--python-version", python_version, "--implementation", "cp",
              "--abi", f"cp{python_version.replace('.', '')}", "--abi", "abi3", "--abi", "none",
              *platforms, *pip_options, *requirements, "pip"], python)
        wheels = sorted(p.name for p in work.glob("*.whl"))
        system = sorted(set(SYSTEM_PACKAGES.get(arch, {}).values()))
        house = Wheelhouse(target, version, arch, wheels, system, own[0].name, digest)
        (work / MANIFEST).write_text(json.dumps(house.manifest(), indent=2) + "\n",
                                     encoding="utf-8")
        _archive(work, work / ARCHIVE)
        if target.exists():  # an incomplete leftover (no manifest)
            shutil.rmtree(target)
        try:
            os.replace(work, target)
        except OSError:  # another build of the same wheelhouse finished first
            return load(target)
        return house
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _archive(directory: Path, archive: Path) -> None:
    """The directory's files in a tar with fixed owners and times, so it is the same bytes for
    the same wheels."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.iterdir()):
            if path == archive or not path.is_file():
                continue
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            info.mode = 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)


def load(path: Path) -> Wheelhouse:
    """A wheelhouse directory as its manifest describes it."""
    try:
        doc = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        return Wheelhouse(path, str(doc["version"]), str(doc["arch"]),
                          [str(w) for w in doc["wheels"]],
                          [str(p) for p in doc["system_packages"]],
                          str(doc["agent_wheel"]), str(doc["agent_sha256"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WheelhouseError(f"{path} is not a complete wheelhouse: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harmony_fleet.control.wheelhouse",
        description="Build the agent's wheelhouse for a device architecture (prints its "
                    "manifest as JSON)")
    parser.add_argument("--source", required=True,
                        help="the harmony-fleet source tree or a requirement (harmony-fleet==X)")
    parser.add_argument("--arch", required=True, help="the device's uname -m (aarch64, ...)")
    parser.add_argument("--out", type=Path, required=True, help="the wheelhouse cache")
    parser.add_argument("--glibc", default="2.36", help="the device's glibc (default 2.36)")
    parser.add_argument("--python-version", default=DEFAULT_PYTHON)
    args = parser.parse_args(argv)
    try:
        glibc_major, glibc_minor = (int(p) for p in args.glibc.split(".")[:2])
        house = build(args.source, args.arch, args.out, glibc=(glibc_major, glibc_minor),
                      python_version=args.python_version)
    except ValueError:
        print(f"wheelhouse: --glibc {args.glibc!r} is not MAJOR.MINOR", file=sys.stderr)
        return 2
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"path": str(house.path), **house.manifest()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
