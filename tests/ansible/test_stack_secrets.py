"""``fleet stack up`` / ``fleet stack status`` print nothing secret, in any mode.

The real CLI starts a real stack; every secret it created (static users' passwords in
nats.conf, the password and seed files, machine keys, the issuer's signing key, the dev-mode
admin password in the state file) is collected from disk and searched for in what the
commands printed. The secrets stay in the 0600 state file and the files it names.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import BIN, REPO, cli_env

#: what secret material looks like, whatever its value: PEM private keys, nkey seeds
#: (user/account/operator/curve), a password value in JSON
SECRET_SHAPES = [re.compile(p) for p in (
    r"PRIVATE KEY", r"\bS[UAOX][A-Z2-7]{40,}", r'"password"\s*:\s*"',
)]
SECRET_FIELDS = {"key", "signing_key", "password", "seed", "token"}


def _strings_under_secret_fields(doc: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in SECRET_FIELDS and isinstance(value, str):
                found.add(value)
            else:
                found |= _strings_under_secret_fields(value)
    elif isinstance(doc, list):
        for item in doc:
            found |= _strings_under_secret_fields(item)
    return found


def secrets_on_disk(workdir: Path, state_file: Path) -> set[str]:
    """Every secret value the stack created, and each line of every PEM among them."""
    state = json.loads(state_file.read_text())
    found = _strings_under_secret_fields(state)
    conf = Path(state["nats_server"]["config_file"]).read_text()
    found |= set(re.findall(r'password: "([^"]+)"', conf))
    for path in workdir.rglob("*"):
        if not path.is_file():
            continue
        if path.parent.name != "secrets" and path.name not in {"nats-password",
                                                                 "zitadel-key.json"}:
            continue
        text = path.read_text()
        try:
            found |= _strings_under_secret_fields(json.loads(text))
        except ValueError:
            found.add(text.strip())  # a password or seed file
    lines = {line for value in found if "-----BEGIN" in value
             for line in value.splitlines() if len(line) >= 40}
    return {s for s in found | lines if len(s) >= 8}


def fleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fleet"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180, check=False)


@pytest.mark.parametrize("auth", ["callout", "dev"])
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_stack_commands_print_no_secret(tmp_path: Path, auth: str, as_json: bool) -> None:
    state_dir, workdir = tmp_path / "state", tmp_path / "stack"
    (state_dir / "run").mkdir(parents=True, mode=0o700)
    env = cli_env(state_dir)
    state_file = state_dir / "stack.json"
    up = fleet(env, "stack", "up", "--devices", "1", "--no-runtime", "--keep", "--auth", auth,
               "--workdir", str(workdir), *(["--json"] if as_json else []))
    try:
        assert up.returncode == 0, up.stderr
        status = fleet(env, "stack", "status")
        assert status.returncode == 0, status.stderr
        secrets = secrets_on_disk(workdir, state_file)
        # not a vacuous check: the stack really made secrets (passwords, seeds, keys)
        assert len(secrets) >= 4, secrets
        for command, output in (("up", up.stdout), ("status", status.stdout)):
            for secret in secrets:
                assert secret not in output, f"'fleet stack {command}' printed a secret"
            for shape in SECRET_SHAPES:
                assert not shape.search(output), f"'fleet stack {command}' printed {shape}"
        assert oct(state_file.stat().st_mode & 0o777) == "0o600"
        if as_json:
            shown = json.loads(up.stdout)
            assert shown["state_file"] == str(state_file)
            if auth == "dev":  # the one secret of the state file: named, not shown
                assert shown["connection"]["auth"]["secrets_in_state_file"] == ["password"]
                on_disk = json.loads(state_file.read_text())
                assert on_disk["connection"]["auth"]["password"] in secrets
        else:
            assert str(state_file) in up.stdout
        assert "pong" in status.stdout  # status still works from the full state file
    finally:
        down = fleet(env, "stack", "down")
        assert down.returncode == 0, down.stderr
