"""The one error root of the local stack: whatever it raises for a reason the user can act on
(a port in use, a stack already running, podman missing...) is a :class:`LocalStackError`
whose message is one line saying what and, where it helps, what to do."""

from __future__ import annotations

from harmony_fleet.errors import FleetError


class LocalStackError(FleetError, RuntimeError):
    """The local stack cannot do what was asked; the message says why, on one line."""
