"""The root of every exception harmony_fleet raises, and the one every layer may import.

``except FleetError`` catches any failure this package reports, whatever the layer (the wire
contract, the bus, a daemon, the control plane); nothing else in the package raises an
exception class of its own that does not derive from it. Subclasses keep the standard base that
callers already catch (``ValueError``, ``RuntimeError``, ``ConnectionError``...) next to it.

What a client (an Ansible module, the CLI) reports as the error is the name of a class, never
a free-form word: the Ansible modules document each name they can return (see
:mod:`harmony_fleet.control.operations`).

This module is the lowest layer: it imports nothing from the package.
"""

from __future__ import annotations


class FleetError(Exception):
    """Base of every harmony_fleet exception."""


class InvalidInput(FleetError, ValueError):
    """An argument cannot be used: a malformed id or key, a value that fails its schema, a
    missing or contradictory option. The message says which argument and which rule, never
    the value (it may be a secret)."""


class InternalError(FleetError, RuntimeError):
    """Something failed that the code did not expect (a bug): the message names the exception
    type and what it said."""
