"""Every failure of the ``fleet`` CLI is one line on stderr, ``fleet: <what went wrong>``, and
a non-zero exit; never a traceback. Each row runs the real CLI (a subprocess) against a real
local stack, or against what is broken on purpose (files, URLs, ports, a PATH without podman).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harmony_fleet.localstack.stack import LocalStack
from harmony_fleet_harness.pytest_plugin import unique_device_id
from tests.ansible.conftest import BIN, REPO, cli_env

USAGE, FAILED = 2, 1
INVALID_IDS = ["*", ">", ".", "", "a" * 300, "Foo"]


@dataclass
class Stack:
    """A ``--keep`` stack of the module, and what the rows need around it."""

    env: dict[str, str]
    state: dict[str, Any]
    tmp: Path
    busy_port: int

    @property
    def device(self) -> str:
        return str(self.state["devices"][0]["device_id"])

    def fill(self, text: str) -> str:
        return text.format(url=self.state["nats_url"], dev=self.device, tmp=self.tmp,
                           busy=self.busy_port, prefix=self.device.rsplit("-", 1)[0])

    def fleet(self, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "fleet"), *(self.fill(a) for a in args)], cwd=REPO,
                              env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=120, check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cli-errors")
    (tmp / "run").mkdir(mode=0o700)
    env = cli_env(tmp)
    up = subprocess.run(
        [str(BIN / "fleet"), "stack", "up", "--devices", "1", "--no-runtime", "--keep",
         "--json", "--device-prefix", unique_device_id("cli-errors")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert up.returncode == 0, up.stderr
    # what the rows break on purpose
    (tmp / "not-yaml.yml").write_text("urls: [a\n  b: : c\n")
    (tmp / "a-list.json").write_text("[1, 2]")
    (tmp / "bad-url.json").write_text(json.dumps({"urls": ["nats//x"]}))
    (tmp / "no-password.json").write_text(json.dumps({
        "urls": ["nats://127.0.0.1:4222"],
        "auth": {"mode": "userpass", "user": "u", "password_file": str(tmp / "absent")}}))
    (tmp / "a-file").write_text("")
    (tmp / "full").mkdir()
    (tmp / "full" / "something").write_text("")
    (tmp / "no-podman").mkdir()
    (tmp / "no-podman" / "python3").symlink_to(BIN / "python3")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield Stack(env, json.loads(up.stdout), tmp, busy.getsockname()[1])
    down = subprocess.run([str(BIN / "fleet"), "stack", "down"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert down.returncode == 0, down.stderr


NO_PODMAN = {"PATH": "{tmp}/no-podman"}
OTHER_STATE = ("--state-file", "{tmp}/other.json")

#: (id, argv, environment, exit code, what the line says)
ROWS: list[tuple[str, list[str], dict[str, str], int, str]] = [
    # the command line itself
    ("no-command", [], {}, USAGE, "the following arguments are required"),
    ("unknown-command", ["nosuch"], {}, USAGE, "invalid choice: 'nosuch'"),
    ("ping-no-ids", ["ping"], {}, USAGE, "ping: the following arguments are required"),
    ("ping-count-0", ["ping", "{dev}", "--count", "0"], {}, USAGE, "must be at least 1"),
    ("ping-timeout-0", ["ping", "{dev}", "--timeout", "0"], {}, USAGE, "more than 0 seconds"),
    ("exec-no-argv", ["exec", "{dev}", "shop_web", "web"], {}, USAGE,
     "the following arguments are required: argv"),
    ("logs-tail", ["logs", "{dev}", "shop_web", "web", "--tail", "-1"], {}, USAGE,
     "must be at least 0"),
    # stack up with bad options, a port in use, podman missing...
    ("up-devices-abc", ["stack", "up", "--devices", "abc"], {}, USAGE,
     "expected a whole number, got 'abc'"),
    ("up-devices-negative", ["stack", "up", "--devices", "-1"], {}, USAGE, "must be at least 0"),
    ("up-prefix", ["stack", "up", "--device-prefix", "Foo", *OTHER_STATE], {}, USAGE,
     "--device-prefix 'Foo' does not make device ids"),
    ("up-prefix-long", ["stack", "up", "--device-prefix", "x" * 62, *OTHER_STATE], {}, USAGE,
     "the limit is 63"),
    ("up-label", ["stack", "up", "--label", "bad key!=x"], {}, USAGE, "label key 'bad key!'"),
    ("up-label-no-value", ["stack", "up", "--label", "novalue"], {}, USAGE,
     "expected key=value"),
    ("up-auth", ["stack", "up", "--auth", "nope"], {}, USAGE, "invalid choice: 'nope'"),
    ("up-port-range", ["stack", "up", "--port", "70000"], {}, USAGE, "from 1 to 65535"),
    ("up-port-in-use", ["stack", "up", "--devices", "0", "--port", "{busy}", *OTHER_STATE], {},
     FAILED, "port {busy} on 127.0.0.1 is in use"),
    ("up-token-lifetime", ["stack", "up", "--token-lifetime", "0"], {}, USAGE,
     "argument --token-lifetime: must be at least 1, got 0"),
    ("up-runtime-no-podman", ["stack", "up", "--runtime", *OTHER_STATE], NO_PODMAN, USAGE,
     "--runtime needs podman, which is not installed"),
    ("up-workdir-not-empty", ["stack", "up", "--workdir", "{tmp}/full", *OTHER_STATE], {},
     USAGE, "--workdir {tmp}/full exists and is not an empty directory"),
    ("up-no-nats-server", ["stack", "up", "--devices", "0", *OTHER_STATE],
     {"FLEET_NATS_SERVER": "{tmp}/absent"}, FAILED,
     "FLEET_NATS_SERVER={tmp}/absent is not an executable file"),
    ("up-while-running", ["stack", "up", "--devices", "1"], {}, FAILED,
     "a local stack is running"),
    ("up-device-id-in-use", ["stack", "up", "--devices", "1", "--device-prefix", "{prefix}",
                             *OTHER_STATE], {}, FAILED,
     "device id {dev} is already run by another agent on this host"),
    ("status-no-stack", ["stack", "status", *OTHER_STATE], {}, FAILED,
     "no local stack is running (no {tmp}/other.json)"),
    ("down-no-stack", ["stack", "down", *OTHER_STATE], {}, FAILED, "no local stack is running"),
    # devices: offline, unknown, not allowed, not ids
    ("logs-offline", ["logs", "nosuch-device", "shop_web", "web"], {}, FAILED,
     "device nosuch-device is offline (no responders)"),
    ("exec-offline", ["exec", "nosuch-device", "shop_web", "web", "--", "ls"], {}, FAILED,
     "device nosuch-device is offline (no responders)"),
    ("logs-no-runtime", ["logs", "{dev}", "shop_web", "web"], {}, FAILED, "Unsupported: logs"),
    ("logs-bad-device", ["logs", "Foo", "shop_web", "web"], {}, USAGE, "device id 'Foo'"),
    ("logs-bad-deployment", ["logs", "{dev}", "shop.web", "web"], {}, USAGE,
     "deployment 'shop.web' is not a deployment token"),
    ("logs-bad-since", ["logs", "{dev}", "shop_web", "web", "--since", "bad value!"], {},
     USAGE, "invalid logs request: since"),
    ("exec-bad-timeout", ["exec", "{dev}", "shop_web", "web", "--timeout", "99999", "--",
                          "ls"], {}, USAGE, "invalid exec request: timeout_s"),
    ("desired-bad-device", ["desired", "Foo"], {}, USAGE, "device id 'Foo'"),
    ("desired-bad-deployment", ["desired", "--deployment", "a.b"], {}, USAGE,
     "deployment 'a.b' is not a deployment token"),
    # connections that cannot be made
    ("connection-file-not-yaml", ["ping", "{dev}", "--connection-file", "{tmp}/not-yaml.yml"],
     {}, USAGE, "is neither JSON nor YAML: expected ',' or ']'"),
    ("connection-file-list", ["ping", "{dev}", "--connection-file", "{tmp}/a-list.json"], {},
     USAGE, "expected a mapping with 'urls' and 'auth'"),
    ("connection-file-missing", ["ping", "{dev}", "--connection-file", "{tmp}/absent"], {},
     USAGE, "cannot read connection file {tmp}/absent"),
    ("connection-file-bad-url", ["ping", "{dev}", "--connection-file", "{tmp}/bad-url.json"],
     {}, USAGE, "'nats//x' is not a NATS URL"),
    ("connection-file-no-password", ["ping", "{dev}", "--connection-file",
                                     "{tmp}/no-password.json"], {}, USAGE,
     "cannot read the password file {tmp}/absent: No such file or directory"),
    ("url-no-scheme", ["ping", "{dev}", "--url", "nats//x"], {}, USAGE,
     "'nats//x' is not a NATS URL: expected nats://HOST:PORT"),
    ("url-http", ["ping", "{dev}", "--url", "http://x:4222"], {}, USAGE,
     "the scheme must be one of"),
    ("url-env-port", ["ping", "{dev}"], {"FLEET_NATS_URL": "nats://127.0.0.1:99999"}, USAGE,
     "the port must be a number from 1 to 65535"),
    ("password-and-token", ["ping", "{dev}"],
     {"FLEET_NATS_PASSWORD": "x", "FLEET_NATS_TOKEN": "y"}, USAGE,
     "either a password or a token, not both"),
    ("no-server-given", ["ping", "{dev}"], {"FLEET_STATE_DIR": "{tmp}/empty"}, USAGE,
     "no NATS server given"),
    ("credentials-refused", ["ping", "{dev}", "--url", "{url}", "--user", "nobody",
                             "--password", "wrong"], {}, FAILED, "Authorization Violation"),
    ("nothing-listens", ["ping", "{dev}", "--url", "nats://127.0.0.1:{busy}"], {}, FAILED,
     "could not connect to nats://127.0.0.1:{busy}"),
    # files and podman
    ("crds-check-no-dir", ["crds", "--check", "{tmp}/absent"], {}, USAGE,
     "--check {tmp}/absent: no such directory"),
    ("crds-write-a-file", ["crds", "--write", "{tmp}/a-file"], {}, USAGE,
     "InvalidInput: cannot write the CRDs to {tmp}/a-file"),
    ("demo-image-no-podman", ["demo-image"], NO_PODMAN, FAILED, "podman is not installed"),
]


@pytest.mark.parametrize(("argv", "env", "code", "says"), [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])
def test_a_failure_is_one_line_and_an_exit_code(
        stack: Stack, argv: list[str], env: dict[str, str], code: int, says: str) -> None:
    proc = stack.fleet(*argv, env={k: stack.fill(v) for k, v in env.items()})
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fleet: "), proc.stderr
    assert stack.fill(says) in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "never retrieved" not in proc.stderr


def test_invalid_ids_are_said_one_by_one_and_the_valid_one_is_pinged(stack: Stack) -> None:
    proc = stack.fleet("ping", INVALID_IDS[0], "{dev}", *INVALID_IDS[1:])
    assert proc.returncode == USAGE  # something failed: the exit code says so
    assert proc.stdout.startswith(f"{stack.device}: pong"), proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == len(INVALID_IDS), proc.stderr
    assert all(line.startswith("fleet: InvalidIdError: device id") for line in lines)
    assert "must not be empty" in lines[3]
    assert "300 characters long; the limit is 63" in lines[4]
    assert "'Foo' is not a DNS-1123 label" in lines[5]
    assert "Traceback" not in proc.stderr


def test_pinging_only_invalid_ids_connects_to_nothing(stack: Stack) -> None:
    proc = stack.fleet("ping", "*", "--url", "nats://127.0.0.1:{busy}")
    assert proc.returncode == USAGE
    assert proc.stderr.splitlines() == [
        "fleet: InvalidIdError: device id '*' is not a DNS-1123 label (lowercase letters, digits and '-', "
        "starting and ending with a letter or digit)"]
    assert proc.stdout == ""


def test_an_offline_device_fails_the_ping(stack: Stack) -> None:
    proc = stack.fleet("ping", "{dev}", "nosuch-device", "--json")
    assert proc.returncode == FAILED
    rows = json.loads(proc.stdout)
    assert [r["ok"] for r in rows] == [True, False]
    assert rows[1]["error"].startswith("DeviceOffline: ")
    assert proc.stderr == ""


EXEC_CAT_IN_SHOP_WEB = ('[exec]\nenabled = true\n'
                        'allow = [ { deployment = "shop_web", service = "web", '
                        'commands = ["cat"] } ]\n')


@pytest.mark.podman
@pytest.mark.parametrize(("argv", "says"), [
    (["logs", "{dev}", "shop_nope", "web"],
     "RemoteError: NotFound: logs: deployment shop_nope has no service web on {dev}"),
    (["exec", "{dev}", "shop_web", "web", "--", "cat", "/etc/hostname"],
     "RemoteError: NotFound: exec: deployment shop_web has no service web on {dev}"),
    (["exec", "{dev}", "shop_web", "web", "--", "rm", "-rf", "/"],
     "RemoteError: Forbidden: exec of 'rm' in shop_web/web is not allowed on {dev}"),
], ids=["logs-unknown-deployment", "exec-unknown-deployment", "exec-not-allowed"])
async def test_what_a_device_refuses_is_one_line(
        fleet_stack: LocalStack, device_id: str, tmp_path: Path, argv: list[str],
        says: str) -> None:
    """An agent that drives podman, asked about a deployment it does not run."""
    await fleet_stack.add_device(device_id, runtime_enabled=True,
                                 extra_toml=EXEC_CAT_IN_SHOP_WEB)
    admin = fleet_stack.services.admin
    assert admin is not None
    env = {**cli_env(tmp_path), "FLEET_NATS_URL": fleet_stack.nats_url,
           "FLEET_NATS_USER": admin.user, "FLEET_NATS_PASSWORD": admin.password}
    # the agent answers from this event loop: do not block it
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "fleet"), *(a.format(dev=device_id) for a in argv), cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == FAILED, err
    assert err.decode().splitlines() == [f"fleet: {says.format(dev=device_id)}"]
    assert out == b""
