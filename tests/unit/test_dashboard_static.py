"""The vendored HTMX is the file its record says (version, checksum, license)."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

VENDOR = Path(str(resources.files("harmony_fleet.dashboard") / "static" / "vendor" / "htmx"))


def test_vendored_htmx_matches_its_record() -> None:
    record = (VENDOR / "VENDORED.md").read_text()
    version = re.search(r"\| version \| ([0-9.]+) \|", record)
    digest = re.search(r"\| sha256 of htmx.min.js \| `([0-9a-f]{64})` \|", record)
    assert version is not None
    assert digest is not None
    script = (VENDOR / "htmx.min.js").read_bytes()
    assert hashlib.sha256(script).hexdigest() == digest.group(1)
    assert f'version:"{version.group(1)}"' in script.decode()
    license_text = (VENDOR / "LICENSE").read_text()
    assert "Zero-Clause BSD" in license_text or "BSD" in license_text


def test_no_static_file_is_fetched_from_elsewhere() -> None:
    static = VENDOR.parent.parent
    for path in static.rglob("*"):
        if path.suffix in (".js", ".css", ".svg") and path.name != "htmx.min.js":
            assert "http://" not in path.read_text() or path.suffix == ".svg", path
            assert "https://" not in path.read_text(), path
