"""Secrets in workloads: the real agent (a subprocess), real podman, real nats-server and a real
registry. Every claim is checked where the plaintext could leak: podman inspect, podman argv,
the desired-state bucket (all revisions), the agent's log, the device-state reports.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets as random_secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from harmony_fleet.agent.plan import deployment_secret_prefix
from harmony_fleet.bus.kv import read_bucket
from harmony_fleet.contracts import BUCKET_DESIRED_STATE, BUCKET_DEVICE_STATE, Phase, seal
from harmony_fleet.contracts.sealing import generate_private_key, public_key_of
from harmony_fleet.localstack.stack import DeviceHandle, LocalStack

from .registry import LoopbackRegistry, RegistryUnavailable, image_present, remove_image
from .workloads import (
    IDLE,
    by_name,
    containers,
    delete,
    init,
    podman_secrets,
    put,
    sealing_key,
    service,
    wait_state,
)

pytestmark = pytest.mark.podman

#: A podman that records its argv (and the mode of any --authfile) before running the real one.
WRAPPER = """#!/bin/sh
log={log}
printf 'argv:' >> "$log"
for a in "$@"; do printf ' %s' "$a" >> "$log"; done
printf '\\n' >> "$log"
prev=""
for a in "$@"; do
  if [ "$prev" = "--authfile" ]; then
    printf 'authfile %s %s\\n' "$a" "$(stat -c %a "$a")" >> "$log"
    printf 'authdir %s\\n' "$(stat -c %a "$(dirname "$a")")" >> "$log"
  fi
  prev="$a"
done
exec podman "$@"
"""


def plaintext() -> str:
    return "fleet-secret-" + random_secrets.token_hex(12)


def spellings(value: str) -> list[str]:
    """The plaintext and the encodings a leak would most likely take."""
    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
            raw.hex()]


def assert_absent(haystack: str, value: str, where: str) -> None:
    for spelling in spellings(value):
        assert spelling not in haystack, f"the secret ({spelling[:6]}...) appears in {where}"


def podman_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "podman-argv.log"
    log.touch()
    script = tmp_path / "podman"
    script.write_text(WRAPPER.format(log=log))
    script.chmod(0o755)
    return script, log


async def start_agent(stack: LocalStack, device: str, tmp_path: Path,
                      **runtime: Any) -> tuple[DeviceHandle, Path]:
    """A subprocess agent with debug logging and the argv-recording podman."""
    wrapper, argv_log = podman_wrapper(tmp_path)
    handle = await stack.add_device(device, runtime_enabled=True, mode="subprocess",
                                    runtime={"podman": str(wrapper), **runtime},
                                    extra_toml='[log]\nlevel = "debug"\n')
    return handle, argv_log


async def desired_history(nc: NatsClient, device: str, deployment: str) -> str:
    """Every stored revision of the desired-state key (the bucket keeps history)."""
    kv = await nc.jetstream().key_value(BUCKET_DESIRED_STATE)
    entries = await kv.history(f"{device}.{deployment}")
    return "\n".join((e.value or b"").decode() for e in entries)


def inspect_all(device: str) -> str:
    names = [c["Names"][0] for c in containers(device)]
    if not names:
        return ""
    return subprocess.run(["podman", "container", "inspect", *names], capture_output=True,
                          text=True, check=True).stdout


def inspect_secrets(names: list[str]) -> str:
    return subprocess.run(["podman", "secret", "inspect", *names], capture_output=True,
                          text=True, check=True).stdout


def read_file(container: str, path: str) -> str:
    return subprocess.run(["podman", "exec", container, "cat", path], capture_output=True,
                          text=True, check=True).stdout


def with_secret(image: str, key: str, deployment: str, value: str) -> dict[str, Any]:
    return {
        "init_containers": [init("check", image, "test -s /run/secrets/db", secrets=["db"])],
        "services": [service("web", image, secrets=["db"]), service("plain", image)],
        "secrets": {"db": seal(key, deployment, "db", value.encode())},
    }


def cli_desired(stack: LocalStack, capsys: pytest.CaptureFixture[str], device: str,
                tmp_path: Path) -> Any:
    from harmony_fleet.cli import main

    connection = tmp_path / "admin-connection.json"
    connection.write_text(json.dumps(stack.admin_connection()))
    connection.chmod(0o600)
    capsys.readouterr()
    code = main(["desired", device, "--connection-file", str(connection)])
    assert code == 0
    return json.loads(capsys.readouterr().out)


async def test_a_sealed_secret_arrives_as_a_file_and_nowhere_else_in_plaintext(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    handle, argv_log = await start_agent(fleet_stack, device_id, tmp_path)
    key = await sealing_key(admin_nc, device_id)
    key_file = handle.config_file.parent / "sealing-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    value = plaintext()
    await put(admin_nc, device_id, "shop_app", with_secret(fleet_image, key, "shop_app", value))
    state = await wait_state(admin_nc, device_id, "shop_app", Phase.RUNNING, timeout=60)

    web = f"{device_id}.shop_app.web"
    assert read_file(web, "/run/secrets/db") == value
    # the plain service gets no secrets
    listing = subprocess.run(["podman", "exec", f"{device_id}.shop_app.plain", "ls",
                              "/run/secrets"], capture_output=True, text=True, check=False)
    assert listing.returncode != 0 or listing.stdout.strip() == ""

    # nowhere else: podman inspect (the whole document), the secret's own metadata, podman's
    # argv, every revision in the bucket, the device's reports, the agent's debug log
    owned = podman_secrets(device_id)
    assert owned == podman_secrets(device_id, "shop_app")
    assert len(owned) == 1
    inspected = inspect_all(device_id)
    assert owned[0] in inspected  # it does mount the secret...
    assert_absent(inspected, value, "podman inspect")  # ...and shows no value
    metadata = inspect_secrets(owned)
    assert_absent(metadata, value, "podman secret inspect")
    assert json.loads(metadata)[0]["Spec"]["Labels"] == {
        "io.nationtech.fleet.managed": "true", "io.nationtech.fleet.device": device_id,
        "io.nationtech.fleet.deployment": "shop_app", "io.nationtech.fleet.secret": "db"}
    argv = argv_log.read_text()
    assert "secret create --driver file" in argv
    assert_absent(argv, value, "podman's argv")
    assert_absent(await desired_history(admin_nc, device_id, "shop_app"), value,
                  "the desired-state bucket")
    reports = await read_bucket(admin_nc.jetstream(), BUCKET_DEVICE_STATE, f"state.{device_id}.>")
    assert_absent(json.dumps({k: v.decode() for k, v in reports.items()}), value, "device-state")
    assert state.spec_hash is not None
    assert handle.log_file is not None
    assert_absent(handle.log_file.read_text(), value, "the agent's log")

    # the CLI shows what the device is told, with the sealed value redacted
    shown = await asyncio.to_thread(cli_desired, fleet_stack, capsys, device_id, tmp_path)
    assert shown[f"{device_id}.shop_app"]["secrets"] == {"db": "<redacted>"}
    assert shown[f"{device_id}.shop_app"]["services"][0]["secrets"] == ["db"]
    envelope = json.loads(await desired_history(admin_nc, device_id, "shop_app"))["secrets"]["db"]
    assert envelope[3:] not in json.dumps(shown)

    # removing the deployment removes its podman secrets too
    await delete(admin_nc, device_id, "shop_app")
    await wait_state(admin_nc, device_id, "shop_app", Phase.REMOVED, timeout=60)
    assert podman_secrets(device_id) == []
    assert_absent(handle.log_file.read_text(), value, "the agent's log")


async def test_a_changed_secret_recreates_the_service_that_reads_it(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    tmp_path: Path,
) -> None:
    await start_agent(fleet_stack, device_id, tmp_path)
    key = await sealing_key(admin_nc, device_id)
    first, second = plaintext(), plaintext()
    await put(admin_nc, device_id, "ns_rot", with_secret(fleet_image, key, "ns_rot", first))
    before = await wait_state(admin_nc, device_id, "ns_rot", Phase.RUNNING, timeout=60)
    ids = {name: c["Id"] for name, c in by_name(device_id).items()}
    old_secret = podman_secrets(device_id, "ns_rot")

    # the same value sealed again is the same envelope: nothing changes
    revision = await put(admin_nc, device_id, "ns_rot",
                         with_secret(fleet_image, key, "ns_rot", first))
    again = await wait_state(admin_nc, device_id, "ns_rot",
                             lambda s: s.revision == revision and s.phase is Phase.RUNNING)
    assert again.spec_hash == before.spec_hash
    assert {name: c["Id"] for name, c in by_name(device_id).items()} == ids

    await put(admin_nc, device_id, "ns_rot", with_secret(fleet_image, key, "ns_rot", second))
    await wait_state(admin_nc, device_id, "ns_rot",
                     lambda s: s.phase is Phase.RUNNING and s.spec_hash != before.spec_hash,
                     timeout=60)
    now = {name: c["Id"] for name, c in by_name(device_id).items()}
    web, plain = f"{device_id}.ns_rot.web", f"{device_id}.ns_rot.plain"
    # the init container reads the secret too, so every service is recreated after it
    assert now[web] != ids[web]
    assert now[plain] != ids[plain]
    assert read_file(web, "/run/secrets/db") == second
    current = podman_secrets(device_id, "ns_rot")
    assert len(current) == 1
    assert current != old_secret  # the old value's podman secret is gone


async def test_a_secret_only_a_service_reads_recreates_only_that_service(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    tmp_path: Path,
) -> None:
    await start_agent(fleet_stack, device_id, tmp_path)
    key = await sealing_key(admin_nc, device_id)

    def score(value: str) -> dict[str, Any]:
        return {"services": [service("web", fleet_image, secrets=["db"]),
                             service("plain", fleet_image)],
                "secrets": {"db": seal(key, "ns_one", "db", value.encode())}}

    await put(admin_nc, device_id, "ns_one", score(plaintext()))
    before = await wait_state(admin_nc, device_id, "ns_one", Phase.RUNNING, timeout=60)
    ids = {name: c["Id"] for name, c in by_name(device_id).items()}
    await put(admin_nc, device_id, "ns_one", score(plaintext()))
    await wait_state(admin_nc, device_id, "ns_one",
                     lambda s: s.phase is Phase.RUNNING and s.spec_hash != before.spec_hash,
                     timeout=60)
    now = {name: c["Id"] for name, c in by_name(device_id).items()}
    assert now[f"{device_id}.ns_one.plain"] == ids[f"{device_id}.ns_one.plain"]
    assert now[f"{device_id}.ns_one.web"] != ids[f"{device_id}.ns_one.web"]


@pytest.mark.parametrize("how", ["tampered", "other-device", "other-deployment"])
async def test_a_secret_that_does_not_open_fails_the_deployment_and_creates_nothing(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    tmp_path: Path, how: str,
) -> None:
    await start_agent(fleet_stack, device_id, tmp_path)
    key = await sealing_key(admin_nc, device_id)
    value = plaintext()
    score = with_secret(fleet_image, key, "ns_bad", value)
    if how == "tampered":
        envelope = score["secrets"]["db"]
        score["secrets"]["db"] = envelope[:10] + ("A" if envelope[10] != "A" else "B") + \
            envelope[11:]
    elif how == "other-device":
        score["secrets"]["db"] = seal(public_key_of(generate_private_key()), "ns_bad", "db",
                                      value.encode())
    else:
        score["secrets"]["db"] = seal(key, "ns_elsewhere", "db", value.encode())
    await put(admin_nc, device_id, "ns_bad", score)
    state = await wait_state(admin_nc, device_id, "ns_bad", Phase.FAILED, timeout=60)
    assert state.message.startswith("secret 'db': cannot be opened"), state.message
    assert containers(device_id) == []
    assert podman_secrets(device_id) == []


async def test_secrets_of_a_deployment_gone_while_the_agent_was_down_are_swept(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, fleet_image: str,
    tmp_path: Path,
) -> None:
    await start_agent(fleet_stack, device_id, tmp_path)
    key = await sealing_key(admin_nc, device_id)
    await put(admin_nc, device_id, "ns_gone", with_secret(fleet_image, key, "ns_gone",
                                                          plaintext()))
    await wait_state(admin_nc, device_id, "ns_gone", Phase.RUNNING, timeout=60)
    assert await fleet_stack.stop_device(device_id) == 0
    # a leftover of a crash between creating a secret and its container
    leftover = deployment_secret_prefix(device_id, "ns_crash") + "0123456789abcdef"
    subprocess.run(["podman", "secret", "create", leftover, "-"], input=b"x", check=True,
                   capture_output=True)
    await delete(admin_nc, device_id, "ns_gone")
    (tmp_path / "again").mkdir()
    await start_agent(fleet_stack, device_id, tmp_path / "again")
    await wait_state(admin_nc, device_id, "ns_gone", Phase.REMOVED, timeout=60)
    for _ in range(100):
        if podman_secrets(device_id) == []:
            break
        await asyncio.sleep(0.2)
    assert podman_secrets(device_id) == []
    # the sealing key survived the restart: the same public key is published
    assert await sealing_key(admin_nc, device_id) == key


# ----------------------------------------------------------------------------- registries


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackRegistry]:
    try:
        started = LoopbackRegistry(tmp_path_factory.mktemp("registry")).start()
    except RegistryUnavailable as exc:
        pytest.fail(str(exc))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def private_image(registry: LoopbackRegistry, fleet_image: str, device_id: str) -> Iterator[str]:
    """The local busybox pushed under a tag of this test only (so it is never pulled yet)."""
    reference = registry.push(fleet_image, f"fleet/{device_id}:1")
    assert not image_present(reference)
    try:
        yield reference
    finally:
        remove_image(reference)


def pull_score(image: str, key: str | None, registry: LoopbackRegistry, deployment: str,
               password: str | None = None) -> dict[str, Any]:
    score: dict[str, Any] = {"services": [service("web", image, IDLE)]}
    if key is not None:
        score["registry_credentials"] = [{"registry": registry.host, "username":
                                          registry.username, "password_secret": "registry"}]
        score["secrets"] = {"registry": seal(key, deployment, "registry",
                                             (password or registry.password).encode())}
    return score


async def test_a_private_image_is_pulled_with_sealed_credentials(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, registry: LoopbackRegistry,
    private_image: str, tmp_path: Path,
) -> None:
    handle, argv_log = await start_agent(fleet_stack, device_id, tmp_path,
                                         insecure_registries=[registry.host])
    key = await sealing_key(admin_nc, device_id)
    await put(admin_nc, device_id, "ns_pull", pull_score(private_image, key, registry, "ns_pull"))
    await wait_state(admin_nc, device_id, "ns_pull", Phase.RUNNING, timeout=90)
    assert image_present(private_image)

    argv = argv_log.read_text()
    pull = next(line for line in argv.splitlines() if line.startswith("argv: pull"))
    assert "--tls-verify=false" in pull  # the device's own config said so
    auth_lines = [line.split() for line in argv.splitlines() if line.startswith("authfile ")]
    assert len(auth_lines) == 1
    _, authfile, mode = auth_lines[0]
    assert mode == "600"
    assert "authdir 700" in argv
    assert not Path(authfile).exists()  # deleted right after the pull
    assert not Path(authfile).parent.exists()
    assert_absent(argv, registry.password, "podman's argv")
    assert handle.log_file is not None
    assert_absent(handle.log_file.read_text(), registry.password, "the agent's log")
    assert_absent(await desired_history(admin_nc, device_id, "ns_pull"), registry.password,
                  "the desired-state bucket")
    # no login was left behind for podman's other users
    for auth in (Path(os.environ.get("XDG_RUNTIME_DIR", "/run/user/0")) / "containers/auth.json",
                 Path.home() / ".docker/config.json"):
        if auth.exists():
            assert registry.host not in auth.read_text()


async def test_without_credentials_the_pull_fails_with_a_clear_message(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, registry: LoopbackRegistry,
    private_image: str, tmp_path: Path,
) -> None:
    await start_agent(fleet_stack, device_id, tmp_path, insecure_registries=[registry.host])
    key = await sealing_key(admin_nc, device_id)
    await put(admin_nc, device_id, "ns_anon", pull_score(private_image, None, registry, "ns_anon"))
    state = await wait_state(admin_nc, device_id, "ns_anon", Phase.FAILED, timeout=90)
    assert state.message.startswith(f"cannot pull image {private_image}:")
    assert "authentication required" in state.message
    assert state.message.endswith(f"(the workload has no registry_credentials for "
                                  f"{registry.host})")
    assert containers(device_id) == []

    await put(admin_nc, device_id, "ns_wrong",
              pull_score(private_image, key, registry, "ns_wrong", password="not-the-password"))
    state = await wait_state(admin_nc, device_id, "ns_wrong", Phase.FAILED, timeout=90)
    assert "unauthorized" in state.message
    assert "registry_credentials" not in state.message
    assert not image_present(private_image)


async def test_a_plain_http_registry_needs_the_device_to_allow_it(
    fleet_stack: LocalStack, admin_nc: NatsClient, device_id: str, registry: LoopbackRegistry,
    private_image: str, tmp_path: Path,
) -> None:
    await start_agent(fleet_stack, device_id, tmp_path)  # no insecure_registries
    key = await sealing_key(admin_nc, device_id)
    await put(admin_nc, device_id, "ns_tls", pull_score(private_image, key, registry, "ns_tls"))
    state = await wait_state(admin_nc, device_id, "ns_tls", Phase.FAILED, timeout=90)
    assert "server gave HTTP response to HTTPS client" in state.message
