"""fleet-callout and fleet-operator configuration: the shared daemon command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from harmony_fleet.callout.main import main as callout_main
from harmony_fleet.operator.main import main as operator_main

CALLOUT = """
[callout]
enabled = true
issuer_seed_file = "/etc/fleet-callout/issuer.nk"
[callout.nats]
urls = ["nats://nats:4222"]
auth = { mode = "userpass", user = "callout", password_file = "/etc/fleet-callout/pw" }

[oidc]
issuer = "https://zitadel.example.net"
audience = "254771234567890123"

[writer]
[writer.nats]
urls = ["nats://nats:4222"]
auth = { mode = "userpass", user = "writer", password_file = "/etc/fleet-callout/wpw" }
"""

OPERATOR = """
[operator]
namespaces = ["shop"]
[kube]
server = "https://127.0.0.1:6443"
[nats]
urls = ["nats://nats:4222"]
auth = { mode = "zitadel", issuer = "https://zitadel.example.net", key_file = "/k.json", project_id = "p" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("entry", "text"), [(callout_main, CALLOUT), (operator_main, OPERATOR)])
def test_check_config_accepts_the_documented_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: object, text: str
) -> None:
    assert entry(["--config", str(write(tmp_path, text)), "--check-config"]) == 0  # type: ignore[operator]
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "needle"), [
    ("[callout]\nenabled = true\n", "issuer_seed_file"),
    ('[callout]\nenabled = true\nissuer_seed_file = "/x"\n', "oidc.issuer and oidc.audience"),
    ("[callout]\nenabled = false\n[writer]\nenabled = false\n", "nothing to run"),
    ('[oidc]\nissuer = "ftp://x"\n', "oidc.issuer"),
])
def test_callout_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                               needle: str) -> None:
    assert callout_main(["--config", str(write(tmp_path, text)), "--check-config"]) == 2
    assert needle in capsys.readouterr().err


def test_operator_config_rejects_unknown_fields(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert operator_main(["--config", str(write(tmp_path, "[operator]\nnamspaces = []\n")),
                          "--check-config"]) == 2
    assert "namspaces" in capsys.readouterr().err
