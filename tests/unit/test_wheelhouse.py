"""The agent's wheelhouse: what it asks pip for (pure parts of harmony_fleet.control.wheelhouse)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.control.wheelhouse import (
    ARCHITECTURES,
    SYSTEM_PACKAGES,
    WheelhouseError,
    base_requirements,
    device_requirements,
    platform_tags,
    requirement_name,
    wheel_arch,
)

METADATA = """Metadata-Version: 2.4
Name: harmony-fleet
Version: 0.1.0
Requires-Dist: pydantic<3,>=2.7
Requires-Dist: nats-py<3,>=2.9
Requires-Dist: PyJWT[crypto]>=2.8
Requires-Dist: tomli; python_version < "3.11"
Provides-Extra: operator
Requires-Dist: kopf>=1.37; extra == "operator"
Requires-Dist: aiohttp>=3.9; extra=='operator'
Requires-Dist: PyYAML>=6; extra == "control"

A description mentioning Requires-Dist: aiohttp is not a header.
"""


def test_only_the_base_requirements_reach_the_device() -> None:
    reqs = base_requirements(METADATA)
    assert reqs == ["pydantic<3,>=2.7", "nats-py<3,>=2.9", "PyJWT[crypto]>=2.8",
                    'tomli; python_version < "3.11"']
    assert not any("aiohttp" in r or "kopf" in r or "PyYAML" in r for r in reqs)


def test_a_package_taken_from_debian_leaves_the_requirements() -> None:
    reqs = ["pydantic<3", "PyJWT[crypto]>=2.8", "cryptography>=41"]
    debian = {"armv7l": {"cryptography": "python3-cryptography"}}
    assert device_requirements(reqs, "armv7l", debian) == ["pydantic<3", "PyJWT>=2.8"]
    assert device_requirements(reqs, "aarch64", debian) == reqs


def test_every_architecture_takes_everything_from_the_wheelhouse() -> None:
    # the agent needs no native crypto package (harmony_fleet.purecrypto): nothing is left
    # to Debian, armv7l included
    assert SYSTEM_PACKAGES == {}
    reqs = ["pydantic<3", "nats-py<3"]
    assert all(device_requirements(reqs, arch) == reqs for arch in set(ARCHITECTURES.values()))


@pytest.mark.parametrize(("machine", "arch"), [
    ("x86_64", "x86_64"), ("aarch64", "aarch64"), ("arm64", "aarch64"), ("armv7l", "armv7l"),
    (" AARCH64 ", "aarch64"),
])
def test_wheel_arch(machine: str, arch: str) -> None:
    assert wheel_arch(machine) == arch


@pytest.mark.parametrize("machine", ["armv6l", "i686", "riscv64", ""])
def test_unsupported_architectures_are_named(machine: str) -> None:
    with pytest.raises(WheelhouseError, match=r"is not supported.*supported: aarch64"):
        wheel_arch(machine)


@given(st.sampled_from(sorted(set(ARCHITECTURES.values()))), st.integers(17, 60))
def test_platform_tags_cover_every_older_glibc(arch: str, minor: int) -> None:
    tags = platform_tags(arch, (2, minor))
    assert tags[0] == f"manylinux_2_{minor}_{arch}"
    assert tags[-1] == f"manylinux2014_{arch}"
    assert {f"manylinux_2_{m}_{arch}" for m in range(17, minor + 1)} <= set(tags)
    assert len(tags) == len(set(tags)) == minor - 16 + 1


@pytest.mark.parametrize("glibc", [(2, 16), (1, 30), (3, 1)])
def test_glibc_older_than_manylinux2014_is_refused(glibc: tuple[int, int]) -> None:
    with pytest.raises(WheelhouseError):
        platform_tags("aarch64", glibc)


@pytest.mark.parametrize(("req", "name"), [
    ("PyJWT[crypto]>=2.8", "pyjwt"), ("nats-py<3", "nats-py"), ("typing_extensions", "typing-extensions"),
    ("Zope.Interface ; python_version>'3'", "zope-interface"),
])
def test_requirement_name(req: str, name: str) -> None:
    assert requirement_name(req) == name
