"""A real registry with basic auth on loopback (Debian's ``docker-registry``), for pull tests."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harmony_fleet.localstack.nats_server import free_port


class RegistryUnavailable(RuntimeError):
    pass


@dataclass
class LoopbackRegistry:
    """``docker-registry serve`` on 127.0.0.1:<free port>, htpasswd auth, plain HTTP."""

    workdir: Path
    username: str = "fleet"
    password: str = field(default_factory=lambda: "pw-" + os.urandom(12).hex(), repr=False)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> LoopbackRegistry:
        binary = shutil.which("docker-registry")
        htpasswd = shutil.which("htpasswd")
        if binary is None or htpasswd is None:
            raise RegistryUnavailable("docker-registry or htpasswd is missing: run scripts/setup.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # -i: the password from stdin, not argv
        hashed = subprocess.run([htpasswd, "-niB", self.username], input=self.password.encode(),
                                capture_output=True, check=True).stdout
        (self.workdir / "htpasswd").write_bytes(hashed)
        config = self.workdir / "config.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}},
            "http": {"addr": self.host},
            "auth": {"htpasswd": {"realm": "fleet-test", "path": str(self.workdir / "htpasswd")}},
        }))
        log = (self.workdir / "registry.log").open("ab")
        self.process = subprocess.Popen([binary, "serve", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RegistryUnavailable(
                    f"docker-registry did not come up; see {self.workdir / 'registry.log'}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def push(self, image: str, repository: str) -> str:
        """Push local ``image`` as ``<host>/<repository>``; return that reference. The test's
        own login goes through a temporary authfile, so nothing is left in podman's."""
        target = f"{self.host}/{repository}"
        authfile = self.workdir / "push-auth.json"
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"auths": {self.host: {"auth": token}}}, out)
        try:
            subprocess.run(["podman", "push", "--quiet", "--tls-verify=false", "--authfile",
                            str(authfile), image, target], capture_output=True, check=True,
                           timeout=120)
        finally:
            authfile.unlink()
        return target


def remove_image(reference: str) -> None:
    """Untag a reference a test pulled (the image itself is shared with the local one)."""
    subprocess.run(["podman", "rmi", "--ignore", reference], capture_output=True, check=False)


def image_present(reference: str) -> bool:
    return subprocess.run(["podman", "image", "exists", reference], check=False).returncode == 0
