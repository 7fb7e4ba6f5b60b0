"""``fleet dashboard``: what it refuses before it starts anything (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harmony_fleet.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["dashboard", *argv])
    return code, capsys.readouterr().err


def test_no_login_means_loopback_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "--mock", "--listen", "0.0.0.0:18080")
    assert code == 2
    assert err.startswith("fleet: InvalidInput: dashboard settings:")
    assert "only listen on a loopback address" in err
    assert err.count("\n") == 1


def test_a_config_file_it_cannot_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "--mock", "--config", str(tmp_path / "missing.toml"))
    assert code == 2
    assert "missing.toml" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[dashboard\n")
    code, err = run(capsys, "--mock", "--config", str(bad))
    assert code == 2
    bad.write_text('[dashboard]\nlisten = "0.0.0.0:1"\n')  # auth defaults to oidc
    code, err = run(capsys, "--mock", "--config", str(bad))
    assert code == 2
    assert "needs a [dashboard.oidc] section" in err


def test_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "--mock", "--listen", "18080")
    assert code == 2
    assert "expected host:port" in err
    for argv in (["--page-size", "0"], ["--offline-after", "-1"]):
        with pytest.raises(SystemExit) as exited:
            main(["dashboard", "--mock", *argv])
        assert exited.value.code == 2, argv
        assert capsys.readouterr().err.startswith("fleet: dashboard: argument")
