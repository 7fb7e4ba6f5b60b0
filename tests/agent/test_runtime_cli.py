"""PodmanRuntime's podman command lines, against a stand-in podman that records its arguments:
the flags ``create`` passes for the device policy's user namespace, ``remove`` when ``rm``
fails the way podman 4.3 does under a user namespace (the shm race), each outcome of the
follow-up check, and ``start`` when podman refuses it because someone else started the
container first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harmony_fleet.agent.runtime import (
    ContainerRuntimeError,
    ContainerSpec,
    Mount,
    PodmanRuntime,
    Userns,
)

FAKE_PODMAN = """#!/bin/sh
echo "$@" >> "$CALLS"
case "$1" in
  start)
    echo 'Error: unable to start container 25bc: container state improper' >&2
    exit 125 ;;
  rm)
    echo 'Error: removing container 25bc root filesystem: 1 error occurred:' >&2
    printf '\\t* unlinkat .../overlay-containers/25bc/userdata/shm: device or resource busy\\n' >&2
    exit 2 ;;
  container)
    [ "$2" = exists ] && exit "$EXISTS_CODE"
    [ "$2" = inspect ] && printf '[{"Id": "25bc", "Name": "dev.app.web", "State": %s}]' \\
      "{\\"Status\\": \\"$INSPECT_STATE\\"}" && exit 0 ;;
  create)
    echo 0123abcd
    exit 0 ;;
esac
exit 99
"""


def runtime(tmp_path: Path, exists_code: int, inspect_state: str = "exited"
            ) -> tuple[PodmanRuntime, Path]:
    podman = tmp_path / "podman"
    podman.write_text(FAKE_PODMAN)
    podman.chmod(0o755)
    calls = tmp_path / "calls"
    env = {"PATH": os.environ["PATH"], "CALLS": str(calls), "EXISTS_CODE": str(exists_code),
           "INSPECT_STATE": inspect_state}
    return PodmanRuntime(str(podman), env=env), calls


async def test_failed_rm_of_a_container_that_is_gone_is_a_removal(tmp_path: Path) -> None:
    rt, calls = runtime(tmp_path, exists_code=1)
    await rt.remove("25bc", stop_timeout_s=7)
    assert calls.read_text().splitlines() == [
        "rm --force --ignore --time 7 25bc",  # the device's stop timeout, not podman's
        "container exists 25bc",
    ]


@pytest.mark.parametrize("exists_code", [0, 125], ids=["still-there", "cannot-tell"])
async def test_failed_rm_of_a_container_that_may_remain_is_an_error(
    tmp_path: Path, exists_code: int
) -> None:
    rt, _ = runtime(tmp_path, exists_code)
    with pytest.raises(ContainerRuntimeError) as err:
        await rt.remove("25bc", stop_timeout_s=10)
    assert str(err.value).startswith("cannot remove container 25bc: ")
    assert "device or resource busy" in str(err.value)


@pytest.mark.parametrize(("userns", "flag", "chown"), [
    (Userns.AUTO, "auto:size=65536", True),
    (Userns.HOST, "host", False),
])
async def test_create_passes_the_user_namespace_and_volume_ownership(
    tmp_path: Path, userns: Userns, flag: str, chown: bool
) -> None:
    rt, calls = runtime(tmp_path, exists_code=1)
    spec = ContainerSpec(
        name="dev.app.web", image="localhost/web:1", labels={},
        mounts=(Mount("/srv/fleet/data", "/data", chown=chown),
                Mount("/srv/fleet/conf", "/conf", read_only=True)),
        userns=userns,
    )
    assert await rt.create(spec) == "0123abcd"
    argv = calls.read_text().split()
    assert argv[argv.index("--userns") + 1] == flag
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
    assert volumes == [f"/srv/fleet/data:/data:rw{',U' if chown else ''}",
                       "/srv/fleet/conf:/conf:ro"]


async def test_create_without_userns_leaves_podman_its_default(tmp_path: Path) -> None:
    rt, calls = runtime(tmp_path, exists_code=1)
    await rt.create(ContainerSpec(name="x", image="localhost/x:1", labels={}))
    assert "--userns" not in calls.read_text().split()


async def test_a_refused_start_of_a_container_that_runs_anyway_is_done(tmp_path: Path) -> None:
    # podman's restart policy (or someone on the device) started it between the listing and
    # this start: podman refuses ours, and the container runs, which is all that was wanted
    rt, calls = runtime(tmp_path, exists_code=0, inspect_state="running")
    await rt.start("25bc")
    assert calls.read_text().splitlines() == ["start 25bc", "container inspect 25bc"]


@pytest.mark.parametrize("state", ["exited", "created", "stopping"])
async def test_a_refused_start_of_a_container_that_does_not_run_fails(
    tmp_path: Path, state: str
) -> None:
    rt, _ = runtime(tmp_path, exists_code=0, inspect_state=state)
    with pytest.raises(ContainerRuntimeError) as err:
        await rt.start("25bc")
    assert str(err.value) == "cannot start container dev.app.web: unable to start container " \
                             "25bc: container state improper"


RECORDING_CREATE = """#!/bin/sh
for arg in "$@"; do printf '%s\\0' "$arg"; done > "$CALLS.argv"
prev=""
for arg in "$@"; do
  if [ "$prev" = --env-file ]; then
    cp "$arg" "$CALLS.env"; stat -c %a "$arg" > "$CALLS.mode"; echo "$arg" > "$CALLS.path"
  fi
  prev="$arg"
done
echo 0123abcd
"""


async def test_create_passes_the_environment_in_a_private_env_file(tmp_path: Path) -> None:
    podman = tmp_path / "podman"
    podman.write_text(RECORDING_CREATE)
    podman.chmod(0o755)
    calls = tmp_path / "calls"
    rt = PodmanRuntime(str(podman), env={"PATH": os.environ["PATH"], "CALLS": str(calls)})
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    env = {"MODE": "prod", "QUOTED": '"a b"', "EMPTY": "", "TOKEN_LIKE": "s3cr3t=value", "PEM": pem}
    assert await rt.create(ContainerSpec(name="dev.app.web", image="localhost/web:1", labels={},
                                         command=["sh", "-c"], args=["echo é"], env=env)) \
        == "0123abcd"
    argv = Path(f"{calls}.argv").read_bytes().decode().split("\0")[:-1]
    # what an env file holds is in it, and nowhere in podman's argv (readable in /proc)
    assert Path(f"{calls}.env").read_text() == ('EMPTY=\nMODE=prod\nQUOTED="a b"\n'
                                                "TOKEN_LIKE=s3cr3t=value\n")
    assert not any("s3cr3t" in a or "prod" in a for a in argv)
    assert Path(f"{calls}.mode").read_text().strip() == "600"
    assert not Path(Path(f"{calls}.path").read_text().strip()).exists()  # gone after create
    # a value with newlines cannot be in an env file: it goes as an argument, exactly
    assert argv[argv.index("--env") + 1] == f"PEM={pem}"
    assert argv.count("--env") == 1
    assert argv[argv.index("--entrypoint") + 1] == '["sh", "-c"]'
    assert argv[-2:] == ["localhost/web:1", "echo é"]
