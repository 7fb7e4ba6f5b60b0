"""Harmony Fleet: edge fleet orchestration over NATS.

Layers (imports only point down): ``errors`` <- ``contracts`` <- ``bus`` <- ``agent`` /
``operator`` / ``callout`` / ``control`` <- ``localstack`` <- ``cli``. Every exception the package
raises derives from :class:`harmony_fleet.errors.FleetError`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("harmony-fleet")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
