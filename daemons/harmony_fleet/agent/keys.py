"""The agent's sealing key: the X25519 key pair that secrets for this device are sealed to.

Created on first start (PKCS#8 PEM, mode 0600; a missing parent directory is created 0700) and
reused ever after: the public half is published in ``device-info``, and every secret in this
device's desired state is sealed to it. Losing the file means the control plane has to seal
again to the new key (it does so on its next run: the new key is published on start).

The file is refused when it is readable by group or others, the way ssh refuses such a key: the
key opens every secret this device receives.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from harmony_fleet.config import ConfigError
from harmony_fleet.contracts.sealing import (
    SealingError,
    generate_private_key,
    private_key_from_pem,
    private_key_to_pem,
)
from harmony_fleet.purecrypto import X25519PrivateKey

log = logging.getLogger(__name__)

DEFAULT_SEALING_KEY_FILE = Path("/etc/fleet-agent/sealing-key")


def load_or_create_sealing_key(path: Path) -> X25519PrivateKey:
    """The key in ``path``, created first if the file does not exist.

    Raises :class:`ConfigError` (the agent does not start) for a file that is not a private
    X25519 key, is readable by others, or cannot be read or written.
    """
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    key = generate_private_key()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL: never replace a key another process has just written
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the sealing key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(private_key_to_pem(key))
        out.flush()
        os.fsync(out.fileno())
    log.info("created a new sealing key in %s", path)
    return key


def _load(path: Path) -> X25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read the sealing key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the sealing key {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); it must be 0600 (chmod 600 {path})"
            )
        data = handle.read()
    try:
        return private_key_from_pem(data)
    except SealingError as exc:
        raise ConfigError(f"the sealing key {path} is unusable: {exc}") from None
