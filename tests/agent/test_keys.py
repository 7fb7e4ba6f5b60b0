"""The agent's sealing key file (agent.keys): created once, mode 0600, refused when exposed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from harmony_fleet.agent.config import AgentConfig
from harmony_fleet.agent.keys import DEFAULT_SEALING_KEY_FILE, load_or_create_sealing_key
from harmony_fleet.config import ConfigError
from harmony_fleet.contracts import open_sealed, seal
from harmony_fleet.contracts.sealing import public_key_of


def test_created_on_first_use_with_mode_0600_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "fleet-agent" / "sealing-key"
    key = load_or_create_sealing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_sealing_key(path)
    assert public_key_of(again) == public_key_of(key)
    # what the control plane seals to the published key, the reloaded key opens
    envelope = seal(public_key_of(key), "ns_app", "pw", b"value")
    assert open_sealed(again, "ns_app", "pw", envelope) == b"value"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "sealing-key"
    load_or_create_sealing_key(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"accessible by group or others \\(mode 0{mode:o}\\)"):
        load_or_create_sealing_key(path)


def test_a_file_that_is_not_a_key_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "sealing-key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key\n")
    os.close(fd)
    with pytest.raises(ConfigError, match=r"the sealing key .* is unusable: not a PEM private key"):
        load_or_create_sealing_key(path)
    assert path.read_bytes() == b"not a key\n"  # never overwritten


def test_an_unusable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"cannot read the sealing key .*: Not a directory"):
        load_or_create_sealing_key(blocker / "sealing-key")
    # procfs takes no new directories, not even from root
    with pytest.raises(ConfigError, match="cannot create the sealing key /proc/"):
        load_or_create_sealing_key(Path("/proc/fleet-test-no-such-dir/sealing-key"))


def test_config_default_and_override(tmp_path: Path) -> None:
    base = '[agent]\ndevice_id = "pi-1"\n'
    (tmp_path / "a.toml").write_text(base)
    assert AgentConfig.load(tmp_path / "a.toml").agent.sealing_key_file == DEFAULT_SEALING_KEY_FILE
    assert Path("/etc/fleet-agent/sealing-key") == DEFAULT_SEALING_KEY_FILE
    (tmp_path / "b.toml").write_text(base + f'sealing_key_file = "{tmp_path}/k"\n'
                                     '[runtime]\ninsecure_registries = ["127.0.0.1:5000"]\n')
    config = AgentConfig.load(tmp_path / "b.toml")
    assert config.agent.sealing_key_file == tmp_path / "k"
    assert config.runtime.insecure_registries == ["127.0.0.1:5000"]


def test_insecure_registries_must_be_registry_names(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[agent]\ndevice_id = "pi-1"\n'
                                     '[runtime]\ninsecure_registries = ["http://x:5000"]\n')
    with pytest.raises(ConfigError, match=r"runtime\.insecure_registries\.0"):
        AgentConfig.load(tmp_path / "c.toml")
