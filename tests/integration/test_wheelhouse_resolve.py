"""The agent's wheelhouse resolves for Raspberry Pis (real ``pip download --platform`` from the
package index): aarch64 and armv7l complete, the only native wheel pydantic-core's; no
PyJWT, cryptography or cffi (the agent's crypto is harmony_fleet.purecrypto)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from harmony_fleet.control.wheelhouse import ARCHIVE, MANIFEST, build

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_aarch64_wheelhouse_resolves_with_native_wheels(tmp_path: Path) -> None:
    house = build(str(REPO), "aarch64", tmp_path)
    assert house.agent_wheel.startswith("harmony_fleet-")
    assert house.path.name == f"{house.version}-aarch64-{house.agent_sha256[:12]}"
    names = {w.split("-")[0].lower() for w in house.wheels}
    assert {"harmony_fleet", "pydantic_core", "nats_py", "prometheus_client", "pip"} <= names
    assert not names & {"aiohttp", "kopf", "pyyaml", "cryptography", "cffi", "pyjwt"}
    native = [w for w in house.wheels if not w.endswith("-none-any.whl")]
    assert native
    assert all("aarch64" in w for w in native), native
    assert house.system_packages == []
    with tarfile.open(house.path / ARCHIVE) as tar:
        assert sorted(tar.getnames()) == sorted([*house.wheels, MANIFEST])
    assert {house.agent_wheel, "manifest.json"} <= {p.name for p in house.path.iterdir()}
    # a second build reuses the first
    assert build(str(REPO), "aarch64", tmp_path).path == house.path


def test_armv7l_wheelhouse_is_complete(tmp_path: Path) -> None:
    house = build(str(REPO), "armv7l", tmp_path)
    names = {w.split("-")[0].lower() for w in house.wheels}
    assert {"harmony_fleet", "pydantic_core", "nats_py", "prometheus_client", "pip"} <= names
    assert not names & {"cryptography", "cffi", "pyjwt"}
    native = [w for w in house.wheels if not w.endswith("-none-any.whl")]
    assert native
    assert all("armv7l" in w for w in native), native
    assert json.loads((house.path / MANIFEST).read_text())["system_packages"] == []
