"""A device container reaches the local issuer through slirp4netns as ``10.0.2.2:<port>`` (the
host's loopback): the issuer answers with its own identity, and a machine key's assertion
for that identity gets a token there. Real podman, one busybox container."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from harmony_fleet.bus.tokens import MachineKey
from harmony_fleet.callout.oidc import JwksCache, TokenValidator
from harmony_fleet.contracts.identity import fleet_scopes
from harmony_fleet.localstack.issuer import JWT_BEARER, OidcIssuer


@pytest.fixture
async def issuer() -> AsyncIterator[OidcIssuer]:
    issuer = OidcIssuer(project_id="p-1")
    await issuer.start()
    try:
        yield issuer
    finally:
        await issuer.stop()


def in_device(image: str, *wget: str) -> str:
    """busybox wget in a device-like container (slirp4netns with the host's loopback)."""
    proc = subprocess.run(
        ["podman", "run", "--rm", "--network", "slirp4netns:allow_host_loopback=true", image,
         "/bin/busybox", "wget", "-q", "-O", "-", *wget],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_a_device_container_gets_a_token_through_10_0_2_2(
        issuer: OidcIssuer, fleet_image: str, tmp_path: Path) -> None:
    seen_from_device = f"http://10.0.2.2:{issuer.port}"
    discovery = json.loads(await asyncio.to_thread(
        in_device, fleet_image, f"{seen_from_device}/.well-known/openid-configuration"))
    assert discovery["issuer"] == issuer.issuer == issuer.url  # not the address it was reached by

    key_file = tmp_path / "key.json"
    issuer.enroll_device("container-dev", key_file)
    form = urllib.parse.urlencode({
        "grant_type": JWT_BEARER, "scope": fleet_scopes("p-1"),
        # signed on the host (busybox has no RS256); its audience is the issuer's identity
        "assertion": MachineKey.load(key_file).assertion(issuer.issuer),
    })
    answer = json.loads(await asyncio.to_thread(
        in_device, fleet_image, "--header", "Content-Type: application/x-www-form-urlencoded",
        "--post-data", form, f"{seen_from_device}/oauth/v2/token"))
    token = answer["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == issuer.issuer
    identity = await TokenValidator(JwksCache(issuer.issuer), "p-1").validate(token)
    assert identity.device_id == "container-dev"
