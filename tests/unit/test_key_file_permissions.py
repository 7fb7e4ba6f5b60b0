"""A machine key file that group or others can access is refused (as ssh refuses such a
private key), unless the settings allow it, and then it is used with one warning."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harmony_fleet.bus import tokens
from harmony_fleet.bus.settings import ZitadelAuth
from harmony_fleet.bus.tokens import (
    AccessToken,
    InsecureKeyFileError,
    MachineKey,
    TokenError,
    ZitadelTokenProvider,
    check_key_file,
    key_file_permission_problem,
)

OPEN_MODES = [0o640, 0o604, 0o644, 0o660, 0o606, 0o610, 0o601, 0o700 | 0o070, 0o777]
PRIVATE_MODES = [0o600, 0o400, 0o200, 0o700]


@pytest.fixture(scope="module")
def pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def key_file(tmp_path: Path, pem: str, mode: int) -> Path:
    path = tmp_path / "zitadel-key.json"
    path.write_text(json.dumps({"type": "serviceaccount", "keyId": "k-1", "key": pem,
                                "userId": "u-1"}))
    path.chmod(mode)
    return path


def settings(path: Path, allow: bool = False) -> ZitadelAuth:
    return ZitadelAuth(issuer="https://zitadel.example.net", key_file=path, project_id="p",
                       allow_insecure_key_permissions=allow)


@pytest.mark.parametrize("mode", OPEN_MODES)
def test_problem_for_modes_open_to_group_or_others(mode: int) -> None:
    problem = key_file_permission_problem(Path("/etc/k.json"), 0o100000 | mode)
    assert problem is not None
    assert f"permissions {mode:04o} for machine key file /etc/k.json are too open" in problem
    assert "chmod 600 /etc/k.json" in problem


@pytest.mark.parametrize("mode", PRIVATE_MODES)
def test_no_problem_for_owner_only_modes(mode: int) -> None:
    assert key_file_permission_problem(Path("/k"), 0o100000 | mode) is None


@pytest.mark.parametrize("mode", OPEN_MODES)
def test_an_open_key_file_is_refused(tmp_path: Path, pem: str, mode: int) -> None:
    path = key_file(tmp_path, pem, mode)
    with pytest.raises(InsecureKeyFileError, match="too open") as info:
        MachineKey.load(path)
    assert "refusing to use it" in str(info.value)
    assert "allow_insecure_key_permissions" in str(info.value)
    assert "PRIVATE KEY" not in str(info.value)
    assert isinstance(info.value, TokenError)  # the provider's retry path handles it


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_file_is_used(tmp_path: Path, pem: str, mode: int,
                                    caplog: pytest.LogCaptureFixture) -> None:
    assert MachineKey.load(key_file(tmp_path, pem, mode)).key_id == "k-1"
    assert caplog.records == []


def test_the_mode_of_the_file_behind_a_symlink_counts(tmp_path: Path, pem: str) -> None:
    (tmp_path / "real").mkdir()
    target = key_file(tmp_path / "real", pem, 0o644)
    link = tmp_path / "link.json"
    link.symlink_to(target)  # a symlink's own mode (0777) is not what is read
    with pytest.raises(InsecureKeyFileError):
        MachineKey.load(link)
    target.chmod(0o600)
    assert MachineKey.load(link).user_id == "u-1"


def test_allowed_open_key_file_is_used_with_a_warning(tmp_path: Path, pem: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = key_file(tmp_path, pem, 0o644)
    with caplog.at_level(logging.WARNING, logger=tokens.__name__):
        key = MachineKey.load(path, allow_insecure_permissions=True)
    assert key.key_id == "k-1"
    (record,) = caplog.records
    assert "too open" in record.getMessage()
    assert "using it anyway" in record.getMessage()


async def test_the_provider_warns_once(tmp_path: Path, pem: str,
                                       monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    def fake_exchange(settings: ZitadelAuth, key: MachineKey) -> AccessToken:
        now = time.time()
        return AccessToken("t", now + 3600, now)

    monkeypatch.setattr(tokens, "exchange", fake_exchange)
    provider = ZitadelTokenProvider(settings(key_file(tmp_path, pem, 0o644), allow=True))
    with caplog.at_level(logging.WARNING, logger=tokens.__name__):
        for _ in range(3):
            await provider.refresh()
    warnings = [r for r in caplog.records if "too open" in r.getMessage()]
    assert len(warnings) == 1
    assert provider.refreshes == 3


async def test_the_provider_refuses_an_open_key_file(tmp_path: Path, pem: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[MachineKey] = []

    def fake_exchange(settings: ZitadelAuth, key: MachineKey) -> AccessToken:
        calls.append(key)
        raise AssertionError("an insecure key must never be used")

    monkeypatch.setattr(tokens, "exchange", fake_exchange)
    provider = ZitadelTokenProvider(settings(key_file(tmp_path, pem, 0o640)))
    with pytest.raises(InsecureKeyFileError):
        await provider.prepare()
    assert calls == []
    # fixed on disk: the next attempt uses it (the daemon needs no restart)
    provider.settings.key_file.chmod(0o600)
    with pytest.raises(AssertionError, match="never be used"):
        await asyncio.wait_for(provider.prepare(), 5)
    assert len(calls) == 1


def test_check_key_file(tmp_path: Path, pem: str) -> None:
    path = key_file(tmp_path, pem, 0o600)
    assert check_key_file(settings(path)) == []
    path.chmod(0o644)
    with pytest.raises(InsecureKeyFileError):
        check_key_file(settings(path))
    (warning,) = check_key_file(settings(path, allow=True))
    assert "too open" in warning
    assert "allowed by allow_insecure_key_permissions = true" in warning


def test_check_key_file_also_checks_the_content(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keyId": "k", "key": "not a pem", "userId": "u"}))
    path.chmod(0o600)
    with pytest.raises(TokenError, match="not a usable RSA private key"):
        check_key_file(settings(path))
    with pytest.raises(TokenError, match=r"cannot read the machine key file .*missing\.json"):
        check_key_file(settings(tmp_path / "missing.json"))
