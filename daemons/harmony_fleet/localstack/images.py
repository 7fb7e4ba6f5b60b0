"""A tiny local image for demos and tests: no registry is needed (or reachable) here.

``busybox-static`` (Debian) is copied into an empty root with the applet links a shell script
needs, tarred and ``podman import``-ed: about 2 MB, under a second.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from .errors import LocalStackError

DEMO_IMAGE = "localhost/fleet-busybox:latest"
APPLETS = ("sh", "echo", "sleep", "cat", "ls", "date", "env", "true", "false", "printf",
           "seq", "test", "touch", "mkdir", "rm", "wc", "head", "tail", "grep", "id", "kill",
           "nc", "httpd", "hostname", "uname")


class ImageBuildError(LocalStackError):
    """The demo image could not be built."""


def busybox_binary() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            return path
    found = shutil.which("busybox")
    if found:
        return Path(found)
    raise ImageBuildError("busybox not found: apt-get install busybox-static")


def podman_binary(podman: str = "podman") -> str:
    """``podman`` as a path to run, or :class:`ImageBuildError` if it is not installed."""
    found = shutil.which(podman)
    if found is None:
        raise ImageBuildError(f"{podman} is not installed (apt-get install podman; "
                              "scripts/setup.sh installs it)")
    return found


def image_exists(image: str = DEMO_IMAGE, podman: str = "podman") -> bool:
    return subprocess.run([podman_binary(podman), "image", "exists", image],
                          check=False).returncode == 0


def build_busybox_image(image: str = DEMO_IMAGE, podman: str = "podman", *,
                        force: bool = False) -> str:
    """Import the image unless it already exists; return its name."""
    if not force and image_exists(image, podman):
        return image
    busybox = busybox_binary().read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in ("bin", "tmp", "data", "etc"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        binary = tarfile.TarInfo("bin/busybox")
        binary.size = len(busybox)
        binary.mode = 0o755
        tar.addfile(binary, io.BytesIO(busybox))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        entry = tarfile.TarInfo("etc/passwd")
        entry.size = len(passwd)
        tar.addfile(entry, io.BytesIO(passwd))
    proc = subprocess.run(
        [podman_binary(podman), "import", "--change", 'CMD ["/bin/sh"]', "--change", "ENV PATH=/bin",
         "-", image],
        input=buf.getvalue(), capture_output=True, check=False,
    )
    if proc.returncode != 0:
        said = " ".join(proc.stderr.decode(errors="replace").split())
        raise ImageBuildError(f"podman import failed: {said}")
    return image
